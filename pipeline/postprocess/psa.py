"""PSA post-processing (Ahn and Kwak, CVPR 2018): confident regions, affinity random walk.

1. Confident regions. The CAMs are CRF-refined twice with the background score
   ``(1 - max_k cam_k) ** alpha`` (see :mod:`pipeline.postprocess.crf`): with a low power
   (``alpha_low``, large background) a pixel the CRF still calls foreground is confident
   foreground; with a high power (``alpha_high``, small background) a pixel the CRF still calls
   background is confident background. :func:`confident_labels` applies the reference rule:

       label = class of the low-power argmax     where the low-power CRF says foreground
       label = 255                               where the low-power CRF says background
       label = 0                                 where the high-power CRF says background (overrides)

   Normally the high-power foreground contains the low-power foreground, so the override only
   resolves the rare pixels where the two CRF runs contradict each other, in favour of background.
2. AffinityNet (:mod:`pipeline.models.affinitynet`) learns pair affinities from those labels.
3. Random walk. The affinities within a radius, raised to the power ``beta``, are row-normalised
   into a transition matrix T; the CAMs with a background channel are propagated by T^t with
   t = 2^logt: ``v <- T^t v`` for each channel, at feature resolution (:func:`random_walk`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import CRF, PSA
from pipeline.metrics import IGNORE_INDEX
from pipeline.postprocess.crf import background_probs, crf_inference


def confident_labels(post_low: np.ndarray, post_high: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """PSA's la/ha rule on two CRF posteriors over [background, keys].

    post_low: (K + 1, H, W) CRF posterior with the low background power (confident foreground);
    post_high: (K + 1, H, W) with the high power (confident background); keys: (K,) class ids.
    Returns (H, W) uint8: class id, 0 (confident background) or 255 (not confident).
    """
    ids = np.concatenate([[0], np.asarray(keys, np.int64)])
    low, high = post_low.argmax(0), post_high.argmax(0)
    label = ids[low]
    label[low == 0] = IGNORE_INDEX
    label[high == 0] = 0
    return label.astype(np.uint8)


def confident_regions(image: np.ndarray, scores: np.ndarray, keys: np.ndarray, crf: CRF) -> np.ndarray:
    """PSA's confident regions of one image: CAMs ``scores`` (K, H, W) of classes ``keys`` CRF-refined with the
    background powers ``crf.alpha_low`` and ``crf.alpha_high``, then :func:`confident_labels`. Returns (H, W)
    uint8 (all background when the image has no class)."""
    if len(keys) == 0:
        return np.zeros(np.asarray(image).shape[:2], np.uint8)
    post_low = crf_inference(image, background_probs(scores, crf.alpha_low), crf)
    post_high = crf_inference(image, background_probs(scores, crf.alpha_high), crf)
    return confident_labels(post_low, post_high, keys)


def downsample_labels(label: np.ndarray, stride: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Majority label of each stride x stride cell.

    label: (..., H, W) integer. Returns (..., ceil(H/stride), ceil(W/stride)) of the same dtype;
    cells are padded with ``ignore_index`` at the bottom/right. Ties go to the smaller label value.
    """
    label = np.asarray(label)
    h, w = label.shape[-2:]
    gh, gw = math.ceil(h / stride), math.ceil(w / stride)
    pad = [(0, 0)] * (label.ndim - 2) + [(0, gh * stride - h), (0, gw * stride - w)]
    padded = np.pad(label, pad, constant_values=ignore_index)
    blocks = padded.reshape(*label.shape[:-2], gh, stride, gw, stride)
    blocks = np.moveaxis(blocks, -3, -2).reshape(*label.shape[:-2], gh, gw, stride * stride)
    values = np.unique(padded)
    counts = np.stack([(blocks == v).sum(-1) for v in values], -1)
    return values[counts.argmax(-1)].astype(label.dtype)


def transition_matrix(affinity: torch.Tensor, beta: float) -> torch.Tensor:
    """Row-normalised ``affinity ** beta`` (dense or sparse (N, N)); sparse stays sparse (CSR)."""
    if affinity.is_sparse:
        a = affinity.coalesce()
        ind, val = a.indices(), a.values().float() ** beta
        deg = torch.zeros(a.shape[0], dtype=val.dtype, device=val.device).index_add_(0, ind[0], val)
        val = val / deg.clamp_min(1e-12)[ind[0]]
        coo = torch.sparse_coo_tensor(ind, val, a.shape, check_invariants=False).coalesce()
        with warnings.catch_warnings():  # CSR is flagged "beta"; it is ~40x faster than COO here
            warnings.simplefilter("ignore", UserWarning)
            return coo.to_sparse_csr()
    a = affinity.float() ** beta
    return a / a.sum(1, keepdim=True).clamp_min(1e-12)


def random_walk(cams: Any, affinity: Any, beta: float, logt: int) -> Any:
    """Propagate score maps by the random walk T^t, t = 2^logt.

    cams: (K + 1, h, w) scores (background channel included), numpy or torch; affinity: (N, N),
    N = h * w, symmetric non-negative, dense or torch sparse. T = D^-1 A^beta (rows sum to 1);
    each channel v (N,) becomes T^t v. A dense affinity is raised to T^t by ``logt`` squarings
    (as in the reference code; O(logt N^3)); a sparse one is applied t times to the scores (same
    result, O(t nnz K): far cheaper on CPU for the neighbourhood-limited matrices used here).
    Returns (K + 1, h, w) of the input's kind.
    """
    as_numpy = not torch.is_tensor(cams)
    if not torch.is_tensor(affinity):
        affinity = torch.as_tensor(np.asarray(affinity))
    v = torch.as_tensor(np.asarray(cams) if as_numpy else cams).float().to(affinity.device)
    c, h, w = v.shape
    if affinity.shape != (h * w, h * w):
        raise ValueError(f"affinity {tuple(affinity.shape)} does not match the {h}x{w} score grid")
    trans = transition_matrix(affinity, beta)
    vec = v.reshape(c, -1).T  # (N, K+1)
    if trans.layout == torch.strided:
        for _ in range(logt):
            trans = trans @ trans
        vec = trans @ vec
    else:
        for _ in range(2**logt):
            vec = trans @ vec
    out = vec.T.reshape(c, h, w)
    return out.cpu().numpy() if as_numpy else out


def walk_inputs(scores: torch.Tensor, grid: tuple[int, int], alpha: float, stride: int = 0) -> torch.Tensor:
    """Scores at image size -> walk input at feature resolution, background channel first.

    scores: (K, H, W) foreground scores in [0, 1]. The background (1 - max) ** alpha is formed at
    image size, then every channel is pooled to ``grid`` = (h, w): with ``stride`` 0 by adaptive average
    pooling of the H x W map; with ``stride`` s (PSA's ``infer_aff.py``) the map is zero-padded at the
    bottom and right to (h s, w s) and average-pooled in s x s cells. Returns (K + 1, h, w).
    """
    top = scores.max(0).values if scores.shape[0] else torch.zeros(scores.shape[1:], device=scores.device)
    bg = (1 - top).clamp(0, 1) ** alpha
    full = torch.cat([bg[None], scores], 0)[None].float()
    if not stride:
        return F.adaptive_avg_pool2d(full, grid)[0]
    (h, w), (height, width) = grid, full.shape[-2:]
    if h * stride < height or w * stride < width:
        raise ValueError(f"a {h}x{w} grid at stride {stride} does not cover a {height}x{width} map")
    full = F.pad(full, (0, w * stride - width, 0, h * stride - height))
    return F.avg_pool2d(full, stride)[0]


def walk_scores(walked: torch.Tensor, size: tuple[int, int], stride: int = 0) -> torch.Tensor:
    """Random-walk output -> foreground scores in [0, 1] at image size.

    walked: (K + 1, h, w), background first. Upsampled bilinearly to ``size`` = (H, W) (with ``stride`` s:
    to (h s, w s), then cropped to the top-left H x W, as PSA undoes its padding), normalised per pixel to
    sum 1 over [background, classes]; returns the (K, H, W) foreground part (its argmax with the
    background is PSA's label map).
    """
    grid = walked.shape[-2:]
    target = (grid[0] * stride, grid[1] * stride) if stride else tuple(size)
    up = F.interpolate(walked[None].float(), size=target, mode="bilinear", align_corners=False)[0]
    up = up[:, :size[0], :size[1]].clamp_min(0)
    prob = up / up.sum(0, keepdim=True).clamp_min(1e-12)
    return prob[1:]


def random_crop(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, size: int,
                flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Random ``size`` x ``size`` crop of an image and its label map (+ random horizontal flip).

    image: (H, W, 3) uint8, label: (H, W). A side shorter than ``size`` is padded (image with 0,
    label with 255) at a random offset. Returns (size, size, 3) and (size, size) arrays.
    """
    h, w = label.shape
    ph, pw = max(size, h), max(size, w)
    oy, ox = rng.integers(0, ph - h + 1), rng.integers(0, pw - w + 1)
    img = np.zeros((ph, pw, 3), image.dtype)
    lab = np.full((ph, pw), IGNORE_INDEX, label.dtype)
    img[oy:oy + h, ox:ox + w], lab[oy:oy + h, ox:ox + w] = image, label
    y, x = rng.integers(0, ph - size + 1), rng.integers(0, pw - size + 1)
    img, lab = img[y:y + size, x:x + size], lab[y:y + size, x:x + size]
    if flip and rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def image_affinity(model: torch.nn.Module, image: np.ndarray, radius: int, border: int = 0
                   ) -> tuple[tuple[int, int], Any]:
    """Embed ``image`` (H, W, 3) uint8 with ``model`` (an AffinityNet) and return its feature grid (h, w)
    and the sparse pair affinities within ``radius`` (:func:`pipeline.models.affinitynet.affinity_matrix`,
    sources off ``border``)."""
    from pipeline.models.affinitynet import affinity_matrix

    device = next(model.parameters()).device
    with torch.no_grad():
        x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 255.0
        emb = model(x)[0].float()
        return tuple(emb.shape[-2:]), affinity_matrix(emb, radius, border)


def walk_cams(scores: np.ndarray, grid: tuple[int, int], affinity: Any, cfg: PSA,
              walk_pool: str = "adaptive") -> np.ndarray:
    """CAMs (K, H, W) in [0, 1] walked on the affinities of a ``grid`` (h, w) image with the ``psa`` section's
    background power, beta and 2^logt steps -> foreground scores (K, H, W) float32 in [0, 1]. ``walk_pool``
    (``post.walk_pool``): ``adaptive`` pools the H x W maps to the grid; ``padded`` zero-pads them to the
    grid times ``cfg.feature_stride``, pools, and crops after upsampling (PSA)."""
    if scores.shape[0] == 0:
        return np.zeros(scores.shape, np.float32)
    stride = cfg.feature_stride if walk_pool == "padded" else 0
    with torch.no_grad():
        cams = walk_inputs(torch.from_numpy(np.ascontiguousarray(scores)).to(affinity.device), grid, cfg.alpha,
                           stride)
        walked = random_walk(cams, affinity, cfg.beta, cfg.logt)
        return walk_scores(walked, tuple(scores.shape[1:]), stride).cpu().numpy()


def psa_scores(model: torch.nn.Module, image: np.ndarray, scores: np.ndarray, cfg: PSA,
               walk_pool: str = "adaptive") -> np.ndarray:
    """image (H, W, 3) uint8, scores (K, H, W) -> random-walk foreground scores (K, H, W) float32 in [0, 1]:
    ``model`` (an AffinityNet) embeds the image, the CAMs walk on its affinities within ``cfg.radius``
    (``cfg.pairs``), pooled as ``walk_pool`` says (:func:`walk_cams`)."""
    from pipeline.models.affinitynet import pair_border

    if scores.shape[0] == 0:
        return np.zeros(scores.shape, np.float32)
    grid, affinity = image_affinity(model, image, cfg.radius, pair_border(cfg.radius, cfg.pairs))
    return walk_cams(scores, grid, affinity, cfg, walk_pool)

"""Layer-wise analysis of the affinity matrices (Sec. IV-A, V-B: Figs. 1, 3, 6, 7, 8 and Table III).

- :func:`hellinger_distance`: mean Hellinger distance between the rows of each layer's affinity
  (Eq. 6, Fig. 3 right): low values = every query attends to the same keys (over-smoothing).
- the CAM refined with each single layer's affinity (Eq. 7; Figs. 1, 6, 8) is
  :func:`pipeline.cams.aream.refine_per_layer`; :func:`first_k_refinements` turns it into the CAM refined
  with the average of the first K layers, K = 1..L (Table III), by linearity of Eq. 5.
- :func:`attended_keys`: the last layer's affinity averaged over queries (Fig. 7 bottom).
- drawing helpers that turn these into RGB arrays (no file I/O here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.cams.infer import normalize_maps
from pipeline.common.palette import colorize, heatmap


def hellinger_distance(attn: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean Hellinger distance over all pairs of distinct rows (Eq. 6).

    attn: (..., N, N), each row a distribution over keys (re-normalised here to sum 1). With
    s = sqrt(rows), H(i, j) = ||s_i - s_j|| / sqrt(2), taken from the differences themselves
    (``torch.cdist`` without its matrix-product shortcut), so identical rows give exactly 0 on any
    machine; the Gram form sqrt(1 - <s_i, s_j>) turns a rounding of 6e-8 into 2.4e-4 there.
    Returns (...,) in [0, 1] (0 = identical rows, 1 = disjoint supports).
    """
    n = attn.shape[-2]  # rows (queries)
    if n < 2:
        return attn.new_zeros(attn.shape[:-2], dtype=torch.float32)
    p = attn.float().clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(eps)
    s = p.sqrt()
    lead = s.shape[:-2]
    flat = s.reshape(-1, n, s.shape[-1])
    h = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(2)
    # the diagonal is exactly 0, so the sum over all pairs is the sum over distinct pairs
    return (h.sum((-1, -2)) / (n * (n - 1))).reshape(lead)


def first_k_refinements(per_layer: torch.Tensor) -> torch.Tensor:
    """(B, L, C, h, w) single-layer refinements -> (B, L, C, h, w) refinements with the mean affinity of
    the first K = 1..L layers (index K - 1). Eq. 5 is linear in the affinity, so
    M (1/K sum_{l<=K} A_l)^T = 1/K sum_{l<=K} M A_l^T exactly."""
    L = per_layer.shape[1]
    k = torch.arange(1, L + 1, dtype=per_layer.dtype, device=per_layer.device).view(1, L, 1, 1, 1)
    return per_layer.cumsum(1) / k


def oracle_affinity(labels: torch.Tensor) -> torch.Tensor:
    """The "same ground-truth segment" affinity: labels (..., N) token labels -> (..., N, N), row i uniform over
    the tokens that share token i's label (row-normalised, as an attention row). Refining a CAM with it
    (Eq. 5) spreads each token's score over its own segment only: the ceiling of any affinity refinement."""
    same = (labels[..., :, None] == labels[..., None, :]).float()
    return same / same.sum(-1, keepdim=True)


def segment_attention(attn: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                         torch.Tensor, torch.Tensor]:
    """Where attention goes, against the ground truth. attn: (L, N, N) rows over keys, labels: (N,) token labels.
    Returns per layer (L,): the summed attention that foreground queries put on their own class's tokens, the
    summed attention that background queries put on foreground tokens, and the counts of foreground and
    background queries (each mean is a sum over its count: 1 = all on its own segment / all on objects)."""
    attn = attn.float()
    labels = labels.reshape(-1)
    fg = labels != 0
    same = (labels[:, None] == labels[None, :]).to(attn.dtype)        # (N, N)
    own = (attn * same).sum(-1)                                         # (L, N) mass on the own segment
    on_objects = (attn * fg.to(attn.dtype)[None, None, :]).sum(-1)      # (L, N) mass on foreground keys
    return (own[:, fg].sum(-1), on_objects[:, ~fg].sum(-1), fg.sum().to(attn.dtype).expand(attn.shape[0]),
            (~fg).sum().to(attn.dtype).expand(attn.shape[0]))


def attended_keys(attn_last: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Fig. 7 bottom: (B, N, N) last-layer affinity -> (B, h, w) mean attention each key receives."""
    return attn_last.float().mean(-2).reshape(-1, *grid)


def class_agnostic(maps: torch.Tensor) -> torch.Tensor:
    """(..., K, h, w) per-class maps -> (..., h, w) max over classes (zeros when K = 0)."""
    if maps.shape[-3] == 0:
        return maps.new_zeros(*maps.shape[:-3], *maps.shape[-2:])
    return maps.amax(-3)


def upsample_scores(maps: torch.Tensor, size: tuple[int, int], normalize: str = "minmax") -> np.ndarray:
    """(S, K, h, w) >= 0 -> (S, K, H, W) float32 numpy, each class map scaled to [0, 1].

    Same order as the export: ReLU, resize (bilinear, align_corners=False), per-class
    ``normalize`` (minmax | max, :func:`pipeline.cams.infer.normalize_maps`)."""
    x = maps.float().clamp_min(0)
    if x.shape[1]:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    else:
        x = x.new_zeros(x.shape[0], 0, *size)
    return normalize_maps(x, normalize).numpy()


# ----------------------------------------------------------------------------------------------
# drawing (arrays only)
# ----------------------------------------------------------------------------------------------


def blend(image: np.ndarray, scores: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image and (h, w) scores in [0, 1] (resized to the image) -> heatmap overlay."""
    H, W = image.shape[:2]
    s = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))[None, None]
    s = F.interpolate(s, size=(H, W), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    out = (1 - alpha) * image.astype(np.float32) + alpha * heatmap(s).astype(np.float32)
    return out.clip(0, 255).astype(np.uint8)


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] (a constant array -> zeros)."""
    x = np.asarray(x, np.float32)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def tile_grid(tiles: Sequence[Sequence[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Rows of (h, w, 3) uint8 tiles (sizes may differ) -> one (H, W, 3) uint8 image, top-left aligned."""
    rows = [list(r) for r in tiles if len(r)]
    if not rows:
        return np.full((1, 1, 3), fill, np.uint8)
    cols = max(len(r) for r in rows)
    cw = [max((r[c].shape[1] for r in rows if c < len(r)), default=0) for c in range(cols)]
    rh = [max(t.shape[0] for t in r) for r in rows]
    out = np.full((sum(rh) + pad * (len(rows) + 1), sum(cw) + pad * (cols + 1), 3), fill, np.uint8)
    y = pad
    for r, h in zip(rows, rh):
        x = pad
        for c, t in enumerate(r):
            out[y:y + t.shape[0], x:x + t.shape[1]] = t
            x += cw[c] + pad
        y += h + pad
    return out


def layer_panel(image: np.ndarray, mask: np.ndarray | None, cam: np.ndarray, per_layer: np.ndarray,
                extra: Sequence[np.ndarray] = ()) -> list[np.ndarray]:
    """Fig. 8 row: [image, GT, CAM, layer 1..L refined, *extra] as overlays of class-agnostic maps.

    cam: (h, w); per_layer: (L, h, w); extra: more (h, w) maps (e.g. the avg / AReAM refinements), all
    >= 0. Each map is divided by its own maximum (not min-max stretched), so a refinement that spreads
    activation over the background shows as background heat, the noise Fig. 8 is about.
    """
    tiles = [image]
    if mask is not None:
        tiles.append(colorize(np.where(mask == 255, 0, mask)))
    tiles += [blend(image, m / max(float(m.max()), 1e-8)) for m in [cam, *per_layer, *extra]]
    return tiles


def affinity_images(attn: torch.Tensor, size: int = 0) -> list[np.ndarray]:
    """(L, N, N) affinities -> L heatmaps (Fig. 3 left / Fig. 7 top), each scaled by its own maximum
    (square-root contrast so weak off-diagonal structure stays visible). ``size`` > 0 resizes."""
    out = []
    for a in attn.float():
        img = heatmap(np.sqrt(minmax(a.numpy())))
        if size and img.shape[0] != size:
            t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
            img = F.interpolate(t, size=(size, size), mode="nearest")[0].permute(1, 2, 0).byte().numpy()
        out.append(img)
    return out

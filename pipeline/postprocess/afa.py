"""AFA's reference use of PAR for pseudo labels (Ru et al., CVPR 2022; ``refine_cams_with_bkg_v2`` in
rulixiang/afa), beside this project's own (:func:`pipeline.postprocess.par.par_scores`).

AFA does not refine the class maps at image size. It puts a constant background score in front of them,
works at half the image's resolution, turns [background, classes] into a distribution with a softmax, runs
PAR on it and takes the arg-max, once with a high and once with a low background score. A pixel is
foreground where the high background still loses, background where even the low one wins, and ignored in
between. ``postprocess_par`` with ``post.par_mode: afa`` uses it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import PAR
from pipeline.postprocess.par import par_refine


def afa_labels(image: torch.Tensor, scores: torch.Tensor, cfg: PAR, backgrounds: tuple[float, float]) -> torch.Tensor:
    """AFA's label refinement (``refine_cams_with_bkg_v2`` in rulixiang/afa): PAR at half resolution on
    softmax([background, CAMs]) with a high and a low constant background score.

    image: (3, H, W) float; scores: (K, H, W) in [0, 1]; backgrounds: (high, low). For each background b,
    [b, scores] is resized to (H // 2, W // 2) (bilinear), soft-maxed over the channels, refined by PAR on
    the image at that size, resized back to (H, W) and arg-maxed (0: background, k: channel k - 1).
    Returns (2, H, W) int64: the high-background and the low-background label indices.
    """
    k, h, w = scores.shape
    half = (max(1, h // 2), max(1, w // 2))
    img = F.interpolate(image[None].float(), size=half, mode="bilinear", align_corners=False)
    out = []
    for bg in backgrounds:
        x = torch.cat([torch.full((1, h, w), float(bg), device=scores.device), scores.float()], 0)
        x = F.interpolate(x[None], size=half, mode="bilinear", align_corners=False).softmax(dim=1)
        refined = F.interpolate(par_refine(img, x, cfg), size=(h, w), mode="bilinear", align_corners=False)
        out.append(refined[0].argmax(0))
    return torch.stack(out)


def afa_scores(image: np.ndarray, scores: np.ndarray, cfg: PAR, backgrounds: tuple[float, float],
               device: str = "cpu") -> np.ndarray:
    """AFA's refined labels (:func:`afa_labels`) as scores that Eq. 16 (0 < alpha1 < 0.5 < alpha2 < 1) turns
    back into exactly those labels: 1 for the class the high background leaves a pixel (AFA's foreground),
    0.5 for the low-background class of a pixel only the high background calls background (AFA's ignored
    pixels) and 0 elsewhere (background under both). image (H, W, 3) uint8, scores (K, H, W) -> (K, H, W)."""
    if scores.shape[0] == 0:
        return np.zeros(scores.shape, np.float32)
    with torch.no_grad():
        img = torch.from_numpy(image).to(device).permute(2, 0, 1).float() / 255.0
        high, low = afa_labels(img, torch.from_numpy(np.ascontiguousarray(scores, np.float32)).to(device), cfg,
                               backgrounds).cpu().numpy()
    out = np.zeros(scores.shape, np.float32)
    rows, cols = np.nonzero(high > 0)
    out[high[rows, cols] - 1, rows, cols] = 1.0
    rows, cols = np.nonzero((high == 0) & (low > 0))
    out[low[rows, cols] - 1, rows, cols] = 0.5
    return out

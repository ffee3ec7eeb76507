"""Pixel-Adaptive Refinement (PAR), Eqs. 13-15 of the paper (after AFA, Ru et al., CVPR 2022).

Every pixel (i, j) repeatedly takes a weighted average of its neighbours' scores (Eq. 13):

    Y(:, i, j) <- sum_{(x, y) in N(i, j)} kappa(i, j, x, y) Y(:, x, y)

N(i, j) = the 8 neighbours of a 3x3 kernel at every dilation in ``dilations`` (P = 8 * len(dilations)
neighbours; the pixel itself is not one of them). Outside the image, pixels are replicated (the
nearest border pixel stands in). The kernel (Eqs. 14-15):

    kappa_I = -( |I(i,j) - I(x,y)| / (c_I sigma_I) )^2    per colour channel, then averaged over channels
    kappa_L = -( |L(i,j) - L(x,y)| / (c_L sigma_L) )^2    |L - L'| = dilation * (1 or sqrt 2)
    kappa   = w_I softmax_N(kappa_I) + w_L softmax_N(kappa_L)

sigma_I is the standard deviation (unbiased, per channel) of the P neighbour intensities of each pixel,
sigma_L the standard deviation of the P neighbour distances (the same for every pixel). Both softmaxes run
over the neighbours, so each pixel's kernel sums to ``w_I + w_L``. The kernel depends only on the image,
so it is computed once and the update runs ``iterations`` times. The update is linear and acts on each
score channel alike: a background channel can be passed along (B, K + 1, H, W), zero channels stay zero.
Works on any device, inside training (no gradient needed) and in post-processing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import PAR

# the 8 neighbours of a 3x3 kernel, row by row
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
EPS = 1e-8


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(dy, dx) of the P = 8 * len(dilations) neighbours, dilation by dilation."""
    if not dilations or any(int(d) < 1 for d in dilations):
        raise ValueError(f"dilations must be positive integers, got {list(dilations)}")
    return [(dy * int(d), dx * int(d)) for d in dilations for dy, dx in _NEIGHBOURS]


def gather_neighbours(x: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, C, P, H, W): value of each neighbour, border pixels replicated."""
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    h, w = x.shape[-2:]
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return torch.stack([xp[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w] for dy, dx in offsets], dim=2)


def par_kernel(image: torch.Tensor, dilations: Sequence[int], c_i: float, c_l: float, w_i: float,
               w_l: float) -> torch.Tensor:
    """Eqs. 14-15. image: (B, 3, H, W) float (any affine intensity scale) -> kappa (B, P, H, W) float32.

    Rows (over P) sum to w_i + w_l.
    """
    offsets = neighbour_offsets(dilations)
    img = image.float()
    nb = gather_neighbours(img, offsets)  # (B, 3, P, H, W)
    sigma_i = nb.std(dim=2, keepdim=True)  # unbiased, per channel and pixel
    kappa_i = -((nb - img.unsqueeze(2)).abs() / (c_i * sigma_i + EPS)).pow(2).mean(dim=1)  # (B, P, H, W)
    dist = torch.tensor([math.hypot(dy, dx) for dy, dx in offsets], dtype=torch.float32, device=img.device)
    kappa_l = -(dist / (c_l * dist.std() + EPS)).pow(2)  # (P,)
    return w_i * kappa_i.softmax(dim=1) + w_l * kappa_l.softmax(dim=0).view(1, -1, 1, 1)


def par_refine(image: torch.Tensor, scores: torch.Tensor, cfg: PAR) -> torch.Tensor:
    """Eq. 13 iterated ``cfg.iterations`` times with the kernel of ``cfg`` (the ``par`` params section).

    image: (B, 3, H, W) float; scores: (B, K, H, W) -> (B, K, H, W) float32.

    Values are not clipped (each iteration scales constant maps by w_i + w_l).
    """
    if image.ndim != 4 or scores.ndim != 4 or image.shape[0] != scores.shape[0] \
            or image.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"image (B, 3, H, W) and scores (B, K, H, W) must match, got {tuple(image.shape)} "
                         f"and {tuple(scores.shape)}")
    offsets = neighbour_offsets(cfg.dilations)
    kappa = par_kernel(image, cfg.dilations, cfg.c_i, cfg.c_l, cfg.w_i, cfg.w_l).unsqueeze(1)  # (B, 1, P, H, W)
    y = scores.float()
    if y.shape[1] == 0:
        return y
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    h, w = y.shape[-2:]
    for _ in range(cfg.iterations):
        yp = F.pad(y, (pad, pad, pad, pad), mode="replicate")
        out = torch.zeros_like(y)
        for p, (dy, dx) in enumerate(offsets):  # one neighbour at a time: memory stays O(B K H W)
            out += kappa[:, :, p] * yp[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]
        y = out
    return y


def par_scores(image: np.ndarray, scores: np.ndarray, cfg: PAR, device: str = "cpu") -> np.ndarray:
    """image (H, W, 3) uint8, scores (K, H, W) -> PAR-refined scores (K, H, W) float32 in [0, 1]."""
    if scores.shape[0] == 0:
        return np.zeros(scores.shape, np.float32)
    with torch.no_grad():
        img = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 255.0
        cam = torch.from_numpy(np.ascontiguousarray(scores, np.float32)).to(device)[None]
        out = par_refine(img, cam, cfg)[0]
    return out.clamp(0, 1).float().cpu().numpy()

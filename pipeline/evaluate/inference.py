"""Test-time inference of the segmentation network: multi-scale + flip averaging, optional dense CRF.

For each scale ``s`` the image is resized (bilinear) to ``round(H * s) x round(W * s)``, the
network's softmax is computed (and, with ``flip``, the softmax of the mirrored image, mirrored
back) and resized to ``H x W``; the result is the mean over all those maps. Scale 1.0 runs on the
image untouched, so ``scales=[1.0], flip=False`` is exactly the single forward pass.

Large inputs are first shrunk so that their longest side is at most ``max_side``
(:func:`cap_side`; ``eval.max_side``, ``predict --max-side``): the network, the probabilities and the
CRF then work at that size, and only the final label map is scaled back (nearest) to the input's size.
Memory per image is bounded by ``max_side``, whatever the photo's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import CRFKernels


def capped_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) of an image shrunk (aspect kept, rounded) so that its longest side is at most ``max_side``."""
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def cap_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the image shrunk (antialiased bilinear) to :func:`capped_size`; small ones as they are."""
    size = capped_size(image.shape[0], image.shape[1], max_side)
    if size == image.shape[:2]:
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def label_to_size(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) uint8 labels -> (H, W) by nearest neighbour (the labels of a capped prediction at full size)."""
    if label.shape == tuple(size):
        return label
    t = torch.from_numpy(np.ascontiguousarray(label))[None, None].float()
    return F.interpolate(t, size=tuple(size), mode="nearest")[0, 0].to(torch.uint8).numpy()


def image_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1] on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    return x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


@torch.no_grad()
def predict_probs(model: nn.Module, image: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
                  amp: bool = False) -> torch.Tensor:
    """Softmax averaged over scales (and horizontal flips).

    model: logits (B, C, h, w) of an input (B, 3, h, w) in [0, 1], in eval mode.
    image: (1, 3, H, W) float in [0, 1]. Returns (1, C, H, W) float32 probabilities (sum 1 per pixel).
    ``amp``: float16 autocast on CUDA.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    if not scales:
        raise ValueError("scales must not be empty")
    h, w = image.shape[-2:]
    total, count = None, 0
    use_amp = amp and image.device.type == "cuda"
    for s in scales:
        if s <= 0:
            raise ValueError(f"scales must be > 0, got {s}")
        x = image if s == 1.0 else F.interpolate(
            image, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=False)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        with torch.autocast(image.device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(batch)
        probs = torch.softmax(logits.float(), dim=1)
        if flip:
            probs = probs[: len(x)] + probs[len(x):].flip(-1)
        if probs.shape[-2:] != (h, w):
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        total = probs if total is None else total + probs
        count += 2 if flip else 1
    return total / count


def crf_refine(image: np.ndarray, probs: np.ndarray, kernels: CRFKernels) -> np.ndarray:
    """Dense CRF on network probabilities: image (H, W, 3) uint8, probs (C, H, W) -> (C, H, W) float32,
    with the kernels of ``kernels`` (``params.eval.crf``)."""
    from pipeline.postprocess.crf import crf_inference

    return crf_inference(image, np.asarray(probs, np.float32), kernels)


def crf_label(item: tuple[np.ndarray, np.ndarray], kernels: CRFKernels) -> np.ndarray:
    """Picklable per-image job: (image (H, W, 3) uint8, probs (C, H, W)) -> CRF argmax (H, W) uint8."""
    image, probs = item
    return crf_refine(image, probs, kernels).argmax(0).astype(np.uint8)


def to_label(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) probabilities -> (H, W) uint8 argmax labels."""
    if isinstance(probs, torch.Tensor):
        probs = probs.detach()
        if probs.ndim == 4:
            probs = probs[0]
        return probs.argmax(0).to(torch.uint8).cpu().numpy()
    probs = np.asarray(probs)
    return (probs[0] if probs.ndim == 4 else probs).argmax(0).astype(np.uint8)


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenate (H, W_i, 3) uint8 panels left to right with white gaps: (H, sum W_i + gaps, 3)."""
    h = panels[0].shape[0]
    sep = np.full((h, gap, 3), 255, np.uint8)
    out = []
    for i, p in enumerate(panels):
        if i:
            out.append(sep)
        out.append(np.asarray(p, np.uint8))
    return np.concatenate(out, axis=1)

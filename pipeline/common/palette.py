"""The PASCAL VOC colour palette and label-map PNG helpers (pure, no file paths)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.vocabulary import IGNORE_INDEX


def voc_palette(n: int = 256) -> np.ndarray:
    """The VOC bit-interleaved palette: (n, 3) uint8; index 0 black, 255 (ignore) white-ish."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def label_to_pil(label: np.ndarray) -> Image.Image:
    """(H, W) integer label map (0..C, 255) -> palette ('P' mode) PIL image."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label.shape}")
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError("label values must lie in 0..255")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    return img


def pil_to_label(img: Image.Image) -> np.ndarray:
    """Palette or grayscale PIL image -> (H, W) uint8 label indices (no colour lookup)."""
    if img.mode not in ("P", "L"):
        raise ValueError(f"label PNG must be palette (P) or grayscale (L) mode, got {img.mode}")
    return np.asarray(img, dtype=np.uint8).copy()


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 RGB with the VOC palette."""
    return voc_palette()[np.asarray(label, dtype=np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised label map over an (H, W, 3) uint8 image; ignored pixels stay unblended."""
    color = colorize(label).astype(np.float32)
    img = image.astype(np.float32)
    mask = (np.asarray(label) != IGNORE_INDEX) & (np.asarray(label) != 0)
    out = img.copy()
    out[mask] = (1 - alpha) * img[mask] + alpha * color[mask]
    return out.clip(0, 255).astype(np.uint8)


def heatmap_colormap():
    """The colours of :func:`heatmap` as a matplotlib colormap, for colour bars that match the overlays."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(heatmap(np.linspace(0.0, 1.0, 256)).astype(np.float32) / 255.0, name="heatmap")


def heatmap(scores: np.ndarray) -> np.ndarray:
    """(H, W) scores in [0, 1] -> (H, W, 3) uint8 jet-like colours (no matplotlib needed)."""
    s = np.clip(np.asarray(scores, dtype=np.float32), 0, 1)
    r = np.clip(1.5 - np.abs(4 * s - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * s - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * s - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)

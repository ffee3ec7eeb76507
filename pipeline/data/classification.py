"""Images with image-level labels for a classifier: the training augmentation (random-resized crop, flip,
colour jitter) and the mean average precision of multi-label predictions. Shared by the AReAM classifier
(:mod:`pipeline.train.classifier`) and the calibration stage's CNN (:mod:`pipeline.analysis.calibration`)."""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.data.manifest import multi_hot
from pipeline.common.io import read_rgb
from pipeline.models.inputs import image_to_tensor


def random_resized_crop_box(height: int, width: int, scale: Sequence[float], rng: np.random.Generator,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A crop (x0, y0, x1, y1) covering a random area fraction in ``scale`` with a random aspect ratio
    (log-uniform in ``ratio``); after 10 misses the largest centred crop within ``ratio``."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= width and 0 < ch <= height:
            x0, y0 = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
            return x0, y0, x0 + cw, y0 + ch
    aspect = width / height
    if aspect < ratio[0]:
        cw, ch = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        ch, cw = height, int(round(height * ratio[1]))
    else:
        cw, ch = width, height
    x0, y0 = (width - cw) // 2, (height - ch) // 2
    return x0, y0, x0 + cw, y0 + ch


def color_jitter(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """img (H, W, 3) float in [0, 1]: brightness, contrast, saturation factors in [1 - s, 1 + s]."""
    if strength <= 0:
        return img
    lo, hi = max(0.0, 1 - strength), 1 + strength
    b, c, s = rng.uniform(lo, hi, size=3)
    img = img * b
    gray = img @ np.array([0.299, 0.587, 0.114], np.float32)
    img = gray.mean() + (img - gray.mean()) * c
    gray = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    img = gray + (img - gray) * s
    return np.clip(img, 0.0, 1.0).astype(np.float32)


class ClassificationDataset(Dataset):
    """Images with multi-hot targets. ``train``: random-resized crop to ``img_size``, flip, colour jitter
    (per-sample RNG from (seed, epoch, index)); otherwise the whole image resized to ``img_size``.

    samples: objects with ``.image`` (path) and ``.labels`` (foreground classes 1..C).
    Items: (image (3, S, S) float32 normalised, target (C,) float32).
    """

    def __init__(self, samples: Sequence[Any], num_classes: int, img_size: int, train: bool,
                 crop_scale: Sequence[float] = (0.5, 1.0), hflip: bool = True, jitter: float = 0.0, seed: int = 0):
        self.samples, self.num_classes, self.img_size, self.train = list(samples), num_classes, img_size, train
        self.crop_scale, self.hflip, self.jitter, self.seed = tuple(crop_scale), hflip, jitter, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, i: int) -> np.ndarray:
        return multi_hot(self.samples[i].labels, self.num_classes)

    def __getitem__(self, i: int):
        sample = self.samples[i]
        pil = Image.fromarray(read_rgb(sample.image))
        size = (self.img_size, self.img_size)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            box = random_resized_crop_box(pil.height, pil.width, self.crop_scale, rng)
            img = np.asarray(pil.resize(size, Image.BILINEAR, box=box), np.float32) / 255.0
            if self.hflip and rng.random() < 0.5:
                img = img[:, ::-1]
            img = color_jitter(img, self.jitter, rng)
            rgb = (img * 255.0 + 0.5).astype(np.uint8)
        else:
            rgb = np.asarray(pil.resize(size, Image.BILINEAR))
        return image_to_tensor(rgb), torch.from_numpy(self.target(i))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class non-interpolated AP (as sklearn's average_precision_score): scores, targets (N, C) ->
    (C,) float64, NaN for classes without a positive. Tied scores form one threshold:
    AP = sum over distinct thresholds of (recall gain) * precision."""
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets) > 0
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        pos = targets[:, c]
        if not pos.any():
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        s, y = scores[order, c], pos[order]
        tp, fp = np.cumsum(y), np.cumsum(~y)
        last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each group of tied scores
        precision = tp[last] / (tp[last] + fp[last])
        recall = tp[last] / pos.sum()
        out[c] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return out


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    ap = average_precision(scores, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")

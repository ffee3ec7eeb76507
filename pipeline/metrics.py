"""Segmentation metrics: confusion matrices, mIoU (VOC protocol), background-threshold sweeps.

All functions take numpy arrays or torch tensors and return numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.vocabulary import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int = IGNORE_INDEX,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Accumulate a (num_classes, num_classes) int64 confusion matrix; rows = target, cols = pred.

    ``pred`` and ``target``: integer label maps of the same shape (any batch layout). Pixels whose
    target is ``ignore_index`` are skipped. Pass ``out`` to accumulate over many images.
    """
    pred, target = _np(pred).astype(np.int64).ravel(), _np(target).astype(np.int64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in size: {pred.size} vs {target.size}")
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target values must lie in 0..{num_classes - 1} or {ignore_index}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"pred values must lie in 0..{num_classes - 1}")
    conf = np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    if out is not None:
        out += conf
        return out
    return conf


def miou(confusion: Any) -> tuple[float, np.ndarray]:
    """Mean IoU and per-class IoU from a confusion matrix.

    Per-class IoU = TP / (TP + FP + FN). A class absent from both prediction and target has
    IoU NaN and is left out of the mean (VOC protocol). Returns (mean, per_class (C,) float64).
    """
    conf = _np(confusion).astype(np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)
    mean = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")
    return mean, iou


def thresholds_from(sweep: list[float] | tuple[float, float, float]) -> np.ndarray:
    """[start, stop, step] (stop inclusive) -> rounded threshold array."""
    start, stop, step = sweep
    n = int(round((stop - start) / step)) + 1
    return np.round(start + step * np.arange(n), 6)


def sweep_bins(thresholds: np.ndarray, num_classes: int, scores: Any, keys: Any, target: Any,
               ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The flat index into :class:`ThresholdSweep`'s ``hist`` (bin, target, best class) of every labelled
    pixel, int64: what :meth:`ThresholdSweep.add` counts, without the histogram itself."""
    scores, keys, target = _np(scores), _np(keys).astype(np.int64), _np(target).astype(np.int64)
    if scores.shape[1:] != target.shape:
        raise ValueError(f"scores {scores.shape[1:]} and target {target.shape} differ in size")
    valid = target != ignore_index
    if len(keys) == 0:
        m = np.zeros(target.shape, np.float64)
        c = np.zeros(target.shape, np.int64)
    else:
        m = scores.max(0)
        c = keys[scores.argmax(0)]
    b = np.searchsorted(np.asarray(thresholds, np.float64), m[valid], side="left")  # number of t < m
    g, c = target[valid], c[valid]
    nc = num_classes
    return (b * nc + g) * nc + c


class ThresholdSweep:
    """mIoU of score maps against ground truth for many background thresholds in one pass.

    For a constant background score t, a pixel is predicted as the class of its highest
    foreground score when that score is > t, else background (0). :meth:`add` bins each pixel's
    max score once, so the whole sweep costs about one confusion matrix per image.
    """

    def __init__(self, thresholds: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if np.any(np.diff(self.thresholds) <= 0):
            raise ValueError("thresholds must be strictly increasing")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        nb = len(self.thresholds) + 1
        # hist[b, g, c]: pixels whose max score falls in bin b, target g, best foreground class c
        self.hist = np.zeros((nb, num_classes, num_classes), dtype=np.int64)

    def add(self, scores: Any, keys: Any, target: Any) -> None:
        """scores: (K, H, W) foreground scores of classes ``keys`` (K,) in 1..C; target: (H, W)."""
        idx = sweep_bins(self.thresholds, self.num_classes, scores, keys, target, self.ignore_index)
        self.hist += np.bincount(idx, minlength=self.hist.size).reshape(self.hist.shape)

    def confusions(self) -> np.ndarray:
        """(T, C, C) confusion matrix for each threshold."""
        nt = len(self.thresholds)
        # pixels with bin b > i are foreground at threshold i: suffix sums over bins
        suffix = np.cumsum(self.hist[::-1], axis=0)[::-1]  # suffix[b] = sum_{b' >= b}
        total = self.hist.sum(0)
        out = np.zeros((nt, self.num_classes, self.num_classes), dtype=np.int64)
        for i in range(nt):
            fg = suffix[i + 1]  # bins > i
            out[i] = fg
            out[i, :, 0] += (total - fg).sum(1)  # the rest is predicted background
            out[i, :, 0] -= fg[:, 0]  # class 0 never wins a foreground argmax; keep counts exact
        return out

    def result(self) -> dict:
        """{"thresholds": [...], "miou": [...], "best_threshold": t, "best_miou": m, "per_class_iou": [...]}"""
        ious = [miou(c) for c in self.confusions()]
        means = np.array([m for m, _ in ious])
        best = int(np.nanargmax(means))
        return {
            "thresholds": self.thresholds.tolist(),
            "miou": means.tolist(),
            "best_threshold": float(self.thresholds[best]),
            "best_miou": float(means[best]),
            "per_class_iou": [None if np.isnan(v) else float(v) for v in ious[best][1]],
        }


def token_labels(mask: Any, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """The ground truth on the token grid: mask (H, W) (0 background, 1..C-1 classes, 255 ignored) -> (h, w)
    int64, each cell the majority label of the labelled pixels it covers (adaptive pooling of the one-hot mask;
    ties to the smaller label; a cell with no labelled pixel is background). ``num_classes`` counts background."""
    import torch

    mask = torch.as_tensor(np.asarray(mask, np.int64))
    onehot = torch.nn.functional.one_hot(mask.clamp(max=num_classes), num_classes + 1)[..., :num_classes]
    share = torch.nn.functional.adaptive_avg_pool2d(onehot.permute(2, 0, 1)[None].float(), grid)
    return share[0].argmax(0)  # the first maximum: the smaller label on ties

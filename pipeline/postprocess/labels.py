"""Pseudo labels from class scores (Eq. 16) and their quality against ground truth.

Eq. 16 splits every pixel into reliable foreground, reliable background or ignored:

    Y_s(i, j) = argmax_c Y(c, i, j)   if max_c Y(c, i, j) > alpha2
              = 0                      if max_c Y(c, i, j) < alpha1
              = 255                    otherwise

Both inequalities are strict, as written in the paper: a maximum exactly equal to ``alpha2`` or to
``alpha1`` is ignored (255). :func:`pseudo_labels` and :func:`pseudo_labels_keyed` accept numpy
arrays or torch tensors (any device) and return the same kind.

:func:`label_quality` and :func:`sweep_counts` return small per-image counts that add up over a
data set (they run inside worker processes); :class:`QualityTotal` and :class:`SweepTotal` sum them as
they arrive (:func:`pipeline.common.parallel.fold_items`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.metrics import IGNORE_INDEX, ThresholdSweep, confusion_matrix, miou, sweep_bins


def _is_torch(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "dim")


def pseudo_labels(scores: Any, alpha1: float, alpha2: float) -> Any:
    """Eq. 16 on a batch of foreground scores.

    scores: (B, C, H, W) foreground class scores in [0, 1] (channel k <-> class k + 1), numpy or torch.
    Returns (B, H, W) int64 of the same kind: class 1..C where max > alpha2, 0 where max < alpha1,
    255 elsewhere (strict inequalities; ties at a threshold are ignored). With C = 0 every pixel is
    background (an empty maximum counts as 0).
    """
    if not 0 <= alpha1 <= alpha2 <= 1:
        raise ValueError(f"need 0 <= alpha1 <= alpha2 <= 1, got alpha1={alpha1}, alpha2={alpha2}")
    if scores.ndim != 4:
        raise ValueError(f"scores must be (B, C, H, W), got shape {tuple(scores.shape)}")
    b, c, h, w = scores.shape
    if _is_torch(scores):
        import torch

        if c == 0:
            return torch.zeros((b, h, w), dtype=torch.int64, device=scores.device)
        top, arg = scores.max(dim=1)
        out = torch.full((b, h, w), IGNORE_INDEX, dtype=torch.int64, device=scores.device)
        out[top > alpha2] = arg[top > alpha2] + 1
        out[top < alpha1] = 0
        return out
    scores = np.asarray(scores)
    if c == 0:
        return np.zeros((b, h, w), np.int64)
    top, arg = scores.max(axis=1), scores.argmax(axis=1)
    out = np.full((b, h, w), IGNORE_INDEX, np.int64)
    fg = top > alpha2
    out[fg] = arg[fg] + 1
    out[top < alpha1] = 0
    return out


def pseudo_labels_keyed(scores: Any, keys: Any, alpha1: float, alpha2: float) -> Any:
    """Eq. 16 for one image whose channels are its own classes.

    scores: (K, H, W) foreground scores of the classes ``keys`` (K,) (values in 1..C).
    Returns (H, W) int64 label map in class ids (0 background, keys[k], 255 ignore).
    """
    if scores.ndim != 3:
        raise ValueError(f"scores must be (K, H, W), got shape {tuple(scores.shape)}")
    if len(keys) != scores.shape[0]:
        raise ValueError(f"{len(keys)} keys for {scores.shape[0]} score channels")
    idx = pseudo_labels(scores[None], alpha1, alpha2)[0]  # 0, 1..K, 255
    if _is_torch(scores):
        import torch

        lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64, device=scores.device)
        lut[0] = 0
        if len(keys):
            lut[1:len(keys) + 1] = torch.as_tensor(keys, dtype=torch.int64, device=scores.device)
        return lut[idx]
    lut = np.full(256, IGNORE_INDEX, np.int64)
    lut[0] = 0
    lut[1:len(keys) + 1] = np.asarray(keys, np.int64)
    return lut[idx]


def argmax_labels(scores: np.ndarray, keys: np.ndarray, bg_score: float) -> np.ndarray:
    """Labels with a constant background score: class keys[argmax] where max > bg_score, else 0.

    scores: (K, H, W); keys: (K,). Returns (H, W) int64 (the rule the threshold sweep uses).
    """
    scores, keys = np.asarray(scores), np.asarray(keys, np.int64)
    if scores.shape[0] == 0:
        return np.zeros(scores.shape[1:], np.int64)
    top = scores.max(0)
    return np.where(top > bg_score, keys[scores.argmax(0)], 0).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Quality against ground truth: counts that add up over images.
# ---------------------------------------------------------------------------------------------


def label_quality(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Counts for the quality of a pseudo-label map with ignored (255) pixels.

    pred, target: (H, W) label maps; num_classes includes background (C + 1).
    Returns {"confusion": (num_classes, num_classes) int64 over pixels where neither is 255,
    "ignored": number of labelled target pixels the prediction leaves at 255,
    "labelled": number of target pixels that are not 255}. Ignored predictions are not errors:
    they are counted apart, as a fraction.
    """
    pred, target = np.asarray(pred, np.int64), np.asarray(target, np.int64)
    labelled = target != IGNORE_INDEX
    ignored = labelled & (pred == IGNORE_INDEX)
    kept_target = np.where(ignored, IGNORE_INDEX, target)
    kept_pred = np.where(pred == IGNORE_INDEX, 0, pred)  # those pixels are skipped via the target
    conf = confusion_matrix(kept_pred, kept_target, num_classes)
    return {"confusion": conf, "ignored": int(ignored.sum()), "labelled": int(labelled.sum())}


def summarize_quality(confusion: np.ndarray, ignored: int, labelled: int) -> dict[str, float | None]:
    """{"miou": mIoU over non-ignored predictions, "ignored": fraction of labelled pixels left at 255}.

    Values are None when there is nothing to measure (no labelled pixel).
    """
    if not labelled:
        return {"miou": None, "ignored": None}
    mean, _ = miou(confusion)
    return {"miou": None if np.isnan(mean) else float(mean), "ignored": float(ignored / labelled)}


def sparse_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A count array as its non-zero (flat index, value) pairs: small to return from a worker."""
    flat = np.asarray(counts).reshape(-1)
    idx = np.flatnonzero(flat)
    return idx.astype(np.int64), flat[idx]


def add_sparse(dst: np.ndarray, counts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Add :func:`sparse_counts` output into the C-contiguous array ``dst`` (in place; returns it)."""
    idx, values = counts
    np.add.at(dst.reshape(-1), idx, values)
    return dst


def sweep_counts(scores: np.ndarray, keys: np.ndarray, target: np.ndarray, thresholds: np.ndarray,
                 num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One image's share of a :class:`ThresholdSweep`, as sparse (flat index, count) pairs.

    scores: (K, H, W), keys: (K,), target: (H, W); num_classes includes background. Merge with
    :func:`merge_sweep_counts`; the pairs stay small however large the sweep histogram is.
    """
    idx, counts = np.unique(sweep_bins(thresholds, num_classes, scores, keys, target), return_counts=True)
    return idx.astype(np.int64), counts.astype(np.int64)


def merge_sweep_counts(sweep: ThresholdSweep, counts: tuple[np.ndarray, np.ndarray]) -> None:
    """Add the output of :func:`sweep_counts` into ``sweep`` (same thresholds and classes)."""
    add_sparse(sweep.hist, counts)


def sweep_summary(sweep: ThresholdSweep) -> dict[str, float | None]:
    """Flat summary of a sweep for metrics files: {"sweep_miou": .., "best_threshold": ..}.

    Without any labelled pixel (no ground truth) both values are None.
    """
    if sweep.hist.sum() == 0:
        return {"sweep_miou": None, "best_threshold": None}
    res = sweep.result()
    return {"sweep_miou": res["best_miou"], "best_threshold": res["best_threshold"]}


class SweepTotal:
    """A :class:`ThresholdSweep` summed over images from :func:`sweep_counts` results (None: an image
    without a mask): the running total of :func:`pipeline.common.parallel.fold_items`."""

    def __init__(self, thresholds: np.ndarray, num_classes: int):
        self.sweep = ThresholdSweep(thresholds, num_classes)

    def add(self, counts: tuple[np.ndarray, np.ndarray] | None) -> None:
        if counts is not None:
            merge_sweep_counts(self.sweep, counts)

    def merge(self, other: SweepTotal) -> None:
        self.sweep.hist += other.sweep.hist

    def summary(self) -> dict[str, float | None]:
        return sweep_summary(self.sweep)


class QualityTotal:
    """Per score source, the Eq. 16 label quality (:func:`label_quality`) and the threshold sweep summed
    over images. ``add`` takes one image's ``{source: (quality with sparse confusion, sweep counts)}``
    ({} without a mask); memory is one confusion matrix and one sweep per source, whatever the images."""

    def __init__(self, sources: tuple[str, ...], thresholds: np.ndarray, num_classes: int):
        self.confusion = {s: np.zeros((num_classes, num_classes), np.int64) for s in sources}
        self.ignored = dict.fromkeys(sources, 0)
        self.labelled = dict.fromkeys(sources, 0)
        self.sweeps = {s: SweepTotal(thresholds, num_classes) for s in sources}

    def add(self, image: dict) -> None:
        for name, (quality, counts) in image.items():
            add_sparse(self.confusion[name], quality["confusion"])
            self.ignored[name] += quality["ignored"]
            self.labelled[name] += quality["labelled"]
            self.sweeps[name].add(counts)

    def merge(self, other: QualityTotal) -> None:
        for name in self.confusion:
            self.confusion[name] += other.confusion[name]
            self.ignored[name] += other.ignored[name]
            self.labelled[name] += other.labelled[name]
            self.sweeps[name].merge(other.sweeps[name])

    def summary(self, name: str) -> dict[str, float | None]:
        """{"miou", "ignored"} of the labels and {"sweep_miou", "best_threshold"} of the scores."""
        return {**summarize_quality(self.confusion[name], self.ignored[name], self.labelled[name]),
                **self.sweeps[name].summary()}

"""The prepared-manifest contract: every stage after ``prepare`` reads images, masks and image-level
labels through it, whatever the source dataset was.

``data/prepared/manifest.json``::

    {"dataset": "toyvoc",
     "class_names": ["background", "c1", ..., "cC"],
     "splits": {"train": [{"id": ..., "image": ..., "mask": ... | null, "labels": [1, 5]}, ...],
                "val": [...]}}

Paths are relative to the repository root (the working directory of every stage) or absolute.
``labels`` are the sorted foreground class indices (1..C) present in the image.

Also here: the label-map checks shared by the dataset readers (:func:`labels_from_mask`,
:func:`validate_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import numpy as np

from pipeline.common.io import DataError, read_json
from pipeline.vocabulary import IGNORE_INDEX


@dataclass(frozen=True)
class Sample:
    """One image: ``labels`` are the sorted foreground classes (1..C); ``mask`` may be None."""

    id: str
    image: str
    mask: str | None
    labels: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image, "mask": self.mask, "labels": list(self.labels)}


@dataclass(frozen=True)
class Manifest:
    """The prepared dataset: class names (index 0 = background) and samples per split."""

    dataset: str
    class_names: tuple[str, ...]
    splits: Mapping[str, tuple[Sample, ...]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """C, the number of foreground classes."""
        return len(self.class_names) - 1

    def split(self, name: str) -> list[Sample]:
        if name not in self.splits:
            known = ", ".join(self.splits) or "none"
            raise DataError(f"manifest of {self.dataset!r} has no split {name!r} (has: {known})")
        return list(self.splits[name])

    def multi_hot(self, sample: Sample) -> np.ndarray:
        """(C,) float32 image-level target; index k <-> class k + 1."""
        return multi_hot(sample.labels, self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "class_names": list(self.class_names),
            "splits": {name: [s.to_dict() for s in samples] for name, samples in self.splits.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> Manifest:
        """Validate and build; a malformed manifest raises DataError naming ``source``."""
        if not isinstance(data, dict):
            raise DataError(f"{source}: expected a JSON object, got {type(data).__name__}")
        for key in ("dataset", "class_names", "splits"):
            if key not in data:
                raise DataError(f"{source}: missing key {key!r}")
        names = data["class_names"]
        if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
            raise DataError(f"{source}: class_names must list 'background' and at least one class")
        if not isinstance(data["splits"], dict):
            raise DataError(f"{source}: splits must be an object of split name -> list of samples")
        num_classes = len(names) - 1
        splits = {}
        for split, rows in data["splits"].items():
            if not isinstance(rows, list):
                raise DataError(f"{source}: split {split!r} must be a list of samples")
            splits[split] = tuple(_sample_from_dict(row, num_classes, f"{source}: split {split!r}")
                                  for row in rows)
        return cls(str(data["dataset"]), tuple(names), splits)


def _sample_from_dict(row: Any, num_classes: int, where: str) -> Sample:
    if not isinstance(row, dict) or not {"id", "image", "labels"} <= row.keys():
        raise DataError(f"{where}: each sample needs id, image, mask and labels (got {row!r:.120})")
    labels = row["labels"]
    if (not isinstance(labels, list) or not all(isinstance(k, int) and 1 <= k <= num_classes for k in labels)
            or labels != sorted(set(labels))):
        raise DataError(f"{where}: sample {row['id']!r} has labels {labels!r}; "
                        f"expected sorted distinct class indices in 1..{num_classes}")
    mask = row.get("mask")
    return Sample(str(row["id"]), str(row["image"]), None if mask is None else str(mask), tuple(labels))


def load_manifest(path: str | Path) -> Manifest:
    """Read ``manifest.json``; a missing or invalid file raises DataError naming it."""
    return Manifest.from_dict(read_json(path), source=str(path))


def multi_hot(labels: tuple[int, ...] | list[int], num_classes: int) -> np.ndarray:
    """Foreground class indices (1..C) -> (C,) float32 with ones at ``k - 1``."""
    out = np.zeros(num_classes, dtype=np.float32)
    for k in labels:
        out[k - 1] = 1.0
    return out


def labels_from_mask(mask: np.ndarray, num_classes: int) -> list[int]:
    """Sorted foreground classes present in a label map: ``mask`` (H, W) int -> values in 1..C.

    Background 0, the ignore value 255 and anything above C are left out.
    """
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256)
    return [k for k in range(1, num_classes + 1) if counts[k] > 0]


def validate_mask(mask: np.ndarray, image_size: tuple[int, int], num_classes: int, path: str | Path) -> None:
    """Check a label map against its image: ``mask`` (H, W) must match ``image_size`` (H, W) and hold
    only 0..C and 255; otherwise raise DataError naming ``path``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"{path}: label map must be single-channel, got shape {mask.shape}")
    if tuple(mask.shape) != tuple(image_size):
        raise DataError(f"{path}: label map is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is "
                        f"{image_size[1]}x{image_size[0]}")
    counts = np.bincount(mask.astype(np.int64).ravel().clip(0, 256), minlength=257)
    bad = [v for v in range(num_classes + 1, 257) if counts[v] and v != IGNORE_INDEX]
    if (mask < 0).any() or bad:
        shown = ", ".join(str(v) for v in bad[:8]) or "negative values"
        raise DataError(f"{path}: label values {shown} outside 0..{num_classes} and {IGNORE_INDEX}")


def manifest_summary(manifest: Manifest) -> dict:
    """Counts per split and label frequency (images containing each class): stage prepare's summary.json."""
    from collections import Counter

    out: dict = {"dataset": manifest.dataset, "num_classes": manifest.num_classes, "splits": {}}
    for name, samples in manifest.splits.items():
        freq = Counter(k for s in samples for k in s.labels)
        out["splits"][name] = {
            "images": len(samples),
            "with_mask": sum(s.mask is not None for s in samples),
            "labels_per_image": round(sum(len(s.labels) for s in samples) / max(len(samples), 1), 4),
            "label_frequency": {manifest.class_names[k]: freq.get(k, 0) for k in range(1, manifest.num_classes + 1)},
        }
    return out

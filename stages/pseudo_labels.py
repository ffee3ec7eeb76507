"""Stage `pseudo_labels`: Eq. 16 pseudo labels for every train image, and the quality of every source.

The labels come from ``pseudo.source``: raw exported CAMs (``cam``, ``avg``, ``aream``,
``first_k`` from ``data/cams``) or post-processed scores (``par``, ``crf``, ``psa`` from
``data/scores``), thresholded by Eq. 16 with ``pseudo.alpha1`` / ``pseudo.alpha2`` and written to
``data/pseudo/<id>.png`` (VOC palette; 0 background, classes, 255 ignore).

``reports/pseudo/metrics.json`` compares every configured source, the ``cams.variants`` and the three
post-processing methods (the paper's Table I; a missing one is an error that names it):

    {"miou": .., "ignored": .., "images": ..,              # the selected source
     "<source>": {"miou": .., "ignored": .., "sweep_miou": .., "best_threshold": ..}, ...}

``miou`` is the mIoU of the Eq. 16 labels over the pixels they label (255 predictions are not
errors; ``ignored`` is the fraction of labelled ground-truth pixels they leave at 255) and
``sweep_miou`` the best mIoU of the scores over the background thresholds of ``cams.sweep``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from pipeline.cams.infer import load_cam_scores
from pipeline.common.io import DataError, atomic_dir, read_label_png, read_npz, write_json, write_label_png
from pipeline.common.parallel import fold_items
from pipeline.config import Params
from pipeline.data.manifest import Sample, load_manifest
from pipeline.metrics import thresholds_from
from pipeline.postprocess.labels import QualityTotal, label_quality, pseudo_labels_keyed, sparse_counts, sweep_counts
from pipeline.vocabulary import CAM_VARIANTS, POST_METHODS
from stages._common import CAMS, MANIFEST, PSEUDO, REPORTS, SCORES, stage_main

REPORT = REPORTS / "pseudo" / "metrics.json"


def source_scores(sample_id: str, source: str, cams: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(keys (K,) int64, scores (K, H, W) float32) of one image from one source."""
    if source in CAM_VARIANTS:
        return np.asarray(cams["keys"], np.int64), load_cam_scores(cams, source)
    path = SCORES / source / f"{sample_id}.npz"
    npz = read_npz(path)
    if "scores" not in npz or "keys" not in npz:
        raise DataError(f"{path}: expected arrays 'keys' and 'scores', found {sorted(npz)}")
    return np.asarray(npz["keys"], np.int64), np.asarray(npz["scores"], np.float32)


def label_one(sample: Sample, out_dir: str, source: str, sources: tuple[str, ...], alpha1: float, alpha2: float,
              thresholds: np.ndarray, num_classes: int) -> dict:
    """Write the image's pseudo label; return per-source quality and sweep counts ({} without a mask)."""
    cams = read_npz(CAMS / f"{sample.id}.npz")
    gt = None if sample.mask is None else read_label_png(sample.mask)
    out = {}
    for name in sources:
        keys, scores = source_scores(sample.id, name, cams)
        label = pseudo_labels_keyed(scores, keys, alpha1, alpha2)
        if gt is not None and label.shape != gt.shape:
            raise DataError(f"{name} scores of {sample.id} are {label.shape} but its mask {sample.mask} is {gt.shape}")
        if name == source:
            write_label_png(Path(out_dir) / f"{sample.id}.png", label.astype(np.uint8))
        if gt is not None:
            q = label_quality(label, gt, num_classes)
            q["confusion"] = sparse_counts(q["confusion"])
            out[name] = (q, sweep_counts(scores, keys, gt, thresholds, num_classes))
    return out


def configured_sources(variants: list[str]) -> tuple[str, ...]:
    """Every score source this stage measures: the exported CAM variants (``cams.variants``) and the three
    post-processing methods (all dvc.yaml dependencies). A file missing for any image is an error that
    names it, never a source silently dropped."""
    return tuple(s for s in CAM_VARIANTS if s in variants) + POST_METHODS


def run(params: Params) -> None:
    cfg = params.pseudo
    manifest = load_manifest(MANIFEST)
    samples = manifest.split("train")
    if not samples:
        raise DataError(f"{MANIFEST}: the train split is empty")
    num_classes = manifest.num_classes + 1
    thresholds = thresholds_from(params.cams.sweep)
    sources = configured_sources(params.cams.variants)
    if cfg.source not in sources:
        raise DataError(f"pseudo.source {cfg.source!r}: not exported "
                        f"(cams.variants: {', '.join(params.cams.variants)})")
    first = read_npz(CAMS / f"{samples[0].id}.npz")
    missing = [v for v in sources if v in CAM_VARIANTS and v not in first]
    if missing:
        raise DataError(f"{CAMS / samples[0].id}.npz: no {missing[0]!r} CAMs, but cams.variants lists it "
                        "(rerun stage export_cams)")
    for method in POST_METHODS:
        if not (SCORES / method).is_dir():
            raise DataError(f"{SCORES / method}: no {method} scores (run stage postprocess_{method})")

    with atomic_dir(PSEUDO) as tmp:
        fn = functools.partial(label_one, out_dir=str(tmp), source=cfg.source, sources=sources, alpha1=cfg.alpha1,
                               alpha2=cfg.alpha2, thresholds=thresholds, num_classes=num_classes)
        start = functools.partial(QualityTotal, sources, thresholds, num_classes)
        total = fold_items(fn, samples, params.runtime, start, desc="pseudo labels")

    metrics = {name: total.summary(name) for name in sources}
    summary = {"miou": metrics[cfg.source]["miou"], "ignored": metrics[cfg.source]["ignored"], "images": len(samples)}
    write_json(REPORT, {**summary, **metrics})
    rows = ", ".join(f"{n} {m['miou']}" for n, m in metrics.items())
    print(f"pseudo labels from {cfg.source}: {len(samples)} images; Eq. 16 mIoU by source: {rows}")


if __name__ == "__main__":
    stage_main(run)

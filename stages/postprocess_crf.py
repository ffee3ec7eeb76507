"""Stage `postprocess_crf`: dense CRF on the exported CAMs (Table I, P.P. column).

For every train image: the ``post.cam_variant`` CAMs at image size, a background score
``(1 - max) ** crf.alpha`` in front, dense CRF (``crf`` params), and the posterior of the
foreground classes is written to ``data/scores/crf/<id>.npz`` (``keys`` int16 (K,), ``scores``
float16 (K, H, W)). Images run in parallel (``runtime.task_runner`` / ``runtime.workers``): the
CRF is single-threaded. ``reports/postprocess/crf.json`` holds the best background-threshold
mIoU of these scores on the train split (``cams.sweep``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from pipeline.cams import load_cam_scores
from pipeline.config import Params
from pipeline.data.manifest import Sample, load_manifest
from pipeline.io import DataError, atomic_dir, read_label_png, read_npz, read_rgb, write_json, write_npz
from pipeline.metrics import ThresholdSweep, thresholds_from
from pipeline.parallel import map_items
from pipeline.postprocess.crf import crf_params, crf_scores
from pipeline.postprocess.labels import merge_sweep_counts, sweep_counts, sweep_summary
from stages._common import CAMS, MANIFEST, REPORTS, SCORES, stage_main

METHOD = "crf"
REPORT = REPORTS / "postprocess" / f"{METHOD}.json"


def load_inputs(sample: Sample, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, keys (K,) int64, scores (K, H, W) float32) of one train image."""
    path = CAMS / f"{sample.id}.npz"
    npz = read_npz(path)
    if variant not in npz or "keys" not in npz:
        raise DataError(f"{path}: no {variant!r} CAMs (has {sorted(npz)}); check post.cam_variant and cams.variants")
    image = read_rgb(sample.image)
    scores = load_cam_scores(npz, variant)
    if scores.shape[1:] != image.shape[:2]:
        raise DataError(f"{path}: CAMs are {scores.shape[1:]} but image {sample.image} is {image.shape[:2]}")
    return image, np.asarray(npz["keys"], np.int64), scores


def refine_one(sample: Sample, out_dir: str, variant: str, alpha: float, crf_kwargs: dict,
               thresholds: np.ndarray, num_classes: int):
    """CRF one image, write its scores; return its sweep counts (None without a mask)."""
    image, keys, scores = load_inputs(sample, variant)
    refined = crf_scores(image, scores, alpha, **crf_kwargs)
    write_npz(Path(out_dir) / f"{sample.id}.npz", keys=keys.astype(np.int16), scores=refined.astype(np.float16))
    if sample.mask is None:
        return None
    return sweep_counts(refined, keys, read_label_png(sample.mask), thresholds, num_classes)


def run(params: Params) -> None:
    manifest = load_manifest(MANIFEST)
    samples = manifest.split("train")
    thresholds = thresholds_from(params.cams.sweep)
    num_classes = manifest.num_classes + 1
    with atomic_dir(SCORES / METHOD) as tmp:
        fn = functools.partial(refine_one, out_dir=str(tmp), variant=params.post.cam_variant,
                               alpha=params.crf.alpha, crf_kwargs=crf_params(params.crf),
                               thresholds=thresholds, num_classes=num_classes)
        counts = map_items(fn, samples, params.runtime, desc=METHOD)
    sweep = ThresholdSweep(thresholds, num_classes)
    for c in counts:
        if c is not None:
            merge_sweep_counts(sweep, c)
    metrics = {**sweep_summary(sweep), "images": len(samples)}
    write_json(REPORT, metrics)
    print(f"{METHOD}: {len(samples)} images, sweep mIoU {metrics['sweep_miou']}")


if __name__ == "__main__":
    stage_main(run)

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

from pipeline.config import Params
from pipeline.data.manifest import Sample, load_manifest
from pipeline.io import atomic_dir, read_label_png, write_npz
from pipeline.metrics import thresholds_from
from pipeline.parallel import map_items
from pipeline.postprocess.crf import crf_params, crf_scores
from pipeline.postprocess.labels import sweep_counts
from stages._cam_inputs import load_cam_inputs, write_sweep_report
from stages._common import MANIFEST, SCORES, stage_main

METHOD = "crf"


def refine_one(sample: Sample, out_dir: str, variant: str, alpha: float, crf_kwargs: dict,
               thresholds: np.ndarray, num_classes: int):
    """CRF one image, write its scores; return its sweep counts (None without a mask)."""
    image, keys, scores = load_cam_inputs(sample, variant)
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
    write_sweep_report(METHOD, counts, thresholds, num_classes, len(samples))


if __name__ == "__main__":
    stage_main(run)

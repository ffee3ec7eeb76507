"""What the stages that read exported CAMs share: loading them, the per-image fan-out choice, and the
refine-write-measure loop of the post-processing methods with its sweep report."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.io import DataError, atomic_dir, read_label_png, read_npz, read_rgb, write_json, write_npz
from pipeline.config import Params, Runtime
from stages._common import CAMS, MANIFEST, REPORTS, SCORES


def load_cam_inputs(sample: Any, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, keys (K,) int64, scores (K, H, W) float32) of one exported train image."""
    from pipeline.cams.infer import load_cam_scores

    path = CAMS / f"{sample.id}.npz"
    npz = read_npz(path)
    if variant not in npz or "keys" not in npz:
        raise DataError(f"{path}: no {variant!r} CAMs (has {sorted(npz)}); check post.cam_variant and cams.variants")
    image = read_rgb(sample.image)
    scores = load_cam_scores(npz, variant)
    if scores.shape[1:] != image.shape[:2]:
        raise DataError(f"{path}: CAMs are {scores.shape[1:]} but image {sample.image} is {image.shape[:2]}")
    return image, np.asarray(npz["keys"], np.int64), scores


def fan_out_runtime(runtime: Runtime, device_type: str) -> tuple[Runtime, int]:
    """(runtime for map_items, torch threads per task) of a per-image torch step: one thread per
    process when images fan out over CPU processes; serial (all threads, 0 = leave as is) on a GPU,
    with task_runner serial or with a single worker."""
    from pipeline.common.parallel import num_workers

    if device_type == "cpu" and runtime.task_runner != "serial" and num_workers(runtime) > 1:
        return runtime, 1
    return runtime.model_copy(update={"task_runner": "serial"}), 0


def write_sweep_report(method: str, total: Any, num_images: int) -> dict:
    """The summed sweep (a :class:`pipeline.postprocess.labels.SweepTotal`) as reports/postprocess/<method>.json."""
    metrics = {**total.summary(), "images": num_images}
    write_json(REPORTS / "postprocess" / f"{method}.json", metrics)
    print(f"{method}: {num_images} images, sweep mIoU {metrics['sweep_miou']}")
    return metrics


def refine_and_count(sample: Any, refine: Callable[[np.ndarray, np.ndarray], np.ndarray], out_dir: str,
                     variant: str, thresholds: np.ndarray, num_classes: int, threads: int = 0) -> dict | None:
    """Refine one image's CAMs with ``refine(image, scores) -> scores``, write ``out_dir/<id>.npz``
    (``keys`` int16, ``scores`` float16) and return its sweep counts (None without a mask)."""
    from pipeline.postprocess.labels import sweep_counts

    if threads:
        import torch

        torch.set_num_threads(threads)
    image, keys, scores = load_cam_inputs(sample, variant)
    refined = refine(image, scores)
    write_npz(Path(out_dir) / f"{sample.id}.npz", keys=keys.astype(np.int16), scores=refined.astype(np.float16))
    if sample.mask is None:
        return None
    return sweep_counts(refined, keys, read_label_png(sample.mask), thresholds, num_classes)


def run_refinement(method: str, params: Params, refine: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   runtime: Runtime | None = None, threads: int = 0) -> dict:
    """The post-processing stage ``method``: every train image's ``post.cam_variant`` CAMs through
    ``refine`` (a picklable callable: images fan out over ``runtime``) into ``data/scores/<method>/``, built
    atomically, then the sweep report."""
    from pipeline.common.parallel import fold_items
    from pipeline.data.manifest import load_manifest
    from pipeline.metrics import thresholds_from
    from pipeline.postprocess.labels import SweepTotal

    manifest = load_manifest(MANIFEST)
    samples = manifest.split("train")
    thresholds = thresholds_from(params.cams.sweep)
    num_classes = manifest.num_classes + 1
    with atomic_dir(SCORES / method) as tmp:
        fn = functools.partial(refine_and_count, refine=refine, out_dir=str(tmp), variant=params.post.cam_variant,
                               thresholds=thresholds, num_classes=num_classes, threads=threads)
        start = functools.partial(SweepTotal, thresholds, num_classes)
        total = fold_items(fn, samples, runtime or params.runtime, start, desc=method)
    return write_sweep_report(method, total, len(samples))

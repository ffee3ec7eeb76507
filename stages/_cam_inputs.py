"""What the stages that read exported CAMs share: loading them, the per-image fan-out choice and the
sweep report of the post-processing methods."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import Runtime
from pipeline.io import DataError, read_npz, read_rgb, write_json
from stages._common import CAMS, REPORTS


def load_cam_inputs(sample: Any, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, keys (K,) int64, scores (K, H, W) float32) of one exported train image."""
    from pipeline.cams import load_cam_scores

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
    from pipeline.parallel import num_workers

    if device_type == "cpu" and runtime.task_runner != "serial" and num_workers(runtime) > 1:
        return runtime, 1
    return runtime.model_copy(update={"task_runner": "serial"}), 0


def write_sweep_report(method: str, counts: list, thresholds: np.ndarray, num_classes: int,
                       num_images: int) -> dict:
    """Merge per-image sweep counts (None = no mask) into reports/postprocess/<method>.json."""
    from pipeline.metrics import ThresholdSweep
    from pipeline.postprocess.labels import merge_sweep_counts, sweep_summary

    sweep = ThresholdSweep(thresholds, num_classes)
    for c in counts:
        if c is not None:
            merge_sweep_counts(sweep, c)
    metrics = {**sweep_summary(sweep), "images": num_images}
    write_json(REPORTS / "postprocess" / f"{method}.json", metrics)
    print(f"{method}: {num_images} images, sweep mIoU {metrics['sweep_miou']}")
    return metrics

"""What every stage shares: the output paths of the DAG (mirrored in dvc.yaml) and the entry wrapper."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.config import ConfigError, Params, Runtime, load_params
from pipeline.io import DataError, read_npz, read_rgb, write_json

DATA = Path("data")
MODELS = Path("models")
REPORTS = Path("reports")

PREPARED = DATA / "prepared"                 # prepare: manifest.json (+ generated / rasterised files)
MANIFEST = PREPARED / "manifest.json"
CAMS = DATA / "cams"                         # export_cams: <id>.npz per image
SCORES = DATA / "scores"                     # postprocess_<m>: SCORES/<m>/<id>.npz
PSEUDO = DATA / "pseudo"                     # pseudo_labels: <id>.png (VOC palette)
CLASSIFIER = MODELS / "classifier"           # train_cls: model.pt
CLASSIFIER_CKPT = MODELS / "classifier_ckpt"  # train_cls: resume checkpoint (gitignored, not a DVC output)
AFFINITYNET = MODELS / "affinitynet"         # train_psa: model.pt
SEGMENTER = MODELS / "segmenter"             # train_seg: model.pt
SEGMENTER_CKPT = MODELS / "segmenter_ckpt"   # train_seg: resume checkpoint (gitignored, not a DVC output)
SEGMENTER_GT = MODELS / "segmenter_gt"       # train_seg_gt: the fully supervised upper bound's model.pt
SEGMENTER_GT_CKPT = MODELS / "segmenter_gt_ckpt"  # train_seg_gt: resume checkpoint (gitignored, not a DVC output)
SKIPPED = "SKIPPED.txt"  # train_seg_gt writes this instead of model.pt when upper_bound.enabled is false


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


def load_trained_classifier(params: Params) -> tuple[Any, Any]:
    """(classifier in eval mode, device) from models/classifier/model.pt; on CPU torch gets
    ``runtime.workers`` threads (the stage runs one batched forward at a time)."""
    import torch

    from pipeline.device import resolve_device
    from pipeline.models.vit import load_classifier
    from pipeline.parallel import num_workers

    path = CLASSIFIER / "model.pt"
    if not path.exists():
        raise DataError(f"{path}: classifier not found (run stage train_cls first)")
    device = resolve_device(params.runtime.device)
    model = load_classifier(path, device)
    model.eval()
    if device.type == "cpu":
        torch.set_num_threads(max(1, num_workers(params.runtime)))
    return model, device


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


def stage_main(run: Callable[[Params], None]) -> None:
    """Load params.yaml, run the stage; a user-fixable error prints one line and exits 2."""
    start = time.perf_counter()
    try:
        params = load_params()
        run(params)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; rerun the stage to continue", file=sys.stderr)
        sys.exit(130)
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)

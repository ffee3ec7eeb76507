"""Stage `evaluate`: mIoU of the segmentation network on the val split (Table IV of the paper).

Every val image with a ground-truth mask is predicted with multi-scale + flip inference
(``eval.scales``, ``eval.flip``; softmax averaged) and, with ``eval.crf.enabled``, refined by a dense CRF
with the kernel parameters of ``eval.crf`` (images run in parallel per ``runtime``). Writes:

- ``reports/evaluate/metrics.json``: ``miou``, ``pixel_acc``, ``mean_acc``, ``num_images`` and
  ``per_class`` ({class name: IoU}; null for a class absent from both ground truth and prediction);
- ``reports/evaluate/confusion.csv``: long format ``actual,predicted,pixels,fraction`` (fraction of
  the actual class's pixels; zero cells left out);
- ``reports/evaluate/figures/confusion.png``: the row-normalised confusion matrix;
- ``reports/evaluate/figures/overlays/<id>.png``: image | ground truth | prediction, for the first
  ``eval.num_overlays`` val images.

``python -m stages.evaluate --upper-bound`` (stage ``evaluate_gt``) evaluates the fully supervised
model of ``train_seg_gt`` the same way and writes the same files under ``reports/evaluate_gt/``.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch

from pipeline.common.device import resolve_device
from pipeline.common.io import DataError, atomic_dir, read_label_png, read_rgb, write_bytes, write_json
from pipeline.common.parallel import map_items, num_workers
from pipeline.common.progress import progress
from pipeline.config import Params
from pipeline.data.manifest import Sample, load_manifest, validate_mask
from pipeline.evaluate.inference import cap_side, crf_label, image_tensor, label_to_size, predict_probs, to_label
from pipeline.common.grouping import groups_of
from pipeline.evaluate.scoring import confusion_csv, confusion_figure, overlay_figure, summarize
from pipeline.metrics import confusion_matrix
from pipeline.models.segmenter import load_segmenter
from stages._common import MANIFEST, REPORTS, SEGMENTER, SEGMENTER_GT, SKIPPED, stage_main, write_skipped

MODEL = SEGMENTER / "model.pt"
OUT = REPORTS / "evaluate"
UPPER_BOUND_MODEL = SEGMENTER_GT / "model.pt"
UPPER_BOUND_OUT = REPORTS / "evaluate_gt"


def run(params: Params, upper_bound: bool = False) -> None:
    cfg = params.eval
    model_path, out = (UPPER_BOUND_MODEL, UPPER_BOUND_OUT) if upper_bound else (MODEL, OUT)
    stage = "train_seg_gt" if upper_bound else "train_seg"
    if upper_bound and not model_path.is_file() and (model_path.parent / SKIPPED).is_file():
        with atomic_dir(out / "figures"):
            pass
        write_skipped("evaluate_gt", "upper_bound.enabled", out / "metrics.json", miou=None,
                      files={out / "confusion.csv": b"actual,predicted,pixels,fraction\n"})
        return
    manifest = load_manifest(MANIFEST)
    num_classes = manifest.num_classes + 1
    samples = [s for s in manifest.split("val") if s.mask is not None]
    skipped = len(manifest.split("val")) - len(samples)
    if not samples:
        raise DataError(f"{MANIFEST}: no val image has a ground-truth mask; nothing to evaluate")
    if skipped:
        print(f"evaluate: skipped {skipped} val images without a ground-truth mask", flush=True)
    device = resolve_device(params.runtime.device)
    if not model_path.is_file():
        raise DataError(f"{model_path}: segmentation model not found (run stage {stage} first)")
    model = load_segmenter(model_path, device)
    if model.num_classes != num_classes:
        raise DataError(f"{model_path}: the model predicts {model.num_classes} classes but the manifest has "
                        f"{num_classes} (background included); rerun {stage}")
    class_names = list(manifest.class_names)
    kernels = cfg.crf if cfg.crf.enabled else None
    conf = np.zeros((num_classes, num_classes), np.int64)
    start = time.perf_counter()
    chunk = max(8, 8 * num_workers(params.runtime)) if cfg.crf.enabled else 1
    with atomic_dir(out / "figures") as figures:
        overlays = figures / "overlays"
        overlays.mkdir()
        done = 0
        groups = groups_of(samples, chunk)
        for group in progress(groups, desc=f"evaluate ({len(samples)} images, groups of {chunk})", total=len(groups)):
            images, masks, probs = [], [], []
            for s in group:
                image, mask = _load(s, num_classes)
                image = cap_side(image, cfg.max_side)  # the network, the probabilities and the CRF at <= max_side
                p = predict_probs(model, image_tensor(image, device), cfg.scales, cfg.flip, amp=device.type == "cuda")
                images.append(image)
                masks.append(mask)
                probs.append(p[0].cpu().numpy().astype(np.float16) if kernels else to_label(p))
            if kernels is not None:
                preds = map_items(functools.partial(crf_label, kernels=kernels), list(zip(images, probs)),
                                  params.runtime, desc="dense CRF")
            else:
                preds = probs
            for s, image, mask, pred in zip(group, images, masks, preds):
                pred = label_to_size(pred, mask.shape)
                confusion_matrix(pred, mask, num_classes, out=conf)
                if done < cfg.num_overlays:
                    if image.shape[:2] != mask.shape:
                        image = read_rgb(s.image)
                    write_bytes(overlays / f"{s.id}.png", overlay_figure(image, mask, pred, class_names, s.id))
                done += 1
        write_bytes(figures / "confusion.png", confusion_figure(conf, class_names))
    elapsed = time.perf_counter() - start
    metrics = summarize(conf, class_names)
    metrics = {"miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"], "mean_acc": metrics["mean_acc"],
               "num_images": len(samples), "per_class": metrics["per_class"]}
    write_json(out / "metrics.json", metrics)
    write_bytes(out / "confusion.csv", confusion_csv(conf, class_names).encode())
    shown = "n/a" if metrics["miou"] is None else f"{100 * metrics['miou']:.1f}%"
    print(f"evaluate: {model_path} val mIoU {shown} on {len(samples)} images (scales {cfg.scales}, flip {cfg.flip}, "
          f"crf {cfg.crf.enabled}) in {elapsed:.1f} s", flush=True)


def _load(sample: Sample, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    image, mask = read_rgb(sample.image), read_label_png(sample.mask)
    validate_mask(mask, image.shape[:2], num_classes, sample.mask)
    return image, mask


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    stage_main(run, lambda cli: cli.add_argument(
        "--upper-bound", action="store_true",
        help="evaluate models/segmenter_gt into reports/evaluate_gt (stage evaluate_gt)"))

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

import argparse
import csv
import functools
import io
import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.config import Params
from pipeline.data.manifest import Sample, load_manifest, validate_mask
from pipeline.device import resolve_device
from pipeline.inference import crf_label, image_tensor, predict_probs, side_by_side, to_label
from pipeline.io import DataError, atomic_dir, read_label_png, read_rgb, write_bytes, write_json, write_rgb
from pipeline.metrics import confusion_matrix, miou
from pipeline.models.segmenter import load_segmenter
from pipeline.palette import colorize
from pipeline.parallel import map_items, num_workers
from stages._common import MANIFEST, REPORTS, SEGMENTER, SEGMENTER_GT, SKIPPED, stage_main

MODEL = SEGMENTER / "model.pt"
OUT = REPORTS / "evaluate"
UPPER_BOUND_MODEL = SEGMENTER_GT / "model.pt"
UPPER_BOUND_OUT = REPORTS / "evaluate_gt"


def summarize(conf: np.ndarray, class_names: list[str]) -> dict:
    """metrics.json content from a (K, K) confusion matrix (rows = ground truth)."""
    mean, per_class = miou(conf)
    total = conf.sum()
    rows = conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(rows > 0, np.diag(conf) / np.maximum(rows, 1), np.nan)
    return {
        "miou": _num(mean),
        "pixel_acc": _num(np.trace(conf) / total) if total else None,
        "mean_acc": _num(np.nanmean(recall)) if np.any(~np.isnan(recall)) else None,
        "per_class": {name: _num(v) for name, v in zip(class_names, per_class)},
    }


def _num(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else round(v, 6)


def confusion_rows(conf: np.ndarray, class_names: list[str]) -> list[dict]:
    """Long-format rows of the non-zero cells: actual, predicted, pixels, fraction of the actual row."""
    rows = conf.sum(1)
    out = []
    for g, p in zip(*np.nonzero(conf)):
        out.append({"actual": class_names[g], "predicted": class_names[p], "pixels": int(conf[g, p]),
                    "fraction": round(float(conf[g, p] / rows[g]), 6)})
    return out


def confusion_csv(conf: np.ndarray, class_names: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["actual", "predicted", "pixels", "fraction"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(confusion_rows(conf, class_names))
    return buf.getvalue()


def confusion_figure(conf: np.ndarray, class_names: list[str]) -> bytes:
    """PNG bytes of the row-normalised confusion matrix (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    size = min(4 + 0.32 * k, 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    font = max(4, min(9, int(300 / k)))
    ax.set_xticklabels(class_names, rotation=90, fontsize=font)
    ax.set_yticklabels(class_names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if k <= 25:
        for g in range(k):
            for p in range(k):
                if norm[g, p] >= 0.01:
                    ax.text(p, g, f"{norm[g, p]:.2f}", ha="center", va="center", fontsize=font - 1,
                            color="white" if norm[g, p] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("Confusion (rows normalised)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def overlay_panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """image | ground truth | prediction (ignored pixels in the palette's cream colour)."""
    return side_by_side([image, colorize(gt), colorize(pred)])


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def run(params: Params, upper_bound: bool = False) -> None:
    cfg = params.eval
    model_path, out = (UPPER_BOUND_MODEL, UPPER_BOUND_OUT) if upper_bound else (MODEL, OUT)
    stage = "train_seg_gt" if upper_bound else "train_seg"
    if upper_bound and not model_path.is_file() and (model_path.parent / SKIPPED).is_file():
        with atomic_dir(out / "figures"):
            pass
        write_json(out / "metrics.json", {"miou": None, "skipped": True})
        write_bytes(out / "confusion.csv", b"actual,predicted,pixels,fraction\n")
        print("evaluate_gt: skipped (upper_bound.enabled: false)", flush=True)
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
    crf_kwargs = None
    if cfg.crf.enabled:
        from pipeline.postprocess.crf import crf_params

        crf_kwargs = crf_params(cfg.crf)
    conf = np.zeros((num_classes, num_classes), np.int64)
    start = time.perf_counter()
    chunk = max(8, 8 * num_workers(params.runtime)) if cfg.crf.enabled else 1
    with atomic_dir(out / "figures") as figures:
        overlays = figures / "overlays"
        overlays.mkdir()
        done = 0
        bar = tqdm(total=len(samples), desc="evaluate", leave=False)
        for group in _chunks(samples, chunk):
            images, masks, probs = [], [], []
            for s in group:
                image, mask = _load(s, num_classes)
                p = predict_probs(model, image_tensor(image, device), cfg.scales, cfg.flip, amp=device.type == "cuda")
                images.append(image)
                masks.append(mask)
                probs.append(p[0].cpu().numpy().astype(np.float16) if crf_kwargs else to_label(p))
                bar.update(1)
            if crf_kwargs is not None:
                preds = map_items(functools.partial(crf_label, crf_kwargs=crf_kwargs), list(zip(images, probs)),
                                  params.runtime, desc="dense CRF")
            else:
                preds = probs
            for s, image, mask, pred in zip(group, images, masks, preds):
                confusion_matrix(pred, mask, num_classes, out=conf)
                if done < cfg.num_overlays:
                    write_rgb(overlays / f"{s.id}.png", overlay_panel(image, mask, pred))
                done += 1
        bar.close()
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
    cli = argparse.ArgumentParser(description="Evaluate the segmentation network on the val split (stage evaluate).")
    cli.add_argument("--upper-bound", action="store_true",
                     help="evaluate models/segmenter_gt into reports/evaluate_gt (stage evaluate_gt)")
    upper = cli.parse_args().upper_bound
    torch.set_grad_enabled(False)
    stage_main(functools.partial(run, upper_bound=upper))

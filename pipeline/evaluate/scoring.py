"""Scoring a segmenter (stages ``evaluate`` and ``evaluate_gt``), as a library: the metrics of a confusion
matrix (mIoU, pixel and mean accuracy, per-class IoU), its long-format CSV, the confusion figure and the
image | ground truth | prediction panels.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from pipeline.common.palette import colorize, voc_palette
from pipeline.metrics import miou
from pipeline.vocabulary import IGNORE_INDEX


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


def overlay_legend(gt: np.ndarray, pred: np.ndarray, class_names: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, RGB colour) of every label in either map, in label order; 255 is "ignored"."""
    palette = voc_palette()
    present = sorted(set(np.unique(gt).tolist()) | set(np.unique(pred).tolist()))
    names = {**dict(enumerate(class_names)), IGNORE_INDEX: "ignored"}
    return [(names.get(c, str(c)), tuple(int(v) for v in palette[c])) for c in present]


def overlay_figure(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, class_names: list[str],
                   title: str = "") -> bytes:
    """PNG bytes: image | ground truth | prediction, titled, with a legend naming the colour of every class
    in either map (and of ignored ground-truth pixels, 255, shown in the palette's cream colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.array(rgb) / 255.0, edgecolor="0.5", label=name)
               for name, rgb in overlay_legend(gt, pred, class_names)]
    h, w = image.shape[:2]
    fig, axes = plt.subplots(1, 3, figsize=(3 * 2.4 * w / max(h, w) + 0.4, 2.4 * h / max(h, w) + 0.9))
    for ax, panel, label in zip(axes, [image, colorize(gt), colorize(pred)], ["image", "ground truth", "prediction"]):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=6, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(handles) - 1) // 4), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()

"""Shared stand-ins for the tests: a duck-typed ViT whose CAMs and attention follow the image's colours, small
image sets with masks, and a tiny project folder laid out as the stages expect."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.common.io import write_json, write_label_png, write_rgb
from pipeline.data.manifest import Sample
from pipeline.models.inputs import normalize_imagenet

COLOURS = np.array([[40, 40, 40], [230, 30, 30], [30, 230, 30], [30, 30, 230]], np.uint8)


@dataclass
class FakeOutput:
    logits_cls: torch.Tensor
    logits_patch: torch.Tensor
    cam: torch.Tensor
    patch_cam: torch.Tensor
    attn: torch.Tensor
    attn_logits: torch.Tensor
    grid: tuple[int, int]


class FakeViT(torch.nn.Module):
    """Duck-typed stand-in for the classifier: per-token colour features, so it is flip-equivariant.

    cam: ReLU of a fixed linear map of each patch's mean colour; attn: layer l is a softmax over
    keys of -|colour_i - colour_j|^2 / t_l, sharp (diagonal) in shallow layers, flat in deep ones.
    """

    def __init__(self, num_classes: int = 3, depth: int = 4, patch_size: int = 8, img_size: int = 32, seed: int = 0,
                 weight: torch.Tensor | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(num_classes, 3, generator=g) if weight is None else weight)
        self.register_buffer("temps", torch.logspace(-2, 0.5, depth))
        self.img_size, self.patch_size, self.depth = img_size, patch_size, depth

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        return normalize_imagenet(x)

    def forward(self, x: torch.Tensor) -> FakeOutput:
        feat = F.avg_pool2d(x, self.patch_size)  # (B, 3, g, g)
        B, _, gh, gw = feat.shape
        logits = torch.einsum("cd,bdhw->bchw", self.w, feat - 0.5)
        tokens = feat.flatten(2).transpose(1, 2)  # (B, N, 3)
        d2 = torch.cdist(tokens, tokens) ** 2
        attn_logits = torch.stack([-d2 / t for t in self.temps], 1)
        return FakeOutput(logits.mean((2, 3)), logits.amax((2, 3)), logits.relu(), logits,
                          attn_logits.softmax(-1), attn_logits, (gh, gw))


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An asymmetric image: a bright block on the left third, noise elsewhere."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 120).astype(np.uint8)
    img[h // 4: 3 * h // 4, : w // 3] = (250, 30, 30)
    img[: h // 3, w // 2:] = (20, 220, 40)
    return img


def cam_dataset(tmp: Path, n: int = 5) -> list[Sample]:
    samples = []
    for i in range(n):
        h, w = 30 + 3 * i, 44 - 2 * i
        img = image(h, w, i)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4: 3 * h // 4, : w // 3] = 1
        mask[: h // 3, w // 2:] = 2
        write_rgb(tmp / f"img{i}.png", img)
        write_label_png(tmp / f"img{i}_m.png", mask)
        samples.append(Sample(f"img{i}", str(tmp / f"img{i}.png"), str(tmp / f"img{i}_m.png") if i else None, (1, 2)))
    return samples


def square_pairs(n: int, size: int = 32, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images of one coloured square (class 1..3) on grey; labels with a 255 ring around it."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 1 + i % 3
        label = np.zeros((size, size), np.uint8)
        y, x, s = rng.integers(0, size // 2, 2).tolist() + [int(rng.integers(size // 4, size // 2))]
        label[y:y + s, x:x + s] = k
        image = COLOURS[label] + rng.integers(0, 20, (size, size, 3)).astype(np.uint8)
        label[y - 1 if y else y, x:x + s] = 255
        out.append((image, label))
    return out


def write_toy_project(root, n_train=6, n_val=3, size=32):
    pairs = square_pairs(n_train + n_val, size)
    rows = {"train": [], "val": []}
    for i, (image, label) in enumerate(pairs):
        split = "train" if i < n_train else "val"
        sid = f"{split}_{i}"
        write_rgb(root / f"img/{sid}.png", image)
        write_label_png(root / f"gt/{sid}.png", label)
        labels = sorted(int(v) for v in np.unique(label) if 0 < v < 255)
        rows[split].append({"id": sid, "image": f"img/{sid}.png", "mask": f"gt/{sid}.png", "labels": labels})
        if split == "train":  # stand-in pseudo labels: a copy of the ground truth
            write_label_png(root / f"data/pseudo/{sid}.png", label)
    write_json(root / "data/prepared/manifest.json",
               {"dataset": "squares", "class_names": ["background", "red", "green", "blue"], "splits": rows})


def write_report_inputs(reports: Path, **files: dict) -> Path:
    """Every metrics file the report reads (stage ``report``), small and complete, under ``reports``; ``files``
    replaces one by its path relative to ``reports`` (e.g. ``{"evaluate/metrics.json": {...}}`` as a keyword
    via ``**``). Returns ``reports``."""
    cam = {"best_miou": 0.5, "best_threshold": 0.3}
    classifier = {"val_map": 0.8, "val_map_cls": 0.79, "val_map_patch": 0.78, "best_val_map": 0.81,
                  "chance_map": 0.1, "loss_cls": 0.2, "loss_aff": 0.3, "epochs": 2, "aream": True}
    labels = {"miou": 0.6, "ignored": 0.2}
    contents = {"train_cls/metrics.json": classifier,
                "train_cls_base/metrics.json": {**classifier, "aream": False, "loss_aff": 0.0},
                "cams/metrics.json": {"cam": cam, "avg": cam, "aream": cam},
                "cams_base/metrics.json": {"cam": cam, "avg": cam},
                "pseudo/metrics.json": {"cam": labels, "avg": labels, "aream": labels, "par": labels,
                                        "crf": labels, "psa": labels},
                **{f"postprocess/{m}.json": {"sweep_miou": 0.55, "best_threshold": 0.35}
                   for m in ("par", "crf", "psa")},
                "evaluate/metrics.json": {"miou": 0.4, "pixel_acc": 0.9},
                "evaluate_gt/metrics.json": {"miou": 0.5, "pixel_acc": 0.9}, **files}
    for rel, data in contents.items():
        write_json(reports / rel, data)
    (reports / "calibration").mkdir(parents=True, exist_ok=True)
    (reports / "calibration" / "calibration.md").write_text("## Calibration\n")
    (reports / "analysis").mkdir(parents=True, exist_ok=True)
    (reports / "analysis" / "layers.md").write_text("| layer |\n|---|\n| 1 |\n")
    return reports

"""Training the segmentation network on (pseudo) label maps: augmentation, loss, schedule, loop.

The recipe (all knobs in the ``seg`` params section):

- augmentation per image: random rescale by a factor in ``scale_range`` (bilinear image, nearest
  labels), random horizontal flip, random ``crop_size`` square crop; where the image is smaller
  than the crop it is padded with the encoder's mean colour and its labels with 255 (ignored);
- loss: per-pixel cross-entropy, pixels labelled 255 ignored (a batch with no labelled pixel has
  loss 0 and zero gradient, never NaN);
- SGD with momentum (the DeepLab recipe) or AdamW (``optimizer``; learns faster from random
  initialisation, the toy default), weight decay; poly learning rate
  ``lr * (1 - i / max_i) ** poly_power`` per iteration (the harness's schedule); the decoder / classifier runs at
  ``lr * head_lr_mult``;
- mixed precision on CUDA; DDP when the caller wrapped the model (the harness, :mod:`pipeline.train.harness`,
  also gives the padded per-process image order and the batches, a trailing single image dropped).

Randomness is a pure function of (``seed``, epoch, image index): the epoch's image order, each
image's augmentation and the dropout stream are re-seeded at every epoch start, so a run resumed
from an end-of-epoch checkpoint reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline.common.io import DataError, read_label_png, read_rgb
from pipeline.common.grouping import groups_of
from pipeline.common.progress import progress as progress_bar
from pipeline.config import Seg
from pipeline.data.manifest import Sample, validate_mask
from pipeline.models.segmenter import encoder_normalisation, param_groups
from pipeline.train.harness import (DROPOUT_STREAM, Distributed, OnEpoch, all_reduce_sum, amp, backward_step,
                                    epoch_order, epoch_seed, make_scheduler, restore_training_state, training_state)
from pipeline.vocabulary import IGNORE_INDEX

# ----------------------------------------------------------------------------------------------
# training data
# ----------------------------------------------------------------------------------------------


def training_pairs(samples: list[Sample], labels: str, pseudo_dir: Path) -> tuple[list[tuple[str, str]], int]:
    """(image path, label path) per usable train image, and the number skipped (gt without mask).
    ``labels``: ``gt`` (the manifest's masks) or ``pseudo`` (``pseudo_dir/<id>.png``, each must exist)."""
    pairs, skipped = [], 0
    for s in samples:
        if labels == "gt":
            if s.mask is None:
                skipped += 1
                continue
            pairs.append((s.image, s.mask))
        else:
            pairs.append((s.image, str(pseudo_dir / f"{s.id}.png")))
    if labels == "pseudo":
        missing = [lab for _, lab in pairs if not Path(lab).is_file()]
        if missing:
            raise DataError(f"{missing[0]}: pseudo label not found ({len(missing)} of {len(pairs)} train images "
                            "have none; run the pseudo_labels stage or set seg.labels: gt)")
    return pairs, skipped


def load_pair(item: tuple[str, str], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one (image, label map): (H, W, 3) uint8 and (H, W) uint8 in 0..C, 255."""
    image_path, label_path = item
    image, label = read_rgb(image_path), read_label_png(label_path)
    validate_mask(label, image.shape[:2], num_classes, label_path)
    return image, label


# ----------------------------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------------------------


def rescale(image: np.ndarray, label: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """image (H, W, 3) uint8, label (H, W) uint8 -> both at round(H * scale) x round(W * scale)."""
    h, w = label.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return image, label
    img = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    lab = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
    return img, lab


def mean_rgb(encoder: str) -> np.ndarray:
    """The 0..255 RGB colour the encoder's normalisation maps to zero: what padding adds to a crop."""
    return np.array(encoder_normalisation(encoder)[0], np.float32) * 255.0


def pad_crop(image: np.ndarray, label: np.ndarray, crop: int, top: int, left: int, fill: Sequence[float]
             ) -> tuple[np.ndarray, np.ndarray]:
    """The ``crop`` x ``crop`` window at (top, left) of the image padded to at least the crop size.

    Padding goes right / bottom: images get ``fill`` (0..255 RGB: the encoder's mean colour), labels 255.
    Returns image (crop, crop, 3) float32 in 0..255 and label (crop, crop) uint8.
    """
    h, w = label.shape
    ph, pw = max(crop, h), max(crop, w)
    img = np.empty((ph, pw, 3), np.float32)
    img[:] = fill
    img[:h, :w] = image
    lab = np.full((ph, pw), IGNORE_INDEX, np.uint8)
    lab[:h, :w] = label
    return img[top:top + crop, left:left + crop], lab[top:top + crop, left:left + crop]


def augment(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, crop: int,
            scale_range: Sequence[float], hflip: bool, fill: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: rescale, flip, pad with ``fill`` (0..255 RGB), crop.

    image (H, W, 3) uint8, label (H, W) uint8 -> image (3, crop, crop) float32 in [0, 1],
    label (crop, crop) int64 (255 = ignore).
    """
    lo, hi = scale_range
    image, label = rescale(image, label, float(rng.uniform(lo, hi)) if hi > lo else float(lo))
    if hflip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    h, w = label.shape
    top = int(rng.integers(0, max(h - crop, 0) + 1))
    left = int(rng.integers(0, max(w - crop, 0) + 1))
    img, lab = pad_crop(image, label, crop, top, left, fill)
    return np.ascontiguousarray(img.transpose(2, 0, 1) / 255.0, dtype=np.float32), lab.astype(np.int64)


class SegTrainSet(torch.utils.data.Dataset):
    """Training pairs: ``items[i]`` is an (image (H, W, 3) uint8, label (H, W) uint8) pair, or anything
    ``load`` turns into one (file paths, read lazily in the loader workers).

    Item ``i`` of epoch ``e`` is augmented with a generator seeded by (seed, e, i), whatever process
    loads it.
    """

    def __init__(self, items: Sequence, cfg: Seg, seed: int,
                 load: Callable[[object], tuple[np.ndarray, np.ndarray]] | None = None):
        self.items, self.load = list(items), load
        self.crop, self.scale_range, self.hflip, self.seed = cfg.crop_size, tuple(cfg.scale_range), cfg.hflip, seed
        self.fill = mean_rgb(cfg.encoder)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.load(self.items[i]) if self.load is not None else self.items[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img, lab = augment(rng, image, label, self.crop, self.scale_range, self.hflip, self.fill)
        return torch.from_numpy(img), torch.from_numpy(lab)


# ----------------------------------------------------------------------------------------------
# loss and schedule
# ----------------------------------------------------------------------------------------------


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
                      ) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels.

    logits: (B, K, H, W) float; target: (B, H, W) int64 in 0..K-1 or ``ignore_index``.
    Returns a scalar: 0 (with zero gradient) when every pixel is ignored.
    """
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    count = (target != ignore_index).sum()
    return per_pixel.sum() / count.clamp(min=1)


def make_optimizer(model: nn.Module, cfg: Seg) -> torch.optim.Optimizer:
    """SGD with momentum (the DeepLab recipe) or AdamW, over :func:`param_groups`."""
    groups = param_groups(model, cfg.lr, cfg.head_lr_mult, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------


def _collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def train_segmenter(model: nn.Module, dataset: SegTrainSet, cfg: Seg, device: torch.device, *,
                    dist: Distributed = Distributed(), loader_workers: int = 0, resume: dict | None = None,
                    on_epoch: OnEpoch | None = None, progress: bool = True) -> list[dict]:
    """Train ``model`` (already on ``device``; wrapped by :func:`pipeline.train.harness.wrap` under DDP) for
    ``cfg.epochs``, with the sample order and dropout seeded by ``dataset.seed`` (augmentation uses it too).

    ``resume``: the state of an earlier ``on_epoch`` call (:func:`pipeline.train.harness.training_state`);
    training continues at its epoch. ``on_epoch(epoch, metrics, state)`` runs after every epoch (1-based
    ``epoch``) on every process; the caller writes checkpoints / logs on the main one. Returns the per-epoch
    metrics ({"epoch", "loss", "pixel_acc", "lr", "images_per_second"}): loss and pixel accuracy over the
    images of every process, images_per_second their total rate, lr that of the epoch's last step.
    """
    per_rank = max(2, cfg.batch_size // dist.world_size)
    optimizer = make_optimizer(model, cfg)
    autocast, scaler = amp(device, cfg.amp, torch.float16)  # DeepLab's recipe: fp16 with a gradient scaler
    order0 = epoch_order(len(dataset), dataset.seed, 0, dist.rank, dist.world_size)
    steps = len(groups_of(order0, per_rank, drop_single=True))
    if steps == 0:
        raise ValueError("no training batches: the training set is empty")
    scheduler = make_scheduler(optimizer, steps * cfg.epochs, 0, "poly", cfg.poly_power)
    start, history = restore_training_state(resume, model, optimizer, scheduler, scaler) if resume else (0, [])
    for epoch in range(start, cfg.epochs):
        model.train()
        dataset.set_epoch(epoch)
        torch.manual_seed(epoch_seed(dataset.seed, epoch, DROPOUT_STREAM))
        order = epoch_order(len(dataset), dataset.seed, epoch, dist.rank, dist.world_size)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=groups_of(order, per_rank, drop_single=True), num_workers=loader_workers,
            collate_fn=_collate, pin_memory=device.type == "cuda")
        sums = torch.zeros(4, dtype=torch.float64)  # loss * n, correct px, labelled px, images
        t0 = time.perf_counter()
        steps_done = progress_bar(loader, f"seg epoch {epoch + 1}/{cfg.epochs}", len(loader),
                                  progress and dist.is_main)
        for x, y in steps_done:
            lr = optimizer.param_groups[0]["lr"]
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                logits = model(x)
            loss = segmentation_loss(logits, y)
            backward_step(loss, optimizer, scaler)
            scheduler.step()
            with torch.no_grad():
                valid = y != IGNORE_INDEX
                sums += torch.tensor([loss.item() * len(x), float(((logits.argmax(1) == y) & valid).sum()),
                                      float(valid.sum()), len(x)], dtype=torch.float64)
        elapsed = time.perf_counter() - t0
        sums = all_reduce_sum(sums, dist, device)
        metrics = {"epoch": epoch + 1, "loss": float(sums[0] / max(sums[3], 1)),
                   "pixel_acc": float(sums[1] / max(sums[2], 1)), "lr": float(lr),
                   "images_per_second": float(sums[3] / max(elapsed, 1e-9))}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics, training_state(epoch + 1, model, optimizer, scheduler, scaler, history))
    return history

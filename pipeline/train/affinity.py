"""Training AffinityNet (PSA, CVPR 2018) on the confident regions of CRF-refined CAMs.

The network learns, on random crops, affinity 1 for pairs of feature cells within ``psa.radius`` that
share a confident label and 0 for pairs with different labels; the loss is PSA's balanced
bg/4 + fg/4 + neg/2 (:func:`pipeline.models.affinitynet.pair_affinity_loss`). AdamW with a poly schedule
per step; mixed precision on CUDA. The loop runs on the shared harness (:mod:`pipeline.train.harness`): a
padded per-process order for DDP and end-of-epoch states for resuming.

Randomness is a function of (``seed``, epoch, image index): the epoch's order comes from
:func:`pipeline.train.harness.epoch_order` and each image's crop from ``default_rng([seed, epoch, index])``,
so a resumed run equals an uninterrupted one and the crops do not depend on the number of processes.
(Until the harness, one numpy generator drew both the order and the crops in sequence: the figures of
train_psa and every stage after it changed with this.) Batches are ``psa.batch_size`` images split over
the processes (at least 2 per process), the last one possibly shorter; a trailing single image is
dropped, since BatchNorm cannot train on one crop's 1x1 deepest features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.common.device import seed_everything
from pipeline.common.grouping import groups_of
from pipeline.common.progress import progress as progress_bar
from pipeline.config import PSA
from pipeline.models.affinitynet import (AffinityNet, pair_affinities, pair_affinity_loss, pair_border, pair_labels,
                                         radius_offsets)
from pipeline.postprocess.psa import downsample_labels, random_crop
from pipeline.train.harness import (Distributed, OnEpoch, all_reduce_sum, amp, backward_step, epoch_order,
                                    make_scheduler, restore_training_state, training_state, wrap)

SUMMED = ("loss", "bg_loss", "fg_loss", "neg_loss", "bg_pairs", "fg_pairs", "neg_pairs")


def make_batch(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], idx: Sequence[int], crop: int,
               stride: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, crop, crop) float in [0, 1] and (B, ceil(crop/stride), ...) int64 cell labels; image i's
    crop and flip come from ``default_rng([seed, epoch, i])``."""
    pairs = [random_crop(np.random.default_rng([seed, epoch, i]), images[i], labels[i], crop) for i in idx]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(downsample_labels(np.stack([p[1] for p in pairs]), stride).astype(np.int64))
    return x, y


def affinity_step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, offsets, optimizer, scaler,
                  autocast, border: int = 0) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step of AffinityNet on images ``x`` and cell labels ``y``: the pair affinities within
    ``offsets`` (sources off ``border``, :func:`pipeline.models.affinitynet.pair_slices`), PSA's balanced loss
    and its backward pass; returns (losses, bg, fg, neg pair masks)."""
    with autocast():
        emb = net(x)
    aff = pair_affinities(emb.float(), offsets, border)
    bg, fg, neg = pair_labels(y, offsets, border=border)
    losses = pair_affinity_loss(aff, bg, fg, neg)
    backward_step(losses["loss"], optimizer, scaler)
    return losses, bg, fg, neg


def train_affinitynet(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], cfg: PSA, device: torch.device,
                      *, seed: int, dist: Distributed = Distributed(), resume: dict | None = None,
                      on_epoch: OnEpoch | None = None,
                      progress: bool = True) -> tuple[AffinityNet, list[dict]]:
    """Train on images (H, W, 3) uint8 and confident labels (H, W) uint8 (255 = unsure): any sequences, e.g.
    :class:`pipeline.common.io.FileSequence`, which reads each one when a batch needs it.

    ``resume``: a state from an earlier ``on_epoch(epoch, metrics, state)`` call (run after every epoch on
    every process). Returns the (unwrapped, eval-mode) network and the per-epoch metrics: the mean losses
    and pairs per image of each kind, averaged over processes, and the learning rate.
    """
    seed_everything(seed)
    model = AffinityNet(cfg.backbone, cfg.pretrained, cfg.feature_stride, cfg.embed_dim).to(device).train()
    net = wrap(model, dist, device, sync_bn=True)
    offsets, border = radius_offsets(cfg.radius), pair_border(cfg.radius, cfg.pairs)
    per_rank = max(2, cfg.batch_size // dist.world_size)  # BatchNorm cannot train on one image's 1x1 features
    steps = len(groups_of(epoch_order(len(images), seed, 0, dist.rank, dist.world_size), per_rank,
                          drop_single=True))
    if steps == 0:
        raise ValueError("no training batches: the training set is empty")
    total = steps * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = make_scheduler(opt, total)  # poly, power 0.9
    autocast, scaler = amp(device, cfg.amp, torch.float16)  # PSA's recipe: fp16 with a gradient scaler
    start, history = restore_training_state(resume, model, opt, sched, scaler) if resume else (0, [])
    for epoch in range(start, cfg.epochs):
        order = epoch_order(len(images), seed, epoch, dist.rank, dist.world_size)
        sums = torch.zeros(len(SUMMED) + 1, dtype=torch.float64)  # the SUMMED values, then steps
        net.train()
        for idx in progress_bar(groups_of(order, per_rank, drop_single=True), f"psa epoch {epoch + 1}/{cfg.epochs}",
                                enabled=progress and dist.is_main):
            x, y = make_batch(images, labels, idx, cfg.crop_size, cfg.feature_stride, seed, epoch)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            losses, bg, fg, neg = affinity_step(net, x, y, offsets, opt, scaler, autocast, border)
            sched.step()
            values = [losses[k].item() for k in SUMMED[:4]] + [float(m.sum()) / len(idx) for m in (bg, fg, neg)]
            sums += torch.tensor(values + [1.0], dtype=torch.float64)
        sums = all_reduce_sum(sums, dist, device)
        metrics = {"epoch": epoch + 1, **{k: float(v / sums[-1]) for k, v in zip(SUMMED, sums)},
                   "lr": float(sched.get_last_lr()[0])}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics, training_state(epoch + 1, net, opt, sched, scaler, history))
    return model.eval(), history

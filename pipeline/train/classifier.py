"""Training the AReAM classifier (Eq. 20): data, augmentation, the affinity labels of every step, the
schedule, validation mAP and a resumable epoch loop. File I/O (checkpoints, metrics) is left to the
caller through callbacks (see ``stages/train_cls.py``).

One step with the affinity loss (``aream.enabled`` and epoch >= ``aream.start_epoch``):

1. forward with attention capture: logits, fused CAM M, sigma(A^(l)) and A^(l) for every layer;
2. without gradient: M times the image-level labels (absent classes zeroed), max-normalised; entropy of
   every layer's refined CAM (Eqs. 7-8, all layers) -> w, w_hat (Eqs. 9-10) per image, or the fixed
   data-set weights (``aream.weights: dataset``); re-activated CAM M_hat (Eqs. 11-12, the first
   ``refine_layers`` layers if set), max-normalised;
3. M_hat upsampled to ``par_scale`` x the input size, refined by PAR with the (equally resized) image
   (Eqs. 13-15), split by Eq. 16 (``aream.alpha1`` / ``alpha2``) into reliable foreground / background /
   ignored, sampled at the patch centres to the token grid, turned into pair labels (Eq. 17);
4. L = L_cls + lambda * L_aff (Eqs. 18-20), L_aff on the last ``loss_layers`` layers if set, with w_hat
   detached.

L_cls is the multi-label soft margin loss on the class-token logits plus the same on the PatchCAM logits.

``aream.weights: dataset`` (the authors' code keeps one weight file): when the affinity loss starts (and
again only if the weights are missing from a resumed checkpoint) the current model's layer entropies are
averaged over the whole train split (resized to ``img_size``, no augmentation), Eqs. 9-10 turn the mean
entropies into one (w, w_hat) pair for all images, and they stay fixed for the rest of training.

The epoch loop runs on the shared harness (:mod:`pipeline.train.harness`: padded per-process order, DDP,
mixed precision, RNG states); checkpoint files and curves are the caller's (``stages/train_cls.py``).

Determinism: the shuffle order of epoch e comes from a generator seeded with (seed, e) and every
sample's augmentation from ``numpy.random.default_rng([seed, e, index])``; checkpoints carry the model,
optimizer, schedule, AMP scaler, fixed weights, history and the Python / numpy / torch RNG states, so a
run stopped after any epoch and resumed ends with the same weights as an uninterrupted one (CPU, same
software; loader workers do not change the result).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pipeline.cams.aream import (affinity_labels, affinity_loss, layer_entropy, normalize_cams, reactivated_affinity,
                                 reactivation_weights, refine_cams)
from pipeline.config import PAR, AReAM, Classifier, TrainCls
from pipeline.common.progress import progress as progress_bar
from pipeline.data.classification import ClassificationDataset, mean_average_precision
from pipeline.models.vit import ClassifierOutput, build_classifier
from pipeline.postprocess.labels import pseudo_labels
from pipeline.postprocess.par import par_refine
from pipeline.train.harness import (Distributed, OnEpoch, amp, backward_step, barrier, epoch_order, make_scheduler,
                                    restore_training_state, rng_states, set_rng_states, training_state, unwrap,
                                    weight_decay_groups, wrap)

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Losses and the affinity labels of one step
# ---------------------------------------------------------------------------------------------


def classification_loss(out: ClassifierOutput, targets: torch.Tensor) -> torch.Tensor:
    """L_cls: multi-label soft margin on the class-token logits + on the PatchCAM logits. targets (B, C)."""
    return (F.multilabel_soft_margin_loss(out.logits_cls.float(), targets)
            + F.multilabel_soft_margin_loss(out.logits_patch.float(), targets))


def labels_to_grid(labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """labels (B, H, W) -> (B, h, w): the label at the centre pixel of every patch cell."""
    hh, ww = labels.shape[-2:]
    ys = ((torch.arange(grid[0], device=labels.device) + 0.5) * hh / grid[0]).long().clamp_max(hh - 1)
    xs = ((torch.arange(grid[1], device=labels.device) + 0.5) * ww / grid[1]).long().clamp_max(ww - 1)
    return labels[:, ys][:, :, xs]


def present_channels(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """scores (B, C, H, W), targets (B, C) -> (B, K, H, W) with K = the most classes of one image: each
    image's present classes first (others zero). PAR then skips the all-zero channels of absent classes."""
    present = targets > 0
    k = int(present.sum(dim=1).max().item()) if present.numel() else 0
    if k == 0:
        return scores[:, :0]
    order = torch.argsort(present.float(), dim=1, descending=True, stable=True)[:, :k]  # (B, K)
    keep = torch.gather(present, 1, order).to(scores.dtype)
    picked = torch.gather(scores, 1, order[:, :, None, None].expand(-1, -1, *scores.shape[-2:]))
    return picked * keep[:, :, None, None]


@torch.no_grad()
def aream_targets(out: ClassifierOutput, images: torch.Tensor, targets: torch.Tensor, aream_cfg: AReAM, par: PAR,
                  fixed: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Steps 2-3 of the module docstring with the ``aream`` and ``par`` params sections. Returns
    (aff_labels (B, N, N) uint8, w (B, L), w_hat (B, L), token labels (B, h, w))."""
    cams = normalize_cams(out.cam.float() * targets[:, :, None, None])
    attn = out.attn.float()
    n_layers = attn.shape[1]
    if fixed is None:
        w, w_hat = reactivation_weights(layer_entropy(cams, attn))
    else:
        w, w_hat = (f.to(attn.device).expand(attn.shape[0], -1) for f in fixed)
    k_ref = min(aream_cfg.refine_layers, n_layers) if aream_cfg.refine_layers else n_layers
    m_hat = refine_cams(cams, reactivated_affinity(attn[:, :k_ref], w[:, :k_ref]))
    m_hat = normalize_cams(m_hat.clamp_min(0)) * targets[:, :, None, None]
    height, width = images.shape[-2:]
    size = (max(1, round(height * aream_cfg.par_scale)), max(1, round(width * aream_cfg.par_scale)))
    scores = F.interpolate(present_channels(m_hat, targets), size=size, mode="bilinear", align_corners=False)
    small = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    scores = par_refine(small, scores, par)
    if scores.shape[1] == 0:
        labels = torch.zeros(scores.shape[0], *size, dtype=torch.int64, device=scores.device)
    else:
        labels = pseudo_labels(scores, aream_cfg.alpha1, aream_cfg.alpha2)  # Eq. 16: 0, 1..K, 255
    token_labels = labels_to_grid(labels, out.grid)
    return affinity_labels(token_labels), w, w_hat, token_labels


@dataclass
class StepLosses:
    total: torch.Tensor  # Eq. 20: L_cls + lambda L_aff (L_cls alone before AReAM starts)
    cls: torch.Tensor
    aff: torch.Tensor | None  # None while AReAM is off
    w_hat: torch.Tensor | None  # (B, L) counterpart weights of the step's images


def step_losses(net: nn.Module, images: torch.Tensor, targets: torch.Tensor, aream_cfg: AReAM, par: PAR, aream_on: bool,
                autocast=contextlib.nullcontext, fixed: tuple[torch.Tensor, torch.Tensor] | None = None) -> StepLosses:
    """The forward pass and losses of one training step (the loss the classifier's loop and its benchmark
    differentiate): L_cls, and with AReAM on the affinity labels, Eq. 18 on the last ``loss_layers`` layers
    and Eq. 20."""
    with autocast():
        out = net(images, capture=aream_on, with_cam=aream_on)
    loss_cls = classification_loss(out, targets)
    if not aream_on:
        return StepLosses(loss_cls, loss_cls, None, None)
    aff, _, w_hat, _ = aream_targets(out, images, targets, aream_cfg, par, fixed)
    k_loss = min(aream_cfg.loss_layers, w_hat.shape[1]) if aream_cfg.loss_layers else w_hat.shape[1]
    loss_aff = affinity_loss(out.attn_logits[:, -k_loss:], aff, w_hat[:, -k_loss:])
    return StepLosses(loss_cls + aream_cfg.lam * loss_aff, loss_cls, loss_aff, w_hat)


# ---------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------


def build_optimizer(model: nn.Module, recipe: TrainCls) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9) as ``recipe`` (the ``train_cls`` section) says; no weight decay on biases,
    norms, tokens and position embeddings."""
    groups = weight_decay_groups(model, recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: TrainCls, steps_per_epoch: int):
    """The harness's schedule (:func:`pipeline.train.harness.make_scheduler`) for the ``train_cls`` section
    ``recipe``."""
    total, warm = recipe.epochs * steps_per_epoch, recipe.warmup_epochs * steps_per_epoch
    return make_scheduler(optimizer, total, warm, recipe.schedule)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, autocast=contextlib.nullcontext):
    """(probabilities of the class-token head (N, C), of the patch head (N, C), targets (N, C))."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    p_cls, p_patch, ys = [], [], []
    for images, targets in loader:
        with autocast():
            out = model(images.to(device, non_blocking=True), capture=False, with_cam=False)
        p_cls.append(out.logits_cls.float().sigmoid().cpu())
        p_patch.append(out.logits_patch.float().sigmoid().cpu())
        ys.append(targets)
    model.train(was_training)
    return torch.cat(p_cls).numpy(), torch.cat(p_patch).numpy(), torch.cat(ys).numpy()


def evaluate_map(model: nn.Module, loader: DataLoader, device: torch.device, autocast=contextlib.nullcontext):
    """{"val_map": mAP of the mean of both heads' probabilities, "val_map_cls", "val_map_patch"}."""
    p_cls, p_patch, y = predict(model, loader, device, autocast)
    return {"val_map": mean_average_precision((p_cls + p_patch) / 2, y),
            "val_map_cls": mean_average_precision(p_cls, y),
            "val_map_patch": mean_average_precision(p_patch, y)}


@torch.no_grad()
def dataset_weights(model: nn.Module, loader: DataLoader, device: torch.device, autocast=contextlib.nullcontext):
    """``aream.weights: dataset``: mean layer entropy over ``loader`` -> fixed (w (L,), w_hat (L,))."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    total, count = None, 0
    for images, targets in loader:
        with autocast():
            out = model(images.to(device), capture=True, with_cam=True)
        cams = normalize_cams(out.cam.float() * targets.to(device)[:, :, None, None])
        e = layer_entropy(cams, out.attn.float()).sum(dim=0)
        total = e if total is None else total + e
        count += images.shape[0]
    model.train(was_training)
    w, w_hat = reactivation_weights((total / count)[None])
    return w[0].cpu(), w_hat[0].cpu()


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    epochs_run: int = 0
    finished: bool = False


def train_classifier(model_cfg: Classifier, recipe: TrainCls, aream_cfg: AReAM, par: PAR, train_samples: Sequence[Any],
                     val_samples: Sequence[Any], num_classes: int, device: torch.device, *, resume: dict | None = None,
                     seed: int, on_epoch: OnEpoch | None = None, stop_after: int | None = None,
                     loader_workers: int = 0, dist: Distributed | None = None, progress: bool = True) -> TrainResult:
    """Train the classifier ``model_cfg`` with the recipe ``recipe``, AReAM ``aream_cfg`` and its PAR kernel ``par``
    (the ``classifier``, ``train_cls``, ``aream`` and ``par`` params sections), or continue from the checkpoint
    dict ``resume``, for ``recipe.epochs`` epochs. ``seed`` (params.yaml's ``seed``) fixes the new layers' initial
    weights, the sample order and every augmentation.

    ``on_epoch(epoch, metrics, state)`` runs after every epoch on every process (the harness's protocol;
    the state also carries the global RNG states and AReAM's fixed weights). ``stop_after``: return after this
    many epochs of this call (the run is then not finished; resuming from its last checkpoint continues it).
    Returns the (unwrapped) model and the per-epoch history.
    """
    dist = dist or Distributed()
    if not resume:
        from pipeline.common.device import seed_everything

        seed_everything(seed)
    model = build_classifier(model_cfg, num_classes).to(device)
    optimizer = build_optimizer(model, recipe)
    per_rank_batch = max(1, recipe.batch_size // dist.world_size)
    train_set = ClassificationDataset(train_samples, num_classes, model_cfg.img_size, train=True,
                                      crop_scale=recipe.crop_scale, hflip=recipe.hflip, jitter=recipe.color_jitter,
                                      seed=seed)
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / dist.world_size) / per_rank_batch)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch)
    autocast, scaler = amp(device, recipe.amp)
    fixed, history, start = None, [], 0
    if resume:
        start, history = restore_training_state(resume, model, optimizer, scheduler, scaler)
        fixed = resume.get("fixed_weights")
        set_rng_states(resume["rng"])
    net = wrap(model, dist, device)
    pin = device.type == "cuda"
    val_loader = DataLoader(ClassificationDataset(val_samples, num_classes, model_cfg.img_size, train=False),
                            batch_size=per_rank_batch, shuffle=False, num_workers=loader_workers, pin_memory=pin)
    plain_train = ClassificationDataset(train_samples, num_classes, model_cfg.img_size, train=False)

    result = TrainResult(model=model, history=history, epochs_run=0, finished=start >= recipe.epochs)
    for epoch in range(start, recipe.epochs):
        if stop_after is not None and result.epochs_run >= stop_after:
            return result
        aream_on = aream_cfg.enabled and epoch >= aream_cfg.start_epoch
        if aream_on and aream_cfg.weights == "dataset" and fixed is None:
            loader = DataLoader(plain_train, batch_size=per_rank_batch, num_workers=loader_workers, pin_memory=pin)
            fixed = dataset_weights(net, loader, device, autocast)
        train_set.set_epoch(epoch)
        order = epoch_order(len(train_set), seed, epoch, dist.rank, dist.world_size)
        loader = DataLoader(train_set, batch_size=per_rank_batch, sampler=order, num_workers=loader_workers,
                            pin_memory=pin)
        net.train()
        sums = {"loss_cls": 0.0, "loss_aff": 0.0}
        w_hat_sum, n_aff, n_steps, n_images = None, 0, 0, 0
        started = time.perf_counter()
        for images, targets in progress_bar(loader, f"epoch {epoch + 1}/{recipe.epochs}", len(loader),
                                            progress and dist.is_main):
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            step = step_losses(net, images, targets, aream_cfg, par, aream_on, autocast, fixed)
            if step.aff is not None:
                sums["loss_aff"] += float(step.aff.detach())
                w_hat_sum = step.w_hat.sum(0) if w_hat_sum is None else w_hat_sum + step.w_hat.sum(0)
                n_aff += 1
            backward_step(step.total, optimizer, scaler)
            scheduler.step()
            sums["loss_cls"] += float(step.cls.detach())
            n_steps += 1
            n_images += images.shape[0]
        seconds = time.perf_counter() - started
        metrics: dict[str, Any] = {"epoch": epoch + 1, "loss_cls": sums["loss_cls"] / max(n_steps, 1),
                                   "loss_aff": sums["loss_aff"] / n_aff if n_aff else 0.0,
                                   "lr": optimizer.param_groups[0]["lr"], "aream": bool(aream_on),
                                   "seconds": seconds, "images_per_second": n_images * dist.world_size / seconds}
        if w_hat_sum is not None:  # mean counterpart weight of every layer over the epoch's images
            metrics.update({f"w_hat_l{i + 1}": float(v) for i, v in enumerate((w_hat_sum / n_images).tolist())})
        if dist.is_main:
            metrics.update(evaluate_map(net, val_loader, device, autocast))
        history.append(metrics)
        result.epochs_run += 1
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics, training_state(epoch + 1, model, optimizer, scheduler, scaler, history,
                                                        rng=rng_states(), fixed_weights=fixed))
        barrier(dist)
    result.finished = True
    return result

"""Supervised pretraining of the classifier's ViT on the generated corpus (:mod:`pipeline.data.corpus`).

What ImageNet training is to the paper's DeiT-S: a plain timm ViT of the classifier's architecture
(``classifier.backbone``, ``patch_size``, ``depth``) with one class token and a linear head over the
corpus classes, trained with softmax cross-entropy (label smoothing), AdamW, linear warm-up and a cosine
schedule, random-resized crops and flips. Stage ``train_cls`` then fine-tunes the backbone (the head is
dropped) exactly as a local DeiT weights file: its class token seeds every class token and its position
embedding is resampled to the fine-tuning grid.

With ``pretrain.teacher`` set, an ImageNet CNN teaches the ViT alongside the corpus labels: a distillation
token on its predictions and each patch token regressing its feature map (:mod:`pipeline.train.distill`).

Randomness is a function of (``pretrain.seed``, epoch, image index), as in the other trainers: the order
from :func:`pipeline.train.harness.epoch_order`, each image's crop and flip from ``default_rng([seed, epoch,
index])``; the loop runs on the shared harness (DDP, mixed precision, resumable end-of-epoch states).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.common.device import seed_everything
from pipeline.common.grouping import groups_of
from pipeline.common.progress import progress as progress_bar
from pipeline.config import Classifier, Pretrain
from pipeline.models.inputs import normalize_imagenet
from pipeline.train.distill import DistilledViT, Teacher, feature_distillation, logit_distillation
from pipeline.train.harness import (Distributed, OnEpoch, all_reduce_sum, amp, backward_step, epoch_order,
                                    make_scheduler, restore_training_state, training_state, unwrap,
                                    weight_decay_groups, wrap)


def build_vit(model_cfg: Classifier, cfg: Pretrain, num_classes: int) -> nn.Module:
    """The classifier's backbone as a plain timm ViT at the corpus image size, with a ``num_classes`` head."""
    import timm

    return timm.create_model(model_cfg.backbone, pretrained=False, img_size=cfg.image_size,
                             patch_size=model_cfg.patch_size, depth=model_cfg.depth, num_classes=num_classes,
                             drop_path_rate=cfg.drop_path)


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights a fine-tuning run starts from: every timm key except the classification head (of a
    :class:`~pipeline.train.distill.DistilledViT`, its ViT's keys only: the distillation token and heads stay here)."""
    model = unwrap(model)
    model = model.vit if isinstance(model, DistilledViT) else model
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("head.")}


def build_student(model_cfg: Classifier, cfg: Pretrain, num_classes: int, teacher: Teacher | None) -> nn.Module:
    """The plain ViT, or with a teacher the ViT inside a :class:`DistilledViT` with the heads its terms need."""
    vit = build_vit(model_cfg, cfg, num_classes)
    if teacher is None:
        return vit
    return DistilledViT(vit, teacher.cnn.num_classes if cfg.distill_logits > 0 else 0,
                        teacher.channels if cfg.distill_features > 0 else 0)


def pretrain_loss(net: nn.Module, teacher: Teacher | None, x: torch.Tensor, y: torch.Tensor, cfg: Pretrain,
                  patch_size: int, autocast) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(loss, class logits, the distillation terms' values) of one batch: label-smoothed cross-entropy, plus with a
    teacher ``distill_logits`` x the logit term and ``distill_features`` x the token-feature term."""
    with autocast():
        out = net(x)
    logits, dist_logits, features = out if teacher is not None else (out, None, None)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    terms: dict[str, float] = {}
    if teacher is not None:
        t_logits, t_features = teacher(x)
        if dist_logits is not None:
            term = logit_distillation(dist_logits.float(), t_logits.float(), cfg.distill_temperature)
            loss = loss + cfg.distill_logits * term
            terms["distill_logits"] = float(term.detach())
        if features is not None:
            term = feature_distillation(features, t_features, (x.shape[-2] // patch_size, x.shape[-1] // patch_size))
            loss = loss + cfg.distill_features * term
            terms["distill_features"] = float(term.detach())
    return loss, logits, terms


def augment_batch(images: np.ndarray, idx: list[int], size: int, crop_scale: tuple[float, float], seed: int,
                  epoch: int) -> torch.Tensor:
    """(B, 3, size, size) ImageNet-normalised crops of ``images[idx]``: per image a random-resized crop
    (area fraction in ``crop_scale``, aspect 3/4..4/3) and a horizontal flip half the time, drawn from
    ``default_rng([seed, epoch, index])``."""
    out = []
    for i in idx:
        rng = np.random.default_rng([seed, epoch, i])
        h, w = images[i].shape[:2]
        area = rng.uniform(*crop_scale) * h * w
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = min(h, max(1, round(math.sqrt(area / aspect))))
        cw = min(w, max(1, round(math.sqrt(area * aspect))))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = torch.from_numpy(np.ascontiguousarray(images[i][y:y + ch, x:x + cw])).permute(2, 0, 1).float()
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False,
                             antialias=True)[0]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    return normalize_imagenet(torch.stack(out), 255.0)


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device,
             batch_size: int, autocast) -> float:
    """Top-1 accuracy on uncropped images."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).float()
        x = normalize_imagenet(x, 255.0).to(device)
        with autocast():
            out = model(x)
        pred = (out[0] if isinstance(out, tuple) else out).argmax(-1).cpu()
        correct += int((pred == torch.from_numpy(labels[start:start + batch_size])).sum())
    return correct / max(1, len(images))


def pretrain_vit(model_cfg: Classifier, cfg: Pretrain, train: tuple[np.ndarray, np.ndarray],
                 val: tuple[np.ndarray, np.ndarray], num_classes: int, device: torch.device, *,
                 dist: Distributed = Distributed(), resume: dict | None = None,
                 on_epoch: OnEpoch | None = None,
                 progress: bool = True, teacher: Teacher | None = None) -> tuple[nn.Module, list[dict]]:
    """Train on ``train`` = (images (N, S, S, 3) uint8, labels (N,)) for ``cfg.epochs`` epochs; ``val`` gives
    the per-epoch top-1 accuracy (main process). ``resume`` / ``on_epoch(epoch, metrics, state)`` as in
    :func:`pipeline.train.affinity.train_affinitynet`; ``teacher`` adds the distillation terms (the history's
    ``loss`` is then the total, beside each term's own mean). Returns the unwrapped model (a
    :class:`DistilledViT` with a teacher) and the history."""
    images, labels = train
    seed_everything(cfg.seed)
    model = build_student(model_cfg, cfg, num_classes, teacher).to(device)
    if teacher is not None:
        teacher = teacher.to(device)
    net = wrap(model, dist, device)
    per_rank = max(1, cfg.batch_size // dist.world_size)
    steps = len(groups_of(epoch_order(len(images), cfg.seed, 0, dist.rank, dist.world_size), per_rank))
    total, warm = steps * cfg.epochs, steps * cfg.warmup_epochs
    opt = torch.optim.AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    sched = make_scheduler(opt, total, warm, "cosine")
    autocast, scaler = amp(device, cfg.amp)
    start, history = restore_training_state(resume, model, opt, sched, scaler) if resume else (0, [])
    targets = torch.from_numpy(labels)
    for epoch in range(start, cfg.epochs):
        order = epoch_order(len(images), cfg.seed, epoch, dist.rank, dist.world_size)
        sums = torch.zeros(5, dtype=torch.float64)  # loss sum, correct, images, the two distillation terms' sums
        net.train()
        for idx in progress_bar(groups_of(order, per_rank), f"pretrain epoch {epoch + 1}/{cfg.epochs}",
                                enabled=progress and dist.is_main):
            x = augment_batch(images, idx, cfg.image_size, tuple(cfg.crop_scale), cfg.seed, epoch).to(device)
            y = targets[idx].to(device)
            loss, logits, terms = pretrain_loss(net, teacher, x, y, cfg, model_cfg.patch_size, autocast)
            backward_step(loss, opt, scaler)
            sched.step()
            sums += torch.tensor([loss.item() * len(idx), float((logits.argmax(-1) == y).sum()), len(idx),
                                  terms.get("distill_logits", 0.0) * len(idx),
                                  terms.get("distill_features", 0.0) * len(idx)], dtype=torch.float64)
        sums = all_reduce_sum(sums, dist, device)
        metrics = {"epoch": epoch + 1, "loss": float(sums[0] / sums[2]), "train_acc": float(sums[1] / sums[2]),
                   "lr": float(sched.get_last_lr()[0])}
        if teacher is not None:
            metrics |= {"distill_logits": float(sums[3] / sums[2]), "distill_features": float(sums[4] / sums[2])}
        if dist.is_main:
            metrics["val_acc"] = accuracy(unwrap(net), val[0], val[1], device, per_rank, autocast)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics, training_state(epoch + 1, net, opt, sched, scaler, history))
    return model.eval(), history

"""Stage `pretrain`: the classifier's ViT pretrained on the generated corpus (the paper's ImageNet step).

Reads the ``pretrain`` section and the classifier's architecture (``classifier.backbone``, ``patch_size``,
``depth``); renders the corpus in memory (:mod:`pipeline.data.corpus`: image-level labels only, no toy
class design, no mask) and trains a plain ViT on it (:mod:`pipeline.train.pretrain`). Writes

- ``weights/pretrained_vit.pth``: the backbone's timm state dict without the head. The default
  ``classifier.pretrained`` names it, so ``train_cls`` depends on it through DVC and fine-tunes it as it
  would a DeiT file: a pretraining edit reruns the classifier and what follows, nothing else;
- ``reports/pretrain/metrics.json`` (final loss, train / held-out top-1) and per-epoch curves.

With ``pretrain.teacher`` set (a weights file under weights/, a DVC dependency), an ImageNet CNN teaches the ViT
as it learns (:mod:`pipeline.train.distill`); the file still holds the plain ViT.

``pretrain.enabled: false`` writes a placeholder instead (stage ``check`` then refuses
``classifier.pretrained: pretrained_vit.pth``). Resumable like the other trainers (``models/pretrain_ckpt``).
"""

from __future__ import annotations

import functools
import time

import numpy as np

from pipeline.common.device import use_cpu_threads
from pipeline.common.io import write_json, write_torch
from pipeline.common.parallel import map_items
from pipeline.config import Params, weights_file
from pipeline.data.corpus import corpus_classes, render_chunk
from pipeline.train.distill import build_teacher
from pipeline.train.pretrain import backbone_state, pretrain_vit
from pipeline.vocabulary import PRETRAINED_VIT
from stages._common import MODELS, REPORTS, stage_main, write_skipped
from stages._resume import run_tag
from stages._training import TrainingRun

OUTPUT = weights_file(PRETRAINED_VIT)
CHECKPOINT = MODELS / "pretrain_ckpt" / "last.pt"
REPORT_DIR = REPORTS / "pretrain"
LIVE_KEYS = ("loss", "train_acc", "val_acc", "lr", "distill_logits", "distill_features")
CHUNK = 256  # images per rendering job


def render_split(params: Params, classes, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    cfg = params.pretrain
    jobs = [(split, s, min(s + CHUNK, count)) for s in range(0, count, CHUNK)]
    fn = functools.partial(render_chunk, classes=classes, seed=cfg.seed, size=cfg.image_size)
    parts = map_items(fn, jobs, params.runtime, desc=f"corpus {split}")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def run(params: Params) -> None:
    cfg, arch = params.pretrain, params.classifier
    if not cfg.enabled:
        write_skipped("pretrain", "pretrain.enabled", REPORT_DIR / "metrics.json",
                      marker=(OUTPUT, "pretrain.enabled is false: no pretrained weights here\n"),
                      plots=(REPORT_DIR / "live", LIVE_KEYS))
        return
    teacher = build_teacher(cfg)  # a missing or unfitting teacher stops the stage before the corpus is rendered
    classes = corpus_classes(cfg.num_classes)
    started = time.perf_counter()
    train = render_split(params, classes, "train", cfg.num_classes * cfg.images_per_class)
    val = render_split(params, classes, "val", cfg.num_classes * cfg.val_per_class)
    render_s = time.perf_counter() - started
    training = TrainingRun("pretrain", params.runtime.device)
    dist, device = training.dist, training.device
    use_cpu_threads(device, world_size=dist.world_size)
    arch_keys = {k: getattr(arch, k) for k in ("backbone", "patch_size", "depth")}
    tag = run_tag("stages.pretrain", {"pretrain": cfg.model_dump(), "classifier": arch_keys, "device": device.type,
                                      "world": dist.world_size}, [weights_file(cfg.teacher)])
    resume = training.open(CHECKPOINT, tag, REPORT_DIR / "live", LIVE_KEYS.__contains__)
    if dist.is_main:
        print(f"pretrain: {arch.backbone} depth {arch.depth}, patch {arch.patch_size}, {cfg.image_size} px on "
              f"{len(train[0])} corpus images of {cfg.num_classes} classes ({len(val[0])} held out), "
              f"{cfg.epochs} epochs, device {device}"
              + (f"; teacher {cfg.teacher_backbone} ({cfg.teacher}) at stride {cfg.teacher_stride}" if teacher else ""),
              flush=True)

    on_epoch = training.on_epoch(lambda epoch, m: (
        f"pretrain epoch {epoch}/{cfg.epochs}: loss {m['loss']:.3f} train acc {m['train_acc']:.3f} "
        f"held-out acc {m['val_acc']:.3f}"))

    model, history = training.train(lambda: pretrain_vit(arch, cfg, train, val, cfg.num_classes, device, dist=dist,
                                                         resume=resume, on_epoch=on_epoch, teacher=teacher))
    if not training.is_main:
        return
    write_torch(OUTPUT, backbone_state(model))
    final = history[-1]
    distill = {k: final[k] for k in ("distill_logits", "distill_features") if k in final}
    write_json(REPORT_DIR / "metrics.json", {"loss": final["loss"], "train_acc": final["train_acc"],
                                             "val_acc": final["val_acc"], "epochs": len(history),
                                             "classes": cfg.num_classes, "images": len(train[0]),
                                             "teacher": cfg.teacher, **distill})
    training.finish(render_seconds=round(render_s, 1))
    print(f"pretrain: held-out top-1 {final['val_acc']:.3f} ({cfg.num_classes} classes); weights -> {OUTPUT}",
          flush=True)


if __name__ == "__main__":
    stage_main(run, distributed=True)

"""Stage `train_cls`: train the AReAM classifier (Eq. 20) on the train split's image-level labels.

Reads ``data/prepared/manifest.json`` (train and val splits) and the params sections classifier,
train_cls, aream, par and seed (and dataset, for the checkpoint tag). Writes

- ``models/classifier/model.pt``: the final classifier (``pipeline.models.vit.load_classifier``);
- ``models/classifier_ckpt/last.pt``: a checkpoint after every epoch (model, optimizer, schedule, RNG
  states, history; :class:`pipeline.train.harness.Checkpoint`), tagged with :func:`stages._resume.run_tag` of
  the params, device type, world size, the stage's code, the prepared data and the starting weights. On
  start a checkpoint with the same tag is resumed (the result equals an uninterrupted run); one with
  another tag is ignored and training starts fresh. A finished run deletes it, so ``dvc repro -f``
  retrains;
- ``reports/train_cls/live/``: dvclive per-epoch metrics (loss_cls, loss_aff, lr, val mAP, mean w_hat per
  layer) as DVC plots; ``reports/train_cls/metrics.json``: the final values (wall time and throughput go
  to ``reports/timing/train_cls.json``, outside DVC, so the outputs are the same bytes in every run).

``python -m stages.train_cls --baseline`` (stage ``train_cls_base``) trains the same recipe with
``aream.enabled`` forced off into ``models/classifier_base`` and ``reports/train_cls_base``: the "w/o
AReAM" classifier whose CAMs give Table I's first rows (``baseline.enabled: false`` skips it).

Runs on CUDA with AMP when present, else CPU. Multi-GPU: ``runtime.nproc`` (``--nproc G``; or torchrun by hand)
(``train_cls.batch_size`` is the global batch, split over the processes; only rank 0 writes).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from pipeline.common.io import DataError, write_json
from pipeline.config import Params, weights_file
from pipeline.data.manifest import load_manifest
from pipeline.models.vit import save_classifier
from pipeline.train.classifier import train_classifier
from pipeline.train.harness import amp_dtype
from stages._common import (CLASSIFIER, CLASSIFIER_BASE, CLASSIFIER_BASE_CKPT, CLASSIFIER_CKPT, MANIFEST, PREPARED,
                            REPORTS, SKIPPED, stage_main, write_skipped)
from stages._resume import run_tag
from stages._training import Outputs, TrainingRun

CHECKPOINT = CLASSIFIER_CKPT / "last.pt"
MODEL = CLASSIFIER / "model.pt"
REPORT_DIR = REPORTS / "train_cls"
LIVE_DIR = REPORT_DIR / "live"
METRICS = REPORT_DIR / "metrics.json"


AREAM_RUN = Outputs("train_cls", MODEL, CHECKPOINT, REPORT_DIR)
BASELINE_RUN = Outputs("train_cls_base", CLASSIFIER_BASE / "model.pt", CLASSIFIER_BASE_CKPT / "last.pt",
                       REPORTS / "train_cls_base")
HASHED_SECTIONS = ("classifier", "train_cls", "aream", "par", "dataset")
LOGGED = ("loss_cls", "loss_aff", "lr", "val_map", "val_map_cls", "val_map_patch")


def training_hash(params: Params, device: torch.device = torch.device("cpu"), world_size: int = 1) -> str:
    """Tag of everything that shapes the weights: the params sections and the seed, the device type and autocast dtype,
    the number of processes, this stage's code, the prepared data and the starting weights (a checkpoint
    is resumed only under the same tag)."""
    sections = {name: getattr(params, name).model_dump() for name in HASHED_SECTIONS}
    precision = f"{device.type}:{amp_dtype(device, params.train_cls.amp)}"  # bf16 or fp16 on CUDA, by GPU
    return run_tag("stages.train_cls", {**sections, "seed": params.seed, "device": precision, "world": world_size},
                   [MANIFEST, PREPARED / "summary.json", weights_file(params.classifier.pretrained)])


def _curve(key: str) -> bool:
    return key in LOGGED or key.startswith("w_hat_l")


def chance_map(samples, num_classes: int) -> float:
    """Expected mAP of random scores: the mean positive frequency of the classes present in ``samples``."""
    counts = np.zeros(num_classes)
    for s in samples:
        for k in s.labels:
            counts[k - 1] += 1
    present = counts > 0
    return float((counts[present] / max(len(samples), 1)).mean()) if present.any() else float("nan")


def run(params: Params, stop_after: int | None = None, baseline: bool = False) -> None:
    """Train, checkpoint every epoch, write the model and metrics. ``stop_after`` ends this process after
    that many epochs (as an interruption would; the next run resumes). ``baseline``: stage
    ``train_cls_base``, the same recipe with ``aream.enabled`` forced off (Table I's "w/o AReAM" rows),
    written to models/classifier_base; ``baseline.enabled: false`` skips it."""
    out = BASELINE_RUN if baseline else AREAM_RUN
    if baseline:
        if not params.baseline.enabled:
            write_skipped(out.stage, "baseline.enabled", out.report / "metrics.json",
                          marker=(out.model.parent / SKIPPED, "baseline.enabled is false: no baseline classifier "
                                  "trained\n"), plots=(out.live_dir, tuple(f"{out.stage}/{k}" for k in LOGGED)))
            return
        params = params.replace(aream={**params.aream.model_dump(), "enabled": False})
    manifest = load_manifest(MANIFEST)
    train, val = manifest.split("train"), manifest.split("val")
    if not train:
        raise DataError(f"{MANIFEST}: the train split is empty")
    training = TrainingRun(out.stage, params.runtime.device)
    dist, device = training.dist, training.device
    resume = training.open(out.ckpt, training_hash(params, device, dist.world_size), out.live_dir, _curve,
                           f"{out.stage}/")
    on_epoch = training.on_epoch(lambda epoch, m: f"{out.stage}: epoch {epoch}/{params.train_cls.epochs}: " + ", ".join(
        f"{k} {v:.4g}" for k, v in m.items() if isinstance(v, float) and (k in LOGGED or k == "seconds")))
    result = training.train(lambda: train_classifier(
        params.classifier, params.train_cls, params.aream, params.par, train, val, manifest.num_classes, device,
        resume=resume, seed=params.seed, on_epoch=on_epoch, stop_after=stop_after,
        loader_workers=params.runtime.loader_workers, dist=dist))
    if not result.finished or not training.is_main:
        return
    save_classifier(result.model, out.model)
    last = result.history[-1] if result.history else {}
    seconds = sum(h.get("seconds", 0.0) for h in result.history)
    images = sum(h.get("images_per_second", 0.0) * h.get("seconds", 0.0) for h in result.history)
    metrics = {k: v for k, v in last.items() if _curve(k)}
    metrics.update({"epochs": len(result.history), "chance_map": chance_map(val, manifest.num_classes),
                    "best_val_map": max((h.get("val_map", float("nan")) for h in result.history), default=None),
                    "aream": params.aream.enabled, "device": device.type})
    write_json(out.report / "metrics.json", metrics)
    training.finish(epoch_seconds=round(seconds, 1), images_per_second=images / seconds if seconds else None)
    print(f"{out.stage}: val mAP {metrics.get('val_map', float('nan')):.4f} (chance {metrics['chance_map']:.4f}); "
          f"model written to {out.model}", file=sys.stderr)


if __name__ == "__main__":
    stage_main(run, lambda cli: cli.add_argument(
        "--baseline", action="store_true",
        help="train the w/o-AReAM baseline into models/classifier_base (stage train_cls_base)"), distributed=True)

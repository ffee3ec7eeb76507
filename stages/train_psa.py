"""Stage `train_psa`: train AffinityNet on confident regions of CRF-refined CAMs (PSA, CVPR 2018).

1. For every train image, the ``post.cam_variant`` CAMs are CRF-refined twice, with background
   power ``crf.alpha_low`` and ``crf.alpha_high``; PSA's rule keeps confident foreground (low
   power), confident background (high power) and ignores the rest (255). Images run in parallel, and
   each label map goes to ``models/affinitynet_ckpt/confident/<id>.png`` (removed when done).
2. AffinityNet (``psa`` params, params.yaml's ``seed``) learns from them (:mod:`pipeline.train.affinity`),
   reading each image and label map when a batch needs it, so memory does not grow with the training set;
   checkpointing every epoch to ``models/affinitynet_ckpt/last.pt`` under a tag of the params, the code, the
   data, the confident labels and the starting weights (resumed only under the same tag, deleted when done).
   Multi-GPU: ``runtime.nproc`` (``--nproc N``).

Writes ``models/affinitynet/model.pt``, ``reports/train_psa/metrics.json`` (final losses, pair counts,
and the quality of the confident regions against the train masks: mIoU over confident pixels and the
fraction left unlabelled) and per-epoch curves in ``reports/train_psa/live``.
"""

from __future__ import annotations

import functools
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from pipeline.common.device import use_cpu_threads
from pipeline.common.digests import array_sha256, json_tag, sequence_sha256
from pipeline.common.io import FileSequence, read_label_png, read_rgb, write_json, write_label_png
from pipeline.common.parallel import map_items
from pipeline.config import CRF, ConfigError, Params, weights_file
from pipeline.data.manifest import Sample, load_manifest
from pipeline.models.affinitynet import save_affinitynet
from pipeline.postprocess.labels import add_sparse, label_quality, sparse_counts, summarize_quality
from pipeline.postprocess.psa import confident_regions
from pipeline.train.affinity import SUMMED, train_affinitynet
from pipeline.train.harness import gather_shards
from stages._cam_inputs import load_cam_inputs
from stages._common import AFFINITYNET, AFFINITYNET_CKPT, MANIFEST, PREPARED, REPORTS, stage_main
from stages._resume import run_tag
from stages._training import TrainingRun

MODEL = AFFINITYNET / "model.pt"
CHECKPOINT = AFFINITYNET_CKPT / "last.pt"
CONFIDENT = AFFINITYNET_CKPT / "confident"  # this run's confident label maps, one PNG per image (not an output)
REPORT_DIR = REPORTS / "train_psa"
METRICS = REPORT_DIR / "metrics.json"
LIVE_DIR = REPORT_DIR / "live"
CURVES = (*SUMMED, "lr")


def confident_one(sample: Sample, variant: str, crf: CRF, num_classes: int) -> tuple[np.ndarray, dict | None]:
    """Confident label map (H, W) uint8 of one image and its quality counts (None without a mask)."""
    image, keys, scores = load_cam_inputs(sample, variant)
    label = confident_regions(image, scores, keys, crf)
    if sample.mask is None:
        return label, None
    quality = label_quality(label, read_label_png(sample.mask), num_classes)
    quality["confusion"] = sparse_counts(quality["confusion"])
    return label, quality


def confident_to_file(sample: Sample, folder: Path, variant: str, crf: CRF,
                      num_classes: int) -> tuple[str, dict | None]:
    """:func:`confident_one`, its label map written to ``folder/<id>.png``; returns (its digest, quality), so
    no process holds every label map (VOC train_aug: ~0.75 MB each at full size)."""
    label, quality = confident_one(sample, variant, crf, num_classes)
    write_label_png(folder / f"{sample.id}.png", label)
    return array_sha256(label), quality


def run(params: Params) -> None:
    cfg = params.psa
    if cfg.pretrained not in ("none", "timm") and not weights_file(cfg.pretrained).is_file():
        raise ConfigError(f"psa.pretrained: weights file {weights_file(cfg.pretrained)} not found")
    if math.ceil(cfg.crop_size / cfg.feature_stride) < 2:
        raise ConfigError(f"psa.crop_size: {cfg.crop_size} px is under two feature cells at stride "
                          f"{cfg.feature_stride}: no pixel pairs to learn from")
    manifest = load_manifest(MANIFEST)
    samples = manifest.split("train")
    num_classes = manifest.num_classes + 1

    training = TrainingRun("train_psa", params.runtime.device)
    dist, device = training.dist, training.device
    # the dense CRFs of the confident regions: each process takes every world_size-th image and writes its
    # label maps to CONFIDENT; the gather (a collective) returns once every process has written its own
    if dist.is_main:  # a fresh, empty folder: no label map of an earlier run survives
        shutil.rmtree(CONFIDENT, ignore_errors=True)
        CONFIDENT.mkdir(parents=True)
    if dist.world_size > 1:
        torch.distributed.barrier()
    fn = functools.partial(confident_to_file, folder=CONFIDENT, variant=params.post.cam_variant, crf=params.crf,
                           num_classes=num_classes)
    mine = map_items(fn, samples[dist.rank::dist.world_size], params.runtime, desc="confident regions")
    results = gather_shards(mine, len(samples), dist)
    # read when a batch needs them: neither the images nor the label maps are held in memory
    labels = FileSequence([CONFIDENT / f"{s.id}.png" for s in samples], read_label_png)
    conf, ignored, labelled = np.zeros((num_classes, num_classes), np.int64), 0, 0
    for _, q in results:
        if q is not None:
            add_sparse(conf, q["confusion"])
            ignored += q["ignored"]
            labelled += q["labelled"]
    quality = summarize_quality(conf, ignored, labelled)
    images = FileSequence([s.image for s in samples], read_rgb)
    use_cpu_threads(device, world_size=dist.world_size)
    tag = run_tag("stages.train_psa", {"psa": cfg.model_dump(), "seed": params.seed, "device": device.type,
                                       "world": dist.world_size,
                                       "labels": sequence_sha256([r[0] for r in results])},
                  [MANIFEST, PREPARED / "summary.json", weights_file(cfg.pretrained)])
    resume = training.open(CHECKPOINT, tag, LIVE_DIR, CURVES.__contains__)
    on_epoch = training.on_epoch(lambda epoch, m: (
        f"epoch {epoch}/{cfg.epochs}: loss {m['loss']:.4f} (bg {m['bg_loss']:.3f} fg {m['fg_loss']:.3f} "
        f"neg {m['neg_loss']:.3f})"))
    model, history = training.train(lambda: train_affinitynet(images, labels, cfg, device, seed=params.seed,
                                                              dist=dist, resume=resume, on_epoch=on_epoch))
    if not training.is_main:
        return
    last = {k: v for k, v in history[-1].items() if k in CURVES}
    metrics = {**last, "epochs": len(history), "confident_miou": quality["miou"],
               "confident_ignored": quality["ignored"], "images": len(samples)}
    save_affinitynet(model.cpu(), MODEL, extra={
        "params_hash": json_tag({"psa": cfg.model_dump(), "seed": params.seed, "crf": params.crf.model_dump(),
                                 "post": params.post.model_dump()}),
        "metrics": {**last, "confident_miou": quality["miou"], "confident_ignored": quality["ignored"]}})
    write_json(METRICS, metrics)
    training.finish()
    shutil.rmtree(CONFIDENT, ignore_errors=True)
    print(f"train_psa: confident regions mIoU {quality['miou']} ignored {quality['ignored']}; saved {MODEL}")


if __name__ == "__main__":
    stage_main(run, distributed=True)

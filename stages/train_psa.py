"""Stage `train_psa`: train AffinityNet on confident regions of CRF-refined CAMs (PSA, CVPR 2018).

1. For every train image, the ``post.cam_variant`` CAMs are CRF-refined twice, with background
   power ``crf.alpha_low`` and ``crf.alpha_high``; PSA's rule keeps confident foreground (low
   power), confident background (high power) and ignores the rest (255). Images run in parallel.
2. AffinityNet (``psa`` params) learns, on random crops, affinity 1 for pairs of cells within
   ``psa.radius`` that share a confident label and 0 for pairs with different labels; the loss is
   PSA's balanced bg/4 + fg/4 + neg/2. AdamW with a poly schedule; AMP on CUDA.

Writes ``models/affinitynet/model.pt`` and, with dvclive, ``reports/train_psa/metrics.json``
(final losses, pair counts, and the quality of the confident regions against the train masks:
mIoU over confident pixels and the fraction left unlabelled) plus per-epoch curves.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch

from pipeline.config import ConfigError, Params, params_hash, weights_file
from pipeline.data.manifest import Sample, load_manifest
from pipeline.device import cpu_count, resolve_device, seed_everything
from pipeline.io import read_label_png, read_rgb
from pipeline.models.affinitynet import (AffinityNet, affinity_loss, pair_affinities, pair_labels, radius_offsets,
                                         save_affinitynet)
from pipeline.parallel import map_items
from pipeline.postprocess.crf import background_probs, crf_inference, crf_params
from pipeline.postprocess.labels import add_sparse, label_quality, sparse_counts, summarize_quality
from pipeline.postprocess.psa import confident_labels, downsample_labels, random_crop
from stages._cam_inputs import load_cam_inputs
from stages._common import AFFINITYNET, MANIFEST, REPORTS, stage_main

MODEL = AFFINITYNET / "model.pt"
LIVE_DIR = REPORTS / "train_psa"


def confident_one(sample: Sample, variant: str, alpha_low: float, alpha_high: float, crf_kwargs: dict,
                  num_classes: int) -> tuple[np.ndarray, dict | None]:
    """Confident label map (H, W) uint8 of one image and its quality counts (None without a mask)."""
    image, keys, scores = load_cam_inputs(sample, variant)
    if len(keys) == 0:
        label = np.zeros(image.shape[:2], np.uint8)
    else:
        post_low = crf_inference(image, background_probs(scores, alpha_low), **crf_kwargs)
        post_high = crf_inference(image, background_probs(scores, alpha_high), **crf_kwargs)
        label = confident_labels(post_low, post_high, keys)
    if sample.mask is None:
        return label, None
    quality = label_quality(label, read_label_png(sample.mask), num_classes)
    quality["confusion"] = sparse_counts(quality["confusion"])
    return label, quality


def make_batch(rng: np.random.Generator, images: list[np.ndarray], labels: list[np.ndarray], idx: np.ndarray,
               crop: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, crop, crop) float in [0, 1] and (B, ceil(crop/stride), ...) int64 cell labels."""
    pairs = [random_crop(rng, images[i], labels[i], crop) for i in idx]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(downsample_labels(np.stack([p[1] for p in pairs]), stride).astype(np.int64))
    return x, y


def train_affinitynet(images: list[np.ndarray], labels: list[np.ndarray], params: Params, device: torch.device,
                      live=None) -> tuple[AffinityNet, dict]:
    """Train on the in-memory images (H, W, 3) uint8 and confident labels (H, W) uint8."""
    cfg = params.psa
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = AffinityNet(cfg.backbone, cfg.pretrained, cfg.feature_stride, cfg.embed_dim).to(device).train()
    offsets = radius_offsets(cfg.radius)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / total) ** 0.9)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    last: dict = {}
    for epoch in range(cfg.epochs):
        sums = {"loss": 0.0, "bg_loss": 0.0, "fg_loss": 0.0, "neg_loss": 0.0, "bg_pairs": 0.0, "fg_pairs": 0.0,
                "neg_pairs": 0.0}
        order = rng.permutation(len(images))
        start = time.perf_counter()
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x, y = make_batch(rng, images, labels, idx, cfg.crop_size, cfg.feature_stride)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                emb = model(x)
            aff = pair_affinities(emb.float(), offsets)
            bg, fg, neg = pair_labels(y, offsets)
            losses = affinity_loss(aff, bg, fg, neg)
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            for k in ("loss", "bg_loss", "fg_loss", "neg_loss"):
                sums[k] += losses[k].item()
            for k, m in (("bg_pairs", bg), ("fg_pairs", fg), ("neg_pairs", neg)):
                sums[k] += float(m.sum()) / len(idx)
        last = {k: v / steps_per_epoch for k, v in sums.items()}
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {last['loss']:.4f} (bg {last['bg_loss']:.3f} fg "
              f"{last['fg_loss']:.3f} neg {last['neg_loss']:.3f}) {time.perf_counter() - start:.1f} s", flush=True)
        if live is not None:
            for k, v in last.items():
                live.log_metric(k, v)
            live.log_metric("lr", sched.get_last_lr()[0])
            live.next_step()
    return model.eval(), last


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
    device = resolve_device(params.runtime.device)

    fn = functools.partial(confident_one, variant=params.post.cam_variant, alpha_low=params.crf.alpha_low,
                           alpha_high=params.crf.alpha_high, crf_kwargs=crf_params(params.crf),
                           num_classes=num_classes)
    results = map_items(fn, samples, params.runtime, desc="confident regions")
    labels = [r[0] for r in results]
    conf, ignored, labelled = np.zeros((num_classes, num_classes), np.int64), 0, 0
    for _, q in results:
        if q is not None:
            add_sparse(conf, q["confusion"])
            ignored += q["ignored"]
            labelled += q["labelled"]
    quality = summarize_quality(conf, ignored, labelled)
    images = [read_rgb(s.image) for s in samples]

    if device.type == "cpu":
        torch.set_num_threads(cpu_count())
    from dvclive import Live

    with Live(dir=str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
        model, last = train_affinitynet(images, labels, params, device, live)
        live.summary["confident_miou"] = quality["miou"]
        live.summary["confident_ignored"] = quality["ignored"]
        live.summary["images"] = len(samples)
    save_affinitynet(model.cpu(), MODEL, extra={
        "params_hash": params_hash({"psa": cfg.model_dump(), "crf": params.crf.model_dump(),
                                    "post": params.post.model_dump()}),
        "metrics": {**last, "confident_miou": quality["miou"], "confident_ignored": quality["ignored"]}})
    print(f"train_psa: confident regions mIoU {quality['miou']} ignored {quality['ignored']}; saved {MODEL}")


if __name__ == "__main__":
    stage_main(run)

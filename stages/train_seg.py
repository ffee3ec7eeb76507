"""Stage `train_seg`: train the segmentation network on the pseudo labels (Table IV of the paper).

Reads the train split of ``data/prepared/manifest.json`` and, per image, ``data/pseudo/<id>.png``
(``seg.labels: pseudo``) or the ground-truth mask (``seg.labels: gt``, the fully supervised upper
bound; images without a mask are skipped and counted). Trains per the ``seg`` section and
params.yaml's ``seed`` (see ``pipeline/train/segmenter.py``) and writes:

- ``models/segmenter/model.pt``: weights + ``seg`` section + class names (``load_segmenter``);
- ``models/segmenter_ckpt/last.pt``: end-of-epoch checkpoint (:class:`pipeline.train.harness.Checkpoint`)
  tagged with :func:`stages._resume.run_tag` of the ``seg``, ``seed`` and ``dataset`` params, the device type, the
  world size, the stage's code, the prepared data, the bytes of the training labels and the starting
  weights. A rerun with the same tag resumes after the last finished
  epoch (same result as an uninterrupted run); any other checkpoint is ignored and training starts over.
  A finished run deletes it, so ``dvc repro -f`` retrains;
- ``reports/train_seg/metrics.json`` and per-epoch dvclive curves in ``reports/train_seg/live`` (wall
  time and throughput go to ``reports/timing/``, outside DVC).

Multi-GPU: ``runtime.nproc`` (``--nproc N``: DDP, ``seg.batch_size`` is the
global batch; rank 0 writes every output).

``python -m stages.train_seg --upper-bound`` (stage ``train_seg_gt``) trains the same network with
``seg.labels`` forced to ``gt``, the fully supervised upper bound the report compares against, and
writes ``models/segmenter_gt/``, ``models/segmenter_gt_ckpt/`` and ``reports/train_seg_gt/``.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from pipeline.common.device import seed_everything
from pipeline.common.digests import label_files_tag
from pipeline.common.io import DataError, write_json
from pipeline.config import Params, weights_file
from pipeline.data.manifest import load_manifest
from pipeline.models.segmenter import build_segmenter, save_segmenter
from pipeline.train.harness import wrap
from pipeline.train.segmenter import SegTrainSet, load_pair, train_segmenter, training_pairs
from stages._common import (MANIFEST, PREPARED, PSEUDO, REPORTS, SEGMENTER, SEGMENTER_CKPT, SEGMENTER_GT,
                            SEGMENTER_GT_CKPT, SKIPPED, stage_main, write_skipped)
from stages._resume import run_tag
from stages._training import Outputs, TrainingRun

LIVE_KEYS = ("loss", "pixel_acc", "lr")  # per-epoch curves (throughput varies run to run: reports/timing/)
WSSS = Outputs("train_seg", SEGMENTER / "model.pt", SEGMENTER_CKPT / "last.pt", REPORTS / "train_seg")
UPPER_BOUND = Outputs("train_seg_gt", SEGMENTER_GT / "model.pt", SEGMENTER_GT_CKPT / "last.pt",
                      REPORTS / "train_seg_gt")


def run(params: Params, upper_bound: bool = False) -> None:
    cfg = params.seg.model_copy(update={"labels": "gt"}) if upper_bound else params.seg
    out = UPPER_BOUND if upper_bound else WSSS
    if upper_bound and not params.upper_bound.enabled:
        write_skipped("train_seg_gt", "upper_bound.enabled", out.report / "metrics.json",
                      marker=(out.model.parent / SKIPPED, "upper_bound.enabled is false: no fully supervised model "
                              "trained\n"), plots=(out.live_dir, LIVE_KEYS))
        return
    manifest = load_manifest(MANIFEST)
    num_classes = manifest.num_classes + 1
    pairs, skipped = training_pairs(manifest.split("train"), cfg.labels, PSEUDO)
    if skipped and int(os.environ.get("RANK", "0")) == 0:
        print(f"seg.labels=gt: skipped {skipped} train images without a ground-truth mask", flush=True)
    if len(pairs) < 2:
        raise DataError(f"{MANIFEST}: {len(pairs)} usable train images for seg.labels={cfg.labels}; need at least 2")

    training = TrainingRun(out.stage, params.runtime.device)
    dist, device = training.dist, training.device
    seed_everything(params.seed)
    tag = run_tag("stages.train_seg", {"seg": cfg.model_dump(), "seed": params.seed,
                                       "dataset": params.dataset.model_dump(),
                                       "world": dist.world_size, "device": device.type,
                                       "labels": label_files_tag(pairs), "num_classes": num_classes},
                  [MANIFEST, PREPARED / "summary.json", weights_file(cfg.encoder_weights)])
    model = build_segmenter(cfg, num_classes).to(device)
    net = wrap(model, dist, device, sync_bn=True)
    resume = training.open(out.ckpt, tag, out.live_dir, LIVE_KEYS.__contains__)
    dataset = SegTrainSet(pairs, cfg, params.seed, load=functools.partial(load_pair, num_classes=num_classes))
    if dist.is_main:
        print(f"train_seg: {cfg.arch}/{cfg.encoder} on {len(pairs)} images ({cfg.labels} labels), {num_classes} "
              f"classes, {cfg.epochs} epochs, device {device}"
              + (f" x{dist.world_size}" if dist.world_size > 1 else ""), flush=True)
    on_epoch = training.on_epoch(lambda epoch, m: (
        f"epoch {epoch}/{cfg.epochs}: loss {m['loss']:.4f} pixel acc {m['pixel_acc']:.3f} lr {m['lr']:.2e} "
        f"{m['images_per_second']:.1f} img/s"))
    history = training.train(lambda: train_segmenter(net, dataset, cfg, device, dist=dist, resume=resume,
                                                     loader_workers=params.runtime.loader_workers, on_epoch=on_epoch))
    if not training.is_main:
        return
    final = history[-1]
    metrics = {"loss": final["loss"], "pixel_acc": final["pixel_acc"], "epochs": len(history),
               "train_images": len(pairs), "skipped_images": skipped}
    # the resume tag (code, data digests) stays out of the model file: a comment edit that leaves the
    # weights unchanged must leave the bytes, and everything downstream, unchanged too
    save_segmenter(model, out.model, manifest.class_names, extra={"metrics": metrics})
    write_json(out.report / "metrics.json", metrics)
    training.finish(images_per_second=float(np.mean([h["images_per_second"] for h in history[-3:]])))
    print(f"{out.stage}: final loss {final['loss']:.4f}, pixel acc {final['pixel_acc']:.3f} on the "
          f"{cfg.labels} labels; model -> {out.model}", flush=True)


if __name__ == "__main__":
    stage_main(run, lambda cli: cli.add_argument(
        "--upper-bound", action="store_true",
        help="train on the ground-truth masks into models/segmenter_gt (stage train_seg_gt)"), distributed=True)

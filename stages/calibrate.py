"""Stage `calibrate`: the dataset measured by the field's standard recipe, without AReAM, beside PASCAL VOC.

1. Statistics of the train masks: foreground fraction, classes and objects per image, object sizes, and the
   token-grid ceiling (the mIoU of the masks seen through a ``calibration.token_grid`` square grid).
2. The standard CNN CAM: ``calibration.backbone`` from ImageNet weights, fine-tuned on the train split's
   image-level labels (multi-label soft margin), CAMs at ``calibration.cam_sizes`` (+ flip); its val mAP and
   its train mIoU at the best background threshold and at Eq. 16's alpha1.
3. The same CAM refined by the dense CRF (``crf``) and by PSA's random walk on an AffinityNet (``psa``)
   trained on the CNN CAM's own confident regions: each mIoU and its gain over the CAM.

Depends on the data, the ImageNet weights and its own params (plus ``crf``, ``psa``, ``cams.sweep`` and
``pseudo.alpha1``, which define the refinements and the thresholds it measures), never on the AReAM
classifier, so it reruns only when those change.
Writes ``reports/calibration/calibration.json`` and ``calibration.md`` (a section of the report). Work files
live in ``models/calibration_tmp/`` (not an output; removed when done).
"""

from __future__ import annotations

import functools
import shutil
import time

import numpy as np
import torch

from pipeline.analysis.calibration import (VOC_PUBLISHED, VOC_SAMPLES, CamNet, DataTotal, build_cam_net,
                                           calibration_markdown, cam_net_map, cnn_cams, data_one, refinement_figures,
                                           train_cam_net)
from pipeline.common.device import resolve_device, use_cpu_threads
from pipeline.common.io import (FileSequence, read_label_png, read_npz, read_rgb, write_json, write_label_png,
                                write_npz, write_text)
from pipeline.common.parallel import fold_items
from pipeline.common.progress import progress
from pipeline.config import Calibration, ConfigError, Params
from pipeline.data.classification import ClassificationDataset
from pipeline.data.manifest import Sample, load_manifest
from pipeline.metrics import ThresholdSweep, miou, thresholds_from
from pipeline.models.inputs import image_to_tensor
from pipeline.postprocess.crf import crf_scores
from pipeline.postprocess.labels import SweepTotal, sweep_counts
from pipeline.postprocess.psa import confident_regions, psa_scores
from stages._common import MANIFEST, MODELS, REPORTS, stage_main, write_skipped, write_timing

OUT = REPORTS / "calibration"
WORK = MODELS / "calibration_tmp"  # CAMs and confident label maps of this run (not an output)


def refine_one(sample: Sample, params: Params, thresholds: np.ndarray, num_classes: int) -> tuple:
    """One image's CNN CAMs through the dense CRF (its sweep counts) and PSA's confident-region rule (the label
    map goes to the work folder for AffinityNet)."""
    image, npz = read_rgb(sample.image), read_npz(WORK / "cams" / f"{sample.id}.npz")
    keys, cams = npz["keys"].astype(np.int64), npz["cams"].astype(np.float32)
    refined = crf_scores(image, cams, alpha=params.crf.alpha, kernels=params.crf) if len(keys) else cams
    write_label_png(WORK / "confident" / f"{sample.id}.png", confident_regions(image, cams, keys, params.crf))
    return sweep_counts(refined, keys, read_label_png(sample.mask), thresholds, num_classes)


def train_cnn(params: Params, train: list[Sample], val: list[Sample], num_classes: int,
              device: torch.device) -> tuple[CamNet, dict]:
    cfg = params.calibration
    model = build_cam_net(cfg, num_classes).to(device)
    data = ClassificationDataset(train, num_classes, cfg.img_size, train=True, crop_scale=cfg.crop_scale,
                                 seed=cfg.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True,
                                         drop_last=len(data) > cfg.batch_size,
                                         generator=torch.Generator().manual_seed(cfg.seed),
                                         num_workers=params.runtime.loader_workers)
    losses = train_cam_net(model, loader, cfg.epochs, cfg.lr, cfg.weight_decay, device,
                           lambda e, loss: print(f"calibrate: CNN epoch {e}/{cfg.epochs} loss {loss:.4f}", flush=True))
    val_map = cam_net_map(model, ClassificationDataset(val, num_classes, cfg.img_size, train=False), cfg.batch_size,
                          device) if val else None
    return model, {"val_map": None if val_map is None else round(100 * val_map, 2), "final_loss": round(losses[-1], 5)}


def cam_pass(model: CamNet, train: list[Sample], cfg: Calibration, device: torch.device,
             sweep: ThresholdSweep) -> ThresholdSweep:
    """Every train image's CNN CAMs: scored into ``sweep`` and kept in the work folder for the refinements."""
    (WORK / "cams").mkdir(parents=True)
    (WORK / "confident").mkdir()
    for s in progress(train, desc="CNN CAMs"):
        cams = cnn_cams(model, image_to_tensor(read_rgb(s.image)).to(device), s.labels, cfg.cam_sizes, cfg.flip)
        cams = cams.cpu().numpy()
        sweep.add(cams, np.asarray(s.labels, np.int64), read_label_png(s.mask))
        write_npz(WORK / "cams" / f"{s.id}.npz", keys=np.asarray(s.labels, np.int16), cams=cams.astype(np.float16))
    return sweep


def walk_pass(params: Params, train: list[Sample], device: torch.device, sweep: ThresholdSweep) -> ThresholdSweep:
    """AffinityNet (``psa``, the calibration seed) trained on the CNN CAM's confident regions, then every image's
    CAMs walked on its affinities and scored into ``sweep``."""
    from pipeline.train.affinity import train_affinitynet

    images = FileSequence([s.image for s in train], read_rgb)
    labels = FileSequence([WORK / "confident" / f"{s.id}.png" for s in train], read_label_png)
    affinity, _ = train_affinitynet(images, labels, params.psa, device, seed=params.calibration.seed)
    for s in progress(train, desc="random walk"):
        npz = read_npz(WORK / "cams" / f"{s.id}.npz")
        walked = psa_scores(affinity, read_rgb(s.image), npz["cams"].astype(np.float32), params.psa)
        sweep.add(walked, npz["keys"].astype(np.int64), read_label_png(s.mask))
    return sweep


def run(params: Params) -> None:
    cfg = params.calibration
    if not cfg.enabled:
        write_skipped("calibrate", "calibration.enabled", OUT / "calibration.json",
                      marker=(OUT / "calibration.md", "Calibration skipped (`calibration.enabled: false`).\n"))
        return
    start = time.perf_counter()
    manifest = load_manifest(MANIFEST)
    train = [s for s in manifest.split("train") if s.mask is not None]
    if not train:
        raise ConfigError("calibration.enabled: the train split has no masks to measure against; set it to false")
    num_classes = manifest.num_classes + 1
    thresholds = thresholds_from(params.cams.sweep)
    data = fold_items(functools.partial(data_one, grid=cfg.token_grid, num_classes=num_classes), train,
                      params.runtime, functools.partial(DataTotal, num_classes), desc="mask statistics")

    device = resolve_device(params.runtime.device)
    use_cpu_threads(device)
    model, cnn = train_cnn(params, train, manifest.split("val"), manifest.num_classes, device)

    shutil.rmtree(WORK, ignore_errors=True)
    cam_sweep = cam_pass(model, train, cfg, device, ThresholdSweep(thresholds, num_classes))
    del model
    crf = fold_items(functools.partial(refine_one, params=params, thresholds=thresholds, num_classes=num_classes),
                     train, params.runtime, functools.partial(SweepTotal, thresholds, num_classes), desc="CRF")
    psa = walk_pass(params, train, device, ThresholdSweep(thresholds, num_classes))
    shutil.rmtree(WORK, ignore_errors=True)

    alpha1 = params.pseudo.alpha1
    figures = refinement_figures(cam_sweep, {"crf": crf.sweep, "psa": psa}, alpha1)
    result = {"dataset": manifest.dataset, "split": "train", "data": data.stats.summary(),
              "token_grid": {"grid": cfg.token_grid, "miou": round(100 * miou(data.confusion)[0], 2)},
              "cnn": {"backbone": cfg.backbone, **cnn}, **figures, "eq16_alpha1": alpha1,
              "voc_samples": VOC_SAMPLES, "voc_published": [list(row) for row in VOC_PUBLISHED]}
    write_json(OUT / "calibration.json", result)
    write_text(OUT / "calibration.md", calibration_markdown(result))
    write_timing("calibrate", {"seconds": round(time.perf_counter() - start, 1), "images": len(train)})
    print(f"calibrate: CNN CAM {figures['cam']['best_miou']} at {figures['cam']['best_threshold']}, CRF "
          f"{figures['crf']['best_miou']}, PSA {figures['psa']['best_miou']}; foreground fraction "
          f"{result['data'].get('fg_fraction')}")


if __name__ == "__main__":
    stage_main(run)

"""Stage `postprocess_psa`: random walk of the CAMs on AffinityNet affinities (PSA, CVPR 2018).

For every train image: the ``post.cam_variant`` CAMs at image size get a background channel
``(1 - max) ** psa.alpha``, are average-pooled to the AffinityNet grid (image / psa.feature_stride),
propagated by the random walk T^t (t = 2^psa.logt) on the sparse affinity matrix within
``psa.radius`` raised to ``psa.beta``, upsampled back and normalised per pixel over [background,
classes]; the foreground part goes to ``data/scores/psa/<id>.npz`` (``keys`` int16 (K,), ``scores``
float16 (K, H, W)). On CUDA images run one after the other on the GPU; on CPU in parallel.
``reports/postprocess/psa.json`` holds the best background-threshold mIoU (``cams.sweep``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Params
from pipeline.data.manifest import Sample, load_manifest
from pipeline.device import resolve_device
from pipeline.io import DataError, atomic_dir, read_label_png, write_npz
from pipeline.metrics import thresholds_from
from pipeline.models.affinitynet import AffinityNet, affinity_matrix, load_affinitynet
from pipeline.parallel import map_items
from pipeline.postprocess.labels import sweep_counts
from pipeline.postprocess.psa import random_walk, walk_inputs, walk_scores
from stages._cam_inputs import fan_out_runtime, load_cam_inputs, write_sweep_report
from stages._common import AFFINITYNET, MANIFEST, SCORES, stage_main

METHOD = "psa"
MODEL = AFFINITYNET / "model.pt"


def psa_scores(model: AffinityNet, image: np.ndarray, scores: np.ndarray, radius: int, alpha: float, beta: float,
               logt: int) -> np.ndarray:
    """image (H, W, 3) uint8, scores (K, H, W) -> random-walk foreground scores (K, H, W) float32 in [0, 1]."""
    if scores.shape[0] == 0:
        return np.zeros(scores.shape, np.float32)
    device = next(model.parameters()).device
    h, w = image.shape[:2]
    with torch.no_grad():
        x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 255.0
        emb = model(x)[0].float()
        cams = walk_inputs(torch.from_numpy(np.ascontiguousarray(scores)).to(device), tuple(emb.shape[-2:]), alpha)
        walked = random_walk(cams, affinity_matrix(emb, radius), beta, logt)
        return walk_scores(walked, (h, w)).cpu().numpy()


@functools.lru_cache(maxsize=2)
def _model(path: str, device: str) -> AffinityNet:
    return load_affinitynet(path, device)


def refine_one(sample: Sample, out_dir: str, model_path: str, device: str, threads: int, variant: str,
               walk: dict, thresholds: np.ndarray, num_classes: int):
    """Walk one image, write its scores; return its sweep counts (None without a mask)."""
    if threads:
        torch.set_num_threads(threads)
    image, keys, scores = load_cam_inputs(sample, variant)
    refined = psa_scores(_model(model_path, device), image, scores, **walk)
    write_npz(Path(out_dir) / f"{sample.id}.npz", keys=keys.astype(np.int16), scores=refined.astype(np.float16))
    if sample.mask is None:
        return None
    return sweep_counts(refined, keys, read_label_png(sample.mask), thresholds, num_classes)


def run(params: Params) -> None:
    manifest = load_manifest(MANIFEST)
    samples = manifest.split("train")
    thresholds = thresholds_from(params.cams.sweep)
    num_classes = manifest.num_classes + 1
    device = resolve_device(params.runtime.device)
    if not MODEL.is_file():
        raise DataError(f"{MODEL}: AffinityNet weights not found (run the train_psa stage first)")
    cfg = params.psa
    walk = dict(radius=cfg.radius, alpha=cfg.alpha, beta=cfg.beta, logt=cfg.logt)
    runtime, threads = fan_out_runtime(params.runtime, device.type)
    with atomic_dir(SCORES / METHOD) as tmp:
        fn = functools.partial(refine_one, out_dir=str(tmp), model_path=str(MODEL), device=str(device),
                               threads=threads, variant=params.post.cam_variant, walk=walk,
                               thresholds=thresholds, num_classes=num_classes)
        counts = map_items(fn, samples, runtime, desc=METHOD)
    write_sweep_report(METHOD, counts, thresholds, num_classes, len(samples))


if __name__ == "__main__":
    stage_main(run)

"""Stage `postprocess_par`: Pixel-Adaptive Refinement (Eqs. 13-15) of the exported CAMs at image size.

For every train image: the ``post.cam_variant`` CAMs upsampled to the image, refined by PAR with
the ``par`` params (the ones training uses), clipped to [0, 1] and written to
``data/scores/par/<id>.npz`` (``keys`` int16 (K,), ``scores`` float16 (K, H, W)). PAR treats each
class channel alike and independently, so no background channel is needed here; Eq. 16 or the
background-threshold sweep turns the scores into labels. On CUDA the images run one after the
other on the GPU; on CPU they run in parallel, one thread each.
``reports/postprocess/par.json`` holds the best background-threshold mIoU (``cams.sweep``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Params
from pipeline.data.manifest import Sample, load_manifest
from pipeline.device import resolve_device
from pipeline.io import atomic_dir, read_label_png, write_npz
from pipeline.metrics import thresholds_from
from pipeline.parallel import map_items
from pipeline.postprocess.labels import sweep_counts
from pipeline.postprocess.par import par_kwargs, par_refine
from stages._cam_inputs import fan_out_runtime, load_cam_inputs, write_sweep_report
from stages._common import MANIFEST, SCORES, stage_main

METHOD = "par"


def par_scores(image: np.ndarray, scores: np.ndarray, kwargs: dict, device: str = "cpu") -> np.ndarray:
    """image (H, W, 3) uint8, scores (K, H, W) -> PAR-refined scores (K, H, W) float32 in [0, 1]."""
    if scores.shape[0] == 0:
        return np.zeros(scores.shape, np.float32)
    with torch.no_grad():
        img = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 255.0
        cam = torch.from_numpy(np.ascontiguousarray(scores, np.float32)).to(device)[None]
        out = par_refine(img, cam, **kwargs)[0]
    return out.clamp(0, 1).float().cpu().numpy()


def refine_one(sample: Sample, out_dir: str, variant: str, kwargs: dict, thresholds: np.ndarray,
               num_classes: int, device: str, threads: int):
    """Refine one image, write its scores; return its sweep counts (None without a mask)."""
    if threads:
        torch.set_num_threads(threads)
    image, keys, scores = load_cam_inputs(sample, variant)
    refined = par_scores(image, scores, kwargs, device)
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
    kwargs = par_kwargs(params.par)
    runtime, threads = fan_out_runtime(params.runtime, device.type)
    with atomic_dir(SCORES / METHOD) as tmp:
        fn = functools.partial(refine_one, out_dir=str(tmp), variant=params.post.cam_variant, kwargs=kwargs,
                               thresholds=thresholds, num_classes=num_classes, device=str(device), threads=threads)
        counts = map_items(fn, samples, runtime, desc=METHOD)
    write_sweep_report(METHOD, counts, thresholds, num_classes, len(samples))


if __name__ == "__main__":
    stage_main(run)

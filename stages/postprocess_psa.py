"""Stage `postprocess_psa`: random walk of the CAMs on AffinityNet affinities (PSA, CVPR 2018).

For every train image: the ``post.cam_variant`` CAMs at image size get a background channel
``(1 - max) ** psa.alpha``, are average-pooled to the AffinityNet grid (image / psa.feature_stride;
``post.walk_pool``: ``adaptive`` pooling, or PSA's ``padded`` zero-pad, pool and crop), propagated by
the random walk T^t (t = 2^psa.logt) on the sparse affinity matrix within ``psa.radius`` (the pairs of
``psa.pairs``) raised to ``psa.beta``, upsampled back and normalised per pixel over [background,
classes]; the foreground part goes to ``data/scores/psa/<id>.npz`` (``keys`` int16 (K,), ``scores``
float16 (K, H, W)). On CUDA images run one after the other on the GPU; on CPU in parallel.
``reports/postprocess/psa.json`` holds the best background-threshold mIoU (``cams.sweep``).
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.common.device import resolve_device
from pipeline.common.io import DataError
from pipeline.config import PSA, Params
from pipeline.models.affinitynet import AffinityNet, load_affinitynet
from pipeline.postprocess.psa import psa_scores
from stages._cam_inputs import fan_out_runtime, run_refinement
from stages._common import AFFINITYNET, stage_main

METHOD = "psa"
MODEL = AFFINITYNET / "model.pt"


@functools.lru_cache(maxsize=2)
def _model(path: str, device: str) -> AffinityNet:
    return load_affinitynet(path, device)


def walk_one(image: np.ndarray, scores: np.ndarray, model_path: str, device: str, cfg: PSA,
             walk_pool: str = "adaptive") -> np.ndarray:
    """PSA scores of one image with the AffinityNet at ``model_path`` (loaded once per process)."""
    return psa_scores(_model(model_path, device), image, scores, cfg, walk_pool)


def run(params: Params) -> None:
    device = resolve_device(params.runtime.device)
    if not MODEL.is_file():
        raise DataError(f"{MODEL}: AffinityNet weights not found (run the train_psa stage first)")
    runtime, threads = fan_out_runtime(params.runtime, device.type)
    refine = functools.partial(walk_one, model_path=str(MODEL), device=str(device), cfg=params.psa,
                               walk_pool=params.post.walk_pool)
    run_refinement(METHOD, params, refine, runtime, threads)


if __name__ == "__main__":
    stage_main(run)

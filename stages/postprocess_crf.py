"""Stage `postprocess_crf`: dense CRF on the exported CAMs (Table I, P.P. column).

For every train image: the ``post.cam_variant`` CAMs at image size, a background score
``(1 - max) ** crf.alpha`` in front, dense CRF (``crf`` params), and the posterior of the
foreground classes is written to ``data/scores/crf/<id>.npz`` (``keys`` int16 (K,), ``scores``
float16 (K, H, W)). Images run in parallel (``runtime.task_runner`` / ``runtime.workers``): the
CRF is single-threaded. ``reports/postprocess/crf.json`` holds the best background-threshold
mIoU of these scores on the train split (``cams.sweep``).
"""

from __future__ import annotations

import functools

from pipeline.config import Params
from pipeline.postprocess.crf import crf_scores
from stages._cam_inputs import run_refinement
from stages._common import stage_main

METHOD = "crf"


def run(params: Params) -> None:
    refine = functools.partial(crf_scores, alpha=params.crf.alpha, kernels=params.crf)
    run_refinement(METHOD, params, refine)


if __name__ == "__main__":
    stage_main(run)

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

from pipeline.config import Params
from pipeline.device import resolve_device
from pipeline.postprocess.par import par_scores
from stages._cam_inputs import fan_out_runtime, run_refinement
from stages._common import stage_main

METHOD = "par"


def run(params: Params) -> None:
    device = resolve_device(params.runtime.device)
    runtime, threads = fan_out_runtime(params.runtime, device.type)
    refine = functools.partial(par_scores, cfg=params.par, device=str(device))
    run_refinement(METHOD, params, refine, runtime, threads)


if __name__ == "__main__":
    stage_main(run)

"""Stage `postprocess_par`: Pixel-Adaptive Refinement (Eqs. 13-15) of the exported CAMs.

For every train image, the ``post.cam_variant`` CAMs are refined with the ``par`` params (the ones
training uses) and written to ``data/scores/par/<id>.npz`` (``keys`` int16 (K,), ``scores`` float16
(K, H, W)). ``post.par_mode`` picks how:

- ``image``: the CAMs at image size, refined by PAR alone, clipped to [0, 1]. PAR treats each class
  channel alike and independently, so no background channel is needed; Eq. 16 or the
  background-threshold sweep turns the scores into labels.
- ``afa``: AFA's reference refinement (:func:`pipeline.postprocess.afa.afa_labels`): half resolution,
  softmax over [background, CAMs] with the two background scores ``post.par_backgrounds``, arg-max. Its
  labels are stored as scores that Eq. 16 maps back onto them (1 foreground, 0.5 ignored, 0 background).

On CUDA the images run one after the other on the GPU; on CPU they run in parallel, one thread each.
``reports/postprocess/par.json`` holds the best background-threshold mIoU (``cams.sweep``).
"""

from __future__ import annotations

import functools

from pipeline.common.device import resolve_device
from pipeline.config import Params
from pipeline.postprocess.afa import afa_scores
from pipeline.postprocess.par import par_scores
from stages._cam_inputs import fan_out_runtime, run_refinement
from stages._common import stage_main

METHOD = "par"


def run(params: Params) -> None:
    device = resolve_device(params.runtime.device)
    runtime, threads = fan_out_runtime(params.runtime, device.type)
    if params.post.par_mode == "afa":
        refine = functools.partial(afa_scores, cfg=params.par, backgrounds=tuple(params.post.par_backgrounds),
                                   device=str(device))
    else:
        refine = functools.partial(par_scores, cfg=params.par, device=str(device))
    run_refinement(METHOD, params, refine, runtime, threads)


if __name__ == "__main__":
    stage_main(run)

"""The resume tag of the training stages (train_cls, train_psa, train_seg, train_seg_gt)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def run_tag(stage_module: str, params: dict, inputs: Iterable[Path | None] = ()) -> str:
    """Tag of one training run: a hash of everything that shapes its weights, i.e. the params that
    reach it, the bytes of every project file its stage runs (:mod:`pipeline.common.codedeps`) and of its
    input files or folders (the prepared data, labels, starting weights). A resume checkpoint is
    trusted only under the same tag, so a code, data or weights edit retrains instead of resuming."""
    from pipeline.common import digests

    return digests.inputs_tag(params, digests.code_sha256(stage_module), inputs)

"""The resume tag of the training stages (train_cls, train_psa, train_seg, train_seg_gt)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from pipeline.io import file_sha256


def run_tag(stage_module: str, params: dict, inputs: Iterable[Path | None] = ()) -> str:
    """Tag of one training run: a hash of everything that shapes its weights, i.e. the params that
    reach it, the bytes of every project file its stage runs (:mod:`pipeline.codedeps`) and of its
    input files or folders (the prepared data, labels, starting weights). A resume checkpoint is
    trusted only under the same tag, so a code, data or weights edit retrains instead of resuming."""
    from pipeline.codedeps import code_digest

    h = hashlib.sha256()
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(code_digest(stage_module).encode())
    for path in inputs:
        if path is None:
            continue
        path = Path(path)
        if not path.exists():  # e.g. a manifest written by hand, without summary.json
            h.update(f"{path.as_posix()}: absent\0".encode())
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(f.as_posix().encode() + b"\0")
            file_sha256(f, h)
    return h.hexdigest()[:16]


"""Every digest the pipeline computes, in one place. All are sha256 in hex: the full 64 digits where a digest
stands for data (a file, the prepared data set, the label maps a network learns from), a 16-digit *tag* where it
only names a configuration (resume and export tags, a params section, a model file named in a tag)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TAG_LENGTH = 16


def tag(hexdigest: str) -> str:
    """The first :data:`TAG_LENGTH` hex digits of a digest."""
    return hexdigest[:TAG_LENGTH]


def file_sha256(path: str | Path, h: Any = None) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks; given a running hash ``h``, the bytes update it
    (and its hex digest so far is returned)."""
    h = hashlib.sha256() if h is None else h
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_tag(path: str | Path) -> str:
    """The tag of a file's bytes (a model file named in an export tag)."""
    return tag(file_sha256(path))


def json_tag(data: Any) -> str:
    """The tag of a JSON-able value with sorted keys (a params section stored beside a model)."""
    return tag(hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest())


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's shape and bytes (one confident label map)."""
    return hashlib.sha256(str(array.shape).encode() + array.tobytes()).hexdigest()


def sequence_sha256(digests: Sequence[str]) -> str:
    """sha256 of digests in order (the label maps of a training set, from their :func:`array_sha256`)."""
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def label_files_tag(pairs: Iterable[tuple[str, str]]) -> str:
    """The tag of (image path, label file) pairs: the paths and each label file's bytes, in order; it changes
    when any training label does."""
    h = hashlib.sha256()
    for image_path, label_path in pairs:
        h.update(image_path.encode())
        h.update(Path(label_path).read_bytes())
    return tag(h.hexdigest())


def code_sha256(module: str, root: Path | None = None) -> str:
    """sha256 over the paths and bytes of a module's import closure (:func:`pipeline.common.codedeps.closure`):
    it changes with any edit of the code a stage runs."""
    from pipeline.common.codedeps import ROOT, closure

    root = ROOT if root is None else root
    h = hashlib.sha256()
    for rel in closure(module, root):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()


def inputs_tag(params: dict, code: str, inputs: Iterable[Path | None] = ()) -> str:
    """The tag of a training run's inputs: the params that reach it, its code digest and the bytes of every
    input file or folder (paths too; an absent path counts as absent)."""
    h = hashlib.sha256()
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(code.encode())
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
    return tag(h.hexdigest())

"""File I/O used by the stages: atomic writes, label PNGs, images, JSON, npz.

Every writer goes to a temporary file in the destination folder and renames it into place, so an
interrupted stage never leaves a half-written file that DVC could cache or a resume could trust.
Files and folders are created with the user's umask (0644 / 0755 under the usual 022), and the same
content always gives the same bytes (:func:`write_torch` keeps temporary names out of archives), so an
unchanged result never changes its DVC hash.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.common.palette import label_to_pil, pil_to_label


class DataError(ValueError):
    """Bad input data a user can fix; the message names the file."""


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # like mkstemp, but the file gets 0666 & ~umask instead of 0600
        tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix or path.suffix}")
        try:
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` through memory: saving to a file names the archive after that (temporary) file,
    so the same weights would get new bytes, and a new DVC hash, at every save."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def write_json(path: str | Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (did the stage that writes it run?)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from None


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_label_png(path: str | Path, label: np.ndarray) -> None:
    """Single-channel VOC-palette PNG: 0 background, 1..C classes, 255 ignore."""
    buf = io.BytesIO()
    label_to_pil(label).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def read_label_png(path: str | Path) -> np.ndarray:
    """(H, W) uint8 label indices of a palette or grayscale PNG."""
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_label(img)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable label PNG ({err})") from None


def write_rgb(path: str | Path, rgb: np.ndarray, quality: int = 95) -> None:
    """(H, W, 3) uint8 image as JPEG or PNG by the path's suffix."""
    buf = io.BytesIO()
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format=fmt, **kwargs)
    write_bytes(path, buf.getvalue())


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a missing or corrupt file raises DataError naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: corrupt or unreadable image ({err})") from None


def write_npz(path: str | Path, compress: bool = True, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    write_bytes(path, buf.getvalue())


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable npz ({err})") from None


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name; swap it onto ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # like mkdtemp, but the folder gets 0777 & ~umask instead of 0700
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            tmp.mkdir()
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class FileSequence(Sequence):
    """A read-only list whose item ``i`` is ``reader(paths[i])``, read when asked for: a training set of
    image or label files that never sits in memory as a whole."""

    def __init__(self, paths: Sequence[str | Path], reader: Callable[[Path], Any]):
        self.paths, self.reader = [Path(p) for p in paths], reader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.reader(p) for p in self.paths[i]]
        return self.reader(self.paths[i])

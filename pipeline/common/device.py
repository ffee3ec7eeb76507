"""Device selection and reproducibility helpers."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"runtime.device: {name!r} asked for, but no CUDA device is available")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def use_cpu_threads(device: torch.device, threads: int = 0, world_size: int = 1) -> None:
    """The stages' CPU thread policy: a lone process on the CPU runs torch on ``threads`` threads (0: every core
    it may use); a process of a torchrun launch keeps the OMP_NUM_THREADS its launcher gave it (cores / nproc),
    and a GPU run leaves torch's default."""
    if device.type == "cpu" and world_size == 1:
        torch.set_num_threads(threads or cpu_count())

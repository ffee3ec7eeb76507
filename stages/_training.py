"""The skeleton every training stage follows (pretrain, train_cls[_base], train_psa, train_seg[_gt]), apart from
:mod:`stages._common` so that only these stages carry the training harness in their code dependencies.

One order for all: the processes and the device; the resume checkpoint under the run's tag (``stages._resume``)
and the per-epoch curves, which replay a resumed run's history; the harness's epoch hook (checkpoint, curves, a
line per epoch); training; the curves closed and every process leaving the process group, after which the main
process alone writes the model; then the timing record and the checkpoint's removal, so a finished run leaves
none and a forced rerun trains anew.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pipeline.train.harness import Checkpoint, Curves, OnEpoch, epoch_hook, setup_distributed, teardown
from stages._common import write_timing

T = TypeVar("T")


@dataclass(frozen=True)
class Outputs:
    """Where one training run writes (mirrored in dvc.yaml): its model file, its resume checkpoint (not a DVC
    output) and its report folder, with the per-epoch curves in ``report/live``."""
    stage: str
    model: Path
    ckpt: Path
    report: Path

    @property
    def live_dir(self) -> Path:
        return self.report / "live"


class TrainingRun:
    """One training stage's run: ``dist`` and ``device`` from :func:`setup_distributed`, then
    :meth:`open` -> :meth:`on_epoch` -> :meth:`train` -> (main process: save) -> :meth:`finish`."""

    def __init__(self, name: str, device: str):
        self.name = name
        self.dist, self.device = setup_distributed(device)
        self.checkpoint: Checkpoint | None = None
        self.curves: Curves | None = None
        self.resume: dict | None = None
        self.train_seconds = 0.0

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def open(self, checkpoint: Path, tag: str, live_dir: Path, curve_keys: Callable[[str], bool],
             prefix: str = "") -> dict | None:
        """The checkpoint at ``checkpoint`` under ``tag`` and the curves in ``live_dir`` (main process); returns
        the state to resume from, or None."""
        self.checkpoint = Checkpoint(checkpoint, tag, self.name, self.dist)
        self.resume = self.checkpoint.load()
        if self.dist.is_main:
            self.curves = Curves(live_dir, curve_keys, self.resume["history"] if self.resume else [], prefix)
        return self.resume

    def on_epoch(self, describe: Callable[[int, dict], str]) -> OnEpoch:
        """The trainers' ``on_epoch``: save the state, log the curves, print ``describe(epoch, metrics)``."""
        if self.checkpoint is None:
            raise RuntimeError(f"{self.name}: open() the run before training it")
        return epoch_hook(self.checkpoint, self.curves, self.dist, describe)

    def train(self, fit: Callable[[], T]) -> T:
        """``fit()``'s result; the curves are closed whatever happens, and after a finished fit every process
        leaves the process group (only the main process goes on to save)."""
        started = time.perf_counter()
        try:
            result = fit()
        finally:
            if self.curves is not None:
                self.curves.end()
        self.train_seconds = time.perf_counter() - started
        teardown(self.dist)
        return result

    def finish(self, **timing: float | int | None) -> None:
        """Once the main process wrote the model: reports/timing/<name>.json (wall time of the training, the
        epoch it resumed from, the stage's own figures) and the checkpoint removed."""
        write_timing(self.name, {"train_seconds": round(self.train_seconds, 1),
                                 "resumed_from_epoch": self.resume["epoch"] if self.resume else 0, **timing})
        if self.checkpoint is not None:
            self.checkpoint.finish()

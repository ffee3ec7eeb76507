"""The training harness shared by every network of the DAG (the classifier, AffinityNet, DeepLab).

A trainer brings a model, a loss step and its data; this module brings the rest:

- :func:`setup_distributed` / :func:`teardown`: the process group of a ``torchrun`` launch (NCCL on CUDA,
  gloo on CPU) and this process's device; :func:`wrap` / :func:`unwrap` for DistributedDataParallel;
  :func:`all_reduce_sum` for per-epoch statistics;
- :func:`epoch_seed`: the torch seed of an epoch's sample order and of its dropout masks (per-sample
  augmentation draws from ``numpy.random.default_rng([seed, epoch, index])`` in each trainer instead);
- :func:`epoch_order`: the seeded sample order of an epoch, padded by wrapping to a multiple of the
  number of processes and split by rank, so that every process runs the same number of steps (an
  uneven split hangs DDP at the last step of the longer process);
- :func:`amp`: the autocast context and gradient scaler for mixed precision (CUDA only);
- :func:`rng_states` / :func:`set_rng_states`: the global generators a checkpoint carries;
- :func:`lr_factor` / :func:`make_scheduler`: the one learning-rate schedule (warm-up, then cosine, poly or
  constant), stepped per optimizer step;
- :func:`training_state` / :func:`restore_training_state`: the one checkpoint state; :data:`OnEpoch` /
  :func:`epoch_hook`: the one per-epoch callback, called by every trainer on every process;
- :class:`Checkpoint`: the resume protocol. A checkpoint is saved after every epoch under a tag (see
  ``stages/_resume.py``: params, code, data and starting weights), loaded only under the same tag, and
  deleted once the run finished, so ``dvc repro -f`` retrains and a killed run continues bit-identically;
- :class:`Curves`: per-epoch dvclive curves that replay a resumed run's history, so plots hold every epoch;
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

# ---------------------------------------------------------------------------------------------
# processes and devices
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    """The world of a ``torchrun`` launch (world_size 1 = a plain process)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str = "auto") -> tuple[Distributed, torch.device]:
    """(world, device) of this process. Under ``torchrun`` (WORLD_SIZE > 1) the process group is
    initialised: NCCL with one GPU per local rank, or gloo on the CPU (``runtime.device: cpu`` or no GPU)."""
    from pipeline.common.device import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), resolve_device(device_name)
    import torch.distributed as tdist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device_name != "cpu":
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend)
    return Distributed(rank=tdist.get_rank(), world_size=tdist.get_world_size()), device


def teardown(dist: Distributed) -> None:
    """Wait for every process, then close the process group (no-op in a plain process)."""
    if dist.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def barrier(dist: Distributed) -> None:
    """Wait for every process (no-op in a plain process)."""
    if dist.world_size > 1:
        torch.distributed.barrier()


def wrap(model: nn.Module, dist: Distributed, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """``model`` for training: DistributedDataParallel over the processes (BatchNorm synchronised across
    GPUs when ``sync_bn``), or the model itself in a plain process."""
    if dist.world_size <= 1:
        return model
    if sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def all_reduce_sum(values: torch.Tensor, dist: Distributed, device: torch.device) -> torch.Tensor:
    """``values`` summed over the processes (a copy on the CPU)."""
    if dist.world_size <= 1:
        return values.clone()
    on_device = values.to(device)
    torch.distributed.all_reduce(on_device)
    return on_device.cpu()


def gather_shards(local: list, num_items: int, dist: Distributed) -> list:
    """Per-item results computed as ``items[rank::world_size]`` by every process -> the results of all
    ``num_items`` items, in item order, on every process (picklable objects; one all-gather)."""
    if dist.world_size <= 1:
        return list(local)
    shards: list = [None] * dist.world_size
    torch.distributed.all_gather_object(shards, list(local))
    out: list = [None] * num_items
    for rank, shard in enumerate(shards):
        out[rank::dist.world_size] = shard
    return out


# ---------------------------------------------------------------------------------------------
# order, precision, randomness
# ---------------------------------------------------------------------------------------------


ORDER_STREAM, DROPOUT_STREAM = 0, 1  # the two torch streams an epoch draws from (see epoch_seed)
STREAM_STRIDE = 0x9E3779B1  # 2,654,435,761: the dropout stream's offset from the order stream's seeds


def epoch_seed(seed: int, epoch: int, stream: int = ORDER_STREAM) -> int:
    """The torch seed of ``stream`` in ``epoch`` of a run seeded with ``seed``: stream 0 seeds the sample order of
    :func:`epoch_order`, stream 1 the global torch generator a trainer reseeds for its dropout masks. The value is
    taken modulo 2**32 because torch's CPU generator keeps only the low 32 bits of a seed (seeds 2**32 apart give
    the same draws); for seeds below 4,000 and epochs below 100,000 no two (seed, epoch, stream) share a seed."""
    if stream not in (ORDER_STREAM, DROPOUT_STREAM):
        raise ValueError(f"stream must be {ORDER_STREAM} (sample order) or {DROPOUT_STREAM} (dropout), got {stream}")
    return (seed * 1_000_003 + epoch + stream * STREAM_STRIDE) % 2**32


def epoch_order(num_items: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """This process's sample indices for ``epoch``: a permutation from a generator seeded with
    (seed, epoch) only (so independent of any global RNG and of the number of processes), padded by
    wrapping to a multiple of ``world_size`` and taken every ``world_size``-th from ``rank``."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    perm = torch.randperm(num_items, generator=g).tolist()
    total = -(-num_items // world_size) * world_size
    perm += perm[:total - num_items]
    return perm[rank::world_size]


POLY_POWER = 0.9  # the poly schedule's exponent (DeepLab, PSA) where a section has no key for it


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, power: float = POLY_POWER) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based): linear warm-up to 1 over
    ``warmup_steps``, then cosine / poly (``power``) decay to 0 at ``total_steps``, or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly":
        return (1.0 - t) ** power
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, schedule: str = "poly",
                   power: float = POLY_POWER) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of every trainer: each parameter group's initial lr times :func:`lr_factor`,
    stepped once after every optimizer step (its state goes into :func:`training_state`)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, schedule, power))


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer parameter groups, the DeiT rule: ``weight_decay`` on weight matrices, none on biases,
    norms, tokens and position embeddings; frozen parameters are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or "token" in name or "pos_embed" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def amp_dtype(device: torch.device, enabled: bool, dtype: torch.dtype | None = None) -> torch.dtype | None:
    """The autocast dtype :func:`amp` uses (None: full precision). ``dtype`` None picks bf16 where the GPU
    supports it, else fp16; resume tags record it, since it shapes the weights."""
    if device.type != "cuda" or not enabled:
        return None
    if dtype is not None:
        return dtype
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def amp(device: torch.device, enabled: bool, dtype: torch.dtype | None = None) -> tuple[Callable[[], Any], Any]:
    """(autocast context factory, GradScaler or None) for :func:`amp_dtype`: fp16 comes with a gradient
    scaler; full precision (the CPU, or ``enabled`` false) with neither."""
    dtype = amp_dtype(device, enabled, dtype)
    if dtype is None:
        return contextlib.nullcontext, None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any = None) -> None:
    """Zero the gradients, back-propagate ``loss`` (scaled under fp16) and step ``optimizer``."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def rng_states() -> dict[str, Any]:
    """The Python, numpy and torch (and CUDA) global generator states."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------------------------------------
# checkpoints, curves, progress
# ---------------------------------------------------------------------------------------------


class Checkpoint:
    """The resume checkpoint of one training run, at ``path`` under ``tag``.

    :meth:`load` returns the saved state only when it carries the same tag (else None, saying why);
    :meth:`save` writes a state dict after an epoch (main process only); :meth:`finish` deletes it once
    the final model is written."""

    def __init__(self, path: str | Path, tag: str, name: str, dist: Distributed = Distributed()):
        self.path, self.tag, self.name, self.dist = Path(path), tag, name, dist

    def _say(self, text: str) -> None:
        if self.dist.is_main:
            print(f"{self.name}: {text}", file=sys.stderr, flush=True)

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=False)  # our own file: RNG states
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint only costs a restart
            self._say(f"checkpoint {self.path} unreadable ({type(err).__name__}); training from scratch")
            return None
        if not isinstance(saved, dict) or saved.get("tag") != self.tag or "state" not in saved:
            self._say(f"checkpoint {self.path} was made with other params, code, data or weights; "
                      "training from scratch")
            return None
        self._say(f"resuming from {self.path} after epoch {saved['state']['epoch']}")
        return saved["state"]

    def save(self, state: dict) -> None:
        from pipeline.common.io import write_torch

        if self.dist.is_main:
            write_torch(self.path, {"tag": self.tag, "state": state})

    def finish(self) -> None:
        if self.dist.is_main:
            self.path.unlink(missing_ok=True)


OnEpoch = Callable[[int, dict, dict], None]  # on_epoch(epoch (1-based), metrics, training_state(...))


def training_state(epoch: int, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                   history: list[dict], **extra: Any) -> dict:
    """The one checkpoint state of every trainer, what a resume needs after ``epoch`` epochs: the weights,
    optimizer, schedule and scaler states, the per-epoch metrics so far and a trainer's ``extra`` entries (the
    order and the augmentations are functions of seed, epoch and index)."""
    return {"epoch": epoch, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "history": list(history), **extra}


def restore_training_state(state: dict, model: nn.Module, optimizer: Any, scheduler: Any,
                           scaler: Any) -> tuple[int, list[dict]]:
    """Load a :func:`training_state` back; returns (epochs done, history)."""
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]), list(state["history"])


def epoch_hook(checkpoint: Checkpoint, curves: Curves | None, dist: Distributed,
               describe: Callable[[int, dict], str]) -> OnEpoch:
    """A stage's ``on_epoch(epoch, metrics, state)``, which every trainer calls on every process after every
    epoch: on the main process save the resume state, log the curves and print ``describe(epoch, metrics)``."""
    def on_epoch(epoch: int, metrics: dict, state: dict) -> None:
        if dist.is_main:
            checkpoint.save(state)
            curves.log(metrics)
            print(describe(epoch, metrics), flush=True)
    return on_epoch


class Curves:
    """Per-epoch dvclive curves in ``live_dir`` (``plots/metrics/<prefix><key>.tsv``) of the ``keys`` of
    each epoch's metrics; ``history`` (a resumed run's earlier epochs) is replayed first."""

    def __init__(self, live_dir: str | Path, keys: Callable[[str], bool], history: Iterable[dict] = (),
                 prefix: str = ""):
        from dvclive import Live

        self.live = Live(dir=str(live_dir), resume=False, dvcyaml=False, save_dvc_exp=False, report=None)
        self.keys, self.prefix = keys, prefix
        for metrics in history:
            self.log(metrics)

    def log(self, metrics: dict) -> None:
        for key, value in metrics.items():
            if self.keys(key):
                self.live.log_metric(f"{self.prefix}{key}", float(value))
        self.live.next_step()

    def end(self) -> None:
        self.live.end()



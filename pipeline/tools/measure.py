"""What the benchmarks measure with: timed steps of a network on any device, peak memory, the device in words,
synthetic images and labels, and a plan of parts run under one time budget.

- :func:`best_times`: the best of a few calls of CPU work. :func:`timed_steps` times a training or inference step:
  warm-up calls, then as many timed calls as an allowance of seconds holds (CUDA work synchronised before every
  clock read), as a :class:`Rate`.
- :func:`reset_peak_memory` / :func:`peak_memory_mib`: the peak GPU memory of a part (``max_memory_allocated``
  since the last reset), or on the CPU the process's high-water mark (``ru_maxrss``: it never goes down, so a
  later part's figure includes the earlier ones').
- :func:`multi_hot`, :func:`image_label_pairs`: inputs that need no dataset and no download.
- :func:`run_plan`: parts (functions of an allowance that return a :class:`Rate`) run in order under one budget,
  each failure reported with its traceback while the next part runs, then a :func:`summary` table.
"""

from __future__ import annotations

import gc
import resource
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class Interrupted(BaseException):
    """A stop asked for from outside (SIGTERM): :func:`run_plan` marks the parts not run and lets it through."""


@dataclass
class Rate:
    """Throughput of timed steps: images per second, milliseconds per step, how many steps were timed."""
    images_per_second: float | None = None
    ms_per_step: float | None = None
    steps: int | None = None


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA is asynchronous; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[], Any], images_per_step: int, device: torch.device, allowance: float,
                warmup: int = 3, steps: int = 10, clock: Callable[[], float] = time.perf_counter) -> Rate:
    """``warmup`` untimed calls of ``step`` (fewer when half of ``allowance`` seconds is gone), then up to ``steps``
    timed calls: as many as the rest of the allowance holds at the last warm-up call's pace, at least one."""
    start = clock()
    pace = 0.0
    for i in range(max(1, warmup)):
        t = clock()
        step()
        sync(device)
        pace = clock() - t
        if i + 1 < warmup and clock() - start + pace > allowance / 2:
            break
    left = allowance - (clock() - start)
    n = max(1, min(steps, int(left / max(pace, 1e-6))))
    sync(device)
    t = clock()
    for _ in range(n):
        step()
    sync(device)
    elapsed = max(clock() - t, 1e-9)
    return Rate(n * images_per_step / elapsed, 1000 * elapsed / n, n)


def best_times(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, float]:
    """(best CPU seconds, best wall seconds) of ``repeat`` calls of ``fn`` after one warm-up call: the least
    disturbed call, for work that runs on the CPU (CPU seconds sum over threads)."""
    fn()
    cpu, wall = [], []
    for _ in range(max(1, repeat)):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return min(cpu), min(wall)


def check_finite(value: torch.Tensor, what: str) -> None:
    """A FloatingPointError naming ``what`` unless every element of ``value`` is finite."""
    if not bool(torch.isfinite(value.detach()).all()):
        raise FloatingPointError(f"{what} is not finite after the timed steps")


def reset_peak_memory(device: torch.device, release: bool = True) -> None:
    """Start a new peak (GPU); with ``release``, first free what the last part left (garbage, the allocator's cached
    blocks: the next allocations pay for fresh ones). The CPU's high-water mark cannot be reset."""
    if release:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if release:
            torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated since :func:`reset_peak_memory` (CUDA), else the process's peak resident set
    (monotone over the process's life), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def describe_device(device: torch.device) -> str:
    """torch and CUDA versions and the device: a GPU's name, memory, compute capability and bf16 support, or the
    CPU's thread count."""
    text = f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {device}"
    if device.type == "cuda":
        try:
            props = torch.cuda.get_device_properties(device)
            text += (f": {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}."
                     f"{props.minor}, bf16 {torch.cuda.is_bf16_supported()}")
        except Exception as err:  # noqa: BLE001 - a broken CUDA context must not hide the summary
            text += f" (properties unavailable: {type(err).__name__})"
    else:
        text += f" ({torch.get_num_threads()} threads)"
    return text


# ----------------------------------------------------------------------------------------------
# synthetic inputs


def multi_hot(batch: int, classes: int, rng: np.random.Generator) -> torch.Tensor:
    """(batch, classes) image-level targets, 1 to 3 classes per image."""
    targets = torch.zeros(batch, classes)
    for i in range(batch):
        targets[i, rng.choice(classes, size=min(classes, int(rng.integers(1, 4))), replace=False)] = 1
    return targets


def image_label_pairs(n: int, heights: tuple[int, int], widths: tuple[int, int], classes: int,
                      rng: np.random.Generator, ignore_band: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (image (H, W, 3) uint8, label (H, W) uint8) pairs, H and W drawn from the inclusive ranges: background
    0, one or two rectangles of classes 1..classes, each in a band of 255 (unsure / ignored) ``ignore_band`` wide;
    the image is noise brightened inside the rectangles."""
    out = []
    for _ in range(n):
        h, w = int(rng.integers(heights[0], heights[1] + 1)), int(rng.integers(widths[0], widths[1] + 1))
        label = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            y1, x1 = y0 + int(rng.integers(h // 4, h // 2 + 1)), x0 + int(rng.integers(w // 4, w // 2 + 1))
            label[max(0, y0 - ignore_band):y1 + ignore_band, max(0, x0 - ignore_band):x1 + ignore_band] = 255
            label[y0:y1, x0:x1] = int(rng.integers(1, classes + 1))
        image = (rng.random((h, w, 3)) * 80 + (label[..., None] % 32) * 5).astype(np.uint8)
        out.append((image, label))
    return out


# ----------------------------------------------------------------------------------------------
# a plan of parts under one budget


@dataclass
class Part:
    """One measured part: ``run(allowance_s)`` returns its :class:`Rate`; ``timed`` False for a part that is run
    for its outcome only (it gets the whole rest of the budget, after every timed part)."""
    title: str
    run: Callable[[float], Rate]
    timed: bool = True


@dataclass
class Row:
    """A part's line of the summary."""
    part: Part
    status: str = "not run"
    rate: Rate = field(default_factory=Rate)
    peak_mib: float | None = None
    wall_s: float | None = None

    @property
    def passed(self) -> bool:
        return self.status == "ok"


def run_part(row: Row, allowance: float, device: torch.device) -> None:
    """Run one part into ``row``: its rate, its peak memory (timed parts on a GPU), its wall time; an exception is
    printed (first line and the end of the traceback) and recorded as FAILED; a stop (:class:`Interrupted`,
    Ctrl-C) is recorded as INTERRUPTED and let through."""
    print(f"\n== {row.part.title} (allowance {allowance:.0f} s)", flush=True)
    start = time.perf_counter()
    try:
        reset_peak_memory(device)
        row.rate = row.part.run(allowance)
        row.status = "ok"
    except (Interrupted, KeyboardInterrupt):
        row.status = "INTERRUPTED"
        raise
    except Exception as err:  # noqa: BLE001 - a part's failure is reported and the next part runs
        row.status = f"FAILED ({type(err).__name__})"
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        print(f"FAILED {row.part.title}: {type(err).__name__}: {first}", flush=True)
        lines = traceback.format_exc().rstrip().splitlines()
        print("  " + "\n  ".join(lines[-16:]), flush=True)
    finally:
        row.wall_s = time.perf_counter() - start
        if device.type == "cuda" and row.part.timed:
            try:
                row.peak_mib = peak_memory_mib(device)
            except Exception:  # noqa: BLE001 - a broken CUDA context has no figure
                row.peak_mib = None
    if row.passed and row.rate.images_per_second is not None:
        peak = f", peak {row.peak_mib / 1024:.2f} GiB" if row.peak_mib is not None else ""
        print(f"  -> {row.rate.images_per_second:.1f} images/s, {row.rate.ms_per_step:.1f} ms/step over "
              f"{row.rate.steps} timed steps{peak}", flush=True)


def run_plan(rows: Sequence[Row], device: torch.device, budget_s: float, reserve_s: float = 0.0,
             min_untimed_s: float = 30.0) -> None:
    """Run the parts of ``rows`` in order within ``budget_s`` seconds, filling each row. Each timed part gets an
    equal share of what is left after ``reserve_s`` (kept for the untimed parts); an untimed part gets all that is
    left, and is skipped under ``min_untimed_s``. A part with no time left is SKIPPED. :class:`Interrupted` and
    Ctrl-C propagate after the parts not run are marked so; the caller holds the rows for its summary."""
    end = time.perf_counter() + budget_s
    try:
        for i, row in enumerate(rows):
            left = end - time.perf_counter()
            if row.part.timed:
                allowance, minimum = (left - reserve_s) / sum(1 for r in rows[i:] if r.part.timed), 0.0
            else:
                allowance, minimum = left, min_untimed_s
            if allowance <= minimum:
                row.status = "SKIPPED (out of time)"
                print(f"\n== {row.part.title}: skipped, {max(left, 0):.0f} s of the budget left", flush=True)
                continue
            run_part(row, allowance, device)
    except (Interrupted, KeyboardInterrupt):
        for row in rows:
            if row.status == "not run":
                row.status = "not run (stopped)"
        raise


def summary(rows: Sequence[Row]) -> str:
    """The plan's table: images/s, ms/step, timed steps, peak GiB, wall seconds and status of every part."""
    def num(v, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-".rjust(int(fmt.split(".")[0].rstrip("d")))

    lines = [f"{'part':24s} {'images/s':>9s} {'ms/step':>9s} {'steps':>5s} {'peak GiB':>9s} {'wall s':>7s}  status"]
    for r in rows:
        peak = r.peak_mib / 1024 if r.peak_mib is not None else None
        lines.append(f"{r.part.title:24s} {num(r.rate.images_per_second, '9.1f')} {num(r.rate.ms_per_step, '9.1f')} "
                     f"{num(r.rate.steps, '5d')} {num(peak, '9.2f')} {num(r.wall_s, '7.1f')}  {r.status}")
    return "\n".join(lines)

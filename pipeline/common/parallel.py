"""Fan-out of per-image work: in-process, a local process pool, or Prefect task runners (processes / Dask).

``map_items(fn, items, runtime, desc)`` applies a picklable ``fn`` to every item and returns the
results in input order, whatever the runner. ``fold_items(fn, items, runtime, start, desc)`` adds each
result into a running total instead (``start()`` makes an empty one with ``add(result)`` and
``merge(other)``), so a stage that sums per-image counts keeps memory that does not grow with the
number of images. The runners:

- ``serial``: a plain loop (tests, tiny sets, debugging).
- ``process`` (default): a local process pool; no orchestration overhead.
- ``prefect``: a Prefect flow whose tasks (chunks of items, retried on failure) run on Prefect's
  ``ProcessPoolTaskRunner``; task runs appear in the Prefect UI.
- ``dask``: the same Prefect flow on ``prefect_dask.DaskTaskRunner``: a local Dask cluster, or the
  scheduler at ``runtime.dask_address`` so COCO-sized post-processing scales past one machine
  (workers need this package importable and the data paths reachable).

Stages pass a ``functools.partial`` of a module-level function so the same call runs anywhere.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol, TypeVar

from pipeline.common.device import cpu_count
from pipeline.common.grouping import split_evenly
from pipeline.common.progress import progress
from pipeline.config import Runtime

T = TypeVar("T")
R = TypeVar("R")
A = TypeVar("A", bound="Total")

TASK_RETRIES = 2


def num_workers(runtime: Runtime) -> int:
    return runtime.workers or cpu_count()


def _worker_init() -> None:
    """Forked workers use one torch thread: an OpenMP pool inherited from a parent that already ran
    torch ops deadlocks on the first parallel op in the child, and the pool supplies parallelism."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def apply_chunk(fn: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [fn(x) for x in chunk]


class Total(Protocol):
    """A running total for :func:`fold_items`."""

    def add(self, result) -> None: ...

    def merge(self, other: Total) -> None: ...


def _local(runtime: Runtime, n_items: int) -> bool:
    return runtime.task_runner == "serial" or num_workers(runtime) <= 1 or n_items <= 1


def _stream(fn: Callable[[T], R], items: list[T], workers: int) -> Iterator[R]:
    """Results of ``fn`` over a process pool in input order, as they come: at most ``2 * workers`` chunks
    are in flight, so results waiting to be consumed stay bounded however many items there are."""
    chunks = split_evenly(items, max(workers * 8, len(items) // 64))
    pending: deque = deque()
    todo = iter(chunks)
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
        for chunk in todo:
            pending.append(pool.submit(apply_chunk, fn, chunk))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done = pending.popleft().result()
            chunk = next(todo, None)
            if chunk is not None:
                pending.append(pool.submit(apply_chunk, fn, chunk))
            yield from done


def map_items(fn: Callable[[T], R], items: Sequence[T], runtime: Runtime, desc: str = "items") -> list[R]:
    """Apply ``fn`` to each item, with a progress bar; results keep the input order."""
    items = list(items)
    if runtime.task_runner in ("prefect", "dask") and items:
        return _map_with_prefect(fn, items, runtime, desc)
    if _local(runtime, len(items)):
        return [fn(x) for x in progress(items, desc=desc)]
    return list(progress(_stream(fn, items, num_workers(runtime)), desc=desc, total=len(items)))


def fold_chunk(fn: Callable[[T], R], start: Callable[[], A], chunk: list[T]) -> A:
    total = start()
    for x in chunk:
        total.add(fn(x))
    return total


def fold_items(fn: Callable[[T], R], items: Sequence[T], runtime: Runtime, start: Callable[[], A],
               desc: str = "items") -> A:
    """``start()`` with ``add(fn(x))`` for every item: the same total as a serial loop, whatever the runner.

    Locally the results are added as they arrive (a bounded number in flight); under Prefect or Dask each
    task adds up its own chunk and the totals of a fixed number of chunks are merged. Either way memory
    holds a few totals, never a result per item. ``fn`` and ``start`` must be picklable."""
    items = list(items)
    total = start()
    if runtime.task_runner in ("prefect", "dask") and items:
        chunks = split_evenly(items, num_workers(runtime) * 4)
        for part in _map_with_prefect(functools.partial(fold_chunk, fn, start), chunks, runtime, desc):
            total.merge(part)
        return total
    local = _local(runtime, len(items))
    results = (fn(x) for x in items) if local else _stream(fn, items, num_workers(runtime))
    for r in progress(results, desc=desc, total=len(items)):
        total.add(r)
    return total


def prefect_env(logging_level: str | None = "WARNING") -> None:
    """Keep Prefect local (its home in ./.prefect, no analytics) unless the user configured a server
    (PREFECT_API_URL), and give its temporary server time to start on a loaded 2-core machine (the
    default 20 s is not enough). Call before importing prefect; values the user set win."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_HOME", os.path.abspath(".prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if logging_level:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", logging_level)


def _map_with_prefect(fn: Callable[[T], R], items: list[T], runtime: Runtime, desc: str) -> list[R]:
    prefect_env()
    from prefect import flow, task

    workers = num_workers(runtime)
    if runtime.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if runtime.dask_address:
            runner = DaskTaskRunner(address=runtime.dask_address)
        else:
            runner = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                                    "processes": True, "dashboard_address": None})
    else:
        from prefect.task_runners import ProcessPoolTaskRunner

        runner = ProcessPoolTaskRunner(max_workers=workers)

    chunk_task = task(apply_chunk, name=f"{desc}-chunk", retries=TASK_RETRIES, retry_delay_seconds=1)

    @flow(name=f"fanout-{desc}", task_runner=runner, validate_parameters=False)
    def fanout(chunks: list[list[T]]) -> list[list[R]]:
        futures = [chunk_task.submit(fn, c) for c in chunks]
        done = []
        for f in progress(futures, desc=desc):
            done.append(f.result())
        return done

    chunks = split_evenly(items, workers * 4)
    return [r for chunk in fanout(chunks) for r in chunk]

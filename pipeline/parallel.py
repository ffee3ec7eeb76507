"""Fan-out of per-image work: in-process, a local process pool, or Prefect task runners (processes / Dask).

``map_items(fn, items, runtime, desc)`` applies a picklable ``fn`` to every item and returns the
results in input order, whatever the runner:

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

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence, TypeVar

from pipeline.progress import progress

from pipeline.config import Runtime
from pipeline.device import cpu_count

T = TypeVar("T")
R = TypeVar("R")

TASK_RETRIES = 2


def num_workers(runtime: Runtime) -> int:
    return runtime.workers or cpu_count()


def chunked(items: Sequence[T], n_chunks: int) -> list[list[T]]:
    """Split into at most ``n_chunks`` contiguous chunks of near-equal size (order kept)."""
    n_chunks = max(1, min(n_chunks, len(items)))
    size, extra = divmod(len(items), n_chunks)
    out, start = [], 0
    for i in range(n_chunks):
        stop = start + size + (1 if i < extra else 0)
        out.append(list(items[start:stop]))
        start = stop
    return [c for c in out if c]


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


def map_items(fn: Callable[[T], R], items: Sequence[T], runtime: Runtime, desc: str = "items") -> list[R]:
    """Apply ``fn`` to each item, with a progress bar; results keep the input order."""
    items = list(items)
    workers = num_workers(runtime)
    if runtime.task_runner in ("prefect", "dask") and items:
        return _map_with_prefect(fn, items, runtime, desc)
    if runtime.task_runner == "serial" or workers <= 1 or len(items) <= 1:
        return [fn(x) for x in progress(items, desc=desc)]
    chunksize = max(1, len(items) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
        return list(progress(pool.map(fn, items, chunksize=chunksize), desc=desc, total=len(items)))


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

    chunks = chunked(items, workers * 4)
    return [r for chunk in fanout(chunks) for r in chunk]

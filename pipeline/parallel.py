"""Fan-out of per-image work: serial, local processes, or a Dask cluster through Prefect.

``map_items(fn, items, runtime, desc)`` applies a picklable ``fn`` to every item and returns the
results in order. Stages pass a ``functools.partial`` of a module-level function so the same call
runs in-process, in a process pool, or on Dask workers.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence, TypeVar

from tqdm.auto import tqdm

from pipeline.config import Runtime
from pipeline.device import cpu_count

T = TypeVar("T")
R = TypeVar("R")


def num_workers(runtime: Runtime) -> int:
    return runtime.workers or cpu_count()


def map_items(fn: Callable[[T], R], items: Sequence[T], runtime: Runtime, desc: str = "items") -> list[R]:
    """Apply ``fn`` to each item, with a progress bar; results keep the input order."""
    items = list(items)
    workers = num_workers(runtime)
    if runtime.task_runner == "dask":
        from pipeline.flow import map_with_prefect  # imported lazily: Prefect is slow to import

        return map_with_prefect(fn, items, runtime, desc)
    if runtime.task_runner == "serial" or workers <= 1 or len(items) <= 1:
        return [fn(x) for x in tqdm(items, desc=desc, leave=False)]
    chunksize = max(1, len(items) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(fn, items, chunksize=chunksize), total=len(items), desc=desc, leave=False))

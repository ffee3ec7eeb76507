"""Progress of long loops that reads well both on a terminal and in a log file or CI.

On a terminal: a tqdm bar. Otherwise (``dvc repro`` output captured to a file, CI, the Prefect flow's
log): a plain line every ``every`` seconds and one at the end, never carriage-return redraws that turn
a log into one line of hundreds of kilobytes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator


def progress(items: Iterable, desc: str = "", total: int | None = None, enabled: bool = True,
             every: float = 30.0) -> Iterator:
    """Iterate ``items`` with a tqdm bar on a terminal; in a log file or CI (stderr not a terminal) a
    plain line every ``every`` seconds and at the end instead of carriage-return redraws."""
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    start = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every:
            last = now
            print(f"{desc}: {done}/{total if total is not None else '?'} ({now - start:.0f} s)", file=sys.stderr,
                  flush=True)
    print(f"{desc}: {done} done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

"""Cutting a sequence into groups, the two ways the pipeline needs: groups of a fixed size (training batches,
evaluation chunks) and a fixed number of near-equal groups (work shared among processes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def groups_of(items: Sequence[T], size: int, drop_single: bool = False) -> list[list[T]]:
    """Consecutive groups of ``size`` items, the last one shorter where they do not divide. ``drop_single``
    drops a trailing group of one item when there are others (BatchNorm cannot train on a batch of one)."""
    if size < 1:
        raise ValueError(f"group size must be at least 1, got {size}")
    out = [list(items[i:i + size]) for i in range(0, len(items), size)]
    if drop_single and len(out) > 1 and len(out[-1]) == 1:
        out.pop()
    return out


def split_evenly(items: Sequence[T], n_groups: int) -> list[list[T]]:
    """At most ``n_groups`` contiguous groups of near-equal size, in order (none of them empty)."""
    n_groups = max(1, min(n_groups, len(items)))
    size, extra = divmod(len(items), n_groups)
    out, start = [], 0
    for i in range(n_groups):
        stop = start + size + (1 if i < extra else 0)
        out.append(list(items[start:stop]))
        start = stop
    return [c for c in out if c]

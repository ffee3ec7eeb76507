"""Per-image fan-out: every runner returns the serial results in order (Dask and Prefect for real)."""

import functools

import pytest

from pipeline.common.parallel import fold_items, map_items
from pipeline.config import defaults

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

def _affine(x: int, a: int, b: int) -> int:
    return a * x + b


class _Sums:
    """A total that remembers the order it saw (to catch a runner that drops or repeats an item)."""

    def __init__(self):
        self.sum, self.seen = 0, []

    def add(self, result: int) -> None:
        self.sum += result
        self.seen.append(result)

    def merge(self, other: "_Sums") -> None:
        self.sum += other.sum
        self.seen += other.seen


@pytest.mark.parametrize("runner", ["serial", "process"])
def test_local_runners_match_serial(runner):
    fn = functools.partial(_affine, a=3, b=1)
    items = list(range(25))
    assert map_items(fn, items, SCRATCH.runtime.replace(task_runner=runner, workers=2)) == [3 * x + 1 for x in items]


@pytest.mark.parametrize("runner", ["serial", "process"])
def test_fold_adds_every_result_once_in_order(runner):
    fn = functools.partial(_affine, a=3, b=1)
    items = list(range(203))  # more chunks than the pool keeps in flight
    total = fold_items(fn, items, SCRATCH.runtime.replace(task_runner=runner, workers=2), _Sums)
    assert total.seen == [3 * x + 1 for x in items]
    assert total.sum == 3 * sum(items) + len(items)
    assert fold_items(fn, [], SCRATCH.runtime.replace(task_runner=runner, workers=2), _Sums).seen == []


@pytest.mark.slow
def test_dask_runner_matches_serial(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    fn = functools.partial(_affine, a=2, b=-5)
    items = list(range(30))
    serial = map_items(fn, items, SCRATCH.runtime.replace(task_runner="serial"))
    dask = map_items(fn, items, SCRATCH.runtime.replace(task_runner="dask", workers=2))
    assert dask == serial
    folded = fold_items(fn, items, SCRATCH.runtime.replace(task_runner="dask", workers=2), _Sums)
    assert folded.seen == serial and folded.sum == sum(serial)

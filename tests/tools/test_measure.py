"""The benchmarks' measuring tools: timed steps on a hand-driven clock, a plan of parts under one budget, synthetic
inputs, and the GPU check run end to end on the CPU at its tiny sizes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.config import ROOT
from pipeline.tools.measure import (Interrupted, Part, Rate, Row, image_label_pairs, multi_hot, peak_memory_mib,
                                    run_plan, summary, timed_steps)

CPU = torch.device("cpu")


class Clock:
    """A clock that only moves when a step runs: each step takes ``pace`` seconds."""

    def __init__(self, pace: float):
        self.t, self.pace, self.calls = 0.0, pace, 0

    def __call__(self) -> float:
        return self.t

    def step(self) -> None:
        self.t += self.pace
        self.calls += 1


def test_timed_steps_fills_the_allowance_at_the_warm_up_pace():
    clock = Clock(2.0)
    rate = timed_steps(clock.step, 4, CPU, allowance=20.0, warmup=3, steps=10, clock=clock)
    # 3 warm-up steps use 6 s; the 14 s left hold 7 steps of 2 s: 7 * 4 images in 14 s
    assert (rate.steps, rate.images_per_second, rate.ms_per_step) == (7, 2.0, 2000.0)
    assert clock.calls == 10
    long = Clock(2.0)
    capped = timed_steps(long.step, 4, CPU, allowance=1000.0, warmup=1, steps=5, clock=long)
    assert capped.steps == 5 and long.calls == 6  # 998 s would hold 499 steps; ``steps`` caps them at 5


def test_timed_steps_cut_short_still_times_one_step():
    clock = Clock(2.0)
    rate = timed_steps(clock.step, 1, CPU, allowance=5.0, warmup=3, steps=10, clock=clock)
    # the first warm-up step (2 s) plus the next (2 s) would pass half the allowance: one warm-up, then
    # int(3 s left / 2 s) = 1 timed step
    assert rate.steps == 1 and clock.calls == 2 and rate.ms_per_step == 2000.0


def test_run_plan_shares_the_budget_reports_a_failure_and_runs_on(capsys):
    seen: list[tuple[str, float]] = []

    def ok(name: str):
        def run(allowance: float) -> Rate:
            seen.append((name, allowance))
            return Rate(10.0, 100.0, 3)
        return run

    def broken(allowance: float) -> Rate:
        raise ValueError("no such layer")

    rows = [Row(Part("1 first", ok("a"))), Row(Part("2 broken", broken)), Row(Part("3 third", ok("c"))),
            Row(Part("4 untimed", ok("d"), timed=False))]
    run_plan(rows, CPU, budget_s=600.0, reserve_s=300.0, min_untimed_s=30.0)
    assert [r.status for r in rows] == ["ok", "FAILED (ValueError)", "ok", "ok"]
    assert [name for name, _ in seen] == ["a", "c", "d"]
    assert 99.0 < seen[0][1] <= 100.0  # (600 - 300 reserved) / 3 timed parts
    assert 299.0 < seen[1][1] <= 300.0  # after the two quick parts: (600 - 300) / the 1 timed part left
    assert 590.0 < seen[2][1] <= 600.0  # the untimed part gets what is left, the reserve included
    out = capsys.readouterr().out
    assert "FAILED 2 broken: ValueError: no such layer" in out
    table = summary(rows)
    assert "1 first" in table and "10.0" in table and "100.0" in table and "FAILED (ValueError)" in table


def test_run_plan_skips_what_the_budget_cannot_hold():
    rows = [Row(Part("timed", lambda s: Rate())), Row(Part("untimed", lambda s: Rate(), timed=False))]
    run_plan(rows, CPU, budget_s=10.0, reserve_s=10.0, min_untimed_s=30.0)
    assert [r.status for r in rows] == ["SKIPPED (out of time)"] * 2  # the reserve takes it all; 10 s < 30 s


@pytest.mark.parametrize("stop", [Interrupted, KeyboardInterrupt])
def test_a_stopped_plan_marks_what_did_not_run(stop):
    def stopped(allowance: float) -> Rate:
        raise stop()

    rows = [Row(Part("1", lambda s: Rate(1.0, 1.0, 1))), Row(Part("2", stopped)), Row(Part("3", lambda s: Rate()))]
    with pytest.raises(stop):
        run_plan(rows, CPU, budget_s=60.0)
    assert [r.status for r in rows] == ["ok", "INTERRUPTED", "not run (stopped)"]


def test_synthetic_inputs_have_the_promised_shapes_and_values():
    rng = np.random.default_rng(0)
    targets = multi_hot(16, 20, rng)
    assert targets.shape == (16, 20) and set(targets.sum(1).tolist()) <= {1.0, 2.0, 3.0}
    pairs = image_label_pairs(5, (30, 40), (50, 60), 20, rng)
    for image, label in pairs:
        assert image.dtype == np.uint8 and image.shape[2] == 3 and image.shape[:2] == label.shape
        assert 30 <= label.shape[0] <= 40 and 50 <= label.shape[1] <= 60
        values = set(np.unique(label).tolist())
        assert values <= {*range(21), 255} and values - {0, 255}  # at least one object
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    high_water_mib = int(status["VmHWM"].split()[0]) / 1024  # the kernel's own figure, kB
    assert abs(peak_memory_mib(CPU) - high_water_mib) <= 0.05 * high_water_mib + 16


@pytest.mark.slow
def test_the_gpu_check_runs_on_the_cpu_at_its_tiny_sizes(tmp_path):
    # every network from random weights; offline hubs and empty caches make any fetch fail instead of downloading
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--device", "cpu", "--quick",
                           "--skip-dag", "--parts", "cls,cams,psa"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary_rows = proc.stdout.split("== summary", 1)[1]
    for title in ("1a train_cls, no AReAM", "1b train_cls + AReAM", "2  CAM export", "3  AffinityNet train"):
        line = next(ln for ln in summary_rows.splitlines() if ln.startswith(title))
        assert line.rstrip().endswith("ok") and float(line[len(title):].split()[0]) > 0  # images/s
    assert "gpu check: passed" in proc.stdout

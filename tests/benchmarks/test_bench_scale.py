"""The scale benchmark's arithmetic and tables, on hand-made records (the benchmark itself runs for hours)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from pipeline.config import ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(stage: str, wall: float, rss: float, out_bytes: int, status: str = "ran") -> dict:
    return {"stage": stage, "returncode": 0, "status": status, "wall_s": wall, "stage_s": wall - 1, "dvc_s": 1.0,
            "peak_rss_mb": rss, "tree_peak_mb": 2 * rss, "tree_peak_procs": 3, "out_bytes": out_bytes,
            "out_apparent_bytes": out_bytes, "out_files": 1, "cache_growth_bytes": out_bytes, "cache_growth_files": 1,
            "outs": [], "log": "x.log"}


def sizes() -> list[dict]:
    # 100, 200 and 400 images; "cams" costs 10 + 0.1 s per image, memory flat, outputs proportional
    return [{"fraction": f, "train": n - n // 10, "val": n // 10, "images": n, "classes": 20, "project": None,
             "stages": [record("cams", 10 + 0.1 * n, 500.0, 1000 * n), record("report", 2.0, 100.0, 10)],
             "cams": None, "project_bytes": 5000 * n} for f, n in ((0.25, 100), (0.5, 200), (1.0, 400))]


def test_growth_separates_fixed_costs_from_per_image_work(bench):
    g = bench.growth(sizes(), "cams")
    # wall 20 -> 50 s for 4x the images: (50 / 20) / 4; the slope 0.1 s per image in both halves
    assert g["image_ratio"] == 4.0 and g["time_ratio"] == pytest.approx(0.625)
    assert g["slope_ratio"] == pytest.approx(1.0) and g["seconds_per_1000_images"] == pytest.approx(100.0)
    assert g["rss_ratio"] == 1.0 and g["disk_ratio"] == pytest.approx(1.0)
    assert bench.growth(sizes()[:1], "cams") == {}  # one size: nothing to compare


def test_tables_of_a_saved_run(tmp_path):
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"presets": {"voc": sizes()}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--tables", str(saved)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    rows: dict[str, list[str]] = {}  # the first table's rows (the second one lists the same stages)
    for line in proc.stdout.splitlines():
        if line.startswith(("| cams", "| total")):
            rows.setdefault(line.split("|")[1].strip(), [c.strip() for c in line.split("|")[2:-1]])
    assert rows["cams"][:3] == ["20.0", "30.0", "50.0"]  # time s at each fraction
    assert rows["cams"][-5:] == ["0.62", "1.00", "100.0", "1.00", "1.00"]
    assert rows["total"][:3] == ["22.0", "32.0", "52.0"]
    assert list(tmp_path.iterdir()) == [saved]  # runs nothing, writes nothing

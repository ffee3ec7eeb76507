"""A command's figures from outside it: disk usage, a process tree's memory and peak resident set, stopping a tree,
and ``dvc repro`` streamed stage by stage (against a stand-in ``dvc`` that prints what DVC prints)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.tools.processes import descendants, disk_usage, measure_command, stream_repro, terminate_tree


def test_disk_usage_counts_apparent_bytes_and_files(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 3000)
    allocated, apparent, files = disk_usage(tmp_path)
    assert (apparent, files) == (4000, 2) and allocated >= 0
    assert disk_usage(tmp_path / "a")[1:] == (1000, 1)
    assert disk_usage(tmp_path / "missing") == (0, 0, 0)


def test_measure_command_sees_the_exit_code_and_the_peak_memory_of_a_child(tmp_path):
    code = "import sys; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); sys.exit(3)"
    run = measure_command([sys.executable, "-c", code], tmp_path, dict(os.environ), tmp_path / "log", interval=0.05)
    assert run.returncode == 3
    assert run.peak_rss_mb > 200  # the 200 MiB the child touched, as wait4 saw it
    assert run.tree_peak_mb > 0 and run.wall_s > 0


def test_terminate_tree_stops_a_process_and_its_children():
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60; wait"])
    deadline = time.monotonic() + 10
    while len(descendants(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = descendants(proc.pid)
    assert len(tree) == 3 and tree[0] == proc.pid
    terminate_tree(proc.pid, grace=5.0)
    time.sleep(0.2)
    assert not [p for p in tree[1:] if _running(p)]


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _fake_dvc(tmp_path: Path, body: str) -> str:
    script = tmp_path / "dvc"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_stream_repro_times_each_stage_from_dvcs_lines(tmp_path, capsys):
    dvc = _fake_dvc(tmp_path, "echo \"Running stage 'prepare':\"\nsleep 0.3\necho \"Running stage 'train':\"\n"
                    "echo 'done in 0.1 s'\nexit 0\n")
    run = stream_repro(dvc, tmp_path, dict(os.environ), tmp_path / "repro.log", limit=60)
    assert run.returncode == 0 and not run.timed_out
    assert [name for name, _ in run.stages] == ["prepare", "train"]
    assert run.stages[0][1] >= 0.2  # the 0.3 s sleep, give or take the pipe
    assert run.seconds >= 0.3 and run.stages[1][1] < 5  # the last stage lasts to the end
    assert "done in 0.1 s" in (tmp_path / "repro.log").read_text()
    assert "prepare" in capsys.readouterr().out


def test_stream_repro_stops_at_its_limit(tmp_path):
    dvc = _fake_dvc(tmp_path, "echo \"Running stage 'slow':\"\nsleep 60\n")
    start = time.monotonic()
    run = stream_repro(dvc, tmp_path, dict(os.environ), tmp_path / "repro.log", limit=1.0)
    assert run.timed_out and run.returncode != 0 and time.monotonic() - start < 20
    assert [name for name, _ in run.stages] == ["slow"]

"""A command's figures from outside it (Linux ``/proc``): its process tree, the tree's memory, its wall time and
peak resident set, its outputs' size on disk; stopping a tree; ``dvc repro`` streamed stage by stage.

- :func:`measure_command` runs a command to its end with its output in a log file and returns a
  :class:`CommandRun`: exit code, wall seconds, the peak resident set of the command or of a descendant it
  waited for (``wait4``) and the peak of the whole tree's memory (the sum of PSS, sampled by a
  :class:`TreeSampler`).
- :func:`stream_repro` runs ``dvc repro`` under a time limit, printing each stage as it starts, and returns a
  :class:`ReproRun` with every stage's share of the time.
- :func:`disk_usage` is ``du``'s allocated bytes, with the apparent bytes and the file count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MB = 1e6


def _children() -> dict[int, list[int]]:
    """{parent pid: child pids} of every process now running."""
    tree: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(d))
    return tree


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents before children."""
    tree, todo, pids = _children(), [pid], []
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(tree.get(p, []))
    return pids


def memory_kb(pid: int) -> int:
    """PSS of one process in kB (its share of pages it shares), else its RSS; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return 0


def terminate_tree(pid: int, grace: float = 10.0) -> None:
    """SIGTERM to a child process and its descendants (children before parents), SIGKILL to what is left after
    ``grace`` seconds; reaps the child."""
    for p in reversed(descendants(pid)):
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.2)
    for p in reversed(descendants(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.waitpid(pid, 0)


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the process group ``proc`` leads (started with ``start_new_session``): SIGTERM, SIGKILL after
    ``grace`` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class TreeSampler(threading.Thread):
    """Samples the memory of a process and all its descendants (sum of PSS) every ``interval`` seconds until
    stopped; keeps the peak (kB) and the most processes seen at once."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_kb, self.peak_procs = pid, interval, 0, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = descendants(self.pid)
            self.peak_kb = max(self.peak_kb, sum(memory_kb(p) for p in pids))
            self.peak_procs = max(self.peak_procs, len(pids))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def disk_usage(path: Path) -> tuple[int, int, int]:
    """(allocated bytes, apparent bytes, files) under ``path`` (a file or a folder; symlinks not followed)."""
    if not path.exists() and not path.is_symlink():
        return 0, 0, 0
    if not path.is_dir() or path.is_symlink():
        st = path.lstat()
        return st.st_blocks * 512, st.st_size, 1
    blocks = size = files = 0
    for folder, _, names in os.walk(path):
        for n in names:
            try:
                st = os.lstat(os.path.join(folder, n))
            except FileNotFoundError:
                continue
            blocks, size, files = blocks + st.st_blocks * 512, size + st.st_size, files + 1
    return blocks, size, files


@dataclass
class CommandRun:
    """What :func:`measure_command` saw: exit code, wall seconds, the peak resident set (MB) of the command's process
    or of any descendant it waited for (``wait4``; not of orphaned ones), the peak of the tree's summed PSS (MB)
    and the most processes at once."""
    returncode: int
    wall_s: float
    peak_rss_mb: float
    tree_peak_mb: float
    tree_peak_procs: int


def measure_command(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, interval: float = 1.0) -> CommandRun:
    """Run ``cmd`` to its end, stdout and stderr into ``log``, sampling its tree's memory every ``interval`` s. An
    exception here (Ctrl-C, SIGTERM turned into one) stops the whole tree before it propagates."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        try:
            # wait4's usage of the child: its own peak RSS or that of any descendant it waited for, whichever is larger
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            sampler.stop()
            terminate_tree(proc.pid)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        sampler.stop()
    return CommandRun(proc.returncode, wall, usage.ru_maxrss * 1024 / MB, sampler.peak_kb * 1024 / MB,
                      sampler.peak_procs)


@dataclass
class ReproRun:
    """What :func:`stream_repro` saw: exit code, whether the limit stopped it, (stage, seconds from its start to the
    next stage's) for every stage that started, and the total seconds."""
    returncode: int
    timed_out: bool
    stages: list[tuple[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def stream_repro(dvc: str, repo: Path, env: dict[str, str], log_path: Path, limit: float) -> ReproRun:
    """Run ``dvc repro`` in ``repo`` with its output in ``log_path``, printing each stage as it starts; stopped
    (with every stage process) after ``limit`` seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen([dvc, "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                            start_new_session=True)
    expired = threading.Event()

    def on_limit() -> None:
        expired.set()
        stop_group(proc)

    timer = threading.Timer(limit, on_limit)
    timer.daemon = True
    timer.start()
    starts: list[tuple[str, float]] = []
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            for line in proc.stdout:
                log.write(line)
                if line.startswith("Running stage"):
                    name = line.split("'")[1] if line.count("'") >= 2 else line.strip()
                    now = time.perf_counter() - start
                    starts.append((name, now))
                    print(f"    [{now:6.1f} s] {name}", flush=True)
        rc = proc.wait()
    finally:
        timer.cancel()
        stop_group(proc)
    total = time.perf_counter() - start
    ends = [t for _, t in starts[1:]] + [total]
    stages = [(name, end - t) for (name, t), end in zip(starts, ends, strict=True)]
    return ReproRun(rc, expired.is_set(), stages, total)

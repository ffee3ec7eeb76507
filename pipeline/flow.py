"""The DVC pipeline as a Prefect flow, for scheduled, retried or remote runs.

DVC owns the DAG, the parameters, the cache and the experiments; Prefect executes. The flow reads
the stage order from DVC itself (``Repo().index.graph``; never a second copy of the wiring) and runs
each stage as a Prefect task (``dvc repro --single-item STAGE``: skipped when up to date), with
retries and the stage's output streamed into that task's log.

Usage::

    python -m pipeline.flow                         # every stage, in dvc.yaml's dependency order
    python -m pipeline.flow --stages prepare train_cls
    python -m pipeline.flow --grid aream.lam=0.1,0.2,0.3 --grid aream.enabled=true,false
                                                    # queue a grid with `dvc exp run --queue`, run it
                                                    # with `dvc queue start`, wait, show `dvc exp show`

Offline, Prefect starts a temporary local server (about 6-8 s). To record runs on a real server
and see them in its UI: ``prefect server start`` (UI at http://127.0.0.1:4200), then
``export PREFECT_API_URL=http://127.0.0.1:4200/api`` before running the flow.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pipeline.parallel import prefect_env  # noqa: E402

prefect_env(logging_level=None)  # the flow logs every stage at INFO

from prefect import flow, get_run_logger, task  # noqa: E402

STAGE_RETRIES = 1


def stage_order(repo_root: str | Path = ".") -> list[str]:
    """Names of the DVC stages in an order where every stage follows the stages it depends on."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = list(nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: s.name))
        return [s.name for s in order]


def _dvc() -> list[str]:
    """The dvc executable of this environment (the one next to this Python), else from PATH."""
    exe = Path(sys.executable).with_name("dvc")
    return [str(exe)] if exe.exists() else ["dvc"]


def _stream(cmd: list[str], cwd: str | Path, logger) -> None:
    logger.info("$ %s", shlex.join(cmd))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            logger.info(line)
    if proc.wait() != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {proc.returncode}")


@task(name="dvc-stage", retries=STAGE_RETRIES, retry_delay_seconds=5, task_run_name="{stage}")
def run_stage(stage: str, repo_root: str) -> str:
    """Bring one stage up to date (its upstream stages already are)."""
    logger = get_run_logger()
    start = time.perf_counter()
    _stream(_dvc() + ["repro", "--single-item", stage], repo_root, logger)
    logger.info("stage %s up to date in %.1f s", stage, time.perf_counter() - start)
    return stage


@flow(name="aream-wsss")
def pipeline_flow(repo_root: str = ".", stages: list[str] | None = None) -> list[str]:
    """Run the DVC stages in dependency order as Prefect tasks; stops at the first failing stage."""
    order = stage_order(repo_root)
    if stages:
        unknown = sorted(set(stages) - set(order))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {order}")
        order = [s for s in order if s in stages]
    done = []
    upstream = None
    for name in order:
        # one after another: each stage reads what the previous ones wrote
        upstream = run_stage.submit(name, repo_root, wait_for=[upstream] if upstream else None)
        done.append(upstream.result())
    return done


@task(name="dvc-exp-grid")
def run_grid(grid: list[str], repo_root: str, jobs: int = 1, poll_s: float = 5.0) -> str:
    """Queue a grid of experiments (``-S key=v1,v2`` per entry), run the queue, return `dvc exp show`."""
    logger = get_run_logger()
    cmd = _dvc() + ["exp", "run", "--queue"]
    for g in grid:
        cmd += ["-S", g]
    _stream(cmd, repo_root, logger)
    _stream(_dvc() + ["queue", "start", "--jobs", str(jobs)], repo_root, logger)
    while True:
        status = subprocess.run(_dvc() + ["queue", "status"], cwd=repo_root, capture_output=True, text=True)
        if status.returncode != 0:
            raise RuntimeError(f"dvc queue status failed ({status.returncode}): {status.stderr.strip()[-2000:]}")
        pending = [ln for ln in status.stdout.splitlines() if "Queued" in ln or "Running" in ln]
        if not pending:
            break
        time.sleep(poll_s)
    failed = [ln for ln in status.stdout.splitlines() if "Failed" in ln]
    if failed:
        logger.warning("failed experiments:\n%s", "\n".join(failed))
    show = subprocess.run(_dvc() + ["exp", "show", "--no-pager", "--md"], cwd=repo_root, capture_output=True,
                          text=True)
    logger.info("\n%s", show.stdout)
    return show.stdout


@flow(name="aream-wsss-grid")
def grid_flow(grid: list[str], repo_root: str = ".", jobs: int = 1) -> str:
    return run_grid(grid, repo_root, jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.flow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=".", help="DVC project root (default: current directory)")
    parser.add_argument("--stages", nargs="*", help="only these stages (default: all)")
    parser.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                        help="queue and run an experiment grid instead of the plain DAG (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel queue workers for --grid")
    args = parser.parse_args(argv)
    repo = str(Path(args.repo).resolve())
    if args.grid:
        print(grid_flow(args.grid, repo, args.jobs))
    else:
        print("stages run:", " -> ".join(pipeline_flow(repo, args.stages)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

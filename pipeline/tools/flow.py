"""The DVC pipeline as a Prefect flow, for scheduled, retried or remote runs.

DVC owns the DAG, the parameters, the cache and the experiments; Prefect executes. The flow reads
the stage order from DVC itself (``Repo().index.graph``; never a second copy of the wiring) and runs
each stage as a Prefect task (``dvc repro --single-item STAGE``), with the stage's output streamed
into that task's log. Each task records what DVC did with its stage (ran it, restored its outputs
from the run cache, or found it up to date) and the flow ends with a summary of that, plus the path
of ``reports/report.md``. A stage that fails is retried once, except when it exits with 2: the code
of a stage that rejected ``params.yaml`` or the data, which only a fix can cure.

Usage::

    python -m pipeline.tools.flow                         # every stage, in dvc.yaml's dependency order
    python -m pipeline.tools.flow --stages prepare train_cls
    python -m pipeline.tools.flow --grid aream.lam=0.1,0.2,0.3 --grid aream.enabled=true,false
                                                    # queue a grid with `dvc exp run --queue`, run it
                                                    # with `dvc queue start`, wait, show `dvc exp show`

Run history: with no ``PREFECT_API_URL`` set, every run starts a temporary local Prefect server
(about 6-8 s) that stops when the run ends, so there is no UI to browse; the runs are still written
to the project's Prefect database, ``.prefect/prefect.db`` (``PREFECT_HOME`` is ``.prefect`` in the
current folder unless set). To keep a server and its UI up, start one on that database in another
terminal and point the flow at it::

    PREFECT_HOME=$PWD/.prefect prefect server start     # UI at http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api    # in the shell that runs the flow

``PREFECT_API_URL`` and ``PREFECT_HOME`` set in the environment win over these defaults. ``prefect
config set`` saves to the profile under the shell's Prefect home (``~/.prefect``), which the flow does
not read; ``PREFECT_HOME=$PWD/.prefect prefect config set PREFECT_API_URL=...`` saves the URL for
every later run of this project (each then needs the server up).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from pipeline.config import plain_doc

    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.flow", description=plain_doc(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=".", help="DVC project root (default: current directory)")
    parser.add_argument("--stages", nargs="*", help="only these stages (default: all)")
    parser.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                        help="queue and run an experiment grid instead of the plain DAG (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel queue workers for --grid")
    return parser


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad arguments end here, before Prefect sets up its home (.prefect/)

from pipeline.common.parallel import prefect_env  # noqa: E402

prefect_env(logging_level=None)  # the flow logs every stage at INFO

from prefect import flow, get_run_logger, task  # noqa: E402

STAGE_RETRIES = 1
STAGE_RETRY_DELAY_S = 5
INVALID_INPUT_EXIT = 2  # stages/_common.py stage_main: params or data rejected, one `error: ...` line
REPORT = Path("reports") / "report.md"

RAN, RESTORED, UP_TO_DATE = "ran", "restored", "up to date"


@dataclass(frozen=True)
class StageRun:
    """What one task did: ``status`` is RAN, RESTORED (outputs checked out from DVC's run cache) or UP_TO_DATE."""

    stage: str
    status: str
    seconds: float


class StageFailed(RuntimeError):
    """A stage's command failed: its name, its exit code and the last lines of its output."""

    def __init__(self, stage: str, exit_code: int, tail: tuple[str, ...] = ()):
        super().__init__(stage, exit_code, tuple(tail))
        self.stage, self.exit_code, self.tail = stage, exit_code, tuple(tail)

    def __str__(self) -> str:
        head = f"stage {self.stage} exited with {self.exit_code}"
        return f"{head}: {' | '.join(self.tail)}" if self.tail else head

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class StageInputError(StageFailed):
    """A stage rejected its params or data (exit code 2): running it again fails the same way."""


def _retry_condition(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: retry a crash, not a stage that rejected its input."""
    return not isinstance(state.data, StageInputError)


class _ShortStageErrors(logging.Filter):
    """Prefect logs a failed task and flow with a traceback; for a stage that failed, the traceback shows
    only Prefect's and this module's frames, while the message already names the stage, its exit code and
    the end of its output (the whole output is in the task's log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], StageFailed):
            record.exc_info = record.exc_text = None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_ShortStageErrors())


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


def _stream(cmd: list[str], cwd: str | Path, logger) -> tuple[int, list[str]]:
    """Run ``cmd``, log each line of its output (stdout and stderr); its exit code and the lines."""
    logger.info("$ %s", shlex.join(cmd))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            logger.info(line)
            lines.append(line)
    return proc.wait(), lines


def _check(cmd: list[str], returncode: int, lines: list[str]) -> None:
    if returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {returncode}: {' | '.join(output_tail(lines))}")


def repro_outcome(stage: str, lines: list[str]) -> str:
    """What ``dvc repro --single-item STAGE`` did with the stage, from the line DVC logs once it has decided:
    "Running stage 'x':", "Stage 'x' is cached - skipping run, checking out outputs" or
    "Stage 'x' didn't change, skipping". Without any of them, RAN: the command succeeded and DVC did not
    say that it skipped the stage."""
    name = re.escape(stage)
    outcomes = ((re.compile(rf"Running stage '{name}':"), RAN),
                (re.compile(rf"Stage '{name}' is cached - skipping run"), RESTORED),
                (re.compile(rf"(Stage )?'{name}' didn't change, skipping"), UP_TO_DATE))
    for line in lines:
        for pattern, outcome in outcomes:
            if pattern.match(line):
                return outcome
    return RAN


def stage_exit_code(returncode: int, lines: list[str]) -> int:
    """The exit code of the stage's command, from DVC's last line ("... failed to run: CMD, exited with N");
    DVC's own exit code (255) when the command did not run or DVC failed by itself."""
    for line in reversed(lines):
        m = re.search(r", exited with (-?\d+)$", line)
        if m:
            return int(m.group(1))
    return returncode


def output_tail(lines: list[str], n: int = 3, width: int = 300) -> tuple[str, ...]:
    """The last ``n`` lines of a stage's output, without DVC's framing lines and nothing before the last
    ``error: ...`` line (the one line a stage prints when it rejects its params or data)."""
    own = [ln for ln in lines if not ln.startswith(("Running stage '", "> ", "ERROR: failed to reproduce"))]
    start = max(len(own) - n, 0)
    errors = [i for i, ln in enumerate(own) if ln.startswith("error:")]
    if errors and errors[-1] > start:
        start = errors[-1]
    return tuple(ln.strip()[:width] for ln in own[start:])


@task(name="dvc-stage", retries=STAGE_RETRIES, retry_delay_seconds=STAGE_RETRY_DELAY_S,
      retry_condition_fn=_retry_condition, task_run_name="{stage}")
def run_stage(stage: str, repo_root: str) -> StageRun:
    """Bring one stage up to date (its upstream stages already are) and say how."""
    logger = get_run_logger()
    start = time.perf_counter()
    returncode, lines = _stream(_dvc() + ["repro", "--single-item", stage], repo_root, logger)
    seconds = time.perf_counter() - start
    if returncode != 0:
        exit_code = stage_exit_code(returncode, lines)
        error = StageInputError if exit_code == INVALID_INPUT_EXIT else StageFailed
        raise error(stage, exit_code, output_tail(lines))
    result = StageRun(stage, repro_outcome(stage, lines), seconds)
    logger.info("stage %s: %s in %.1f s", stage, result.status, seconds)
    return result


def summary(runs: list[StageRun], repo_root: str | Path = ".") -> str:
    """Which stages ran, which were restored from the run cache and which were up to date, one line each
    (empty groups left out, except "ran"), then the report's absolute path when it exists."""
    lines = []
    for status, label in ((RAN, "ran"), (RESTORED, "restored from cache"), (UP_TO_DATE, "up to date")):
        names = [r.stage for r in runs if r.status == status]
        if names or status == RAN:
            lines.append(f"{label}: {', '.join(names) or 'nothing'} ({len(names)})")
    report = Path(repo_root).resolve() / REPORT
    if report.is_file():
        lines.append(f"report: {report}")
    return "\n".join(lines)


@flow(name="aream-wsss")
def pipeline_flow(repo_root: str = ".", stages: list[str] | None = None) -> list[StageRun]:
    """Run the DVC stages in dependency order as Prefect tasks; stops at the first failing stage."""
    order = stage_order(repo_root)
    if stages:
        unknown = sorted(set(stages) - set(order))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {order}")
        order = [s for s in order if s in stages]
    runs = []
    upstream = None
    for name in order:
        # one after another: each stage reads what the previous ones wrote
        upstream = run_stage.submit(name, repo_root, wait_for=[upstream] if upstream else None)
        runs.append(upstream.result())
    get_run_logger().info("\n%s", summary(runs, repo_root))
    return runs


@task(name="dvc-exp-grid")
def run_grid(grid: list[str], repo_root: str, jobs: int = 1, poll_s: float = 5.0) -> str:
    """Queue a grid of experiments (``-S key=v1,v2`` per entry), run the queue, return `dvc exp show`."""
    logger = get_run_logger()
    cmd = _dvc() + ["exp", "run", "--queue"]
    for g in grid:
        cmd += ["-S", g]
    _check(cmd, *_stream(cmd, repo_root, logger))
    cmd = _dvc() + ["queue", "start", "--jobs", str(jobs)]
    _check(cmd, *_stream(cmd, repo_root, logger))
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
    args = _parser().parse_args(argv)
    repo = str(Path(args.repo).resolve())
    try:
        if args.grid:
            print(grid_flow(args.grid, repo, args.jobs))
        else:
            print(summary(pipeline_flow(repo, args.stages), repo))
    except StageFailed as err:
        invalid = isinstance(err, StageInputError)
        hint = " (not retried: fix params.yaml or the data, then rerun)" if invalid else ""
        print(f"error: {err}{hint}", file=sys.stderr)
        return INVALID_INPUT_EXIT if invalid else 1
    except Exception as err:  # noqa: BLE001 - any failure: one line here, the flow's log holds the details
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"error: flow failed: {type(err).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

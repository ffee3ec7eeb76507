"""The Prefect flow runs DVC stages in DVC's dependency order, for real, on a scratch DVC project; it reports
which stages ran, were restored from the run cache or were up to date, and retries a crash but not a stage
that rejected its input (exit code 2)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.config import ROOT

DVC = str(Path(sys.executable).with_name("dvc"))


def _init(repo: Path, dvc_yaml: str) -> Path:
    repo.mkdir()
    (repo / "dvc.yaml").write_text(textwrap.dedent(dvc_yaml))
    for cmd in (["git", "init", "-q"], [DVC, "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True)
    return repo


def _scratch_repo(tmp_path: Path) -> Path:
    # written so that file order differs from dependency order: c <- b <- a
    return _init(tmp_path / "repo", """
        stages:
          c_last:
            cmd: python -c "open('c.txt','w').write(open('b.txt').read() + 'c')"
            deps: [b.txt]
            outs: [c.txt]
          b_middle:
            cmd: python -c "open('b.txt','w').write(open('a.txt').read() + 'b')"
            deps: [a.txt]
            outs: [b.txt]
          a_first:
            cmd: python -c "open('a.txt','w').write('a')"
            outs: [a.txt]
    """)


def _ab_repo(tmp_path: Path) -> Path:
    """Stages a -> b whose commands append their name to runs.log, and two stages that fail: one rejecting its
    input like stages/_common.py's stage_main (one `error: ...` line, exit code 2), one crashing (exit code 1)."""
    repo = _init(tmp_path / "ab", """
        stages:
          b:
            cmd: echo b >> runs.log && cat a.txt a.txt > b.txt
            deps: [a.txt]
            outs: [b.txt]
          a:
            cmd: echo a >> runs.log && cat in.txt > a.txt
            deps: [in.txt]
            outs: [a.txt]
          invalid:
            cmd: >-
              echo invalid >> runs.log; echo checking; echo "error: params.yaml: unknown key 'trian.lr'" >&2; exit 2
          crash:
            cmd: echo crash >> runs.log; echo boom >&2; exit 1
    """)
    (repo / "in.txt").write_text("1\n")
    return repo


def _runs(repo: Path) -> list[str]:
    log = repo / "runs.log"
    return log.read_text().split() if log.exists() else []


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    """Flow runs (and the temporary Prefect server) of this module keep their database in a scratch folder."""
    from prefect.settings import PREFECT_HOME, temporary_settings

    from pipeline.tools import flow  # noqa: F401  (prefect_env before prefect's settings load)

    with temporary_settings(updates={PREFECT_HOME: str(tmp_path_factory.mktemp("prefect"))}):
        yield


def test_stage_order_follows_dependencies(tmp_path):
    from pipeline.tools.flow import stage_order

    repo = _scratch_repo(tmp_path)
    assert stage_order(repo) == ["a_first", "b_middle", "c_last"]


def test_stage_order_of_this_project_validates_first_and_ends_with_report():
    from pipeline.tools.flow import stage_order

    order = stage_order(ROOT)
    assert order[:2] == ["generate_toy", "check"] and order[-1] == "report"
    assert order.index("pretrain") < order.index("train_cls") and order.index("prepare") < order.index("train_cls")
    assert order.index("train_cls") < order.index("export_cams") < order.index("pseudo_labels")
    assert order.index("pseudo_labels") < order.index("train_seg") < order.index("evaluate")


def test_repro_outcome_and_exit_code_come_from_dvc_output():
    from pipeline.tools.flow import RAN, RESTORED, UP_TO_DATE, output_tail, repro_outcome, stage_exit_code

    assert repro_outcome("a", ["Running stage 'a':", "> cat in.txt > a.txt", "Updating lock file 'dvc.lock'"]) == RAN
    assert repro_outcome("a", ["Stage 'a' is cached - skipping run, checking out outputs"]) == RESTORED
    assert repro_outcome("a", ["Stage 'a' didn't change, skipping", "Data and pipelines are up to date."]) == UP_TO_DATE
    assert repro_outcome("a", ["Stage 'ab' didn't change, skipping"]) == RAN  # another stage's line
    failed = ["Running stage 'check':", "> python -m stages.check", "reading params.yaml",
              "error: params.yaml: unknown key 'trian.lr'",
              "ERROR: failed to reproduce 'check': failed to run: python -m stages.check, exited with 2"]
    assert stage_exit_code(255, failed) == 2
    assert stage_exit_code(255, ["ERROR: Unable to acquire lock"]) == 255  # DVC itself failed
    assert output_tail(failed) == ("error: params.yaml: unknown key 'trian.lr'",)
    crash = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "    1/0",
             "ZeroDivisionError: division by zero"]
    assert output_tail(crash) == ('File "x.py", line 1, in <module>', "1/0", "ZeroDivisionError: division by zero")


def test_summary_groups_stages_and_points_at_the_report(tmp_path):
    from pipeline.tools.flow import RAN, RESTORED, UP_TO_DATE, StageRun, summary

    runs = [StageRun("prepare", UP_TO_DATE, 0.4), StageRun("train_cls", RAN, 80.0),
            StageRun("export_cams", RAN, 9.5), StageRun("evaluate", RESTORED, 0.6), StageRun("report", UP_TO_DATE, 0.3)]
    assert summary(runs, tmp_path) == ("ran: train_cls, export_cams (2)\nrestored from cache: evaluate (1)\n"
                                       "up to date: prepare, report (2)")
    assert summary([StageRun("prepare", UP_TO_DATE, 0.4)], tmp_path) == "ran: nothing (0)\nup to date: prepare (1)"
    report = tmp_path / "reports" / "report.md"
    report.parent.mkdir()
    report.write_text("# report\n")
    assert summary(runs, tmp_path).splitlines()[-1] == f"report: {report.resolve()}"


@pytest.mark.slow
def test_real_flow_run(tmp_path, prefect_home):
    from pipeline.tools.flow import RAN, UP_TO_DATE, pipeline_flow

    repo = _scratch_repo(tmp_path)
    done = pipeline_flow(str(repo))
    assert [(r.stage, r.status) for r in done] == [("a_first", RAN), ("b_middle", RAN), ("c_last", RAN)]
    assert (repo / "c.txt").read_text() == "abc"
    mtime = (repo / "c.txt").stat().st_mtime_ns
    again = pipeline_flow(str(repo), stages=["c_last"])  # up to date: nothing reruns
    assert [(r.stage, r.status) for r in again] == [("c_last", UP_TO_DATE)]
    assert (repo / "c.txt").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_flow_summary_names_the_stages_that_ran(tmp_path, prefect_home):
    from pipeline.tools.flow import pipeline_flow, summary

    repo = _ab_repo(tmp_path)

    def run() -> str:
        return summary(pipeline_flow(str(repo), stages=["a", "b"]), repo)

    assert run() == "ran: a, b (2)"
    assert run() == "ran: nothing (0)\nup to date: a, b (2)"
    stat = (repo / "in.txt").stat()
    os.utime(repo / "in.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same content
    assert run() == "ran: nothing (0)\nup to date: a, b (2)"
    (repo / "in.txt").write_text("2\n")
    assert run() == "ran: a, b (2)"
    (repo / "in.txt").write_text("1\n")  # back to the first inputs: DVC's run cache has both stages' outputs
    assert run() == "ran: nothing (0)\nrestored from cache: a, b (2)"
    assert (repo / "b.txt").read_text() == "1\n1\n"
    assert _runs(repo) == ["a", "b", "a", "b"]  # commands ran only where the summary says so


@pytest.mark.slow
def test_invalid_input_is_not_retried_and_a_crash_is_retried_once(tmp_path, prefect_home, monkeypatch, capsys):
    import pipeline.tools.flow as pf

    monkeypatch.setattr(pf, "run_stage", pf.run_stage.with_options(retry_delay_seconds=0))
    repo = _ab_repo(tmp_path)

    assert pf.main(["--repo", str(repo), "--stages", "invalid"]) == 2
    assert _runs(repo) == ["invalid"]  # no retry
    assert ("error: stage invalid exited with 2: error: params.yaml: unknown key 'trian.lr' (not retried: fix "
            "params.yaml or the data, then rerun)") in capsys.readouterr().err.splitlines()

    with pytest.raises(pf.StageFailed) as failed:
        pf.pipeline_flow(str(repo), stages=["crash"])
    assert not isinstance(failed.value, pf.StageInputError)
    assert (failed.value.stage, failed.value.exit_code, failed.value.tail) == ("crash", 1, ("boom",))
    assert _runs(repo) == ["invalid", "crash", "crash"]  # one retry

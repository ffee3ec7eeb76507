"""The Prefect flow runs DVC stages in DVC's dependency order, for real, on a scratch DVC project."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DVC = str(Path(sys.executable).with_name("dvc"))


def _scratch_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    # written so that file order differs from dependency order: c <- b <- a
    (repo / "dvc.yaml").write_text(textwrap.dedent("""
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
    """))
    for cmd in (["git", "init", "-q"], [DVC, "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True)
    return repo


def test_stage_order_follows_dependencies(tmp_path):
    from pipeline.flow import stage_order

    repo = _scratch_repo(tmp_path)
    assert stage_order(repo) == ["a_first", "b_middle", "c_last"]


def test_stage_order_of_this_project_validates_first_and_ends_with_report():
    from pipeline.flow import stage_order

    order = stage_order(ROOT)
    assert order[:2] == ["generate_toy", "check"] and order[-1] == "report"
    assert order.index("pretrain") < order.index("train_cls") and order.index("prepare") < order.index("train_cls")
    assert order.index("train_cls") < order.index("export_cams") < order.index("pseudo_labels")
    assert order.index("pseudo_labels") < order.index("train_seg") < order.index("evaluate")


@pytest.mark.slow
def test_real_flow_run(tmp_path, monkeypatch):
    from pipeline.flow import pipeline_flow

    repo = _scratch_repo(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    done = pipeline_flow(str(repo))
    assert done == ["a_first", "b_middle", "c_last"]
    assert (repo / "c.txt").read_text() == "abc"
    mtime = (repo / "c.txt").stat().st_mtime_ns
    pipeline_flow(str(repo), stages=["c_last"])  # up to date: nothing reruns
    assert (repo / "c.txt").stat().st_mtime_ns == mtime

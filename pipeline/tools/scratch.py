"""A throwaway copy of this project as a git repository of its own, with a profile applied: where the smoke tests,
the scale benchmark and the GPU check run the DAG without touching the working tree.

:func:`scratch_project` copies the working tree (no git history, virtualenv, outputs, DVC cache or local weights
files: ``weights/`` keeps its keyword markers), runs ``git init``, applies a profile and optional overrides to
``params.yaml``, validates them and commits. :func:`scratch_env` is the environment its commands run in: the
project's interpreter first on PATH, offline hub, Prefect's home inside the scratch folder, a git identity.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.config import ROOT, deep_merge
from pipeline.vocabulary import WEIGHT_KEYWORDS

# top-level entries of the working tree a scratch copy leaves out (outputs, environments, caches); weights/ is
# made anew with its keyword markers only
SKIP = {".git", ".venv", "data", "models", "reports", "weights", ".pytest_cache", ".prefect", ".whl", ".gl",
        "dvc_plots", ".ruff_cache", ".mypy_cache"}
KEEP_WEIGHTS = {*WEIGHT_KEYWORDS, "README.md"}  # weights/: the keyword markers stay, weights files do not
# variables of the calling process that would point a scratch project's git or stages elsewhere: a git hook's
# repository, a torchrun launch's world
FOREIGN = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR", "RANK",
           "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")
SETUP_TIMEOUT = 600  # seconds for each setup command (git, applying the profile)
BIN = Path(sys.executable).parent


def copy_project(dst: Path, root: Path = ROOT) -> None:
    """The working tree at ``root`` into ``dst`` (which must not exist), without :data:`SKIP`, caches or build
    metadata; ``weights/`` holds copies of the keyword markers only (never a link to the real folder)."""
    def ignore(directory: str, names: list[str]) -> list[str]:
        at_root = Path(directory) == root
        return [n for n in names if (at_root and n in SKIP) or n in {"__pycache__", ".pytest_cache"}
                or n.endswith(".egg-info")]

    shutil.copytree(root, dst, ignore=ignore, symlinks=True)
    for sub in ("cache", "tmp"):
        shutil.rmtree(dst / ".dvc" / sub, ignore_errors=True)
    (dst / "weights").mkdir()
    for name in sorted(KEEP_WEIGHTS):
        if (root / "weights" / name).is_file():
            shutil.copyfile(root / "weights" / name, dst / "weights" / name)


def scratch_env(home: Path, threads: int | None = None) -> dict[str, str]:
    """This process's environment for commands in a scratch project under ``home``: PREFECT_*, DVC_* and
    PYTHONPATH dropped, the interpreter's folder first on PATH, the hub offline, Prefect's home and HOME in
    ``home``, a git identity, no variable of :data:`FOREIGN`; ``threads`` caps the BLAS / OpenMP threads of each
    process."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "DVC_", "TORCHELASTIC_")) and k not in (*FOREIGN, "PYTHONPATH")}
    env.update(PATH=os.pathsep.join([str(BIN), env.get("PATH", "/usr/bin:/bin")]), HOME=str(home),
               PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", PREFECT_HOME=str(home / ".prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", GIT_AUTHOR_NAME="scratch",
               GIT_AUTHOR_EMAIL="scratch@localhost", GIT_COMMITTER_NAME="scratch",
               GIT_COMMITTER_EMAIL="scratch@localhost")
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    return env


def run_checked(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float | None = None) -> str:
    """Run ``cmd``; its stdout, or a RuntimeError with the command, the exit code and the end of its output."""
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def scratch_project(repo: Path, env: dict[str, str], profile: str | None = "smoke", overrides: dict | None = None,
                    message: str = "scratch project") -> Path:
    """A committed copy of the project at ``repo`` with ``profile`` applied and ``overrides`` (a nested params
    dict) merged into its params.yaml, validated by ``python -m pipeline.config show``. Returns ``repo``."""
    import yaml

    copy_project(repo)
    run_checked(["git", "init", "-q"], repo, env, SETUP_TIMEOUT)
    if profile:
        run_checked([sys.executable, "-m", "pipeline.config", "apply", profile], repo, env, SETUP_TIMEOUT)
    if overrides:
        params_file = repo / "params.yaml"
        params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
        params_file.write_text(yaml.safe_dump(deep_merge(params, overrides), sort_keys=False), encoding="utf-8")
    run_checked([sys.executable, "-m", "pipeline.config", "show"], repo, env, SETUP_TIMEOUT)  # a bad value stops here
    run_checked(["git", "add", "-A"], repo, env, SETUP_TIMEOUT)
    run_checked(["git", "-c", "commit.gpgsign=false", "commit", "-qm", message], repo, env, SETUP_TIMEOUT)
    return repo

"""What every stage shares: the output paths of the DAG (mirrored in dvc.yaml), the entry wrapper and the
timing log. Kept free of model code, so that the import closure of every stage (its code dependencies in
dvc.yaml) stays what the stage really uses."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.common.io import DataError, write_bytes, write_json, write_text
from pipeline.config import ConfigError, load_params, plain_doc

DATA = Path("data")
MODELS = Path("models")
REPORTS = Path("reports")

PREPARED = DATA / "prepared"                 # prepare: manifest.json (+ generated / rasterised files)
MANIFEST = PREPARED / "manifest.json"
CAMS = DATA / "cams"                         # export_cams: <id>.npz per image
SCORES = DATA / "scores"                     # postprocess_<m>: SCORES/<m>/<id>.npz
PSEUDO = DATA / "pseudo"                     # pseudo_labels: <id>.png (VOC palette)
CLASSIFIER = MODELS / "classifier"           # train_cls: model.pt
CLASSIFIER_CKPT = MODELS / "classifier_ckpt"  # train_cls: resume checkpoint (gitignored, not a DVC output)
CLASSIFIER_BASE = MODELS / "classifier_base"  # train_cls_base: the "w/o AReAM" baseline classifier (Table I)
CLASSIFIER_BASE_CKPT = MODELS / "classifier_base_ckpt"  # train_cls_base: resume checkpoint (not a DVC output)
CAMS_BASE = DATA / "cams_base"               # export_cams_base: the baseline's train-split CAMs (cam, avg)
AFFINITYNET = MODELS / "affinitynet"         # train_psa: model.pt
AFFINITYNET_CKPT = MODELS / "affinitynet_ckpt"  # train_psa: resume checkpoint (gitignored, not a DVC output)
SEGMENTER = MODELS / "segmenter"             # train_seg: model.pt
SEGMENTER_CKPT = MODELS / "segmenter_ckpt"   # train_seg: resume checkpoint (gitignored, not a DVC output)
SEGMENTER_GT = MODELS / "segmenter_gt"       # train_seg_gt: the fully supervised upper bound's model.pt
SEGMENTER_GT_CKPT = MODELS / "segmenter_gt_ckpt"  # train_seg_gt: resume checkpoint (gitignored, not a DVC output)
CHECKED = DATA / "checked.json"              # check: params and inputs validated (constant content)
TOYVOC = DATA / "toyvoc"                     # generate_toy: the toy set in VOC layout
TIMING = REPORTS / "timing"                  # training wall time / throughput (gitignored, not a DVC output)
SKIPPED = "SKIPPED.txt"  # train_seg_gt writes this instead of model.pt when upper_bound.enabled is false


def write_timing(stage: str, timing: dict) -> None:
    """Wall time and throughput of a training stage go to reports/timing/<stage>.json, which is not a DVC output:
    they differ from run to run, and an output that does would change its hash (and rerun everything
    downstream) although the result is the same."""
    write_json(TIMING / f"{stage}.json", timing)


def write_empty_plots(live_dir: Path, keys: tuple[str, ...]) -> None:
    """The plots folder dvc.yaml declares, with no points, for a skipped run (DVC fails on a missing out)."""
    from pipeline.common.io import atomic_dir

    with atomic_dir(live_dir / "plots" / "metrics") as tmp:
        for key in keys:  # a header and no points: a valid, empty DVC plot ("a/b": file b.tsv in folder a)
            path = tmp / f"{key}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"step\t{key.rsplit('/', 1)[-1]}\n")


def write_skipped(stage: str, key: str, metrics: Path, marker: tuple[Path, str] | None = None,
                  plots: tuple[Path, tuple[str, ...]] | None = None, files: dict[Path, bytes] | None = None,
                  **extra: Any) -> None:
    """The outputs a stage switched off by the params key ``key`` still owes DVC, written by one process: its
    metrics file ``{**extra, "skipped": true}``, a ``marker`` (path, text) where its model or data would be,
    empty ``plots`` (live folder, keys) and header-only ``files``; one line says so."""
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, one process writes them
        return
    if marker is not None:
        write_text(*marker)
    write_json(metrics, {**extra, "skipped": True})
    if plots is not None:
        write_empty_plots(*plots)
    for path, data in (files or {}).items():
        write_bytes(path, data)
    print(f"{stage}: skipped ({key}: false)", flush=True)


def stage_parser(run: Callable[..., Any],
                 arguments: Callable[[argparse.ArgumentParser], Any] | None = None) -> argparse.ArgumentParser:
    """The command line of the stage whose ``run`` this is: prog ``python -m stages.<name>``, the stage
    module's docstring as description, and the options ``arguments`` adds."""
    module = sys.modules.get(getattr(run, "__module__", "__main__")) or sys.modules["__main__"]
    spec = getattr(module, "__spec__", None)
    name = spec.name if spec is not None else f"stages.{Path(sys.argv[0]).stem}"  # also as `python stages/x.py`
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=plain_doc(module.__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if arguments is not None:
        arguments(parser)
    return parser


def launch_processes(nproc: int, argv: list[str]) -> int:
    """Run ``python <argv>`` as ``nproc`` processes on this node, as torchrun does (a free local port, one
    process per GPU, WORLD_SIZE / RANK / LOCAL_RANK set); returns the first failing process's exit code, else 0.
    Each process gets cores / nproc threads unless OMP_NUM_THREADS is set."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)(*argv)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        return int(failure.exitcode) or 1
    return 0


def stage_main(run: Callable[..., None], arguments: Callable[[argparse.ArgumentParser], Any] | None = None,
               argv: list[str] | None = None, distributed: bool = False) -> None:
    """Parse the command line (``--help`` prints the stage's docstring and exits before anything is read or
    written; an unknown argument exits 2), load params.yaml, run the stage; a user-fixable error prints one
    line and exits 2. ``arguments`` adds the stage's own options to the parser; their values reach ``run`` as
    keyword arguments (``--upper-bound`` -> ``run(params, upper_bound=...)``).

    ``distributed`` (the training stages): ``--nproc N`` (default ``runtime.nproc``; dvc.yaml passes
    ``${runtime.nproc}``) runs the stage as N DDP processes (:func:`launch_processes`: one per GPU, or gloo on
    the CPU); a process already started by torchrun (WORLD_SIZE set) runs as it is."""
    def add_arguments(cli: argparse.ArgumentParser) -> None:
        if arguments is not None:
            arguments(cli)
        if distributed:
            cli.add_argument("--nproc", type=int, default=None, metavar="N",
                             help="DDP processes on this node (default: runtime.nproc of params.yaml)")

    argv = sys.argv[1:] if argv is None else argv
    parser = stage_parser(run, add_arguments)
    options = vars(parser.parse_args(argv))
    nproc = options.pop("nproc", None)
    start = time.perf_counter()
    try:
        params = load_params()
        nproc = params.runtime.nproc if distributed and nproc is None else nproc
        if nproc is not None and nproc < 1:
            raise ConfigError(f"--nproc: {nproc} (must be >= 1)")
        if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
            print(f"{parser.prog}: {nproc} DDP processes", file=sys.stderr, flush=True)
            code = launch_processes(nproc, ["-m", parser.prog.split()[-1], *argv])
            if code:
                print(f"error: a process of {nproc} exited with {code} (its output is above)", file=sys.stderr)
                sys.exit(code)
        else:
            run(params, **options)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; rerun the stage to continue", file=sys.stderr)
        sys.exit(130)
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)

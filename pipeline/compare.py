"""Compare DVC experiments: the paper's Table I and Table II as Markdown, from ``dvc exp show``.

The report stage describes one run; the ablations are several runs. This command reads every
experiment DVC knows (``dvc.api.exp_show``: the workspace, the baseline commit and each
experiment) and writes one table with the parameters that differ between them and the Table I
columns (CAM, + affinity, + AReAM weights, + PAR / CRF / PSA, Eq. 16 pseudo labels, segmentation
and its fully supervised bound). When ``aream.lam`` differs between experiments it also writes
the lambda sweep (Table II).

    python -m pipeline.compare                      # prints the tables
    python -m pipeline.compare --out reports/experiments.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from pipeline.markdown import pct, table

# (column title, metrics file, key inside it): the Table I columns, in the paper's order
METRICS: tuple[tuple[str, str, str], ...] = (
    ("val mAP", "reports/train_cls/metrics.json", "val_map"),
    ("CAM", "reports/cams/metrics.json", "cam.best_miou"),
    ("+ affinity", "reports/cams/metrics.json", "avg.best_miou"),
    ("+ AReAM weights", "reports/cams/metrics.json", "aream.best_miou"),
    ("+ PAR", "reports/postprocess/par.json", "sweep_miou"),
    ("+ CRF", "reports/postprocess/crf.json", "sweep_miou"),
    ("+ PSA", "reports/postprocess/psa.json", "sweep_miou"),
    ("pseudo labels", "reports/pseudo/metrics.json", "miou"),
    ("seg", "reports/evaluate/metrics.json", "miou"),
    ("seg, GT-trained", "reports/evaluate_gt/metrics.json", "miou"),
)
LAMBDA_METRICS = ("CAM", "+ affinity", "pseudo labels", "seg")


def metric(row: dict[str, Any], path: str, key: str) -> float | None:
    """A metric of one ``exp_show`` row. DVC names a column ``key`` when that name is unique across
    files and ``path:key`` otherwise; both are tried, prefixed first."""
    for name in (f"{path}:{key}", key):
        value = row.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def row_name(row: dict[str, Any]) -> str:
    name = row.get("Experiment") or ""
    rev = row.get("rev") or ""
    if rev == "workspace":
        return "workspace"
    return f"{name} ({rev})" if name else str(rev)


def changed_params(rows: Sequence[dict[str, Any]], param_names: Sequence[str]) -> list[str]:
    """The parameters (dotted names) whose values differ between the rows."""
    out = []
    for name in param_names:
        values = {repr(r.get(name)) for r in rows}
        if len(values) > 1:
            out.append(name)
    return out




def comparison_markdown(rows: Sequence[dict[str, Any]], param_names: Sequence[str]) -> str:
    """Table I over the experiments (mIoU in %; val mAP as a fraction) and, when ``aream.lam``
    varies, Table II. ``param_names``: the dotted names of params.yaml's keys."""
    if not rows:
        return "_no experiments: run `dvc repro` or `dvc exp run` first_\n"
    changed = changed_params(rows, param_names)
    header = ["experiment", *changed, *(title for title, _, _ in METRICS)]
    body = []
    for r in rows:
        cells = [row_name(r), *(str(r.get(p, "-")) for p in changed)]
        for title, path, key in METRICS:
            v = metric(r, path, key)
            cells.append("-" if v is None else (f"{v:.3f}" if title == "val mAP" else pct(v)))
        body.append(cells)
    text = ["## Experiments (Table I columns, mIoU %)", "", table(header, body), ""]
    lams = {r.get("aream.lam") for r in rows if r.get("aream.lam") is not None}
    if len(lams) > 1:
        by_title = {title: (path, key) for title, path, key in METRICS}
        sweep = sorted(rows, key=lambda r: float(r.get("aream.lam") or 0))
        lines = [[str(r.get("aream.lam")), row_name(r), *(pct(metric(r, *by_title[t])) for t in LAMBDA_METRICS)]
                 for r in sweep]
        text += ["## Lambda sweep (Table II, mIoU %)", "", table(["lambda", "experiment", *LAMBDA_METRICS], lines),
                 ""]
    return "\n".join(text)


def param_names(params_file: str | Path = "params.yaml") -> list[str]:
    """Dotted names of every leaf of params.yaml, in file order."""
    import yaml

    def walk(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict):
            return [n for k, v in node.items() for n in walk(v, f"{prefix}{k}.")]
        return [prefix[:-1]]

    return walk(yaml.safe_load(Path(params_file).read_text()) or {}, "")


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description="Compare DVC experiments as Markdown (Tables I and II).")
    cli.add_argument("--out", type=Path, help="write the Markdown here instead of printing it")
    args = cli.parse_args(argv)
    import dvc.api

    try:
        rows = dvc.api.exp_show()
    except Exception as err:  # noqa: BLE001 - not a DVC repository, no commit yet, ...
        print(f"error: dvc exp show failed: {err}", file=sys.stderr)
        return 2
    text = comparison_markdown(rows, param_names())
    if args.out:
        from pipeline.io import write_text

        write_text(args.out, text)
        print(f"wrote {args.out} ({len(rows)} rows)")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

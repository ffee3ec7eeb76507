"""Compare DVC experiments: the paper's Table I and Table II as Markdown, from ``dvc exp show``.

The report stage describes one run; the ablations are several runs. This command reads every
experiment DVC knows (``dvc.api.exp_show``: the workspace, the baseline commit and each
experiment) and writes one table with the parameters that differ between them and the run's
headline figures from ``reports/metrics.json`` (classifier mAP; Table I: CAM, + affinity, + AReAM,
post-processed; segmentation and its fraction of the fully supervised bound). When ``aream.lam``
differs between experiments it also writes the lambda sweep (Table II). The per-method detail
(PAR / CRF / PSA, Eq. 16 labels) of one run is in its ``reports/report.md``.

    python -m pipeline.compare                      # prints the tables
    python -m pipeline.compare --out reports/experiments.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from pipeline.markdown import table

# (column title, metrics file, key inside it): the run's headline figures (pipeline.summary.HEADLINE),
# the Table I columns in the paper's order; mAP and mIoU already in percent, seg_frac a fraction
HEADLINE_FILE = "reports/metrics.json"
METRICS: tuple[tuple[str, str, str], ...] = (
    ("val mAP", HEADLINE_FILE, "map"),
    ("CAM", HEADLINE_FILE, "cam"),
    ("+ affinity", HEADLINE_FILE, "+aff"),
    ("+ AReAM", HEADLINE_FILE, "+aream"),
    ("post-processed", HEADLINE_FILE, "+pp"),
    ("seg", HEADLINE_FILE, "seg"),
    ("seg / bound", HEADLINE_FILE, "seg_frac"),
)
LAMBDA_METRICS = ("+ AReAM", "post-processed", "seg")


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




def _cell(title: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if title == "seg / bound" else f"{value:.1f}"


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
            cells.append(_cell(title, v))
        body.append(cells)
    text = ["## Experiments (Table I columns; mAP and mIoU in %)", "", table(header, body), ""]
    lams = {r.get("aream.lam") for r in rows if r.get("aream.lam") is not None}
    if len(lams) > 1:
        by_title = {title: (path, key) for title, path, key in METRICS}
        sweep = sorted(rows, key=lambda r: float(r.get("aream.lam") or 0))
        lines = [[str(r.get("aream.lam")), row_name(r), *(_cell(t, metric(r, *by_title[t])) for t in LAMBDA_METRICS)]
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
    cli = argparse.ArgumentParser(prog="python -m pipeline.compare",
                                  description="Compare DVC experiments as Markdown (Tables I and II).")
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

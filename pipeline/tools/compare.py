"""Compare DVC experiments: the paper's Table I and Table II as Markdown, from ``dvc exp show``, and the
spread of every figure over training seeds.

The report stage describes one run; the ablations are several runs. This command reads every
experiment DVC knows (``dvc.api.exp_show``: the workspace, the baseline commit and each
experiment) and writes one table with the parameters that differ between them and the run's
headline figures from ``reports/metrics.json`` (classifier mAP; Table I: CAM, + affinity, + AReAM,
post-processed; segmentation and its fraction of the fully supervised bound). When ``aream.lam``
differs between experiments it also writes the lambda sweep (Table II). The per-method detail
(PAR / CRF / PSA, Eq. 16 labels) of one run is in its ``reports/report.md``.

Experiments that differ only in params.yaml's ``seed`` form a group: for each group and figure the
comparison gives mean +- std (sample standard deviation), min-max, n and the value per seed, and for
two groups that differ in one other parameter (``aream.enabled`` true / false, say) the difference
per seed with its mean and std. The Table I rows outside the headline (+ PAR, the ground-truth bound)
are read from each experiment's ``reports/table1.json``.

    python -m pipeline.tools.compare                      # prints the tables
    python -m pipeline.tools.compare --out reports/experiments.md   # also .csv and .json beside it
    python -m pipeline.tools.compare seeds 3              # queue seeds 0, 1, 2 as DVC experiments, run them,
                                                    # write reports/seeds.md, .csv and .json
    python -m pipeline.tools.compare seeds 3 -S aream.enabled=false   # the same seeds with a setting changed
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.common.markdown import table

# (column title, metrics file, key inside it): the run's headline figures (pipeline.evaluate.summary.HEADLINE),
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


# ----------------------------------------------------------------------------------------------
# spread over seeds
# ----------------------------------------------------------------------------------------------

SEED = "seed"  # params.yaml's training seed: the one axis a group of experiments varies
TABLE1_FILE = "reports/table1.json"
# (title, key of reports/table1.json) for the Table I rows outside the headline, fractions there
TABLE1_EXTRA: tuple[tuple[str, str], ...] = (("+ PAR", "cams_affinity_aream_par"), ("seg on GT", "seg_val_gt"))
AREAM_GAIN = "AReAM gain"  # + AReAM minus + affinity within one run: Table I's claim for AReAM
FIGURES: tuple[str, ...] = ("val mAP", "CAM", "+ affinity", "+ AReAM", "+ PAR", "post-processed", AREAM_GAIN,
                            "seg", "seg on GT", "seg / bound")


@dataclass(frozen=True)
class Run:
    """One experiment's figures (mAP and mIoU in %, seg / bound a fraction) and its parameters."""
    name: str
    params: dict[str, Any]
    figures: dict[str, float]

    @property
    def seed(self) -> Any:
        """The run's seed (``dvc exp show`` may give an integer seed as a float: 1.0 is shown as 1)."""
        seed = self.params.get(SEED)
        return int(seed) if isinstance(seed, float) and seed.is_integer() else seed

    def key(self) -> tuple[tuple[str, str], ...]:
        """Every parameter but the seed: runs with the same key differ in their seed only."""
        return tuple(sorted((k, repr(v)) for k, v in self.params.items() if k != SEED))


def run_figures(row: dict[str, Any], table1: dict[str, Any] | None = None) -> dict[str, float]:
    """The figures of one ``exp_show`` row (and of its ``reports/table1.json``, when read)."""
    figures = {title: v for title, path, key in METRICS if (v := metric(row, path, key)) is not None}
    for title, key in TABLE1_EXTRA:
        value = (table1 or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            figures[title] = round(100.0 * float(value), 2)
    if "+ AReAM" in figures and "+ affinity" in figures:
        figures[AREAM_GAIN] = round(figures["+ AReAM"] - figures["+ affinity"], 2)
    return figures


def collect_runs(rows: Sequence[dict[str, Any]], names: Sequence[str],
                 read_table1: Callable[[dict[str, Any]], dict | None] = lambda row: None) -> list[Run]:
    """One :class:`Run` per distinct parameter set that has figures. The workspace and the baseline commit
    often repeat an experiment (same params, same results): the first row of each parameter set is kept."""
    runs, seen = [], set()
    for row in rows:
        params = {n: row.get(n) for n in names}
        ident = tuple(sorted((k, repr(v)) for k, v in params.items()))
        if ident in seen:
            continue
        figures = run_figures(row, read_table1(row))
        if not figures:
            continue
        seen.add(ident)
        runs.append(Run(row_name(row), params, figures))
    return runs


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, sample standard deviation (None for one value), min and max."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std, "min": min(values), "max": max(values)}


@dataclass
class Group:
    """Runs that differ only in the seed; ``label`` holds the parameters that set it apart from other groups."""
    key: tuple[tuple[str, str], ...]
    runs: list[Run] = field(default_factory=list)
    label: dict[str, Any] = field(default_factory=dict)

    def values(self, figure: str) -> dict[Any, float]:
        """seed -> value of ``figure`` (runs without it are left out)."""
        return {r.seed: r.figures[figure] for r in self.runs if figure in r.figures}

    def stats(self) -> dict[str, dict]:
        out = {}
        for figure in FIGURES:
            vals = self.values(figure)
            if vals:
                out[figure] = {**spread(list(vals.values())), "values": vals}
        return out

    def title(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.label.items()) or "default"


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Groups in order of first appearance, each run sorted by seed, labelled by the params that differ."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        groups.setdefault(r.key(), Group(r.key())).runs.append(r)
    out = list(groups.values())
    for g in out:
        g.runs.sort(key=lambda r: repr(r.seed))
    varying = [name for name in (out[0].runs[0].params if out else {}) if name != SEED
               and len({repr(g.runs[0].params.get(name)) for g in out}) > 1]
    for g in out:
        g.label = {name: g.runs[0].params.get(name) for name in varying}
    return out


@dataclass(frozen=True)
class Pair:
    """Two groups that differ in one parameter: ``after`` minus ``before``, seed by seed."""
    param: str
    before: Group
    after: Group

    def differences(self) -> dict[str, dict]:
        out = {}
        for figure in FIGURES:
            a, b = self.before.values(figure), self.after.values(figure)
            common = [s for s in a if s in b]
            if common:
                diffs = {s: round(b[s] - a[s], 4) for s in common}
                out[figure] = {**spread(list(diffs.values())), "values": diffs}
        return out

    def title(self) -> str:
        before, after = (g.runs[0].params.get(self.param) for g in (self.before, self.after))
        return f"{self.param}: {before} -> {after}"


def paired_groups(groups: Sequence[Group]) -> list[Pair]:
    """Every two groups whose parameters differ in exactly one key, ordered by that key's value."""
    pairs = []
    for i, g in enumerate(groups):
        for h in groups[i + 1:]:
            a, b = dict(g.key), dict(h.key)
            diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            if len(diff) == 1:
                before, after = sorted((g, h), key=lambda x: repr(x.runs[0].params.get(diff[0])))
                pairs.append(Pair(diff[0], before, after))
    return pairs


def _num(title: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if title == "seg / bound" else f"{value:.1f}"


def _per_seed(title: str, values: dict[Any, float]) -> str:
    return ", ".join(f"{s}: {_num(title, v)}" for s, v in values.items())


def spread_rows(stats: dict[str, dict]) -> list[list[str]]:
    """Table rows: figure | mean +- std | min-max | n | value per seed."""
    return [[t, f"{_num(t, s['mean'])} +- {_num(t, s['std'])}", f"{_num(t, s['min'])}-{_num(t, s['max'])}",
             str(s["n"]), _per_seed(t, s["values"])] for t, s in stats.items()]


def seeds_markdown(groups: Sequence[Group], pairs: Sequence[Pair]) -> str:
    """Per group, every figure's spread over seeds; per pair of groups, the paired differences."""
    if not groups:
        return "_no experiments with results: run `dvc repro` or `dvc exp run` first_\n"
    header = ["figure", "mean +- std", "min-max", "n", "per seed"]
    text = ["## Over training seeds (mAP and mIoU in %; std: sample standard deviation)", ""]
    for g in groups:
        seeds = ", ".join(str(r.seed) for r in g.runs)
        text += [f"### {g.title()} (seeds {seeds})", "", table(header, spread_rows(g.stats())), ""]
    for p in pairs:
        text += [f"### Paired by seed: {p.title()} (difference per seed)", "",
                 table(header, spread_rows(p.differences())), ""]
    return "\n".join(text)


def seeds_records(groups: Sequence[Group], pairs: Sequence[Pair]) -> dict[str, list[dict]]:
    """The same figures as plain data (``--out``'s JSON)."""
    def plain(stats: dict[str, dict]) -> dict[str, dict]:
        return {t: {**s, "values": {str(k): v for k, v in s["values"].items()}} for t, s in stats.items()}

    return {"groups": [{"params": g.label, "seeds": [r.seed for r in g.runs], "runs": [r.name for r in g.runs],
                        "figures": plain(g.stats())} for g in groups],
            "pairs": [{"param": p.param, "before": p.before.label, "after": p.after.label,
                       "differences": plain(p.differences())} for p in pairs]}


def seeds_csv(groups: Sequence[Group], pairs: Sequence[Pair]) -> str:
    """One line per (group or pair, figure): kind, label, figure, n, mean, std, min, max, per seed."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "label", "figure", "n", "mean", "std", "min", "max", "per_seed"])
    blocks = [("group", g.title(), g.stats()) for g in groups] + [("paired", p.title(), p.differences()) for p in pairs]
    for kind, label, stats in blocks:
        for t, s in stats.items():
            w.writerow([kind, label, t, s["n"], s["mean"], "" if s["std"] is None else s["std"], s["min"], s["max"],
                        ";".join(f"{k}={v}" for k, v in s["values"].items())])
    return buf.getvalue()


def dvc_table1(row: dict[str, Any]) -> dict | None:
    """``reports/table1.json`` of an ``exp_show`` row, from DVC's cache (None when it cannot be read)."""
    import dvc.api

    rev = None if row.get("rev") == "workspace" else row.get("rev")
    try:
        return json.loads(dvc.api.read(TABLE1_FILE, rev=rev))
    except Exception:  # noqa: BLE001 - an experiment without the file, a cache that lacks it: leave it out
        return None


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------


def queue_commands(seeds: Sequence[int], sets: Sequence[str]) -> list[list[str]]:
    """The ``dvc`` commands that queue one experiment per seed (with the extra ``-S`` settings) and run
    the queue (``dvc exp run --run-all``: one experiment at a time, so each restores what the one before
    cached, pretraining included)."""
    extra = [a for s in sets for a in ("-S", s)]
    return [["dvc", "exp", "run", "--queue", "-S", f"{SEED}={s}", *extra] for s in seeds] + \
        [["dvc", "exp", "run", "--run-all"]]


def write_outputs(out: Path, markdown: str, records: dict | None, csv_text: str | None) -> None:
    """The Markdown at ``out``; the JSON and CSV beside it (same name)."""
    from pipeline.common.io import write_json, write_text

    write_text(out, markdown)
    written = [out]
    if records is not None:
        write_json(out.with_suffix(".json"), records)
        written.append(out.with_suffix(".json"))
    if csv_text is not None:
        write_text(out.with_suffix(".csv"), csv_text)
        written.append(out.with_suffix(".csv"))
    print("wrote " + ", ".join(str(p) for p in written))


def compare(out: Path | None, seeds_only: bool = False) -> int:
    import dvc.api

    try:
        rows = dvc.api.exp_show()
    except Exception as err:  # noqa: BLE001 - not a DVC repository, no commit yet, ...
        print(f"error: dvc exp show failed: {err}", file=sys.stderr)
        return 2
    names = param_names()
    groups = group_runs(collect_runs(rows, names, dvc_table1))
    pairs = paired_groups(groups)
    spread_text = seeds_markdown(groups, pairs)
    text = spread_text if seeds_only else comparison_markdown(rows, names) + "\n" + spread_text
    if out is None:
        print(text)
    else:
        write_outputs(out, text, seeds_records(groups, pairs), seeds_csv(groups, pairs))
    return 0


def run_seeds(count: int, sets: Sequence[str], out: Path, first: int = 0) -> int:
    """Queue seeds first .. first + count - 1 as DVC experiments, run them, write the spread."""
    import subprocess
    import time

    started = time.perf_counter()
    for cmd in queue_commands(range(first, first + count), sets):
        print("$ " + " ".join(cmd), flush=True)
        code = subprocess.run(cmd).returncode
        if code != 0:
            print(f"error: `{' '.join(cmd)}` exited with {code}; `dvc queue status` and `dvc queue logs <name>` "
                  "say why", file=sys.stderr)
            return code
    print(f"{count} seeds ran in {time.perf_counter() - started:.0f} s", flush=True)
    return compare(out, seeds_only=True)


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m pipeline.tools.compare",
                                  description="Compare DVC experiments as Markdown (Tables I and II) and the "
                                              "spread of every figure over training seeds.")
    cli.add_argument("--out", type=Path, help="write the Markdown here (and .csv / .json beside it) instead of "
                                              "printing it")
    sub = cli.add_subparsers(dest="command", metavar="seeds")
    seeds = sub.add_parser("seeds", help="queue N training seeds as DVC experiments, run them, write the spread",
                           description="Queue params.yaml's seed = FIRST .. FIRST+N-1 as DVC experiments (dvc exp "
                                       "run --queue -S seed=K), run the queue (dvc exp run --run-all) and write "
                                       "every figure's mean +- std over the seeds.")
    seeds.add_argument("n", type=int, help="number of seeds")
    seeds.add_argument("--first", type=int, default=0, help="first seed (default 0)")
    seeds.add_argument("-S", "--set-param", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="a setting for every seed, as dvc exp run -S (repeatable)")
    seeds.add_argument("--out", type=Path, dest="seeds_out", default=Path("reports/seeds.md"),
                       help="Markdown of the spread (and .csv / .json beside it; default reports/seeds.md)")
    args = cli.parse_args(argv)
    if args.command == "seeds":
        if args.n < 1 or args.first < 0:
            cli.error("seeds: N must be >= 1 and --first >= 0")
        return run_seeds(args.n, args.sets, args.seeds_out, args.first)
    return compare(args.out)


if __name__ == "__main__":
    sys.exit(main())

"""Does the whole DAG scale with the dataset? Time, peak memory and disk of every stage at several sizes.

For each size it builds a scratch DVC project (a copy of this repository without its data, models,
reports and local weights files, then git init and a commit), with the smoke profile's small, fast
networks, one epoch for every trainer that reads the dataset (train_cls and train_cls_base with the
affinity loss from that epoch on, train_psa, train_seg, train_seg_gt) and the generated toy dataset at
the size's image counts. Then it runs the stages one by one in DVC's order (dvc repro --single-item
STAGE, the order of pipeline.tools.flow.stage_order) and measures each:

- wall time of dvc repro (the stage's own time from its "done in" line; the rest is DVC's hashing);
- peak RSS: the largest resident set of any one process of the stage (dvc, the stage, its pool workers),
  from os.wait4 on dvc's pid (the maximum over it and every descendant it waited for); and the peak of
  the whole process tree's memory (the sum of PSS over dvc and its descendants, sampled each second);
- disk: the size of the stage's outputs as dvc.yaml lists them (allocated blocks, as du), and how much
  .dvc/cache grew.

Then it prints one table per preset: rows are stages, columns the time, the peak RSS and the outputs at
each fraction, and the growth from the smallest to the largest size: time ratio / image ratio (1.0 =
linear; fixed start-up costs push it under 1), the slope ratio (the per-image time of the upper sizes
over that of the lower ones, with three sizes or more: 1.0 = linear, free of fixed costs), the memory
ratio (1.0 = flat) and the disk ratio / image ratio (1.0 = proportional). The raw numbers go to --out
(JSON, rewritten after every stage) and the tables to the same name with .md. It also reports the
bytes per image in data/cams, projected to the preset's full image count.

Presets: voc = 10,582 train + 1,449 val images, 20 classes (VOC 2012 train_aug and val); coco = 80
classes, with --coco-train / --coco-val images (default the VOC counts: COCO 2014's 82,081 + 40,137
would take days on a CPU; the class count is what differs). --fractions takes those counts times each
fraction, --scale shrinks everything for a quick try (--scale 0.01: about 100 + 15 images).

Constant-cost stages: pretrain keeps the smoke profile's corpus (8 classes, 16 images each, one epoch),
import_weights converts a fixed file, analyze_layers reads analysis.num_images images, report reads
metrics. Nothing downloads: the project's defaults are offline.

    python benchmarks/bench_scale.py --preset voc --scale 0.01 --fractions 0.5,1.0   # about 2 minutes
    python benchmarks/bench_scale.py --preset voc --scale 0.1                         # about 8 minutes
    python benchmarks/bench_scale.py --preset voc,coco --workdir /scratch/bench       # about 1.5 hours

Duration and disk on 2 idle CPU cores (measured): about 1.5 minutes per size for the constant-cost stages
and DVC, plus about 0.08 s per image for all stages together; the voc sizes 0.25 and 0.5 took 6.1 and 9.9
minutes, so the default voc run (0.25 + 0.5 + 1.0 of 12,031 images) takes about 40 minutes and a few GB of
disk (outputs and their copies in .dvc/cache, about 0.25 MB per image together); --preset coco took 43.8
minutes (with 80 classes the per-image work of pseudo_labels is about 3.5 times that with 20). Any other job on the
cores slows it several times over. make bench leaves it out: run it by hand.

Follow a run: one line per stage as it finishes; each stage's output goes to
WORKDIR/PRESET-FRACTION/logs/STAGE.log (tail -f it). The scratch projects stay in the working folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.tools.processes import MB, disk_usage, measure_command  # noqa: E402
from pipeline.tools.scratch import BIN, scratch_env, scratch_project  # noqa: E402
from pipeline.tools.scratch import run_checked as run  # noqa: E402

MARKER = ".bench_scale"  # a project folder this benchmark made (and may replace on a rerun)
PRESETS = {"voc": {"train": 10582, "val": 1449, "classes": 20}, "coco": {"train": None, "val": None, "classes": 80}}
MIN_TRAIN, MIN_VAL = 16, 4  # analysis and batch sizes of the smoke profile need a few images
DONE_IN = re.compile(r"^done in ([\d.]+) s$")


# ------------------------------------------------------------------------------------------------------------
# scratch projects


def size_overrides(train: int, val: int, classes: int, args: argparse.Namespace) -> dict:
    """Params on top of the smoke profile: the toy dataset's counts, one epoch per trainer, the runtime."""
    lo, hi = args.image_size
    return {"runtime": {"workers": args.workers, "loader_workers": args.loader_workers, "task_runner": "process",
                        "nproc": 1},
            "dataset": {"toy": {"num_train": train, "num_val": val, "num_classes": classes, "min_size": lo,
                                "max_size": hi}},
            "train_cls": {"epochs": 1, "warmup_epochs": 0},
            "aream": {"start_epoch": 0},  # the affinity loss (PAR per image) runs in that one epoch
            "psa": {"epochs": 1},
            "seg": {"epochs": 1}}


def make_project(path: Path, overrides: dict, env: dict[str, str]) -> None:
    if path.exists():
        if not (path / MARKER).exists():
            raise SystemExit(f"error: {path} exists and was not made by this benchmark; choose another --workdir")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by benchmarks/bench_scale.py\n")
    repo = path / "project"
    scratch_project(repo, env, "smoke", overrides, "bench_scale")


def stage_order(repo: Path, env: dict[str, str]) -> list[str]:
    code = "from pipeline.tools.flow import stage_order; print('\\n'.join(stage_order('.')))"
    return run([str(BIN / "python"), "-c", code], repo, env).split()


def stage_outputs(repo: Path) -> dict[str, list[str]]:
    """{stage: paths of its outs, metrics and plots} from dvc.yaml."""
    import yaml

    def paths(entries) -> list[str]:
        out = []
        for e in entries or []:
            out.extend([e] if isinstance(e, str) else list(e))
        return [p for p in out if "${" not in p]

    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {name: paths(st.get("outs")) + paths(st.get("metrics")) + paths(st.get("plots"))
            for name, st in stages.items()}


# ------------------------------------------------------------------------------------------------------------
# measuring


def outcome(stage: str, text: str) -> str:
    name = re.escape(stage)
    if re.search(rf"^Running stage '{name}':", text, re.MULTILINE):
        return "ran"
    if re.search(rf"^Stage '{name}' is cached - skipping run", text, re.MULTILINE):
        return "restored"
    if re.search(rf"'{name}' didn't change, skipping", text):
        return "up to date"
    return "ran"


def measure_stage(repo: Path, stage: str, outs: list[str], env: dict[str, str], log: Path,
                  interval: float) -> dict:
    """Run ``dvc repro --single-item stage`` and measure it (see the module docstring)."""
    cache = repo / ".dvc" / "cache"
    cache_before = disk_usage(cache)
    run = measure_command([str(BIN / "dvc"), "repro", "--single-item", stage], repo, env, log, interval)
    text = log.read_text(errors="replace")
    own = [float(m.group(1)) for m in map(DONE_IN.match, text.splitlines()) if m]
    sizes = [disk_usage(repo / p) for p in outs]
    cache_after = disk_usage(cache)
    rec = {"stage": stage, "returncode": run.returncode,
           "status": outcome(stage, text) if run.returncode == 0 else "failed", "wall_s": round(run.wall_s, 2),
           "stage_s": own[-1] if own else None, "dvc_s": round(run.wall_s - own[-1], 2) if own else None,
           "peak_rss_mb": round(run.peak_rss_mb, 1), "tree_peak_mb": round(run.tree_peak_mb, 1),
           "tree_peak_procs": run.tree_peak_procs, "out_bytes": sum(s[0] for s in sizes),
           "out_apparent_bytes": sum(s[1] for s in sizes), "out_files": sum(s[2] for s in sizes),
           "cache_growth_bytes": cache_after[0] - cache_before[0],
           "cache_growth_files": cache_after[2] - cache_before[2],
           "outs": outs, "log": str(log)}
    if run.returncode != 0:
        tail = [ln for ln in text.splitlines() if ln.strip() and "%|" not in ln][-12:]
        rec["error"] = "\n".join(tail)
    return rec


def cam_storage(repo: Path, sample: int = 600) -> dict | None:
    """data/cams on disk per image; its raw float16 payload, the payload deflated alone (zlib at npz's level)
    and the rest of each file (zip and array headers, keys, size), from up to ``sample`` files evenly spaced."""
    import zlib

    import numpy as np

    folder = repo / "data" / "cams"
    files = sorted(folder.glob("*.npz"))
    if not files:
        return None
    blocks, size, _ = disk_usage(folder)
    picked = files[::max(1, len(files) // sample)]
    raw = packed = npz = keys = cells = pixels = 0
    variants: set[str] = set()
    for p in picked:
        with np.load(p) as z:
            for name in z.files:
                if name not in ("keys", "size"):
                    variants.add(name)
                    raw += z[name].nbytes
                    packed += len(zlib.compress(np.ascontiguousarray(z[name]).tobytes(), 6))
                    cells += int(np.prod(z[name].shape[1:]))
            keys += int(z["keys"].size)
            pixels += int(np.prod(z["size"]))
        npz += p.stat().st_size
    n = len(picked)
    return {"files": len(files), "bytes": blocks, "apparent_bytes": size, "bytes_per_image": blocks / len(files),
            "npz_bytes_per_image": size / len(files), "raw_float16_bytes_per_image": raw / n,
            "deflated_payload_bytes_per_image": packed / n, "container_bytes_per_image": (npz - packed) / n,
            "deflate_ratio": packed / raw if raw else None, "classes_per_image": keys / n,
            "variants": sorted(variants), "cells_per_map": cells / max(1, len(variants) * n),
            "pixels_per_image": pixels / n}


def _fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:,.{digits}f}"


def growth(sizes: list[dict], stage: str) -> dict:
    """Growth of one stage from the smallest to the largest size that ran it (see the module docstring)."""
    rows = [(s["images"], next(r for r in s["stages"] if r["stage"] == stage)) for s in sizes
            if any(r["stage"] == stage and r["status"] == "ran" for r in s["stages"])]
    if len(rows) < 2:
        return {}
    rows.sort(key=lambda t: t[0])
    (n0, a), (n1, b) = rows[0], rows[-1]
    out = {"image_ratio": n1 / n0, "time_ratio": b["wall_s"] / a["wall_s"] / (n1 / n0),
           "rss_ratio": b["peak_rss_mb"] / a["peak_rss_mb"] if a["peak_rss_mb"] else None,
           "tree_ratio": b["tree_peak_mb"] / a["tree_peak_mb"] if a["tree_peak_mb"] else None,
           "disk_ratio": b["out_bytes"] / a["out_bytes"] / (n1 / n0) if a["out_bytes"] else None}
    if len(rows) >= 3:
        mid = len(rows) // 2
        (nl, l0), (nm, m), (nh, h) = rows[0], rows[mid], rows[-1]
        lo, hi = (m["wall_s"] - l0["wall_s"]) / (nm - nl), (h["wall_s"] - m["wall_s"]) / (nh - nm)
        out["slope_ratio"] = hi / lo if lo > 0 else None
        out["seconds_per_1000_images"] = 1000 * (h["wall_s"] - l0["wall_s"]) / (nh - nl)
    else:
        out["seconds_per_1000_images"] = 1000 * (b["wall_s"] - a["wall_s"]) / (n1 - n0)
    return out


def preset_table(preset: str, sizes: list[dict]) -> str:
    sizes = sorted(sizes, key=lambda s: s["images"])
    order = []
    for s in sizes:
        order += [r["stage"] for r in s["stages"] if r["stage"] not in order]
    fr = [f"{s['fraction']:g}" for s in sizes]
    lines = [f"## {preset}: " + ", ".join(f"{f} = {s['train']:,} train + {s['val']:,} val images"
                                          for f, s in zip(fr, sizes)) + f" ({sizes[0]['classes']} classes)", ""]
    head = (["stage"] + [f"time s @{f}" for f in fr] + [f"RSS MB @{f}" for f in fr] + [f"outs MB @{f}" for f in fr]
            + ["time x / img x", "slope hi/lo", "s / 1k img", "RSS x", "outs x / img x"])
    body = []
    for stage in order:
        row = [stage]
        recs = [next((r for r in s["stages"] if r["stage"] == stage), None) for s in sizes]
        row += [("FAILED" if r["status"] == "failed" else _fmt(r["wall_s"])) if r else "-" for r in recs]
        row += [_fmt(r["peak_rss_mb"], 0) if r else "-" for r in recs]
        row += [_fmt(r["out_bytes"] / MB, 2) if r else "-" for r in recs]
        g = growth(sizes, stage)
        row += [_fmt(g.get("time_ratio"), 2), _fmt(g.get("slope_ratio"), 2), _fmt(g.get("seconds_per_1000_images")),
                _fmt(g.get("rss_ratio"), 2), _fmt(g.get("disk_ratio"), 2)]
        body.append(row)
    total = ["total"] + [_fmt(sum(r["wall_s"] for r in s["stages"])) for s in sizes] + \
        [_fmt(max((r["peak_rss_mb"] for r in s["stages"]), default=0), 0) for s in sizes] + \
        [_fmt(sum(r["out_bytes"] for r in s["stages"]) / MB, 2) for s in sizes] + [""] * 5
    body.append(total)
    lines += _markdown(head, body)
    lines += ["", ("Process-tree memory (peak of the summed PSS of dvc and its descendants) and DVC's own share of "
                   "the wall time (wall - the stage's 'done in'):"), ""]
    head2 = ["stage"] + [f"tree MB @{f}" for f in fr] + ["tree x"] + [f"dvc s @{f}" for f in fr] + \
        [f"procs @{fr[-1]}"]
    body2 = []
    for stage in order:
        recs = [next((r for r in s["stages"] if r["stage"] == stage), None) for s in sizes]
        g = growth(sizes, stage)
        body2.append([stage] + [_fmt(r["tree_peak_mb"], 0) if r else "-" for r in recs] + [_fmt(g.get("tree_ratio"), 2)]
                     + [_fmt(r["dvc_s"]) if r else "-" for r in recs]
                     + [str(recs[-1]["tree_peak_procs"]) if recs[-1] else "-"])
    lines += _markdown(head2, body2)
    lines += ["", ("Disk per size (allocated bytes): the stages' outputs, .dvc/cache (outputs are copied there) "
                   "and the whole scratch project:"), ""]
    lines += _markdown(["size", "outputs MB", "cache MB", "project MB", "MB per image (project)"],
                       [[f, _fmt(sum(r["out_bytes"] for r in s["stages"]) / MB),
                         _fmt(sum(r["cache_growth_bytes"] for r in s["stages"]) / MB), _fmt(s["project_bytes"] / MB),
                         _fmt(s["project_bytes"] / MB / s["images"], 3)] for f, s in zip(fr, sizes)])
    failed = [(f, r) for f, s in zip(fr, sizes) for r in s["stages"] if r["status"] == "failed"]
    for f, r in failed:
        lines += ["", f"FAILED at {f}: stage {r['stage']} (exit {r['returncode']}), log {r['log']}:", "",
                  *("    " + ln for ln in r.get("error", "").splitlines())]
    full = PRESETS.get(preset, {})
    images = full["train"] + full["val"] if full.get("train") and full.get("val") else None
    lines += ["", *cam_lines(sizes, fr, images)]
    return "\n".join(lines)


def cam_lines(sizes: list[dict], fr: list[str], images: int | None) -> list[str]:
    """The measured CAM storage per image at each fraction, and the last one projected to ``images`` images."""
    out = ["CAM storage (data/cams, train + val):"]
    for f, s in zip(fr, sizes):
        c = s.get("cams")
        if not c:
            continue
        out.append(f"  @{f}: {c['files']:,} files, {c['bytes_per_image'] / 1e3:.1f} KB per image on disk "
                   f"({c['npz_bytes_per_image'] / 1e3:.1f} KB npz: {c['deflated_payload_bytes_per_image'] / 1e3:.1f} "
                   f"KB deflated maps + {c['container_bytes_per_image'] / 1e3:.1f} KB headers), raw float16 payload "
                   f"{c['raw_float16_bytes_per_image'] / 1e3:.1f} KB, deflate ratio {_fmt(c['deflate_ratio'], 2)}, "
                   f"{c['classes_per_image']:.2f} classes x {len(c['variants'])} variants x "
                   f"{c['cells_per_map']:.0f} cells ({c['pixels_per_image']:.0f} px per image)")
    last = next((s["cams"] for s in reversed(sizes) if s.get("cams")), None)
    if last and images:
        out.append(f"  x {images:,} images of the full set: {last['bytes_per_image'] * images / 1e9:.2f} GB on disk "
                   "at the toy's image sizes (and as much in DVC's cache; larger images store more cells)")
    return out


def _markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def fmt(row: list[str]) -> str:
        cells = (str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        return "| " + " | ".join(cells) + " |"

    return [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)]


# ------------------------------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _presets(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in PRESETS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown preset {bad[0] if bad else text!r} (voc, coco)")
    return names


def _size(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    try:
        lo_, hi_ = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX pixels, got {text!r}") from None
    return lo_, hi_


def parser() -> argparse.ArgumentParser:
    cores = os.cpu_count() or 1
    cli = argparse.ArgumentParser(prog=f"python benchmarks/{Path(__file__).name}", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--preset", type=_presets, default=["voc"], help="voc, coco or both (voc,coco); default voc")
    cli.add_argument("--fractions", type=_floats, default=[0.25, 0.5, 1.0],
                     help="sizes as fractions of the preset's counts (default 0.25,0.5,1.0)")
    cli.add_argument("--scale", type=float, default=1.0, help="extra multiplier of every count (quick try: 0.01)")
    cli.add_argument("--coco-train", type=int, default=10582, help="coco preset's train images at fraction 1")
    cli.add_argument("--coco-val", type=int, default=1449, help="coco preset's val images at fraction 1")
    cli.add_argument("--image-size", type=_size, default=(64, 96), metavar="MIN,MAX",
                     help="toy image sides in pixels (default the smoke profile's 64,96)")
    cli.add_argument("--workers", type=int, default=cores, help=f"runtime.workers (default {cores}: every core)")
    cli.add_argument("--loader-workers", type=int, default=0, help="runtime.loader_workers (default 0)")
    cli.add_argument("--threads", type=int, default=cores, help=f"OMP_NUM_THREADS of the stages (default {cores})")
    cli.add_argument("--interval", type=float, default=1.0, help="seconds between process-tree memory samples")
    cli.add_argument("--workdir", type=Path, default=None, help="where the scratch projects go (default: a new "
                     "temporary folder); kept afterwards")
    cli.add_argument("--out", type=Path, default=None, help="raw numbers as JSON (default WORKDIR/results.json); "
                     "the tables go next to it (.md)")
    cli.add_argument("--tables", type=Path, default=None, metavar="RESULTS_JSON",
                     help="only print the tables of an earlier run's JSON (runs nothing)")
    return cli


def counts(preset: str, fraction: float, args: argparse.Namespace) -> tuple[int, int, int]:
    p = PRESETS[preset]
    train = args.coco_train if preset == "coco" else p["train"]
    val = args.coco_val if preset == "coco" else p["val"]
    return (max(MIN_TRAIN, round(train * args.scale * fraction)), max(MIN_VAL, round(val * args.scale * fraction)),
            p["classes"])


def measure_size(preset: str, fraction: float, args: argparse.Namespace, workdir: Path, env: dict[str, str],
                 size: dict, order: list[str], save: Callable[[], None], started: float) -> None:
    """Build the size's project and run its stages, filling ``size``; stops at the first failing stage."""
    label = f"{preset} {fraction:g} ({size['train']:,} + {size['val']:,} images)"
    path = workdir / f"{preset}-{fraction:g}"
    t0 = time.perf_counter()
    make_project(path, size_overrides(size["train"], size["val"], size["classes"], args), env)
    repo = path / "project"
    size["project"] = str(repo)
    if not order:
        order += stage_order(repo, env)
    outs = stage_outputs(repo)
    print(f"[{label}] project {repo} ready in {time.perf_counter() - t0:.0f} s; {len(order)} stages", flush=True)
    (path / "logs").mkdir()
    try:
        for stage in order:
            rec = measure_stage(repo, stage, outs.get(stage, []), env, path / "logs" / f"{stage}.log", args.interval)
            size["stages"].append(rec)
            note = "" if rec["status"] == "ran" else f" [{rec['status']}]"
            print(f"[{label}] {stage:<16} {rec['wall_s']:8.1f} s (stage {_fmt(rec['stage_s'])} s)  "
                  f"peak RSS {rec['peak_rss_mb']:7.0f} MB  tree {rec['tree_peak_mb']:7.0f} MB  "
                  f"outputs {rec['out_bytes'] / MB:9.2f} MB in {rec['out_files']:,} files{note}", flush=True)
            if stage == "export_cams" and rec["status"] == "ran":
                size["cams"] = cam_storage(repo)
            save()
            if rec["status"] == "failed":
                print(f"[{label}] stage {stage} failed (exit {rec['returncode']}); the remaining stages of this size "
                      f"are skipped. End of its log:\n{rec.get('error', '')}", flush=True)
                break
    finally:
        size["project_bytes"] = disk_usage(repo)[0]
        save()
    total = sum(r["wall_s"] for r in size["stages"])
    print(f"[{label}] done: {total:.0f} s of stages; project {size['project_bytes'] / 1e6:,.1f} MB; "
          f"{(time.perf_counter() - started) / 60:.1f} min so far", flush=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    args = parser().parse_args()
    if args.tables:
        saved = json.loads(args.tables.read_text())
        for preset, sizes in saved["presets"].items():
            print(preset_table(preset, sizes) + "\n")
        return 0
    if args.image_size[0] < 32 or args.image_size[1] < args.image_size[0]:
        parser().error("--image-size: MIN >= 32 and MAX >= MIN")
    signal.signal(signal.SIGTERM, _interrupt)  # a killed run still saves its numbers and stops its stage
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    out = (args.out or workdir / "results.json").resolve()
    env = scratch_env(workdir, args.threads)
    free = shutil.disk_usage(workdir).free
    print(f"workdir: {workdir} ({free / 1e9:.1f} GB free)\nresults: {out} and {out.with_suffix('.md')}", flush=True)
    print(f"settings: OMP_NUM_THREADS={args.threads}, runtime.workers={args.workers} (task_runner process), "
          f"loader_workers={args.loader_workers}; smoke profile networks, 1 epoch per trainer (aream.start_epoch 0), "
          f"toy images {args.image_size[0]}-{args.image_size[1]} px", flush=True)
    print("constant-cost stages (independent of the dataset size): pretrain (smoke corpus: 8 classes x 16 images, "
          "1 epoch), import_weights, analyze_layers (analysis.num_images of the smoke profile), report", flush=True)
    results: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "workdir": str(workdir), "presets": {}, "growth": {}}
    order: list[str] = []
    started = time.perf_counter()

    def save() -> None:
        out.write_text(json.dumps(results, indent=1))

    def tables() -> None:
        done = []
        for preset, sizes in results["presets"].items():
            if any(s["stages"] for s in sizes):
                results["growth"][preset] = {st: g for st in order if (g := growth(sizes, st))}
                done.append(preset_table(preset, sizes))
        save()
        out.with_suffix(".md").write_text("\n\n".join(done) + "\n")
        print("\n" + "\n\n".join(done) + "\n", flush=True)

    try:
        for preset in args.preset:
            sizes = results["presets"].setdefault(preset, [])
            for fraction in sorted(args.fractions):
                train, val, classes = counts(preset, fraction, args)
                size = {"fraction": fraction, "train": train, "val": val, "images": train + val, "classes": classes,
                        "project": None, "stages": [], "cams": None, "project_bytes": 0}
                sizes.append(size)
                measure_size(preset, fraction, args, workdir, env, size, order, save, started)
    except KeyboardInterrupt:
        print(f"interrupted after {(time.perf_counter() - started) / 60:.1f} min; the tables below hold the stages "
              "that finished", flush=True)
        tables()
        return 130
    tables()
    print(f"total {(time.perf_counter() - started) / 60:.1f} min; workdir kept: {workdir}", flush=True)
    failed = any(r["status"] == "failed" for p in results["presets"].values() for s in p for r in s["stages"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU check: throughput and peak GPU memory of every network at the VOC profile's sizes, and the smoke DAG on CUDA.

    python benchmarks/gpu_check.py [--device cuda] [--budget-s 420] [--quick] [--skip-dag] [--parts cls,seg]

One command for a person or a session lent a GPU for a few minutes (make gpu-check runs it through
benchmarks/gpu_check.sh, which first prints nvidia-smi and the torch / CUDA versions). Parameters are the
repository's params.yaml with profiles/voc.yaml applied, every network from random weights (the machine
needs no internet): classifier.pretrained, psa.pretrained and seg.encoder_weights are none. Images and
labels are synthetic. Each part builds its network, runs a few warm-up steps, then timed steps, and reports
images/s, ms per step and the peak GPU memory of the part (torch.cuda.max_memory_allocated, reset before
each part):

  1a/1b  train_cls steps without and with AReAM: the classifier's own step (pipeline.train.classifier.step_losses,
         optimizer, schedule and AMP as train_classifier builds them); DeiT-S, 448 px, batch 32
  2      CAM export: pipeline.cams.infer.infer_cams with the cams section (scales, flip, stride, batch size,
         variants) on VOC-sized images (375..500 px)
  3      AffinityNet training steps (the step of pipeline.train.affinity: pair affinities, PSA's balanced
         loss, AdamW, fp16 AMP); psa section: ResNet-50, 448 px crops, batch 8
  4a/4b  DeepLab-v2 ResNet-101 training steps (the step of pipeline.train.segmenter: cross-entropy, SGD with the
         poly schedule, fp16 AMP; 321 px crops, batch 10) and multi-scale + flip inference
         (pipeline.evaluate.inference.predict_probs with the eval section's scales) on 500x375 images
  5      the smoke DAG end to end: a scratch copy of the project (git init, the smoke profile applied,
         runtime.device set to --device, committed), then dvc repro; wall time, every stage's start, and
         whether it passed (exit 0, reports/report.md written, train_cls ran on the asked device)

Training parts time the GPU step on one prepared batch: data loading and augmentation are not measured.
--budget-s bounds the whole run: parts 1-4 share what is left after --dag-reserve-s and shrink their
timed steps (at least one) when time runs short; the DAG gets the rest. A failing part prints one line and
its exception, and the next part runs. A summary table ends the run; the exit code is 0 when every part
passed, 1 when one failed or was skipped for time, 2 on a usage or environment error, 124 on SIGTERM (the
global timeout of gpu_check.sh). Without a CUDA device and --device cuda, it says so and exits 0.

--quick: tiny sizes (64 px classifier of depth 2, 64 px crops, batch 2) and 1 warm-up + 2 timed steps, the
same networks and code; with --device cpu it tests this script on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    import numpy as np
    import torch

    from pipeline.config import plain_doc
    from pipeline.tools.measure import (Interrupted, Part, Rate, Row, check_finite, describe_device,
                                        image_label_pairs, multi_hot, run_plan, summary, timed_steps)
    MISSING = None
except (ImportError, OSError) as err:  # missing packages or torch libraries: --help works, main() says so
    MISSING = err

    def plain_doc(doc: str | None) -> str:
        return (doc or "").strip() + "\n"

PART_KEYS = ("cls", "cams", "psa", "seg", "dag")
VOC_TRAIN_AUG = 10582  # images of VOC's train_aug split: sets the schedules' length


@dataclass
class Context:
    args: argparse.Namespace
    params: Any
    device: Any  # torch.device
    warmup: int
    steps: int

    def timed(self, step, images_per_step: int, allowance: float, warmup: int | None = None,
              steps: int | None = None) -> Rate:
        """:func:`pipeline.tools.measure.timed_steps` with this run's warm-up and step counts."""
        return timed_steps(step, images_per_step, self.device, allowance,
                           self.warmup if warmup is None else warmup, self.steps if steps is None else steps)


# ----------------------------------------------------------------------------------------------
# parts


def part_cls(ctx: Context, allowance: float, aream_on: bool) -> Rate:
    from pipeline.models.vit import build_classifier
    from pipeline.train.classifier import build_optimizer, build_scheduler, step_losses
    from pipeline.train.harness import amp, amp_dtype, backward_step

    p, dev = ctx.params, ctx.device
    c, t = p.classifier, p.train_cls
    classes = num_foreground()
    torch.manual_seed(0)
    model = build_classifier(c, classes).to(dev).train()
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, steps_per_epoch=max(1, VOC_TRAIN_AUG // t.batch_size))
    autocast, scaler = amp(dev, t.amp)
    rng = np.random.default_rng(0)
    images = torch.randn(t.batch_size, 3, c.img_size, c.img_size, generator=torch.Generator().manual_seed(0))
    images, targets = images.to(dev), multi_hot(t.batch_size, classes, rng).to(dev)
    dtype = amp_dtype(dev, t.amp)
    print(f"  {c.backbone} depth {c.depth}, {c.img_size} px, patch {c.patch_size}, batch {t.batch_size}, {classes} "
          f"classes, {t.optimizer}, AMP {str(dtype).replace('torch.', '') if dtype else 'off'}"
          f"{', scaler' if scaler else ''}; AReAM {'on' if aream_on else 'off'}"
          f"{f' (lambda {p.aream.lam}, PAR at scale {p.aream.par_scale})' if aream_on else ''}", flush=True)
    last: dict[str, Any] = {}

    def step():
        losses = step_losses(model, images, targets, p.aream, p.par, aream_on, autocast)
        backward_step(losses.total, optimizer, scaler)
        scheduler.step()
        last["loss"] = losses.total

    m = ctx.timed(step, t.batch_size, allowance)
    check_finite(last["loss"], "the train_cls loss")
    return m


def part_cams(ctx: Context, allowance: float) -> Rate:
    from pipeline.cams.infer import infer_cams
    from pipeline.models.vit import build_classifier

    p, dev = ctx.params, ctx.device
    c = p.classifier
    cfg = p.cams.replace(first_k=min(p.cams.first_k, c.depth))
    classes = num_foreground()
    torch.manual_seed(0)
    model = build_classifier(c, classes).to(dev).eval()
    rng = np.random.default_rng(1)
    sizes = (48, 80) if ctx.args.quick else (375, 500)
    images = [img for img, _ in image_label_pairs(cfg.batch_size, sizes, sizes, classes, rng)]
    labels = [sorted(rng.choice(np.arange(1, classes + 1), size=int(rng.integers(1, 4)), replace=False).tolist())
              for _ in images]
    amp = dev.type == "cuda"  # as stage export_cams (export_cams' default)
    print(f"  {c.backbone} depth {c.depth}, img_size {c.img_size}, scales {cfg.scales}, flip {cfg.flip}, stride "
          f"{cfg.stride}, variants {list(cfg.variants)}, batch {cfg.batch_size} images of {sizes[0]}..{sizes[1]} px",
          flush=True)
    out: dict[str, Any] = {}

    def step():
        out["res"] = infer_cams(model, images, labels, cfg, img_size=c.img_size, patch_size=c.patch_size,
                                device=dev, preprocess=model.preprocess, amp=amp)

    m = ctx.timed(step, cfg.batch_size, allowance, warmup=1, steps=max(1, ctx.steps // 3))
    res = out["res"][0]
    for v in cfg.variants:
        if not np.isfinite(res[v]).all():
            raise FloatingPointError(f"CAM variant {v!r} is not finite")
    return m


def part_psa(ctx: Context, allowance: float) -> Rate:
    from pipeline.models.affinitynet import AffinityNet, pair_border, radius_offsets
    from pipeline.train.affinity import affinity_step, make_batch
    from pipeline.train.harness import amp

    cfg, dev = ctx.params.psa, ctx.device
    torch.manual_seed(ctx.params.seed)
    model = AffinityNet(cfg.backbone, cfg.pretrained, cfg.feature_stride, cfg.embed_dim).to(dev).train()
    offsets = radius_offsets(cfg.radius)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    autocast, scaler = amp(dev, cfg.amp, torch.float16)  # as train_affinitynet: fp16 with a gradient scaler
    rng = np.random.default_rng(2)
    h, w = (48, 64) if ctx.args.quick else (375, 500)
    pairs = image_label_pairs(cfg.batch_size, (h, h), (w, w), num_foreground(), rng)
    x, y = make_batch([a for a, _ in pairs], [b for _, b in pairs], range(len(pairs)), cfg.crop_size,
                      cfg.feature_stride, ctx.params.seed, 0)
    x, y = x.to(dev), y.to(dev)
    print(f"  AffinityNet {cfg.backbone}, {cfg.crop_size} px crops of {w}x{h} images, batch {cfg.batch_size}, "
          f"embed {cfg.embed_dim}, stride {cfg.feature_stride}, radius {cfg.radius}, AdamW, AMP "
          f"{'float16, scaler' if scaler else 'off'}", flush=True)
    last: dict[str, Any] = {}

    def step():
        last["loss"] = affinity_step(model, x, y, offsets, optimizer, scaler, autocast,
                                     pair_border(cfg.radius, cfg.pairs))[0]["loss"]

    m = ctx.timed(step, cfg.batch_size, allowance)
    check_finite(last["loss"], "the AffinityNet loss")
    return m


def build_seg(ctx: Context):
    from pipeline.models.segmenter import build_segmenter

    torch.manual_seed(ctx.params.seed)
    return build_segmenter(ctx.params.seg, num_foreground() + 1).to(ctx.device)


def part_seg_train(ctx: Context, allowance: float) -> Rate:
    from pipeline.train.harness import amp, backward_step, make_scheduler
    from pipeline.train.segmenter import SegTrainSet, make_optimizer, segmentation_loss

    cfg, dev = ctx.params.seg, ctx.device
    model = build_seg(ctx).train()
    optimizer = make_optimizer(model, cfg)
    autocast, scaler = amp(dev, cfg.amp, torch.float16)  # as train_segmenter: fp16 with a gradient scaler
    rng = np.random.default_rng(3)
    h, w = (60, 80) if ctx.args.quick else (375, 500)
    data = SegTrainSet(image_label_pairs(cfg.batch_size, (h, h), (w, w), num_foreground(), rng), cfg, ctx.params.seed)
    items = [data[i] for i in range(len(data))]  # the recipe's rescale, flip, pad and crop
    x = torch.stack([a for a, _ in items]).to(dev)
    y = torch.stack([b for _, b in items]).to(dev)
    max_it = cfg.epochs * max(1, VOC_TRAIN_AUG // cfg.batch_size)  # the poly schedule's length on VOC
    print(f"  {cfg.arch} {cfg.encoder} (output stride {cfg.output_stride or 'default'}), {cfg.crop_size} px crops, "
          f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr} x{cfg.head_lr_mult} head, AMP "
          f"{'float16, scaler' if scaler else 'off'}", flush=True)
    scheduler = make_scheduler(optimizer, max_it, 0, "poly", cfg.poly_power)
    last: dict[str, Any] = {}

    def step():
        with autocast():
            logits = model(x)
        loss = segmentation_loss(logits, y)
        backward_step(loss, optimizer, scaler)
        scheduler.step()
        last["loss"] = loss

    m = ctx.timed(step, cfg.batch_size, allowance)
    check_finite(last["loss"], "the segmentation loss")
    return m


def part_seg_infer(ctx: Context, allowance: float) -> Rate:
    from pipeline.evaluate.inference import image_tensor, predict_probs, to_label

    e, dev = ctx.params.eval, ctx.device
    model = build_seg(ctx).eval()
    rng = np.random.default_rng(4)
    h, w = (60, 80) if ctx.args.quick else (375, 500)
    images = [img for img, _ in image_label_pairs(3, (h, h), (w, w), num_foreground(), rng)]
    amp = dev.type == "cuda"  # as stage evaluate
    print(f"  {ctx.params.seg.arch} {ctx.params.seg.encoder}, {w}x{h} images, one at a time, scales {e.scales}, "
          f"flip {e.flip}, AMP {'float16' if amp else 'off'} (no CRF)", flush=True)
    state = {"i": 0}

    def step():
        img = images[state["i"] % len(images)]
        state["i"] += 1
        with torch.no_grad():
            label = to_label(predict_probs(model, image_tensor(img, dev), e.scales, e.flip, amp=amp))
        if label.shape != img.shape[:2]:
            raise RuntimeError(f"prediction of shape {label.shape} for an image of {img.shape[:2]}")

    return ctx.timed(step, 1, allowance, warmup=min(ctx.warmup, 2))


def part_dag(ctx: Context, allowance: float) -> Rate:
    from pipeline.tools.processes import stream_repro
    from pipeline.tools.scratch import scratch_env, scratch_project

    interpreter_dir = str(Path(sys.executable).parent)
    dvc = shutil.which("dvc", path=os.pathsep.join([interpreter_dir, os.environ.get("PATH", "")]))
    if dvc is None:
        raise RuntimeError("dvc not found beside the interpreter or on PATH: run in the project's environment "
                           "(make setup)")
    if shutil.which("git") is None:
        raise RuntimeError("git not found on PATH")
    start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="aream_gpu_check_"))
    repo, log_path = scratch / "project", scratch / "dvc_repro.log"
    passed = False
    try:
        env = scratch_env(scratch)
        scratch_project(repo, env, "smoke", {"runtime": {"device": ctx.args.device}}, "gpu check: smoke profile")
        limit = max(10.0, allowance - (time.perf_counter() - start))
        print(f"  scratch project {repo} (smoke profile, runtime.device {ctx.args.device}); dvc repro, "
              f"limit {limit:.0f} s; log {log_path}", flush=True)
        run = stream_repro(dvc, repo, env, log_path, limit)
        report = repo / "reports" / "report.md"
        slowest = sorted(run.stages, key=lambda s: -s[1])[:5]
        print(f"  dvc repro: exit {run.returncode} after {run.seconds:.1f} s, {len(run.stages)} stages; slowest: "
              + ", ".join(f"{name} {sec:.0f} s" for name, sec in slowest), flush=True)
        if run.timed_out:
            raise TimeoutError(f"dvc repro stopped at the limit of {limit:.0f} s (in stage "
                               f"{run.stages[-1][0] if run.stages else '?'})")
        if run.returncode != 0:
            tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
            print("  last lines of the log:\n    " + "\n    ".join(line[-300:] for line in tail), flush=True)
            raise RuntimeError(f"dvc repro exited with {run.returncode}")
        if not report.is_file():
            raise RuntimeError("dvc repro passed but reports/report.md is missing")
        ran_on = json.loads((repo / "reports/train_cls/metrics.json").read_text()).get("device")
        want = ctx.args.device.split(":")[0]
        if ran_on != want:
            raise RuntimeError(f"train_cls ran on {ran_on!r}, not on {want!r}")
        metrics = repo / "reports" / "metrics.json"
        if metrics.is_file():
            print(f"  headline figures: {json.dumps(json.loads(metrics.read_text()))[:300]}", flush=True)
        passed = True
    finally:
        if passed and not ctx.args.keep_dag:
            shutil.rmtree(scratch, ignore_errors=True)
        elif scratch.exists():
            print(f"  scratch project kept: {scratch}", flush=True)
    return Rate()


# ----------------------------------------------------------------------------------------------
# the run


def num_foreground() -> int:
    from pipeline.data.voc import VOC_CLASSES

    return len(VOC_CLASSES) - 1


PLAN = [  # (key, title, part): the order they run in
    ("cls", "1a train_cls, no AReAM", lambda ctx, s: part_cls(ctx, s, aream_on=False)),
    ("cls", "1b train_cls + AReAM", lambda ctx, s: part_cls(ctx, s, aream_on=True)),
    ("cams", "2  CAM export", part_cams),
    ("psa", "3  AffinityNet train", part_psa),
    ("seg", "4a DeepLab-v2 train", part_seg_train),
    ("seg", "4b DeepLab-v2 infer", part_seg_infer),
    ("dag", "5  smoke DAG", part_dag),
]


def load_check_params(args: argparse.Namespace):
    """params.yaml + profiles/voc.yaml, random weights, the device; --quick shrinks every size."""
    from pipeline.config import load_params

    overrides: dict[str, Any] = {"runtime": {"device": args.device}, "classifier": {"pretrained": "none"},
                                 "psa": {"pretrained": "none"}, "seg": {"encoder_weights": "none"}}
    if args.quick:
        tiny = {"classifier": {"img_size": 64, "depth": 2}, "train_cls": {"batch_size": 2},
                "cams": {"batch_size": 2}, "psa": {"crop_size": 64, "batch_size": 2},
                "seg": {"crop_size": 64, "batch_size": 2}}
        for key, values in tiny.items():
            overrides[key] = {**overrides.get(key, {}), **values}
    return load_params(profile="voc", overrides=overrides)


def on_sigterm(signum, frame) -> None:
    raise Interrupted("SIGTERM")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"python benchmarks/{Path(__file__).name}", description=plain_doc(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="seconds for the whole run; parts shrink their timed steps to fit (default 420)")
    ap.add_argument("--dag-reserve-s", type=float, default=210.0,
                    help="seconds of the budget kept for the smoke DAG while parts 1-4 run (default 210)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 1 + 2 steps (a test of this script)")
    ap.add_argument("--skip-dag", action="store_true", help="leave out part 5, the smoke DAG")
    ap.add_argument("--parts", default=",".join(PART_KEYS),
                    help=f"comma-separated parts to run, of {','.join(PART_KEYS)} (default all)")
    ap.add_argument("--keep-dag", action="store_true", help="keep the DAG's scratch project (kept anyway on failure)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PART_KEYS))
    if unknown or not parts:
        ap.error(f"--parts: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PART_KEYS)}")
    args.parts = [p for p in PART_KEYS if p in parts and not (p == "dag" and args.skip_dag)]
    if args.budget_s <= 0:
        ap.error("--budget-s must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if MISSING is not None:
        print(f"error: the project's Python packages are missing ({MISSING}); use the project's virtualenv "
              "(make setup) or install requirements.txt", file=sys.stderr)
        return 2
    from pipeline.config import ConfigError

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        if shutil.which("nvidia-smi"):
            print(f"error: nvidia-smi is present but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no "
                  "CUDA device: a CPU-only torch build or a driver mismatch", file=sys.stderr)
            return 2
        print("no CUDA device on this machine: GPU check not run (--device cpu --quick tests the script on the "
              "CPU)")
        return 0
    try:
        device = torch.device(args.device)
        params = load_check_params(args)
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
            torch.cuda.set_device(device)
            torch.ones(1, device=device).sum().item()  # context start-up outside the first part's time
    except (ConfigError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ctx = Context(args, params, device, warmup=1 if args.quick else 3, steps=2 if args.quick else 10)
    print(f"gpu check: {describe_device(device)}; budget {args.budget_s:.0f} s; parts {','.join(args.parts)}"
          f"{'; quick sizes' if args.quick else ''}", flush=True)
    rows = [Row(Part(title, lambda s, fn=fn: fn(ctx, s), timed=key != "dag"))
            for key, title, fn in PLAN if key in args.parts]
    started, code = time.perf_counter(), 0
    try:
        signal.signal(signal.SIGTERM, on_sigterm)
        run_plan(rows, device, args.budget_s, args.dag_reserve_s if "dag" in args.parts else 0.0)
    except (Interrupted, KeyboardInterrupt) as err:
        print(f"\nstopped by {'SIGTERM (the global timeout)' if isinstance(err, Interrupted) else 'Ctrl-C'}",
              flush=True)
        code = 124 if isinstance(err, Interrupted) else 130
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the summary print (gpu_check.sh kills 15 s later)
    print(f"\n== summary ({describe_device(device)}; {time.perf_counter() - started:.0f} s)\n{summary(rows)}",
          flush=True)
    if args.skip_dag:
        print("(part 5, the smoke DAG, left out: --skip-dag)")
    failed = [r.part.title.split()[0] for r in rows if not r.passed]
    if code == 0 and failed:
        code = 1
    print("gpu check: " + ("passed" if code == 0 else f"FAILED (parts {', '.join(failed)})"), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

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
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    from pipeline.config import plain_doc
except ImportError:  # without the project's packages --help still works; main() says what is missing
    def plain_doc(doc: str | None) -> str:
        return (doc or "").strip() + "\n"

PART_KEYS = ("cls", "cams", "psa", "seg", "dag")
VOC_TRAIN_AUG = 10582  # images of VOC's train_aug split: sets the schedules' length


class Interrupted(BaseException):
    """SIGTERM (the global timeout of gpu_check.sh) or Ctrl-C: stop, print the table."""


@dataclass
class Row:
    part: str
    title: str
    status: str = "not run"
    images_per_second: float | None = None
    ms_per_step: float | None = None
    steps: int | None = None
    peak_gib: float | None = None
    wall_s: float | None = None

    @property
    def passed(self) -> bool:
        return self.status == "ok"


@dataclass
class Measure:
    images_per_second: float | None = None
    ms_per_step: float | None = None
    steps: int | None = None


@dataclass
class Context:
    args: argparse.Namespace
    params: Any
    device: Any  # torch.device
    warmup: int
    steps: int


# ----------------------------------------------------------------------------------------------
# timing


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[], Any], images_per_step: int, ctx: Context, allowance: float,
                warmup: int | None = None, steps: int | None = None) -> Measure:
    """``warmup`` untimed calls of ``step`` (fewer when half the allowance is gone), then up to ``steps`` timed
    calls, as many as the rest of ``allowance`` (seconds) holds at the last warm-up call's pace, at least one."""
    warmup = ctx.warmup if warmup is None else warmup
    steps = ctx.steps if steps is None else steps
    start = time.perf_counter()
    pace = None
    for i in range(max(1, warmup)):
        t = time.perf_counter()
        step()
        sync(ctx.device)
        pace = time.perf_counter() - t
        if i + 1 < warmup and time.perf_counter() - start + pace > allowance / 2:
            break
    left = allowance - (time.perf_counter() - start)
    n = max(1, min(steps, int(left / max(pace, 1e-6))))
    sync(ctx.device)
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync(ctx.device)
    elapsed = time.perf_counter() - t
    return Measure(n * images_per_step / elapsed, 1000 * elapsed / n, n)


def check_finite(value, what: str) -> None:
    import torch

    if not bool(torch.isfinite(value.detach()).all()):
        raise FloatingPointError(f"{what} is not finite after the timed steps")


# ----------------------------------------------------------------------------------------------
# synthetic data


def multi_hot(batch: int, classes: int, rng) -> Any:
    import torch

    targets = torch.zeros(batch, classes)
    for i in range(batch):
        targets[i, rng.choice(classes, size=int(rng.integers(1, 4)), replace=False)] = 1
    return targets


def image_label_pairs(n: int, heights: tuple[int, int], widths: tuple[int, int], classes: int, rng,
                      ignore_band: int = 4):
    """``n`` (image (H, W, 3) uint8, label (H, W) uint8) pairs, H and W drawn from the inclusive ranges: background
    0, one or two rectangles of classes 1..classes, each in a band of 255 (unsure / ignored)."""
    import numpy as np

    out = []
    for _ in range(n):
        h, w = int(rng.integers(heights[0], heights[1] + 1)), int(rng.integers(widths[0], widths[1] + 1))
        label = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            y1, x1 = y0 + int(rng.integers(h // 4, h // 2 + 1)), x0 + int(rng.integers(w // 4, w // 2 + 1))
            label[max(0, y0 - ignore_band):y1 + ignore_band, max(0, x0 - ignore_band):x1 + ignore_band] = 255
            label[y0:y1, x0:x1] = int(rng.integers(1, classes + 1))
        image = (rng.random((h, w, 3)) * 80 + (label[..., None] % 32) * 5).astype(np.uint8)
        out.append((image, label))
    return out


# ----------------------------------------------------------------------------------------------
# parts


def part_cls(ctx: Context, allowance: float, aream_on: bool) -> Measure:
    import numpy as np
    import torch

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

    m = timed_steps(step, t.batch_size, ctx, allowance)
    check_finite(last["loss"], "the train_cls loss")
    return m


def part_cams(ctx: Context, allowance: float) -> Measure:
    import numpy as np
    import torch

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

    m = timed_steps(step, cfg.batch_size, ctx, allowance, warmup=1, steps=max(1, ctx.steps // 3))
    res = out["res"][0]
    for v in cfg.variants:
        if not np.isfinite(res[v]).all():
            raise FloatingPointError(f"CAM variant {v!r} is not finite")
    return m


def part_psa(ctx: Context, allowance: float) -> Measure:
    import numpy as np
    import torch

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

    m = timed_steps(step, cfg.batch_size, ctx, allowance)
    check_finite(last["loss"], "the AffinityNet loss")
    return m


def build_seg(ctx: Context):
    import torch

    from pipeline.models.segmenter import build_segmenter

    torch.manual_seed(ctx.params.seed)
    return build_segmenter(ctx.params.seg, num_foreground() + 1).to(ctx.device)


def part_seg_train(ctx: Context, allowance: float) -> Measure:
    import numpy as np
    import torch

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

    m = timed_steps(step, cfg.batch_size, ctx, allowance)
    check_finite(last["loss"], "the segmentation loss")
    return m


def part_seg_infer(ctx: Context, allowance: float) -> Measure:
    import numpy as np
    import torch

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

    return timed_steps(step, 1, ctx, allowance, warmup=min(ctx.warmup, 2))


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the process group of ``proc`` (dvc and the stage it runs): TERM, then KILL after 10 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def part_dag(ctx: Context, allowance: float) -> Measure:
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
        rc, timed_out, stages, seconds = stream_repro(dvc, repo, env, log_path, limit)
        report = repo / "reports" / "report.md"
        slowest = sorted(stages, key=lambda s: -s[1])[:5]
        print(f"  dvc repro: exit {rc} after {seconds:.1f} s, {len(stages)} stages; slowest: "
              + ", ".join(f"{name} {sec:.0f} s" for name, sec in slowest), flush=True)
        if timed_out:
            raise TimeoutError(f"dvc repro stopped at the limit of {limit:.0f} s (in stage "
                               f"{stages[-1][0] if stages else '?'})")
        if rc != 0:
            tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
            print("  last lines of the log:\n    " + "\n    ".join(line[-300:] for line in tail), flush=True)
            raise RuntimeError(f"dvc repro exited with {rc}")
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
    return Measure()


def stream_repro(dvc: str, repo: Path, env: dict[str, str], log_path: Path, limit: float):
    """Run ``dvc repro`` in ``repo`` with its output in ``log_path``, printing each stage as it starts; stopped
    (with every stage process) after ``limit`` seconds. Returns (exit code, timed out, [(stage, seconds)],
    total seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen([dvc, "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                            start_new_session=True)
    expired = threading.Event()

    def on_limit():
        expired.set()
        stop_group(proc)

    timer = threading.Timer(limit, on_limit)
    timer.daemon = True
    timer.start()
    starts: list[tuple[str, float]] = []
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            for line in proc.stdout:
                log.write(line)
                if line.startswith("Running stage"):
                    name = line.split("'")[1] if line.count("'") >= 2 else line.strip()
                    now = time.perf_counter() - start
                    starts.append((name, now))
                    print(f"    [{now:6.1f} s] {name}", flush=True)
        rc = proc.wait()
    finally:
        timer.cancel()
        stop_group(proc)
    total = time.perf_counter() - start
    ends = [t for _, t in starts[1:]] + [total]
    stages = [(name, end - t) for (name, t), end in zip(starts, ends, strict=True)]
    return rc, expired.is_set(), stages, total


# ----------------------------------------------------------------------------------------------
# the run


def num_foreground() -> int:
    from pipeline.data.voc import VOC_CLASSES

    return len(VOC_CLASSES) - 1


PLAN: list[tuple[str, str, Callable[[Context, float], Measure]]] = [
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


def free_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_row(row: Row, fn: Callable[[Context, float], Measure], ctx: Context, allowance: float) -> None:
    import torch

    print(f"\n== {row.title} (allowance {allowance:.0f} s)", flush=True)
    start = time.perf_counter()
    try:
        free_memory(ctx.device)
        m = fn(ctx, allowance)
        row.status = "ok"
        row.images_per_second, row.ms_per_step, row.steps = m.images_per_second, m.ms_per_step, m.steps
    except Interrupted:
        row.status = "INTERRUPTED"
        raise
    except Exception as err:  # noqa: BLE001 - a part's failure is reported and the next part runs
        row.status = f"FAILED ({type(err).__name__})"
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        print(f"FAILED {row.title}: {type(err).__name__}: {first}", flush=True)
        lines = traceback.format_exc().rstrip().splitlines()
        print("  " + "\n  ".join(lines[-16:]), flush=True)
    finally:
        row.wall_s = time.perf_counter() - start
        if ctx.device.type == "cuda" and row.part != "dag":
            try:
                row.peak_gib = torch.cuda.max_memory_allocated(ctx.device) / 2**30
            except Exception:  # noqa: BLE001 - a broken CUDA context has no figure
                row.peak_gib = None
    if row.status == "ok" and row.images_per_second is not None:
        print(f"  -> {row.images_per_second:.1f} images/s, {row.ms_per_step:.1f} ms/step over {row.steps} timed steps"
              + (f", peak {row.peak_gib:.2f} GiB" if row.peak_gib is not None else ""), flush=True)


def table(rows: list[Row]) -> str:
    def num(v, fmt):
        return format(v, fmt) if v is not None else "-".rjust(int(fmt.split(".")[0].rstrip("d")))

    lines = [f"{'part':24s} {'images/s':>9s} {'ms/step':>9s} {'steps':>5s} {'peak GiB':>9s} {'wall s':>7s}  status"]
    for r in rows:
        lines.append(f"{r.title:24s} {num(r.images_per_second, '9.1f')} {num(r.ms_per_step, '9.1f')} "
                     f"{num(r.steps, '5d')} {num(r.peak_gib, '9.2f')} {num(r.wall_s, '7.1f')}  {r.status}")
    return "\n".join(lines)


def describe_device(device) -> str:
    import torch

    text = f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {device}"
    if device.type == "cuda":
        try:
            props = torch.cuda.get_device_properties(device)
            text += (f": {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}."
                     f"{props.minor}, bf16 {torch.cuda.is_bf16_supported()}")
        except Exception as err:  # noqa: BLE001 - a broken CUDA context must not hide the summary
            text += f" (properties unavailable: {type(err).__name__})"
    else:
        text += f" ({torch.get_num_threads()} threads)"
    return text


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
    try:
        import torch

        from pipeline.config import ConfigError
    except ImportError as err:
        print(f"error: the project's Python packages are missing ({err}); use the project's virtualenv "
              "(make setup) or install requirements.txt", file=sys.stderr)
        return 2
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
    budget_end = time.perf_counter() + args.budget_s
    ctx = Context(args, params, device, warmup=1 if args.quick else 3, steps=2 if args.quick else 10)
    print(f"gpu check: {describe_device(device)}; budget {args.budget_s:.0f} s; parts {','.join(args.parts)}"
          f"{'; quick sizes' if args.quick else ''}", flush=True)

    signal.signal(signal.SIGTERM, on_sigterm)
    plan = [(key, title, fn) for key, title, fn in PLAN if key in args.parts]
    rows = [Row(key, title) for key, title, _ in plan]
    reserve = args.dag_reserve_s if "dag" in args.parts else 0.0
    code = 0
    started = time.perf_counter()
    try:
        for i, (row, (_, _, fn)) in enumerate(zip(rows, plan, strict=True)):
            left = budget_end - time.perf_counter()
            if row.part == "dag":
                allowance = left
                minimum = 30.0
            else:
                later = sum(1 for r in rows[i:] if r.part != "dag")
                allowance = (left - reserve) / later
                minimum = 0.0
            if allowance <= minimum:
                row.status = "SKIPPED (out of time)"
                print(f"\n== {row.title}: skipped, {max(left, 0):.0f} s of the budget left", flush=True)
                continue
            run_row(row, fn, ctx, allowance)
    except (Interrupted, KeyboardInterrupt) as err:
        name = "SIGTERM (the global timeout)" if isinstance(err, Interrupted) else "Ctrl-C"
        print(f"\nstopped by {name}", flush=True)
        for row in rows:
            if row.status == "not run":
                row.status = "not run (stopped)"
        code = 124 if isinstance(err, Interrupted) else 130
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the summary print (gpu_check.sh kills 15 s later)
    print(f"\n== summary ({describe_device(device)}; {time.perf_counter() - started:.0f} s)\n{table(rows)}", flush=True)
    if args.skip_dag:
        print("(part 5, the smoke DAG, left out: --skip-dag)")
    failed = [r.title.split()[0] for r in rows if not r.passed]
    if code == 0 and failed:
        code = 1
    print("gpu check: " + ("passed" if code == 0 else f"FAILED (parts {', '.join(failed)})"), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

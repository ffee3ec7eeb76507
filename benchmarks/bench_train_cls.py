"""Classifier training-step throughput and peak memory, with and without the AReAM affinity loss.

    python benchmarks/bench_train_cls.py [--steps 5] [--threads 0]

Runs the toy configuration (params.yaml defaults: DeiT-Tiny layout, 96 px, patch 8, depth 6, batch 32,
20 classes) on the CPU, and the paper's configuration (DeiT-S, 448 px, patch 16, depth 12, batch 32, bf16
AMP) on CUDA when a GPU is present. Each reports images/s and peak memory for a classification-only step
(fused attention, no capture) and a full AReAM step (attention capture, entropy weights, re-activated CAM,
PAR, Eq. 16/17 labels, affinity loss), and their ratio: the AReAM overhead. Synthetic images and labels;
both variants are measured in the same process, alternating, after a warm-up step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import Params, load_params, plain_doc
from pipeline.models.vit import build_classifier
from pipeline.train.classifier import build_optimizer, step_losses
from pipeline.tools.measure import multi_hot, peak_memory_mib, reset_peak_memory, sync
from pipeline.train.harness import amp, backward_step


def _step(model, opt, images, targets, params: Params, with_aream: bool, autocast, scaler):
    step = step_losses(model, images, targets, params.aream, params.par, with_aream, autocast)
    backward_step(step.total, opt, scaler)


def bench(params: Params, num_classes: int, device: torch.device, steps: int, label: str) -> None:
    c, t = params.classifier, params.train_cls
    torch.manual_seed(0)
    model = build_classifier(c, num_classes).to(device).train()
    opt = build_optimizer(model, params.train_cls)
    autocast, scaler = amp(device, t.amp)
    images = torch.randn(t.batch_size, 3, c.img_size, c.img_size, generator=torch.Generator().manual_seed(0))
    images, targets = images.to(device), multi_hot(t.batch_size, num_classes, np.random.default_rng(0)).to(device)
    times = {False: [], True: []}
    peak = {}
    for variant in (False, True):  # warm-up (allocations, kernels)
        _step(model, opt, images, targets, params, variant, autocast, scaler)
    for variant in (False, True):
        reset_peak_memory(device, release=False)  # keep the allocator's blocks: the steps are warm
        for _ in range(steps):
            sync(device)
            start = time.perf_counter()
            _step(model, opt, images, targets, params, variant, autocast, scaler)
            sync(device)
            times[variant].append(time.perf_counter() - start)
        peak[variant] = peak_memory_mib(device)  # on the CPU monotone: the AReAM figure includes the baseline's
    print(f"\n== {label}: {c.backbone}, {c.img_size} px, patch {c.patch_size}, depth {c.depth}, "
          f"batch {t.batch_size}, {num_classes} classes, {device}"
          f"{', AMP' if device.type == 'cuda' and t.amp else ''}")
    mem = "peak GPU memory" if device.type == "cuda" else "peak process RSS"
    for variant, name in ((False, "classification only"), (True, "with AReAM")):
        med = statistics.median(times[variant])
        print(f"  {name:20s} {t.batch_size / med:8.1f} images/s  ({med * 1000:7.1f} ms/step)  {mem} "
              f"{peak[variant]:8.0f} MiB")
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"  AReAM step / classification step: {ratio:.2f}x time")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=f"python benchmarks/{Path(__file__).name}", description=plain_doc(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(overrides={"classifier": {"pretrained": "none"}})  # random weights time the same
    num_classes = params.dataset.toy.num_classes
    toy = params.model_copy(update={"runtime": params.runtime.model_copy(update={"device": "cpu"})})
    bench(toy, num_classes, torch.device("cpu"), args.steps, f"toy on CPU ({torch.get_num_threads()} threads)")
    if torch.cuda.is_available():
        paper = params.model_copy(update={
            "classifier": params.classifier.model_copy(update={"backbone": "deit_small_patch16_224", "img_size": 448,
                                                               "patch_size": 16, "depth": 12}),
            "train_cls": params.train_cls.model_copy(update={"batch_size": 32, "amp": True})})
        bench(paper, 20, torch.device("cuda"), args.steps, "paper setting on CUDA")
    else:
        print("\n(no CUDA device: the DeiT-S 448 px benchmark is skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the segmentation stages: training and inference throughput of the toy config.

1. Training throughput (images/s) of ``pipeline.train.segmenter.train_segmenter`` with the params.yaml
   ``seg`` section (toy: DeepLabV3+ / ResNet-18, 96 px crops, batch 16), 21 classes, on generated
   toy-sized images (96..144 px) held in memory: the second of two epochs (warm). The projected time
   of the configured training (``seg.epochs`` x 400 images) is printed next to the ~4 minute budget.
2. Inference throughput (images/s) of ``pipeline.evaluate.inference.predict_probs`` on toy-sized images:
   single scale without flip (the baseline), the ``eval`` section's setting, and the paper's
   multi-scale + flip setting (scales 0.5..1.5 + flip); each as a ratio of the baseline's time,
   measured in the same run. Projected time of the toy evaluation (100 val images) is printed.

On CPU, and again on CUDA (AMP) when a GPU is present. Timings on a shared machine are noisy:
CPU time per image is printed next to wall time.

Run: ``python benchmarks/bench_seg.py [--threads N] [--images N] [--device cpu|cuda|all]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params, plain_doc
from pipeline.evaluate.inference import predict_probs
from pipeline.models.segmenter import build_segmenter
from pipeline.tools.measure import image_label_pairs
from pipeline.train.segmenter import SegTrainSet, train_segmenter

NUM_CLASSES = 21
PAPER_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5]


def bench_train(cfg, device: torch.device, n: int) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of the warm second epoch."""
    cfg = cfg.model_copy(update={"epochs": 2})
    torch.manual_seed(0)
    model = build_segmenter(cfg, NUM_CLASSES).to(device)
    marks = []

    def on_epoch(epoch, metrics, state):
        marks.append((time.process_time(), metrics["images_per_second"]))

    pairs = image_label_pairs(n, (96, 144), (96, 144), NUM_CLASSES - 1, np.random.default_rng(0))
    train_segmenter(model, SegTrainSet(pairs, cfg, 0), cfg, device, on_epoch=on_epoch, progress=False)
    return marks[1][1], (marks[1][0] - marks[0][0]) / n


def bench_infer(model, images: list[torch.Tensor], scales, flip: bool, amp: bool) -> float:
    """Seconds per image (best of two passes over the images, after a warm-up pass)."""
    best = float("inf")
    for rep in range(3):
        if images[0].is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for x in images:
            predict_probs(model, x, scales, flip, amp=amp)
        if images[0].is_cuda:
            torch.cuda.synchronize()
        if rep:
            best = min(best, (time.perf_counter() - t) / len(images))
    return best


def run_device(device: torch.device, n_train: int, n_images: int) -> None:
    params = load_params(overrides={"seg": {"encoder_weights": "none"}})  # random weights time the same
    cfg = params.seg
    print(f"\n== {device} ({torch.get_num_threads()} threads) | {cfg.arch}/{cfg.encoder}, crop {cfg.crop_size}, "
          f"batch {cfg.batch_size}, {NUM_CLASSES} classes")
    ips, cpu_per_img = bench_train(cfg, device, n_train)
    projected = cfg.epochs * 400 / ips
    print(f"train: {ips:.1f} images/s ({cpu_per_img * 1000:.0f} ms CPU per image) -> toy train_seg "
          f"({cfg.epochs} epochs x 400 images) ~{projected:.0f} s (budget ~240 s)")

    torch.manual_seed(0)
    model = build_segmenter(cfg, NUM_CLASSES).to(device).eval()
    rng = np.random.default_rng(1)
    images = [torch.rand(1, 3, int(h), int(w), device=device) for h, w in rng.integers(96, 145, (n_images, 2))]
    amp = device.type == "cuda"
    with torch.no_grad():
        base = bench_infer(model, images, [1.0], False, amp)
        settings = [("eval section", params.eval.scales, params.eval.flip),
                    ("paper 5 scales + flip", PAPER_SCALES, True)]
        print(f"infer single scale, no flip: {1 / base:.1f} images/s (baseline)")
        for name, scales, flip in settings:
            t = bench_infer(model, images, scales, flip, amp)
            print(f"infer {name} (scales {scales}, flip {flip}): {1 / t:.1f} images/s, {t / base:.2f}x the "
                  f"baseline's time")
            if name == "eval section":
                print(f"  -> toy evaluate (100 val images) ~{100 * t:.0f} s of inference (budget ~30 s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python benchmarks/{Path(__file__).name}", description=plain_doc(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--train-images", type=int, default=64, help="images per training epoch")
    parser.add_argument("--images", type=int, default=12, help="images per inference pass")
    parser.add_argument("--device", default="all", help="cpu | cuda | all (cpu, plus cuda when present)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for dev in devices:
        run_device(dev, args.train_images, args.images)


if __name__ == "__main__":
    main()

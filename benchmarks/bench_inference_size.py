"""Benchmark of bounded inference: time and peak memory per image against the image's size.

The VOC profile's segmenter (DeepLab-v2 / ResNet-101, random weights: the cost does not depend on them,
21 classes) predicts one generated photo per setting, each in its own process so that the peak resident
memory (``ru_maxrss``) is that setting's alone:

- a VOC-sized image (500 x 375), single scale: the baseline;
- the same image with the paper's test-time setting (scales 0.5, 0.75, 1.0, 1.25, 1.5, flip, dense CRF),
  which is ``evaluate``'s per-image cost with ``profiles/voc.yaml`` and the paper's options;
- a 3000 x 2000 photo capped at ``--max-side`` (default 500, ``eval.max_side``), single scale, and with the
  paper's setting;
- the same photo uncapped, single scale (what ``predict`` did before the cap).

Each line prints wall seconds, CPU seconds, the child's peak RSS (its whole process: Python, torch, the
model and the image) and the ratio of wall time to the baseline's.

Run: ``python benchmarks/bench_inference_size.py [--threads N] [--max-side PX] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAPER_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5]

# (name, image height, image width, max_side (0 = no cap), scales, flip, crf)
SETTINGS = (
    ("VOC size 500x375, 1 scale", 375, 500, 500, [1.0], False, False),
    ("VOC size, 5 scales + flip + CRF", 375, 500, 500, PAPER_SCALES, True, True),
    ("3000x2000 capped, 1 scale", 2000, 3000, 500, [1.0], False, False),
    ("3000x2000 capped, 5 scales + flip + CRF", 2000, 3000, 500, PAPER_SCALES, True, True),
    ("3000x2000 uncapped, 1 scale", 2000, 3000, 0, [1.0], False, False),
)


def one(height: int, width: int, max_side: int, scales: list[float], flip: bool, crf: bool, threads: int,
        device: str) -> dict:
    """Predict one generated photo with the VOC profile's segmenter; runs in a child process."""
    import numpy as np
    import torch

    from pipeline.config import load_params
    from pipeline.evaluate.inference import cap_side, crf_refine, image_tensor, label_to_size, predict_probs, to_label
    from pipeline.models.segmenter import build_segmenter

    torch.set_num_threads(threads)
    params = load_params(profile="voc", overrides={"seg": {"encoder_weights": "none"}})
    dev = torch.device(device)
    model = build_segmenter(params.seg, 21).to(dev).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    start, cpu = time.perf_counter(), time.process_time()
    small = cap_side(image, max_side) if max_side else image
    probs = predict_probs(model, image_tensor(small, dev), scales, flip, amp=dev.type == "cuda")
    if crf:
        label = to_label(crf_refine(small, probs[0].cpu().numpy(), params.eval.crf))
    else:
        label = to_label(probs)
    label = label_to_size(label, image.shape[:2])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
            "net_input": list(small.shape[:2]), "label": list(label.shape),
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def main(argv: list[str] | None = None) -> None:
    from pipeline.config import plain_doc

    cli = argparse.ArgumentParser(prog="python benchmarks/bench_inference_size.py", description=plain_doc(__doc__),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--threads", type=int, default=2, help="torch threads in each child (default 2)")
    cli.add_argument("--max-side", type=int, default=500, help="the cap of the capped settings (default 500)")
    cli.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    cli.add_argument("--child", help=argparse.SUPPRESS)
    args = cli.parse_args(argv)
    if args.child:
        print(json.dumps(one(**json.loads(args.child))))
        return
    print(f"{'setting':44s} {'net input':>11s} {'wall s':>8s} {'cpu s':>8s} {'peak RSS':>10s} {'x base':>7s}")
    base = None
    for name, h, w, cap, scales, flip, crf in SETTINGS:
        cap = args.max_side if cap else 0
        spec = dict(height=h, width=w, max_side=cap, scales=scales, flip=flip, crf=crf, threads=args.threads,
                    device=args.device)
        proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate()
        if proc.returncode != 0:
            print(f"{name:44s} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
            continue
        res = json.loads(out.strip().splitlines()[-1])
        base = base or res["wall_s"]
        peak = f"{res['peak_rss_kb'] / 2**20:.2f} GB"
        print(f"{name:44s} {'x'.join(map(str, res['net_input'])):>11s} {res['wall_s']:8.2f} {res['cpu_s']:8.2f} "
              f"{peak:>10s} {res['wall_s'] / base:7.1f}")


if __name__ == "__main__":
    main()

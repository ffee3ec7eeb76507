"""Benchmark of stage export_cams on CPU: export throughput, and the refinement step against this machine.

1. Export throughput of ``pipeline.cams.infer.infer_cams`` (forward + refinement + TTA merge) with a randomly
   initialised classifier of the toy config (params.yaml: deit_tiny depth 6 at 96 px, patch 8 -> 12x12
   tokens), toy-sized images (96..144 px), the configured scales and flip, all four variants; also the
   classifier forward alone, so the share of this stage's own work is visible. Times are CPU seconds
   (``time.process_time``; robust to other processes on a shared machine) and wall seconds.
2. The refinement step alone (``refine_variants``: Eq. 8 entropies -> Eq. 11 weights, Eqs. 4 / 11 /
   Table III affinities, one batched Eq. 5 / 12 refinement) against the raw rates of this machine
   measured in the same run: ``torch.mm`` of the same FLOP count (compute peak) and one read pass over
   the attention tensor (memory roofline; with K = a few classes the refinement is a skinny matmul that
   reads each attention entry for ~2K FLOPs, so memory bounds it, not the FPU).

Run: ``python benchmarks/bench_export_cams.py [--threads N] [--images N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cams.aream import layer_entropy
from pipeline.cams.infer import infer_cams, refine_variants, variant_affinities
from pipeline.config import load_params, plain_doc
from pipeline.models.inputs import normalize_imagenet
from pipeline.models.vit import build_classifier
from pipeline.tools.measure import best_times
from pipeline.vocabulary import REFINED_VARIANTS


def mm_rate(flops: float, threads: int) -> tuple[float, int]:
    """GFLOP/s (per CPU-second x threads) of a square float32 torch.mm doing ``flops`` FLOPs."""
    n = max(16, int(round((flops / 2) ** (1 / 3))))
    a, b = torch.randn(n, n), torch.randn(n, n)
    cpu, _ = best_times(lambda: torch.mm(a, b), 9)
    return 2 * n**3 / (cpu / threads) / 1e9, n


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python benchmarks/{Path(__file__).name}", description=plain_doc(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = stable figures on a busy machine)")
    ap.add_argument("--images", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    th = args.threads
    p = load_params(overrides={"classifier": {"pretrained": "none"}})  # random weights time the same; no build
    cc, cams, toy = p.classifier, p.cams, p.dataset.toy
    C = toy.num_classes
    torch.manual_seed(0)
    model = build_classifier(cc, C).eval()
    L = model.depth
    first_k = min(cams.first_k, L)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (int(rng.integers(toy.min_size, toy.max_size + 1)),
                                    int(rng.integers(toy.min_size, toy.max_size + 1)), 3), dtype=np.uint8)
              for _ in range(args.images)]
    labels = [tuple(sorted(rng.choice(np.arange(1, C + 1), size=int(rng.integers(1, 4)), replace=False).tolist()))
              for _ in images]
    print(f"threads {th}; classifier {cc.backbone} depth {L}, {cc.img_size} px, patch {cc.patch_size}, {C} classes; "
          f"scales {cams.scales}, flip {cams.flip}; variants {cams.variants}; batch {cams.batch_size}")

    # 1. export throughput ------------------------------------------------------------------------
    def export_all():
        for i in range(0, len(images), cams.batch_size):
            infer_cams(model, images[i:i + cams.batch_size], labels[i:i + cams.batch_size],
                       cams.replace(first_k=first_k), img_size=cc.img_size, patch_size=cc.patch_size,
                       preprocess=normalize_imagenet)

    def forwards_only():
        from pipeline.cams.infer import input_side, resize_images
        with torch.no_grad():
            for i in range(0, len(images), cams.batch_size):
                for s in cams.scales:
                    x = normalize_imagenet(resize_images(images[i:i + cams.batch_size],
                                                         input_side(cc.img_size, s, cc.patch_size)))
                    for _ in range(2 if cams.flip else 1):
                        model(x)

    cpu, wall = best_times(export_all, 2)
    fcpu, _ = best_times(forwards_only, 2)
    n_all = toy.num_train + toy.num_val
    per_img = cpu / len(images)
    print(f"\n[export] {1000 * per_img:.1f} CPU-ms/image ({len(images) / wall:.1f} images/s wall on this machine now); "
          f"classifier forwards {100 * fcpu / cpu:.0f}% of it, this stage's own work "
          f"(resize, refinement, merge) {100 * (cpu - fcpu) / cpu:.0f}%")
    print(f"  toy export of {n_all} images: {n_all * per_img:.0f} CPU-s -> ~{n_all * per_img / th:.0f} s wall "
          f"with {th} idle core(s) (budget ~60 s)")

    # 2. refinement alone ---------------------------------------------------------------------------
    x = normalize_imagenet(torch.rand(cams.batch_size, 3, cc.img_size, cc.img_size))
    with torch.no_grad():
        attn = model(x).attn.contiguous()
    B, N = attn.shape[0], attn.shape[-1]
    refined = sum(v in REFINED_VARIANTS for v in cams.variants)
    passes = L * ("aream" in cams.variants) + refined  # refinements of K maps by an N x N matrix
    read_cpu, _ = best_times(lambda: attn.sum(), 9)
    bandwidth = attn.numel() * 4 / (read_cpu / th) / 1e9
    print(f"\n[refinement] B={B} N={N} L={L}: refine_variants(cam, attn, {list(cams.variants)}), "
          f"{passes} refinements (L inside Eq. 8, {refined} variants); one read of attn: {bandwidth:.1f} GB/s")
    for K, what in ((3, "the image's classes (K_max = 3, as exported)"), (C, f"all {C} classes")):
        cam = torch.rand(B, K, *model.train_grid)
        names = [v for v in cams.variants if v != "cam"]
        with torch.no_grad():
            rcpu, _ = best_times(lambda: refine_variants(cam, attn, cams.variants, first_k), 9)
            ecpu, _ = best_times(lambda: layer_entropy(cam, attn), 9)
            wcpu, _ = best_times(lambda: variant_affinities(cam, attn, names, first_k), 9)
        flops = 2.0 * B * K * N * N * passes
        achieved = flops / (rcpu / th) / 1e9
        peak, n = mm_rate(flops, th)
        print(f"  K={K:>2} ({what}): {1000 * rcpu / th:.2f} ms per batch, {flops / 1e6:.0f} MFLOP -> "
              f"{achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of torch.mm of the same FLOP count "
              f"(n={n}: {peak:.1f} GFLOP/s)")
        print(f"         Eq. 8 entropies (pipeline.cams.aream.layer_entropy) {100 * ecpu / rcpu:.0f}%, "
              f"the {len(names)} "
              f"layer-weighted affinities (one bmm) {100 * (wcpu - ecpu) / rcpu:.0f}%, the batched refinement and "
              f"the rest {100 * (rcpu - wcpu) / rcpu:.0f}%; the whole step = {rcpu / read_cpu:.0f} read passes "
              f"over attn (its memory traffic is ~3 passes)")


if __name__ == "__main__":
    main()

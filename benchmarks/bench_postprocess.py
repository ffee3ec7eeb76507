"""Benchmark of the post-processing methods on CPU: per-image time of PAR, dense CRF and PSA inference,
and the CRF's parallel speed-up.

1. Per-image time (best of a few runs, one thread) of each method's inference on a toy-sized image
   (120 x 120) and a VOC-sized one (500 x 375), with K = 2 foreground classes (the toy and VOC both
   average ~1.5 per image) and the params.yaml defaults: PAR (``par``), dense CRF (``crf``; also with
   21 labels, the worst case on VOC), PSA = AffinityNet forward + sparse affinity matrix + random walk
   (``psa``; randomly initialised network, same cost as a trained one). The sparse walk (t steps) is
   compared with the reference dense repeated squaring on the toy image, in the same run.
2. CRF over a batch of VOC-sized images with ``pipeline.common.parallel.map_items`` and the process runner:
   1 worker vs 2 workers (speed-up; 2 is the ideal on 2 idle cores).
3. One image's threshold-sweep counts, as ``pseudo_labels`` and the post-processing stages return them
   (``cams.sweep``'s thresholds; 21 classes as VOC, 81 as COCO): counted straight into sparse pairs
   (``sweep_counts``) vs through a dense (thresholds x classes x classes) histogram made sparse after;
   both must give the same pairs.

Run: ``python benchmarks/bench_postprocess.py [--images N]``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.common.parallel import map_items
from pipeline.config import load_params, plain_doc
from pipeline.metrics import ThresholdSweep, thresholds_from
from pipeline.models.affinitynet import AffinityNet, affinity_matrix
from pipeline.postprocess.crf import crf_scores
from pipeline.postprocess.labels import sparse_counts, sweep_counts
from pipeline.postprocess.par import par_refine
from pipeline.postprocess.psa import image_affinity, random_walk, walk_cams, walk_inputs
from pipeline.tools.measure import best_times

SIZES = {"toy 120x120": (120, 120), "VOC 500x375": (375, 500)}


def synthetic(h: int, w: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A blocky image (H, W, 3) uint8 and smooth class scores (K, H, W) in [0, 1]."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(cells, 16, 0), 16, 1)[:h, :w]
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    scores = np.stack([np.exp(-((yy - rng.random()) ** 2 + (xx - rng.random()) ** 2) / 0.05) for _ in range(k)])
    return img, scores.astype(np.float32)


def time_par(img, scores, params) -> float:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    s = torch.from_numpy(scores)[None]
    with torch.no_grad():
        return best_times(lambda: par_refine(x, s, params.par))[1]


def time_crf(img, scores, params) -> float:
    return best_times(lambda: crf_scores(img, scores, params.crf.alpha, params.crf))[1]


def time_psa(img, scores, params, net) -> tuple[float, float]:
    """Seconds of the two halves of pipeline.postprocess.psa.psa_scores: the AffinityNet forward with its
    pair affinities, and the random walk."""
    grid, aff = image_affinity(net, img, params.psa.radius)
    return (best_times(lambda: image_affinity(net, img, params.psa.radius))[1],
            best_times(lambda: walk_cams(scores, grid, aff, params.psa))[1])


def crf_job(seed: int, kernels, alpha: float, size: tuple[int, int]) -> float:
    img, scores = synthetic(*size, 2, seed)
    return float(crf_scores(img, scores, alpha, kernels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python benchmarks/{Path(__file__).name}", description=plain_doc(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12, help="images in the CRF speed-up run")
    args = parser.parse_args()
    params = load_params()
    torch.set_num_threads(1)
    cfg = params.psa
    net = AffinityNet(cfg.backbone, "none", cfg.feature_stride, cfg.embed_dim).eval()
    print(f"per-image CPU time, 1 thread, K = 2 classes; PSA = {cfg.backbone} stride {cfg.feature_stride}, "
          f"radius {cfg.radius}, t = 2^{cfg.logt}")
    print(f"{'image':>14} {'PAR':>8} {'CRF':>8} {'CRF 21':>8} {'PSA net':>8} {'PSA walk':>9}")
    for name, (h, w) in SIZES.items():
        img, scores = synthetic(h, w, 2)
        t_par = time_par(img, scores, params)
        t_crf = time_crf(img, scores, params)
        _, many = synthetic(h, w, 20)
        t_crf21 = time_crf(img, many, params)
        t_net, t_walk = time_psa(img, scores, params, net)
        print(f"{name:>14} {t_par:7.3f}s {t_crf:7.3f}s {t_crf21:7.3f}s {t_net:7.3f}s {t_walk:8.3f}s")

    # sparse t-step walk vs dense repeated squaring, same inputs (toy size)
    img, scores = synthetic(120, 120, 2)
    with torch.no_grad():
        emb = net(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0]
        aff = affinity_matrix(emb, cfg.radius)
        cams = walk_inputs(torch.from_numpy(scores), tuple(emb.shape[-2:]), cfg.alpha)
        t_sparse = best_times(lambda: random_walk(cams, aff, cfg.beta, cfg.logt))[1]
        dense = aff.to_dense()
        t_dense = best_times(lambda: random_walk(cams, dense, cfg.beta, cfg.logt), repeat=1)[1]
    n = emb.shape[-1] * emb.shape[-2]
    print(f"random walk on the toy image (N = {n} cells): sparse {2**cfg.logt} steps {t_sparse * 1e3:.1f} ms, "
          f"dense {cfg.logt} squarings {t_dense * 1e3:.1f} ms ({t_dense / t_sparse:.1f}x slower)")

    # CRF parallel speed-up through map_items (process runner), same run
    fn = functools.partial(crf_job, kernels=params.crf, alpha=params.crf.alpha,
                           size=SIZES["VOC 500x375"])
    seeds = list(range(args.images))
    times = {}
    for workers in (1, 2):
        runtime = params.runtime.model_copy(update={"task_runner": "process", "workers": workers})
        map_items(fn, seeds[:2], runtime, desc="warm-up")
        t = time.perf_counter()
        map_items(fn, seeds, runtime, desc=f"crf x{workers}")
        times[workers] = time.perf_counter() - t
    print(f"CRF on {args.images} VOC-sized images: 1 worker {times[1]:.2f} s ({times[1] / args.images:.3f} s/image), "
          f"2 workers {times[2]:.2f} s; speed-up {times[1] / times[2]:.2f}x")

    # one image's sweep counts: straight to sparse pairs vs through the dense histogram
    thresholds = thresholds_from(params.cams.sweep)
    for name, (h, w) in SIZES.items():
        for classes in (21, 81):
            rng = np.random.default_rng(0)
            keys = np.array([3, classes - 1])
            scores = rng.random((2, h, w)).astype(np.float32)
            target = rng.choice([0, 3, classes - 1, 255], size=(h, w))

            def dense():
                sweep = ThresholdSweep(thresholds, classes)
                sweep.add(scores, keys, target)
                return sparse_counts(sweep.hist)

            direct = sweep_counts(scores, keys, target, thresholds, classes)
            assert all(np.array_equal(a, b) for a, b in zip(direct, dense())), "the two ways disagree"
            t_dense = best_times(dense)[1]
            t_direct = best_times(lambda: sweep_counts(scores, keys, target, thresholds, classes))[1]
            print(f"sweep counts, {name}, {classes} classes: direct {t_direct * 1e3:.2f} ms, through the dense "
                  f"histogram {t_dense * 1e3:.2f} ms ({t_dense / t_direct:.1f}x)")


if __name__ == "__main__":
    main()

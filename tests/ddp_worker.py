"""One trainer of pipeline/ on tiny data, for ``torchrun --nproc_per_node 2`` (gloo on the CPU).

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py TRAINER OUT [N]
      (TRAINER: classifier | segmenter | affinitynet | pretrain)
    python tests/ddp_worker.py TRAINER OUT [N]          # the same training in one process

N samples (default 9: an odd count the order must pad). Each process writes OUT/rank<r>.json with a digest
of its final parameters and OUT/rank<r>.npy with the parameters themselves; tests/train/test_ddp.py checks that
both processes finished (an uneven split of the samples would hang the last step), agree, and stay close
to the one-process run.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent  # run as a script: the project onto the path first
sys.path.insert(0, str(ROOT))

from pipeline.common.device import seed_everything  # noqa: E402
from pipeline.config import defaults, load_params  # noqa: E402
from pipeline.data.manifest import Sample  # noqa: E402
from pipeline.train.harness import setup_distributed, teardown, unwrap  # noqa: E402

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

COLOURS = np.array([[40, 40, 40], [230, 30, 30], [30, 230, 30], [30, 30, 230]], np.uint8)


def squares(n: int, size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grey images with one coloured square of class 1..3 and its label map."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        label = np.zeros((size, size), np.uint8)
        y, x = rng.integers(0, size // 2, 2).tolist()
        label[y:y + size // 3, x:x + size // 3] = 1 + i % 3
        out.append((COLOURS[label] + rng.integers(0, 20, (size, size, 3)).astype(np.uint8), label))
    return out


def digest(model: torch.nn.Module) -> str:
    """sha256 of the parameters (BatchNorm running statistics are per process: DDP broadcasts rank 0's
    before every forward, and rank 0 writes the model)."""
    h = hashlib.sha256()
    for key, value in sorted(unwrap(model).named_parameters()):
        h.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def flat_parameters(model: torch.nn.Module) -> np.ndarray:
    return np.concatenate([v.detach().cpu().double().numpy().ravel()
                           for _, v in sorted(unwrap(model).named_parameters())])


def main(which: str, out: Path, n: int = 9) -> None:
    torch.set_num_threads(1)
    seed_everything(0)  # the same initial weights in every run, as the stages seed before building
    dist, device = setup_distributed("cpu")
    data = squares(n)  # 9 samples over 2 processes: the order must be padded to 10
    extra: dict = {}
    if which == "classifier":
        from PIL import Image

        from pipeline.train.classifier import train_classifier

        samples = []
        for i, (image, label) in enumerate(data):
            path = out / f"img{i}.png"
            if dist.is_main:
                Image.fromarray(image).save(path)
            samples.append(Sample(f"img{i}", str(path), None, tuple(sorted(set(np.unique(label).tolist()) - {0}))))
        if dist.world_size > 1:
            torch.distributed.barrier()
        params = load_params(profile="scratch", overrides={"runtime": {"device": "cpu"},
                               "classifier": {"img_size": 32, "patch_size": 8, "depth": 2, "cam_layers": 1},
                               "train_cls": {"epochs": 2, "batch_size": 4, "warmup_epochs": 1},
                               "aream": {"start_epoch": 1, "par_scale": 1.0},
                               "par": {"dilations": [1, 2], "iterations": 2}})
        result = train_classifier(params.classifier, params.train_cls, params.aream, params.par, samples,
                                  samples[:4], 3, device, seed=0, dist=dist)
        model, finished = result.model, result.finished
    elif which == "segmenter":
        from pipeline.models.segmenter import build_segmenter
        from pipeline.train.harness import wrap
        from pipeline.train.segmenter import SegTrainSet, train_segmenter

        cfg = SCRATCH.seg.replace(decoder_channels=16, crop_size=32, batch_size=4, epochs=2,
                                     scale_range=[0.75, 1.25])
        model = build_segmenter(cfg, 4)
        history = train_segmenter(wrap(model, dist, device), SegTrainSet(data, cfg, 0), cfg, device, dist=dist,
                                  progress=False)
        finished = len(history) == cfg.epochs
    elif which == "pretrain":
        from pipeline.data.corpus import corpus_classes, render_chunk
        from pipeline.train.pretrain import pretrain_vit

        corpus = render_chunk(("train", 0, 9), corpus_classes(3), seed=0, size=24)
        cfg = SCRATCH.pretrain.replace(num_classes=3, image_size=24, epochs=2, batch_size=4, warmup_epochs=1)
        arch = SCRATCH.classifier.replace(patch_size=8, depth=2)
        model, history = pretrain_vit(arch, cfg, corpus, corpus, 3, device, dist=dist, progress=False)
        finished = len(history) == cfg.epochs
    else:
        from pipeline.train.affinity import train_affinitynet
        from pipeline.train.harness import gather_shards

        # train_psa's confident regions: every process labels every 2nd image, all get the whole list
        expected = [i * i for i in range(9)]
        extra["gathered"] = gather_shards(expected[dist.rank::dist.world_size], 9, dist) == expected
        cfg = SCRATCH.psa.replace(crop_size=32, epochs=2, batch_size=4, embed_dim=16, radius=3)
        model, history = train_affinitynet([d[0] for d in data], [d[1] for d in data], cfg, device, seed=0,
                                           dist=dist, progress=False)
        finished = len(history) == cfg.epochs
    (out / f"rank{dist.rank}.json").write_text(json.dumps({"finished": finished, "digest": digest(model), **extra}))
    np.save(out / f"rank{dist.rank}.npy", flat_parameters(model))
    teardown(dist)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), *(int(a) for a in sys.argv[3:4]))

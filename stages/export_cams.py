"""Stage `export_cams`: CAMs of every train and val image, four refinement variants, and their quality.

Writes ``data/cams/<id>.npz`` (contract in :mod:`pipeline.cams`): ``cam`` (non-refined), ``avg``
(Eqs. 4-5: the paper's inference-time refinement, also for an AReAM-trained classifier), ``aream``
(Eqs. 7-12 with re-activation weights computed per image) and ``first_k`` (first K layers' affinity),
all from one forward pass per (scale, flip).

Resumable: an image whose npz exists is skipped (files are written atomically, so an existing one is
complete). ``data/cams/_params.json`` holds a hash of what shaped the files (the ``cams`` parameters
that change them, the classifier file and the manifest); when it differs, the old files are wiped.

Quality (Table I, "P.P. x" column): for each variant, the background-threshold sweep mIoU (``cams.sweep``)
of the stored CAMs against the masks of the train split (images without a mask are skipped) ->
``reports/cams/metrics.json`` ({variant: {best_miou, best_threshold}}) and ``reports/cams/sweep.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pipeline.cams import infer_cams, load_cam_scores, model_geometry, model_preprocess, pack_cams
from pipeline.config import Cams, ConfigError, Params, Runtime
from pipeline.data.manifest import Sample, load_manifest
from pipeline.io import DataError, read_label_png, read_npz, read_rgb, write_bytes, write_json, write_npz
from pipeline.metrics import ThresholdSweep, thresholds_from
from pipeline.parallel import chunked, map_items, num_workers
from stages._classifier import load_trained_classifier
from stages._common import CAMS, CLASSIFIER, MANIFEST, REPORTS, stage_main

MODEL = CLASSIFIER / "model.pt"
TAG_FILE = "_params.json"
METRICS = REPORTS / "cams" / "metrics.json"
SWEEP_CSV = REPORTS / "cams" / "sweep.csv"


class ImageList(Dataset):
    """(index, (H, W, 3) uint8) for each sample; the DataLoader reads images in its workers."""

    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        return i, read_rgb(self.samples[i].image)


def _collate(items: list) -> list:
    return items


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def export_tag(cfg: Cams, model_digest: str, manifest_digest: str) -> dict[str, Any]:
    """What shapes the stored files (batch size, splits and the sweep do not)."""
    return {"variants": list(cfg.variants), "first_k": cfg.first_k, "scales": list(cfg.scales),
            "flip": cfg.flip, "stride": cfg.stride, "normalize": cfg.normalize, "model": model_digest,
            "manifest": manifest_digest}


def prepare_out_dir(out_dir: Path, tag: dict[str, Any], keep_ids: set[str]) -> int:
    """Wipe stale files: every npz when the tag differs (or is missing), else npz of unselected ids.

    Returns the number of files removed; writes the tag.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tag_path = out_dir / TAG_FILE
    try:
        old = json.loads(tag_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        old = None
    removed = 0
    for p in sorted(set(out_dir.glob("*.npz")) | set(out_dir.glob(".*.npz*"))):  # + atomic-write leftovers
        if old != tag or p.name.startswith(".") or p.stem not in keep_ids:
            p.unlink(missing_ok=True)
            removed += 1
    if old != tag:
        write_json(tag_path, tag)
    return removed


def export_cams(model: Any, samples: Sequence[Sample], out_dir: Path, cfg: Cams, *, img_size: int, patch_size: int,
                device: torch.device, preprocess: Callable | None = None, loader_workers: int = 0,
                amp: bool = True) -> int:
    """Write ``out_dir/<id>.npz`` for every sample whose file is missing; returns how many were written."""
    todo = [s for s in samples if not (out_dir / f"{s.id}.npz").exists()]
    if not todo:
        return 0
    loader = DataLoader(ImageList(todo), batch_size=cfg.batch_size, shuffle=False, num_workers=loader_workers,
                        collate_fn=_collate)
    bar = tqdm(total=len(todo), desc="export_cams", unit="img")
    written = 0
    for batch in loader:
        idx = [i for i, _ in batch]
        images = [img for _, img in batch]
        results = infer_cams(model, images, [todo[i].labels for i in idx], img_size=img_size, patch_size=patch_size,
                             scales=cfg.scales, flip=cfg.flip, variants=cfg.variants, first_k=cfg.first_k,
                             stride=cfg.stride, device=device, preprocess=preprocess, amp=amp,
                             normalize=cfg.normalize)
        for i, res in zip(idx, results):
            write_npz(out_dir / f"{todo[i].id}.npz", **pack_cams(res, cfg.variants))
            written += 1
        bar.update(len(batch))
    bar.close()
    return written


def _sweep_chunk(samples: list[Sample], cam_dir: Path, variants: tuple[str, ...], thresholds: np.ndarray,
                 num_classes: int) -> np.ndarray:
    """Summed sweep histograms (V, T + 1, C + 1, C + 1) of a chunk of images (picklable for map_items)."""
    if multiprocessing.parent_process() is not None:
        # a forked worker must not use the OpenMP pool it inherited from the parent (it hangs)
        torch.set_num_threads(1)
    sweeps = [ThresholdSweep(thresholds, num_classes + 1) for _ in variants]
    for s in samples:
        npz = read_npz(cam_dir / f"{s.id}.npz")
        mask = read_label_png(s.mask)
        for sweep, v in zip(sweeps, variants):
            try:
                scores = load_cam_scores(npz, v)
            except KeyError as err:
                raise DataError(f"{cam_dir / (s.id + '.npz')}: {err.args[0]}") from None
            if scores.shape[1:] != mask.shape:
                raise DataError(f"{s.mask}: mask {mask.shape} and CAM size {scores.shape[1:]} differ")
            sweep.add(scores, npz["keys"], mask)
    return np.stack([sw.hist for sw in sweeps])


def cam_quality(samples: Sequence[Sample], cam_dir: Path, variants: Sequence[str], sweep: Sequence[float],
                num_classes: int, runtime: Runtime) -> dict[str, dict]:
    """{variant: ThresholdSweep.result()} over the samples that have a mask."""
    with_mask = [s for s in samples if s.mask is not None]
    thresholds = thresholds_from(sweep)
    variants = tuple(variants)
    if not with_mask:
        return {v: {"thresholds": thresholds.tolist(), "miou": [float("nan")] * len(thresholds),
                    "best_threshold": None, "best_miou": None, "num_images": 0} for v in variants}
    sweeps = {v: ThresholdSweep(thresholds, num_classes + 1) for v in variants}
    fn = partial(_sweep_chunk, cam_dir=cam_dir, variants=variants, thresholds=thresholds, num_classes=num_classes)
    for hist in map_items(fn, chunked(with_mask, num_workers(runtime) * 4), runtime, desc="cam quality"):
        for v, h in zip(variants, hist):
            sweeps[v].hist += h
    out = {v: s.result() for v, s in sweeps.items()}
    for v in out:
        out[v]["num_images"] = len(with_mask)
    return out


def sweep_csv(results: dict[str, dict]) -> str:
    """CSV text: threshold, then one mIoU column per variant."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    variants = list(results)
    writer.writerow(["threshold", *variants])
    thresholds = results[variants[0]]["thresholds"]
    for i, t in enumerate(thresholds):
        writer.writerow([f"{t:g}", *(f"{results[v]['miou'][i]:.6f}" for v in variants)])
    return buf.getvalue()


def run(params: Params) -> None:
    cfg = params.cams
    manifest = load_manifest(MANIFEST)
    model, device = load_trained_classifier(params)
    img_size, patch, depth = model_geometry(model, params.classifier.img_size, params.classifier.patch_size)
    if depth and "first_k" in cfg.variants and cfg.first_k > depth:
        raise ConfigError(f"cams.first_k: {cfg.first_k} exceeds the classifier's {depth} layers")

    samples: dict[str, Sample] = {}
    for split in cfg.splits:
        try:
            for s in manifest.split(split):
                samples.setdefault(s.id, s)
        except DataError as err:
            raise ConfigError(f"cams.splits: {err}") from None
    tag = export_tag(cfg, file_digest(MODEL), file_digest(MANIFEST))
    removed = prepare_out_dir(CAMS, tag, set(samples))
    if removed:
        print(f"removed {removed} stale CAM files from {CAMS}")
    written = export_cams(model, list(samples.values()), CAMS, cfg, img_size=img_size, patch_size=patch,
                          device=device, preprocess=model_preprocess(model),
                          loader_workers=params.runtime.loader_workers)
    print(f"exported {written} CAM files ({len(samples) - written} already present) to {CAMS}")

    train = [s for s in manifest.split("train") if s.id in samples]  # the exported train images
    results = cam_quality(train, CAMS, cfg.variants, cfg.sweep, manifest.num_classes, params.runtime)
    metrics: dict[str, Any] = {
        v: {"best_miou": None if r["best_miou"] is None else round(r["best_miou"], 6),
            "best_threshold": r["best_threshold"]} for v, r in results.items()}
    metrics["num_images"] = next(iter(results.values()))["num_images"]
    write_json(METRICS, metrics)
    write_bytes(SWEEP_CSV, sweep_csv(results).encode())
    if not metrics["num_images"]:
        print("no train image has a mask: CAM quality not measured")
    for v, m in metrics.items():
        if isinstance(m, dict) and m["best_miou"] is not None:
            print(f"{v:>8}: mIoU {100 * m['best_miou']:.1f} at background threshold {m['best_threshold']:.2f}")


if __name__ == "__main__":
    stage_main(run)

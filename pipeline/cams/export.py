"""Exporting CAMs to files and measuring them (stage ``export_cams``), as a library.

:func:`export_cams` writes ``<out_dir>/<id>.npz`` (contract in :mod:`pipeline.cams.infer`) for every image whose
file is missing, so an interrupted export run by hand continues (under ``dvc repro`` DVC empties the folder
first); :func:`prepare_out_dir` wipes files made under another :func:`export_tag` (cams parameters that
change the files, the classifier file, the manifest). :func:`cam_quality` is the background-threshold sweep
mIoU of the stored CAMs against the masks (Table I), in parallel over images; :func:`sweep_csv` its curve.
"""


from __future__ import annotations

import csv
import io
import json
import multiprocessing
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.cams.infer import infer_cams, load_cam_scores, pack_cams
from pipeline.common.io import DataError, read_label_png, read_npz, read_rgb, write_json, write_npz
from pipeline.common.grouping import split_evenly
from pipeline.common.parallel import map_items, num_workers
from pipeline.common.progress import progress
from pipeline.config import Cams, Runtime
from pipeline.data.manifest import Sample
from pipeline.metrics import ThresholdSweep, thresholds_from

TAG_FILE = "_params.json"


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
    written = 0
    for batch in progress(loader, desc=f"export_cams ({len(todo)} images, batches)", total=len(loader)):
        idx = [i for i, _ in batch]
        images = [img for _, img in batch]
        results = infer_cams(model, images, [todo[i].labels for i in idx], cfg, img_size=img_size,
                             patch_size=patch_size, device=device, preprocess=preprocess, amp=amp)
        for i, res in zip(idx, results):
            write_npz(out_dir / f"{todo[i].id}.npz", **pack_cams(res, cfg.variants))
            written += 1
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
    for hist in map_items(fn, split_evenly(with_mask, num_workers(runtime) * 4), runtime, desc="cam quality"):
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

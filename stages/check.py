"""Stage `check`: validate params.yaml and the inputs outside the repository before any stage runs.

DVC deletes a stage's outputs before its command starts, so a stage that only then finds a bad parameter
or a broken dataset has already lost its previous results. This stage runs first: it depends on every key
of params.yaml and on ``${dataset.root}``, every stage after ``generate_toy`` (which writes the default,
toy root) depends on its output, and it fails before anything downstream is touched. It checks

- every key of params.yaml (types, ranges, unknown keys: :mod:`pipeline.config`), ``runtime`` included;
- the dataset root: its layout, the split lists (with a hint for SBD's ``train_aug``), that every listed
  image and every val mask exists. Files are not decoded here: stage ``prepare`` does that;
- the starting weights: a keyword, a file under ``weights/`` (:func:`pipeline.config.weights_file`), or one
  of the files later stages write there (``pipeline.vocabulary.BUILT_WEIGHTS``), for the networks it fits
  (:func:`pipeline.models.weights.check_weight_params`).

Its output ``data/checked.json`` has the same bytes whenever the check passes, so a valid edit reruns only
the stages whose own params or inputs changed.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.common.io import DataError, write_json
from pipeline.config import TOY_ROOT, ConfigError, Dataset, Params, Runtime
from pipeline.models.weights import check_weight_params
from stages._common import CHECKED, stage_main

TOY_SPLITS = ("train", "val", "trainval")

def check_dataset_params(ds: Dataset) -> None:
    """The dataset settings that need no file access."""
    if ds.name in ("voc", "coco") and Path(ds.root) == Path(TOY_ROOT):
        what = "VOCdevkit/VOC2012" if ds.name == "voc" else "the COCO folder (images + annotations/)"
        raise ConfigError(f"dataset.root: set it for dataset.name: {ds.name} (the path to {what}); "
                          f"{TOY_ROOT} is the generated toy set")
    root = Path(ds.root)
    if ds.root.startswith("~") or (not root.is_absolute() and ".." in root.parts):
        raise ConfigError(f"dataset.root: {ds.root!r}: give an absolute path (DVC depends on it as written: it "
                          "does not expand ~, and a relative path leaving the project breaks in the workspaces of "
                          "dvc exp run --temp / --queue)")
    allowed = {"toyvoc": TOY_SPLITS, "coco": ("train", "val")}.get(ds.name)
    for key in ("train_split", "val_split"):
        value = getattr(ds, key)
        if allowed and value not in allowed:
            raise ConfigError(f"dataset.{key}: {value!r} is not a split of {ds.name} "
                              f"(choose from {', '.join(allowed)})")


def check_voc_root(ds: Dataset) -> int:
    """Layout, split lists and file presence of a VOC-layout root; returns the number of images listed."""
    from pipeline.data.voc import resolve_voc_root, voc_items

    root = resolve_voc_root(ds.root)
    count = 0
    for key in ("train_split", "val_split"):
        split = getattr(ds, key)
        try:
            items = voc_items(root, split, ds.max_images)
        except DataError as err:
            hint = ""
            if split == "train_aug":
                hint = (" (train_aug is SBD's 10,582-image list: add ImageSets/Segmentation/train_aug.txt and "
                        "SegmentationClassAug/, or use plain VOC 2012 with -S dataset.train_split=train)")
            raise DataError(f"dataset.{key}: {err}{hint}") from None
        missing = [str(it.image) for it in items if not it.image.is_file()]
        if missing:
            raise DataError(f"{root}: {len(missing)} images of split {split!r} are missing (first: {missing[0]})")
        if key == "val_split":
            unmasked = [it.id for it in items if it.mask is None]
            if unmasked:
                raise DataError(f"{root}: val split {split!r} needs masks for evaluation; {len(unmasked)} "
                                f"images have none (first: {unmasked[0]})")
        count += len(items)
    return count


def check_coco_root(ds: Dataset) -> None:
    root = Path(ds.root)
    if not root.is_dir():
        raise DataError(f"{root}: COCO root not found (dataset.root)")
    for split in (ds.train_split, ds.val_split):
        for kind in ("images", "annotations"):
            path = root / getattr(ds.coco, f"{split}_{kind}")
            if not (path.is_dir() if kind == "images" else path.is_file()):
                raise DataError(f"{path}: not found (dataset.coco.{split}_{kind} under dataset.root)")


def check_processes(runtime: Runtime) -> None:
    """runtime.nproc DDP processes need as many GPUs when the training stages run on CUDA (one each)."""
    import torch

    from pipeline.common.device import resolve_device

    try:
        device = resolve_device(runtime.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if device.type == "cuda" and runtime.nproc > torch.cuda.device_count():
        raise ConfigError(f"runtime.nproc: {runtime.nproc} processes, but {torch.cuda.device_count()} CUDA "
                          "device(s): one process per GPU (or runtime.device: cpu for gloo on the CPU)")


def run(params: Params) -> None:
    ds = params.dataset
    check_dataset_params(ds)
    check_weight_params(params)
    check_processes(params.runtime)
    if ds.name == "coco":
        check_coco_root(ds)
        what = "COCO root"
    else:
        what = f"{check_voc_root(ds)} images listed"
    write_json(CHECKED, {"params.yaml": "valid", "dataset.root": "present", "weights": "present"})
    print(f"check: params.yaml valid; {ds.name} at {ds.root}: {what}", flush=True)


if __name__ == "__main__":
    stage_main(run)

"""Stage `prepare`: build data/prepared/ (manifest.json, summary.json and any generated files).

- ``toyvoc``: read the toy dataset that stage generate_toy wrote (``dataset.root``, VOC layout) through
  the VOC reader, so the toy path exercises the real one.
- ``voc``: check every image and mask of the two splits under ``dataset.root`` and reference them in
  place (absolute paths).
- ``coco``: rasterise the instance annotations into data/prepared/masks/<split>/<id>.png.

The manifest's splits are always ``train`` and ``val`` (``dataset.train_split`` / ``val_split`` pick
the source lists). ``summary.json`` carries a sha256 of every referenced image and mask, so a file
changed in place changes this stage's output. The folder is built under a temporary name and swapped in
only when everything succeeded, so a failing run (a corrupt image) leaves an earlier data/prepared
untouched; DVC itself deletes it before the command runs, which is why stage ``check`` validates first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pipeline.common.digests import file_sha256
from pipeline.common.io import DataError, atomic_dir, write_json
from pipeline.common.parallel import map_items
from pipeline.config import Dataset, Params, Runtime
from pipeline.data.coco import coco_classes, coco_items, load_coco_json, write_coco_sample
from pipeline.data.manifest import Manifest, manifest_summary
from pipeline.data.toyvoc import toy_class_names
from pipeline.data.voc import VOC_CLASSES, read_voc
from stages._common import MANIFEST, PREPARED, stage_main
from stages.check import check_dataset_params

SUMMARY = PREPARED / "summary.json"


def _mapper(runtime: Runtime) -> Callable[[Callable, list, str], list]:
    return lambda fn, items, desc: map_items(fn, items, runtime, desc)


def _file_digest(path: str | None) -> str:
    return "-" if path is None else file_sha256(path)


def content_digest(manifest: Manifest, runtime: Runtime, built: Path) -> str:
    """sha256 over the bytes of every image and mask the manifest references, in manifest order. It goes
    into summary.json, so a file fixed in place under ``dataset.root`` changes data/prepared (and with it
    what every later stage and every resume tag sees), even where the manifest's paths stay the same.
    ``built`` is the folder being built, where this run's own files (COCO masks) still are."""
    def source(p: str | None) -> str | None:  # files this run writes (COCO masks) are still in ``built``
        inside = p is not None and Path(p).is_relative_to(PREPARED)
        return str(built / Path(p).relative_to(PREPARED)) if inside else p

    paths = [source(p) for samples in manifest.splits.values() for s in samples for p in (s.image, s.mask)]
    h = hashlib.sha256()
    for digest in map_items(_file_digest, paths, runtime, "hashing data"):
        h.update(digest.encode())
    return h.hexdigest()


def prepare_toyvoc(ds: Dataset, runtime: Runtime) -> Manifest:
    """The toy set written by stage generate_toy (or any VOC-layout root with the toy's class names)."""
    names = toy_class_names(ds.toy.num_classes)
    map_fn = _mapper(runtime)
    splits = {split: tuple(read_voc(ds.root, source, names, ds.max_images, map_fn))
              for split, source in (("train", ds.train_split), ("val", ds.val_split))}
    return Manifest("toyvoc", tuple(names), splits)


def prepare_voc(ds: Dataset, runtime: Runtime) -> Manifest:
    map_fn = _mapper(runtime)
    splits = {}
    for split, source in (("train", ds.train_split), ("val", ds.val_split)):
        splits[split] = tuple(read_voc(Path(ds.root).absolute(), source, VOC_CLASSES, ds.max_images, map_fn))
    missing = [s.id for s in splits["val"] if s.mask is None]
    if missing:
        raise DataError(f"{ds.root}: val split {ds.val_split!r} needs masks for evaluation; "
                        f"{len(missing)} images have none (first: {missing[0]})")
    return Manifest("voc", VOC_CLASSES, splits)


def prepare_coco(ds: Dataset, runtime: Runtime, tmp: Path) -> Manifest:
    root = Path(ds.root).absolute()
    if not root.is_dir():
        raise DataError(f"{root}: COCO root not found (dataset.root)")
    map_fn = _mapper(runtime)
    names: list[str] | None = None
    splits = {}
    for split, source in (("train", ds.train_split), ("val", ds.val_split)):
        ann_path = root / getattr(ds.coco, f"{source}_annotations")
        data = load_coco_json(ann_path)
        split_names, cat_index = coco_classes(data)
        if names is not None and split_names != names:
            raise DataError(f"{ann_path}: its categories differ from the other split's annotation file")
        names = split_names
        drop = split == "train" or not ds.coco.keep_unlabelled
        items = coco_items(data, root / getattr(ds.coco, f"{source}_images"), cat_index, drop, str(ann_path))
        del data
        if ds.max_images:
            items = items[:ds.max_images]
        if not items:
            raise DataError(f"{ann_path}: no usable images in split {source!r}")
        fn = partial(write_coco_sample, out_dir=str(tmp / "masks" / split), final_dir=str(PREPARED / "masks" / split))
        splits[split] = tuple(map_fn(fn, items, f"coco {split} masks"))
    return Manifest("coco", tuple(names or ()), splits)


def run(params: Params) -> Manifest:
    ds = params.dataset
    check_dataset_params(ds)
    with atomic_dir(PREPARED) as tmp:
        if ds.name == "toyvoc":
            manifest = prepare_toyvoc(ds, params.runtime)
        elif ds.name == "voc":
            manifest = prepare_voc(ds, params.runtime)
        else:
            manifest = prepare_coco(ds, params.runtime, tmp)
        for name in ("train", "val"):
            if not manifest.splits.get(name):
                raise DataError(f"{ds.name}: split {name!r} is empty")
        write_json(tmp / MANIFEST.name, manifest.to_dict())
        digest = content_digest(manifest, params.runtime, tmp)
        write_json(tmp / SUMMARY.name, {**manifest_summary(manifest), "content_sha256": digest})
    sizes = ", ".join(f"{k}: {len(v)}" for k, v in manifest.splits.items())
    print(f"prepared {ds.name}: {manifest.num_classes} classes, {sizes} -> {MANIFEST}")
    return manifest


if __name__ == "__main__":
    stage_main(run)

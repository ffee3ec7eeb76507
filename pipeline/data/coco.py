"""MS COCO (2014 or 2017) instance annotations -> semantic label maps and image-level labels.

- Classes: the categories of the annotation file in official order (ascending category id) map to
  1..80; with background, 81 classes. Names come from the file.
- Semantic mask of an image (:func:`rasterize`): crowd regions are painted 255 (ignore) first; then the
  non-crowd instances in order of decreasing pixel area, so where instances overlap the *smaller one
  wins* (a cup on a dining table keeps its pixels); ties keep annotation order. Instance pixels
  override crowd ignore. Polygons, uncompressed and compressed RLE are all rasterised with pycocotools.
- Image-level labels: the categories of the non-crowd annotations.
- Images without labels are dropped from training. The paper's counts (82,081 train and 40,137 val
  images of COCO 2014) are the images with annotations, so they are dropped from val too unless
  ``keep_unlabelled`` is set (they then evaluate as all-background images).

COCO has no mask files: stage ``prepare`` writes the rasterised masks as VOC-palette PNGs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.data.manifest import Sample
from pipeline.data.voc import check_image
from pipeline.common.io import DataError, read_json, write_label_png
from pipeline.vocabulary import IGNORE_INDEX


@dataclass(frozen=True)
class CocoAnn:
    """One annotation: ``category`` is the class index (1..C), ``segmentation`` the raw COCO value."""

    category: int
    iscrowd: bool
    segmentation: Any


@dataclass(frozen=True)
class CocoItem:
    id: str
    image: Path
    height: int
    width: int
    anns: tuple[CocoAnn, ...]

    @property
    def labels(self) -> tuple[int, ...]:
        """Sorted classes of the non-crowd annotations."""
        return tuple(sorted({a.category for a in self.anns if not a.iscrowd}))


def load_coco_json(path: str | Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: not a COCO instances file (needs images, annotations and categories)")
    if not data["categories"]:
        raise DataError(f"{path}: lists no categories")
    return data


def coco_classes(data: dict) -> tuple[list[str], dict[int, int]]:
    """``["background", name(cat 1), ...]`` in ascending category id, and category id -> index 1..C."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    return ["background", *[c["name"] for c in cats]], {c["id"]: i + 1 for i, c in enumerate(cats)}


def coco_items(data: dict, images_dir: str | Path, cat_index: dict[int, int], drop_unlabelled: bool,
               source: str = "annotations") -> list[CocoItem]:
    """Images of an instances file, in file order, with their annotations (no file is opened)."""
    per_image: dict[int, list[CocoAnn]] = {}
    for ann in data["annotations"]:
        if ann.get("category_id") not in cat_index:
            raise DataError(f"{source}: annotation {ann.get('id')} has unknown category_id "
                            f"{ann.get('category_id')!r}")
        per_image.setdefault(ann["image_id"], []).append(
            CocoAnn(cat_index[ann["category_id"]], bool(ann.get("iscrowd", 0)), ann.get("segmentation", [])))
    items = []
    for img in data["images"]:
        item = CocoItem(Path(img["file_name"]).stem, Path(images_dir) / img["file_name"], int(img["height"]),
                        int(img["width"]), tuple(per_image.get(img["id"], ())))
        if item.labels or not drop_unlabelled:
            items.append(item)
    return items


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygon list, uncompressed or compressed RLE) -> (H, W) bool."""
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if len(p) >= 6]  # at least three points
        if not polys:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if list(segmentation.get("size", [])) != [height, width]:
            raise ValueError(f"RLE size {segmentation.get('size')} != image size {[height, width]}")
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            counts = segmentation["counts"]
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def rasterize(anns: Sequence[CocoAnn], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 semantic mask: crowd -> 255, then instances largest first (smaller wins), 0 elsewhere."""
    label = np.zeros((height, width), np.uint8)
    instances = []
    for ann in anns:
        m = segmentation_to_mask(ann.segmentation, height, width)
        if ann.iscrowd:
            label[m] = IGNORE_INDEX
        else:
            instances.append((int(m.sum()), ann.category, m))
    for _, category, m in sorted(instances, key=lambda t: -t[0]):  # stable: ties keep file order
        label[m] = category
    return label


def write_coco_sample(item: CocoItem, out_dir: str, final_dir: str) -> Sample:
    """Check one COCO image against its annotation record, write its rasterised mask to ``out_dir`` and
    return its Sample, whose mask path is in ``final_dir`` (where ``out_dir`` will be moved)."""

    size = check_image(item.image)
    if size != (item.height, item.width):
        raise DataError(f"{item.image}: image is {size[1]}x{size[0]} but its annotation says "
                        f"{item.width}x{item.height}")
    try:
        label = rasterize(item.anns, item.height, item.width)
    except ValueError as err:
        raise DataError(f"{item.image}: bad segmentation in its annotations ({err})") from None
    write_label_png(Path(out_dir) / f"{item.id}.png", label)
    return Sample(item.id, str(Path(item.image).absolute()), (Path(final_dir) / f"{item.id}.png").as_posix(),
                  item.labels)

"""Reader for a PASCAL VOC 2012 tree (``VOCdevkit/VOC2012``), real or generated.

- Splits come from ``ImageSets/Segmentation/<split>.txt`` (one id per line; DeepLab-style lines such as
  ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`` are accepted too).
- ``train_aug`` (the 10,582-image training set of WSSS work): ``ImageSets/Segmentation/train_aug.txt``
  or ``ImageSets/SegmentationAug/train_aug.txt``; without a list, the usual ``SegmentationClassAug/``
  folder defines it as every id with a mask there minus the ``val`` ids.
- Masks from ``SegmentationClassAug/<id>.png`` when present, else ``SegmentationClass/<id>.png``.
  Image-level labels are the classes present in the mask. Without a mask, labels come from
  ``Annotations/<id>.xml`` object names (``difficult`` objects included, as VOC-based WSSS does) and
  the sample's mask is None.

Every problem (missing root, split file, image, corrupt image, mask size or values) raises one
:class:`~pipeline.common.io.DataError` naming the file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from collections.abc import Callable, Sequence

from PIL import Image, UnidentifiedImageError

from pipeline.data.manifest import Sample, labels_from_mask, validate_mask
from pipeline.common.io import DataError, read_label_png

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

MapFn = Callable[[Callable, list, str], list]


@dataclass(frozen=True)
class VocItem:
    """Paths of one VOC image (no file read yet)."""

    id: str
    image: Path
    mask: Path | None
    xml: Path | None


def resolve_voc_root(root: str | Path) -> Path:
    """Accept ``.../VOC2012``, ``.../VOCdevkit`` or the folder holding ``VOCdevkit``."""
    root = Path(root).expanduser()
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            # a root inside the project stays relative, so the manifest is the same in every clone
            inside = not cand.is_absolute() and ".." not in cand.parts
            return cand if inside else cand.resolve()
    if not root.exists():
        raise DataError(f"{root}: VOC root not found (dataset.root should point at VOCdevkit/VOC2012)")
    raise DataError(f"{root}: not a VOC 2012 folder (no JPEGImages/ inside; point dataset.root at "
                    "VOCdevkit/VOC2012)")


def _read_id_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"{path}: unreadable split file ({err})") from None
    ids: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sid = Path(line.split()[0]).stem
        if sid not in seen:
            seen.add(sid)
            ids.append(sid)
    if not ids:
        raise DataError(f"{path}: the split file lists no images")
    return ids


def split_ids(root: Path, split: str) -> list[str]:
    """Image ids of ``split`` in file order (``root`` already resolved)."""
    seg = root / "ImageSets" / "Segmentation"
    candidates = [seg / f"{split}.txt"]
    if split == "train_aug":
        candidates.append(root / "ImageSets" / "SegmentationAug" / "train_aug.txt")
    for path in candidates:
        if path.is_file():
            return _read_id_list(path)
    aug = root / "SegmentationClassAug"
    if split == "train_aug" and aug.is_dir():
        val = set(_read_id_list(seg / "val.txt")) if (seg / "val.txt").is_file() else set()
        ids = sorted(p.stem for p in aug.glob("*.png") if p.stem not in val)
        if not ids:
            raise DataError(f"{aug}: no masks outside the val split, so train_aug is empty")
        return ids
    known = sorted(p.stem for p in seg.glob("*.txt")) if seg.is_dir() else []
    hint = f" (available: {', '.join(known)})" if known else ""
    raise DataError(f"{candidates[0]}: split file not found{hint}")


def voc_items(root: str | Path, split: str, max_images: int = 0) -> list[VocItem]:
    """Paths of the images of ``split`` (first ``max_images`` if > 0); no image is opened."""
    root = resolve_voc_root(root)
    ids = split_ids(root, split)
    if max_images > 0:
        ids = ids[:max_images]
    items = []
    for sid in ids:
        mask = next((p for p in (root / "SegmentationClassAug" / f"{sid}.png",
                                 root / "SegmentationClass" / f"{sid}.png") if p.is_file()), None)
        xml = root / "Annotations" / f"{sid}.xml"
        items.append(VocItem(sid, root / "JPEGImages" / f"{sid}.jpg", mask, xml if xml.is_file() else None))
    return items


def check_image(path: str | Path) -> tuple[int, int]:
    """Decode an image completely (JPEGs at reduced scale, which still reads every byte) and return
    its (H, W); a missing, truncated or corrupt file raises DataError naming it."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.format == "JPEG":
                img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            img.load()
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: corrupt or unreadable image ({err})") from None
    return h, w


def labels_from_xml(path: str | Path, class_names: Sequence[str]) -> list[int]:
    """Sorted class indices of the objects in a VOC annotation (``difficult`` ones included)."""
    index = {name.lower(): i for i, name in enumerate(class_names) if i > 0}
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation not found") from None
    except (ET.ParseError, OSError) as err:
        raise DataError(f"{path}: unreadable annotation XML ({err})") from None
    found = set()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in index:
            raise DataError(f"{path}: unknown object class {name!r} (expected one of the {len(index)} "
                            "dataset classes)")
        found.add(index[name])
    return sorted(found)


def read_voc_item(item: VocItem, class_names: Sequence[str]) -> Sample:
    """Check one image (and its mask) and return its Sample with absolute paths."""
    size = check_image(item.image)
    num_classes = len(class_names) - 1
    if item.mask is not None:
        mask = read_label_png(item.mask)
        validate_mask(mask, size, num_classes, item.mask)
        labels = labels_from_mask(mask, num_classes)
        return Sample(item.id, str(item.image), str(item.mask), tuple(labels))
    if item.xml is not None:
        return Sample(item.id, str(item.image), None, tuple(labels_from_xml(item.xml, class_names)))
    raise DataError(f"{item.image}: no mask (SegmentationClass[Aug]/{item.id}.png) and no annotation "
                    f"(Annotations/{item.id}.xml) to take image-level labels from")


def read_voc(root: str | Path, split: str, class_names: Sequence[str] = VOC_CLASSES,
             max_images: int = 0, map_fn: MapFn | None = None) -> list[Sample]:
    """Samples of one split, every image and mask checked; ``map_fn(fn, items, desc)`` fans out."""
    items = voc_items(root, split, max_images)
    fn = partial(read_voc_item, class_names=tuple(class_names))
    return map_fn(fn, items, f"voc {split}") if map_fn is not None else [fn(x) for x in items]

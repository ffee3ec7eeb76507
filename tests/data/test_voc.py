"""The PASCAL VOC 2012 reader on a tiny tree written here, every bad-input case, and the real samples."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.common.io import DataError, write_label_png, write_rgb
from pipeline.config import ROOT
from pipeline.data.voc import VOC_CLASSES, check_image, labels_from_xml, read_voc, resolve_voc_root, split_ids

REALDATA = ROOT.parent / "shared" / "realdata"

XML = """<annotation><filename>{id}.jpg</filename>
<object><name>dog</name><difficult>0</difficult></object>
<object><name> person </name><difficult>1</difficult></object>
<object><name>dog</name><difficult>0</difficult></object>
</annotation>"""


def make_voc(base: Path) -> Path:
    """VOCdevkit/VOC2012 with train a, b (masks), val c (mask) and an xml-only image d."""
    root = base / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    masks = {"a": [(1, 15)], "b": [(12, 20)], "c": [(3, 3)]}
    for sid in "abcd":
        write_rgb(root / "JPEGImages" / f"{sid}.jpg", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    for sid, classes in masks.items():
        label = np.zeros((20, 30), np.uint8)
        for i, k in enumerate(classes[0]):
            label[2:8, 2 + 10 * i:8 + 10 * i] = k
        label[0, :] = 255
        write_label_png(root / "SegmentationClass" / f"{sid}.png", label)
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "d.xml").write_text(XML.format(id="d"))
    seg = root / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("a\nb\n")
    (seg / "val.txt").write_text("c\n")
    return root


def test_reads_splits_with_labels_from_masks(tmp_path):
    root = make_voc(tmp_path)
    train = read_voc(root, "train")
    assert [s.id for s in train] == ["a", "b"]
    assert [s.labels for s in train] == [(1, 15), (12, 20)]
    assert train[0].image == str(root.resolve() / "JPEGImages" / "a.jpg")
    assert train[0].mask == str(root.resolve() / "SegmentationClass" / "a.png")
    assert [s.labels for s in read_voc(root, "val")] == [(3,)]


def test_root_may_be_the_devkit_or_its_parent(tmp_path):
    root = make_voc(tmp_path)
    assert resolve_voc_root(tmp_path) == root.resolve()
    assert resolve_voc_root(tmp_path / "VOCdevkit") == root.resolve()


def test_xml_labels_include_difficult_objects_when_no_mask(tmp_path):
    root = make_voc(tmp_path)
    (root / "ImageSets" / "Segmentation" / "extra.txt").write_text("d\n")
    (sample,) = read_voc(root, "extra")
    assert sample.mask is None
    assert sample.labels == (VOC_CLASSES.index("dog"), VOC_CLASSES.index("person"))


def test_unknown_xml_class_names_the_file(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(DataError, match=r"x\.xml.*'unicorn'"):
        labels_from_xml(path, VOC_CLASSES)


def test_train_aug_from_list_with_deeplab_style_lines(tmp_path):
    root = make_voc(tmp_path)
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        "/JPEGImages/b.jpg /SegmentationClassAug/b.png\n\n/JPEGImages/a.jpg /SegmentationClassAug/a.png\n")
    assert split_ids(root, "train_aug") == ["b", "a"]


def test_train_aug_from_segmentation_class_aug_folder_prefers_aug_masks(tmp_path):
    root = make_voc(tmp_path)
    for sid, k in (("a", 7), ("c", 3), ("d", 9)):  # c is a val id: not in train_aug
        label = np.zeros((20, 30), np.uint8)
        label[5:9, 5:9] = k
        write_label_png(root / "SegmentationClassAug" / f"{sid}.png", label)
    samples = read_voc(root, "train_aug")
    assert [(s.id, s.labels) for s in samples] == [("a", (7,)), ("d", (9,))]
    assert "SegmentationClassAug" in samples[0].mask


def test_max_images_keeps_the_first_n(tmp_path):
    assert [s.id for s in read_voc(make_voc(tmp_path), "train", max_images=1)] == ["a"]


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="nowhere.*VOC root not found"):
        read_voc(tmp_path / "nowhere", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no JPEGImages"):
        read_voc(tmp_path / "empty", "train")


def test_missing_split_file_lists_the_available_ones(tmp_path):
    root = make_voc(tmp_path)
    with pytest.raises(DataError, match=r"train_aug\.txt: split file not found \(available: train, val\)"):
        read_voc(root, "train_aug")


def test_empty_split(tmp_path):
    root = make_voc(tmp_path)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=r"train\.txt: the split file lists no images"):
        read_voc(root, "train")


def test_missing_image(tmp_path):
    root = make_voc(tmp_path)
    (root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"b\.jpg: image not found"):
        read_voc(root, "train")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(tmp_path, damage):
    root = make_voc(tmp_path)
    path = root / "JPEGImages" / "b.jpg"
    data = path.read_bytes()
    path.write_bytes(b"not a jpeg at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DataError, match=r"b\.jpg: corrupt or unreadable image"):
        read_voc(root, "train")


def test_check_image_returns_full_size_despite_reduced_decoding(tmp_path):
    write_rgb(tmp_path / "x.jpg", np.zeros((37, 81, 3), np.uint8))
    assert check_image(tmp_path / "x.jpg") == (37, 81)


def test_mask_size_mismatch(tmp_path):
    root = make_voc(tmp_path)
    write_label_png(root / "SegmentationClass" / "a.png", np.zeros((20, 31), np.uint8))
    with pytest.raises(DataError, match=r"a\.png: label map is 31x20 \(WxH\) but its image is 30x20"):
        read_voc(root, "train")


def test_bad_label_value(tmp_path):
    root = make_voc(tmp_path)
    label = np.zeros((20, 30), np.uint8)
    label[3, 3] = 21
    write_label_png(root / "SegmentationClass" / "c.png", label)
    with pytest.raises(DataError, match=r"c\.png: label values 21 outside 0\.\.20 and 255"):
        read_voc(root, "val")


def test_rgb_mask_is_rejected_with_its_name(tmp_path):
    root = make_voc(tmp_path)
    write_rgb(root / "SegmentationClass" / "c.png", np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(DataError, match=r"c\.png: unreadable label PNG"):
        read_voc(root, "val")


def test_no_mask_and_no_annotation(tmp_path):
    root = make_voc(tmp_path)
    (root / "SegmentationClass" / "a.png").unlink()
    with pytest.raises(DataError, match=r"a\.jpg: no mask .* and no annotation"):
        read_voc(root, "train")


@pytest.mark.realdata
def test_real_voc_samples():
    root = REALDATA / "VOCdevkit" / "VOC2012"
    if not root.is_dir():
        pytest.skip(f"real VOC samples not available at {root} (only in the development workspace)")
    train, val = read_voc(root, "train"), read_voc(root, "val")
    assert len(train) + len(val) == 20
    assert all(1 <= len(s.labels) and s.mask is not None for s in train + val)
    assert all(1 <= k <= 20 for s in train + val for k in s.labels)

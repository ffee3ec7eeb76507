"""COCO instances -> semantic masks: polygon, uncompressed and compressed RLE, crowd, overlap rule, labels."""

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipeline.common.io import DataError
from pipeline.config import ROOT
from pipeline.data.coco import CocoAnn, coco_classes, coco_items, load_coco_json, rasterize, segmentation_to_mask

REALDATA = ROOT.parent / "shared" / "realdata" / "coco"
H, W = 8, 10


def _compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def tiny_coco() -> dict:
    """Image 1: polygon (cat 5), uncompressed RLE (cat 1), compressed RLE (cat 3), crowd (cat 1).
    Image 2: only a crowd annotation. Image 3: nothing. Categories listed out of id order."""
    corner = np.zeros((H, W), bool)
    corner[6:8, 7:10] = True
    crowd = np.zeros((H, W), bool)
    crowd[0, :] = True
    crowd[1:5, 1] = True  # overlaps the polygon's column 1
    return {
        "images": [{"id": 1, "file_name": "img1.jpg", "height": H, "width": W},
                   {"id": 2, "file_name": "img2.jpg", "height": H, "width": W},
                   {"id": 3, "file_name": "img3.jpg", "height": H, "width": W}],
        "categories": [{"id": 5, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 5, "iscrowd": 0,
             "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]},            # rows 1..4, cols 1..4
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": {"size": [H, W], "counts": [2, 3, 75]}},  # column 0, rows 2..4
            {"id": 12, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": _compressed(corner)},
            {"id": 13, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": _compressed(crowd)},
            {"id": 14, "image_id": 2, "category_id": 3, "iscrowd": 1, "segmentation": _compressed(crowd)},
        ],
    }


def test_classes_follow_category_id_order():
    names, index = coco_classes(tiny_coco())
    assert names == ["background", "person", "car", "zebra"]
    assert index == {1: 1, 3: 2, 5: 3}


def test_rasterised_pixels_by_hand():
    data = tiny_coco()
    _, index = coco_classes(data)
    item = coco_items(data, "imgs", index, drop_unlabelled=True)[0]
    label = rasterize(item.anns, H, W)
    expected = np.zeros((H, W), np.uint8)
    expected[0, :] = 255            # crowd
    expected[1:5, 1] = 255          # crowd ...
    expected[1:5, 1:5] = 3          # ... under the zebra polygon: instances override crowd
    expected[2:5, 0] = 1            # person, uncompressed RLE
    expected[6:8, 7:10] = 2         # car, compressed RLE
    np.testing.assert_array_equal(label, expected)
    assert item.labels == (1, 2, 3)
    assert item.id == "img1" and item.image == Path("imgs") / "img1.jpg"


def test_overlapping_instances_smaller_wins_whatever_the_file_order():
    small = [[2, 2, 4, 2, 4, 4, 2, 4]]   # rows 2..3, cols 2..3
    big = [[0, 0, 8, 0, 8, 6, 0, 6]]     # rows 0..5, cols 0..7
    for anns in ([CocoAnn(1, False, small), CocoAnn(2, False, big)],
                 [CocoAnn(2, False, big), CocoAnn(1, False, small)]):
        label = rasterize(anns, H, W)
        assert (label[2:4, 2:4] == 1).all()
        assert (label == 2).sum() == 6 * 8 - 4


def test_crowd_only_images_and_empty_images_are_dropped_from_training():
    data = tiny_coco()
    _, index = coco_classes(data)
    assert [i.id for i in coco_items(data, "d", index, drop_unlabelled=True)] == ["img1"]
    kept = coco_items(data, "d", index, drop_unlabelled=False)
    assert [(i.id, i.labels) for i in kept] == [("img1", (1, 2, 3)), ("img2", ()), ("img3", ())]
    assert (rasterize(kept[1].anns, H, W) == 255).sum() == 10 + 4  # crowd only -> ignore, no label


def test_degenerate_polygons_rasterise_to_nothing():
    assert not segmentation_to_mask([[1, 1, 3, 3]], H, W).any()
    assert not segmentation_to_mask([], H, W).any()


def test_rle_of_the_wrong_size_is_rejected():
    with pytest.raises(ValueError, match="RLE size"):
        segmentation_to_mask({"size": [4, 4], "counts": [16]}, H, W)


def test_unknown_category_and_bad_files_raise_data_errors(tmp_path):
    data = tiny_coco()
    data["annotations"][0]["category_id"] = 99
    _, index = coco_classes(tiny_coco())
    with pytest.raises(DataError, match="ann.json: annotation 10 has unknown category_id 99"):
        coco_items(data, "d", index, True, source="ann.json")
    with pytest.raises(DataError, match="missing.json"):
        load_coco_json(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="x.json: not a COCO instances file"):
        load_coco_json(tmp_path / "x.json")


@pytest.mark.realdata
@pytest.mark.parametrize("split,expected", [
    ("val", ["person", "bottle", "cup", "knife", "spoon", "bowl", "broccoli", "carrot", "dining table",
             "oven", "sink"]),
    ("train", ["person", "bicycle", "motorcycle"]),
])
def test_real_coco_samples(split, expected):
    ann = REALDATA / "annotations" / f"instances_{split}2017_sample.json"
    if not ann.is_file():
        pytest.skip(f"real COCO samples not available at {REALDATA} (only in the development workspace)")
    data = load_coco_json(ann)
    names, index = coco_classes(data)
    assert len(names) == 81 and names[1] == "person" and names[80] == "toothbrush"
    (item,) = coco_items(data, REALDATA / f"{split}2017", index, drop_unlabelled=True)
    assert [names[k] for k in item.labels] == expected
    label = rasterize(item.anns, item.height, item.width)
    assert label.shape == (item.height, item.width)
    present = set(np.unique(label).tolist()) - {0, 255}
    assert present == set(item.labels)  # every labelled class keeps visible pixels here
    assert 0.05 < (label > 0).mean() < 0.95

"""The prepared-manifest contract: round trip, validation, multi-hot targets, mask checks."""

import json

import numpy as np
import pytest

from pipeline.common.io import DataError
from pipeline.data.manifest import Manifest, Sample, labels_from_mask, load_manifest, multi_hot, validate_mask


def _manifest() -> Manifest:
    return Manifest("toy", ("background", "a", "b", "c", "d"), {
        "train": (Sample("t0", "img/t0.jpg", "m/t0.png", (1, 3)), Sample("t1", "/abs/t1.jpg", None, (4,))),
        "val": (Sample("v0", "img/v0.jpg", "m/v0.png", ()),),
    })


def test_round_trip_through_json_file(tmp_path):
    m = _manifest()
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(m.to_dict()))
    back = load_manifest(path)
    assert back == m
    assert back.num_classes == 4
    assert back.split("train")[1] == Sample("t1", "/abs/t1.jpg", None, (4,))
    raw = json.loads(path.read_text())
    assert raw["splits"]["train"][0] == {"id": "t0", "image": "img/t0.jpg", "mask": "m/t0.png", "labels": [1, 3]}


def test_multi_hot_maps_class_k_to_index_k_minus_1():
    m = _manifest()
    np.testing.assert_array_equal(m.multi_hot(m.split("train")[0]), [1, 0, 1, 0])
    np.testing.assert_array_equal(multi_hot([4], 4), [0, 0, 0, 1])
    assert m.multi_hot(m.split("val")[0]).dtype == np.float32 and m.multi_hot(m.split("val")[0]).sum() == 0


def test_unknown_split_names_the_known_ones():
    with pytest.raises(DataError, match="no split 'test'.*train, val"):
        _manifest().split("test")


def test_missing_and_invalid_manifest_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.json"):
        load_manifest(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_manifest(bad)
    bad.write_text(json.dumps({"dataset": "x", "class_names": ["background", "a"]}))
    with pytest.raises(DataError, match="bad.json.*splits"):
        load_manifest(bad)


@pytest.mark.parametrize("labels", [[0], [3], [2, 1], [1, 1], ["1"]])
def test_labels_outside_range_or_unsorted_are_rejected(tmp_path, labels):
    data = {"dataset": "x", "class_names": ["background", "a", "b"],
            "splits": {"train": [{"id": "i", "image": "i.jpg", "mask": None, "labels": labels}]}}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="m.json.*'i'"):
        load_manifest(path)


def test_labels_from_mask_ignores_background_ignore_and_values_above_c():
    mask = np.array([[0, 2, 2], [255, 5, 0], [9, 0, 2]], np.uint8)
    assert labels_from_mask(mask, 5) == [2, 5]
    assert labels_from_mask(mask, 4) == [2]
    assert labels_from_mask(np.full((2, 2), 255, np.uint8), 20) == []


def test_validate_mask_accepts_classes_and_ignore():
    validate_mask(np.array([[0, 20], [255, 1]], np.uint8), (2, 2), 20, "ok.png")


def test_validate_mask_rejects_size_mismatch_with_its_image():
    with pytest.raises(DataError, match=r"m\.png: label map is 3x2 \(WxH\) but its image is 4x2"):
        validate_mask(np.zeros((2, 3), np.uint8), (2, 4), 20, "m.png")


def test_validate_mask_names_the_bad_values():
    mask = np.array([[0, 21], [254, 255]], np.uint8)
    with pytest.raises(DataError, match=r"m\.png: label values 21, 254 outside 0\.\.20 and 255"):
        validate_mask(mask, (2, 2), 20, "m.png")

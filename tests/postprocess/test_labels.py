"""Eq. 16 pseudo labels on hand-made scores, their quality counts, and the label PNG round trip."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.common.io import read_label_png, write_label_png
from pipeline.common.palette import voc_palette
from pipeline.metrics import ThresholdSweep
from pipeline.postprocess.labels import (QualityTotal, SweepTotal, argmax_labels, label_quality, merge_sweep_counts,
                                         pseudo_labels, pseudo_labels_keyed, sparse_counts, summarize_quality,
                                         sweep_counts, sweep_summary)

A1, A2 = 0.25, 0.7

# one image, two classes, four pixels in a row:
#   pixel 0: max 0.9 (class 2)            -> 2
#   pixel 1: max 0.7 exactly at alpha2     -> 255 (strict >)
#   pixel 2: max 0.25 exactly at alpha1    -> 255 (strict <)
#   pixel 3: max 0.1                       -> 0
SCORES = np.array([[[0.2, 0.7, 0.25, 0.1]], [[0.9, 0.3, 0.0, 0.05]]], np.float32)[None]  # (1, 2, 1, 4)
EXPECTED = np.array([[[2, 255, 255, 0]]])


def test_eq16_hand_case_with_strict_inequalities():
    out = pseudo_labels(SCORES, A1, A2)
    assert out.dtype == np.int64 and out.shape == (1, 1, 4)
    np.testing.assert_array_equal(out, EXPECTED)


def test_eq16_torch_matches_numpy():
    out = pseudo_labels(torch.from_numpy(SCORES), A1, A2)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), EXPECTED)


def test_eq16_just_past_the_thresholds():
    scores = np.array([0.7001, 0.2499, 0.5], np.float32).reshape(1, 1, 1, 3)
    np.testing.assert_array_equal(pseudo_labels(scores, A1, A2)[0, 0], [1, 0, 255])


def test_eq16_no_classes_is_background_and_bad_thresholds_raise():
    assert (pseudo_labels(np.zeros((2, 0, 3, 3)), A1, A2) == 0).all()
    with pytest.raises(ValueError, match="alpha1"):
        pseudo_labels(SCORES, 0.8, 0.7)


def test_keyed_variant_maps_channels_to_class_ids():
    keys = np.array([5, 17])
    out = pseudo_labels_keyed(SCORES[0], keys, A1, A2)
    np.testing.assert_array_equal(out, [[17, 255, 255, 0]])
    out_t = pseudo_labels_keyed(torch.from_numpy(SCORES[0]), torch.tensor([5, 17]), A1, A2)
    np.testing.assert_array_equal(out_t.numpy(), [[17, 255, 255, 0]])
    with pytest.raises(ValueError, match="keys"):
        pseudo_labels_keyed(SCORES[0], np.array([5]), A1, A2)


def test_argmax_labels_with_constant_background():
    out = argmax_labels(SCORES[0], np.array([3, 4]), 0.5)
    np.testing.assert_array_equal(out, [[4, 3, 0, 0]])


def test_label_quality_counts_ignored_apart():
    pred = np.array([[1, 1, 255, 0], [255, 0, 0, 1]])
    target = np.array([[1, 0, 1, 0], [0, 255, 0, 1]])
    q = label_quality(pred, target, 2)
    # labelled: 7 pixels; ignored predictions on labelled pixels: 2
    assert q["labelled"] == 7 and q["ignored"] == 2
    # kept pixels: (1,1) (0,1) (0,0) (0,0) (1,1): rows = target
    np.testing.assert_array_equal(q["confusion"], [[2, 1], [0, 2]])
    s = summarize_quality(q["confusion"], q["ignored"], q["labelled"])
    # IoU bg = 2 / 3, IoU fg = 2 / 3
    assert s["miou"] == pytest.approx(2 / 3) and s["ignored"] == pytest.approx(2 / 7)
    assert summarize_quality(np.zeros((2, 2)), 0, 0) == {"miou": None, "ignored": None}


def test_sparse_sweep_counts_merge_to_the_direct_sweep():
    rng = np.random.default_rng(0)
    th = np.round(np.arange(0, 0.81, 0.1), 6)
    direct, merged = ThresholdSweep(th, 4), ThresholdSweep(th, 4)
    for _ in range(3):
        scores = rng.random((2, 5, 6)).astype(np.float32)
        keys = np.array([1, 3])
        target = rng.integers(0, 4, (5, 6))
        direct.add(scores, keys, target)
        merge_sweep_counts(merged, sweep_counts(scores, keys, target, th, 4))
    np.testing.assert_array_equal(direct.hist, merged.hist)
    assert sweep_summary(merged)["sweep_miou"] == pytest.approx(direct.result()["best_miou"])
    assert sweep_summary(ThresholdSweep(th, 4)) == {"sweep_miou": None, "best_threshold": None}


def test_totals_added_per_image_or_merged_per_chunk_agree():
    th = np.array([0.0, 0.5])
    target = np.array([[1, 0, 1, 0], [0, 255, 0, 1]])
    pred = np.array([[1, 1, 255, 0], [255, 0, 0, 1]])
    scores, keys = np.full((1, 2, 4), 0.7, np.float32), np.array([1])

    def image():  # one image with a mask, as label_one returns it, for sources "a" and "b"
        q = label_quality(pred, target, 2)
        q["confusion"] = sparse_counts(q["confusion"])
        return {name: (q, sweep_counts(scores, keys, target, th, 2)) for name in ("a", "b")}

    serial = QualityTotal(("a", "b"), th, 2)
    for _ in range(3):
        serial.add(image())
    serial.add({})  # an image without a mask counts for nothing
    first, second = QualityTotal(("a", "b"), th, 2), QualityTotal(("a", "b"), th, 2)
    first.add(image())
    second.add(image())
    second.add(image())
    first.merge(second)
    # three copies of the hand-computed case above: IoU 2/3 for both classes, 6 of 21 labelled pixels ignored
    for total in (serial, first):
        s = total.summary("a")
        assert s["miou"] == pytest.approx(2 / 3) and s["ignored"] == pytest.approx(6 / 21)
        np.testing.assert_array_equal(total.confusion["b"], 3 * np.array([[2, 1], [0, 2]]))
    # every labelled pixel scores 0.7 for class 1: above both thresholds, so all 7 x 3 predicted class 1
    assert serial.sweeps["a"].sweep.hist.sum() == 21 and serial.summary("a") == first.summary("a")
    sweep = SweepTotal(th, 2)
    sweep.add(None)
    assert sweep.summary() == {"sweep_miou": None, "best_threshold": None}


def test_label_png_round_trip_palette(tmp_path):
    label = pseudo_labels_keyed(SCORES[0], np.array([5, 17]), A1, A2).astype(np.uint8)
    path = tmp_path / "x.png"
    write_label_png(path, label)
    with Image.open(path) as img:
        assert img.mode == "P"
        np.testing.assert_array_equal(np.array(img.getpalette()[:256 * 3]).reshape(-1, 3)[:256], voc_palette())
    np.testing.assert_array_equal(read_label_png(path), label)

"""Confusion matrix, mIoU (VOC protocol) and the background-threshold sweep on hand-computed cases."""

import numpy as np
import pytest
import torch

from pipeline.metrics import ThresholdSweep, confusion_matrix, miou, thresholds_from


def test_confusion_matrix_counts_and_ignore():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    conf = confusion_matrix(pred, target, 3)
    # rows = target, cols = pred; the 255 pixel is skipped
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_array_equal(conf, expected)


def test_confusion_matrix_accumulates_and_accepts_torch():
    conf = np.zeros((2, 2), np.int64)
    confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), 2, out=conf)
    confusion_matrix(np.array([1]), np.array([1]), 2, out=conf)
    np.testing.assert_array_equal(conf, [[1, 1], [0, 1]])


def test_confusion_matrix_rejects_bad_values():
    with pytest.raises(ValueError, match="target values"):
        confusion_matrix(np.array([0]), np.array([5]), 3)
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)


def test_miou_hand_case_excludes_absent_classes():
    # class 0: TP 1, FP 1 (pred 0 where target 2), FN 1 (target 0 predicted 1) -> 1/3
    # class 1: TP 2, FP 1, FN 0 -> 2/3 ; class 2: TP 0, FP 0, FN 1 -> 0 ; class 3 absent -> NaN
    conf = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    mean, per_class = miou(conf)
    np.testing.assert_allclose(per_class[:3], [1 / 3, 2 / 3, 0.0])
    assert np.isnan(per_class[3])
    assert mean == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_miou_perfect_prediction_is_one():
    t = np.random.default_rng(0).integers(0, 4, size=(5, 7))
    mean, per = miou(confusion_matrix(t, t, 4))
    assert mean == pytest.approx(1.0)


def test_thresholds_from_is_inclusive():
    t = thresholds_from([0.0, 0.8, 0.01])
    assert len(t) == 81 and t[0] == 0.0 and t[-1] == pytest.approx(0.8)


def _brute_force_sweep(scores, keys, target, thresholds, nc):
    out = []
    for t in thresholds:
        pred = np.where(scores.max(0) > t, keys[scores.argmax(0)], 0)
        out.append(miou(confusion_matrix(pred, target, nc))[0])
    return np.array(out)


def test_sweep_hand_case():
    # one image, classes {1}: scores 0.2, 0.5, 0.9 on a 1x3 strip; target [0, 1, 1]
    scores = np.array([[[0.2, 0.5, 0.9]]])
    target = np.array([[0, 1, 1]])
    sw = ThresholdSweep(np.array([0.1, 0.3, 0.6]), num_classes=2)
    sw.add(scores, np.array([1]), target)
    res = sw.result()
    # t=0.1: all fg -> IoU(bg)=0/1=0, IoU(1)=2/3 -> 1/3
    # t=0.3: [0,1,1] perfect -> 1.0 ; t=0.6: [0,0,1] -> IoU(bg)=1/2, IoU(1)=1/2 -> 1/2
    np.testing.assert_allclose(res["miou"], [1 / 3, 1.0, 0.5])
    assert res["best_threshold"] == pytest.approx(0.3) and res["best_miou"] == pytest.approx(1.0)


def test_sweep_matches_brute_force_over_many_images():
    rng = np.random.default_rng(1)
    thresholds = thresholds_from([0.0, 0.8, 0.05])
    sw = ThresholdSweep(thresholds, num_classes=5)
    total = np.zeros(len(thresholds))
    confs = [np.zeros((5, 5), np.int64) for _ in thresholds]
    for _ in range(4):
        keys = np.sort(rng.choice(np.arange(1, 5), size=2, replace=False))
        scores = rng.random((2, 6, 7))
        target = rng.choice([0, keys[0], keys[1], 255], size=(6, 7))
        sw.add(scores, keys, target)
        for i, t in enumerate(thresholds):
            pred = np.where(scores.max(0) > t, keys[scores.argmax(0)], 0)
            confusion_matrix(pred, target, 5, out=confs[i])
    expected = [miou(c)[0] for c in confs]
    np.testing.assert_allclose(sw.result()["miou"], expected)
    np.testing.assert_array_equal(sw.confusions(), np.stack(confs))
    del total


def test_sweep_image_without_foreground_classes():
    sw = ThresholdSweep(np.array([0.5]), num_classes=3)
    sw.add(np.zeros((0, 2, 2)), np.zeros(0, np.int64), np.zeros((2, 2), np.int64))
    assert sw.result()["best_miou"] == pytest.approx(1.0)

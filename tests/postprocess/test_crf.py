"""Dense CRF: the background score, and noisy scores snapping to a colour edge on a hand-made image."""

import numpy as np
import pytest

from pipeline.config import defaults
from pipeline.postprocess.crf import background_probs, crf_inference, crf_labels, crf_scores

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

# the kernels these tests were written for (pinned, so an edit of params.yaml does not move them)
KERNELS = SCRATCH.crf.replace(gauss_sxy=3, gauss_compat=3, bi_sxy=80, bi_srgb=13, bi_compat=10, iterations=10)
H, W, EDGE = 32, 48, 24  # red left of column 24, blue from it on


def two_region_image() -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :EDGE] = (220, 30, 30)
    img[:, EDGE:] = (30, 30, 220)
    return img


def noisy_scores(seed: int = 0, shift: int = 5) -> np.ndarray:
    """One class meant for the red region; its clean boundary is ``shift`` px right of the edge."""
    rng = np.random.default_rng(seed)
    clean = np.where(np.arange(W) < EDGE + shift, 0.75, 0.25)[None, None, :].repeat(H, 1).astype(np.float32)
    return np.clip(clean + rng.normal(0, 0.2, clean.shape), 0, 1).astype(np.float32)


def test_background_probs_hand_case():
    scores = np.array([[[0.5, 0.0]], [[0.2, 0.9]]], np.float32)  # (2, 1, 2)
    probs = background_probs(scores, alpha=2)
    assert probs.shape == (3, 1, 2)
    # (1 - 0.5)^2, (1 - 0.9)^2 in float32: 1 - float32(0.9) is 0.100000024, so 0.01 itself is only ~5 ulp away
    np.testing.assert_allclose(probs[0], [[0.25, (np.float32(1) - np.float32(0.9)) ** 2]], rtol=1e-6)
    np.testing.assert_array_equal(probs[1:], scores)
    # a larger power shrinks the background score
    assert (background_probs(scores, 8)[0] <= probs[0]).all()


def test_crf_snaps_noisy_scores_to_the_colour_edge():
    img, scores = two_region_image(), noisy_scores()
    truth = np.where(np.arange(W) < EDGE, 1, 0)[None].repeat(H, 0)
    raw = (scores[0] > (1 - scores[0])).astype(int)  # argmax of [1 - s, s] without the CRF
    post = crf_inference(img, np.concatenate([1 - scores, scores]), KERNELS)
    assert post.shape == (2, H, W) and post.dtype == np.float32
    np.testing.assert_allclose(post.sum(0), 1.0, atol=1e-4)  # a distribution per pixel
    refined = post.argmax(0)
    raw_acc, crf_acc = (raw == truth).mean(), (refined == truth).mean()
    assert raw_acc < 0.85  # the noise and the shifted boundary make thresholding poor
    assert crf_acc > 0.98 and crf_acc > raw_acc
    # the refined boundary sits on the colour edge in (almost) every row
    boundary = np.argmax(refined == 0, axis=1)
    assert np.mean(np.abs(boundary - EDGE) <= 1) > 0.9


def test_crf_scores_and_labels_use_class_ids():
    img = two_region_image()
    scores = np.stack([noisy_scores(1)[0], 1 - noisy_scores(2, shift=0)[0]]) * 0.9  # red class, blue class
    fg = crf_scores(img, scores, alpha=1, kernels=KERNELS)
    assert fg.shape == scores.shape and fg.min() >= 0 and fg.max() <= 1
    labels = crf_labels(img, scores, np.array([7, 12]), alpha=1, kernels=KERNELS)
    assert set(np.unique(labels)) <= {0, 7, 12}
    assert (labels[:, :EDGE - 2] == 7).mean() > 0.95 and (labels[:, EDGE + 2:] == 12).mean() > 0.95


def test_crf_accepts_non_contiguous_inputs_and_checks_sizes():
    img = two_region_image()[:, ::-1]  # negative strides
    scores = noisy_scores()[:, :, ::-1]
    probs = np.concatenate([1 - scores, scores])
    post = crf_inference(img, probs, KERNELS.replace(iterations=2))
    assert post.shape == (2, H, W)
    with pytest.raises(ValueError, match="differ in size"):
        crf_inference(img[:10], probs, KERNELS)
    assert (crf_inference(img, probs[:1], KERNELS) == 1).all()  # one label: nothing to decide
    assert crf_scores(img, np.zeros((0, H, W), np.float32), alpha=8, kernels=KERNELS).shape == (0, H, W)

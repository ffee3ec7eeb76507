"""Pixel-Adaptive Refinement (Eqs. 13-15)."""

import math

import pytest
import torch

from pipeline.config import defaults
from pipeline.postprocess.par import gather_neighbours, neighbour_offsets, par_kernel, par_refine

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

def test_neighbour_offsets_and_replicate_padding():
    offs = neighbour_offsets([1, 2])
    assert len(offs) == 16 and offs[0] == (-1, -1) and offs[8] == (-2, -2) and (0, 0) not in offs
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    nb = gather_neighbours(x, [(-1, -1), (1, 1), (0, 2)])
    assert nb.shape == (1, 1, 3, 2, 2)
    # up-left of the top-left pixel is outside: the border pixel itself (1) stands in
    assert nb[0, 0, 0].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert nb[0, 0, 1].tolist() == [[4.0, 4.0], [4.0, 4.0]]
    assert nb[0, 0, 2].tolist() == [[2.0, 2.0], [4.0, 4.0]]
    with pytest.raises(ValueError):
        neighbour_offsets([0])


def _cfg(**changes):
    """The PAR section with the kernel constants these hand computations assume (the paper's values)."""
    return SCRATCH.par.replace(**{"c_i": 0.3, "c_l": 0.3, "w_i": 1.0, "w_l": 0.01, **changes})


def test_kernel_rows_sum_to_w_i_plus_w_l():
    torch.manual_seed(0)
    kappa = par_kernel(torch.rand(2, 3, 9, 11), [1, 2, 4], c_i=0.3, c_l=0.3, w_i=1.0, w_l=0.01)
    assert kappa.shape == (2, 24, 9, 11)
    assert torch.allclose(kappa.sum(dim=1), torch.full((2, 9, 11), 1.01), atol=1e-5)
    assert (kappa >= 0).all()


def _hand_image():
    # 3x3 grey image (same value in R, G, B): top row and the middle-right pixel are 1, the rest 0.
    img = torch.zeros(1, 3, 3, 3)
    img[:, :, 0, :] = 1.0
    img[:, :, 1, 2] = 1.0
    return img


def test_kernel_by_hand_at_the_centre_pixel():
    # Neighbours of the centre, in the order (-1,-1) (-1,0) (-1,1) (0,-1) (0,1) (1,-1) (1,0) (1,1):
    # values 1 1 1 0 1 0 0 0 (centre = 0); distances sqrt2 1 sqrt2 1 1 sqrt2 1 sqrt2.
    # sigma_I = unbiased std of four 1s and four 0s = sqrt(8 * 0.25 / 7) = sqrt(2/7)
    # kappa_I = -(|diff| / (0.3 sigma_I))^2 = -1 / (0.09 * 2/7) = -38.89 for the 1s, 0 for the 0s
    #   -> softmax_I: 0.25 for each same-colour neighbour, ~3e-18 for the others
    # sigma_L = unbiased std of the distances = sqrt(8 * ((sqrt2 - 1)/2)^2 / 7) = 0.2214
    # kappa_L = -(1 / (0.3 * 0.2214))^2 = -226.7 (edges), -453.3 (corners) -> softmax_L: 0.25 per edge, ~0 corners
    # kappa = w_I softmax_I + w_L softmax_L:
    w_i, w_l = 1.0, 0.01
    expected = [0.0, 0.25 * w_l, 0.0, 0.25 * (w_i + w_l), 0.25 * w_l, 0.25 * w_i, 0.25 * (w_i + w_l), 0.25 * w_i]
    sigma_l = math.sqrt(8 * ((math.sqrt(2) - 1) / 2) ** 2 / 7)
    assert abs(sigma_l - 0.2214) < 1e-4
    kappa = par_kernel(_hand_image(), [1], c_i=0.3, c_l=0.3, w_i=w_i, w_l=w_l)
    assert torch.allclose(kappa[0, :, 1, 1], torch.tensor(expected), atol=1e-9)


def test_one_iteration_by_hand():
    # Scores = the image: the centre gathers kappa * score over its neighbours; the four 1-valued
    # neighbours have kappa 0, 0.25 w_L, 0, 0.25 w_L -> 0.5 * w_L = 0.005.
    img = _hand_image()
    out = par_refine(img, img[:, :1], _cfg(dilations=[1], iterations=1))
    assert out.shape == (1, 1, 3, 3)
    assert abs(out[0, 0, 1, 1].item() - 0.005) < 1e-9


def test_two_regions_do_not_bleed_across_the_edge():
    # left half black, right half white; scores noisy around 0.8 on the left and 0.1 on the right
    torch.manual_seed(0)
    h, w = 16, 16
    img = torch.zeros(1, 3, h, w)
    img[..., w // 2:] = 1.0
    clean = torch.full((1, 1, h, w), 0.1)
    clean[..., :w // 2] = 0.8
    noisy = clean + 0.15 * torch.randn_like(clean)
    out = par_refine(img, noisy, _cfg(dilations=[1, 2, 4], iterations=10))
    left, right = out[..., :w // 2], out[..., w // 2:]
    assert left.min() > right.max() + 0.4  # still two regions, the edge sharp
    assert left.std() < noisy[..., :w // 2].std() / 3  # smoothed within each region
    scale = 1.01 ** 10  # rows sum to w_I + w_L = 1.01, each iteration
    assert abs(left.mean().item() - noisy[..., :w // 2].mean().item() * scale) < 0.05
    assert abs(right.mean().item() - noisy[..., w // 2:].mean().item() * scale) < 0.05
    # an averaging filter that ignores the image would blur the edge: the columns next to it mix
    blur = par_refine(torch.zeros_like(img), noisy, _cfg(dilations=[1, 2, 4], iterations=10))
    assert blur[..., w // 2 - 1].mean() - blur[..., w // 2].mean() < 0.4


def test_background_channel_and_zero_channels():
    torch.manual_seed(1)
    img = torch.rand(2, 3, 8, 8)
    scores = torch.rand(2, 3, 8, 8)
    scores[:, 2] = 0  # an absent class stays zero
    out = par_refine(img, scores, _cfg(dilations=[1, 2], iterations=3))
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    assert out[:, 2].abs().max() == 0
    # channels are refined independently: channel 0 alone gives the same result
    alone = par_refine(img, scores[:, :1], _cfg(dilations=[1, 2], iterations=3))
    assert torch.allclose(alone, out[:, :1], atol=1e-6)
    assert par_refine(img, scores[:, :0], _cfg()).shape == (2, 0, 8, 8)
    with pytest.raises(ValueError):
        par_refine(img, torch.rand(2, 1, 4, 4), _cfg())


def test_dilations_larger_than_the_image_are_fine():
    out = par_refine(torch.rand(1, 3, 5, 5), torch.rand(1, 2, 5, 5), _cfg(dilations=[1, 24], iterations=2))
    assert torch.isfinite(out).all()


def test_afa_refinement_constant_maps_by_hand():
    """A constant CAM c on a flat image: PAR keeps every channel constant (scaled alike), so AFA's labels are
    the arg-max of softmax([b, c]): foreground when c > b. Backgrounds (0.55, 0.35): c = 0.6 beats both,
    c = 0.45 only the low one (ignored), c = 0.2 neither (background)."""
    import numpy as np

    from pipeline.postprocess.afa import afa_labels, afa_scores
    from pipeline.postprocess.labels import pseudo_labels_keyed

    image = np.full((6, 8, 3), 120, np.uint8)
    for c, high, low, score in [(0.6, 1, 1, 1.0), (0.45, 0, 1, 0.5), (0.2, 0, 0, 0.0)]:
        cams = np.full((1, 6, 8), c, np.float32)
        labels = afa_labels(torch.from_numpy(image).permute(2, 0, 1).float(), torch.from_numpy(cams), SCRATCH.par,
                            (0.55, 0.35))
        assert labels.shape == (2, 6, 8)
        assert (labels[0] == high).all() and (labels[1] == low).all()
        out = afa_scores(image, cams, SCRATCH.par, (0.55, 0.35))
        assert out.shape == (1, 6, 8) and np.all(out == score)
        # Eq. 16 with the default alphas gives back AFA's labels: class 7, ignored, background
        eq16 = pseudo_labels_keyed(out, np.array([7]), 0.25, 0.7)
        assert np.all(eq16 == {1.0: 7, 0.5: 255, 0.0: 0}[score])


def test_afa_scores_encode_the_label_rule():
    """On random maps: Eq. 16 of the stored scores = AFA's rule (high-background label; where that is
    background, 255 if the low background still finds a class, else 0)."""
    import numpy as np

    from pipeline.postprocess.afa import afa_labels, afa_scores
    from pipeline.postprocess.labels import pseudo_labels_keyed

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    cams = rng.random((2, 10, 12)).astype(np.float32)
    keys = np.array([3, 11])
    high, low = afa_labels(torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.from_numpy(cams),
                           SCRATCH.par, (0.55, 0.35)).numpy()
    ids = np.array([0, 3, 11])
    expected = np.where(high > 0, ids[high], np.where(low > 0, 255, 0))
    assert len(np.unique(expected)) >= 3  # the case exercises foreground, ignored and background
    got = pseudo_labels_keyed(afa_scores(image, cams, SCRATCH.par, (0.55, 0.35)), keys, 0.25, 0.7)
    np.testing.assert_array_equal(got, expected)
    assert afa_scores(image, cams[:0], SCRATCH.par, (0.55, 0.35)).shape == (0, 10, 12)

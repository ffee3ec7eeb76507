"""PSA: confident regions, pair labels and loss, the random walk on hand-made affinities, AffinityNet."""

import numpy as np
import pytest
import torch

from pipeline.models.affinitynet import (AffinityNet, affinity_matrix, load_affinitynet, pair_affinities,
                                         pair_affinity_loss, pair_border, pair_labels, pair_slices, radius_offsets,
                                         save_affinitynet)
from pipeline.postprocess.psa import (confident_labels, downsample_labels, random_crop, random_walk, transition_matrix,
                                      walk_inputs, walk_scores)


def block_affinity(labels: np.ndarray) -> np.ndarray:
    """Dense affinity 1 within a region, 0 across regions, for a flat label list."""
    return (labels[:, None] == labels[None, :]).astype(np.float32)


# ---------------------------------------------------------------- confident regions


def test_confident_labels_follow_the_la_ha_rule():
    keys = np.array([4, 9])
    # four pixels; posteriors over [bg, 4, 9]
    low = np.array([[0.1, 0.8, 0.3, 0.2], [0.8, 0.1, 0.6, 0.7], [0.1, 0.1, 0.1, 0.1]]).reshape(3, 1, 4)
    high = np.array([[0.0, 0.1, 0.9, 0.6], [0.9, 0.8, 0.05, 0.3], [0.1, 0.1, 0.05, 0.1]]).reshape(3, 1, 4)
    # px0: low fg (4), high fg -> 4 ; px1: low bg, high fg -> 255
    # px2: low fg (4) but high bg -> 0 (background wins) ; px3: low fg (4), high bg -> 0
    out = confident_labels(low, high, keys)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[4, 255, 0, 0]])


def test_downsample_labels_majority_and_padding():
    label = np.array([[1, 1, 0, 0, 2],
                      [1, 0, 0, 0, 2],
                      [255, 255, 3, 3, 2]], np.uint8)
    out = downsample_labels(label, 2)
    # cells: [[1,1],[1,0]] -> 1 ; [[0,0],[0,0]] -> 0 ; [[2,pad],[2,pad]] -> tie 2 vs 255 -> 2
    #        [[255,255],[pad,pad]] -> 255 ; [[3,3],[pad,pad]] -> tie -> 3 ; [[2,pad],[pad,pad]] -> 255
    np.testing.assert_array_equal(out, [[1, 0, 2], [255, 3, 255]])
    assert downsample_labels(np.zeros((2, 4, 4), np.uint8), 2).shape == (2, 2, 2)


def test_random_crop_pads_small_images_with_ignore():
    rng = np.random.default_rng(0)
    img, lab = np.full((3, 5, 3), 7, np.uint8), np.ones((3, 5), np.uint8)
    ci, cl = random_crop(rng, img, lab, 6)
    assert ci.shape == (6, 6, 3) and cl.shape == (6, 6)
    assert (cl == 1).sum() == 15 and (cl == 255).sum() == 21 and (ci[cl == 1] == 7).all()


# ---------------------------------------------------------------- pairs and loss


def test_radius_offsets_hand_case():
    assert radius_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    offs = radius_offsets(5)
    assert len(offs) == 34 and len(set(offs)) == 34
    assert all(dy * dy + dx * dx < 25 and (dy > 0 or dx > 0) for dy, dx in offs)


def test_pair_labels_and_affinities_on_a_hand_map():
    label = torch.tensor([[[0, 0, 5], [255, 5, 5]]])  # (1, 2, 3)
    offs = [(0, 1)]  # horizontal neighbours: (0,0)-(0,0), (0,5), (255,5), (5,5)
    bg, fg, neg = pair_labels(label, offs)
    assert bg.tolist() == [[True, False, False, False]]
    assert fg.tolist() == [[False, False, False, True]]
    assert neg.tolist() == [[False, True, False, False]]
    emb = torch.zeros(1, 2, 2, 3)
    emb[0, :, 0, 2] = 2.0  # mean |diff| = 2 between (0,1) and (0,2)
    aff = pair_affinities(emb, offs)
    torch.testing.assert_close(aff, torch.tensor([[1.0, float(np.exp(-2.0)), 1.0, 1.0]]))


def test_affinity_loss_balances_the_three_terms():
    aff = torch.tensor([[0.5, 1.0, 0.25, 0.5]])
    bg = torch.tensor([[True, True, False, False]])
    fg = torch.tensor([[False, False, True, False]])
    neg = torch.tensor([[False, False, False, True]])
    out = pair_affinity_loss(aff, bg, fg, neg, eps=0.0)
    assert out["bg_loss"].item() == pytest.approx(-np.log(0.5) / 2)  # mean of -log 0.5 and -log 1
    assert out["fg_loss"].item() == pytest.approx(-np.log(0.25))
    assert out["neg_loss"].item() == pytest.approx(-np.log(0.5))
    expected = -np.log(0.5) / 8 - np.log(0.25) / 4 - np.log(0.5) / 2
    assert out["loss"].item() == pytest.approx(expected)


def test_affinity_matrix_is_symmetric_with_unit_diagonal():
    emb = torch.randn(4, 5, 6)
    a = affinity_matrix(emb, 3).to_dense()
    assert a.shape == (30, 30)
    torch.testing.assert_close(a, a.T)
    torch.testing.assert_close(torch.diagonal(a), torch.ones(30))
    # cells (0,0) and (0,1) are neighbours; (0,0) and (0,3) are 3 apart: not within radius 3
    expected = torch.exp(-(emb[:, 0, 0] - emb[:, 0, 1]).abs().mean())
    assert a[0, 1].item() == pytest.approx(expected.item(), rel=1e-5)
    assert a[0, 3].item() == 0.0


# ---------------------------------------------------------------- random walk


def test_transition_matrix_rows_sum_to_one():
    a = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    t = transition_matrix(a, beta=1)
    torch.testing.assert_close(t, torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]]))
    ts = transition_matrix(a.to_sparse(), beta=2).to_dense()
    torch.testing.assert_close(ts, torch.tensor([[0.8, 0.2], [0.2, 0.8]]))


def test_random_walk_stays_inside_regions_and_converges_to_their_means():
    h, w = 4, 6
    regions = np.zeros((h, w), int)
    regions[:, 3:] = 1
    rng = np.random.default_rng(0)
    cams = rng.random((2, h, w)).astype(np.float32)
    cams[1, :, 3:] = 0  # channel 1 lives only in the left region
    aff = block_affinity(regions.reshape(-1))
    out = random_walk(cams, aff, beta=8, logt=5)
    assert isinstance(out, np.ndarray) and out.shape == (2, h, w)
    assert (out[1, :, 3:] == 0).all()  # no propagation across zero affinity
    for r in (0, 1):
        m = regions == r
        np.testing.assert_allclose(out[:, m], cams[:, m].mean(1, keepdims=True).repeat(m.sum(), 1), rtol=1e-5)


def test_random_walk_one_step_is_the_row_normalised_average():
    cams = np.array([[[1.0, 0.0, 0.0]]], np.float32)  # (1, 1, 3)
    aff = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]], np.float32)
    out = random_walk(cams, aff, beta=1, logt=0)  # t = 1
    np.testing.assert_allclose(out[0, 0], [0.5, 1 / 3, 0.0], rtol=1e-6)
    out2 = random_walk(cams, aff, beta=1, logt=1)  # t = 2: T (T v)
    np.testing.assert_allclose(out2[0, 0], [(0.5 + 1 / 3) / 2, (0.5 + 1 / 3) / 3, 1 / 6], rtol=1e-6)


def test_dense_squaring_equals_sparse_steps():
    emb = torch.randn(8, 6, 7)
    aff = affinity_matrix(emb, 3)
    cams = torch.rand(3, 6, 7)
    dense = random_walk(cams, aff.to_dense(), beta=4, logt=4)
    sparse = random_walk(cams, aff, beta=4, logt=4)
    torch.testing.assert_close(dense, sparse, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        random_walk(torch.rand(3, 5, 7), aff, 4, 1)


def test_walk_inputs_and_scores():
    scores = torch.zeros(1, 8, 8)
    scores[0, :4] = 1.0
    cams = walk_inputs(scores, (2, 2), alpha=2)
    assert cams.shape == (2, 2, 2)
    torch.testing.assert_close(cams[0], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))  # bg = (1 - max)^2
    fg = walk_scores(cams, (8, 8))
    assert fg.shape == (1, 8, 8) and fg.min() >= 0 and fg.max() <= 1
    assert fg[0, 0, 0] == pytest.approx(1.0) and fg[0, 7, 7] == pytest.approx(0.0)


def test_padded_walk_input_pools_zero_padded_cells_and_crops_back():
    # PSA's pooling: a 3x3 map at stride 2 is zero-padded to 4x4 and pooled in 2x2 cells
    scores = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    cams = walk_inputs(scores, (2, 2), alpha=1, stride=2)
    # foreground: cell (0,0) = 4 ones / 4; (0,1) = [0, 0] + 2 padded zeros -> 0; (1,1) = one 1 of 4 cells -> 0.25
    torch.testing.assert_close(cams[1], torch.tensor([[1.0, 0.0], [0.0, 0.25]]))
    # background (1 - max)^1 before padding: cell (0,1) = (1 + 1 + 0 + 0) / 4, (1,0) = (1 + 1) / 4, (1,1) = 0
    torch.testing.assert_close(cams[0], torch.tensor([[0.0, 0.5], [0.5, 0.0]]))
    # adaptive pooling of the same map averages overlapping 2x2 windows instead: no padded zeros
    torch.testing.assert_close(walk_inputs(scores, (2, 2), alpha=1)[1], torch.tensor([[1.0, 0.5], [0.5, 0.5]]))
    # back: upsampled to the padded 4x4 and cropped to 3x3 (a constant walk output stays constant)
    fg = walk_scores(torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), 3.0)]), (3, 3), stride=2)
    assert fg.shape == (1, 3, 3)
    torch.testing.assert_close(fg, torch.full((1, 3, 3), 0.75))
    with pytest.raises(ValueError, match="does not cover"):
        walk_inputs(torch.zeros(1, 5, 5), (2, 2), alpha=1, stride=2)


def test_cropped_pairs_are_psa_pairs():
    # PSA's get_indices_of_pairs(radius 2, (4, 5)): sources in rows [0, 3) and columns [1, 4): 3 x 3 cells
    assert pair_border(2, "cropped") == 1 and pair_border(5, "cropped") == 4 and pair_border(5, "all") == 0
    h, w = 4, 5
    for dy, dx in radius_offsets(2):  # (0, 1), (1, -1), (1, 0), (1, 1)
        (ry, rx), (ty, tx) = pair_slices(h, w, dy, dx, border=1)
        assert (ry, rx) == (slice(0, 3), slice(1, 4))
        assert (ty, tx) == (slice(dy, 3 + dy), slice(1 + dx, 4 + dx))
    # all in-map pairs of the same offsets: 4*4 + 3*4 + 3*5 + 3*4 = 55; cropped: 4 offsets x 9 sources = 36
    emb = torch.rand(1, 3, h, w)
    assert pair_affinities(emb, radius_offsets(2)).shape == (1, 55)
    assert pair_affinities(emb, radius_offsets(2), border=1).shape == (1, 36)
    bg, fg, neg = pair_labels(torch.zeros(1, h, w, dtype=torch.long), radius_offsets(2), border=1)
    assert bg.shape == (1, 36) and bg.all() and not fg.any() and not neg.any()
    # the walk's matrix: the diagonal (20) and each cropped pair in both directions (72)
    assert affinity_matrix(emb[0], 2, border=1).values().numel() == 20 + 72
    # the last row and the first / last columns are never sources, but are targets: row 3 has pairs
    a = affinity_matrix(emb[0], 2, border=1).to_dense()
    assert (a[15:20].count_nonzero(1) > 1).all()  # row 3 cells reach up to row 2 sources
    assert pair_slices(2, 2, 0, 1, border=1) is None  # no source cell left
    with pytest.raises(ValueError, match="past the border"):
        pair_slices(6, 6, 2, 0, border=1)


# ---------------------------------------------------------------- AffinityNet


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest on one thread (and far faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_affinitynet_shapes_and_save_load(tmp_path, one_thread):
    torch.manual_seed(0)
    net = AffinityNet("resnet18", "none", feature_stride=4, embed_dim=16).eval()
    x = torch.rand(2, 3, 37, 50)
    with torch.no_grad():
        emb = net(x)
    assert emb.shape == (2, 16, 10, 13)  # ceil(37/4), ceil(50/4)
    save_affinitynet(net, tmp_path / "m.pt", extra={"params_hash": "abc"})
    again = load_affinitynet(tmp_path / "m.pt")
    with torch.no_grad():
        torch.testing.assert_close(again(x), emb)
    with pytest.raises(FileNotFoundError):
        AffinityNet("resnet18", str(tmp_path / "missing.pth"), feature_stride=4, embed_dim=16)


def test_affinitynet_training_steps_reduce_the_loss(one_thread):
    torch.manual_seed(0)
    net = AffinityNet("resnet18", "none", feature_stride=8, embed_dim=16)
    # two colours, split at a known column; cell labels at stride 8
    x = torch.zeros(4, 3, 32, 32)
    x[:, 0, :, :16] = 0.9
    x[:, 2, :, 16:] = 0.9
    label = torch.zeros(4, 4, 4, dtype=torch.long)
    label[:, :, :2] = 3
    offs = radius_offsets(3)
    masks = pair_labels(label, offs)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = pair_affinity_loss(pair_affinities(net(x), offs), *masks)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_affinitynet_resumed_after_an_epoch_equals_an_uninterrupted_run():
    import copy

    from pipeline.config import defaults
    from pipeline.train.affinity import train_affinitynet

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 24, 3)).astype(np.uint8) for _ in range(5)]
    labels = []
    for i in range(5):
        label = np.zeros((24, 24), np.uint8)
        label[4:14, 4:14] = 1 + i % 2
        label[14:16] = 255
        labels.append(label)
    cfg = defaults("scratch").psa.replace(crop_size=16, epochs=2, batch_size=2, embed_dim=8, radius=3)
    cpu = torch.device("cpu")
    straight, history = train_affinitynet(images, labels, cfg, cpu, seed=0, progress=False)
    states = {}
    train_affinitynet(images, labels, cfg, cpu, seed=0, progress=False,  # the state holds live tensors: copy it
                      on_epoch=lambda epoch, metrics, state: states.setdefault(epoch, copy.deepcopy(state)))
    resumed, resumed_history = train_affinitynet(images, labels, cfg, cpu, seed=0, resume=states[1], progress=False)
    assert [h["loss"] for h in resumed_history] == [h["loss"] for h in history]
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

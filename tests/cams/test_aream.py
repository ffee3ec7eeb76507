"""AReAM equations (Eqs. 4-5, 7-12, 17-19) on tensors small enough to check by hand."""

import math

import pytest
import torch

from pipeline.cams.aream import (affinity_labels, affinity_loss, affinity_loss_per_layer, average_affinity,
                                 first_k_affinity, layer_entropy, normalize_cams, reactivated_affinity,
                                 reactivated_cams, reactivation_weights, refine_cams, refine_per_layer)

EYE2 = torch.eye(2)
HALF2 = torch.full((2, 2), 0.5)


def test_refine_cams_multiplies_by_the_transposed_affinity():
    # Eq. 5: M'[i] = sum_j M[j] A[i, j]. M = [1, 2] (one class on a 1x2 grid);
    # A = [[0.5, 0.5], [0.25, 0.75]] -> M'[0] = 0.5*1 + 0.5*2 = 1.5, M'[1] = 0.25*1 + 0.75*2 = 1.75
    # (multiplying by A instead of A^T would give [1.0, 2.0]... and [0.75, 2.25] for column sums).
    cams = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    aff = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]])
    out = refine_cams(cams, aff)
    assert out.shape == (1, 1, 1, 2)
    assert torch.allclose(out.flatten(), torch.tensor([1.5, 1.75]))


def test_refine_cams_rejects_a_wrong_affinity_shape():
    with pytest.raises(ValueError, match="affinity"):
        refine_cams(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 3))


def test_refine_per_layer_matches_refine_cams_layer_by_layer():
    torch.manual_seed(0)
    cams, attn = torch.rand(2, 3, 2, 3), torch.rand(2, 4, 6, 6)
    out = refine_per_layer(cams, attn)
    assert out.shape == (2, 4, 3, 2, 3)
    for l_ in range(4):
        assert torch.allclose(out[:, l_], refine_cams(cams, attn[:, l_]), atol=1e-6)


def test_average_and_first_k_affinity():
    attn = torch.stack([EYE2, HALF2, torch.zeros(2, 2)])[None]  # (1, 3, 2, 2)
    # Eq. 4: (I + 0.5 + 0) / 3
    assert torch.allclose(average_affinity(attn)[0], (EYE2 + HALF2) / 3)
    # first 2 layers: (I + 0.5) / 2 = [[0.75, 0.25], [0.25, 0.75]]
    assert torch.allclose(first_k_affinity(attn, 2)[0], torch.tensor([[0.75, 0.25], [0.25, 0.75]]))


def test_layer_entropy_by_hand():
    # Two positions, two classes: class 0 = [1, 0], class 1 = [0, 0].
    cams = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    # layer 1 = identity: refined max map [1, 0]; softmax p = [e/(e+1), 1/(e+1)] = [0.7311, 0.2689]
    #   entropy = -(p0 ln p0 + p1 ln p1) = 0.5822
    # layer 2 = uniform 0.5: refined [0.5, 0.5] -> softmax [0.5, 0.5] -> ln 2 = 0.6931
    attn = torch.stack([EYE2, HALF2])[None]
    e = layer_entropy(cams, attn)
    p0 = math.e / (math.e + 1)
    expected = [-(p0 * math.log(p0) + (1 - p0) * math.log(1 - p0)), math.log(2)]
    assert e.shape == (1, 2)
    assert e.dtype == torch.float64  # entropies near log N are compared in double precision
    assert torch.allclose(e[0], torch.tensor(expected, dtype=e.dtype), atol=1e-6)
    assert abs(expected[0] - 0.5822) < 1e-4


def test_layer_entropy_takes_the_max_over_classes():
    # class 1 = [0, 3] dominates position 1: max map [1, 3] under identity -> softmax [1/(1+e^2), e^2/(1+e^2)]
    cams = torch.tensor([[1.0, 0.0], [0.0, 3.0]]).view(1, 2, 1, 2)
    e = layer_entropy(cams, EYE2.view(1, 1, 2, 2))
    q = 1 / (1 + math.e ** 2)
    assert abs(e[0, 0].item() + (q * math.log(q) + (1 - q) * math.log(1 - q))) < 1e-6


def test_reactivation_weights_by_hand():
    # Eq. 9: e = [1, 3, 2] -> w_hat = [(1-1)/2, (3-1)/2, (2-1)/2] = [0, 1, 0.5]; Eq. 10: w = [1, 0, 0.5]
    # second image: all layers equal -> 0/0, defined as w_hat = 0, w = 1
    e = torch.tensor([[1.0, 3.0, 2.0], [2.0, 2.0, 2.0]])
    w, w_hat = reactivation_weights(e)
    assert torch.allclose(w_hat, torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]))
    assert torch.allclose(w, torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, 1.0]]))
    assert torch.allclose(w + w_hat, torch.ones_like(w))


def test_reactivated_affinity_by_hand():
    # Eq. 11: 1 * I + 0.5 * [[.5, .5], [.5, .5]] = [[1.25, .25], [.25, 1.25]]
    attn = torch.stack([EYE2, HALF2])[None]
    out = reactivated_affinity(attn, torch.tensor([[1.0, 0.5]]))
    assert torch.allclose(out[0], torch.tensor([[1.25, 0.25], [0.25, 1.25]]))
    # (L,) weights broadcast over the batch
    assert torch.allclose(reactivated_affinity(attn.repeat(2, 1, 1, 1), torch.tensor([1.0, 0.5]))[1], out[0])


def test_reactivated_cams_drops_the_noisiest_layer():
    # layer 1 identity (entropy 0.5822) and layer 2 uniform (entropy ln 2, the highest): w = [1, 0], so
    # M_hat = M through the identity = M.
    cams = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    m_hat, w, w_hat = reactivated_cams(cams, torch.stack([EYE2, HALF2])[None])
    assert w.tolist() == [[1.0, 0.0]] and w_hat.tolist() == [[0.0, 1.0]]
    assert torch.allclose(m_hat, cams)


def test_normalize_cams():
    cams = torch.tensor([[2.0, 4.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    out = normalize_cams(cams)
    assert torch.allclose(out.flatten(), torch.tensor([0.5, 1.0, 0.0, 0.0]))


def test_affinity_labels_by_hand():
    # Eq. 17 on labels [0, 1, 255] and [1, 1, 0]: same class 1, different 0, any ignored pixel 255
    labels = torch.tensor([[[0, 1, 255]], [[1, 1, 0]]])
    out = affinity_labels(labels)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 3)
    assert out[0].tolist() == [[1, 0, 255], [0, 1, 255], [255, 255, 255]]
    assert out[1].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_affinity_loss_by_hand():
    # labels [0, 1, 255] -> positives (0,0), (1,1): N+ = 2; negatives (0,1), (1,0): N- = 2.
    # logits: A00 = 0 (sigmoid .5), A11 = ln 3 (.75), A01 = 0 (.5), A10 = -ln 3 (.25); ignored pairs = 9.
    # Eq. 18: ((1-.5) + (1-.75)) / 2 + (.5 + .25) / 2 = .375 + .375 = .75
    # second layer: all logits 0 -> (0.5 + 0.5)/2 + (0.5 + 0.5)/2 = 1.0
    # Eq. 19 with w_hat = [0.5, 1.0]: 0.5 * 0.75 + 1.0 * 1.0 = 1.375
    ln3 = math.log(3)
    layer1 = torch.tensor([[0.0, 0.0, 9.0], [-ln3, ln3, 9.0], [9.0, 9.0, 9.0]])
    logits = torch.stack([layer1, torch.zeros(3, 3)])[None]
    labels = affinity_labels(torch.tensor([[[0, 1, 255]]]))
    per = affinity_loss_per_layer(logits, labels)
    assert torch.allclose(per, torch.tensor([[0.75, 1.0]]))
    loss = affinity_loss(logits, labels, torch.tensor([[0.5, 1.0]]))
    assert torch.isclose(loss, torch.tensor(1.375))
    # batch mean: a second image with every pair ignored adds 0 -> (1.375 + 0) / 2
    both = affinity_loss(logits.repeat(2, 1, 1, 1), torch.cat([labels, torch.full_like(labels, 255)]),
                         torch.tensor([[0.5, 1.0], [1.0, 1.0]]))
    assert torch.isclose(both, torch.tensor(1.375 / 2))


def test_affinity_loss_counts_are_per_image_and_zero_counts_are_safe():
    # only positives: no negative term, no division by zero
    logits = torch.zeros(1, 1, 2, 2)
    labels = affinity_labels(torch.tensor([[[1, 1]]]))
    assert torch.isclose(affinity_loss(logits, labels, torch.ones(1)), torch.tensor(0.5))
    all_ignored = torch.full((1, 2, 2), 255, dtype=torch.uint8)
    out = affinity_loss(logits, all_ignored, torch.ones(1, 1))
    assert torch.isfinite(out) and out.item() == 0.0


def test_affinity_loss_does_not_backpropagate_into_w_hat():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    w_hat = torch.tensor([[0.3, 0.7]], requires_grad=True)
    affinity_loss(logits, affinity_labels(torch.tensor([[[0, 1, 1]]])), w_hat).backward()
    assert w_hat.grad is None
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gradcheck_of_the_whole_chain():
    """Eqs. 7-12 (through the entropy weights) and Eqs. 18-19, in float64, against finite differences."""
    torch.manual_seed(0)
    b, c, h, w, n_layers = 1, 2, 2, 2, 3
    n = h * w
    cams = torch.rand(b, c, h, w, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(b, n_layers, n, n, dtype=torch.float64, requires_grad=True)
    labels = affinity_labels(torch.tensor([[[0, 1], [1, 255]]]))
    with torch.no_grad():  # labels and weights are fixed inputs of the loss, as in training
        _, _, w_hat = reactivated_cams(cams, logits.softmax(-1))

    def chain(cams, logits):
        m_hat, _, _ = reactivated_cams(cams, logits.softmax(-1))
        return m_hat.sum() * 0.1 + affinity_loss(logits, labels, w_hat)

    assert torch.autograd.gradcheck(chain, (cams, logits), eps=1e-6, atol=1e-5)

"""The Adaptive Re-Activation Mechanism (Sec. IV-B): Eqs. 4-5, 7-12 and 17-19 on tensors.

Shapes: B images, C classes, L layers, a patch grid h x w with N = h * w tokens. An affinity matrix
``A`` (N, N) holds in row i the attention of query token i over the key tokens j; the layer affinities
``attn`` (B, L, N, N) are the softmax-normalised ones, sigma(A^(l)) (see ``pipeline.models.vit`` for
how the patch block is taken). All functions are differentiable; training computes labels and weights
under ``torch.no_grad`` and :func:`affinity_loss` detaches the counterpart weights itself.

Refinement (Eqs. 5, 7, 12) multiplies each flattened class map by A^T: token i takes the
attention-weighted sum of the map over the tokens it attends to,

    M'[c, i] = sum_j M[c, j] A[i, j].

Re-activation (Eqs. 7-11): a refined CAM per layer, its entropy e^(l) (max over classes, softmax over
the N positions, Shannon entropy), min-max over the layers of each image to the counterpart weights
w_hat = (e - min e) / (max e - min e) and the re-activation weights w = 1 - w_hat, then
A_hat = sum_l w^(l) sigma(A^(l)). When all layers of an image have the same entropy (up to ``eps``)
Eq. 9 is 0 / 0; we take w_hat = 0 and w = 1 there (no layer is singled out).

Affinity loss (Eqs. 17-19): pixel-pair labels from a label map (1 same class, 0 different class,
255 if either pixel is ignored), then per layer the mean of (1 - sigmoid(A)) over positive pairs plus
the mean of sigmoid(A) over negative pairs, weighted by w_hat and summed over layers. Counts and
means are per image (the weights are per image) and the result is averaged over the batch; an image
without positive (or negative) pairs contributes 0 for that term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.vocabulary import IGNORE_INDEX


def refine_cams(cams: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """Eqs. 5 / 7 / 12. cams: (B, C, h, w), affinity: (B, N, N) -> (B, C, h, w): Gamma^-1(Gamma(M) A^T)."""
    b, c, h, w = cams.shape
    if affinity.shape != (b, h * w, h * w):
        raise ValueError(f"affinity must be (B, N, N) = ({b}, {h * w}, {h * w}), got {tuple(affinity.shape)}")
    return (cams.reshape(b, c, h * w) @ affinity.transpose(1, 2)).reshape(b, c, h, w)


def refine_per_layer(cams: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Eq. 7 for every layer. cams: (B, C, h, w), attn: (B, L, N, N) -> (B, L, C, h, w)."""
    b, c, h, w = cams.shape
    if attn.ndim != 4 or attn.shape[0] != b or attn.shape[2:] != (h * w, h * w):
        raise ValueError(f"attn must be (B, L, N, N) with B={b}, N={h * w}, got {tuple(attn.shape)}")
    out = torch.einsum("bcj,blij->blci", cams.reshape(b, c, h * w), attn)
    return out.reshape(b, attn.shape[1], c, h, w)


def average_affinity(attn: torch.Tensor) -> torch.Tensor:
    """Eq. 4: attn (B, L, N, N) -> mean over layers (B, N, N)."""
    return attn.mean(dim=1)


def first_k_affinity(attn: torch.Tensor, k: int) -> torch.Tensor:
    """Table III's direct fusion of the first ``k`` layers: attn (B, L, N, N) -> (B, N, N) mean of layers 1..k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return attn[:, :k].mean(dim=1)


def layer_entropy(cams: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Eqs. 7-8. cams: (B, C, h, w), attn: (B, L, N, N) softmax-normalised -> e (B, L) float64.

    e^(l) = -sum_p s_p log s_p with s = softmax over the N positions of max_c M^(l)[c, p].
    (The softmax is not scale invariant: pass CAMs on the scale you mean, e.g. max-normalised.)
    """
    refined = refine_per_layer(cams, attn)  # (B, L, C, h, w)
    b, l_, c = refined.shape[:3]
    if c == 0:
        heat = refined.new_zeros(b, l_, refined.shape[-2] * refined.shape[-1])
    else:
        heat = refined.amax(dim=2).flatten(2)  # (B, L, N) class-agnostic heat map
    # float64: entropies sit close to log N and differ between layers by as little as 1e-6 (flat maps)
    logp = F.log_softmax(heat.double(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def reactivation_weights(entropy: torch.Tensor, eps: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 9-10. entropy: (B, L) -> (w, w_hat), each (B, L), min-max over the layers of each image.

    Where max - min <= ``eps`` (all layers alike): w_hat = 0, w = 1.
    """
    lo = entropy.amin(dim=-1, keepdim=True)
    span = entropy.amax(dim=-1, keepdim=True) - lo
    flat = span <= eps
    safe_span = torch.where(flat, torch.ones_like(span), span)
    w_hat = torch.where(flat, torch.zeros_like(entropy), (entropy - lo) / safe_span)
    return 1.0 - w_hat, w_hat


def reactivated_affinity(attn: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eq. 11. attn: (B, L, N, N), w: (B, L) (or (L,)) -> A_hat (B, N, N) = sum_l w^(l) sigma(A^(l))."""
    w = w.to(attn.dtype)
    if w.ndim == 1:
        w = w.unsqueeze(0).expand(attn.shape[0], -1)
    return torch.einsum("bl,blij->bij", w, attn)


def normalize_cams(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, h, w) >= 0 -> each class map divided by its maximum (all-zero maps stay zero)."""
    top = cams.flatten(2).amax(dim=-1).clamp_min(eps)
    return cams / top[..., None, None]


def reactivated_cams(cams: torch.Tensor, attn: torch.Tensor, eps: float = 1e-9):
    """Eqs. 7-12 in one call. cams: (B, C, h, w), attn: (B, L, N, N) ->
    (M_hat (B, C, h, w), w (B, L), w_hat (B, L))."""
    w, w_hat = reactivation_weights(layer_entropy(cams, attn), eps)
    return refine_cams(cams, reactivated_affinity(attn, w)), w, w_hat


def affinity_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Eq. 17. labels: (B, h, w) int label map -> Y_a (B, N, N) uint8: 1 same label, 0 different, 255 if
    either pixel is ``ignore_index``."""
    flat = labels.reshape(labels.shape[0], -1)
    same = flat.unsqueeze(2) == flat.unsqueeze(1)
    valid = (flat != ignore_index).unsqueeze(2) & (flat != ignore_index).unsqueeze(1)
    out = torch.full(same.shape, ignore_index, dtype=torch.uint8, device=labels.device)
    out[valid] = same[valid].to(torch.uint8)
    return out


def affinity_loss_per_layer(attn_logits: torch.Tensor, aff_labels: torch.Tensor) -> torch.Tensor:
    """Eq. 18 per image and layer. attn_logits: (B, L, N, N) pre-softmax, aff_labels: (B, N, N) -> (B, L)."""
    if attn_logits.ndim != 4 or aff_labels.shape != (attn_logits.shape[0], *attn_logits.shape[2:]):
        raise ValueError(f"attn_logits (B, L, N, N) {tuple(attn_logits.shape)} and aff_labels (B, N, N) "
                         f"{tuple(aff_labels.shape)} do not match")
    prob = attn_logits.to(torch.promote_types(attn_logits.dtype, torch.float32)).sigmoid()  # fp16/bf16 -> fp32
    pos = (aff_labels == 1).unsqueeze(1).to(prob.dtype)
    neg = (aff_labels == 0).unsqueeze(1).to(prob.dtype)
    n_pos = pos.sum(dim=(-2, -1)).clamp_min(1.0)  # (B, 1); no pair -> the sum is 0 anyway
    n_neg = neg.sum(dim=(-2, -1)).clamp_min(1.0)
    return ((1.0 - prob) * pos).sum(dim=(-2, -1)) / n_pos + (prob * neg).sum(dim=(-2, -1)) / n_neg


def affinity_loss(attn_logits: torch.Tensor, aff_labels: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """Eqs. 18-19 averaged over the batch. attn_logits: (B, L, N, N), aff_labels: (B, N, N) of 1 / 0 / 255,
    w_hat: (B, L) or (L,) counterpart weights (detached here) -> scalar."""
    per = affinity_loss_per_layer(attn_logits, aff_labels)
    w_hat = w_hat.detach().to(per.dtype)
    if w_hat.ndim == 1:
        w_hat = w_hat.unsqueeze(0)
    return (w_hat * per).sum(dim=1).mean()

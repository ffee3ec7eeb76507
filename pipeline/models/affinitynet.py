"""AffinityNet (Ahn and Kwak, CVPR 2018): a CNN embedding whose L1 distances predict pixel affinities.

A timm backbone (``features_only=True``) gives a feature pyramid; every level at stride >=
``feature_stride`` is projected by a 1x1 convolution (+ ELU), resized to the common grid of
``ceil(H / feature_stride) x ceil(W / feature_stride)`` cells, concatenated and fused by another
1x1 convolution (+ ELU) into the embedding ``f``. The affinity of two cells is

    a_ij = exp(-mean_d |f_i[d] - f_j[d]|)

(the L1 distance averaged over channels, as in the reference implementation), computed only for
pairs closer than ``radius`` cells. :func:`radius_offsets` lists each unordered pair once
(the "forward" half of the disc); training uses the pairs of every offset that fall inside the
feature map, the random walk builds a sparse symmetric matrix from them. With ``border`` = radius - 1
(``psa.pairs: cropped``) only the pairs PSA's reference code uses are kept: those whose source cell lies
neither in the last ``border`` rows nor in the first or last ``border`` columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config import weights_file
from pipeline.models.inputs import IMAGENET_MEAN, IMAGENET_STD, backbone_normalisation
from pipeline.models.weights import check_state_fits, load_error_summary, loading_weights


def radius_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) to the neighbours strictly within ``radius``, each unordered pair once.

    (0, dx) for dx = 1..radius-1, then every (dy, dx) with dy >= 1 and dy^2 + dx^2 < radius^2.
    """
    if radius < 2:
        raise ValueError(f"radius must be >= 2 to have neighbours, got {radius}")
    out = [(0, dx) for dx in range(1, radius)]
    out += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius)
            if dy * dy + dx * dx < radius * radius]
    return out


def pair_border(radius: int, pairs: str) -> int:
    """Cells excluded as pair sources at the bottom, left and right: 0 for ``all``, radius - 1 for ``cropped``."""
    return radius - 1 if pairs == "cropped" else 0


def pair_slices(h: int, w: int, dy: int, dx: int, border: int = 0
                ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Index slices (rows, cols) of the 'from' and 'to' cells of offset (dy, dx) inside an h x w map.

    ``border`` = 0: every pair inside the map. ``border`` = b >= max(dy, |dx|): the sources are the cells of
    rows [0, h - b) and columns [b, w - b) (PSA's ``get_indices_of_pairs``), their targets always inside."""
    if border:
        if max(dy, abs(dx)) > border:
            raise ValueError(f"offset ({dy}, {dx}) reaches past the border of {border} cells")
        if h <= border or w <= 2 * border:
            return None
        rows, cols = slice(0, h - border), slice(border, w - border)
        return (rows, cols), (slice(dy, h - border + dy), slice(border + dx, w - border + dx))
    if dy >= h or abs(dx) >= w:
        return None
    x0, x1 = max(0, -dx), w - max(0, dx)
    return (slice(0, h - dy), slice(x0, x1)), (slice(dy, h), slice(x0 + dx, x1 + dx))


def pair_affinities(emb: torch.Tensor, offsets: list[tuple[int, int]], border: int = 0) -> torch.Tensor:
    """Affinities of the pairs of :func:`pair_slices`: emb (B, D, h, w) -> (B, P) in (0, 1], offsets in order."""
    b, _, h, w = emb.shape
    out = []
    for dy, dx in offsets:
        s = pair_slices(h, w, dy, dx, border)
        if s is None:
            continue
        (ry, rx), (ty, tx) = s
        out.append(torch.exp(-(emb[:, :, ry, rx] - emb[:, :, ty, tx]).abs().mean(1)).reshape(b, -1))
    return torch.cat(out, 1) if out else emb.new_zeros((b, 0))


def pair_labels(label: torch.Tensor, offsets: list[tuple[int, int]], ignore_index: int = 255, border: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PSA affinity labels of the same pairs as :func:`pair_affinities`.

    label: (B, h, w) integer (0 background, classes, ``ignore_index``). Returns three (B, P) bool
    masks: positive background pairs, positive foreground pairs, negative pairs (different labels);
    a pair touching an ignored cell is in none of them.
    """
    b, h, w = label.shape
    bg, fg, neg = [], [], []
    for dy, dx in offsets:
        s = pair_slices(h, w, dy, dx, border)
        if s is None:
            continue
        (ry, rx), (ty, tx) = s
        a, c = label[:, ry, rx].reshape(b, -1), label[:, ty, tx].reshape(b, -1)
        valid = (a != ignore_index) & (c != ignore_index)
        same = a == c
        bg.append(valid & same & (a == 0))
        fg.append(valid & same & (a != 0))
        neg.append(valid & ~same)
    if not bg:
        empty = torch.zeros((b, 0), dtype=torch.bool, device=label.device)
        return empty, empty, empty
    return torch.cat(bg, 1), torch.cat(fg, 1), torch.cat(neg, 1)


def pair_affinity_loss(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor,
                  eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """PSA's balanced cross-entropy on pair affinities: loss = bg/4 + fg/4 + neg/2.

    aff, masks: (B, P). Each term is a mean over its own pairs (positive terms -log a, negative
    term -log(1 - a)), so the rare foreground pairs weigh as much as the many background pairs.
    """
    aff = aff.float()
    pos_log, neg_log = -torch.log(aff + eps), -torch.log(1.0 + eps - aff)

    def mean(values, mask):
        return torch.where(mask, values, 0.0).sum() / (mask.sum() + eps)

    bg_loss, fg_loss, neg_loss = mean(pos_log, bg_pos), mean(pos_log, fg_pos), mean(neg_log, neg)
    return {"loss": bg_loss / 4 + fg_loss / 4 + neg_loss / 2, "bg_loss": bg_loss, "fg_loss": fg_loss,
            "neg_loss": neg_loss}


def affinity_matrix(emb: torch.Tensor, radius: int, border: int = 0) -> torch.Tensor:
    """Sparse symmetric (N, N) affinity matrix of one embedding (D, h, w), N = h * w, diagonal 1.

    Entries exist for the pairs within ``radius`` (both directions; ``border`` as in :func:`pair_slices`)
    and the diagonal; everything else is 0. Returned as a coalesced torch sparse COO tensor on the embedding's device.
    """
    d, h, w = emb.shape
    n = h * w
    index = torch.arange(n, device=emb.device).reshape(h, w)
    rows, cols, vals = [index.reshape(-1)], [index.reshape(-1)], [emb.new_ones(n)]
    for dy, dx in radius_offsets(radius):
        s = pair_slices(h, w, dy, dx, border)
        if s is None:
            continue
        (ry, rx), (ty, tx) = s
        a = torch.exp(-(emb[:, ry, rx] - emb[:, ty, tx]).abs().mean(0)).reshape(-1)
        i, j = index[ry, rx].reshape(-1), index[ty, tx].reshape(-1)
        rows += [i, j]
        cols += [j, i]
        vals += [a, a]
    ind = torch.stack([torch.cat(rows), torch.cat(cols)])
    return torch.sparse_coo_tensor(ind, torch.cat(vals).float(), (n, n), check_invariants=False).coalesce()


def _projection_dim(level: int) -> int:
    return min(32 * 2**level, 256)


class AffinityNet(nn.Module):
    """Backbone pyramid -> fused embedding (B, embed_dim, ceil(H/s), ceil(W/s)) -> pair affinities."""

    def __init__(self, backbone: str, pretrained: str, feature_stride: int, embed_dim: int,
                 normalisation: tuple[Sequence[float], Sequence[float]] | None = None):
        super().__init__()
        import timm

        kwargs: dict = {"features_only": True, "pretrained": pretrained != "none"}
        path = weights_file(pretrained)  # None: random init (none) or the hub's weights (timm)
        if path is not None:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: AffinityNet backbone weights not found")
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        with loading_weights("psa.pretrained", path, f"psa.backbone {backbone!r}"):
            self.body = timm.create_model(backbone, **kwargs)
        if path is not None:  # timm loads a feature extractor's weights non-strictly: missing tensors stay random
            from timm.models import load_state_dict

            check_state_fits("psa.pretrained", path, f"psa.backbone {backbone!r}", load_state_dict(str(path)),
                             self.body.state_dict())
        reductions = self.body.feature_info.reduction()
        self.levels = [i for i, r in enumerate(reductions) if r >= feature_stride]
        if not self.levels:
            raise ValueError(f"{backbone}: no feature level at stride >= {feature_stride} (has {reductions})")
        self.feature_stride = feature_stride
        channels = [self.body.feature_info.channels()[i] for i in self.levels]
        levels = self.levels
        dims = [_projection_dim(i) for i in range(len(levels))]
        self.proj = nn.ModuleList(nn.Conv2d(c, d, 1, bias=False) for c, d in zip(channels, dims))
        self.embed_dim = embed_dim or sum(dims)
        self.fuse = nn.Conv2d(sum(dims), self.embed_dim, 1, bias=False)
        for conv in self.proj:
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.fuse.weight, gain=4.0)  # large initial distances, as PSA
        mean, std = backbone_normalisation(backbone) if normalisation is None else normalisation
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.config = {"backbone": backbone, "feature_stride": feature_stride, "embed_dim": self.embed_dim,
                       "normalisation": [list(map(float, mean)), list(map(float, std))]}

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Feature-grid size of an image: (ceil(H / s), ceil(W / s))."""
        return math.ceil(height / self.feature_stride), math.ceil(width / self.feature_stride)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> normalised as the backbone's ImageNet weights expect."""
        return (image - self.mean) / self.std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: (B, 3, H, W) float in [0, 1]. Returns the embedding (B, D, ceil(H/s), ceil(W/s))."""
        size = self.grid(*image.shape[-2:])
        feats = self.body(self.normalize(image))
        feats = [feats[i] for i in self.levels]
        fused = [F.interpolate(F.elu(p(f)), size=size, mode="bilinear", align_corners=False)
                 for p, f in zip(self.proj, feats)]
        return F.elu(self.fuse(torch.cat(fused, 1)))


def save_affinitynet(model: AffinityNet, path: str | Path, extra: dict | None = None) -> None:
    """Write weights + architecture atomically (``extra``: params hash, metrics...)."""
    from pipeline.common.io import write_torch

    write_torch(path, {"config": model.config, "state_dict": model.state_dict(), **(extra or {})})


def load_affinitynet(path: str | Path, device: torch.device | str = "cpu") -> AffinityNet:
    """Rebuild an AffinityNet from :func:`save_affinitynet` output (no weight download)."""
    from pipeline.common.io import DataError

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ckpt["config"]
        # a file without its normalisation was trained on ImageNet's mean / std, as every network was then
        norm = cfg.get("normalisation", (IMAGENET_MEAN, IMAGENET_STD))
        model = AffinityNet(cfg["backbone"], "none", cfg["feature_stride"], cfg["embed_dim"], norm)
        model.load_state_dict(ckpt["state_dict"])
    except FileNotFoundError:
        raise DataError(f"{path}: AffinityNet weights not found (did train_psa run?)") from None
    except (KeyError, RuntimeError, OSError) as err:
        raise DataError(f"{path}: not an AffinityNet checkpoint ({load_error_summary(err) or err})") from None
    return model.to(device).eval()

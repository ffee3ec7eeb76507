"""CAM export: multi-scale + flip inference, affinity-refinement variants, compact storage.

Every variant comes from the same forward pass per (scale, flip) of the classifier:

- ``cam``: the non-refined CAM M (Eq. 1; the classifier's configured CAM, ``classifier.cam``).
- ``avg``: M refined with the average of all layers' softmax affinities (Eqs. 4-5). This is also how
  the paper refines CAMs at inference with an AReAM-trained classifier ("the disciplined affinity
  matrices of all layers are averaged"), so ``avg`` of an AReAM model is the paper's main result.
- ``aream``: M refined with the entropy-weighted affinity of Eqs. 7-12, the re-activation weights
  computed on this very image (the training-time refinement, reported as its own variant).
- ``first_k``: M refined with the average of the first K layers' affinities (Table III).

The equations themselves live in :mod:`pipeline.cams.aream`; this module only batches, merges and stores.

Inputs: each image is resized to a square ``side x side`` (``side`` = img_size * scale rounded to the
patch size) rather than padded. Padding would add tokens that take part in every affinity row (Eq. 11
rows would spread mass onto padding) and in the entropy of Eq. 8, and the classifier is trained on
square crops with aspect jitter, so a moderate aspect change is in-distribution. The token-grid maps
are then resized back onto the image's own aspect.

Per forward (:func:`forward_variants`): the CAM maps of the image's ground-truth classes are kept and
max-normalised per class (Eq. 1's scaling to [0, 1], which also sets the scale Eq. 8's softmax sees,
as in training), then refined. TTA merge, per variant (:class:`CamAccumulator`): each (scale, flip)'s
maps are ReLU-ed, resized (bilinear, ``align_corners=False``) to the output grid
``(ceil(H / stride), ceil(W / stride))``, flipped back when the input was flipped, and summed; the sum
is finally scaled per class to [0, 1] (``cams.normalize``: min-max by default, see
:func:`normalize_maps`). The output grid covers the full image extent, so
:func:`load_cam_scores` (bilinear, ``align_corners=False``, to (H, W)) is its exact inverse mapping.

Storage contract (``data/cams/<id>.npz``, see :func:`pack_cams`): ``keys`` int16 (K,) ground-truth
foreground classes in 1..C, ``size`` int32 (H, W), and one float16 (K, h, w) array per variant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.cams.aream import layer_entropy, normalize_cams, reactivation_weights, refine_cams
from pipeline.config import Cams
from pipeline.vocabulary import CAM_VARIANTS

# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------


def input_side(img_size: int, scale: float, patch_size: int) -> int:
    """Square input side for a test scale: ``img_size * scale`` rounded to a multiple of the patch."""
    return max(patch_size, int(round(img_size * scale / patch_size)) * patch_size)


def output_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """Stored CAM grid of an (H, W) image: (ceil(H / stride), ceil(W / stride))."""
    return math.ceil(height / stride), math.ceil(width / stride)


def resize_images(images: Sequence[np.ndarray], side: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H_i, W_i, 3) uint8 images of any sizes -> (B, 3, side, side) float in [0, 1] on ``device``.

    Bilinear with antialiasing, on the CPU in uint8 (PyTorch's vectorised uint8 path is two orders of
    magnitude faster than its float one here), then moved to ``device`` as one batch.
    """
    out = []
    for img in images:
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.uint8)).permute(2, 0, 1)[None]
        if x.shape[-2:] != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        out.append(x)
    return torch.cat(out).to(device).float().div_(255)


# ----------------------------------------------------------------------------------------------
# refinement variants
# ----------------------------------------------------------------------------------------------


def layer_weights(cam: torch.Tensor, attn: torch.Tensor, variants: Sequence[str], first_k: int) -> torch.Tensor:
    """Each refined variant's affinity is a weighted sum of the layers' sigma(A^(l)); its weights.

    cam: (B, K, h, w) non-refined CAM of the image's classes (max-normalised, zero padding allowed);
    attn: (B, L, N, N). Returns (B, V, L) for the refined variants in the order given (``cam`` skipped):
    ``avg`` 1 / L each (Eq. 4), ``first_k`` 1 / K on layers 1..K (Table III), ``aream`` the
    re-activation weights w^(l) of Eqs. 7-10 computed from ``cam`` and ``attn`` on this image (Eq. 11).
    """
    B, L = attn.shape[:2]
    rows = []
    for v in variants:
        if v == "avg":
            rows.append(attn.new_full((B, L), 1.0 / L))
        elif v == "first_k":
            if not 1 <= first_k <= L:
                raise ValueError(f"first_k={first_k} outside 1..{L} (the classifier has {L} layers)")
            row = attn.new_zeros(B, L)
            row[:, :first_k] = 1.0 / first_k
            rows.append(row)
        elif v == "aream":
            w, _ = reactivation_weights(layer_entropy(cam, attn))
            rows.append(w.to(attn.dtype))
        elif v != "cam":
            raise ValueError(f"unknown CAM variant {v!r} (choose from {', '.join(CAM_VARIANTS)})")
    return torch.stack(rows, 1) if rows else attn.new_zeros(B, 0, L)


def variant_affinities(cam: torch.Tensor, attn: torch.Tensor, variants: Sequence[str], first_k: int) -> torch.Tensor:
    """(B, V, N, N) affinities of the refined variants: sum_l weight[v, l] sigma(A^(l)) for all V at once.

    One batched matmul (B, V, L) x (B, L, N * N) reads the L attention matrices once, instead of one
    pass per variant (``pipeline.cams.aream.average_affinity`` / ``first_k_affinity`` / ``reactivated_affinity``
    compute the same sums one at a time).
    """
    B, L, N, _ = attn.shape
    weights = layer_weights(cam, attn, variants, first_k)
    return torch.bmm(weights, attn.reshape(B, L, N * N)).reshape(B, -1, N, N)


def refine_variants(cam: torch.Tensor, attn: torch.Tensor, variants: Sequence[str],
                    first_k: int) -> dict[str, torch.Tensor]:
    """All requested variants of one forward pass: {variant: (B, K, h, w)} (``cam`` passed through).

    cam: (B, K, h, w) >= 0; attn: (B, L, N, N). The refined variants share one batched call of
    :func:`pipeline.cams.aream.refine_cams` (Eqs. 5 / 12) over the (B * V) affinities of
    :func:`variant_affinities`.
    """
    cam = cam.float()
    attn = attn.float().contiguous()
    names = [v for v in variants if v != "cam"]
    out: dict[str, torch.Tensor] = {}
    if names:
        B, K, h, w = cam.shape
        V = len(names)
        A = variant_affinities(cam, attn, names, first_k).reshape(B * V, h * w, h * w)
        x = cam[:, None].expand(B, V, K, h, w).reshape(B * V, K, h, w)
        refined = refine_cams(x, A).reshape(B, V, K, h, w)
        out = {n: refined[:, i] for i, n in enumerate(names)}
    return {v: (cam if v == "cam" else out[v]) for v in variants}


def gather_classes(cam: torch.Tensor, labels: Sequence[Sequence[int]]) -> torch.Tensor:
    """Keep each image's ground-truth classes: cam (B, C, h, w), labels (1..C) per image ->
    (B, K_max, h, w) with image b's K_b classes first (in ``labels`` order) and zeros after them.

    Refining only these maps instead of all C saves C / K_max of the work; zero maps change neither
    the refined maps of the other classes nor Eq. 8's class maximum (maps are >= 0)."""
    B, C, h, w = cam.shape
    kmax = max((len(k) for k in labels), default=0)
    idx = torch.zeros(B, kmax, dtype=torch.long)
    valid = torch.zeros(B, kmax, dtype=cam.dtype)
    for b, keys in enumerate(labels):
        if len(keys):
            idx[b, :len(keys)] = torch.as_tensor(list(keys), dtype=torch.long) - 1
            valid[b, :len(keys)] = 1
    idx, valid = idx.to(cam.device), valid.to(cam.device)
    picked = cam.gather(1, idx[:, :, None, None].expand(B, kmax, h, w))
    return picked * valid[:, :, None, None]


# ----------------------------------------------------------------------------------------------
# test-time augmentation merge
# ----------------------------------------------------------------------------------------------


@dataclass
class CamAccumulator:
    """Sum of ReLU-ed, resized, un-flipped maps of one image's classes, per variant.

    keys: (K,) foreground classes 1..C; size: (H, W) of the original image; grid: the stored
    output grid (h, w). ``add`` takes the (V, K, g_h, g_w) maps of one forward; ``result`` returns
    {variant: (K, h, w) float32 in [0, 1]} normalised per class (``normalize``).
    """

    keys: np.ndarray
    size: tuple[int, int]
    grid: tuple[int, int]
    variants: tuple[str, ...]
    normalize: str = "minmax"  # per-class scaling of the merged maps: minmax | max (normalize_maps)
    total: torch.Tensor | None = field(default=None, repr=False)

    def add(self, maps: torch.Tensor, flipped: bool) -> None:
        """maps: (V, K, g_h, g_w) in the order of ``variants``, the classes of ``keys``."""
        if maps.shape[1] != len(self.keys):
            raise ValueError(f"maps hold {maps.shape[1]} classes, the image has {len(self.keys)}")
        sel = maps.float().clamp_min(0)  # ReLU
        if sel.shape[1]:
            sel = F.interpolate(sel, size=self.grid, mode="bilinear", align_corners=False)
        else:
            sel = sel.new_zeros(sel.shape[0], 0, *self.grid)
        if flipped:
            sel = sel.flip(-1)
        self.total = sel if self.total is None else self.total + sel

    def result(self) -> dict[str, np.ndarray]:
        if self.total is None:
            raise ValueError("no forward pass was added")
        return {v: t.numpy() for v, t in zip(self.variants, normalize_maps(self.total.cpu(), self.normalize))}


def normalize_max(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(..., h, w) >= 0 -> each map divided by its own maximum (all-zero maps stay zero)."""
    peak = maps.flatten(-2).amax(-1)[..., None, None]
    return maps / peak.clamp_min(eps)


def normalize_maps(maps: torch.Tensor, mode: str = "minmax", eps: float = 1e-8) -> torch.Tensor:
    """(..., h, w) >= 0 -> each map scaled to [0, 1].

    ``max``: divided by its maximum. ``minmax``: (m - min) / (max - min), MCTformer's export
    normalisation; it removes the floor that a diffuse affinity adds to a refined map (every
    pixel attends a little to the object), which would otherwise push the best background
    threshold towards 1. A constant map becomes all zeros under ``minmax``.
    """
    if mode == "max":
        return normalize_max(maps, eps)
    if mode != "minmax":
        raise ValueError(f"unknown CAM normalisation {mode!r} (max | minmax)")
    flat = maps.flatten(-2)
    low = flat.amin(-1)[..., None, None]
    span = flat.amax(-1)[..., None, None] - low
    return (maps - low) / span.clamp_min(eps)


@torch.no_grad()
def forward_variants(model: Any, x: torch.Tensor, labels: Sequence[Sequence[int]], variants: Sequence[str],
                     first_k: int, amp: bool = True) -> torch.Tensor:
    """One forward pass -> (B, V, K_max, g, g) maps of the image's classes, one per variant.

    The CAM of the ground-truth classes is max-normalised per class first (Eq. 1's scaling to [0, 1];
    it also fixes the scale that Eq. 8's softmax sees), then refined (Eqs. 4-5, 7-12, Table III).
    """
    with torch.autocast(x.device.type, enabled=amp and x.device.type == "cuda"):
        out = model(x)
    cam = normalize_cams(gather_classes(out.cam.float().clamp_min(0), labels))
    maps = refine_variants(cam, out.attn.float(), variants, first_k)
    return torch.stack([maps[v] for v in variants], 1)


@torch.no_grad()
def infer_cams(model: Any, images: Sequence[np.ndarray], labels: Sequence[Sequence[int]], cfg: Cams, *,
               img_size: int, patch_size: int, device: torch.device | str = "cpu", preprocess: Any = None,
               amp: bool = True) -> list[dict[str, Any]]:
    """CAM variants of a batch of images, merged over scales and flips, then scaled to [0, 1] per class.

    ``cfg`` (the ``cams`` params section) gives the variants, ``first_k``, the test scales, the flip, the
    output stride and the normalisation (minmax | max, see :func:`normalize_maps`); ``img_size`` and
    ``patch_size`` are the classifier's.

    images: (H_i, W_i, 3) uint8, any sizes; labels: each image's foreground classes (1..C).
    ``model(x)`` takes (B, 3, s, s) and returns an object with ``cam`` (B, C, g, g) >= 0 and ``attn``
    (B, L, g*g, g*g). ``preprocess`` maps the [0, 1] batch to the model's input (normalisation).
    Returns per image {"keys": (K,) int, "size": (H, W), variant: (K, h, w) float32 in [0, 1]}.
    """
    device = torch.device(device)
    variants, stride, first_k = tuple(cfg.variants), cfg.stride, cfg.first_k
    accs = []
    for img, keys in zip(images, labels):
        H, W = img.shape[:2]
        accs.append(CamAccumulator(np.asarray(keys, np.int64), (H, W), output_size(H, W, stride), variants,
                                   cfg.normalize))
    for scale in cfg.scales:
        x = resize_images(images, input_side(img_size, scale, patch_size), device)
        if preprocess is not None:
            x = preprocess(x)
        for flipped in ((False, True) if cfg.flip else (False,)):
            stacked = forward_variants(model, x.flip(-1) if flipped else x, labels, variants, first_k, amp)
            for b, acc in enumerate(accs):
                acc.add(stacked[b, :, :len(acc.keys)], flipped)
    results = []
    for acc in accs:
        res: dict[str, Any] = {"keys": acc.keys, "size": acc.size}
        res.update(acc.result())
        results.append(res)
    return results


# ----------------------------------------------------------------------------------------------
# storage
# ----------------------------------------------------------------------------------------------


def pack_cams(result: dict[str, Any], variants: Sequence[str]) -> dict[str, np.ndarray]:
    """One image's :func:`infer_cams` result -> the npz arrays of the storage contract."""
    out = {"keys": np.asarray(result["keys"], np.int16), "size": np.asarray(result["size"], np.int32)}
    for v in variants:
        out[v] = np.asarray(result[v], np.float32).clip(0, 1).astype(np.float16)
    return out


def load_cam_scores(npz: dict[str, np.ndarray], variant: str) -> np.ndarray:
    """Stored CAMs of ``variant`` -> (K, H, W) float32 in [0, 1] at the original size ``npz['size']``.

    npz: the arrays of one ``data/cams/<id>.npz`` (``pipeline.common.io.read_npz``). Bilinear upsampling
    with ``align_corners=False`` (both grids span the full image extent).
    """
    if variant not in npz:
        have = sorted(k for k in npz if k not in ("keys", "size"))
        raise KeyError(f"no {variant!r} CAMs stored (has {', '.join(have) or 'none'})")
    maps = np.asarray(npz[variant], np.float32)
    H, W = (int(s) for s in np.asarray(npz["size"]).reshape(2))
    if maps.ndim != 3:
        raise ValueError(f"{variant!r} CAMs must be (K, h, w), got shape {maps.shape}")
    if maps.shape[0] == 0:
        return np.zeros((0, H, W), np.float32)
    if maps.shape[1:] == (H, W):
        return maps.copy()
    up = F.interpolate(torch.from_numpy(maps)[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    return up.clamp_(0, 1).numpy()


def model_geometry(model: Any) -> tuple[int, int, int]:
    """(img_size, patch_size, depth L) the classifier was built with: its ``img_size``, ``patch_size`` and
    ``depth`` attributes, which every classifier the CAM code takes must have."""
    missing = [k for k in ("img_size", "patch_size", "depth") if not hasattr(model, k)]
    if missing:
        raise TypeError(f"{type(model).__name__} lacks {', '.join(missing)}: not a classifier the CAM code takes")
    return int(model.img_size), int(model.patch_size), int(model.depth)

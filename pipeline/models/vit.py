"""The classifier: a timm Vision Transformer with one class token per class (MCTformer-style) and
per-layer attention capture for AReAM.

Tokens. The C class tokens come first, then the N = h * w patch tokens. Each class token has its own
position embedding; with pretrained weights the backbone's single class token and its position
embedding are repeated C times, from scratch they are drawn independently (truncated normal, std 0.02)
so that the tokens differ from the start. Patch position embeddings are resampled (bicubic) whenever
the input grid differs from the training grid ``img_size / patch_size``, so any input whose sides are
multiples of ``patch_size`` works (multi-scale CAM export).

Scores. Two heads read the last layer's normalised tokens:

- class tokens: class token c through its own linear map (weight row ``W_c``, bias ``b_c``) gives the
  class-c logit ``logits_cls`` (B, C). MCTformer takes the mean over the embedding instead, which is
  this head with ``W_c = 1/D`` fixed; the learned row costs C * D parameters and learns faster from
  scratch.
- patch tokens: a linear map D -> C on every patch token is Eq. 1's classifier ``W``; its output on the
  patch grid is the PatchCAM before the ReLU, and its global average plus a per-class bias gives
  ``logits_patch`` (B, C). The bias is left out of the CAM, as in Eq. 1: it only calibrates the image
  logit (from scratch it goes strongly negative, since most classes are absent from most images, and
  would otherwise zero the ReLU map of every class for many epochs).

Both logits are trained with the multi-label soft margin loss (see ``pipeline.train.classifier``).

Attention capture. Each block runs its own attention forward that computes ``q k^T`` once and keeps
what AReAM needs (no second pass):

- ``attn_logits`` (B, L, N, N): the head-averaged pre-softmax logits ``q k^T / sqrt(d)`` of Eq. 2,
  patch-to-patch block. They keep their gradient (the affinity loss, Eq. 18, acts on them).
- ``attn`` (B, L, N, N): the head-averaged softmax attention (softmax over ALL T = C + N keys, as the
  network uses it, then averaged over heads, as MCTformer does), patch-to-patch block, with every row
  renormalised to sum to 1. Why renormalise: Eqs. 5, 7 and 12 treat each row of sigma(A) as a
  distribution over the patches ("the attention distribution of a token over all other tokens"), and
  the paper's tokens are patches only. Without renormalising, each layer's rows lose the (layer- and
  token-dependent) share of attention paid to the class tokens, so a refined CAM would shrink by a
  different factor per layer and per token; Eq. 8 applies a softmax over positions, which is not
  scale invariant, so the layer entropies (and thus Eqs. 9-11) would rank layers partly by how much
  they attend to class tokens rather than by how their spatial attention spreads. Renormalised rows
  are exactly the attention a query pays to the patches, conditioned on attending to a patch.
  Detached (refinement and entropies are label computations without gradient).
- ``class_attn`` (B, C, h, w): class-to-patch attention (head-averaged softmax rows of the class
  tokens, not renormalised, as MCTformer) summed over the last ``cam_layers`` layers.

CAMs (detached, >= 0): ``patch_cam`` = ReLU(PatchCAM) (Eq. 1); ``cam`` is the configured one:
``fused`` = class_attn * patch_cam (MCTformer-V2), ``class_attn`` or ``patch``.

With ``capture=False`` the layers whose attention is not needed run PyTorch's fused
scaled-dot-product attention (logits-only inference and classification-only training steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config import Classifier, ConfigError, weights_file
from pipeline.common.io import DataError, write_torch
from pipeline.models.inputs import normalize_imagenet
from pipeline.models.weights import load_error_summary, loading_weights


@dataclass
class ClassifierOutput:
    """What :meth:`MultiClassTokenViT.forward` returns (C classes, L layers, N = h * w patches).

    logits_cls: (B, C) class-token logits; logits_patch: (B, C) pooled PatchCAM logits.
    cam: (B, C, h, w) the configured CAM (>= 0, detached) or None; patch_cam: (B, C, h, w) ReLU(PatchCAM)
    (detached); class_attn: (B, C, h, w) class-to-patch attention summed over the last cam_layers, or None;
    attn: (B, L, N, N) row-renormalised head-averaged softmax attention, patch block (detached) or None;
    attn_logits: (B, L, N, N) head-averaged pre-softmax logits, patch block (with gradient) or None;
    grid: (h, w).
    """

    logits_cls: torch.Tensor
    logits_patch: torch.Tensor
    cam: torch.Tensor | None
    patch_cam: torch.Tensor
    class_attn: torch.Tensor | None
    attn: torch.Tensor | None
    attn_logits: torch.Tensor | None
    grid: tuple[int, int]


def _check_backbone(vit: nn.Module, name: str) -> None:
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(vit, VisionTransformer):
        raise ConfigError(f"classifier.backbone: {name!r} is not a timm VisionTransformer")
    if vit.cls_token is None or vit.reg_token is not None or vit.no_embed_class or vit.pos_embed is None:
        raise ConfigError(f"classifier.backbone: {name!r} must have one class token, no register tokens and "
                          "an absolute position embedding that covers the class token (ViT / DeiT style)")
    for blk in vit.blocks:
        if type(blk) is not Block or type(blk.attn) is not Attention or blk.attn.gate is not None:
            raise ConfigError(f"classifier.backbone: {name!r} uses blocks of type {type(blk).__name__}; "
                              "only timm's standard pre-norm Block with Attention is supported")


class MultiClassTokenViT(nn.Module):
    """ViT with C class tokens, a class-token head, a PatchCAM head and attention capture.

    Build with :func:`build_classifier`; ``cfg`` and ``num_classes`` are kept for saving.
    """

    def __init__(self, backbone: nn.Module, cfg: Classifier, num_classes: int, repeat_class_token: bool):
        super().__init__()
        _check_backbone(backbone, cfg.backbone)
        self.cfg = cfg
        self.num_classes = num_classes
        self.img_size, self.patch_size = cfg.img_size, cfg.patch_size
        self.train_grid = (cfg.img_size // cfg.patch_size, cfg.img_size // cfg.patch_size)
        dim = backbone.embed_dim
        with torch.no_grad():
            if repeat_class_token:
                cls = backbone.cls_token.detach().repeat(1, num_classes, 1)
                cls_pos = backbone.pos_embed[:, :1].detach().repeat(1, num_classes, 1)
            else:
                cls = nn.init.trunc_normal_(torch.empty(1, num_classes, dim), std=0.02)
                cls_pos = nn.init.trunc_normal_(torch.empty(1, num_classes, dim), std=0.02)
            patch_pos = backbone.pos_embed[:, backbone.num_prefix_tokens:].detach().clone()
        if patch_pos.shape[1] != self.train_grid[0] * self.train_grid[1]:
            raise ConfigError(f"classifier: backbone position embedding has {patch_pos.shape[1]} patches, "
                              f"expected {self.train_grid[0]}x{self.train_grid[1]}")
        self.cls_tokens = nn.Parameter(cls)
        self.cls_pos_embed = nn.Parameter(cls_pos)
        self.patch_pos_embed = nn.Parameter(patch_pos)
        # the backbone's own class token / position embedding are replaced by the ones above
        backbone.cls_token = None
        backbone.pos_embed = None
        self.backbone = backbone
        self.cls_head = nn.Linear(dim, num_classes)  # used row-wise: class token c . W_c + b_c
        self.patch_head = nn.Linear(dim, num_classes)  # Eq. 1's W (D -> C) on every patch token
        for head in (self.cls_head, self.patch_head):
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    @property
    def depth(self) -> int:
        return len(self.backbone.blocks)

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> this network's input: the ImageNet mean / std of its training images
        (:func:`pipeline.models.inputs.image_to_tensor`)."""
        return normalize_imagenet(x)

    def _patch_pos(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == self.train_grid:
            return self.patch_pos_embed
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(self.patch_pos_embed, new_size=(h, w), old_size=self.train_grid,
                                      num_prefix_tokens=0)

    def _block(self, blk: nn.Module, x: torch.Tensor, explicit: bool):
        """One pre-norm transformer block; ``explicit`` computes the attention matrix (once) and returns
        (x, head-averaged logits (B, T, T), head-averaged softmax (B, T, T)); else (x, None, None)."""
        attn = blk.attn
        b, t, _ = x.shape
        qkv = attn.qkv(blk.norm1(x)).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        logits = probs = None
        if explicit:
            scores = (q * attn.scale) @ k.transpose(-2, -1)  # (B, heads, T, T): Eq. 2 per head
            weights = scores.softmax(dim=-1)
            o = attn.attn_drop(weights) @ v
            logits, probs = scores.mean(dim=1), weights.detach().mean(dim=1)
        else:
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if self.training else 0.0)
        o = attn.proj_drop(attn.proj(attn.norm(o.transpose(1, 2).reshape(b, t, attn.attn_dim))))
        x = x + blk.drop_path1(blk.ls1(o))
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        return x, logits, probs

    def forward(self, x: torch.Tensor, capture: bool = True, with_cam: bool = True) -> ClassifierOutput:
        """x: (B, 3, H, W) normalised images, H and W multiples of ``patch_size``.

        capture: keep every layer's attention (``attn``, ``attn_logits``); with_cam: compute ``cam`` and
        ``class_attn`` (needs the last ``cam_layers`` attention matrices unless ``cam`` is ``patch``).
        """
        bb, c, p = self.backbone, self.num_classes, self.patch_size
        bsz, _, height, width = x.shape
        if height % p or width % p:
            raise ValueError(f"input {height}x{width} is not a multiple of the patch size {p}")
        tokens = bb.patch_embed.proj(x)  # (B, D, h, w)
        h, w = tokens.shape[-2:]
        tokens = bb.patch_embed.norm(tokens.flatten(2).transpose(1, 2))
        tokens = torch.cat([(self.cls_tokens + self.cls_pos_embed).expand(bsz, -1, -1),
                            tokens + self._patch_pos(h, w)], dim=1)
        tokens = bb.norm_pre(bb.patch_drop(bb.pos_drop(tokens)))

        depth = self.depth
        cam_layers = min(self.cfg.cam_layers, depth)
        need_cam_attn = with_cam and self.cfg.cam != "patch"
        logits_l, probs_l, cls_attn = [], [], None
        for i, blk in enumerate(bb.blocks):
            in_cam = need_cam_attn and i >= depth - cam_layers
            tokens, logits, probs = self._block(blk, tokens, explicit=capture or in_cam)
            if capture:
                logits_l.append(logits[:, c:, c:])
                block = probs[:, c:, c:]
                probs_l.append(block / block.sum(dim=-1, keepdim=True).clamp_min(1e-12))
            if in_cam:
                a = probs[:, :c, c:]
                cls_attn = a if cls_attn is None else cls_attn + a
        tokens = bb.norm(tokens)

        cls_out, patch_out = tokens[:, :c], tokens[:, c:]
        logits_cls = (cls_out * self.cls_head.weight).sum(dim=-1) + self.cls_head.bias  # (B, C)
        patch_scores = F.linear(patch_out, self.patch_head.weight).transpose(1, 2).reshape(bsz, c, h, w)  # W^T F
        logits_patch = patch_scores.mean(dim=(2, 3)) + self.patch_head.bias
        patch_cam = F.relu(patch_scores.detach())  # Eq. 1 (the bias only calibrates the image logit)
        class_attn = cls_attn.reshape(bsz, c, h, w) if cls_attn is not None else None
        cam = None
        if with_cam:
            cam = {"fused": lambda: class_attn * patch_cam, "class_attn": lambda: class_attn,
                   "patch": lambda: patch_cam}[self.cfg.cam]()
        return ClassifierOutput(
            logits_cls=logits_cls, logits_patch=logits_patch, cam=cam, patch_cam=patch_cam, class_attn=class_attn,
            attn=torch.stack(probs_l, dim=1) if capture else None,
            attn_logits=torch.stack(logits_l, dim=1) if capture else None,
            grid=(int(h), int(w)))


def _check_weights_file(path: str, depth: int) -> None:
    """A local weights file must exist and hold at least ``depth`` transformer blocks (timm loads adapted
    weights non-strictly, so missing blocks would silently stay random)."""
    from timm.models import load_state_dict

    if not Path(path).is_file():
        raise ConfigError(f"classifier.pretrained: weights file {path!r} not found")
    try:
        state = load_state_dict(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file
        raise ConfigError(f"classifier.pretrained: cannot read weights file {path!r}: {err}") from None
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if len(blocks) < depth:
        raise ConfigError(f"classifier.depth: {depth} blocks asked for, but {path!r} holds {len(blocks)}")


def build_classifier(cfg: Classifier, num_classes: int) -> MultiClassTokenViT:
    """The classifier of ``cfg`` for C = ``num_classes`` foreground classes.

    ``cfg.pretrained``: ``none`` (random init, offline), ``timm`` (hub weights) or a local weights file
    under ``weights/`` (:func:`pipeline.config.weights_file`; loaded by timm with position-embedding /
    patch-embedding resampling). With pretrained weights the
    backbone is built at its own depth and its first ``cfg.depth`` blocks are kept.
    """
    import timm

    if cfg.img_size % cfg.patch_size:
        raise ConfigError(f"classifier.img_size: {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}")
    kwargs: dict[str, Any] = dict(img_size=cfg.img_size, patch_size=cfg.patch_size, num_classes=0,
                                  drop_path_rate=cfg.drop_path)
    pretrained = cfg.pretrained
    try:
        if pretrained == "none":
            backbone = timm.create_model(cfg.backbone, pretrained=False, depth=cfg.depth, **kwargs)
        else:
            path = weights_file(pretrained)
            if path is not None:
                _check_weights_file(path, cfg.depth)
                kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
            with loading_weights("classifier.pretrained", path, f"classifier.backbone {cfg.backbone!r}"):
                backbone = timm.create_model(cfg.backbone, pretrained=True, **kwargs)
            if cfg.depth > len(backbone.blocks):
                raise ConfigError(f"classifier.depth: {cfg.depth} > the {len(backbone.blocks)} blocks of "
                                  f"{cfg.backbone!r}")
            backbone.blocks = backbone.blocks[:cfg.depth]
    except RuntimeError as err:  # unknown model names, no pretrained weights for the name
        raise ConfigError(f"classifier.backbone / pretrained: {err}") from None
    if cfg.drop_path and pretrained != "none":  # keep the stochastic depth rule of the truncated model
        for i, blk in enumerate(backbone.blocks):
            rate = cfg.drop_path * i / max(cfg.depth - 1, 1)
            for name in ("drop_path1", "drop_path2"):
                mod = getattr(blk, name)
                if hasattr(mod, "drop_prob"):
                    mod.drop_prob = rate
    return MultiClassTokenViT(backbone, cfg, num_classes, repeat_class_token=pretrained != "none")


def classifier_payload(model: nn.Module) -> dict[str, Any]:
    """{"state_dict", "classifier": cfg dict, "num_classes"}: what ``model.pt`` holds."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "classifier": model.cfg.model_dump(), "num_classes": model.num_classes}


def save_classifier(model: nn.Module, path: str | Path) -> None:
    """Write :func:`classifier_payload` to ``path`` atomically."""
    write_torch(path, classifier_payload(model))


def classifier_from_payload(payload: Any, source: str = "classifier") -> MultiClassTokenViT:
    """Rebuild a classifier from :func:`classifier_payload` (never downloads: built with ``pretrained: none``)."""
    if not isinstance(payload, dict) or not {"state_dict", "classifier", "num_classes"} <= payload.keys():
        raise DataError(f"{source}: not a classifier file (expected keys state_dict, classifier, num_classes)")
    try:
        cfg = Classifier(**{**payload["classifier"], "pretrained": "none"})
        model = build_classifier(cfg, int(payload["num_classes"]))
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, TypeError, ConfigError) as err:
        raise DataError(f"{source}: incompatible classifier: {load_error_summary(err) or err}") from None
    return model


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> MultiClassTokenViT:
    """Load ``models/classifier/model.pt`` in eval mode on ``device``; DataError naming ``path`` if missing or
    incompatible."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: classifier not found (run stage train_cls)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(f"{path}: cannot read classifier: {err}") from None
    return classifier_from_payload(payload, str(path)).to(device).eval()


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ClassifierOutput", "MultiClassTokenViT", "build_classifier", "classifier_payload", "save_classifier",
           "classifier_from_payload", "load_classifier", "num_parameters"]

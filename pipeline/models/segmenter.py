"""The segmentation network trained on pseudo labels (the last step of the paper, Table IV).

``build_segmenter(cfg, num_classes)`` makes a :class:`Segmenter`: the encoder's input normalisation, padding to
the network's stride, one of three architectures on a segmentation-models-pytorch encoder, and
logits cropped back to the input size. ``num_classes`` counts every output channel, background
included (C + 1 for C foreground classes).

Architectures (``seg.arch``):

- ``deeplabv3plus``: smp DeepLabV3+ (ASPP + low-level decoder), output stride 16 by default.
- ``deeplabv3``: smp DeepLabV3 (ASPP), output stride 8 by default.
- ``deeplabv2``: the DeepLab-v2 classifier the paper uses (Chen et al., TPAMI 2017): on the dilated
  encoder (output stride 8), four parallel 3x3 convolutions with dilation rates 6, 12, 18 and 24,
  each predicting class scores, summed; logits are upsampled bilinearly to the input size.

Encoder weights (``seg.encoder_weights``): ``none`` (random init, offline), ``imagenet`` (smp
downloads them) or a local file holding a state dict for the encoder (``module.`` prefixes, a whole model's
``encoder.*`` part and classification-head keys are accepted; missing, unexpected or misshapen
keys stop with a :class:`~pipeline.config.ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ConfigError, Seg, weights_file
from pipeline.models.inputs import IMAGENET_MEAN, IMAGENET_STD, Triple, backbone_normalisation
from pipeline.models.weights import check_state_fits, load_error_summary, loading_weights

ARCHS = ("deeplabv3plus", "deeplabv3", "deeplabv2")
DEFAULT_STRIDE = {"deeplabv3plus": 16, "deeplabv3": 8, "deeplabv2": 8}
V2_RATES = (6, 12, 18, 24)
# keys of a Seg section that shape the network (the rest is the training recipe)
ARCH_KEYS = ("arch", "encoder", "output_stride", "decoder_channels")


class ASPPv2(nn.Module):
    """DeepLab-v2 classifier: sum of parallel dilated 3x3 convolutions.

    features: (B, in_channels, h, w) -> scores (B, num_classes, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = V2_RATES):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](features)
        for conv in self.branches[1:]:
            out = out + conv(features)
        return out


class DeepLabV2(nn.Module):
    """smp encoder (dilated to ``output_stride``) + :class:`ASPPv2`; logits at the input size."""

    def __init__(self, encoder_name: str, num_classes: int, output_stride: int = 8):
        super().__init__()
        from segmentation_models_pytorch.encoders import get_encoder

        self.encoder = get_encoder(encoder_name, in_channels=3, depth=5, weights=None, output_stride=output_stride)
        self.output_stride = output_stride
        self.head = ASPPv2(self.encoder.out_channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) normalised -> (B, num_classes, H, W) logits."""
        scores = self.head(self.encoder(x)[-1])
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Input (B, 3, H, W) float RGB in [0, 1], any H and W -> logits (B, num_classes, H, W).

    ``net.encoder`` is the backbone; every other parameter belongs to the decoder / classifier
    (see :func:`param_groups`). ``meta`` holds what :func:`save_segmenter` stores besides weights.
    """

    def __init__(self, net: nn.Module, stride: int, num_classes: int, meta: dict | None = None,
                 normalisation: tuple[Triple, Triple] = (IMAGENET_MEAN, IMAGENET_STD)):
        super().__init__()
        self.net = net
        self.stride = stride
        self.num_classes = num_classes
        self.meta: dict[str, Any] = dict(meta or {})
        mean, std = normalisation
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [str(k) for k in range(self.num_classes)])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        ph, pw = -h % self.stride, -w % self.stride
        if ph or pw:  # zero after normalisation = the mean colour
            x = F.pad(x, (0, pw, 0, ph))
        logits = self.net(x)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]


def _smp_model(cfg: Seg, num_classes: int, stride: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    common = dict(encoder_name=cfg.encoder, encoder_weights=None, classes=num_classes,
                  encoder_output_stride=stride, decoder_channels=cfg.decoder_channels)
    if cfg.arch == "deeplabv3plus":
        return smp.DeepLabV3Plus(**common)
    return smp.DeepLabV3(**common)


def encoder_normalisation(encoder: str) -> tuple[Triple, Triple]:
    """(mean, std) of an smp encoder's [0, 1] RGB input: a ``tu-`` encoder's timm configuration (0.5 / 0.5 for
    ``tu-tf_efficientnet_lite0``), the ImageNet mean / std of smp's own ImageNet encoders."""
    if encoder.startswith("tu-"):
        return backbone_normalisation(encoder.removeprefix("tu-"))
    return IMAGENET_MEAN, IMAGENET_STD


def resolved_stride(cfg: Seg) -> int:
    """The encoder output stride: ``seg.output_stride``, or the architecture's default when 0."""
    return cfg.output_stride or DEFAULT_STRIDE[cfg.arch]


def build_segmenter(cfg: Seg, num_classes: int) -> Segmenter:
    """The network of ``cfg`` with ``num_classes`` outputs (background included), weights per
    ``cfg.encoder_weights``. Unknown encoders and unusable weight files raise ConfigError."""
    if cfg.arch not in ARCHS:
        raise ConfigError(f"seg.arch: unknown architecture {cfg.arch!r} (known: {', '.join(ARCHS)})")
    if num_classes < 2:
        raise ValueError(f"num_classes must count background and at least one class, got {num_classes}")
    stride = resolved_stride(cfg)
    try:
        net = DeepLabV2(cfg.encoder, num_classes, stride) if cfg.arch == "deeplabv2" else _smp_model(
            cfg, num_classes, stride)
    except KeyError as err:
        raise ConfigError(f"seg.encoder: {cfg.encoder!r} is not a segmentation-models-pytorch encoder "
                          f"({str(err)[:200]})") from None
    except ValueError as err:
        raise ConfigError(f"seg: cannot build {cfg.arch} on {cfg.encoder!r} at output stride {stride} ({err})") \
            from None
    # smp pads to the encoder's full reduction (32 at depth 5) unless it is dilated
    pad_to = max(stride, getattr(net.encoder, "output_stride", stride))
    model = Segmenter(net, pad_to, num_classes, meta={"seg": cfg.model_dump(), "num_classes": num_classes},
                      normalisation=encoder_normalisation(cfg.encoder))
    load_encoder_weights(model, cfg.encoder_weights, cfg.encoder)
    return model


def load_encoder_weights(model: Segmenter, weights: str, encoder: str) -> None:
    """``none``: keep the random init; ``imagenet``: smp's download; else a local state-dict file."""
    if weights == "none":
        return
    if weights == "imagenet":
        _load_imagenet(model, encoder)
        return
    path = weights_file(weights)
    if not path.is_file():
        raise ConfigError(f"seg.encoder_weights: {weights!r} is neither none, imagenet nor a file ({path})")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"seg.encoder_weights: {path}: not a torch state dict ({err})") from None
    load_encoder_state(model.net.encoder, raw, str(path))


def load_encoder_state(encoder: nn.Module, raw: Any, source: str) -> None:
    """Load a (possibly wrapped / prefixed) state dict into ``encoder``; ConfigError on mismatch."""
    if isinstance(raw, dict):
        for key in ("state_dict", "model", "encoder"):
            if key in raw and isinstance(raw[key], dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ConfigError(f"seg.encoder_weights: {source}: expected a state dict of tensors")
    state = {}
    for key, value in raw.items():
        for prefix in ("module.", "net."):
            key = key.removeprefix(prefix)
        state[key] = value
    if any(k.startswith("encoder.") for k in state):  # a whole model's weights: keep its encoder
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    own = encoder.state_dict()
    if own and all(k.startswith("model.") for k in own) and not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}  # a timm network's file into smp's tu- encoder
    check_state_fits("seg.encoder_weights", source, f"encoder {type(encoder).__name__}", state, own)
    state = {k: v for k, v in state.items() if k in own}  # less the classification head's keys
    encoder.load_state_dict(state, strict=False)


def _load_imagenet(model: Segmenter, encoder: str) -> None:
    from segmentation_models_pytorch.encoders import get_encoder

    stride = getattr(model.net.encoder, "output_stride", 32)
    try:
        with loading_weights("seg.encoder_weights", None, f"seg.encoder {encoder!r}"):  # offline: one line
            pretrained = get_encoder(encoder, in_channels=3, depth=5, weights="imagenet", output_stride=stride)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - no imagenet weights for this encoder and the like: one message
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"seg.encoder_weights: imagenet weights for {encoder!r} could not be loaded: "
                          f"{first[:200]}") from None
    model.net.encoder.load_state_dict(pretrained.state_dict())


def param_groups(model: nn.Module, lr: float, head_lr_mult: float, weight_decay: float) -> list[dict]:
    """Parameter groups: encoder at ``lr``, decoder / classifier at ``lr * head_lr_mult`` (the schedule scales
    each from its own rate)."""
    inner = model.module if hasattr(model, "module") else model
    encoder = {id(p) for p in inner.net.encoder.parameters()}
    enc = [p for p in inner.parameters() if id(p) in encoder and p.requires_grad]
    head = [p for p in inner.parameters() if id(p) not in encoder and p.requires_grad]
    return [{"params": enc, "lr": lr, "weight_decay": weight_decay},
            {"params": head, "lr": lr * head_lr_mult, "weight_decay": weight_decay}]


def save_segmenter(model: nn.Module, path: str | Path, class_names: list[str] | tuple[str, ...],
                   extra: dict | None = None) -> None:
    """Write {"state_dict", "seg", "num_classes", "class_names", **extra} atomically."""
    from pipeline.common.io import write_torch

    inner = model.module if hasattr(model, "module") else model
    payload = {"state_dict": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
               "seg": inner.meta["seg"], "num_classes": inner.num_classes, "class_names": list(class_names),
               "normalisation": [inner.mean.flatten().tolist(), inner.std.flatten().tolist()], **(extra or {})}
    write_torch(path, payload)


def config_from_payload(seg: dict) -> Seg:
    """The Seg section stored with a model, restricted to the keys the current schema knows,
    with ``encoder_weights: none`` (the state dict brings the weights)."""
    known = {k: v for k, v in seg.items() if k in Seg.model_fields}
    known["encoder_weights"] = "none"
    return Seg.model_validate(known)


def load_segmenter(path: str | Path, device: torch.device | str = "cpu") -> Segmenter:
    """Rebuild a :class:`Segmenter` from :func:`save_segmenter` output, in eval mode on ``device``.

    ``model.class_names`` and ``model.meta`` carry the saved metadata. A missing or foreign file
    raises DataError naming it.
    """
    from pipeline.common.io import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: segmentation model not found (did train_seg run?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        cfg = config_from_payload(payload["seg"])
        model = build_segmenter(cfg, int(payload["num_classes"]))
        model.load_state_dict(payload["state_dict"])
        # a file without its normalisation was trained on ImageNet's mean / std, as every network was then
        mean, std = payload.get("normalisation", (IMAGENET_MEAN, IMAGENET_STD))
        model.mean.copy_(torch.tensor(mean).view(1, 3, 1, 1))
        model.std.copy_(torch.tensor(std).view(1, 3, 1, 1))
    except ConfigError as err:
        raise DataError(f"{path}: stored model configuration is unusable ({err})") from None
    except Exception as err:  # noqa: BLE001 - foreign, truncated or mismatching files: one message
        raise DataError(f"{path}: not a segmentation model checkpoint "
                        f"({type(err).__name__}: {load_error_summary(err) or str(err)[:300]})") from None
    model.meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.to(device).eval()

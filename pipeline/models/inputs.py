"""What each network is fed: the classifier's input tensor (:func:`image_to_tensor`, ImageNet mean / std) and the
mean / std every ImageNet CNN's weights were trained with (:func:`backbone_normalisation`), one place for both."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# The ImageNet mean / std: the input of the classifier's ViT (the datasets' tensors, image_to_tensor) and of
# every backbone whose weights were trained with it (timm ViTs and ResNets, smp's own encoders)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Triple = tuple[float, float, float]


def backbone_normalisation(backbone: str) -> tuple[Triple, Triple]:
    """(mean, std) of the [0, 1] RGB input the ImageNet weights of the timm network ``backbone`` were trained with
    (its ``pretrained_cfg``), kept whether or not the network starts from them: 0.5 / 0.5 for
    ``tf_efficientnet_lite0``, whose shipped weights name a Persian cat in a VOC sample where the ImageNet mean /
    std gives a ferret. Networks timm keeps no configuration of get the ImageNet mean / std."""
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None or cfg.mean is None or cfg.std is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(map(float, cfg.mean)), tuple(map(float, cfg.std))  # type: ignore[return-value]


class FromImageNet(torch.nn.Module):
    """Re-normalises an ImageNet-normalised input (B, 3, H, W) to another mean / std: x * scale + shift, per
    channel (x_own = (x * s_in + m_in - m) / s), for a CNN fed the classifier's tensors."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


def normalize_imagenet(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(B, 3, H, W) with values in [0, ``scale``] -> normalised with the ImageNet mean / std: the classifier's
    input (``scale`` 255: 8-bit values as they are)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * scale
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * scale
    return (x - mean) / std


def image_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalised with the ImageNet mean / std (the classifier's input)."""
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)  # own, writable copy
    return normalize_imagenet(x[None])[0]

"""ImageNet knowledge for the pretrained ViT: DeiT-style distillation from an ImageNet CNN during stage pretrain.

The toy's ViT is pretrained on the generated corpus, which teaches it to find the part marks that name a class
but not to group an object's pixels (README, "What the toy run gives"). The paper's DeiT-S
starts from ImageNet, and so can ours, through a teacher: the ImageNet EfficientNet-Lite0 the project ships
(``pretrain.teacher``). While the ViT learns the corpus classes, two extra terms pass the teacher's knowledge on:

- **a distillation token** (DeiT, Touvron et al. 2021): one more learnable token beside the class token, whose
  output, through its own linear head, matches the teacher's softened ImageNet predictions for the same crop
  (KL divergence at temperature ``pretrain.distill_temperature``, scaled by T^2), weight
  ``pretrain.distill_logits``;
- **token-level feature distillation**: every patch token's output, through a linear head, regresses the
  teacher's feature map of stride ``pretrain.teacher_stride`` brought to the token grid (the teacher sees the
  same crop as the student; its map is average-pooled or bilinearly resized to the grid), each feature vector
  standardised over its channels (mean-squared error), weight ``pretrain.distill_features``.

The distillation token, both heads and the teacher stay in this stage: the weights file holds the plain ViT
(class token, position embedding, blocks), which ``train_cls`` fine-tunes as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ConfigError, Pretrain, weights_file
from pipeline.models.inputs import IMAGENET_MEAN, IMAGENET_STD, FromImageNet


class DistilledViT(nn.Module):
    """A timm ViT with a distillation token after its class token and two distillation heads.

    ``forward(x)`` -> (class logits (B, K), distillation logits (B, T) or None, patch features (B, N, C) or
    None). The distillation token carries its own position embedding (the ViT's has none for it)."""

    def __init__(self, vit: nn.Module, teacher_classes: int, feature_dim: int):
        super().__init__()
        if (getattr(vit, "num_prefix_tokens", 1) != 1 or getattr(vit, "no_embed_class", False)
                or getattr(vit, "global_pool", "token") != "token" or not isinstance(vit.patch_drop, nn.Identity)):
            raise ValueError("distillation needs a plain ViT that classifies from its one class token, without "
                             "patch dropout (timm vit_* / deit_* with global_pool='token')")
        self.vit = vit
        dim = vit.embed_dim
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_pos_embed = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        nn.init.trunc_normal_(self.dist_pos_embed, std=0.02)
        self.head_dist = nn.Linear(dim, teacher_classes) if teacher_classes > 0 else None
        self.head_feat = nn.Linear(dim, feature_dim) if feature_dim > 0 else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        vit = self.vit
        tokens = vit._pos_embed(vit.patch_embed(x))  # (B, 1 + N, D): class token, then the patches
        dist = (self.dist_token + self.dist_pos_embed).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([tokens[:, :1], dist, tokens[:, 1:]], dim=1)
        tokens = vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(tokens))))
        logits = vit.head(vit.fc_norm(tokens[:, 0]))
        dist_logits = self.head_dist(tokens[:, 1]) if self.head_dist is not None else None
        features = self.head_feat(tokens[:, 2:]) if self.head_feat is not None else None
        return logits, dist_logits, features


class Teacher(nn.Module):
    """A frozen timm CNN, always in eval mode, giving its ImageNet logits and its feature map at ``stride`` (the
    deepest level of that reduction in the network's ``feature_info``).

    It takes the student's input (ImageNet mean / std) and re-normalises it to the mean / std its weights were
    trained with (timm's ``pretrained_cfg``: 0.5 / 0.5 for ``tf_efficientnet_lite0``, whose shipped weights name
    a Persian cat, a ram and a beagle in VOC samples where ImageNet's normalisation names a ferret, a penguin
    and a quilt)."""

    def __init__(self, cnn: nn.Module, stride: int):
        super().__init__()
        cfg = getattr(cnn, "pretrained_cfg", None) or {}
        self.renormalise = FromImageNet(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
        self.cnn = cnn.eval()
        for p in self.cnn.parameters():
            p.requires_grad_(False)
        levels = [i for i, info in enumerate(cnn.feature_info) if info["reduction"] == stride]
        if not levels:
            have = sorted({info["reduction"] for info in cnn.feature_info})
            raise ValueError(f"pretrain.teacher_stride: {stride} is not a feature stride of the teacher ({have})")
        self.level = levels[-1]
        self.channels = int(cnn.feature_info[self.level]["num_chs"])

    def train(self, mode: bool = True) -> Teacher:  # BatchNorm keeps its ImageNet statistics
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) ImageNet-normalised -> (logits (B, classes), features (B, C, H / stride, W / stride))."""
        final, features = self.cnn.forward_intermediates(self.renormalise(x), indices=[self.level])
        return self.cnn.forward_head(final), features[0]


def build_teacher(cfg: Pretrain) -> Teacher | None:
    """The teacher ``pretrain.teacher`` names (None for ``none``): ``teacher_backbone`` with the whole network's
    weights from the file under weights/ (a strict load) or, for ``timm``, from the hub."""
    if cfg.teacher == "none":
        return None
    import timm

    from pipeline.models.weights import loading_weights

    hub = cfg.teacher == "timm"
    path = None if hub else weights_file(cfg.teacher)
    if path is not None and not path.is_file():
        raise ConfigError(f"pretrain.teacher: weights file {path} not found")
    model = f"pretrain.teacher_backbone {cfg.teacher_backbone!r}"
    with loading_weights("pretrain.teacher", None if hub else str(path), model):
        cnn = timm.create_model(cfg.teacher_backbone, pretrained=hub)
        if path is not None:
            cnn.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return Teacher(cnn, cfg.teacher_stride)


def standardise(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h * w, C), each location's vector shifted to mean 0 and scaled to variance 1 over its
    channels (a layer norm without weights), so every channel pattern, not the raw magnitude, is the target."""
    tokens = features.flatten(2).transpose(1, 2)
    return F.layer_norm(tokens, tokens.shape[-1:])


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft distillation (Hinton et al.): T^2 * KL(softmax(teacher / T) || softmax(student / T)), batch mean."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True) * t * t


def to_grid(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *grid): average-pooled when the map is finer than the grid, bilinear when coarser."""
    if tuple(features.shape[-2:]) == tuple(grid):
        return features
    if features.shape[-2] >= grid[0] and features.shape[-1] >= grid[1]:
        return F.adaptive_avg_pool2d(features, grid)
    return F.interpolate(features, size=grid, mode="bilinear", align_corners=False)


def feature_distillation(student: torch.Tensor, teacher_features: torch.Tensor,
                         grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Mean-squared error between the student's per-token predictions (B, N, C) and the teacher map (B, C, h, w)
    brought to the token ``grid`` (:func:`to_grid`; None: the map's own size) and standardised per location."""
    if grid is not None:
        teacher_features = to_grid(teacher_features.float(), grid)
    target = standardise(teacher_features.float())
    if target.shape != student.shape:
        raise ValueError(f"teacher features {tuple(target.shape)} do not match the student's tokens "
                         f"{tuple(student.shape)}")
    return F.mse_loss(student.float(), target)

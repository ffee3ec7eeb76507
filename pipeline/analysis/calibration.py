"""How hard a dataset is for the field's standard recipe, measured without AReAM: the calibration stage's library.

A figure of the AReAM pipeline means little until the data it ran on is placed beside PASCAL VOC. This module
measures the data with methods that do not depend on the classifier under study:

- **Statistics of the masks** (:func:`mask_statistics`, :class:`DataStats`): the foreground fraction of the
  labelled pixels, classes and objects (connected regions of one class) per image, and object sizes as a fraction
  of the image.
- **The token-grid ceiling** (:func:`grid_labels`): the mIoU of the ground truth itself after a round trip
  through a ``grid`` x ``grid`` map (majority vote per cell, nearest upsampling): what a perfect map at the ViT's
  token resolution could reach.
- **The standard CNN CAM** (:class:`CamNet`, :func:`train_cam_net`, :func:`cnn_cams`): an ImageNet CNN fine-tuned
  with the multi-label soft-margin loss, CAM = ReLU(classifier weights x last features) (Zhou et al., CVPR 2016;
  IRN's ResNet-50 CAM is the same recipe), over several input sizes and a horizontal flip. The stage refines it
  with the project's dense CRF and with PSA's random walk on an AffinityNet trained on the CNN CAM's own
  confident regions, and reports each gain.

No file I/O here: ``stages/calibrate.py`` reads and writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.common.device import seed_everything
from pipeline.common.io import read_label_png
from pipeline.config import Calibration
from pipeline.common.progress import progress
from pipeline.data.manifest import Sample
from pipeline.metrics import ThresholdSweep, confusion_matrix
from pipeline.vocabulary import IGNORE_INDEX

# published figures on PASCAL VOC 2012 train (mIoU %), cited beside ours in the calibration report
VOC_PUBLISHED: tuple[tuple[str, str, float], ...] = (
    ("ResNet-50 CAM (IRN's recipe, best background threshold ~0.16)", "Ahn, Cho and Kwak, CVPR 2019", 48.3),
    ("ResNet-38 CAM + PSA random walk", "Ahn and Kwak, CVPR 2018", 59.7),
    ("ResNet-50 CAM + IRN", "Ahn, Cho and Kwak, CVPR 2019", 66.3),
)


# ----------------------------------------------------------------------------------------------
# statistics of the masks
# ----------------------------------------------------------------------------------------------


MIN_OBJECT = 0.001  # regions under this fraction of the image are fragments (VOC's masks hold many), not objects


def mask_statistics(mask: np.ndarray, min_object: float = MIN_OBJECT) -> dict[str, Any]:
    """One ground-truth mask (H, W) (0 background, 1..C classes, 255 ignored) ->
    {"labelled": labelled pixels, "foreground": foreground pixels among them, "classes": distinct classes,
    "objects": [size of each object as a fraction of the labelled pixels]}. An object is an 8-connected region
    of one class covering at least ``min_object`` of the labelled pixels; the 255 bands VOC draws along
    boundaries separate touching objects of one class."""
    from scipy import ndimage

    mask = np.asarray(mask)
    valid = mask != IGNORE_INDEX
    labelled = int(valid.sum())
    fg = valid & (mask != 0)
    classes = [int(c) for c in np.unique(mask[fg])]
    sizes = []
    for c in classes:
        regions, n = ndimage.label(mask == c, structure=np.ones((3, 3)))
        counts = np.bincount(regions.ravel(), minlength=n + 1)[1:] / max(labelled, 1)
        sizes += [float(v) for v in counts if v >= min_object]
    return {"labelled": labelled, "foreground": int(fg.sum()), "classes": len(classes), "objects": sizes}


class DataStats:
    """:func:`mask_statistics` summed over images (a :func:`pipeline.common.parallel.fold_items` total)."""

    SIZE_BINS = (0.0, 0.01, 0.05, 0.2, 1.0 + 1e-9)  # object size as a fraction of the image: tiny, small, medium, large

    def __init__(self) -> None:
        self.images = 0
        self.labelled = 0
        self.foreground = 0
        self.fg_fractions: list[float] = []
        self.classes: list[int] = []
        self.objects: list[int] = []
        self.sizes: list[float] = []

    def add(self, stats: dict[str, Any]) -> None:
        self.images += 1
        self.labelled += stats["labelled"]
        self.foreground += stats["foreground"]
        self.fg_fractions.append(stats["foreground"] / max(stats["labelled"], 1))
        self.classes.append(stats["classes"])
        self.objects.append(len(stats["objects"]))
        self.sizes += list(stats["objects"])

    def merge(self, other: DataStats) -> None:
        self.images += other.images
        self.labelled += other.labelled
        self.foreground += other.foreground
        self.fg_fractions += other.fg_fractions
        self.classes += other.classes
        self.objects += other.objects
        self.sizes += other.sizes

    def summary(self) -> dict[str, Any]:
        """Foreground fraction (of all labelled pixels, and the mean per image), classes and objects per image,
        object-size quantiles and the share of objects per size bin."""
        if not self.images:
            return {"images": 0}
        sizes = np.asarray(self.sizes, np.float64)
        q = np.quantile(sizes, [0.1, 0.5, 0.9]) if sizes.size else [None] * 3
        hist = np.histogram(sizes, bins=self.SIZE_BINS)[0] / max(sizes.size, 1)
        return {"images": self.images,
                "fg_fraction": round(self.foreground / max(self.labelled, 1), 4),
                "fg_fraction_per_image": round(float(np.mean(self.fg_fractions)), 4),
                "classes_per_image": round(float(np.mean(self.classes)), 3),
                "objects_per_image": round(float(np.mean(self.objects)), 3),
                "object_size_p10": None if q[0] is None else round(float(q[0]), 4),
                "object_size_median": None if q[1] is None else round(float(q[1]), 4),
                "object_size_p90": None if q[2] is None else round(float(q[2]), 4),
                "object_share_by_size": {name: round(float(v), 4) for name, v in
                                         zip(("under_1pct", "1_5pct", "5_20pct", "over_20pct"), hist)}}


class DataTotal:
    """Mask statistics and the token-grid ceiling's confusion, summed over images."""

    def __init__(self, num_classes: int):
        self.stats, self.confusion = DataStats(), np.zeros((num_classes, num_classes), np.int64)

    def add(self, item: tuple[dict, np.ndarray]) -> None:
        self.stats.add(item[0])
        self.confusion += item[1]

    def merge(self, other: DataTotal) -> None:
        self.stats.merge(other.stats)
        self.confusion += other.confusion


def data_one(sample: Sample, grid: int, num_classes: int) -> tuple[dict, np.ndarray]:
    """One train image's mask statistics and the confusion of its token-grid labels against the mask."""
    mask = read_label_png(sample.mask)
    return mask_statistics(mask), confusion_matrix(grid_labels(mask, grid, num_classes), mask, num_classes)


def grid_labels(mask: np.ndarray, grid: int, num_classes: int) -> np.ndarray:
    """The mask (H, W) seen through a ``grid`` x ``grid`` map and back: each cell takes the majority label of the
    labelled pixels it covers (:func:`pipeline.metrics.token_labels`), and every pixel its cell's label (nearest
    upsampling). Returns (H, W) int64; its mIoU against the mask is the token-grid ceiling."""
    from pipeline.metrics import token_labels

    cells = token_labels(mask, (grid, grid), num_classes)[None, None].float()
    return F.interpolate(cells, size=np.asarray(mask).shape, mode="nearest")[0, 0].long().numpy()


# ----------------------------------------------------------------------------------------------
# the standard CNN CAM
# ----------------------------------------------------------------------------------------------


class CamNet(nn.Module):
    """A timm CNN's last feature map, global average pooling and a bias-free 1x1 classifier (Zhou et al.'s CAM
    network). ``output_stride`` 16 dilates the last stage, as the field's ResNet-50 CAM does. Starting weights:
    ``state`` (a whole-network state dict, its classification head dropped) or, with ``hub``, timm's download."""

    def __init__(self, backbone: str, num_classes: int, output_stride: int = 32,
                 state: dict[str, torch.Tensor] | None = None, hub: bool = False, source: str = "weights file"):
        super().__init__()
        import timm

        from pipeline.models.inputs import FromImageNet, backbone_normalisation
        from pipeline.models.weights import loading_weights

        model = f"calibration.backbone {backbone!r}"
        with loading_weights("calibration.pretrained", None if hub else source, model):
            self.body = timm.create_model(backbone, pretrained=hub, num_classes=0, global_pool="",
                                          output_stride=output_stride)
        if state is not None:  # the whole network's ImageNet weights; its classification head is not used
            with loading_weights("calibration.pretrained", source, model):
                own = self.body.state_dict()
                self.body.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        self.classifier = nn.Conv2d(self.body.num_features, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)
        self.renormalise = FromImageNet(*backbone_normalisation(backbone))  # the input its ImageNet weights saw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) ImageNet-normalised (the classifier's tensors) -> logits (B, C)."""
        f = self.body.forward_features(self.renormalise(x))
        return self.classifier(f.mean((2, 3), keepdim=True)).flatten(1)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) ImageNet-normalised -> class activation maps ReLU(W f) (B, C, h, w) at the feature
        stride."""
        return F.relu(self.classifier(self.body.forward_features(self.renormalise(x))))


def build_cam_net(cfg: Calibration, num_classes: int) -> CamNet:
    """The ``calibration`` section's CAM network from its starting weights (a file under weights/, ``timm`` or
    ``none``), seeded with ``calibration.seed``, the layers before ``frozen_stride`` frozen."""
    from pipeline.config import ConfigError, weights_file

    path = weights_file(cfg.pretrained)
    state = None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"calibration.pretrained: weights file {path} not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
    seed_everything(cfg.seed)
    model = CamNet(cfg.backbone, num_classes, cfg.output_stride, state, hub=cfg.pretrained == "timm",
                   source=str(path))
    freeze_early_layers(model.body, cfg.frozen_stride)
    return model


def freeze_early_layers(body: nn.Module, stride: int) -> int:
    """Freeze every parameter of a timm network before its first feature level deeper than ``stride`` (IRN keeps
    the ResNet-50 stem and first stage, stride 4, fixed): their backward pass, the costliest at full resolution,
    is then never computed. ``stride`` 0 freezes nothing. Returns the number of frozen tensors."""
    if stride <= 0:
        return 0
    first = next((f["module"] for f in body.feature_info if f["reduction"] > stride), None)
    if first is None:
        raise ValueError(f"no feature level deeper than stride {stride}")
    frozen = 0
    for name, p in body.named_parameters():
        if name == first or name.startswith(first + "."):
            break
        p.requires_grad_(False)
        frozen += 1
    return frozen


def freeze_norms(model: nn.Module) -> None:
    """Keep every BatchNorm in eval mode with fixed affine parameters: ImageNet statistics, as IRN fine-tunes."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def train_cam_net(model: CamNet, loader: Any, epochs: int, lr: float, weight_decay: float,
                  device: torch.device, on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Fine-tune with the multi-label soft-margin loss: SGD (momentum 0.9), the new classifier at 10x ``lr``, a
    poly (0.9) decay per step, BatchNorm frozen. ``loader`` yields (images (B, 3, S, S), targets (B, C)) and has
    ``set_epoch`` on its dataset. Returns the mean loss of each epoch."""
    head = list(model.classifier.parameters())
    freeze_norms(model)
    body = [p for p in model.body.parameters() if p.requires_grad]
    opt = torch.optim.SGD([{"params": body, "lr": lr}, {"params": head, "lr": 10 * lr}], lr=lr, momentum=0.9,
                          weight_decay=weight_decay)
    total = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - min(s, total - 1) / total) ** 0.9)
    losses = []
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)
        model.train()
        freeze_norms(model)
        total_loss, n = 0.0, 0
        for images, targets in progress(loader, desc=f"CNN epoch {epoch + 1}/{epochs}"):
            loss = F.multilabel_soft_margin_loss(model(images.to(device)), targets.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss, n = total_loss + float(loss.detach()) * len(images), n + len(images)
        losses.append(total_loss / max(n, 1))
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    return losses


@torch.no_grad()
def cam_net_map(model: CamNet, data: Any, batch_size: int, device: torch.device) -> float:
    """Validation mAP of the CAM network over the classification dataset ``data``."""
    from pipeline.data.classification import mean_average_precision

    model.eval()
    scores, targets = [], []
    for x, y in torch.utils.data.DataLoader(data, batch_size=batch_size):
        scores.append(torch.sigmoid(model(x.to(device))).cpu())
        targets.append(y)
    return mean_average_precision(torch.cat(scores).numpy(), torch.cat(targets).numpy())


def input_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """The image resized so that its longer side is ``side`` (aspect kept, each side at least 1)."""
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


@torch.no_grad()
def cnn_cams(model: CamNet, image: torch.Tensor, keys: Sequence[int], sides: Sequence[int], flip: bool) -> torch.Tensor:
    """The CAMs of classes ``keys`` (1..C) of one normalised image (3, H, W): at each longer side in ``sides``
    (and its mirror with ``flip``), ReLU(W f) upsampled bilinearly to (H, W) and summed, then divided by each
    class's maximum (IRN's normalisation). Returns (K, H, W) float32 in [0, 1]."""
    h, w = image.shape[-2:]
    index = torch.as_tensor([k - 1 for k in keys], dtype=torch.long)
    total = image.new_zeros((len(index), h, w))
    if len(index) == 0:
        return total
    for side in sides:
        x = F.interpolate(image[None], size=input_shape(h, w, side), mode="bilinear", align_corners=False)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        cam = model.cams(batch)[:, index]
        cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
        total += cam[0] + (cam[1].flip(-1) if flip else 0)
    return total / total.flatten(1).max(1).values.clamp_min(1e-5)[:, None, None]


def sweep_figures(sweep: ThresholdSweep, alpha1: float) -> dict:
    """Best-threshold mIoU (%) and its threshold, and the mIoU at Eq. 16's fixed background threshold ``alpha1``."""
    res = sweep.result()
    return {"best_miou": round(100 * res["best_miou"], 2), "best_threshold": res["best_threshold"],
            "miou_at_alpha1": None if (m := threshold_miou(res, alpha1)) is None else round(100 * m, 2)}


def refinement_figures(cam: ThresholdSweep, refined: dict[str, ThresholdSweep], alpha1: float) -> dict:
    """:func:`sweep_figures` of the CAM and of each refinement, the refinements with their gain over the CAM."""
    figures = {"cam": sweep_figures(cam, alpha1), **{name: sweep_figures(s, alpha1) for name, s in refined.items()}}
    for name in refined:
        figures[name]["gain"] = round(figures[name]["best_miou"] - figures["cam"]["best_miou"], 2)
    return figures


def threshold_miou(result: dict[str, Any], threshold: float) -> float | None:
    """The mIoU of a :meth:`pipeline.metrics.ThresholdSweep.result` at ``threshold`` (None when it was not swept)."""
    for t, m in zip(result["thresholds"], result["miou"]):
        if math.isclose(t, threshold, abs_tol=1e-9):
            return m
    return None


# ----------------------------------------------------------------------------------------------
# VOC beside the data, and the report section
# ----------------------------------------------------------------------------------------------

# :class:`DataStats` and the token-grid ceiling of the 20 PASCAL VOC 2012 masks (SegmentationClassAug) of the
# project's real-data samples, measured with this module's functions; a clone without those samples reads them here
VOC_SAMPLES: dict[str, Any] = {
    "images": 20, "fg_fraction": 0.2525, "fg_fraction_per_image": 0.2684, "classes_per_image": 1.4,
    "objects_per_image": 2.35, "object_size_p10": 0.0024, "object_size_median": 0.0309, "object_size_p90": 0.3767,
    "object_share_by_size": {"under_1pct": 0.3617, "1_5pct": 0.1915, "5_20pct": 0.2766, "over_20pct": 0.1702},
    "token_grid_miou": {"12": 76.16, "14": 79.65, "28": 88.89},
}

DATA_ROWS: tuple[tuple[str, str], ...] = (
    ("foreground fraction (of labelled pixels)", "fg_fraction"),
    ("foreground fraction, mean per image", "fg_fraction_per_image"),
    ("classes per image", "classes_per_image"),
    ("objects per image", "objects_per_image"),
    ("object size, 10th percentile (fraction of image)", "object_size_p10"),
    ("object size, median", "object_size_median"),
    ("object size, 90th percentile", "object_size_p90"),
)


def calibration_markdown(result: dict[str, Any]) -> str:
    """The calibration report section from the stage's ``calibration.json`` record."""
    from pipeline.common.markdown import table

    def cell(v: Any) -> str:
        return "-" if v is None else str(v)

    data, voc, grid = result["data"], result["voc_samples"], result["token_grid"]
    rows = [[name, cell(data.get(key)), cell(voc.get(key))] for name, key in DATA_ROWS]
    rows.append([f"token-grid ceiling, mIoU % ({grid['grid']} x {grid['grid']} grid)", cell(grid["miou"]),
                 cell(voc["token_grid_miou"].get(str(grid["grid"])))])
    alpha1 = result["eq16_alpha1"]
    cam_rows = [[name, cell(result[key]["best_miou"]), cell(result[key]["best_threshold"]),
                 cell(result[key]["miou_at_alpha1"]), cell(result[key].get("gain"))]
                for name, key in (("CNN CAM", "cam"), ("+ dense CRF", "crf"), ("+ PSA random walk", "psa"))]
    published = [[what, cell(figure), source] for what, source, figure in result["voc_published"]]
    return "\n".join([
        f"## Calibration: the {result['dataset']} {result['split']} split beside PASCAL VOC, without AReAM", "",
        table(["statistic", result["dataset"], f"VOC 2012 ({voc['images']} samples)"], rows), "",
        f"The standard CNN CAM ({result['cnn']['backbone']}, ImageNet weights, multi-label soft margin; val mAP "
        f"{cell(result['cnn']['val_map'])} %), refined by the dense CRF and by PSA's random walk on an AffinityNet "
        f"trained on its own confident regions (mIoU % on the {result['split']} split):", "",
        table(["map", "best mIoU", "best threshold", f"mIoU at {alpha1} (Eq. 16)", "gain over CAM"], cam_rows), "",
        "Published on VOC 2012 train (mIoU %):", "",
        table(["method", "mIoU", "source"], published), ""])

"""The calibration stage's library: mask statistics, the token-grid ceiling, the standard CNN CAM."""


import numpy as np
import pytest
import torch

from pipeline.analysis.calibration import (VOC_PUBLISHED, VOC_SAMPLES, CamNet, DataStats, calibration_markdown,
                                           cnn_cams, freeze_early_layers, freeze_norms, grid_labels, input_shape,
                                           mask_statistics, threshold_miou, train_cam_net)
from pipeline.config import ROOT
from pipeline.metrics import confusion_matrix, miou

REALDATA = ROOT.parent / "shared" / "realdata" / "VOCdevkit" / "VOC2012"


def test_mask_statistics_hand_case():
    mask = np.zeros((10, 10), np.uint8)
    mask[0:2, 0:2] = 1          # object A of class 1: 4 px
    mask[5:8, 5:8] = 1          # object B of class 1: 9 px
    mask[9, 0:5] = 2            # class 2: 5 px
    mask[0, 9] = 255            # ignored: not labelled
    s = mask_statistics(mask, min_object=0)
    assert (s["labelled"], s["foreground"], s["classes"]) == (99, 18, 2)
    assert s["objects"] == pytest.approx([4 / 99, 9 / 99, 5 / 99])
    mask[2, 2] = 1              # touches A diagonally: 8-connected, so A grows to 5 px
    assert mask_statistics(mask, min_object=0)["objects"] == pytest.approx([5 / 99, 9 / 99, 5 / 99])
    # fragments under min_object of the image are not objects (9/99 ~ 0.091 stays, 5/99 ~ 0.051 goes)
    assert mask_statistics(mask, min_object=0.06)["objects"] == pytest.approx([9 / 99])


def test_data_stats_pool_pixels_and_average_images():
    a = np.zeros((4, 4), np.uint8)
    a[:2] = 1                   # half foreground, one object of 8/16
    b = np.zeros((2, 2), np.uint8)  # no foreground
    total, other = DataStats(), DataStats()
    total.add(mask_statistics(a, min_object=0))
    other.add(mask_statistics(b, min_object=0))
    total.merge(other)
    s = total.summary()
    assert s["images"] == 2
    assert s["fg_fraction"] == pytest.approx(8 / 20, abs=1e-4)           # pooled over pixels
    assert s["fg_fraction_per_image"] == pytest.approx(0.25, abs=1e-4)   # (0.5 + 0) / 2
    assert (s["classes_per_image"], s["objects_per_image"]) == (0.5, 0.5)
    assert s["object_size_median"] == 0.5
    assert s["object_share_by_size"]["over_20pct"] == 1.0


def test_grid_labels_majority_per_cell_and_back():
    mask = np.array([[1, 1, 0, 0],
                     [1, 0, 0, 0],
                     [255, 255, 2, 2],
                     [2, 0, 2, 0]], np.uint8)
    out = grid_labels(mask, 2, num_classes=3)
    # cells: top-left 3 x class 1 vs 1 x 0 -> 1; top-right all 0; bottom-left 255 not counted, 1 x 2 vs 1 x 0:
    # a tie goes to the smaller label, 0; bottom-right 3 x 2 vs 1 x 0 -> 2
    expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
    np.testing.assert_array_equal(out, expected)
    # the ceiling is the mIoU of that round trip: a map as fine as the mask loses nothing
    assert miou(confusion_matrix(grid_labels(mask, 4, 3), mask, 3))[0] == 1.0


class RampCams(torch.nn.Module):
    """A stand-in CAM network: class 0 a constant 2, class 1 a left-to-right ramp, at a quarter of the input."""

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ramp = torch.linspace(0, 1, w // 4).expand(b, h // 4, w // 4)
        return torch.stack([torch.full_like(ramp, 2.0), ramp], 1)


def test_cnn_cams_sum_sizes_and_flip_then_normalise_by_max():
    image = torch.zeros(3, 16, 24)
    constant = cnn_cams(RampCams(), image, [1], sides=[32, 48], flip=True)
    assert constant.shape == (1, 16, 24)
    torch.testing.assert_close(constant, torch.ones(1, 16, 24))      # a constant map normalises to 1
    ramp = cnn_cams(RampCams(), image, [2], sides=[32], flip=True)[0]
    torch.testing.assert_close(ramp, ramp.flip(-1))                   # ramp + its mirror: symmetric
    assert float(ramp.max()) == pytest.approx(1.0)
    assert cnn_cams(RampCams(), image, [], sides=[32], flip=True).shape == (0, 16, 24)
    assert input_shape(16, 24, 48) == (32, 48)


def test_train_cam_net_keeps_imagenet_batchnorm_and_learns(offline):  # random weights: nothing to fetch
    torch.manual_seed(0)
    model = CamNet("tf_efficientnet_lite0", num_classes=2, output_stride=32)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone(), bn.weight.detach().clone()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    x[y[:, 0] == 1] += 2.0  # class 1 is the bright images

    class Data(torch.utils.data.TensorDataset):
        def set_epoch(self, epoch):
            pass

    loader = torch.utils.data.DataLoader(Data(x, y), batch_size=4)
    losses = train_cam_net(model, loader, epochs=3, lr=0.01, weight_decay=0.0, device=torch.device("cpu"))
    assert len(losses) == 3 and losses[-1] < losses[0]
    torch.testing.assert_close(bn.running_mean, before[0])  # statistics and affine stay ImageNet's
    torch.testing.assert_close(bn.weight.detach(), before[1])
    freeze_norms(model)
    assert not bn.training
    assert model.cams(x).shape == (4, 2, 1, 1) and (model.cams(x) >= 0).all()


def test_freeze_early_layers_stops_at_the_first_deeper_feature_level(offline):
    model = CamNet("tf_efficientnet_lite0", num_classes=2)
    assert freeze_early_layers(model.body, 0) == 0
    n = freeze_early_layers(model.body, 4)  # the stem and blocks 0-1 (strides 2 and 4); blocks.2 is stride 8
    frozen = {name for name, p in model.body.named_parameters() if not p.requires_grad}
    assert n == len(frozen) and "conv_stem.weight" in frozen and "blocks.1.0.conv_pw.weight" in frozen
    assert not any(name.startswith(("blocks.2.", "conv_head")) for name in frozen)


def test_threshold_miou_reads_the_swept_value():
    result = {"thresholds": [0.2, 0.25, 0.3], "miou": [0.4, 0.5, 0.45]}
    assert threshold_miou(result, 0.25) == 0.5
    assert threshold_miou(result, 0.35) is None


def test_calibration_markdown_puts_voc_beside_the_data():
    data = {**VOC_SAMPLES, "fg_fraction": 0.137}
    fig = {"best_miou": 36.5, "best_threshold": 0.32, "miou_at_alpha1": 36.0}
    result = {"dataset": "toyvoc", "split": "train", "data": data, "token_grid": {"grid": 12, "miou": 70.1},
              "cnn": {"backbone": "tf_efficientnet_lite0", "val_map": 86.0}, "cam": fig,
              "crf": {**fig, "best_miou": 40.0, "gain": 3.5}, "psa": {**fig, "best_miou": 45.0, "gain": 8.5},
              "eq16_alpha1": 0.25, "voc_samples": VOC_SAMPLES, "voc_published": [list(r) for r in VOC_PUBLISHED]}
    text = calibration_markdown(result)
    assert "| foreground fraction (of labelled pixels) | 0.137 | 0.2525 |" in text
    assert "| token-grid ceiling, mIoU % (12 x 12 grid) | 70.1 | 76.16 |" in text
    assert "| + PSA random walk | 45.0 | 0.32 | 36.0 | 8.5 |" in text
    assert "48.3" in text and "val mAP 86.0" in text


@pytest.mark.skipif(not REALDATA.is_dir(), reason="the VOC samples (../shared/realdata) are not beside this clone")
def test_voc_sample_figures_are_what_the_functions_measure():
    from PIL import Image

    total, conf = DataStats(), {g: np.zeros((21, 21), np.int64) for g in (12, 14, 28)}
    for path in sorted((REALDATA / "SegmentationClass").glob("*.png")):
        mask = np.array(Image.open(path))
        total.add(mask_statistics(mask))
        for g in conf:
            confusion_matrix(grid_labels(mask, g, 21), mask, 21, out=conf[g])
    summary = total.summary()
    for key, value in summary.items():
        assert VOC_SAMPLES[key] == (pytest.approx(value, abs=1e-4) if not isinstance(value, dict) else value), key
    for g in conf:
        assert VOC_SAMPLES["token_grid_miou"][str(g)] == pytest.approx(100 * miou(conf[g])[0], abs=0.01)

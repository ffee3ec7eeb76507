"""Each network sees the input normalisation its ImageNet weights were trained with."""

import numpy as np
import pytest
import torch

from pipeline.analysis.calibration import CamNet
from pipeline.config import load_params
from pipeline.models.affinitynet import AffinityNet
from pipeline.models.inputs import IMAGENET_MEAN, IMAGENET_STD, FromImageNet, backbone_normalisation, image_to_tensor
from pipeline.models.segmenter import build_segmenter, encoder_normalisation
from pipeline.train.segmenter import mean_rgb

pytestmark = pytest.mark.usefixtures("offline")

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_each_backbone_names_the_normalisation_of_its_weights():
    assert backbone_normalisation("tf_efficientnet_lite0") == HALF  # the shipped Lite0 weights
    assert backbone_normalisation("resnet18") == (IMAGENET_MEAN, IMAGENET_STD)
    assert backbone_normalisation("no_such_network") == (IMAGENET_MEAN, IMAGENET_STD)
    assert encoder_normalisation("tu-tf_efficientnet_lite0") == HALF
    assert encoder_normalisation("resnet101") == (IMAGENET_MEAN, IMAGENET_STD)  # smp's own encoder


def test_from_imagenet_maps_the_classifier_tensor_to_another_normalisation():
    # black, mid grey and white: ImageNet-normalised by image_to_tensor, then to mean = std = 0.5: -1, 0, +1
    rgb = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    x = image_to_tensor(rgb)[None]
    y = FromImageNet(*HALF)(x)
    np.testing.assert_allclose(y[0, :, 0, 0].numpy(), -1.0, atol=1e-6)
    np.testing.assert_allclose(y[0, :, 0, 1].numpy(), 1.0, atol=1e-6)
    same = FromImageNet(IMAGENET_MEAN, IMAGENET_STD)(x)  # the identity on ImageNet's own normalisation
    torch.testing.assert_close(same, x)


def test_the_lite0_networks_normalise_as_their_weights_expect():
    cfg = load_params().seg.replace(encoder="tu-tf_efficientnet_lite0", encoder_weights="none")
    seg = build_segmenter(cfg, 3)
    assert seg.mean.flatten().tolist() == [0.5] * 3 and seg.std.flatten().tolist() == [0.5] * 3
    assert mean_rgb("tu-tf_efficientnet_lite0").tolist() == [127.5] * 3  # padding normalises to zero
    aff = AffinityNet("tf_efficientnet_lite0", "none", feature_stride=8, embed_dim=16)
    grey = torch.full((1, 3, 4, 4), 0.5)
    assert torch.count_nonzero(aff.normalize(grey)) == 0
    cam = CamNet("tf_efficientnet_lite0", 2)
    white = image_to_tensor(np.full((2, 2, 3), 255, np.uint8))[None]
    np.testing.assert_allclose(cam.renormalise(white).numpy(), 1.0, atol=1e-6)
    # a ResNet keeps the ImageNet normalisation
    assert AffinityNet("resnet18", "none", feature_stride=8, embed_dim=16).mean.flatten().tolist() == \
        pytest.approx(IMAGENET_MEAN)


def test_saved_networks_keep_their_normalisation_and_older_files_load_as_imagenet(tmp_path):
    from pipeline.models.affinitynet import load_affinitynet, save_affinitynet
    from pipeline.models.segmenter import load_segmenter, save_segmenter

    aff = AffinityNet("tf_efficientnet_lite0", "none", feature_stride=8, embed_dim=16)
    save_affinitynet(aff, tmp_path / "aff.pt")
    assert load_affinitynet(tmp_path / "aff.pt").mean.flatten().tolist() == [0.5] * 3
    old = torch.load(tmp_path / "aff.pt", weights_only=True)
    del old["config"]["normalisation"]  # as written before the file recorded it: trained on ImageNet's
    torch.save(old, tmp_path / "old_aff.pt")
    assert load_affinitynet(tmp_path / "old_aff.pt").mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)

    cfg = load_params().seg.replace(encoder="tu-tf_efficientnet_lite0", encoder_weights="none")
    save_segmenter(build_segmenter(cfg, 3), tmp_path / "seg.pt", ["background", "a", "b"])
    assert load_segmenter(tmp_path / "seg.pt").std.flatten().tolist() == [0.5] * 3
    old = torch.load(tmp_path / "seg.pt", weights_only=True)
    del old["normalisation"]
    torch.save(old, tmp_path / "old_seg.pt")
    assert load_segmenter(tmp_path / "old_seg.pt").std.flatten().tolist() == pytest.approx(IMAGENET_STD)

"""The segmentation network: every architecture gives input-sized logits, the DeepLab-v2 head sums
its dilated branches, weights save / load / initialise from local files with clear errors."""

import pytest
import torch

from pipeline.common.io import DataError
from pipeline.config import ConfigError, defaults
from pipeline.models.segmenter import (ASPPv2, build_segmenter, load_segmenter, param_groups, resolved_stride,
                                       save_segmenter)

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", ["deeplabv3plus", "deeplabv3", "deeplabv2"])
def test_each_arch_gives_input_sized_logits(arch):
    torch.manual_seed(0)
    model = build_segmenter(SCRATCH.seg.replace(arch=arch, decoder_channels=16), num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 37, 50))  # sizes not divisible by the stride: padded inside
    assert out.shape == (2, 5, 37, 50)
    assert torch.isfinite(out).all()


def test_output_stride_defaults_per_arch_and_override():
    assert resolved_stride(SCRATCH.seg.replace(arch="deeplabv3plus")) == 16
    assert resolved_stride(SCRATCH.seg.replace(arch="deeplabv2")) == 8
    assert resolved_stride(SCRATCH.seg.replace(arch="deeplabv2", output_stride=16)) == 16
    model = build_segmenter(SCRATCH.seg.replace(arch="deeplabv2"), 3).eval()
    with torch.no_grad():
        feats = model.net.encoder(torch.rand(1, 3, 64, 64))
    assert feats[-1].shape[-2:] == (8, 8)  # dilated: stride 8, not 32


def test_aspp_v2_sums_its_four_dilated_branches():
    head = ASPPv2(in_channels=1, num_classes=1)
    with torch.no_grad():
        for i, conv in enumerate(head.branches):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = i + 1  # centre tap: branch i multiplies by i + 1
            conv.bias.fill_(0.5)
    x = torch.rand(1, 1, 5, 7)
    # 1x + 2x + 3x + 4x + 4 * 0.5: off-centre taps (dilated by 6..24) only see zero padding
    torch.testing.assert_close(head(x), 10 * x + 2.0)
    assert [c.dilation[0] for c in head.branches] == [6, 12, 18, 24]


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    cfg = SCRATCH.seg.replace(arch="deeplabv3plus", decoder_channels=16)
    model = build_segmenter(cfg, 3).eval()
    path = tmp_path / "m" / "model.pt"
    save_segmenter(model, path, ["background", "a", "b"], extra={"params_hash": "x"})
    loaded = load_segmenter(path)
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert loaded.class_names == ["background", "a", "b"]
    assert loaded.meta["params_hash"] == "x" and not loaded.training


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.pt"):
        load_segmenter(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt"):
        load_segmenter(bad)


def test_encoder_weights_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    source = build_segmenter(SCRATCH.seg.replace(decoder_channels=16), 3)
    state = {f"module.encoder.{k}": v for k, v in source.net.encoder.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 512)  # a classification head is tolerated
    path = tmp_path / "enc.pth"
    torch.save({"state_dict": state}, path)
    torch.manual_seed(2)
    model = build_segmenter(SCRATCH.seg.replace(decoder_channels=16, encoder_weights=str(path)), 3)
    for k, v in source.net.encoder.state_dict().items():
        assert torch.equal(model.net.encoder.state_dict()[k], v), k


def test_encoder_weights_errors(tmp_path):
    with pytest.raises(ConfigError, match="seg.encoder_weights"):
        build_segmenter(SCRATCH.seg.replace(encoder_weights=str(tmp_path / "nope.pth")), 3)
    other = build_segmenter(SCRATCH.seg.replace(encoder="resnet34", decoder_channels=16), 3)
    path = tmp_path / "r34.pth"
    torch.save(other.net.encoder.state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit"):
        build_segmenter(SCRATCH.seg.replace(encoder="resnet18", decoder_channels=16, encoder_weights=str(path)), 3)
    with pytest.raises(ConfigError, match="seg.encoder"):
        build_segmenter(SCRATCH.seg.replace(encoder="no-such-encoder"), 3)


def test_param_groups_scale_the_head_lr():
    model = build_segmenter(SCRATCH.seg.replace(decoder_channels=16), 3)
    enc, head = param_groups(model, lr=0.01, head_lr_mult=10, weight_decay=1e-4)
    assert enc["lr"] == 0.01 and head["lr"] == pytest.approx(0.1)
    n_all = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in enc["params"]) + sum(p.numel() for p in head["params"]) == n_all
    assert sum(p.numel() for p in enc["params"]) == sum(p.numel() for p in model.net.encoder.parameters())

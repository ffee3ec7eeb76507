"""Distillation from an ImageNet CNN during pretraining: the two terms on hand-computable cases, the student's
token layout, the teacher's feature level, the hand-over of a plain ViT, and the loop with a teacher."""

import math

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, defaults
from pipeline.train.distill import (DistilledViT, Teacher, build_teacher, feature_distillation, logit_distillation,
                                    standardise)
from pipeline.train.pretrain import backbone_state, build_vit, pretrain_vit

# every test builds timm networks from random weights: the offline fixture makes any hub fetch fail loudly
pytestmark = pytest.mark.usefixtures("offline")

SCRATCH = defaults("scratch")
ARCH = SCRATCH.classifier.replace(img_size=32, patch_size=8, depth=2, cam_layers=1)
TINY = SCRATCH.pretrain.replace(num_classes=4, image_size=24, epochs=1, batch_size=4, warmup_epochs=0)


def _teacher(stride=8):
    import timm

    torch.manual_seed(0)
    return Teacher(timm.create_model("tf_efficientnet_lite0", pretrained=False), stride)


def test_logit_term_is_t_squared_kl_of_the_softened_predictions():
    # teacher softmax at T = 1: [3/4, 1/4]; student: [1/2, 1/2]; KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    student = torch.zeros(1, 2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert logit_distillation(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # at T = 2 the teacher's logits halve: softmax [sqrt3 / (sqrt3 + 1), 1 / (sqrt3 + 1)], and the KL is scaled by 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = 4 * (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p)))
    assert logit_distillation(student, teacher, 2.0).item() == pytest.approx(expected_t2, rel=1e-6)
    assert logit_distillation(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_feature_term_regresses_each_location_standardised_over_channels():
    # one location with channels [1, 2, 3]: mean 2, (biased) std sqrt(2/3) -> [-1.2247, 0, 1.2247]
    teacher = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    target = standardise(teacher)
    assert target.shape == (1, 1, 3)
    torch.testing.assert_close(target[0, 0], torch.tensor([-1.0, 0.0, 1.0]) * math.sqrt(1.5), atol=1e-4, rtol=0)
    assert feature_distillation(target, teacher).item() == pytest.approx(0.0, abs=1e-8)
    # a zero prediction misses by the target's mean square, which is 1 after standardising
    assert feature_distillation(torch.zeros(1, 1, 3), teacher).item() == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="do not match the student's tokens"):
        feature_distillation(torch.zeros(1, 4, 3), teacher)
    # brought to a 2 x 2 grid, the single location is copied to all four tokens
    assert feature_distillation(target.expand(1, 4, 3), teacher, (2, 2)).item() == pytest.approx(0.0, abs=1e-8)


def test_teacher_maps_are_pooled_or_resized_to_the_token_grid():
    from pipeline.train.distill import to_grid

    fine = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(to_grid(fine, (2, 2))[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    coarse = torch.tensor([[[[0.0, 4.0]]]])  # 1 x 2 -> 1 x 4: bilinear, half-pixel centres
    torch.testing.assert_close(to_grid(coarse, (1, 4))[0, 0, 0], torch.tensor([0.0, 1.0, 3.0, 4.0]))


def test_student_puts_the_distillation_token_after_the_class_token():
    torch.manual_seed(0)
    student = DistilledViT(build_vit(ARCH, TINY, 4), teacher_classes=7, feature_dim=5)
    logits, dist, feats = student(torch.randn(2, 3, 24, 24))
    assert logits.shape == (2, 4) and dist.shape == (2, 7) and feats.shape == (2, 9, 5)  # 24 / 8 = 3x3 tokens
    seen = []
    student.eval().vit.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    x = torch.randn(2, 3, 24, 24)
    student(x)
    tokens = seen[0]  # what the first block sees: [class, distillation, 9 patches], position embeddings added
    assert tokens.shape == (2, 11, student.vit.embed_dim)
    vit = student.vit
    torch.testing.assert_close(tokens[:, 0], (vit.cls_token + vit.pos_embed[:, :1])[0].expand(2, -1))
    torch.testing.assert_close(tokens[:, 1], (student.dist_token + student.dist_pos_embed)[0].expand(2, -1))
    patches = vit.patch_embed(x) + vit.pos_embed[:, 1:]
    torch.testing.assert_close(tokens[:, 2:], patches)
    bare = DistilledViT(build_vit(ARCH, TINY, 4), teacher_classes=0, feature_dim=0)
    assert bare(torch.randn(1, 3, 24, 24))[1:] == (None, None)


def test_the_weights_file_holds_the_plain_vit():
    torch.manual_seed(0)
    student = DistilledViT(build_vit(ARCH, TINY, 4), teacher_classes=7, feature_dim=5)
    state = backbone_state(student)
    assert not any("dist" in k or k.startswith(("head", "vit.")) for k in state)
    plain = build_vit(ARCH, TINY, 4)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) == {"head.weight", "head.bias"}


def test_teacher_gives_logits_and_the_deepest_level_of_its_stride_and_stays_in_eval():
    teacher = _teacher(16)
    assert teacher.channels == 112  # tf_efficientnet_lite0: blocks.4 (stride 16) has 112 channels, blocks.3 80
    teacher.train()
    assert not teacher.cnn.training
    logits, feats = teacher(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1000) and feats.shape == (2, 112, 4, 4)
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="not a feature stride"):
        _teacher(64)


def test_build_teacher_names_the_key_when_the_file_is_missing_or_does_not_fit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert build_teacher(TINY.replace(teacher="none")) is None
    with pytest.raises(ConfigError, match="pretrain.teacher: weights file .*absent.pth not found"):
        build_teacher(TINY.replace(teacher="absent.pth"))
    (tmp_path / "weights").mkdir()
    torch.save({"conv_stem.weight": torch.zeros(1)}, tmp_path / "weights" / "wrong.pth")
    with pytest.raises(ConfigError, match="pretrain.teacher: .*does not fit"):
        build_teacher(TINY.replace(teacher="wrong.pth"))


def test_a_teacher_needs_a_term():
    with pytest.raises(ConfigError, match="distill_logits > 0 or distill_features > 0"):
        TINY.replace(teacher="efficientnet_lite0.pth", distill_logits=0.0, distill_features=0.0)


def test_the_loss_is_cross_entropy_plus_the_weighted_terms_and_both_terms_reach_the_blocks():
    import contextlib

    import torch.nn.functional as F

    from pipeline.train.pretrain import build_student, pretrain_loss

    torch.manual_seed(0)
    teacher = _teacher(16)
    cfg = TINY.replace(teacher="efficientnet_lite0.pth", distill_logits=0.5, distill_features=2.0)
    student = build_student(ARCH, cfg, 4, teacher)
    x, y = torch.randn(3, 3, 24, 24), torch.tensor([0, 1, 3])
    loss, logits, terms = pretrain_loss(student, teacher, x, y, cfg, ARCH.patch_size, contextlib.nullcontext)
    ce = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    assert loss.item() == pytest.approx(ce.item() + 0.5 * terms["distill_logits"] + 2.0 * terms["distill_features"],
                                        rel=1e-6)
    for name in ("distill_logits", "distill_features"):  # each term alone sends a gradient into the blocks
        student.zero_grad()
        _, dist_logits, features = student(x)
        t_logits, t_features = teacher(x)
        term = (logit_distillation(dist_logits, t_logits, 2.0) if name == "distill_logits"
                else feature_distillation(features, t_features, (3, 3)))
        term.backward()
        assert student.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0, name


def test_pretraining_with_a_teacher_logs_both_terms_and_hands_over_the_plain_vit():
    from pipeline.data.corpus import corpus_classes, render_chunk

    torch.set_num_threads(1)
    data = render_chunk(("train", 0, 8), corpus_classes(4), seed=0, size=24)
    teacher = _teacher(8)
    cfg = TINY.replace(teacher="efficientnet_lite0.pth")
    model, history = pretrain_vit(ARCH, cfg, data, data, 4, torch.device("cpu"), progress=False, teacher=teacher)
    assert isinstance(model, DistilledViT)
    assert all(np.isfinite(history[-1][k]) and history[-1][k] > 0 for k in ("distill_logits", "distill_features"))
    plain, plain_history = pretrain_vit(ARCH, TINY, data, data, 4, torch.device("cpu"), progress=False)
    assert "distill_logits" not in plain_history[-1]
    assert backbone_state(model).keys() == backbone_state(plain).keys()


def test_teacher_renormalises_the_students_input_to_its_own_mean_and_std():
    from pipeline.models.inputs import IMAGENET_MEAN, IMAGENET_STD

    teacher = _teacher(16)  # tf_efficientnet_lite0: mean = std = 0.5
    seen = []
    teacher.cnn.conv_stem.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    # a pixel of value v (0..1) is (v - m) / s for the student and must reach the teacher as (v - 0.5) / 0.5
    v = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    student_input = (v - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    teacher(student_input)
    torch.testing.assert_close(seen[0][0, :, 0, 0], torch.tensor([-1.0, -0.5, 1.0]), atol=1e-6, rtol=0)

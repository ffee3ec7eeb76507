"""The multi-class-token ViT: shapes, attention capture against timm's own attention, saving, loading."""

import pytest
import torch

from pipeline.common.io import DataError
from pipeline.config import ConfigError, defaults
from pipeline.models.inputs import image_to_tensor
from pipeline.models.vit import build_classifier, classifier_payload, load_classifier, save_classifier

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

C = 3
CFG = SCRATCH.classifier.replace(img_size=32, patch_size=8, depth=3, cam_layers=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_classifier(CFG, C).eval()


def test_forward_shapes(model):
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.grid == (4, 4)
    assert out.logits_cls.shape == (2, C) and out.logits_patch.shape == (2, C)
    for name in ("cam", "patch_cam", "class_attn"):
        assert getattr(out, name).shape == (2, C, 4, 4), name
        assert (getattr(out, name) >= 0).all(), name
    assert out.attn.shape == (2, 3, 16, 16) and out.attn_logits.shape == (2, 3, 16, 16)
    assert torch.allclose(out.attn.sum(-1), torch.ones(2, 3, 16))  # renormalised rows
    assert torch.equal(out.cam, out.class_attn)  # the default CAM: class attention of the last cam_layers


def test_capture_off_gives_the_same_logits(model):
    x = torch.randn(2, 3, 32, 32)
    full = model(x)
    fast = model(x, capture=False, with_cam=False)
    assert fast.attn is None and fast.attn_logits is None and fast.cam is None
    assert torch.allclose(full.logits_cls, fast.logits_cls, atol=1e-5)
    assert torch.allclose(full.logits_patch, fast.logits_patch, atol=1e-5)
    cam_only = model(x, capture=False, with_cam=True)  # only the last cam_layers computed explicitly
    assert torch.allclose(cam_only.cam, full.cam, atol=1e-6)


def test_attention_capture_matches_timm(model):
    """Run timm's own Block.forward (fused attention off) on our token sequence and compare."""
    x = torch.randn(2, 3, 32, 32)
    tokens_in, softmaxes, qkvs = [], [], []
    blocks = model.backbone.blocks
    h_in = blocks[0].norm1.register_forward_pre_hook(lambda m, args: tokens_in.append(args[0]))
    out = model(x)
    h_in.remove()
    hooks = []
    for blk in blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, args, res: softmaxes.append(args[0])))
        hooks.append(blk.attn.qkv.register_forward_hook(lambda m, args, res: qkvs.append(res)))
    try:
        t = tokens_in[0]
        for blk in blocks:
            t = blk(t)  # timm's forward
        t = model.backbone.norm(t)
    finally:
        for hk in hooks:
            hk.remove()
        for blk in blocks:
            blk.attn.fused_attn = True
    # logits of the class tokens through the per-class head
    ref_cls = (t[:, :C] * model.cls_head.weight).sum(-1) + model.cls_head.bias
    assert torch.allclose(out.logits_cls, ref_cls, atol=1e-5)
    heads, hd = blocks[0].attn.num_heads, blocks[0].attn.head_dim
    for l_, (probs, qkv) in enumerate(zip(softmaxes, qkvs)):
        # softmax over all T = C + N tokens, head mean, patch block, rows renormalised
        block = probs.mean(1)[:, C:, C:]
        assert torch.allclose(out.attn[:, l_], block / block.sum(-1, keepdim=True), atol=1e-6)
        b, tt, _ = qkv.shape
        q, k, _ = qkv.reshape(b, tt, 3, heads, hd).permute(2, 0, 3, 1, 4)
        logits = ((q * hd ** -0.5) @ k.transpose(-2, -1)).mean(1)[:, C:, C:]
        assert torch.allclose(out.attn_logits[:, l_], logits, atol=1e-5)
        # and the logits are the pre-softmax values of that softmax (per head: softmax(logits) = probs)
    ref_class_attn = sum(p.mean(1)[:, :C, C:] for p in softmaxes[-CFG.cam_layers:]).reshape(2, C, 4, 4)
    assert torch.allclose(out.class_attn, ref_class_attn, atol=1e-6)


def test_each_layer_computes_qk_once(model, monkeypatch):
    calls = []
    real = torch.Tensor.softmax

    def counting(self, *a, **k):
        calls.append(self.shape)
        return real(self, *a, **k)
    monkeypatch.setattr(torch.Tensor, "softmax", counting)
    model(torch.randn(1, 3, 32, 32))
    assert len(calls) == CFG.depth  # one attention softmax per layer, nothing recomputed


def test_other_input_sizes_interpolate_position_embeddings(model):
    out = model(torch.randn(1, 3, 48, 32))
    assert out.grid == (6, 4) and out.cam.shape == (1, C, 6, 4) and out.attn.shape == (1, 3, 24, 24)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 30, 32))


def test_cam_variants():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    expected = {"class_attn": lambda o: o.class_attn, "patch": lambda o: o.patch_cam,
                "fused": lambda o: o.class_attn * o.patch_cam}  # MCTformer-V2 fusion
    for cam, fn in expected.items():
        m = build_classifier(CFG.model_copy(update={"cam": cam}), C).eval()
        out = m(x)
        assert torch.allclose(out.cam, fn(out)), cam


def test_gradient_reaches_the_attention_logits():
    torch.manual_seed(0)
    m = build_classifier(CFG, C).train()
    out = m(torch.randn(2, 3, 32, 32))
    out.attn_logits.sigmoid().mean().backward()
    assert m.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert not out.attn.requires_grad and not out.cam.requires_grad


def test_save_and_load_round_trip(model, tmp_path):
    path = tmp_path / "model.pt"
    save_classifier(model, path)
    loaded = load_classifier(path, "cpu")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x).logits_cls, loaded(x).logits_cls)
    assert loaded.cfg == CFG and loaded.num_classes == C
    with pytest.raises(DataError, match="missing.pt"):
        load_classifier(tmp_path / "missing.pt")
    bad = classifier_payload(model)
    bad["num_classes"] = C + 1
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="bad.pt"):
        load_classifier(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pt"):
        load_classifier(tmp_path / "junk.pt")


def test_pretrained_from_a_local_file(tmp_path):
    import timm

    torch.manual_seed(1)
    ref = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=4)  # stands in for hub weights
    path = tmp_path / "weights.pth"
    torch.save(ref.state_dict(), path)
    cfg = SCRATCH.classifier.replace(pretrained=str(path), img_size=32, patch_size=16, depth=2)
    m = build_classifier(cfg, C)
    assert len(m.backbone.blocks) == 2
    assert torch.equal(m.backbone.blocks[1].attn.qkv.weight, ref.blocks[1].attn.qkv.weight)
    assert torch.equal(m.cls_tokens, ref.cls_token.repeat(1, C, 1))  # one class token repeated C times
    assert torch.equal(m.cls_pos_embed, ref.pos_embed[:, :1].repeat(1, C, 1))
    assert m.patch_pos_embed.shape == (1, 4, 192)  # 14x14 resampled to 2x2
    assert m(torch.randn(1, 3, 32, 32)).cam.shape == (1, C, 2, 2)
    with pytest.raises(ConfigError, match="not found"):
        build_classifier(cfg.model_copy(update={"pretrained": str(tmp_path / "nope.pth")}), C)
    with pytest.raises(ConfigError, match="depth"):
        build_classifier(cfg.model_copy(update={"depth": 6}), C)


def test_from_scratch_class_tokens_differ():
    m = build_classifier(CFG, C)
    assert not torch.allclose(m.cls_tokens[0, 0], m.cls_tokens[0, 1])


def test_image_to_tensor():
    import numpy as np

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255
    t = image_to_tensor(rgb)
    assert t.shape == (3, 4, 5)
    assert torch.allclose(t[0], torch.full((4, 5), (1 - 0.485) / 0.229))
    assert torch.allclose(t[1], torch.full((4, 5), -0.456 / 0.224))


def test_patch_bias_calibrates_the_logit_but_not_the_cam():
    # Eq. 1 has no bias: shifting the patch head's bias moves logits_patch by the same amount, CAMs stay
    torch.manual_seed(0)
    m = build_classifier(CFG, C).eval()
    x = torch.randn(1, 3, 32, 32)
    before = m(x)
    with torch.no_grad():
        m.patch_head.bias -= 100.0
    after = m(x)
    assert torch.allclose(after.logits_patch, before.logits_patch - 100.0)
    assert torch.equal(after.patch_cam, before.patch_cam) and torch.equal(after.cam, before.cam)
    assert before.patch_cam.max() > 0

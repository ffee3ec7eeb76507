"""Weight hand-over: stage pretrain's ViT into train_cls, the EfficientNet-Lite0 ImageNet file into
AffinityNet and DeepLab; the pretraining loop itself."""

import copy

import numpy as np
import pytest
import torch

from pipeline.common.io import write_torch
from pipeline.config import defaults
from pipeline.models.imagenet_cnn import DS_BLOCK, IR_BLOCK, imagenet_state, to_timm
from pipeline.train.pretrain import augment_batch, backbone_state, pretrain_vit

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

ARCH = SCRATCH.classifier.replace(img_size=32, patch_size=8, depth=2, cam_layers=1)
TINY = SCRATCH.pretrain.replace(num_classes=4, image_size=24, epochs=2, batch_size=4, warmup_epochs=1)


def _corpus(n=12):
    from pipeline.data.corpus import corpus_classes, render_chunk

    return render_chunk(("train", 0, n), corpus_classes(4), seed=0, size=24)


def test_pretraining_learns_and_resumes_exactly():
    torch.set_num_threads(1)
    data = _corpus()
    model, history = pretrain_vit(ARCH, TINY, data, data, 4, torch.device("cpu"), progress=False)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    states = []
    pretrain_vit(ARCH, TINY.replace(epochs=2), data, data, 4, torch.device("cpu"), progress=False,
                            on_epoch=lambda e, m, s: states.append(copy.deepcopy(s)) if e == 1 else None)
    resumed, _ = pretrain_vit(ARCH, TINY, data, data, 4, torch.device("cpu"), progress=False, resume=states[0])
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    images, _ = _corpus(4)
    a = augment_batch(images, [0, 3], 16, (0.5, 1.0), seed=0, epoch=1)
    b = augment_batch(images, [3], 16, (0.5, 1.0), seed=0, epoch=1)
    assert a.shape == (2, 3, 16, 16)
    torch.testing.assert_close(a[1:], b)
    assert not torch.equal(a, augment_batch(images, [0, 3], 16, (0.5, 1.0), seed=0, epoch=2))


def test_pretrained_vit_seeds_the_classifier(tmp_path):
    """train_cls starts from every pretrained block, its class token (in every class token) and its
    position embedding resampled from the corpus grid (3x3) to the fine-tuning grid (4x4)."""
    from pipeline.models.vit import build_classifier
    from pipeline.train.pretrain import build_vit

    torch.manual_seed(0)
    vit = build_vit(ARCH, TINY, 4)
    path = tmp_path / "vit.pth"
    write_torch(path, backbone_state(vit))
    assert not any(k.startswith("head.") for k in torch.load(path, weights_only=True))
    clf = build_classifier(ARCH.replace(pretrained=str(path)), num_classes=5)
    for i in range(ARCH.depth):
        torch.testing.assert_close(clf.backbone.blocks[i].attn.qkv.weight, vit.blocks[i].attn.qkv.weight)
    torch.testing.assert_close(clf.backbone.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    torch.testing.assert_close(clf.cls_tokens, vit.cls_token.expand(1, 5, -1))
    assert clf.patch_pos_embed.shape[1] == 16 and vit.pos_embed.shape[1] == 1 + 9


def test_efficientnet_keys_map_by_hand():
    """Block 0 of Lite0 is depthwise-separable (no _expand_conv), block 1 an inverted residual; the flat
    block index becomes (stage, index) from the stage depths."""
    t = torch.zeros(1)
    src = {"_conv_stem.weight": t, "_bn0.bias": t, "_blocks.0._depthwise_conv.weight": t,
           "_blocks.0._project_conv.weight": t, "_blocks.0._bn2.weight": t, "_blocks.1._expand_conv.weight": t,
           "_blocks.1._bn0.weight": t, "_blocks.1._project_conv.weight": t, "_blocks.2._bn2.bias": t,
           "_blocks.2._expand_conv.weight": t, "_conv_head.weight": t, "_bn1.weight": t, "_fc.bias": t}
    assert set(to_timm(src, [1, 2])) == {
        "conv_stem.weight", "bn1.bias", "blocks.0.0.conv_dw.weight", "blocks.0.0.conv_pw.weight",
        "blocks.0.0.bn2.weight", "blocks.1.0.conv_pw.weight", "blocks.1.0.bn1.weight", "blocks.1.0.conv_pwl.weight",
        "blocks.1.1.bn3.bias", "blocks.1.1.conv_pw.weight", "conv_head.weight", "bn2.weight", "classifier.bias"}
    assert DS_BLOCK["_project_conv"] == "conv_pw" and IR_BLOCK["_project_conv"] == "conv_pwl"
    with pytest.raises(ValueError, match="beyond"):
        to_timm({"_blocks.3._bn0.weight": t}, [1, 2])


def test_imagenet_file_reaches_affinitynet_and_deeplab(tmp_path):
    from pipeline.models.affinitynet import AffinityNet
    from pipeline.models.segmenter import build_segmenter

    state = imagenet_state()  # strict load into timm's tf_efficientnet_lite0 inside
    path = tmp_path / "effnet.pth"
    write_torch(path, state)
    net = AffinityNet("tf_efficientnet_lite0", str(path), feature_stride=4, embed_dim=16)
    torch.testing.assert_close(net.body.blocks[3][1].conv_dw.weight, state["blocks.3.1.conv_dw.weight"])
    seg = build_segmenter(SCRATCH.seg.replace(encoder="tu-tf_efficientnet_lite0", encoder_weights=str(path),
                                                 decoder_channels=16), 3)
    torch.testing.assert_close(seg.net.encoder.model.blocks[5][0].conv_pw.weight, state["blocks.5.0.conv_pw.weight"])
    torch.testing.assert_close(seg.net.encoder.model.bn1.running_var, state["bn1.running_var"])

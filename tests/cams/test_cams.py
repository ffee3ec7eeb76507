"""CAM export: TTA merge, the refinement variants against pipeline.cams.aream, storage, sweep, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.cams.aream import (average_affinity, first_k_affinity, layer_entropy, reactivated_affinity,
                                 reactivation_weights, refine_cams)
from pipeline.cams.infer import (gather_classes, infer_cams, input_side, load_cam_scores, normalize_maps, normalize_max,
                                 output_size, pack_cams, refine_variants, resize_images, variant_affinities)
from pipeline.common.io import read_npz
from pipeline.config import defaults
from pipeline.metrics import ThresholdSweep
from fakes import FakeViT, cam_dataset, image

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

torch.set_num_threads(1)


def _toy_inputs(B=2, C=3, g=3, L=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cam = torch.rand(B, C, g, g, generator=gen)
    attn = torch.rand(B, L, g * g, g * g, generator=gen).softmax(-1)
    return cam, attn


# ---------------------------------------------------------------------------------------------- geometry


def test_input_side_and_output_size():
    assert input_side(96, 1.0, 8) == 96
    assert input_side(96, 0.75, 8) == 72
    assert input_side(96, 1.25, 8) == 120
    assert input_side(448, 1.5, 16) == 672
    assert input_side(20, 0.1, 8) == 8  # never below one patch
    assert output_size(375, 500, 4) == (94, 125)
    assert output_size(96, 97, 4) == (24, 25)


def test_resize_images_batches_any_sizes():
    x = resize_images([image(40, 60), image(33, 17)], 32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    # a constant image stays constant
    y = resize_images([np.full((50, 70, 3), 51, np.uint8)], 24)
    assert torch.allclose(y, torch.full_like(y, 0.2), atol=1e-6)


# ---------------------------------------------------------------------------------------------- variants


def test_avg_variant_is_refine_cams_with_mean_attention():
    cam, attn = _toy_inputs()
    out = refine_variants(cam, attn, ["cam", "avg"], first_k=2)
    assert torch.equal(out["cam"], cam)
    torch.testing.assert_close(out["avg"], refine_cams(cam, attn.mean(1)))


def test_first_k_with_all_layers_equals_avg_and_k1_is_first_layer():
    cam, attn = _toy_inputs(L=4)
    full = refine_variants(cam, attn, ["avg", "first_k"], first_k=4)
    torch.testing.assert_close(full["first_k"], full["avg"])
    one = refine_variants(cam, attn, ["first_k"], first_k=1)
    torch.testing.assert_close(one["first_k"], refine_cams(cam, attn[:, 0]))
    with pytest.raises(ValueError, match="first_k"):
        refine_variants(cam, attn, ["first_k"], first_k=5)


def test_aream_variant_uses_per_image_entropy_weights():
    cam, attn = _toy_inputs(B=3, L=5, seed=1)
    w, _ = reactivation_weights(layer_entropy(cam, attn))
    expected = refine_cams(cam, reactivated_affinity(attn, w))
    out = refine_variants(cam, attn, ["aream"], first_k=1)
    torch.testing.assert_close(out["aream"], expected)
    # per image: image 0 alone gives the same as in the batch
    alone = refine_variants(cam[:1], attn[:1], ["aream"], first_k=1)
    torch.testing.assert_close(alone["aream"], expected[:1])


def test_variant_affinities_match_the_aream_module_in_one_pass():
    cam, attn = _toy_inputs(B=2, L=5, seed=2)
    A = variant_affinities(cam, attn, ["first_k", "aream", "avg"], first_k=3)
    assert A.shape == (2, 3, 9, 9)
    w, _ = reactivation_weights(layer_entropy(cam, attn))
    torch.testing.assert_close(A[:, 0], first_k_affinity(attn, 3))
    torch.testing.assert_close(A[:, 1], reactivated_affinity(attn, w))
    torch.testing.assert_close(A[:, 2], average_affinity(attn))
    with pytest.raises(ValueError, match="unknown"):
        refine_variants(cam, attn, ["cam", "best"], first_k=1)


def test_hand_computed_refinement():
    """Two tokens: layer 1 = identity, layer 2 = uniform. Eq. 4 average = [[.75, .25], [.25, .75]]."""
    cam = torch.tensor([[[[1.0, 0.0]]]])  # (1, 1, 1, 2)
    attn = torch.stack([torch.eye(2), torch.full((2, 2), 0.5)])[None]  # (1, 2, 2, 2)
    out = refine_variants(cam, attn, ["avg", "first_k"], first_k=1)
    torch.testing.assert_close(out["avg"], torch.tensor([[[[0.75, 0.25]]]]))
    torch.testing.assert_close(out["first_k"], cam)


# ---------------------------------------------------------------------------------------------- TTA merge


def _infer(model, images, labels, **kw):
    cfg = SCRATCH.cams.replace(**{**dict(scales=[1.0], flip=False, variants=["cam", "avg", "aream", "first_k"],
                                            first_k=2, stride=4, normalize="minmax"), **kw})
    return infer_cams(model, images, labels, cfg, img_size=32, patch_size=8)


def test_flip_equivariant_model_gives_the_same_cams_with_and_without_flip():
    model = FakeViT()
    images = [image(40, 56, 0), image(48, 36, 1)]
    labels = [(1, 2, 3), (2,)]
    plain = _infer(model, images, labels, scales=[1.0, 0.75])
    flipped = _infer(model, images, labels, scales=[1.0, 0.75], flip=True)
    for a, b in zip(plain, flipped):
        for v in ("cam", "avg", "aream", "first_k"):
            np.testing.assert_allclose(a[v], b[v], atol=1e-5)
    # the maps are not flip-symmetric themselves, so a missing un-flip would have been caught
    assert np.abs(plain[0]["cam"] - plain[0]["cam"][..., ::-1]).max() > 0.1


def test_infer_cams_keeps_gt_classes_sizes_and_normalisation():
    model = FakeViT()
    res = _infer(model, [image(41, 57), image(30, 30)], [(1, 3), ()], scales=[1.0, 1.25], flip=True)
    a, b = res
    assert list(a["keys"]) == [1, 3] and a["size"] == (41, 57)
    for v in ("cam", "avg", "aream", "first_k"):
        assert a[v].shape == (2, 11, 15) and a[v].dtype == np.float32
        assert a[v].min() >= 0 and np.allclose(a[v].reshape(2, -1).max(1), 1.0)
        assert b[v].shape == (0, 8, 8)
    # the refinement spreads activation: refined maps differ from the raw CAM
    assert np.abs(a["avg"] - a["cam"]).max() > 1e-3


def test_gather_classes_keeps_gt_classes_first_and_zero_pads():
    cam = torch.arange(2 * 4 * 1 * 2, dtype=torch.float32).reshape(2, 4, 1, 2)
    out = gather_classes(cam, [(2, 4), (3,)])
    assert out.shape == (2, 2, 1, 2)
    torch.testing.assert_close(out[0], cam[0, [1, 3]])
    torch.testing.assert_close(out[1, 0], cam[1, 2])
    assert out[1, 1].abs().sum() == 0
    assert gather_classes(cam, [(), ()]).shape == (2, 0, 1, 2)


def test_merge_order_normalise_each_forward_then_relu_sum_normalise():
    """Each forward's CAM is max-normalised before refinement, so a model whose CAM is 3x larger at one
    scale gives the same merged maps; the merge is the normalised sum of the per-scale maps."""
    class Scaled(FakeViT):
        def forward(self, x):
            out = super().forward(x)
            out.cam = out.cam * (3.0 if x.shape[-1] == 32 else 1.0)
            return out

    images, labels = [image(32, 32)], [(1, 2)]
    both = _infer(Scaled(), images, labels, scales=[1.0, 0.5])[0]
    plain = _infer(FakeViT(), images, labels, scales=[1.0, 0.5])[0]
    for v in ("cam", "avg", "aream", "first_k"):
        np.testing.assert_allclose(both[v], plain[v], atol=1e-5)
    # by hand for `cam`: per scale, the class maps max-normalised, resized to the 8x8 grid, summed, normalised
    m = FakeViT()
    total = 0
    for side in (32, 16):
        raw = m(resize_images(images, side)).cam[:, [0, 1]].clamp_min(0)
        raw = raw / raw.flatten(2).amax(-1)[..., None, None]
        total = total + torch.nn.functional.interpolate(raw, size=(8, 8), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(plain["cam"], normalize_maps(total, "minmax")[0].numpy(), atol=1e-5)
    by_max = _infer(FakeViT(), images, labels, scales=[1.0, 0.5], normalize="max")[0]
    np.testing.assert_allclose(by_max["cam"], normalize_max(total)[0].numpy(), atol=1e-5)


def test_normalize_maps_by_hand():
    m = torch.tensor([[[1.0, 2.0], [3.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    np.testing.assert_allclose(normalize_maps(m, "minmax")[0].numpy(), [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(normalize_maps(m, "max")[0].numpy(), [[0.2, 0.4], [0.6, 1.0]])
    assert normalize_maps(m, "minmax")[1].abs().sum() == 0  # a constant map carries no location
    np.testing.assert_allclose(normalize_maps(m, "max")[1].numpy(), np.ones((2, 2)))
    with pytest.raises(ValueError):
        normalize_maps(m, "mean")


# ---------------------------------------------------------------------------------------------- storage


def test_pack_and_load_cam_scores_shape_and_size():
    maps = np.linspace(0, 1, 2 * 10 * 13, dtype=np.float32).reshape(2, 10, 13)
    npz = pack_cams({"keys": np.array([4, 7]), "size": (37, 50), "cam": maps, "avg": maps}, ["cam", "avg"])
    assert npz["keys"].dtype == np.int16 and npz["size"].dtype == np.int32 and npz["cam"].dtype == np.float16
    scores = load_cam_scores(npz, "avg")
    assert scores.shape == (2, 37, 50) and scores.dtype == np.float32
    assert 0 <= scores.min() and scores.max() <= 1
    const = pack_cams({"keys": np.array([1]), "size": (9, 11), "cam": np.full((1, 3, 3), 0.5)}, ["cam"])
    np.testing.assert_allclose(load_cam_scores(const, "cam"), 0.5, atol=1e-3)
    empty = pack_cams({"keys": np.zeros(0), "size": (9, 11), "cam": np.zeros((0, 3, 3))}, ["cam"])
    assert load_cam_scores(empty, "cam").shape == (0, 9, 11)
    with pytest.raises(KeyError, match="aream"):
        load_cam_scores(npz, "aream")


def test_load_cam_scores_inverts_the_output_grid():
    """A left/right split stored at stride 4 comes back split at the same column."""
    H, W = 24, 40
    maps = np.zeros((1, 6, 10), np.float32)
    maps[0, :, 5:] = 1
    up = load_cam_scores({"keys": np.array([1]), "size": np.array([H, W]), "cam": maps}, "cam")[0]
    assert up[:, :18].max() < 0.01 and up[:, 22:].min() > 0.99 and abs(up[0, 19] + up[0, 20] - 1) < 1e-5


# ---------------------------------------------------------------------------------------------- sweep


@pytest.mark.parametrize("t, expected", [
    (0.0, (0 + 1 / 2 + 1 / 3) / 3),   # everything foreground
    (0.5, (1 / 2 + 1 / 2 + 1) / 3),   # max == t stays background
    (0.55, (1 / 2 + 1 / 2 + 1) / 3),
    (0.7, (1 / 3 + 0 + 1) / 3),
    (0.95, (1 / 4 + 0 + 0) / 3),      # everything background
])
def test_threshold_sweep_hand_case(t, expected):
    target = np.array([[0, 1, 1, 2, 255]])
    scores = np.array([[[0.1, 0.6, 0.3, 0.2, 0.9]], [[0.2, 0.1, 0.5, 0.9, 0.9]]])
    sweep = ThresholdSweep(np.array([0.0, 0.5, 0.55, 0.7, 0.95]), 3)
    sweep.add(scores, np.array([1, 2]), target)
    res = sweep.result()
    assert res["miou"][res["thresholds"].index(t)] == pytest.approx(expected)
    assert res["best_threshold"] in (0.5, 0.55) and res["best_miou"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------- stage


def test_export_resumes_and_wipes_stale_files(tmp_path):
    from pipeline.cams.export import export_cams, prepare_out_dir

    samples = cam_dataset(tmp_path)
    out = tmp_path / "cams"
    cfg = SCRATCH.cams.replace(scales=[1.0], flip=True, first_k=2, batch_size=2)
    kw = dict(img_size=32, patch_size=8, device=torch.device("cpu"))
    tag = {"v": 1}
    assert prepare_out_dir(out, tag, {s.id for s in samples}) == 0
    assert export_cams(FakeViT(), samples, out, cfg, **kw) == 5
    npz = read_npz(out / "img3.npz")
    assert set(npz) == {"keys", "size", "cam", "avg", "aream", "first_k"}
    assert npz["avg"].dtype == np.float16 and npz["avg"].shape == (2, 10, 10) and list(npz["size"]) == [39, 38]
    before = (out / "img0.npz").stat().st_mtime_ns
    assert export_cams(FakeViT(), samples, out, cfg, **kw) == 0  # second run skips everything
    (out / "img2.npz").unlink()
    assert export_cams(FakeViT(), samples, out, cfg, **kw) == 1
    assert (out / "img0.npz").stat().st_mtime_ns == before
    # same tag: only files of ids no longer selected go; a new tag wipes everything
    assert prepare_out_dir(out, tag, {s.id for s in samples[:4]}) == 1
    assert prepare_out_dir(out, {"v": 2}, {s.id for s in samples}) == 4
    assert not list(out.glob("*.npz")) and json.loads((out / "_params.json").read_text()) == {"v": 2}


def test_an_oracle_cam_scores_high_through_export_storage_and_sweep(tmp_path):
    """CAM = 'red minus green' for class 1 and 'green minus red' for class 2 (the _dataset's objects): a
    misaligned resize, flip, stride or upsampling anywhere on the way would pull the mIoU down."""
    from pipeline.cams.export import cam_quality, export_cams

    samples = cam_dataset(tmp_path)
    oracle = FakeViT(patch_size=4, img_size=64, weight=torch.tensor([[2.0, -2.0, 0], [-2.0, 2.0, 0], [0, 0, 1.0]]))
    out = tmp_path / "cams"
    cfg = SCRATCH.cams.replace(scales=[1.0, 0.75], flip=True, first_k=1, stride=2)
    export_cams(oracle, samples, out, cfg, img_size=64, patch_size=4, device=torch.device("cpu"))
    res = cam_quality(samples, out, cfg.variants, [0.0, 0.8, 0.05], 3, SCRATCH.runtime.replace(task_runner="serial"))
    assert res["cam"]["best_miou"] > 0.85, res["cam"]["best_miou"]
    assert 0.2 <= res["cam"]["best_threshold"] <= 0.8


def test_cam_quality_and_csv(tmp_path):
    from pipeline.cams.export import cam_quality, export_cams, sweep_csv

    samples = cam_dataset(tmp_path)
    out = tmp_path / "cams"
    cfg = SCRATCH.cams.replace(scales=[1.0], flip=False, first_k=2)
    export_cams(FakeViT(), samples, out, cfg, img_size=32, patch_size=8, device=torch.device("cpu"))
    res = cam_quality(samples, out, cfg.variants, [0.0, 0.8, 0.1], 3, SCRATCH.runtime.replace(task_runner="serial"))
    assert set(res) == set(cfg.variants)
    for r in res.values():
        assert r["num_images"] == 4  # img0 has no mask
        assert 0 < r["best_miou"] <= 1 and len(r["miou"]) == 9
    lines = sweep_csv(res).splitlines()
    assert lines[0] == "threshold,cam,avg,aream,first_k" and len(lines) == 10
    # the same numbers by hand for one variant
    sweep = ThresholdSweep(np.round(np.arange(9) * 0.1, 6), 4)
    from pipeline.common.io import read_label_png
    for s in samples[1:]:
        npz = read_npz(out / f"{s.id}.npz")
        sweep.add(load_cam_scores(npz, "avg"), npz["keys"], read_label_png(s.mask))
    assert sweep.result()["best_miou"] == pytest.approx(res["avg"]["best_miou"])

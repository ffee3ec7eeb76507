"""The post-processing stages end to end on a tiny synthetic set in a temporary folder (serial runner).

Four two-region images (a red object on a blue background), their masks, a manifest and coarse noisy
CAMs at stride 4; then postprocess_par, postprocess_crf, train_psa, postprocess_psa and
pseudo_labels run() for real and their outputs are checked against the stage contracts.
"""

import json
import math

import numpy as np
import pytest
from PIL import Image

from pipeline.common.io import DataError, read_label_png, read_npz, write_json, write_label_png, write_npz, write_rgb
from pipeline.config import load_params
from pipeline.data.manifest import Manifest, Sample

STRIDE = 4
IDS = ["a", "b", "c", "d"]


def make_sample(root, sid: str, rng) -> Sample:
    h, w = int(rng.integers(36, 45)), int(rng.integers(40, 52))
    cls = int(rng.integers(1, 4))
    y0, x0 = int(rng.integers(2, 10)), int(rng.integers(2, 12))
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y0 + h // 2, x0:x0 + w // 2] = cls
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (30, 40, 200)
    img[mask == cls] = (210, 40, 30)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    write_rgb(root / "img" / f"{sid}.png", img)
    write_label_png(root / "gt" / f"{sid}.png", mask)
    # coarse CAM: the object's area fraction per stride cell, peak-weighted, noisy, max-normalised
    gh, gw = math.ceil(h / STRIDE), math.ceil(w / STRIDE)
    pad = np.zeros((gh * STRIDE, gw * STRIDE), np.float32)
    pad[:h, :w] = mask == cls
    cam = pad.reshape(gh, STRIDE, gw, STRIDE).mean((1, 3))
    cam = np.clip(cam * rng.uniform(0.5, 1.0, cam.shape) + rng.normal(0, 0.05, cam.shape), 0, None)
    cam = (cam / cam.max())[None].astype(np.float16)
    write_npz(root / "data" / "cams" / f"{sid}.npz", keys=np.array([cls], np.int16),
              size=np.array([h, w], np.int32), cam=cam, avg=cam, aream=cam)
    return Sample(sid, f"img/{sid}.png", f"gt/{sid}.png", (cls,))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    samples = tuple(make_sample(tmp_path, sid, rng) for sid in IDS)
    manifest = Manifest("tiny", ("background", "c1", "c2", "c3"), {"train": samples, "val": ()})
    write_json(tmp_path / "data" / "prepared" / "manifest.json", manifest.to_dict())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_params(**sections):
    raw = {"runtime": {"task_runner": "serial", "device": "cpu"},
           "cams": {"variants": ["cam", "avg", "aream"]},  # what the fixture exported
           "par": {"dilations": [1, 2, 4], "iterations": 5},
           "psa": {"backbone": "resnet18", "epochs": 1, "batch_size": 2, "crop_size": 32, "embed_dim": 8,
                   "radius": 3, "logt": 3}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return load_params(profile="scratch", overrides=raw)


def check_scores(root, method: str) -> None:
    for sid in IDS:
        npz = read_npz(root / "data" / "scores" / method / f"{sid}.npz")
        cams = read_npz(root / "data" / "cams" / f"{sid}.npz")
        h, w = cams["size"]
        assert npz["keys"].dtype == np.int16 and npz["keys"].tolist() == cams["keys"].tolist()
        assert npz["scores"].dtype == np.float16 and npz["scores"].shape == (1, h, w)
        assert 0 <= npz["scores"].min() and npz["scores"].max() <= 1
    report = json.loads((root / "reports" / "postprocess" / f"{method}.json").read_text())
    assert report["images"] == len(IDS)
    assert 0.3 < report["sweep_miou"] <= 1.0, report


def test_all_postprocessing_stages_and_pseudo_labels(workspace):
    from stages import postprocess_crf, postprocess_par, postprocess_psa, pseudo_labels, train_psa

    params = tiny_params()
    postprocess_par.run(params)
    check_scores(workspace, "par")
    postprocess_crf.run(params)
    check_scores(workspace, "crf")
    train_psa.run(params)
    assert (workspace / "models" / "affinitynet" / "model.pt").is_file()
    live = json.loads((workspace / "reports" / "train_psa" / "metrics.json").read_text())
    assert {"loss", "bg_loss", "fg_loss", "neg_loss", "confident_miou", "confident_ignored"} <= set(live)
    postprocess_psa.run(params)
    check_scores(workspace, "psa")

    pseudo_labels.run(params)
    for sid in IDS:
        path = workspace / "data" / "pseudo" / f"{sid}.png"
        with Image.open(path) as img:
            assert img.mode == "P"
        label = read_label_png(path)
        gt = read_label_png(workspace / "gt" / f"{sid}.png")
        assert label.shape == gt.shape and set(np.unique(label)) <= {0, 255, *np.unique(gt).tolist()}
    metrics = json.loads((workspace / "reports" / "pseudo" / "metrics.json").read_text())
    assert {"cam", "avg", "aream", "par", "crf", "psa"} <= set(metrics)
    for name in ("cam", "avg", "aream", "par", "crf", "psa"):
        m = metrics[name]
        assert set(m) == {"miou", "ignored", "sweep_miou", "best_threshold"}
        assert 0 <= m["ignored"] <= 1 and 0 < m["miou"] <= 1
    assert metrics["miou"] == metrics[params.pseudo.source]["miou"]  # the configured source
    # CRF snaps the coarse CAMs to the colour edge: better than the raw CAMs
    assert metrics["crf"]["sweep_miou"] > metrics[params.post.cam_variant]["sweep_miou"]


def test_reference_variants_of_par_and_psa(workspace):
    """The reference codes' choices (post.par_mode afa, psa.pairs cropped, post.walk_pool padded) run through
    the same stage contracts."""
    from stages import postprocess_par, postprocess_psa, train_psa

    params = tiny_params(post={"par_mode": "afa", "walk_pool": "padded"}, psa={"pairs": "cropped"})
    postprocess_par.run(params)
    check_scores(workspace, "par")
    for sid in IDS:  # AFA's labels, stored as Eq. 16 scores
        assert set(np.unique(read_npz(workspace / "data" / "scores" / "par" / f"{sid}.npz")["scores"])) <= {0, 0.5, 1}
    train_psa.run(params)
    postprocess_psa.run(params)
    check_scores(workspace, "psa")


def test_pseudo_labels_and_crf_name_what_is_missing(workspace):
    from stages import postprocess_crf, pseudo_labels

    # every configured source must be there: a missing post-processing output is named, not skipped
    with pytest.raises(DataError, match=r"data/scores/par: no par scores \(run stage postprocess_par"):
        pseudo_labels.run(tiny_params(pseudo={"source": "cam", "alpha1": 0.3, "alpha2": 0.6}))
    with pytest.raises(DataError, match="no 'first_k' CAMs"):
        pseudo_labels.run(tiny_params(cams={"variants": ["cam", "first_k"]}))
    with pytest.raises(DataError, match=r"pseudo.source 'aream': not exported \(cams.variants: cam, avg\)"):
        pseudo_labels.run(tiny_params(cams={"variants": ["cam", "avg"]}, pseudo={"source": "aream"}))
    with pytest.raises(DataError, match="first_k"):
        postprocess_crf.run(tiny_params(post={"cam_variant": "first_k"}))
    assert not (workspace / "data" / "scores" / "crf").exists()  # nothing half-written

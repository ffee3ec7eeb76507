"""Classifier training: mAP, schedule, the per-step affinity labels, loss decrease, the stage with resume."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cams.aream import affinity_loss
from pipeline.config import load_params
from pipeline.models.vit import ClassifierOutput, build_classifier, load_classifier
from pipeline.data.classification import (ClassificationDataset, average_precision, mean_average_precision,
                                          random_resized_crop_box)
from pipeline.train.classifier import (aream_targets, build_optimizer, classification_loss, labels_to_grid,
                                       present_channels, train_classifier)
from pipeline.train.harness import Checkpoint, epoch_order, lr_factor

COLOURS = [(230, 30, 30), (20, 60, 240), (250, 230, 20)]
TINY = {
    "runtime": {"device": "cpu"},
    "classifier": {"img_size": 32, "patch_size": 8, "depth": 2, "drop_path": 0.1, "cam_layers": 1},
    "train_cls": {"epochs": 2, "batch_size": 4, "warmup_epochs": 1, "lr": 1.0e-3},
    "aream": {"start_epoch": 1, "par_scale": 1.0},
    "par": {"dilations": [1, 2], "iterations": 3},
}


def tiny_params(**sections):
    raw = json.loads(json.dumps(TINY))
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return load_params(profile="scratch", overrides=raw)


def _write_images(root, split, n, seed):
    """Grey noise images (32..40 px) with one or two coloured squares; class k+1 = COLOURS[k]."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(32, 41, size=2))
        img = rng.integers(90, 160, size=(h, w, 3)).astype(np.uint8)
        labels = sorted({int(rng.integers(1, 4)), int(rng.integers(1, 4))})
        for k in labels:
            y, x = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
            img[y:y + 10, x:x + 10] = COLOURS[k - 1]
        path = root / f"{split}_{i}.png"
        Image.fromarray(img).save(path)
        rows.append({"id": f"{split}_{i}", "image": str(path), "mask": None, "labels": labels})
    return rows


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    manifest = {"dataset": "tiny", "class_names": ["background", "red", "blue", "yellow"],
                "splits": {"train": _write_images(root, "train", 12, 0), "val": _write_images(root, "val", 6, 1)}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    from pipeline.data.manifest import load_manifest

    return load_manifest(root / "manifest.json")


# --------------------------------------------------------------------------------------------- metrics


def test_average_precision_by_hand():
    # ranking 1 0 1 0: precision at the positives 1/1 and 2/3 -> AP = (1 + 2/3) / 2 = 0.8333
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    assert average_precision(scores, np.array([[1], [0], [1], [0]]))[0] == pytest.approx(5 / 6)
    # ties form one threshold: scores .5 .5 .2 with labels 1 0 1:
    # at .5 recall 1/2, precision 1/2; at .2 recall 1, precision 2/3 -> .5 * .5 + .5 * 2/3 = 0.5833
    tied = average_precision(np.array([[0.5], [0.5], [0.2]]), np.array([[1], [0], [1]]))[0]
    assert tied == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    # a class without positives is NaN and left out of the mean
    two = average_precision(np.array([[0.9, 0.1], [0.1, 0.2]]), np.array([[1, 0], [0, 0]]))
    assert two[0] == 1.0 and math.isnan(two[1])
    assert mean_average_precision(np.array([[0.9, 0.1], [0.1, 0.2]]), np.array([[1, 0], [0, 0]])) == 1.0
    # perfect ranking 1, worst ranking: positives last -> (1/3 + 2/4) / 2
    worst = average_precision(np.array([[4.0], [3.0], [2.0], [1.0]]), np.array([[0], [0], [1], [1]]))[0]
    assert worst == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_lr_schedule():
    # 10 steps, 2 of warm-up: 0.5, 1.0, then cosine from 1 down to 0 over the remaining 8 steps
    f = [lr_factor(s, 10, 2, "cosine") for s in range(11)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == 1.0
    assert f[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert f[10] == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(6, 10, 2, "poly") == pytest.approx((1 - 4 / 8) ** 0.9)
    assert lr_factor(9, 10, 2, "constant") == 1.0


# ------------------------------------------------------------------------------------ affinity labels


def test_labels_to_grid_samples_cell_centres():
    labels = torch.arange(16).view(1, 4, 4)
    # 2x2 grid over a 4x4 map: centres at pixel rows/cols 1 and 3
    assert labels_to_grid(labels, (2, 2)).tolist() == [[[5, 7], [13, 15]]]


def test_present_channels_puts_each_images_classes_first():
    scores = torch.arange(1, 5, dtype=torch.float32).view(1, 4, 1, 1).repeat(2, 1, 1, 1)
    targets = torch.tensor([[0.0, 1, 0, 1], [1.0, 0, 0, 0]])
    out = present_channels(scores, targets)
    assert out.shape == (2, 2, 1, 1)
    assert out[0].flatten().tolist() == [2.0, 4.0] and out[1].flatten().tolist() == [1.0, 0.0]
    assert present_channels(scores, torch.zeros(2, 4)).shape == (2, 0, 1, 1)


def test_aream_targets_on_a_two_region_image():
    """CAM of the one present class high on the left half, identity attention (all layers alike ->
    w = 1): PAR keeps the halves apart, Eq. 16 makes left foreground and right background, so the pair
    labels are 1 within a half and 0 across."""
    params = tiny_params(aream={"par_scale": 1.0, "alpha1": 0.25, "alpha2": 0.7})
    h = w = 4
    cam = torch.zeros(1, 2, h, w)
    cam[0, 1, :, :2] = 1.0
    cam[0, 1, :, 2:] = 0.05
    cam[0, 0] = 0.9  # class 1 is absent from the labels: must be zeroed
    attn = torch.eye(h * w).repeat(1, 3, 1, 1)
    out = ClassifierOutput(logits_cls=None, logits_patch=None, cam=cam, patch_cam=cam, class_attn=None,
                           attn=attn, attn_logits=None, grid=(h, w))
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 2.0
    aff, w_, w_hat, tokens = aream_targets(out, image, torch.tensor([[0.0, 1.0]]), params.aream, params.par)
    assert torch.equal(w_hat, torch.zeros(1, 3)) and torch.equal(w_, torch.ones(1, 3))
    assert (tokens[0, :, :2] == 1).all() and (tokens[0, :, 2:] == 0).all()
    flat = tokens.flatten()
    expected = (flat[:, None] == flat[None, :]).to(torch.uint8)
    assert torch.equal(aff[0], expected)


# ----------------------------------------------------------------------------------------- data


def test_crop_box_and_deterministic_augmentation(tiny_manifest):
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, x1, y1 = random_resized_crop_box(30, 50, (0.3, 1.0), rng)
        assert 0 <= x0 < x1 <= 50 and 0 <= y0 < y1 <= 30
    ds = ClassificationDataset(tiny_manifest.split("train"), 3, 32, train=True, jitter=0.3)
    a, target = ds[3]
    expected = tiny_manifest.multi_hot(tiny_manifest.split("train")[3])
    assert a.shape == (3, 32, 32) and target.tolist() == expected.tolist()
    assert torch.equal(ds[3][0], a)  # same (seed, epoch, index) -> same pixels
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0], a)
    assert epoch_order(12, 0, 1) == epoch_order(12, 0, 1) != epoch_order(12, 0, 2)


# ---------------------------------------------------------------------------------------- training


def test_a_few_steps_reduce_the_loss(tiny_manifest):
    torch.manual_seed(0)
    params = tiny_params(classifier={"drop_path": 0.0})
    model = build_classifier(params.classifier, 3).train()
    opt = build_optimizer(model, params.train_cls)
    ds = ClassificationDataset(tiny_manifest.split("train"), 3, 32, train=False)
    images = torch.stack([ds[i][0] for i in range(8)])
    targets = torch.stack([ds[i][1] for i in range(8)])

    def loss_fn():
        out = model(images)
        aff, _, w_hat, _ = aream_targets(out, images, targets, params.aream, params.par)
        return classification_loss(out, targets) + params.aream.lam * affinity_loss(out.attn_logits, aff, w_hat)

    first = float(loss_fn().detach())
    for _ in range(12):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert float(loss_fn().detach()) < 0.8 * first


def test_authors_code_variants_run(tiny_manifest):
    # fixed data-set weights, refinement with the first layer only, loss on the last 2 (= all) layers
    params = tiny_params(aream={"weights": "dataset", "refine_layers": 1, "loss_layers": 2})
    res = train_classifier(params.classifier, params.train_cls, params.aream, params.par, tiny_manifest.split("train"),
                           tiny_manifest.split("val"), 3, torch.device("cpu"), seed=0)
    assert res.finished and len(res.history) == 2
    last = res.history[-1]
    assert last["aream"] and last["loss_aff"] > 0 and 0 <= last["val_map"] <= 1 and not res.history[0]["aream"]
    # one weight pair for the whole data set: min-max over 2 layers gives exactly 0 and 1
    assert sorted([last["w_hat_l1"], last["w_hat_l2"]]) == [0.0, 1.0]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_stage_resume_gives_the_same_weights(tiny_manifest, tmp_path, monkeypatch, capsys):
    from stages import train_cls as stage

    manifest_json = json.dumps(tiny_manifest.to_dict())
    params = tiny_params()
    dirs = {}
    for name in ("straight", "resumed"):
        d = tmp_path / name
        (d / "data/prepared").mkdir(parents=True)
        (d / "data/prepared/manifest.json").write_text(manifest_json)
        dirs[name] = d
    monkeypatch.chdir(dirs["straight"])
    stage.run(params)
    assert not (dirs["straight"] / stage.CHECKPOINT).exists()  # finished: `dvc repro -f` trains anew
    monkeypatch.chdir(dirs["resumed"])
    stage.run(params, stop_after=1)
    assert not (dirs["resumed"] / stage.MODEL).exists()  # interrupted: no final model yet
    assert torch.load(stage.CHECKPOINT, weights_only=False)["state"]["epoch"] == 1
    capsys.readouterr()
    stage.run(params)
    assert "resuming" in capsys.readouterr().err
    a, b = _state(dirs["straight"] / stage.MODEL), _state(dirs["resumed"] / stage.MODEL)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    metrics = json.loads((dirs["resumed"] / stage.METRICS).read_text())
    assert metrics["epochs"] == 2 and 0 <= metrics["val_map"] <= 1 and metrics["loss_aff"] > 0
    # the live plots hold both epochs, the first replayed from the checkpoint
    rows = (dirs["resumed"] / stage.LIVE_DIR / "plots/metrics/train_cls/loss_cls.tsv").read_text().splitlines()
    assert len(rows) == 3
    assert isinstance(load_classifier(dirs["resumed"] / stage.MODEL), torch.nn.Module)

    assert "train_seconds" not in metrics and (dirs["resumed"] / "reports/timing/train_cls.json").is_file()

    # a checkpoint made with other training params, code or data is not resumed
    monkeypatch.chdir(dirs["straight"])
    stage.run(params, stop_after=1)
    changed = tiny_params(train_cls={"lr": 2.0e-3})
    assert Checkpoint(stage.CHECKPOINT, stage.training_hash(changed), "train_cls").load() is None
    assert "other params, code" in capsys.readouterr().err
    tag = stage.training_hash(params)
    assert Checkpoint(stage.CHECKPOINT, tag, "train_cls").load() is not None
    assert stage.training_hash(params, world_size=2) != tag
    prepared = dirs["straight"] / "data/prepared/summary.json"
    prepared.write_text('{"content_sha256": "other image bytes"}')
    assert stage.training_hash(params) != tag
    prepared.unlink()
    assert stage.training_hash(params) == tag
    with monkeypatch.context() as m:
        m.setattr("pipeline.common.digests.code_sha256", lambda module, root=None: "an edited stage")
        assert stage.training_hash(params) != tag
    # and params that do not shape training (post-processing) keep the tag
    other_crf = load_params(profile="scratch", overrides={**TINY, "crf": {"iterations": 3}})
    assert stage.training_hash(params) == stage.training_hash(other_crf)

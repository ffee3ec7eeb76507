"""Stage `check`: every bad parameter or input it must catch before DVC deletes later outputs."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.common.io import DataError, write_label_png, write_rgb
from pipeline.config import ROOT, ConfigError, load_params
from stages._common import CHECKED
from stages.check import run


def _voc(base: Path, lists: dict[str, str] | None = None) -> Path:
    root = base / "VOCdevkit" / "VOC2012"
    for sid in ("a", "b", "c"):
        write_rgb(root / "JPEGImages" / f"{sid}.jpg", np.zeros((8, 8, 3), np.uint8))
        write_label_png(root / "SegmentationClass" / f"{sid}.png", np.ones((8, 8), np.uint8))
    seg = root / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    for name, text in (lists or {"train": "a\nb\n", "val": "c\n"}).items():
        (seg / f"{name}.txt").write_text(text)
    return root


def _params(**sections):
    return load_params(profile="scratch", overrides={"runtime": {"task_runner": "serial"}, **sections})


def test_a_valid_setup_writes_the_same_bytes_whatever_the_valid_params(tmp_path, monkeypatch):
    root = _voc(tmp_path)
    monkeypatch.chdir(tmp_path)
    run(_params(dataset={"name": "voc", "root": str(root)}))
    first = CHECKED.read_bytes()
    run(_params(dataset={"name": "voc", "root": str(root)}, train_cls={"lr": 0.5}))
    assert CHECKED.read_bytes() == first  # so a valid edit reruns only the stages that read it


def test_every_key_is_validated_runtime_included(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("  workers: 0 ", "  worker: 4 ")
    assert "worker: 4" in text
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match="runtime.worker: unknown key"):
        load_params(tmp_path / "params.yaml")


def test_dataset_root_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="VOC root not found"):
        run(_params(dataset={"name": "voc", "root": str(tmp_path / "nowhere")}))
    with pytest.raises(ConfigError, match="dataset.root: set it for dataset.name: voc"):
        run(_params(dataset={"name": "voc"}))
    for root in ("~/VOC2012", "../VOCdevkit/VOC2012"):
        with pytest.raises(ConfigError, match="dataset.root: .*give an absolute path"):
            run(_params(dataset={"name": "voc", "root": root}))
    root = _voc(tmp_path / "v")
    (root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"1 images of split 'train' are missing \(first: .*b\.jpg\)"):
        run(_params(dataset={"name": "voc", "root": str(root)}))
    with pytest.raises(DataError, match="dataset.train_split: .*train_aug.txt: split file not found.*"
                                        "-S dataset.train_split=train"):
        run(_params(dataset={"name": "voc", "root": str(_voc(tmp_path / "w")), "train_split": "train_aug"}))
    (root / "SegmentationClass" / "c.png").unlink()
    write_rgb(root / "JPEGImages" / "b.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="val split 'val' needs masks"):
        run(_params(dataset={"name": "voc", "root": str(root)}))
    with pytest.raises(DataError, match="train2014: not found"):
        run(_params(dataset={"name": "coco", "root": str(tmp_path)}))
    assert not CHECKED.exists()


def test_weights_must_be_a_keyword_or_a_file_under_weights(tmp_path, monkeypatch):
    root = _voc(tmp_path)
    monkeypatch.chdir(tmp_path)
    ds = {"name": "voc", "root": str(root)}
    with pytest.raises(ConfigError, match=r"classifier.pretrained: '/abs/deit.pth': give a file name under weights/ "
                                          r"\(copy or symlink the file there: ln -s /abs/deit.pth weights/deit.pth\)"):
        run(_params(dataset=ds, classifier={"pretrained": "/abs/deit.pth"}))
    with pytest.raises(ConfigError, match="seg.encoder_weights: weights file weights/r18.pth not found"):
        run(_params(dataset=ds, seg={"encoder_weights": "r18.pth"}))
    with pytest.raises(ConfigError, match="seg.encoder_weights: 'timm' is not a choice here"):
        run(_params(dataset=ds, seg={"encoder_weights": "timm"}))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "r18.pth").write_bytes(b"x")
    run(_params(dataset=ds, seg={"encoder_weights": "r18.pth"}))
    assert CHECKED.is_file()


def test_weights_written_by_a_stage_need_no_file_but_must_fit(tmp_path, monkeypatch):
    """pretrained_vit.pth (stage pretrain) and efficientnet_lite0.pth (stage import_weights) come later in
    the DAG: check accepts them without a file, for the networks they are made for only."""
    root = _voc(tmp_path)
    monkeypatch.chdir(tmp_path)
    ds = {"name": "voc", "root": str(root)}
    run(_params(dataset=ds, classifier={"pretrained": "pretrained_vit.pth"}, pretrain={"enabled": True},
                psa={"pretrained": "efficientnet_lite0.pth"}, seg={"encoder_weights": "efficientnet_lite0.pth"}))
    with pytest.raises(ConfigError, match="pretrain.enabled: false skips"):
        run(_params(dataset=ds, classifier={"pretrained": "pretrained_vit.pth"}, pretrain={"enabled": False}))
    with pytest.raises(ConfigError, match="seg.encoder_weights: pretrained_vit.pth .* is for classifier.pretrained"):
        run(_params(dataset=ds, seg={"encoder_weights": "pretrained_vit.pth"}))
    with pytest.raises(ConfigError, match="classifier.pretrained: efficientnet_lite0.pth"):
        run(_params(dataset=ds, classifier={"pretrained": "efficientnet_lite0.pth"}))
    run(_params(dataset=ds, pretrain={"teacher": "efficientnet_lite0.pth"}))
    with pytest.raises(ConfigError, match="pretrain.teacher: efficientnet_lite0.pth holds a whole tf_efficientnet"):
        run(_params(dataset=ds, pretrain={"teacher": "efficientnet_lite0.pth", "teacher_backbone": "resnet18"}))
    with pytest.raises(ConfigError, match="pretrain.teacher: pretrained_vit.pth .* is for classifier.pretrained"):
        run(_params(dataset=ds, pretrain={"teacher": "pretrained_vit.pth"}))

"""Stage `prepare`: toy, VOC and COCO manifests, max_images, parameter errors, atomic failure."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.common.io import DataError, read_label_png, write_label_png, write_rgb
from pipeline.config import ROOT, ConfigError, load_params
from pipeline.data.manifest import labels_from_mask, load_manifest
from pipeline.data.toyvoc import toy_class_names
from pipeline.data.voc import VOC_CLASSES
from stages.prepare import run

REALDATA = ROOT.parent / "shared" / "realdata"
TOY = {"num_classes": 4, "num_train": 6, "num_val": 3, "min_size": 48, "max_size": 64}


def _params(**dataset):
    return load_params(profile="scratch", overrides={"runtime": {"task_runner": "serial"}, "dataset": dataset})


def _voc_tree(base: Path) -> Path:
    root = base / "VOCdevkit" / "VOC2012"
    for sid, k in (("a", 2), ("b", 7), ("c", 20)):
        write_rgb(root / "JPEGImages" / f"{sid}.jpg", np.full((12, 16, 3), 40 * k % 255, np.uint8))
        label = np.zeros((12, 16), np.uint8)
        label[3:9, 4:12] = k
        write_label_png(root / "SegmentationClass" / f"{sid}.png", label)
    seg = root / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("a\nb\n")
    (seg / "val.txt").write_text("c\n")
    return root


def _leftovers(base: Path) -> list[str]:
    return sorted(p.name for p in (base / "data").iterdir() if p.name not in ("prepared", "toyvoc"))


def _toy(params):
    """Stage generate_toy then stage prepare, as the DAG runs them."""
    from stages.generate_toy import run as generate

    generate(params)
    return run(params)


def test_toy_manifest_matches_the_generated_masks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _toy(_params(toy=TOY))
    m = load_manifest("data/prepared/manifest.json")
    assert m.dataset == "toyvoc" and list(m.class_names) == toy_class_names(4)
    assert [len(m.split("train")), len(m.split("val"))] == [6, 3]
    for s in m.split("train") + m.split("val"):
        assert s.image.startswith("data/toyvoc/VOCdevkit/VOC2012/JPEGImages/")
        assert Path(s.image).is_file()
        assert list(s.labels) == labels_from_mask(read_label_png(s.mask), 4) and s.labels
    summary = json.loads(Path("data/prepared/summary.json").read_text())
    assert summary["splits"]["train"]["images"] == 6 and summary["splits"]["val"]["with_mask"] == 3
    freq = summary["splits"]["train"]["label_frequency"]
    assert sum(freq.values()) == sum(len(s.labels) for s in m.split("train"))
    assert _leftovers(tmp_path) == []


def test_max_images_keeps_the_first_n(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _toy(_params(toy=TOY, max_images=2))
    m = load_manifest("data/prepared/manifest.json")
    assert [s.id for s in m.split("train")] == ["train_00000", "train_00001"]
    assert [s.id for s in m.split("val")] == ["val_00000", "val_00001"]


def test_a_file_fixed_in_place_changes_the_prepared_output(tmp_path, monkeypatch):
    """Same paths, same labels, other bytes: summary.json's content hash still changes, so DVC sees a new
    data/prepared and every later stage (and resume tag) sees new data."""
    root = _voc_tree(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    run(_params(name="voc", root=str(root)))
    manifest, summary = (Path("data/prepared") / n for n in ("manifest.json", "summary.json"))
    before = manifest.read_bytes(), summary.read_bytes()
    write_rgb(root / "JPEGImages" / "a.jpg", np.full((12, 16, 3), 99, np.uint8))
    run(_params(name="voc", root=str(root)))
    assert manifest.read_bytes() == before[0]
    assert summary.read_bytes() != before[1]


def test_voc_references_files_in_place(tmp_path, monkeypatch):
    root = _voc_tree(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    run(_params(name="voc", root=str(root)))
    m = load_manifest("data/prepared/manifest.json")
    assert m.class_names == VOC_CLASSES
    assert [(s.id, s.labels) for s in m.split("train")] == [("a", (2,)), ("b", (7,))]
    assert m.split("val")[0].mask == str(root.resolve() / "SegmentationClass" / "c.png")
    assert Path(m.split("train")[0].image).is_absolute()


def test_failing_run_leaves_the_earlier_output_untouched(tmp_path, monkeypatch):
    root = _voc_tree(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    run(_params(name="voc", root=str(root)))
    before = Path("data/prepared/manifest.json").read_bytes()
    (root / "JPEGImages" / "b.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataError, match=r"b\.jpg: corrupt"):
        run(_params(name="voc", root=str(root)))
    assert Path("data/prepared/manifest.json").read_bytes() == before
    with pytest.raises(ConfigError, match="dataset.root"):
        run(_params(name="voc"))
    assert Path("data/prepared/manifest.json").read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_parameter_errors_name_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="dataset.root: set it for dataset.name: coco"):
        run(_params(name="coco"))
    with pytest.raises(ConfigError, match="dataset.train_split: 'train_aug' is not a split of toyvoc"):
        run(_params(toy=TOY, train_split="train_aug"))
    with pytest.raises(ConfigError, match="dataset.val_split"):
        run(_params(name="coco", root=str(tmp_path), val_split="test"))
    assert not Path("data/prepared").exists()


def _coco_tree(base: Path) -> Path:
    """train: t1 (polygon cat 3 + crowd), t2 (no annotations); val: v1 (RLE cat 1), v2 (none)."""
    cats = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}]
    for split, names in (("train", ["t1", "t2"]), ("val", ["v1", "v2"])):
        for n in names:
            write_rgb(base / f"{split}2014" / f"{n}.jpg", np.zeros((8, 10, 3), np.uint8))
    anns = {
        "train": [{"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]},
                  {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1,
                   "segmentation": {"size": [8, 10], "counts": [72, 8]}}],  # columns 9, rows 0..7
        "val": [{"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 0,
                 "segmentation": {"size": [8, 10], "counts": [2, 3, 75]}}],  # column 0, rows 2..4
    }
    for split, prefix in (("train", "t"), ("val", "v")):
        images = [{"id": i, "file_name": f"{prefix}{i}.jpg", "height": 8, "width": 10} for i in (1, 2)]
        path = base / "annotations" / f"instances_{split}2014.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"images": images, "annotations": anns[split], "categories": cats}))
    return base


def test_coco_masks_are_rasterised_into_prepared(tmp_path, monkeypatch):
    root = _coco_tree(tmp_path / "coco")
    monkeypatch.chdir(tmp_path)
    run(_params(name="coco", root=str(root)))
    m = load_manifest("data/prepared/manifest.json")
    assert m.class_names == ("background", "person", "car")
    (t1,) = m.split("train")  # t2 has no labels: dropped from training
    assert t1.id == "t1" and t1.labels == (2,) and t1.mask == "data/prepared/masks/train/t1.png"
    expected = np.zeros((8, 10), np.uint8)
    expected[1:5, 1:5] = 2
    expected[:, 9] = 255
    np.testing.assert_array_equal(read_label_png(t1.mask), expected)
    assert [s.id for s in m.split("val")] == ["v1"]  # unlabelled val images dropped by default
    v1 = read_label_png(m.split("val")[0].mask)
    assert (v1 == 1).sum() == 3 and (v1[2:5, 0] == 1).all()

    run(_params(name="coco", root=str(root), coco={"keep_unlabelled": True}))
    m = load_manifest("data/prepared/manifest.json")
    assert [(s.id, s.labels) for s in m.split("val")] == [("v1", (1,)), ("v2", ())]
    assert [s.id for s in m.split("train")] == ["t1"]
    assert not read_label_png(m.split("val")[1].mask).any()


def test_coco_image_size_must_match_its_annotation(tmp_path, monkeypatch):
    root = _coco_tree(tmp_path / "coco")
    write_rgb(root / "val2014" / "v1.jpg", np.zeros((9, 10, 3), np.uint8))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"v1\.jpg: image is 10x9 but its annotation says 10x8"):
        run(_params(name="coco", root=str(root)))
    assert not Path("data/prepared").exists()


@pytest.mark.realdata
def test_real_samples_through_the_stage(tmp_path, monkeypatch):
    if not REALDATA.is_dir():
        pytest.skip(f"real samples not available at {REALDATA} (only in the development workspace)")
    monkeypatch.chdir(tmp_path)
    run(_params(name="voc", root=str(REALDATA / "VOCdevkit" / "VOC2012")))
    m = load_manifest("data/prepared/manifest.json")
    assert len(m.split("train")) + len(m.split("val")) == 20
    coco = {"train_images": "train2017", "val_images": "val2017",
            "train_annotations": "annotations/instances_train2017_sample.json",
            "val_annotations": "annotations/instances_val2017_sample.json"}
    run(_params(name="coco", root=str(REALDATA / "coco"), coco=coco))
    m = load_manifest("data/prepared/manifest.json")
    assert m.num_classes == 80
    (train,) = m.split("train")
    assert train.labels == (1, 2, 4)  # person, bicycle, motorcycle
    assert set(np.unique(read_label_png(train.mask)).tolist()) == {0, 1, 2, 4}

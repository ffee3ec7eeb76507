"""The generated toy VOC: determinism, VOC layout, labels, ignore band, object counts, part/body design."""

import numpy as np
import pytest
from PIL import Image

from pipeline.common.palette import voc_palette
from pipeline.common.parallel import map_items
from pipeline.config import defaults
from pipeline.data.manifest import labels_from_mask
from pipeline.data.toyvoc import (TOY_CLASS_NAMES, _design, body_group, boundary_band, generate_toyvoc, num_body_groups,
                                  render_sample, toy_class_names)

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

SMALL = SCRATCH.dataset.toy.replace(num_classes=6, num_train=6, num_val=3, min_size=48, max_size=72, max_objects=3,
                                       seed=3)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_spec_gives_byte_identical_files(tmp_path):
    generate_toyvoc(tmp_path / "a", SMALL)
    generate_toyvoc(tmp_path / "b", SMALL)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 6 + 3 + 6 + 3 + 3  # jpgs, pngs, train/val/trainval lists
    assert a == b


def test_parallel_generation_matches_serial(tmp_path):
    generate_toyvoc(tmp_path / "serial", SMALL)
    runtime = SCRATCH.runtime.replace(task_runner="process", workers=2)
    generate_toyvoc(tmp_path / "pool", SMALL, lambda fn, items, desc: map_items(fn, items, runtime, desc))
    assert _files(tmp_path / "serial") == _files(tmp_path / "pool")


def test_seed_and_split_change_the_images():
    a = render_sample(SMALL, "train", 0)[0]
    b = render_sample(SMALL.model_copy(update={"seed": 4}), "train", 0)[0]
    c = render_sample(SMALL, "val", 0)[0]
    assert a.shape != b.shape or not np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_voc_layout_and_palette_mode(tmp_path):
    voc = generate_toyvoc(tmp_path, SMALL)
    assert voc == tmp_path / "VOCdevkit" / "VOC2012"
    seg = voc / "ImageSets" / "Segmentation"
    train = seg.joinpath("train.txt").read_text().split()
    val = seg.joinpath("val.txt").read_text().split()
    assert train == [f"train_{i:05d}" for i in range(6)] and len(val) == 3
    assert seg.joinpath("trainval.txt").read_text().split() == train + val
    for sid in train + val:
        with Image.open(voc / "JPEGImages" / f"{sid}.jpg") as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            size = img.size
        with Image.open(voc / "SegmentationClass" / f"{sid}.png") as m:
            assert m.mode == "P" and m.size == size
            assert np.array_equal(np.array(m.getpalette()[:3 * 21]).reshape(21, 3), voc_palette(21))


def test_labels_values_counts_and_sizes_over_many_images():
    spec = SCRATCH.dataset.toy.replace(num_classes=20, num_train=40, num_val=2, min_size=64, max_size=112,
                                       max_objects=3, object_scale=[0.17, 0.3], repeat=0.0)
    counts, heights, widths = [], set(), set()
    for i in range(40):
        rgb, mask = render_sample(spec, "train", i)
        assert rgb.dtype == np.uint8 and rgb.shape == (*mask.shape, 3)
        assert 64 <= mask.shape[0] <= 112 and 64 <= mask.shape[1] <= 112
        heights.add(mask.shape[0])
        widths.add(mask.shape[1])
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255}
        labels = labels_from_mask(mask, 20)
        assert 1 <= len(labels) <= 3
        for k in labels:  # every labelled object keeps a sizeable visible region
            assert (mask == k).sum() >= 40
        counts.append(len(labels))
    assert len(heights) > 5 and len(widths) > 5  # width and height vary independently
    assert max(counts) >= 2 and counts.count(1) > counts.count(3)  # fewer objects are likelier


def test_ignore_band_separates_every_pair_of_different_labels():
    spec = SMALL.model_copy(update={"boundary": 2})
    for i in range(6):
        mask = render_sample(spec, "train", i)[1]
        assert (mask == 255).sum() > 0
        for a, b in ((mask[:-1], mask[1:]), (mask[:, :-1], mask[:, 1:])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any()
    assert not (render_sample(SMALL.model_copy(update={"boundary": 0}), "train", 0)[1] == 255).any()
    thin = (render_sample(SMALL.model_copy(update={"boundary": 2}), "train", 1)[1] == 255).sum()
    wide = (render_sample(SMALL.model_copy(update={"boundary": 6}), "train", 1)[1] == 255).sum()
    assert wide > 2 * thin


@pytest.mark.parametrize("width,expected", [(1, [2]), (2, [2, 3]), (3, [1, 2, 3]), (4, [1, 2, 3, 4])])
def test_boundary_band_has_the_requested_width(width, expected):
    label = np.array([[0, 0, 0, 1, 1, 1, 1]] * 3, np.uint8)
    band = boundary_band(label, width)
    assert np.flatnonzero(band[1]).tolist() == expected
    assert (band == band[1]).all()  # the same on every row


def test_part_is_small_and_body_is_most_of_the_mask():
    spec = SCRATCH.dataset.toy.replace(num_classes=6, min_size=96, max_size=128, max_objects=1, boundary=0,
                                          clutter=0)
    fractions = []
    for i in range(8):
        rgb, mask = render_sample(spec, "train", i)
        (k,) = labels_from_mask(mask, 6)
        obj = mask == k
        d = _design(k)
        near = [np.abs(rgb.astype(int) - np.array(c)).max(-1) < 40 for c in (d.colour_a, d.colour_b)]
        fractions.append(((near[0] | near[1]) & obj).sum() / obj.sum())
    assert 0.03 < np.median(fractions) < 0.4


def test_body_groups_share_appearance_across_classes():
    assert num_body_groups(20) == 5 and num_body_groups(6) == 2 and num_body_groups(254) == 30
    assert {body_group(k, 20) for k in (1, 6, 11, 16)} == {0}
    assert body_group(2, 20) != body_group(1, 20)
    # classes of one group differ by their part
    parts = {(_design(k).pattern, _design(k).colour_a, _design(k).colour_b) for k in (1, 6, 11, 16)}
    assert len(parts) == 4


def test_class_names():
    assert len(TOY_CLASS_NAMES) == 254 and len(set(TOY_CLASS_NAMES)) == 254
    names = toy_class_names(6)
    assert names[0] == "background" and len(names) == 7 and names[1] == "red-dot-orange"


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        render_sample(SMALL, "test", 0)


def _mask_stats(spec, n=24):
    from pipeline.analysis.calibration import DataStats, mask_statistics

    stats = DataStats()
    for i in range(n):
        stats.add(mask_statistics(render_sample(spec, "train", i)[1]))
    return stats.summary()


def test_calibration_knobs_move_the_statistics_they_name():
    base = SCRATCH.dataset.toy.replace(num_classes=20, min_size=96, max_size=128, max_objects=4, repeat=0.0,
                                       object_scale=[0.17, 0.3])
    small, large = _mask_stats(base), _mask_stats(base.replace(object_scale=[0.35, 0.5]))
    assert large["fg_fraction"] > 1.5 * small["fg_fraction"]
    assert large["object_size_median"] > 2 * small["object_size_median"]
    # repeat 1: every further object is another instance of a class already there, so one class per image
    assert _mask_stats(base.replace(repeat=1.0))["classes_per_image"] == 1.0
    assert _mask_stats(base)["classes_per_image"] > 1.2


def test_texture_strength_scales_the_body_modulation():
    spec = SCRATCH.dataset.toy.replace(num_classes=6, min_size=96, max_size=128, max_objects=1, boundary=0,
                                       clutter=0, object_scale=[0.17, 0.3], body_saturation=[0.3, 0.6])

    def body_spread(texture):
        spreads = []
        for i in range(6):
            rgb, mask = render_sample(spec.replace(texture=texture), "train", i)
            (k,) = labels_from_mask(mask, 6)
            d = _design(k)
            part = np.zeros(mask.shape, bool)
            for c in (d.colour_a, d.colour_b):
                part |= np.abs(rgb.astype(int) - np.array(c)).max(-1) < 40
            body = (mask == k) & ~part
            spreads.append(rgb[body].astype(float).std(0).mean())
        return float(np.median(spreads))

    flat, full = body_spread(0.0), body_spread(1.0)
    assert flat < 8 < full  # a flat body keeps only the pixel noise (std 4) and the JPEG's rounding


def test_clutter_takes_scene_colours_when_it_does_not_take_body_colours():
    from pipeline.data.toyvoc import SCENES, _clutter

    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32) + 0.5
    checked = 0
    for seed in range(5):
        img = np.full((64, 64, 3), -1.0, np.float32)
        _clutter(np.random.default_rng(seed), img, 64, 64, yy, xx, body_colours=0.0, scene=2, texture=0.0)
        painted = img[(img >= 0).all(-1)]
        if not len(painted):
            continue  # the shape fell outside the image
        (colour,) = np.unique(painted, axis=0)  # texture 0: one flat colour
        _, _, c1, c2 = SCENES[2]
        assert min(np.abs(colour - np.array(c)).max() for c in (c1, c2)) <= 18  # a jittered scene colour
        checked += 1
    assert checked >= 3

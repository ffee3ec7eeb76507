"""Atomic writers, label PNG round trip with the VOC palette, and clear errors on bad files."""

import numpy as np
import pytest
from PIL import Image

from pipeline.common.io import (DataError, atomic_dir, read_json, read_label_png, read_npz, read_rgb, write_json,
                                write_label_png, write_npz, write_rgb)
from pipeline.common.palette import voc_palette


def test_voc_palette_known_entries():
    pal = voc_palette()
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]      # aeroplane
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # the ignore colour of VOC masks


def test_label_png_round_trip_keeps_values_and_palette(tmp_path):
    label = np.array([[0, 1, 20], [255, 7, 0]], np.uint8)
    write_label_png(tmp_path / "a.png", label)
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode == "P"
        assert np.array(img.getpalette()[:6]).tolist() == [0, 0, 0, 128, 0, 0]
    np.testing.assert_array_equal(read_label_png(tmp_path / "a.png"), label)


def test_failed_write_leaves_previous_file(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind


def test_atomic_dir_swaps_only_on_success(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "x.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "x.txt").write_text("2")
            raise RuntimeError("interrupted")
    assert (out / "x.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_readers_name_the_bad_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg"):
        read_rgb(bad)
    with pytest.raises(DataError, match="missing.png"):
        read_label_png(tmp_path / "missing.png")
    with pytest.raises(DataError, match="nope.npz"):
        read_npz(tmp_path / "nope.npz")


def test_rgb_and_npz_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    write_rgb(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), rgb)
    write_npz(tmp_path / "a.npz", x=np.arange(3, dtype=np.float16))
    assert read_npz(tmp_path / "a.npz")["x"].dtype == np.float16


@pytest.fixture
def umask_022():
    import os

    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_honour_the_umask(tmp_path, umask_022):
    """Files 0644 and folders 0755 under umask 022 (mkstemp / mkdtemp would give 0600 / 0700)."""
    write_json(tmp_path / "m.json", {"a": 1})
    with atomic_dir(tmp_path / "out") as d:
        write_json(d / "x.json", {})
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "x.json").stat().st_mode & 0o777 == 0o644


def test_the_same_weights_saved_twice_are_the_same_bytes(tmp_path):
    """torch.save to a file names the archive after it; write_torch keeps temporary names out."""
    import torch

    from pipeline.common.io import write_torch

    state = torch.nn.Linear(3, 2).state_dict()
    write_torch(tmp_path / "a.pt", state)
    write_torch(tmp_path / "b" / "model.pt", state)
    write_torch(tmp_path / "a.pt", state)  # rewritten in place through another temporary name
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    assert b".a.pt." not in (tmp_path / "a.pt").read_bytes()
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_file_sha256_alone_and_into_a_running_hash(tmp_path):
    import hashlib

    from pipeline.common.digests import file_sha256

    (tmp_path / "a").write_bytes(b"abc")
    assert file_sha256(tmp_path / "a") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    h = hashlib.sha256(b"x")
    file_sha256(tmp_path / "a", h)
    assert h.hexdigest() == hashlib.sha256(b"xabc").hexdigest()


def test_file_sequence_reads_each_item_when_asked(tmp_path):
    from pipeline.common.io import FileSequence

    for i in range(3):
        (tmp_path / f"{i}.txt").write_text(str(i * i))
    reads = []

    def reader(path):
        reads.append(path.name)
        return int(path.read_text())

    seq = FileSequence([tmp_path / f"{i}.txt" for i in range(3)], reader)
    assert len(seq) == 3 and reads == []  # nothing read up front
    assert seq[2] == 4 and seq[1:] == [1, 4] and reads == ["2.txt", "1.txt", "2.txt"]

"""`python -m pipeline.tools.predict`: palette label PNGs of the right size, overlays, clear errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.common.palette import voc_palette
from pipeline.config import ROOT, defaults
from pipeline.models.segmenter import build_segmenter, save_segmenter
from pipeline.tools.predict import collect_inputs, main

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_segmenter(build_segmenter(SCRATCH.seg.replace(decoder_channels=16), 4), path, ["background", "a", "b", "c"])
    return path


def _image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_writes_palette_pngs_of_the_input_size(tmp_path, model_path):
    folder = tmp_path / "photos"
    _image(folder / "a.jpg", 30, 45)
    _image(folder / "b.png", 41, 22, seed=1)
    (folder / "notes.txt").write_text("not an image")
    single = _image(tmp_path / "c.jpeg", 17, 19, seed=2)
    out = tmp_path / "out"
    code = main(["--model", str(model_path), "--out", str(out), "--scales", "0.75,1.0", "--flip",
                 "--device", "cpu", str(folder), str(single)])
    assert code == 0
    for stem, (h, w) in {"a": (30, 45), "b": (41, 22), "c": (17, 19)}.items():
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode == "P" and im.size == (w, h)
            assert np.array_equal(np.asarray(im.getpalette()[:12]).reshape(4, 3), voc_palette(4))
            assert np.asarray(im).max() < 4
        with Image.open(out / f"{stem}_overlay.jpg") as im:
            assert im.size == (w, h) and im.mode == "RGB"
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.jpg", "b.png", "b_overlay.jpg", "c.png",
                                                     "c_overlay.jpg"]


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    img = _image(tmp_path / "x.png", 8, 8)
    assert main(["--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o"), str(img)]) == 2
    err = capsys.readouterr().err
    assert "none.pt" in err and "not found" in err


def test_unreadable_image_is_reported_and_the_rest_written(tmp_path, model_path, capsys):
    good = _image(tmp_path / "good.png", 12, 10)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    out = tmp_path / "out"
    assert main(["--model", str(model_path), "--out", str(out), "--device", "cpu", str(good), str(bad)]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert (out / "good.png").is_file() and not (out / "broken.png").exists()


def test_scales_option_parses_a_list_and_rejects_bad_values(tmp_path, model_path, capsys):
    from pipeline.tools.predict import _scales

    assert _scales("0.5,1,1.5") == [0.5, 1.0, 1.5]
    with pytest.raises(SystemExit):
        main(["--model", str(model_path), "--out", str(tmp_path), "--scales", "0,1", "x.jpg"])
    assert "scales" in capsys.readouterr().err


def test_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        collect_inputs([str(tmp_path / "missing.jpg")])
    _image(tmp_path / "a" / "x.jpg", 4, 4)
    _image(tmp_path / "b" / "x.png", 4, 4)
    with pytest.raises(ValueError, match="x.png"):
        collect_inputs([str(tmp_path / "a"), str(tmp_path / "b")])


def test_command_line_entry_point(tmp_path, model_path):
    img = _image(tmp_path / "pic.jpg", 16, 20)
    r = subprocess.run([sys.executable, "-m", "pipeline.tools.predict", "--model", str(model_path), "--out",
                        str(tmp_path / "o"), "--device", "cpu", str(img)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "pic.png").is_file()

"""Command lines: every entry point's ``--help`` works and has no side effects; a stage's own options reach its
``run``; starting weights that cannot be used stop with one ConfigError line naming the params key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pipeline.config import ROOT, ConfigError, defaults, plain_doc

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build
MAIN = re.compile(r'^if __name__ == "__main__":', re.MULTILINE)


def _modules(package: str) -> list[str]:
    """``package.x`` for every public module of ``package`` that runs as ``python -m``."""
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / package).rglob("*.py")
                  if not p.name.startswith("_") and MAIN.search(p.read_text(encoding="utf-8")))


STAGES = _modules("stages")
TOOLS = _modules("pipeline")
BENCHMARKS = sorted(f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("*.py"))
ENTRY_POINTS = STAGES + TOOLS + BENCHMARKS
# importing prefect creates its home, ./.prefect by default (pipeline/common/parallel.py prefect_env), before main()
# runs
def test_the_entry_points_are_found():
    assert {"pipeline.tools.compare", "pipeline.config", "pipeline.tools.predict", "pipeline.tools.flow",
            "pipeline.common.codedeps"} <= set(TOOLS)
    assert {"stages.report", "stages.train_cls", "stages.evaluate", "stages.prepare"} <= set(STAGES)
    assert "stages._common" not in STAGES and len(BENCHMARKS) >= 5


def _help(entry: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # as a user's shell: no test setup
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    target = [str(ROOT / entry)] if entry.endswith(".py") else ["-m", entry]
    return subprocess.run([sys.executable, *target, "--help"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def help_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """``--help`` of every entry point, each in its own empty folder; four at a time (imports dominate)."""
    folders = {entry: tmp_path_factory.mktemp("cwd") for entry in ENTRY_POINTS}
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip(ENTRY_POINTS, pool.map(lambda e: _help(e, folders[e]), ENTRY_POINTS)))
    return {entry: (done[entry], folders[entry]) for entry in ENTRY_POINTS}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_help_prints_usage_and_touches_nothing(entry, help_runs):
    proc, cwd = help_runs[entry]
    assert proc.returncode == 0, proc.stderr[-2000:]
    command = ["python", entry] if entry.endswith(".py") else ["python", "-m", entry]
    first = proc.stdout.splitlines()[0] if proc.stdout else ""
    assert first.split()[:len(command) + 1] == ["usage:", *command], proc.stdout[:300]
    assert "``" not in proc.stdout and not re.search(r":\w+:`", proc.stdout)  # no Sphinx markup
    if entry.startswith("stages."):
        assert "done in" not in proc.stderr  # parsed before the stage ran
    left = sorted(p.name for p in cwd.iterdir())
    assert left == []


@pytest.mark.parametrize("entry, flag", [("stages.train_cls", "--baseline"), ("stages.export_cams", "--baseline"),
                                         ("stages.train_seg", "--upper-bound"), ("stages.evaluate", "--upper-bound")])
def test_a_stage_lists_its_own_options(entry, flag, help_runs):
    assert flag in help_runs[entry][0].stdout


CALLS: list[tuple] = []  # what the stand-ins below were called with


def _fake_run(params, baseline: bool = False) -> None:
    CALLS.append(("run", params, baseline))


def _stage_main(monkeypatch, argv: list[str]) -> list[tuple]:
    import stages._common as common

    CALLS.clear()
    monkeypatch.setattr(common, "load_params", lambda: CALLS.append(("load_params",)) or "params")
    common.stage_main(_fake_run, lambda cli: cli.add_argument("--baseline", action="store_true"), argv=argv)
    return list(CALLS)


def test_stage_main_passes_options_to_run(monkeypatch):
    assert _stage_main(monkeypatch, ["--baseline"]) == [("load_params",), ("run", "params", True)]
    assert _stage_main(monkeypatch, []) == [("load_params",), ("run", "params", False)]


@pytest.mark.parametrize("argv, code", [(["--help"], 0), (["--bogus"], 2)])
def test_stage_main_parses_before_loading_params(monkeypatch, capsys, argv, code):
    with pytest.raises(SystemExit) as exit_:
        _stage_main(monkeypatch, argv)
    assert exit_.value.code == code and CALLS == []
    out = capsys.readouterr()
    assert (out.out if code == 0 else out.err).startswith(f"usage: python -m {__name__}")


def test_stage_main_prints_a_config_error_as_one_line(monkeypatch, capsys):
    import stages._common as common

    def failing(params):
        raise ConfigError("classifier.pretrained: bad")

    monkeypatch.setattr(common, "load_params", lambda: "params")
    with pytest.raises(SystemExit) as exit_:
        common.stage_main(failing, argv=[])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: classifier.pretrained: bad\n"


def test_plain_doc_drops_sphinx_markup():
    doc = ("Reads ``a.json`` (:func:`pipeline.common.io.read_json`, :class:`~pipeline.config.ConfigError`). "
           "Usage::\n\n  x\n")
    assert plain_doc(doc) == "Reads a.json (pipeline.common.io.read_json, ConfigError). Usage:\n\n  x\n"


# ------------------------------------------------------------------------------------------------------------
# starting weights


@pytest.fixture(scope="module")
def wider_vit(tmp_path_factory) -> Path:
    """A ViT weights file of another width (384) and depth (2) than the scratch classifier (deit_tiny: 192)."""
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vit_384.pth"
    torch.save(timm.create_model("vit_small_patch16_224", pretrained=False, depth=2).state_dict(), path)
    return path


def test_a_classifier_file_of_another_width_is_one_config_error(wider_vit):
    from pipeline.models.vit import build_classifier

    cfg = SCRATCH.classifier.replace(pretrained=str(wider_vit), img_size=32, patch_size=16, depth=2)
    with pytest.raises(ConfigError) as err:
        build_classifier(cfg, 3)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"classifier.pretrained: weights file {str(wider_vit)!r} does not fit")
    found = re.search(r"(\d+) tensors mismatch in shape \(e\.g\. [\w.]+: file \[([\d, ]+)\] vs model \[([\d, ]+)\]\)",
                      msg)
    assert found, msg
    assert int(found.group(1)) > 20  # every block tensor and the embeddings
    assert found.group(2).split(", ")[-1] == "384" and found.group(3).split(", ")[-1] == "192"


def test_a_psa_file_of_another_architecture_is_one_config_error(wider_vit):
    from pipeline.models.affinitynet import AffinityNet

    with pytest.raises(ConfigError) as err:  # timm loads a feature extractor non-strictly: checked by us
        AffinityNet("resnet18", str(wider_vit), feature_stride=8, embed_dim=16)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("psa.pretrained: weights file")
    assert re.search(r"\d+ tensors missing from the file \(e\.g\. conv1\.weight\)", msg), msg


def _hub_classifier():
    from pipeline.models.vit import build_classifier

    build_classifier(SCRATCH.classifier.replace(pretrained="timm", img_size=32, patch_size=16, depth=2), 3)


def _hub_affinitynet():
    from pipeline.models.affinitynet import AffinityNet

    AffinityNet("resnet18", "timm", feature_stride=8, embed_dim=16)


def _hub_camnet():
    from pipeline.analysis.calibration import CamNet

    CamNet("resnet18", 3, hub=True)


def _hub_teacher():
    from pipeline.train.distill import build_teacher

    build_teacher(SCRATCH.pretrain.replace(teacher="timm", teacher_backbone="resnet18", teacher_stride=8))


def _hub_segmenter():
    from pipeline.models.segmenter import build_segmenter

    build_segmenter(SCRATCH.seg.replace(encoder_weights="imagenet", decoder_channels=16), 3)


@pytest.mark.parametrize("key, build", [("classifier.pretrained", _hub_classifier),
                                        ("psa.pretrained", _hub_affinitynet), ("seg.encoder_weights", _hub_segmenter),
                                        ("calibration.pretrained", _hub_camnet), ("pretrain.teacher", _hub_teacher)])
def test_hub_weights_offline_are_one_config_error(offline, key, build):
    with pytest.raises(ConfigError) as err:
        build()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{key}: hub weights could not be downloaded")
    assert "internet" in msg and "weights/README.md" in msg


def test_predict_prints_the_class_names(tmp_path, capsys):
    from PIL import Image

    from pipeline.models.segmenter import build_segmenter, save_segmenter
    from pipeline.tools.predict import main

    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    save_segmenter(build_segmenter(SCRATCH.seg.replace(decoder_channels=16), 3), model, ["background", "cat", "dog"])
    Image.new("RGB", (12, 10)).save(tmp_path / "x.png")
    argv = ["--model", str(model), "--out", str(tmp_path / "out"), "--device", "cpu", str(tmp_path / "x.png")]
    assert main(argv) == 0
    assert "classes: 0 background, 1 cat, 2 dog" in capsys.readouterr().err


def test_launch_processes_starts_ranks_like_torchrun_and_returns_the_failing_exit_code(tmp_path):
    from stages._common import launch_processes

    script = ("import os, pathlib, sys; r = os.environ['RANK']; "
              f"pathlib.Path({str(tmp_path)!r}, 'rank' + r).write_text(os.environ['WORLD_SIZE']); "
              "sys.exit(3 if r == '1' and os.environ.get('FAIL') else 0)")
    assert launch_processes(2, ["-c", script]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]
    assert (tmp_path / "rank1").read_text() == "2"
    os.environ["FAIL"] = "1"
    try:
        assert launch_processes(2, ["-c", script]) == 3
    finally:
        del os.environ["FAIL"]


def test_training_stages_take_nproc_and_dvc_passes_runtime_nproc():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    training = {"pretrain", "train_cls", "train_cls_base", "train_psa", "train_seg", "train_seg_gt"}
    assert {n for n, st in stages.items() if "--nproc ${runtime.nproc}" in st["cmd"]} == training


def test_a_test_that_reaches_the_network_is_refused():
    """tests/conftest.py refuses connections outside the machine and records them (each test must leave the
    record as it found it, or it fails); connections to this machine, e.g. Prefect's local server, pass."""
    import socket

    import conftest

    with socket.socket() as s, pytest.raises(OSError, match="tests run offline"):
        s.connect(("192.0.2.1", 443))  # TEST-NET-1: never a real host
    assert conftest._REMOTE_ATTEMPTS[-1] == repr(("192.0.2.1", 443))
    conftest._REMOTE_ATTEMPTS.pop()  # this test's attempt was on purpose
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client.connect(server.getsockname())

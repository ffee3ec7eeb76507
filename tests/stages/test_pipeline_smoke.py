"""The whole DAG, for real, on the smoke profile: `dvc repro` in a scratch copy of the project.

Checks that every stage runs and writes what the next one reads, that a second `dvc repro` does
nothing, and what DVC records is true: a forced rerun retrains and gives the same bytes, a code edit
reruns exactly the stages that import the file, a bad parameter stops the run before any output is
deleted, a skipped upper bound still completes the DAG, metrics come back with `dvc checkout`, a CRF-only
edit leaves every other branch up to date, and the README's profile commands work as written. A second
scratch project with the dataset outside the repository checks that DVC sees files change there and in
weights/.
"""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import ROOT
from pipeline.tools.scratch import scratch_env, scratch_project

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _env(cwd):
    # the CPU even where a GPU is present: CUDA's atomic-add kernels are not bit-reproducible, and the same-bytes
    # checks below hold for one CPU machine (make gpu-check runs the DAG on CUDA)
    return {**scratch_env(Path(cwd)), "CUDA_VISIBLE_DEVICES": ""}


def _run(cmd, cwd, timeout=900, ok=True):
    r = subprocess.run(cmd, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, shell=isinstance(cmd, str), executable="/bin/bash" if
                       isinstance(cmd, str) else None)
    if ok:
        assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def _dvc(*args, cwd, ok=True):
    return _run([str(BIN / "dvc"), *args], cwd, ok=ok)


def _changed(repo) -> set:
    return set(json.loads(_dvc("status", "--json", cwd=repo).stdout))


def _lock_outs(repo) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {(name, o["path"]): o["md5"] for name, st in lock.items() for o in st.get("outs", [])}


def _edit_params(repo, section, key, value):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _scratch_project(base) -> Path:
    return scratch_project(base / "project", _env(base / "project"), "smoke", message="smoke")


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    repo = _scratch_project(tmp_path_factory.mktemp("smoke"))
    start = time.perf_counter()
    _run([str(BIN / "dvc"), "repro"], repo)
    print(f"smoke DAG: {time.perf_counter() - start:.0f} s")
    return repo


def test_every_stage_produced_its_outputs(smoke_repo):
    manifest = json.loads((smoke_repo / "data/prepared/manifest.json").read_text())
    train_ids = [s["id"] for s in manifest["splits"]["train"]]
    assert len(train_ids) == 48
    assert len(list((smoke_repo / "data/cams").glob("*.npz"))) >= len(train_ids)
    for method in ("par", "crf", "psa"):
        assert len(list((smoke_repo / "data/scores" / method).glob("*.npz"))) == len(train_ids), method
    assert sorted(p.stem for p in (smoke_repo / "data/pseudo").glob("*.png")) == sorted(train_ids)
    seg = json.loads((smoke_repo / "reports/evaluate/metrics.json").read_text())
    assert 0.0 <= seg["miou"] <= 1.0
    bound = json.loads((smoke_repo / "reports/evaluate_gt/metrics.json").read_text())
    assert 0.0 <= bound["miou"] <= 1.0
    assert json.loads((smoke_repo / "reports/train_seg_gt/metrics.json").read_text())["train_images"] == 48
    cams = json.loads((smoke_repo / "reports/cams/metrics.json").read_text())
    assert {"cam", "avg", "aream"} <= set(cams)
    assert not (smoke_repo / "data/prepared/toyvoc").exists()  # generate_toy writes data/toyvoc
    assert json.loads((smoke_repo / "reports/pretrain/metrics.json").read_text())["classes"] == 8
    assert (smoke_repo / "weights/pretrained_vit.pth").is_file()
    assert (smoke_repo / "weights/efficientnet_lite0.pth").is_file()
    assert set(json.loads((smoke_repo / "reports/table1.json").read_text())) == {
        "cams", "cams_affinity", "cams_affinity_aream", "cams_affinity_aream_par", "post_processed", "seg_val",
        "seg_val_gt"}
    report = (smoke_repo / "reports/report.md").read_text()
    assert "Table I" in report and "Segmentation" in report and "fully supervised bound" in report


def test_calibration_measures_the_data_without_aream(smoke_repo):
    """Stage calibrate: the mask statistics of the 48 train images, the CNN CAM and its two refinements with their
    gains, in the report; AReAM's settings do not rerun it, its own do."""
    cal = json.loads((smoke_repo / "reports/calibration/calibration.json").read_text())
    assert cal["data"]["images"] == 48 and 0 < cal["data"]["fg_fraction"] < 1
    assert 0 < cal["token_grid"]["miou"] <= 100 and cal["token_grid"]["grid"] == 8
    for key in ("cam", "crf", "psa"):
        assert 0 <= cal[key]["best_miou"] <= 100, key
    for key in ("crf", "psa"):
        assert cal[key]["gain"] == pytest.approx(cal[key]["best_miou"] - cal["cam"]["best_miou"], abs=0.011)
    assert "## Calibration: the toyvoc train split beside PASCAL VOC" in (smoke_repo / "reports/report.md").read_text()
    params = (smoke_repo / "params.yaml").read_text()
    _edit_params(smoke_repo, "aream", "lam", 0.5)
    assert "calibrate" not in _changed(smoke_repo)
    (smoke_repo / "params.yaml").write_text(params)
    _edit_params(smoke_repo, "calibration", "epochs", 2)
    assert _changed(smoke_repo) == {"check", "calibrate"}  # the report follows when its output changes
    (smoke_repo / "params.yaml").write_text(params)


def test_second_repro_is_a_fast_noop(smoke_repo):
    start = time.perf_counter()
    r = _run([str(BIN / "dvc"), "repro"], smoke_repo)
    elapsed = time.perf_counter() - start
    assert "didn't change" in r.stdout or "up to date" in r.stdout
    assert "Running stage" not in r.stdout
    print(f"no-op repro: {elapsed:.1f} s")


def test_forced_rerun_retrains_and_gives_the_same_bytes(smoke_repo):
    """`dvc repro -f` of the whole DAG: no stage resumes a finished checkpoint, and identical results are
    identical files, so every output hash in dvc.lock stays the same."""
    before = _lock_outs(smoke_repo)
    assert not list((smoke_repo / "models").glob("*_ckpt/last.pt"))  # finished runs leave no checkpoint
    r = _dvc("repro", "-f", cwd=smoke_repo)
    assert "resuming" not in r.stdout + r.stderr
    assert "train_cls: epoch 1/" in r.stdout + r.stderr
    after = _lock_outs(smoke_repo)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}


def test_a_code_edit_reruns_exactly_the_stages_that_import_it(smoke_repo):
    from pipeline.common.codedeps import closure

    stages = yaml.safe_load((smoke_repo / "dvc.yaml").read_text())["stages"]
    importers = {n for n, st in stages.items() if "pipeline/metrics.py" in closure(st["cmd"].split()[2])}
    assert {"export_cams", "evaluate", "evaluate_gt", "pseudo_labels"} <= importers
    metrics_py = smoke_repo / "pipeline" / "metrics.py"
    original = metrics_py.read_bytes()
    metrics_py.write_bytes(original + b"\n# an edit\n")
    assert _changed(smoke_repo) == importers
    metrics_py.write_bytes(original)
    assert _changed(smoke_repo) == set()
    # the case of a finished classifier "resumed" under new code: now it trains, from epoch 1
    train_py = smoke_repo / "pipeline" / "train" / "classifier.py"
    train_py.write_bytes(train_py.read_bytes() + b"\n# an edit\n")
    r = _dvc("repro", "train_cls", "train_cls_base", cwd=smoke_repo)  # both import pipeline/train/classifier.py
    log = r.stdout + r.stderr
    assert "resuming" not in log and "train_cls: epoch 1/" in log and "train_cls_base: epoch 1/" in log


def test_a_bad_parameter_stops_the_run_before_anything_is_deleted(smoke_repo):
    params = (smoke_repo / "params.yaml").read_text()
    kept = [smoke_repo / p for p in ("models/classifier/model.pt", "data/prepared/manifest.json",
                                     "reports/evaluate/metrics.json")]
    for section, key, value, message in (("train_cls", "lr", "fast", "train_cls.lr"),
                                         ("runtime", "worker", 4, "runtime.worker: unknown key"),
                                         ("dataset", "root", "/no/such/VOC2012", "/no/such/VOC2012")):
        _edit_params(smoke_repo, section, key, value)
        r = _dvc("repro", cwd=smoke_repo, ok=False)
        assert r.returncode != 0 and message in r.stdout + r.stderr, (key, r.stdout[-2000:], r.stderr[-2000:])
        assert all(p.is_file() for p in kept), key
        (smoke_repo / "params.yaml").write_text(params)
    r = _dvc("repro", cwd=smoke_repo)  # at most the validating stage reruns (or comes from the run cache)
    assert {ln for ln in r.stdout.splitlines() if ln.startswith("Running stage")} <= {"Running stage 'check':"}
    assert _changed(smoke_repo) == set()


def test_a_skipped_upper_bound_completes_the_dag(smoke_repo):
    params = (smoke_repo / "params.yaml").read_text()
    _edit_params(smoke_repo, "upper_bound", "enabled", False)
    _dvc("repro", cwd=smoke_repo)
    assert json.loads((smoke_repo / "reports/evaluate_gt/metrics.json").read_text())["skipped"] is True
    report = (smoke_repo / "reports/report.md").read_text()
    assert "(fully supervised bound)" not in report and "reaches" not in report  # no bound row, no fraction
    assert json.loads((smoke_repo / "reports/metrics.json").read_text())["seg_frac"] is None
    (smoke_repo / "params.yaml").write_text(params)
    r = _dvc("repro", cwd=smoke_repo)  # back: the run cache restores the bound without training it
    assert "train_seg_gt: epoch" not in r.stdout + r.stderr
    assert _changed(smoke_repo) == set()


def test_a_skipped_baseline_completes_the_dag(smoke_repo):
    """baseline.enabled: false skips train_cls_base and export_cams_base (Table I's first rows become null);
    switching it back restores them from the run cache without training."""
    params = (smoke_repo / "params.yaml").read_text()
    table = json.loads((smoke_repo / "reports/table1.json").read_text())
    assert table["cams"] is not None and table["cams_affinity"] is not None
    _edit_params(smoke_repo, "baseline", "enabled", False)
    r = _dvc("repro", cwd=smoke_repo)
    assert "train_cls_base: epoch" not in r.stdout + r.stderr
    assert "train_cls: epoch" not in r.stdout + r.stderr  # the AReAM branch does not depend on the switch
    assert json.loads((smoke_repo / "reports/cams_base/metrics.json").read_text())["skipped"] is True
    skipped = json.loads((smoke_repo / "reports/table1.json").read_text())
    assert skipped["cams"] is None and skipped["cams_affinity_aream"] == table["cams_affinity_aream"]
    (smoke_repo / "params.yaml").write_text(params)
    r = _dvc("repro", cwd=smoke_repo)
    assert "train_cls_base: epoch" not in r.stdout + r.stderr
    assert json.loads((smoke_repo / "reports/table1.json").read_text()) == table
    assert _changed(smoke_repo) == set()


def test_metrics_come_back_with_dvc_checkout(smoke_repo):
    metrics = smoke_repo / "reports/evaluate/metrics.json"
    text = metrics.read_text()
    metrics.unlink()
    _dvc("checkout", cwd=smoke_repo)
    assert metrics.read_text() == text


def test_crf_edit_touches_only_its_branch(smoke_repo):
    params = (smoke_repo / "params.yaml").read_text()
    _edit_params(smoke_repo, "crf", "bi_srgb", 7)
    changed = _changed(smoke_repo)
    assert {"check", "postprocess_crf", "train_psa"} <= changed
    assert not changed & {"prepare", "train_cls", "export_cams", "analyze_layers", "postprocess_par", "train_seg_gt",
                          "evaluate", "evaluate_gt"}  # eval.crf.enabled is false: evaluation does not read crf
    (smoke_repo / "params.yaml").write_text(params)


def test_the_readme_profile_commands_work_as_written(smoke_repo):
    """Through a shell, exactly as the README writes them: the smoke profile (already applied here, so DVC
    finds nothing to run) and the VOC one, which must get past argument parsing and stop at the missing
    dataset root with nothing deleted."""
    readme = (ROOT / "README.md").read_text()
    commands = [ln.split("#")[0].strip() for ln in readme.splitlines() if "$(python -m pipeline.config set-args" in ln
                and ln.startswith("dvc exp run")]
    profiles = [c.split("set-args ")[1].split(")")[0] for c in commands]
    assert profiles == ["smoke", "scratch", "toy-original", "voc", "voc"]
    r = _run(commands[0], smoke_repo)
    assert "Running stage" not in r.stdout
    # the scratch profile retrains everything: check that its arguments reach DVC as valid parameters
    scratch = _run(commands[1].split("$(")[1].split(")")[0], smoke_repo).stdout.split()
    assert "-S" in scratch and "classifier.pretrained=none" in scratch and "pretrain.enabled=false" in scratch
    original = _run(commands[2].split("$(")[1].split(")")[0], smoke_repo).stdout.split()
    assert "dataset.toy.object_scale=[0.17,0.3]" in original and "pretrain.teacher=none" in original
    before = _lock_outs(smoke_repo)
    for command in commands[3:]:
        r = _run(command, smoke_repo, ok=False)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "unrecognized arguments" not in out and "/data/VOCdevkit/VOC2012" in out, \
            out[-3000:]
        assert (smoke_repo / "models/classifier/model.pt").is_file() and _lock_outs(smoke_repo) == before
        _run(["git", "checkout", "params.yaml"], smoke_repo)


@pytest.fixture(scope="module")
def external_repo(tmp_path_factory):
    """A scratch project whose dataset root is outside the repository (the toy set, moved there)."""
    base = tmp_path_factory.mktemp("external")
    repo = _scratch_project(base)
    _run([str(BIN / "python"), "-m", "stages.generate_toy"], repo)
    root = base / "VOCdevkit" / "VOC2012"
    shutil.move(repo / "data/toyvoc/VOCdevkit", base / "VOCdevkit")
    _edit_params(repo, "dataset", "root", str(root))
    _dvc("repro", "prepare", cwd=repo)
    return repo, root


def test_files_changed_under_an_external_root_are_seen(external_repo):
    repo, root = external_repo
    assert not _changed(repo) & {"check", "prepare"}
    summary = (repo / "data/prepared/summary.json").read_text()
    image = root / "JPEGImages" / "train_00003.jpg"
    saved = image.read_bytes()
    image.unlink()
    assert {"check", "prepare"} <= _changed(repo)
    r = _dvc("repro", "prepare", cwd=repo, ok=False)
    assert r.returncode != 0 and "train_00003.jpg" in r.stdout + r.stderr
    assert (repo / "data/prepared/summary.json").read_text() == summary  # stopped before prepare ran
    image.write_bytes(saved)
    mask = root / "SegmentationClass" / "train_00003.png"
    from pipeline.common.io import read_label_png, write_label_png

    label = read_label_png(mask)
    label[label == 255] = 0  # "fix" the mask in place
    write_label_png(mask, label)
    assert "prepare" in _changed(repo)
    _dvc("repro", "prepare", cwd=repo)
    assert (repo / "data/prepared/summary.json").read_text() != summary


def test_replaced_weights_at_the_same_path_are_seen(external_repo):
    repo, _ = external_repo
    make = ("import sys, torch; from pipeline.config import defaults; from pipeline.models.segmenter import "
            "build_segmenter; torch.manual_seed(int(sys.argv[1])); "
            "torch.save(build_segmenter(defaults('scratch').seg, 7).net.encoder.state_dict(), 'weights/r18.pth')")
    _run([str(BIN / "python"), "-c", make, "1"], repo)
    _edit_params(repo, "seg", "encoder", "resnet18")
    _edit_params(repo, "seg", "encoder_weights", "r18.pth")
    _edit_params(repo, "seg", "epochs", 1)
    _dvc("repro", "train_seg_gt", cwd=repo)
    assert "train_seg_gt" not in _changed(repo)
    _run([str(BIN / "python"), "-c", make, "2"], repo)
    status = json.loads(_dvc("status", "--json", "train_seg_gt", cwd=repo).stdout)
    changed_deps = [e["changed deps"] for e in status["train_seg_gt"] if isinstance(e, dict) and "changed deps" in e]
    assert changed_deps == [{"weights/r18.pth": "modified"}], status


def test_metrics_and_plots_read_well(smoke_repo):
    """One compact DVC metrics file: `dvc metrics show` and the README's `dvc exp show` form fit a 120-column
    terminal with every headline figure; `dvc plots show` loads every plot without an error."""
    from pipeline.evaluate.summary import HEADLINE

    _dvc("repro", cwd=smoke_repo)
    shown = _dvc("metrics", "show", cwd=smoke_repo).stdout
    assert max(len(line) for line in shown.splitlines()) <= 120, shown
    assert all(key in shown for key in HEADLINE), shown
    env = {**_env(smoke_repo), "COLUMNS": "120"}
    for flags in (["--drop", ".*[/.]"], ["--only-changed", "--drop", ".*/"]):  # the README's two forms
        r = subprocess.run([str(BIN / "dvc"), "exp", "show", *flags], cwd=smoke_repo, env=env, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL)
        assert r.returncode == 0 and "…" not in r.stdout, r.stdout + r.stderr
        assert max(len(line) for line in r.stdout.splitlines()) <= 120, r.stdout
        if "--only-changed" not in flags:
            assert all(key in r.stdout for key in HEADLINE), r.stdout  # every headline figure is a column
    plots = _dvc("plots", "show", cwd=smoke_repo)
    assert "failed" not in (plots.stdout + plots.stderr).lower(), plots.stdout + plots.stderr


def test_compare_reads_the_run_from_dvc(smoke_repo):
    r = _run([str(BIN / "python"), "-m", "pipeline.tools.compare", "--out", "reports/experiments.md"], smoke_repo)
    assert "wrote reports/experiments.md" in r.stdout
    lines = (smoke_repo / "reports/experiments.md").read_text().splitlines()
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header = cells(next(ln for ln in lines if ln.startswith("| experiment |")))
    row = dict(zip(header, cells(next(ln for ln in lines if ln.startswith("| workspace |")))))
    from pipeline.tools.compare import METRICS

    assert all(row[title] != "-" for title, _, _ in METRICS)  # every Table I column has a value



TRAINING = {"train_cls", "train_cls_base", "train_psa", "train_seg", "train_seg_gt"}


def test_the_seed_switch_reruns_the_training_stages_and_nothing_upstream(smoke_repo):
    """params.yaml's seed reaches every fine-tuning stage (and the report, which names it); pretraining,
    the data stages and the CAM exports only see its effect through the weights."""
    params = (smoke_repo / "params.yaml").read_text()
    raw = yaml.safe_load(params)
    raw["seed"] = 1
    (smoke_repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert _changed(smoke_repo) == TRAINING | {"check", "report"}  # check validates every key
    (smoke_repo / "params.yaml").write_text(params)
    assert _changed(smoke_repo) == set()


def test_the_seed_command_queues_the_seeds_and_writes_their_spread(smoke_repo):
    """`python -m pipeline.tools.compare seeds 2` (what `make seeds N=2` runs): DVC's queue runs seeds 0 and 1, the
    second retrains the fine-tuning stages only (pretraining and data come from the first), and the spread
    over both lands in reports/seeds.md / .json / .csv, Table I's + PAR row read from each experiment."""
    _dvc("repro", cwd=smoke_repo)  # the workspace is up to date: the queued seed 0 has nothing to run
    r = _run([str(BIN / "python"), "-m", "pipeline.tools.compare", "seeds", "2"], smoke_repo, timeout=1800)
    ran = re.findall(r"Running stage '(\w+)'", r.stdout + r.stderr)
    assert not set(ran) & {"generate_toy", "prepare", "import_weights", "pretrain"}, ran
    assert TRAINING <= set(ran) and ran.count("train_cls") == 1, ran  # seed 1 only
    records = json.loads((smoke_repo / "reports" / "seeds.json").read_text())
    (group,) = [g for g in records["groups"] if g["seeds"] == [0, 1]]
    for figure in ("CAM", "+ AReAM", "+ PAR", "seg", "seg on GT", "AReAM gain"):
        assert group["figures"][figure]["n"] == 2, figure
    assert (smoke_repo / "reports" / "seeds.csv").read_text().startswith("kind,label,figure,")
    assert "mean +- std" in (smoke_repo / "reports" / "seeds.md").read_text()


def test_a_teammate_gets_the_results_from_a_dvc_remote(smoke_repo, tmp_path):
    """The README's "Sharing runs": results and run cache pushed to a DVC remote (here a local folder); a git
    clone plus `dvc pull --run-cache` is up to date without running anything, an experiment already run and
    pushed elsewhere is restored from the run cache, and `dvc exp push` / `dvc exp pull` share it through git."""
    repo, overlays = smoke_repo, "reports/evaluate/figures/overlays"
    _dvc("repro", cwd=repo)  # other tests edit things: start from an up-to-date workspace
    _dvc("remote", "add", "-d", "shared", str(tmp_path / "remote"), cwd=repo)
    # a configuration the teammate will ask for: run and pushed here (check, evaluate, evaluate_gt rerun)
    params = (repo / "params.yaml").read_text()
    _edit_params(repo, "eval", "num_overlays", 3)
    _dvc("repro", cwd=repo)
    assert len(list((repo / overlays).glob("*.png"))) == 3
    start = time.perf_counter()
    _dvc("push", "--run-cache", cwd=repo)
    # the committed configuration back (restored from the local run cache), committed and pushed
    (repo / "params.yaml").write_text(params)
    r = _dvc("repro", cwd=repo)
    assert "Running stage" not in r.stdout and "Stage 'evaluate' is cached - skipping run" in r.stdout
    assert _changed(repo) == set() and len(list((repo / overlays).glob("*.png"))) == 2
    _run("git add -A && git commit -qm 'smoke results' --allow-empty", repo)
    outs = sorted({path for _, path in _lock_outs(repo)})
    assert _run(["git", "ls-files", "--", *outs], repo).stdout == ""  # outputs are in DVC's cache, not in git
    _dvc("push", "--run-cache", cwd=repo)

    clone = tmp_path / "clone"  # the teammate's machine
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _dvc("pull", "--run-cache", cwd=clone)
    assert [p for p in outs if not (clone / p).exists()] == []
    assert _changed(clone) == set()
    r = _dvc("repro", cwd=clone)
    assert "Running stage" not in r.stdout and "Data and pipelines are up to date." in r.stdout, r.stdout[-3000:]
    # `--pull`: `dvc pull --run-cache` fetches the run records, not the outputs of runs outside the workspace
    r = _dvc("exp", "run", "--pull", "-n", "overlays-3", "-S", "eval.num_overlays=3", cwd=clone)
    assert "Running stage" not in r.stdout, r.stdout[-3000:]
    for stage in ("check", "evaluate"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in r.stdout, r.stdout[-3000:]
    assert len(list((clone / overlays).glob("*.png"))) == 3

    # experiments travel through the git remote (refs) and the DVC remote (their outputs)
    _dvc("exp", "push", "origin", "overlays-3", cwd=clone)
    assert "overlays-3" in _dvc("exp", "list", "origin", cwd=clone).stdout
    assert "overlays-3" in _dvc("exp", "list", cwd=repo).stdout
    other = tmp_path / "other"  # a third machine
    _run(["git", "clone", "-q", str(repo), str(other)], tmp_path)
    _dvc("exp", "pull", "origin", "overlays-3", cwd=other)
    _dvc("exp", "apply", "overlays-3", cwd=other)
    assert yaml.safe_load((other / "params.yaml").read_text())["eval"]["num_overlays"] == 3
    assert len(list((other / overlays).glob("*.png"))) == 3 and _changed(other) == set()
    print(f"push, clone, pull, exp run from the run cache, exp push/pull: {time.perf_counter() - start:.0f} s")


def test_runtime_nproc_trains_every_network_with_ddp_under_dvc(smoke_repo):
    """`dvc exp run -S runtime.nproc=2`: DVC passes ${runtime.nproc} to the training stages, each runs as two
    gloo processes on the CPU, and the DAG completes with its headline figures."""
    _dvc("repro", cwd=smoke_repo)
    r = _dvc("exp", "run", "--temp", "-n", "ddp2", "-S", "runtime.nproc=2", cwd=smoke_repo)
    out = r.stdout + r.stderr
    launched = re.findall(r"python -m (stages\.\w+): 2 DDP processes", out)
    # pretrain, train_cls, train_cls_base, train_psa, train_seg, train_seg_gt
    assert sorted(launched) == sorted(["stages.pretrain", "stages.train_cls", "stages.train_cls",
                                       "stages.train_psa", "stages.train_seg", "stages.train_seg"]), out[-3000:]
    shown = json.loads(_dvc("exp", "show", "--json", cwd=smoke_repo).stdout)
    exps = [e for base in shown for e in (base.get("experiments") or []) if e.get("name") == "ddp2"]
    assert exps, shown
    data = exps[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["runtime"]["nproc"] == 2
    assert data["metrics"]["reports/metrics.json"]["data"]["seg"] is not None

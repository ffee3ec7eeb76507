"""dvc.yaml against the code: every params key a stage lists exists, every stage lists exactly the project
files it imports, external inputs and the validating stage are dependencies, and the upper-bound stage
reruns for exactly the seg keys that change its model."""

import re

import yaml

from pipeline.common.codedeps import closure
from pipeline.config import ROOT, Seg, defaults


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _resolves(dotted: str) -> bool:
    node = defaults()
    for part in dotted.split("."):
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


def test_every_listed_param_exists():
    missing = [(name, key) for name, stage in _stages().items() for key in stage.get("params", [])
               if isinstance(key, str) and not _resolves(key)]
    assert missing == []


def test_code_dependencies_are_exactly_each_stages_import_closure():
    """A module a stage imports but dvc.yaml misses would let an edit of it leave results "up to date";
    one listed but no longer imported reruns the stage for nothing."""
    wrong = {}
    for name, stage in _stages().items():
        module = re.search(r"-m (stages\.\w+)", stage["cmd"]).group(1)
        listed = {d for d in stage["deps"] if d.startswith(("pipeline/", "stages/"))}
        needed = set(closure(module))
        if listed != needed:
            wrong[name] = {"add": sorted(needed - listed), "remove": sorted(listed - needed)}
    assert wrong == {}, f"fix the code deps in dvc.yaml (python -m pipeline.common.codedeps stages.<module>): {wrong}"


def test_external_inputs_are_dependencies():
    stages = _stages()
    for name in ("check", "prepare"):
        assert "${dataset.root}" in stages[name]["deps"], name
    weights = {"train_cls": "weights/${classifier.pretrained}", "train_psa": "weights/${psa.pretrained}",
               "train_seg": "weights/${seg.encoder_weights}", "train_seg_gt": "weights/${seg.encoder_weights}"}
    for name, dep in weights.items():
        assert dep in stages[name]["deps"], name
    for keyword in ("none", "timm", "imagenet"):
        assert (ROOT / "weights" / keyword).is_file()


def test_check_runs_before_every_stage_that_could_lose_outputs():
    """DVC deletes a stage's outputs before its command: the validating stage must be upstream of all."""
    stages = _stages()
    assert stages["check"]["params"] == [{"params.yaml": None}]  # every key, runtime included
    producers = {(o if isinstance(o, str) else next(iter(o))): n for n, st in stages.items()
                 for kind in ("outs", "metrics", "plots") for o in st.get(kind, [])}

    def upstream(name: str, seen: set) -> set:
        for dep in stages[name].get("deps", []):
            parent = producers.get(dep)
            if parent and parent not in seen:
                seen.add(parent)
                upstream(parent, seen)
        return seen

    unguarded = [n for n in stages if n not in ("generate_toy", "check") and "check" not in upstream(n, set())]
    assert unguarded == []


def test_upper_bound_stage_tracks_every_seg_key_but_labels():
    listed = {k.split(".", 1)[1] for k in _stages()["train_seg_gt"]["params"] if k.startswith("seg.")}
    assert listed == set(Seg.model_fields) - {"labels"}


def _interpolate(text: str) -> str:
    """``${a.b}`` -> the value of a.b in params.yaml (what DVC's templating does)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def value(match):
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)
    return re.sub(r"\$\{([\w.]+)\}", value, text)


def test_every_dependency_path_exists():
    deps = [(name, _interpolate(dep)) for name, stage in _stages().items() for dep in stage.get("deps", [])]
    outs = {out for stage in _stages().values() for out in stage.get("outs", [])}  # written by an earlier stage
    missing = [(name, dep) for name, dep in deps
               if not dep.startswith(("data/", "models/", "reports/")) and dep not in outs
               and not (ROOT / dep).exists()]
    assert missing == []


def test_stage_outputs_keep_the_run_cache_on():
    """An uncached or persistent out turns DVC's run cache off for its stage (a queued experiment would
    then retrain an unchanged classifier instead of restoring it), and `dvc checkout` cannot bring an
    uncached metric back."""
    offenders = []
    for name, stage in _stages().items():
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            if isinstance(out, dict):
                (path, opts), = out.items()
                if opts.get("cache") is False or opts.get("persist"):
                    offenders.append((name, path))
    assert offenders == []


def test_the_metric_set_is_compact():
    """`dvc metrics show` / `dvc exp show` list one column per metric key: only report's headline file is a
    DVC metric (per-class IoUs, sweeps and training detail are plain cached outputs or plots)."""
    from pipeline.evaluate.summary import HEADLINE

    metrics = [(name, m) for name, stage in _stages().items() for m in stage.get("metrics", [])]
    assert metrics == [("report", "reports/metrics.json")]
    assert len(HEADLINE) <= 8
    # every stage's detailed figures are still outputs, so `dvc checkout` brings them back
    outs = {o if isinstance(o, str) else next(iter(o)) for st in _stages().values() for o in st.get("outs", [])}
    assert {"reports/evaluate/metrics.json", "reports/cams/metrics.json", "reports/table1.json"} <= outs

"""dvc.yaml against the code: every params key a stage lists exists, and the upper-bound stage
reruns for exactly the seg keys that change its model."""

from pathlib import Path

import yaml

from pipeline.config import Params, Seg

ROOT = Path(__file__).resolve().parent.parent


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _resolves(dotted: str) -> bool:
    node = Params()
    for part in dotted.split("."):
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


def test_every_listed_param_exists():
    missing = [(name, key) for name, stage in _stages().items() for key in stage.get("params", [])
               if isinstance(key, str) and not _resolves(key)]
    assert missing == []


def test_upper_bound_stage_tracks_every_seg_key_but_labels():
    listed = {k.split(".", 1)[1] for k in _stages()["train_seg_gt"]["params"] if k.startswith("seg.")}
    assert listed == set(Seg.model_fields) - {"labels"}


def test_every_dependency_path_exists():
    missing = [(name, dep) for name, stage in _stages().items() for dep in stage.get("deps", [])
               if not dep.startswith(("data/", "models/", "reports/")) and not (ROOT / dep).exists()]
    assert missing == []


def test_stage_outputs_keep_the_run_cache_on():
    """An uncached or persistent out turns DVC's run cache off for its stage: a queued experiment
    would then retrain an unchanged classifier or segmenter instead of restoring it."""
    offenders = []
    for name, stage in _stages().items():
        if name == "report":  # report.md is meant for git; the stage takes a fraction of a second
            continue
        for out in stage.get("outs", []):
            if isinstance(out, dict):
                (path, opts), = out.items()
                if opts.get("cache") is False or opts.get("persist"):
                    offenders.append((name, path))
    assert offenders == []

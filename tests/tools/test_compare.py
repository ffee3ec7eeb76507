"""pipeline.tools.compare: Table I / Table II Markdown from `dvc exp show` rows."""

import json
import math

import pytest

from pipeline.tools.compare import changed_params, comparison_markdown, metric, param_names


def _row(rev, name, lam, enabled, cam, seg):
    # DVC prefixes a column with its file only when the short name is ambiguous: mix both forms
    return {"Experiment": name, "rev": rev, "aream.lam": lam, "aream.enabled": enabled, "seg.epochs": 15,
            "cam": cam, "reports/metrics.json:+aream": cam / 2, "+pp": 30.0, "seg": seg,
            "seg_frac": seg / 60.0}


def test_metric_prefers_the_prefixed_column_and_skips_non_numbers():
    row = {"reports/postprocess/par.json:sweep_miou": 0.25, "sweep_miou": 0.9, "val_map": "n/a", "aream": True}
    assert metric(row, "reports/postprocess/par.json", "sweep_miou") == 0.25
    assert metric({"sweep_miou": 0.9}, "reports/postprocess/par.json", "sweep_miou") == 0.9
    assert metric(row, "reports/train_cls/metrics.json", "val_map") is None
    assert metric(row, "reports/train_cls/metrics.json", "aream") is None  # a bool is not a metric


def test_table_one_lists_only_the_params_that_differ():
    rows = [_row("workspace", "", 0.05, True, 27.3, 11.5), _row("main", "", 0.05, True, 27.3, 11.5),
            _row("571c445", "no-aream", 0.05, False, 15.8, 6.2)]
    assert changed_params(rows, ["aream.lam", "aream.enabled", "seg.epochs"]) == ["aream.enabled"]
    text = comparison_markdown(rows, ["aream.lam", "aream.enabled", "seg.epochs"])
    lines = text.splitlines()
    assert lines[2].startswith("| experiment | aream.enabled | val mAP | CAM | + affinity | + AReAM |")
    assert "| no-aream (571c445) | False | - | 15.8 | - | 7.9 | 30.0 | 6.2 | 0.10 |" in lines
    assert "Lambda sweep" not in text


def test_lambda_sweep_is_sorted_by_lambda():
    rows = [_row("a1", "lam-0.3", 0.3, True, 30.0, 12.0), _row("a2", "lam-0.1", 0.1, True, 20.0, 10.0),
            _row("main", "", 0.2, True, 25.0, 11.0)]
    text = comparison_markdown(rows, ["aream.lam", "aream.enabled"])
    sweep = text.split("## Lambda sweep")[1].splitlines()
    body = [ln for ln in sweep if ln.startswith("| 0.")]
    assert [ln.split("|")[1].strip() for ln in body] == ["0.1", "0.2", "0.3"]
    assert body[0] == "| 0.1 | lam-0.1 (a2) | 10.0 | 30.0 | 10.0 |"


def test_no_rows_and_param_names(tmp_path):
    assert "no experiments" in comparison_markdown([], [])
    (tmp_path / "params.yaml").write_text("aream:\n  lam: 0.2\n  enabled: true\nseg:\n  scales: [1, 2]\n")
    assert param_names(tmp_path / "params.yaml") == ["aream.lam", "aream.enabled", "seg.scales"]


# ---------------------------------------------------------------------------------------------- over seeds

NAMES = ["seed", "aream.enabled", "seg.epochs"]


def _seed_row(rev, seed, enabled, cam, aff, aream, seg, name=""):
    return {"Experiment": name, "rev": rev, "seed": seed, "aream.enabled": enabled, "seg.epochs": 15, "map": 75.0,
            "cam": cam, "+aff": aff, "+aream": aream, "+pp": 20.0, "seg": seg, "seg_frac": seg / 50.0}


def _seed_rows():
    # AReAM on, seeds 0, 1, 2 (seed 0 also as the workspace and its commit: counted once); AReAM off, seeds 0, 1
    return [_seed_row("workspace", 0, True, 30.0, 10.0, 20.0, 10.0), _seed_row("main", 0, True, 30.0, 10.0, 20.0, 10.0),
            _seed_row("a1", 1, True, 32.0, 12.0, 18.0, 14.0), _seed_row("a2", 2, True, 34.0, 11.0, 16.0, 18.0),
            _seed_row("b0", 0, False, 30.0, 10.0, 10.0, 8.0), _seed_row("b1", 1, False, 32.0, 12.0, 12.0, 11.0)]


def test_runs_that_differ_only_in_the_seed_form_one_group_with_a_known_spread():
    from pipeline.tools.compare import collect_runs, group_runs

    runs = collect_runs(_seed_rows(), NAMES)
    assert [r.name for r in runs] == ["workspace", "a1", "a2", "b0", "b1"]  # `main` repeats the workspace
    on, off = group_runs(runs)
    assert on.label == {"aream.enabled": True} and off.label == {"aream.enabled": False}
    assert [r.seed for r in on.runs] == [0, 1, 2] and [r.seed for r in off.runs] == [0, 1]
    cam = on.stats()["CAM"]  # 30, 32, 34: mean 32, sample std sqrt(((-2)^2 + 0 + 2^2) / 2) = 2
    assert (cam["n"], cam["mean"], cam["std"], cam["min"], cam["max"]) == (3, 32.0, 2.0, 30.0, 34.0)
    assert cam["values"] == {0: 30.0, 1: 32.0, 2: 34.0}
    seg = on.stats()["seg"]  # 10, 14, 18: mean 14, std 4
    assert seg["mean"] == 14.0 and seg["std"] == 4.0
    gain = on.stats()["AReAM gain"]  # + AReAM - + affinity per run: 10, 6, 5 -> mean 7, std sqrt((9 + 1 + 4) / 2)
    assert gain["values"] == {0: 10.0, 1: 6.0, 2: 5.0}
    assert gain["mean"] == 7.0 and gain["std"] == pytest.approx(math.sqrt(7.0))
    assert "+ PAR" not in on.stats()  # no table1.json was read
    # `dvc exp show` gives a seed set with -S as a float: shown as the integer it is
    (run,) = collect_runs([_seed_row("a3", 3.0, True, 30.0, 10.0, 20.0, 10.0)], NAMES)
    assert run.seed == 3 and isinstance(run.seed, int)


def test_paired_difference_per_seed_between_groups_that_differ_in_one_param():
    from pipeline.tools.compare import collect_runs, group_runs, paired_groups

    on, off = group_runs(collect_runs(_seed_rows(), NAMES))
    (pair,) = paired_groups([on, off])
    assert pair.param == "aream.enabled" and pair.before is off and pair.after is on  # False -> True
    d = pair.differences()["+ AReAM"]  # on - off on the common seeds 0, 1: 20 - 10 = 10, 18 - 12 = 6
    assert d["values"] == {0: 10.0, 1: 6.0}
    assert (d["n"], d["mean"], d["std"]) == (2, 8.0, pytest.approx(math.sqrt(8.0)))
    assert pair.differences()["CAM"]["std"] == 0.0  # the baseline branch is the same in both groups
    assert pair.title() == "aream.enabled: False -> True"


def test_groups_that_differ_in_two_params_are_not_paired():
    from pipeline.tools.compare import collect_runs, group_runs, paired_groups

    rows = _seed_rows()[:3] + [{**_seed_row("c0", 0, False, 30.0, 10.0, 10.0, 8.0), "seg.epochs": 5}]
    groups = group_runs(collect_runs(rows, NAMES))
    assert len(groups) == 2 and paired_groups(groups) == []


def test_table1_rows_outside_the_headline_come_from_table1_json():
    from pipeline.tools.compare import collect_runs, group_runs

    extra = {"a1": {"cams_affinity_aream_par": 0.2, "seg_val_gt": 0.7}, "a2": {"cams_affinity_aream_par": 0.25}}
    runs = collect_runs(_seed_rows()[1:4], NAMES, read_table1=lambda row: extra.get(row["rev"]))
    (group,) = group_runs(runs)
    assert group.stats()["+ PAR"]["values"] == {1: 20.0, 2: 25.0}  # in %, from the runs that have it
    assert group.stats()["seg on GT"] == {"n": 1, "mean": 70.0, "std": None, "min": 70.0, "max": 70.0,
                                          "values": {1: 70.0}}


def test_seeds_markdown_csv_and_json():
    from pipeline.tools.compare import collect_runs, group_runs, paired_groups, seeds_csv, seeds_markdown, seeds_records

    groups = group_runs(collect_runs(_seed_rows(), NAMES))
    pairs = paired_groups(groups)
    text = seeds_markdown(groups, pairs)
    assert "### aream.enabled=True (seeds 0, 1, 2)" in text
    assert "| CAM | 32.0 +- 2.0 | 30.0-34.0 | 3 | 0: 30.0, 1: 32.0, 2: 34.0 |" in text
    assert "| seg / bound | 0.280 +- 0.080 | 0.200-0.360 | 3 | 0: 0.200, 1: 0.280, 2: 0.360 |" in text
    assert "### Paired by seed: aream.enabled: False -> True (difference per seed)" in text
    assert "| + AReAM | 8.0 +- 2.8 | 6.0-10.0 | 2 | 0: 10.0, 1: 6.0 |" in text
    lines = seeds_csv(groups, pairs).splitlines()
    assert lines[0] == "kind,label,figure,n,mean,std,min,max,per_seed"
    assert "group,aream.enabled=True,CAM,3,32.0,2.0,30.0,34.0,0=30.0;1=32.0;2=34.0" in lines
    records = json.loads(json.dumps(seeds_records(groups, pairs)))  # plain data
    assert records["groups"][1]["seeds"] == [0, 1] and records["groups"][1]["params"] == {"aream.enabled": False}
    assert records["pairs"][0]["differences"]["+ AReAM"]["values"] == {"0": 10.0, "1": 6.0}
    assert "no experiments" in seeds_markdown([], [])


def test_one_run_has_no_std_and_the_seed_runner_queues_then_runs():
    from pipeline.tools.compare import collect_runs, group_runs, queue_commands, seeds_markdown

    (group,) = group_runs(collect_runs(_seed_rows()[:1], NAMES))
    assert group.title() == "default" and group.stats()["CAM"]["std"] is None
    assert "| CAM | 30.0 +- - | 30.0-30.0 | 1 | 0: 30.0 |" in seeds_markdown([group], [])
    assert queue_commands([0, 1], ["aream.enabled=false"]) == [
        ["dvc", "exp", "run", "--queue", "-S", "seed=0", "-S", "aream.enabled=false"],
        ["dvc", "exp", "run", "--queue", "-S", "seed=1", "-S", "aream.enabled=false"],
        ["dvc", "exp", "run", "--run-all"]]

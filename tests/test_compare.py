"""pipeline.compare: Table I / Table II Markdown from `dvc exp show` rows."""

from pipeline.compare import changed_params, comparison_markdown, metric, param_names


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

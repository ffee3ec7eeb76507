"""The report stage assembles the Table I analogue and the seg result from whatever metrics exist."""

import json

from pipeline.config import defaults
from stages.report import build_report, table_one


def test_table_one_rows_in_paper_order():
    cams = {"cam": {"best_miou": 0.5, "best_threshold": 0.3}, "avg": {"best_miou": 0.55, "best_threshold": 0.35},
            "aream": {"best_miou": 0.6, "best_threshold": 0.4}}
    pseudo = {"par": {"miou": 0.7, "ignored": 0.2, "sweep_miou": 0.65}}
    text = table_one(cams, pseudo, {"par": {"sweep_miou": 0.65, "best_threshold": 0.45}})
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and "method" not in ln]
    assert [ln.split("|")[1].strip() for ln in lines] == [
        "CAMs", "CAMs + Affinity", "CAMs + Affinity (AReAM weights)", "+ PAR"]
    assert "| 60.0 |" in lines[2] and "| 70.0 |" in lines[3]


def test_report_with_upper_bound_fraction(tmp_path):
    for stage, miou in (("evaluate", 0.4), ("evaluate_gt", 0.5)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.json").write_text(json.dumps({"miou": miou, "pixel_acc": 0.9}))
    text = build_report(defaults(), tmp_path)
    assert "| trained on `pseudo` labels | 40.0 | 90.0 |" in text
    assert "| trained on ground truth (fully supervised bound) | 50.0 | 90.0 |" in text
    assert "reaches 0.80 of the fully supervised bound" in text
    assert "_no CAM metrics yet_" in text


def test_report_without_upper_bound_has_no_fraction(tmp_path):
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate" / "metrics.json").write_text(json.dumps({"miou": 0.4}))
    text = build_report(defaults(), tmp_path)
    assert "| 40.0 |" in text and "fully supervised" not in text

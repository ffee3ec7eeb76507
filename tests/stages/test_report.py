"""The report stage assembles the Table I analogue and the seg result from the metrics every stage wrote, and
stops with the file and the key where one is missing."""

import pytest

from fakes import write_report_inputs
from pipeline.common.io import DataError
from pipeline.config import defaults
from pipeline.evaluate.report import build_report, classifier_table, table_one_rows
from pipeline.evaluate.summary import HEADLINE, StageMetrics, headline, table_one_figures

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build


def _m(data: dict, where: str = "test.json") -> StageMetrics:
    return StageMetrics(data, where)


def test_table_one_rows_in_paper_order():
    cams = _m({"cam": {"best_miou": 0.5, "best_threshold": 0.3}, "avg": {"best_miou": 0.55, "best_threshold": 0.35},
               "aream": {"best_miou": 0.6, "best_threshold": 0.4}})
    pseudo = _m({"par": {"miou": 0.7, "ignored": 0.2, "sweep_miou": 0.65}})
    post = {"par": _m({"sweep_miou": 0.65, "best_threshold": 0.45}), "crf": _m({"skipped": True}),
            "psa": _m({"skipped": True})}
    text = table_one_rows(cams, pseudo, post, _m({"skipped": True}))
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and "method" not in ln]
    assert [ln.split("|")[1].strip() for ln in lines] == [
        "CAMs", "CAMs + Affinity", "CAMs + Affinity (AReAM weights)", "+ PAR"]
    assert "| 60.0 |" in lines[2] and "| 70.0 |" in lines[3]


def test_report_with_upper_bound_fraction(tmp_path):
    text = build_report(SCRATCH, write_report_inputs(tmp_path))
    assert "| trained on `pseudo` labels | 40.0 | 90.0 |" in text
    assert "| trained on ground truth (fully supervised bound) | 50.0 | 90.0 |" in text
    assert "reaches 0.80 of the fully supervised bound" in text


def test_report_without_upper_bound_has_no_fraction(tmp_path):
    reports = write_report_inputs(tmp_path, **{"evaluate_gt/metrics.json": {"miou": None, "skipped": True}})
    text = build_report(SCRATCH, reports)
    assert "| 40.0 |" in text and "reaches" not in text and "(fully supervised bound)" not in text


def test_a_missing_metric_stops_the_report_with_its_file_and_key(tmp_path):
    reports = write_report_inputs(tmp_path, **{"evaluate/metrics.json": {"mIoU": 0.4, "pixel_acc": 0.9}})
    with pytest.raises(DataError, match=r"evaluate/metrics.json: no 'miou'"):
        build_report(SCRATCH, reports)
    (reports / "cams_base" / "metrics.json").unlink()
    with pytest.raises(DataError, match=r"cams_base/metrics.json: missing"):
        build_report(SCRATCH, reports)


def test_table_one_takes_each_row_from_its_stage():
    cams = _m({"cam": {"best_miou": 0.30}, "avg": {"best_miou": 0.40}, "aream": {"best_miou": 0.33}})
    base = _m({"cam": {"best_miou": 0.25}, "avg": {"best_miou": 0.28}})
    post = {m: _m({"sweep_miou": v}) for m, v in (("par", 0.45), ("crf", 0.47), ("psa", 0.50))}
    row = table_one_figures(cams, base, post, _m({"miou": 0.35}), _m({"miou": 0.50}), cam_variant="avg",
                            source="psa")
    assert row == {"cams": 0.25, "cams_affinity": 0.28, "cams_affinity_aream": 0.40, "cams_affinity_aream_par": 0.45,
                   "post_processed": 0.50, "seg_val": 0.35, "seg_val_gt": 0.50}
    # PAR refined another variant: its figure is not the "+ AReAM + PAR" row; labels from raw CAMs
    row = table_one_figures(cams, _m({"skipped": True}), post, _m({"miou": 0.35}), _m({"skipped": True}),
                            cam_variant="cam", source="avg")
    assert row["cams_affinity_aream_par"] is None and row["post_processed"] == 0.40
    assert row["cams"] is None and row["seg_val_gt"] is None


def test_headline_is_table_one_in_percent_with_the_bound_fraction():
    t1 = {"cams": 0.25, "cams_affinity": 0.28, "cams_affinity_aream": 0.40, "cams_affinity_aream_par": 0.45,
          "post_processed": 0.5, "seg_val": 0.35, "seg_val_gt": 0.5}
    row = headline(t1, 0.81234)
    # 0.35 / 0.5 = 0.7; percentages rounded to 2 decimals
    assert row == {"map": 81.23, "cam": 25.0, "+aff": 28.0, "+aream": 40.0, "+pp": 50.0, "seg": 35.0, "seg_frac": 0.7}
    assert list(row) == list(HEADLINE)
    # a skipped baseline / bound stays null instead of 0
    row = headline({**t1, "cams": None, "cams_affinity": None, "seg_val_gt": None}, None)
    assert row["cam"] is None and row["+aff"] is None and row["seg_frac"] is None and row["map"] is None


def test_classifier_section_names_figures_in_words_and_flags_are_not_numbers():
    cls = _m({"val_map": 0.81234, "val_map_cls": 0.8, "val_map_patch": 0.7, "best_val_map": 0.82, "chance_map": 0.07,
              "loss_cls": 0.1, "loss_aff": 0.9, "epochs": 20, "aream": True, "w_hat_l1": 0.25, "w_hat_l2": 0.75,
              "device": "cpu"})
    base = _m({"val_map": 0.79, "val_map_cls": 0.78, "val_map_patch": 0.7, "best_val_map": 0.8, "chance_map": 0.07,
               "loss_cls": 0.1, "loss_aff": 0.0, "epochs": 20, "aream": False})
    text = classifier_table(cls, base)
    assert "| val mAP, mean of both heads' probabilities | 0.8123 | 0.7900 |" in text
    assert "| AReAM loss (loss_aff) | 0.9000 | - |" in text  # the baseline has no AReAM loss, not a 0
    assert "0.25 / 0.75" in text
    assert "| aream |" not in text and "cpu" not in text

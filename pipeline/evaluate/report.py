"""The run's Markdown report (stage ``report``), as a library: the headline, the classifier beside its
w/o-AReAM baseline, the Table I analogue, the calibration, the layer-wise analysis and the segmentation result,
each from the metrics file its stage wrote (:class:`~pipeline.evaluate.summary.StageMetrics`: a missing file or
key stops the report with both named)."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.common.io import DataError
from pipeline.common.markdown import percent_text, table
from pipeline.config import Params
from pipeline.evaluate.summary import HEADLINE, StageMetrics, headline, table_one_figures
from pipeline.vocabulary import POST_METHODS

# the metrics files the report reads, under the reports folder (each a dependency of stage report in dvc.yaml)
SOURCES = {"cls": "train_cls/metrics.json", "cls_base": "train_cls_base/metrics.json", "cams": "cams/metrics.json",
           "cams_base": "cams_base/metrics.json", "pseudo": "pseudo/metrics.json", "seg": "evaluate/metrics.json",
           "seg_gt": "evaluate_gt/metrics.json", **{m: f"postprocess/{m}.json" for m in POST_METHODS}}
CAM_ROWS = (("cam", "CAMs"), ("avg", "CAMs + Affinity"), ("aream", "CAMs + Affinity (AReAM weights)"),
            ("first_k", "CAMs + first-K affinity"))
POST_ROWS = (("par", "+ PAR"), ("crf", "+ dense CRF"), ("psa", "+ PSA (AffinityNet random walk)"))
# (label, key of train_cls' metrics.json, format); the last epoch unless the label says otherwise
CLASSIFIER_ROWS = (("val mAP, mean of both heads' probabilities", "val_map", "{:.4f}"),
                   ("val mAP, class-token head", "val_map_cls", "{:.4f}"),
                   ("val mAP, patch-token head", "val_map_patch", "{:.4f}"),
                   ("best val mAP over the epochs", "best_val_map", "{:.4f}"),
                   ("chance mAP (class frequencies)", "chance_map", "{:.4f}"),
                   ("classification loss", "loss_cls", "{:.4f}"),
                   ("AReAM loss (loss_aff)", "loss_aff", "{:.4f}"),
                   ("epochs", "epochs", "{:d}"))


def read_metrics(reports: Path) -> dict[str, StageMetrics]:
    """Every metrics file of :data:`SOURCES`, read strictly."""
    return {name: StageMetrics.read(reports / rel) for name, rel in SOURCES.items()}


def read_table_one(params: Params, metrics: dict[str, StageMetrics]) -> dict:
    """reports/table1.json: :func:`~pipeline.evaluate.summary.table_one_figures` of this run."""
    return table_one_figures(metrics["cams"], metrics["cams_base"], {m: metrics[m] for m in POST_METHODS},
                             metrics["seg"], metrics["seg_gt"], params.post.cam_variant, params.pseudo.source)


def table_one_rows(cams: StageMetrics, pseudo: StageMetrics, post: dict[str, StageMetrics],
                   base: StageMetrics) -> str:
    """Table I as Markdown: best-threshold mIoU of the CAMs (no P.P.) and of Eq. 16's labels (with P.P.)."""
    rows = []
    for key, label in CAM_ROWS[:2]:
        if not base.skipped and key in base:
            rows.append([f"w/o AReAM: {label}", percent_text(base[key]["best_miou"]), base[key]["best_threshold"],
                         "-", "-"])
    for key, label in CAM_ROWS:
        if key in cams:
            labels = pseudo[key] if key in pseudo else None
            rows.append([label, percent_text(cams[key]["best_miou"]), cams[key]["best_threshold"],
                         percent_text(labels and labels["miou"]), percent_text(labels and labels["ignored"])])
    for key, label in POST_ROWS:
        if not post[key].skipped:
            labels = pseudo[key] if key in pseudo else None
            rows.append([label, percent_text(post[key]["sweep_miou"]), post[key]["best_threshold"],
                         percent_text(labels and labels["miou"]), percent_text(labels and labels["ignored"])])
    return table(["method", "mIoU best bg threshold (%)", "threshold", "Eq. 16 pseudo-label mIoU (%)",
                  "ignored (%)"], rows)


def classifier_table(cls: StageMetrics, base: StageMetrics) -> str:
    """The AReAM classifier beside the w/o-AReAM baseline (when it ran), in words, plus the mean
    re-activation weights w_hat per layer (Eq. 10) of the last epoch."""
    cols = [("AReAM classifier" if cls["aream"] else "classifier (AReAM off)", cls)]
    if not base.skipped:
        cols.append(("w/o-AReAM baseline", base))

    def cell(m: StageMetrics, key: str, fmt: str) -> str:
        if key == "loss_aff" and not m["aream"]:
            return "-"  # AReAM off: no such loss
        return fmt.format(int(m[key])) if fmt == "{:d}" else fmt.format(float(m[key]))

    rows = [[label, *(cell(m, key, fmt) for _, m in cols)] for label, key, fmt in CLASSIFIER_ROWS]
    w_hat = sorted((k for k in cls if k.startswith("w_hat_l")), key=lambda k: int(k[len("w_hat_l"):]))
    if w_hat:
        rows.append(["mean w_hat per layer (Eq. 10; AReAM classifier)",
                     " / ".join(f"{float(cls[k]):.2f}" for k in w_hat), *(["-"] * (len(cols) - 1))])
    return table(["", *(title for title, _ in cols)], rows)


def headline_table(head: dict) -> str:
    """reports/metrics.json in words: the figures `dvc exp show` and `dvc metrics show` list."""
    rows = [[f"`{k}`", HEADLINE[k], "-" if v is None else (f"{v:.3f}" if k == "seg_frac" else f"{v:.2f}")]
            for k, v in head.items()]
    return table(["key", "what", "value"], rows)


def layer_section(analysis: Path, reports: Path) -> list[str]:
    """The layer-wise analysis's own Markdown table (stage analyze_layers) and its first figures."""
    if (analysis / "layers.md").is_file():
        lines = [(analysis / "layers.md").read_text().strip()]
    elif (analysis / "layers.csv").is_file():
        with open(analysis / "layers.csv") as f:
            rows = list(csv.reader(f))
        lines = [table(rows[0], rows[1:])]
    else:
        raise DataError(f"{analysis}: neither layers.md nor layers.csv (stage analyze_layers writes them)")
    return lines + [f"\n![{p.stem}]({p.relative_to(reports).as_posix()})" for p in sorted(analysis.rglob("*.png"))[:8]]


def segmentation_section(params: Params, seg: StageMetrics, bound: StageMetrics, reports: Path) -> list[str]:
    """Val mIoU of DeepLab on the pseudo labels, beside the fully supervised bound when it ran."""
    rows = [[f"trained on `{params.seg.labels}` labels", percent_text(seg["miou"]), percent_text(seg["pixel_acc"])]]
    if not bound.skipped:
        rows.append(["trained on ground truth (fully supervised bound)", percent_text(bound["miou"]),
                     percent_text(bound["pixel_acc"])])
    lines = [table(["segmentation network", "val mIoU (%)", "pixel accuracy (%)"], rows)]
    if not bound.skipped and bound["miou"]:
        lines.append(f"\nThe WSSS model reaches {float(seg['miou']) / float(bound['miou']):.2f} of the fully "
                     "supervised bound's mIoU.")
    overlays = sorted((reports / "evaluate").rglob("*.png"))[:4]
    return lines + [f"\n![{p.stem}]({p.relative_to(reports).as_posix()})" for p in overlays]


def build_report(params: Params, reports: Path, metrics: dict[str, StageMetrics] | None = None) -> str:
    """reports/report.md from the metrics files under ``reports`` (``metrics``: those files already read by
    :func:`read_metrics`)."""
    m = read_metrics(reports) if metrics is None else metrics
    lines = ["# AReAM WSSS report", "",
             f"Dataset `{params.dataset.name}`; backbone `{params.classifier.backbone}` (depth "
             f"{params.classifier.depth}, {params.classifier.img_size} px, patch {params.classifier.patch_size}); "
             f"AReAM {'on' if params.aream.enabled else 'off'} (lambda {params.aream.lam}); pseudo labels from "
             f"`{params.pseudo.source}` (alpha1 {params.pseudo.alpha1}, alpha2 {params.pseudo.alpha2}); "
             f"segmentation `{params.seg.arch}`/`{params.seg.encoder}` on `{params.seg.labels}` labels; training "
             f"seed {params.seed} (one run: `make seeds N=3` gives the spread over seeds).", "",
             "## Headline (`reports/metrics.json`; mAP and mIoU in %)", "",
             headline_table(headline(read_table_one(params, m), m["cls"]["val_map"])), "",
             "## Classifier", "", classifier_table(m["cls"], m["cls_base"]), "",
             "## Pseudo-label quality on the train split (Table I analogue)", "",
             table_one_rows(m["cams"], m["pseudo"], {k: m[k] for k in POST_METHODS}, m["cams_base"]), ""]
    if (reports / "cams" / "sweep.csv").exists():
        lines.append("Background-threshold curves: `reports/cams/sweep.csv` (`dvc plots show`).")
    calibration = reports / "calibration" / "calibration.md"  # stage calibrate: the data beside VOC, no AReAM
    lines += ["", calibration.read_text().strip(), "", "## Layer-wise analysis (Figs. 1, 3, 6; Table III)", "",
              *layer_section(reports / "analysis", reports), "", "## Segmentation (val split)", "",
              *segmentation_section(params, m["seg"], m["seg_gt"], reports), ""]
    return "\n".join(lines)

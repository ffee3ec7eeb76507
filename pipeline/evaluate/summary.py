"""The run's headline figures, gathered from the metrics files the stages write: the paper's Table I.

:func:`table_one_figures` returns ``reports/table1.json`` (mIoU as fractions, best background threshold on the
train split, as the paper reports it):

- ``cams``, ``cams_affinity``: the w/o-AReAM baseline classifier's raw CAMs and its CAMs refined with the
  average attention affinity (Eqs. 4-5; stage export_cams_base);
- ``cams_affinity_aream``: the AReAM-trained classifier's CAMs refined with the average affinity, which is
  how the paper refines at inference ("the disciplined affinity matrices of all layers are averaged");
- ``cams_affinity_aream_par``: those refined by PAR (Eqs. 13-15); null unless ``post.cam_variant`` is
  ``avg`` (PAR then refines something else);
- ``post_processed``: the scores the pseudo labels come from (``pseudo.source``);
- ``seg_val``, ``seg_val_gt``: DeepLab val mIoU trained on the pseudo labels and on the ground truth.

A figure whose stage was skipped (``baseline.enabled`` / ``upper_bound.enabled`` false) is null.

:func:`headline` condenses them into ``reports/metrics.json``, the run's only DVC metrics file: the
columns of ``dvc exp show`` and ``dvc metrics show`` (:data:`HEADLINE` says what each key is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.common.io import DataError, read_json
from pipeline.vocabulary import POST_METHODS


class StageMetrics:
    """One stage's metrics file, read strictly: a missing file, or a key the reader needs and the file lacks,
    stops with the file and the key (a renamed key must not print as a dash). Nested sections read the same
    way; ``key in m`` asks whether an optional entry is there, :attr:`skipped` whether the stage was off."""

    def __init__(self, data: dict, where: str):
        self.data, self.where = data, where

    @classmethod
    def read(cls, path: Path) -> StageMetrics:
        if not path.is_file():
            raise DataError(f"{path}: missing (the report reads every stage's metrics: run `dvc repro`)")
        return cls(read_json(path), str(path))

    @property
    def skipped(self) -> bool:
        return self.data.get("skipped") is True

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __iter__(self):
        return iter(self.data)

    def __getitem__(self, key: str) -> Any:
        if key not in self.data:
            raise DataError(f"{self.where}: no {key!r} (written by an older version of its stage? rerun it)")
        value = self.data[key]
        return StageMetrics(value, f"{self.where}: {key}") if isinstance(value, dict) else value


def table_one_figures(cams: StageMetrics, cams_base: StageMetrics, post: dict[str, StageMetrics],
                      seg: StageMetrics, seg_gt: StageMetrics, cam_variant: str, source: str) -> dict[str, Any]:
    """Table I from the stages' metrics: ``cams`` / ``cams_base`` (export_cams[_base]: {variant: {best_miou}}),
    ``post`` ({par|crf|psa: {sweep_miou}}), ``seg`` / ``seg_gt`` (evaluate[_gt]: {miou}); ``cam_variant``
    (``post.cam_variant``) and ``source`` (``pseudo.source``) say what PAR refined and what the labels use.
    A stage that was switched off gives null figures."""
    def best(m: StageMetrics, variant: str) -> float | None:
        return None if m.skipped or variant not in m else m[variant]["best_miou"]

    def swept(method: str) -> float | None:
        return None if post[method].skipped else post[method]["sweep_miou"]

    return {"cams": best(cams_base, "cam"), "cams_affinity": best(cams_base, "avg"),
            "cams_affinity_aream": best(cams, "avg"),
            "cams_affinity_aream_par": swept("par") if cam_variant == "avg" else None,
            "post_processed": swept(source) if source in POST_METHODS else best(cams, source),
            "seg_val": None if seg.skipped else seg["miou"], "seg_val_gt": None if seg_gt.skipped else seg_gt["miou"]}


# key of reports/metrics.json -> what it is; mIoU and mAP in percent (2 decimals), seg_frac a fraction
HEADLINE: dict[str, str] = {
    "map": "classifier val mAP (AReAM classifier, both heads)",
    "cam": "Table I, CAMs: w/o-AReAM baseline, raw CAMs (train mIoU, best background threshold)",
    "+aff": "Table I, + affinity: the baseline's CAMs refined with the average attention affinity",
    "+aream": "Table I, + AReAM: the AReAM classifier's CAMs refined with its average affinity",
    "+pp": "Table I, post-processed: the scores the pseudo labels come from (pseudo.source)",
    "seg": "DeepLab val mIoU, trained on the pseudo labels",
    "seg_frac": "seg as a fraction of the fully supervised bound (DeepLab trained on ground truth)",
}


def headline(figures: dict[str, Any], val_map: float | None) -> dict[str, float | None]:
    """``reports/metrics.json`` from :func:`table_one_figures` and the classifier's val mAP (fractions);
    a figure that is missing (its stage skipped) stays null."""
    def percent(x: float | None) -> float | None:
        return None if x is None else round(100.0 * float(x), 2)

    seg, bound = figures["seg_val"], figures["seg_val_gt"]
    return {"map": percent(val_map), "cam": percent(figures["cams"]), "+aff": percent(figures["cams_affinity"]),
            "+aream": percent(figures["cams_affinity_aream"]), "+pp": percent(figures["post_processed"]),
            "seg": percent(seg),
            "seg_frac": round(float(seg) / float(bound), 3) if seg is not None and bound else None}

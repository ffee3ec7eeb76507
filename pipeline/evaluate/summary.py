"""The run's headline figures, gathered from the metrics files the stages write: the paper's Table I.

:func:`table_one` returns ``reports/table1.json`` (mIoU as fractions, best background threshold on the
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

from typing import Any

from pipeline.vocabulary import POST_METHODS


def _usable(m: dict | None) -> dict:
    return {} if m is None or m.get("skipped") else m


def table_one(cams: dict | None, cams_base: dict | None, post: dict[str, dict | None], seg: dict | None,
              seg_gt: dict | None, cam_variant: str, source: str) -> dict[str, Any]:
    """Table I from the stages' metrics: ``cams`` / ``cams_base`` (export_cams[_base]: {variant: {best_miou}}),
    ``post`` ({par|crf|psa: {sweep_miou}}), ``seg`` / ``seg_gt`` (evaluate[_gt]: {miou}); ``cam_variant``
    (``post.cam_variant``) and ``source`` (``pseudo.source``) say what PAR refined and what the labels use."""
    cams, base = _usable(cams), _usable(cams_base)

    def best(m: dict, variant: str) -> float | None:
        return (m.get(variant) or {}).get("best_miou")

    par = _usable(post.get("par")).get("sweep_miou") if cam_variant == "avg" else None
    processed = _usable(post.get(source)).get("sweep_miou") if source in POST_METHODS else best(cams, source)
    return {"cams": best(base, "cam"), "cams_affinity": best(base, "avg"), "cams_affinity_aream": best(cams, "avg"),
            "cams_affinity_aream_par": par, "post_processed": processed,
            "seg_val": _usable(seg).get("miou"), "seg_val_gt": _usable(seg_gt).get("miou")}


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


def headline(table1: dict[str, Any], val_map: float | None) -> dict[str, float | None]:
    """``reports/metrics.json`` from :func:`table_one`'s figures and the classifier's val mAP (fractions);
    a figure that is missing (its stage skipped) stays null."""
    def pct(x: float | None) -> float | None:
        return None if x is None else round(100.0 * float(x), 2)

    seg, bound = table1.get("seg_val"), table1.get("seg_val_gt")
    return {"map": pct(val_map), "cam": pct(table1.get("cams")), "+aff": pct(table1.get("cams_affinity")),
            "+aream": pct(table1.get("cams_affinity_aream")), "+pp": pct(table1.get("post_processed")),
            "seg": pct(seg), "seg_frac": round(float(seg) / float(bound), 3) if seg is not None and bound else None}

"""Stage `export_cams`: CAMs of every train and val image, four refinement variants, and their quality.

Writes ``data/cams/<id>.npz`` (contract in :mod:`pipeline.cams.infer`): ``cam`` (non-refined), ``avg``
(Eqs. 4-5: the paper's inference-time refinement, also for an AReAM-trained classifier), ``aream``
(Eqs. 7-12 with re-activation weights computed per image) and ``first_k`` (first K layers' affinity),
all from one forward pass per (scale, flip).

Resumable: an image whose npz exists is skipped (files are written atomically, so an existing one is
complete). ``data/cams/_params.json`` holds a hash of what shaped the files (the ``cams`` parameters
that change them, the classifier file and the manifest); when it differs, the old files are wiped.

Quality (Table I, "P.P. x" column): for each variant, the background-threshold sweep mIoU (``cams.sweep``)
of the stored CAMs against the masks of the train split (images without a mask are skipped) ->
``reports/cams/metrics.json`` ({variant: {best_miou, best_threshold}}) and ``reports/cams/sweep.csv``.
"""

from __future__ import annotations

from typing import Any

from pipeline.cams.export import cam_quality, export_cams, export_tag, prepare_out_dir, sweep_csv
from pipeline.cams.infer import model_geometry
from pipeline.common.digests import file_tag
from pipeline.common.io import DataError, write_bytes, write_json
from pipeline.config import ConfigError, Params
from pipeline.data.manifest import Sample, load_manifest
from stages._classifier import load_trained_classifier
from stages._common import (CAMS, CAMS_BASE, CLASSIFIER, CLASSIFIER_BASE, MANIFEST, REPORTS, SKIPPED, stage_main,
                            write_skipped)

BASELINE_VARIANTS = ["cam", "avg"]  # Table I: "CAMs" and "CAMs + Affinity" of the w/o-AReAM classifier


def run(params: Params, baseline: bool = False) -> None:
    """``baseline``: stage ``export_cams_base``, the train-split ``cam`` and ``avg`` variants of the
    w/o-AReAM classifier (models/classifier_base) into data/cams_base and reports/cams_base."""
    cfg = params.cams
    folder, out_dir, report = (CLASSIFIER_BASE, CAMS_BASE, REPORTS / "cams_base") if baseline else \
        (CLASSIFIER, CAMS, REPORTS / "cams")
    if baseline:
        if not params.baseline.enabled:
            write_skipped("export_cams_base", "baseline.enabled", report / "metrics.json",
                          marker=(out_dir / SKIPPED, "baseline.enabled is false: no baseline CAMs\n"),
                          files={report / "sweep.csv": b"threshold\n"})
            return
        cfg = cfg.replace(variants=BASELINE_VARIANTS, splits=["train"])
    manifest = load_manifest(MANIFEST)
    model, device = load_trained_classifier(params, folder)
    img_size, patch, depth = model_geometry(model)
    if depth and "first_k" in cfg.variants and cfg.first_k > depth:
        raise ConfigError(f"cams.first_k: {cfg.first_k} exceeds the classifier's {depth} layers")

    samples: dict[str, Sample] = {}
    for split in cfg.splits:
        try:
            for s in manifest.split(split):
                samples.setdefault(s.id, s)
        except DataError as err:
            raise ConfigError(f"cams.splits: {err}") from None
    tag = export_tag(cfg, file_tag(folder / "model.pt"), file_tag(MANIFEST))
    removed = prepare_out_dir(out_dir, tag, set(samples))
    if removed:
        print(f"removed {removed} stale CAM files from {out_dir}")
    written = export_cams(model, list(samples.values()), out_dir, cfg, img_size=img_size, patch_size=patch,
                          device=device, preprocess=model.preprocess,
                          loader_workers=params.runtime.loader_workers)
    print(f"exported {written} CAM files ({len(samples) - written} already present) to {out_dir}")

    train = [s for s in manifest.split("train") if s.id in samples]  # the exported train images
    results = cam_quality(train, out_dir, cfg.variants, cfg.sweep, manifest.num_classes, params.runtime)
    metrics: dict[str, Any] = {
        v: {"best_miou": None if r["best_miou"] is None else round(r["best_miou"], 6),
            "best_threshold": r["best_threshold"]} for v, r in results.items()}
    metrics["num_images"] = next(iter(results.values()))["num_images"]
    write_json(report / "metrics.json", metrics)
    write_bytes(report / "sweep.csv", sweep_csv(results).encode())
    if not metrics["num_images"]:
        print("no train image has a mask: CAM quality not measured")
    for v, m in metrics.items():
        if isinstance(m, dict) and m["best_miou"] is not None:
            print(f"{v:>8}: mIoU {100 * m['best_miou']:.1f} at background threshold {m['best_threshold']:.2f}")


if __name__ == "__main__":
    stage_main(run, lambda cli: cli.add_argument(
        "--baseline", action="store_true",
        help="the w/o-AReAM classifier's train CAMs into data/cams_base (stage export_cams_base)"))

"""Stage `analyze_layers`: the paper's layer-wise analysis of the affinity matrices
(:mod:`pipeline.analysis.layers`) on ``analysis.num_images`` train images that have masks (evenly spaced
over the split), at ``analysis.scale``, with the background-threshold sweep ``cams.sweep``.

Writes ``reports/analysis/layers.csv`` (layer, hellinger, single_layer_miou, first_k_miou,
reactivation_weight, single_layer_threshold, own_segment_attention, bg_attention_on_objects), ``layers.md``,
``metrics.json`` (with the oracle-affinity ceiling and each source's best threshold) and ``figures/``:
``layer_miou.png`` (Fig. 1 / 6
and Table III as curves), ``hellinger.png`` (Fig. 3 right), ``affinity_layers.png`` (Fig. 3 left /
Fig. 7 top), ``attended_keys.png`` (Fig. 7 bottom) and ``layers_overlay.png`` (Fig. 8).
"""

from __future__ import annotations

from pipeline.analysis.layers import (analyze, draw_figures, layer_rows, layers_csv, layers_markdown,
                                      select_samples, summary_metrics)
from pipeline.cams.infer import model_geometry
from pipeline.common.io import atomic_dir, write_json, write_text
from pipeline.config import Params
from pipeline.data.manifest import load_manifest
from stages._classifier import load_trained_classifier
from stages._common import MANIFEST, REPORTS, stage_main

OUT = REPORTS / "analysis"
FIGURES = OUT / "figures"


def run(params: Params) -> None:
    cfg = params.analysis
    manifest = load_manifest(MANIFEST)
    model, device = load_trained_classifier(params)
    img_size, patch, depth = model_geometry(model)
    samples = select_samples(manifest.split("train"), cfg.num_images)
    if not samples:
        print("no train image has a mask: the mIoU columns stay empty")
    acc = analyze(model, samples, depth=depth, num_classes=manifest.num_classes, sweep=params.cams.sweep,
                  img_size=img_size, patch_size=patch, scale=cfg.scale, batch_size=cfg.batch_size, device=device,
                  preprocess=model.preprocess, num_figures=cfg.num_figures, normalize=params.cams.normalize)
    rows = layer_rows(acc)
    metrics = summary_metrics(acc, rows)
    with atomic_dir(FIGURES) as tmp:
        draw_figures(acc, rows, metrics, tmp)
    write_text(OUT / "layers.csv", layers_csv(rows))
    write_text(OUT / "layers.md", layers_markdown(rows, metrics))
    write_json(OUT / "metrics.json", metrics)
    print(layers_markdown(rows, metrics))


if __name__ == "__main__":
    stage_main(run)

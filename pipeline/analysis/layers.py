"""The paper's layer-wise analysis of the affinity matrices (stage ``analyze_layers``), as a library:
accumulating per-layer statistics over batches (:class:`LayerAnalysis`, :func:`analyze`), the summary
rows and metrics, their CSV / Markdown forms and the figures (Fig. 1 / 3 / 6 / 7 / 8, Table III).

Per image, one forward pass at one scale (no flip, so each layer's affinity is seen unmixed):

- Hellinger distance between the rows of each layer's affinity (Eq. 6, Fig. 3 right);
- best background-threshold mIoU of the CAM refined with each single layer's affinity (Figs. 1 / 6) and
  with the average of the first K layers, K = 1..L (Table III), next to the non-refined CAM, the
  all-layer average (Eqs. 4-5) and the entropy-weighted AReAM refinement (Eq. 12);
- the mean re-activation weight w of each layer (Eq. 10) over the images;
- affinity diagnostics against the ground truth on the token grid (:func:`pipeline.metrics.token_labels`): the
  CAM refined by the oracle "same segment" affinity (the ceiling of any affinity refinement), and per layer the
  share of foreground queries' attention that stays on their own class's tokens and the share of background
  queries' attention that lands on objects (:func:`pipeline.analysis.measures.segment_attention`); each source's best
  background threshold, to read beside Eq. 16's fixed alpha1.
"""


from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.analysis.measures import (affinity_images, attended_keys, blend, class_agnostic, first_k_refinements,
                                        hellinger_distance, layer_panel, minmax, oracle_affinity, segment_attention,
                                        upsample_scores)
from pipeline.cams.aream import (layer_entropy, normalize_cams, reactivated_affinity, reactivation_weights, refine_cams,
                                 refine_per_layer)
from pipeline.cams.infer import gather_classes, input_side, resize_images
from pipeline.common.io import DataError, read_label_png, read_rgb, write_bytes
from pipeline.common.markdown import percent_text
from pipeline.common.palette import heatmap_colormap
from pipeline.common.progress import progress
from pipeline.data.manifest import Sample
from pipeline.metrics import ThresholdSweep, thresholds_from, token_labels


def select_samples(samples: Sequence[Sample], n: int) -> list[Sample]:
    """``n`` samples with masks, evenly spaced over the split (deterministic)."""
    pool = [s for s in samples if s.mask is not None]
    if len(pool) <= n:
        return pool
    idx = np.unique(np.linspace(0, len(pool) - 1, n).round().astype(int))
    return [pool[i] for i in idx]


@dataclass
class FigureData:
    """What the drawings of one image need (class-agnostic maps at token resolution)."""

    id: str
    image: np.ndarray
    mask: np.ndarray | None
    cam: np.ndarray            # (h, w)
    per_layer: np.ndarray      # (L, h, w)
    avg: np.ndarray            # (h, w)
    aream: np.ndarray          # (h, w)
    keys_map: np.ndarray       # (h, w) attended keys of the last layer (Fig. 7 bottom)
    attn: torch.Tensor | None = None  # (L, N, N), first image only (Fig. 3 left / Fig. 7 top)


@dataclass
class LayerAnalysis:
    """Accumulated results: sweeps per refinement, Hellinger distances and re-activation weights."""

    depth: int
    thresholds: np.ndarray
    num_classes: int  # C + 1 (with background)
    sweeps: dict[str, ThresholdSweep] = field(default_factory=dict)
    hellinger_sum: np.ndarray | None = None
    weight_sum: np.ndarray | None = None
    # per layer: attention of foreground queries on their own segment, of background queries on objects, and
    # the numbers of such queries (segment_attention)
    own_sum: np.ndarray | None = None
    bg_on_objects_sum: np.ndarray | None = None
    fg_queries: np.ndarray | None = None
    bg_queries: np.ndarray | None = None
    count: int = 0
    figures: list[FigureData] = field(default_factory=list)
    normalize: str = "minmax"  # per-class scaling of every refined map before its sweep (cams.normalize)

    def __post_init__(self) -> None:
        names = ["cam", "avg", "aream"] + [f"layer{layer}" for layer in range(1, self.depth + 1)] \
            + [f"first{k}" for k in range(1, self.depth + 1)] + ["oracle"]
        self.sweeps = {n: ThresholdSweep(self.thresholds, self.num_classes) for n in names}
        self.hellinger_sum = np.zeros(self.depth)
        self.weight_sum = np.zeros(self.depth)
        self.own_sum, self.bg_on_objects_sum = np.zeros(self.depth), np.zeros(self.depth)
        self.fg_queries, self.bg_queries = np.zeros(self.depth), np.zeros(self.depth)

    def best(self, name: str) -> float | None:
        if not self.count:
            return None
        return float(self.sweeps[name].result()["best_miou"])

    def best_threshold(self, name: str) -> float | None:
        if not self.count:
            return None
        return float(self.sweeps[name].result()["best_threshold"])

    def add_segment_attention(self, attn: torch.Tensor, labels: torch.Tensor) -> None:
        """One image's (L, N, N) attention against its (N,) token labels."""
        own, on_objects, n_fg, n_bg = (t.cpu().double().numpy() for t in segment_attention(attn, labels))
        self.own_sum += own
        self.bg_on_objects_sum += on_objects
        self.fg_queries += n_fg
        self.bg_queries += n_bg


@torch.no_grad()
def analyze_batch(model: Any, images: list[np.ndarray], masks: list[np.ndarray], samples: list[Sample],
                  acc: LayerAnalysis, *, img_size: int, patch_size: int, scale: float, device: torch.device,
                  preprocess: Callable | None, num_figures: int) -> None:
    """One forward pass of a batch; adds every refinement's scores to the sweeps of ``acc``."""
    x = resize_images(images, input_side(img_size, scale, patch_size), device)
    if preprocess is not None:
        x = preprocess(x)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        out = model(x)
    # the image's classes only, each max-normalised (Eq. 1's [0, 1] scaling), as in the export
    cam = normalize_cams(gather_classes(out.cam.float().clamp_min(0), [s.labels for s in samples]))
    attn = out.attn.float()
    B, L = attn.shape[:2]
    if L != acc.depth:
        raise ValueError(f"model returned {L} attention layers, expected {acc.depth}")
    per_layer = refine_per_layer(cam, attn)                      # (B, L, K, h, w)  Eq. 7
    first_k = first_k_refinements(per_layer)                     # (B, L, K, h, w)  Table III
    w, _ = reactivation_weights(layer_entropy(cam, attn))        # (B, L)           Eqs. 8-10
    aream = refine_cams(cam, reactivated_affinity(attn, w))      # (B, K, h, w)     Eqs. 11-12
    acc.hellinger_sum += hellinger_distance(attn).sum(0).cpu().double().numpy()
    acc.weight_sum += w.sum(0).cpu().double().numpy()
    grid = tuple(cam.shape[-2:])
    keys_maps = attended_keys(attn[:, -1], grid)
    for b, s in enumerate(samples):
        keys = np.asarray(s.labels, np.int64)
        k = len(keys)
        labels = token_labels(masks[b], grid, acc.num_classes).reshape(-1).to(attn.device)  # (N,) ground truth
        oracle = refine_cams(cam[b, None], oracle_affinity(labels)[None])                   # (1, K, h, w)
        acc.add_segment_attention(attn[b], labels)
        stacked = torch.cat([cam[b, None], first_k[b, -1:], aream[b, None], per_layer[b], first_k[b], oracle])
        stacked = stacked[:, :k].cpu()                           # (4 + 2L, K_b, h, w)
        scores = upsample_scores(stacked, masks[b].shape, acc.normalize)
        for sweep, sc in zip(acc.sweeps.values(), scores):
            sweep.add(sc, keys, masks[b])
        acc.count += 1
        if len(acc.figures) < num_figures:
            agn = class_agnostic(stacked.clamp_min(0)).numpy()      # (4 + 2L, h, w)
            acc.figures.append(FigureData(s.id, images[b], masks[b], agn[0], agn[3:3 + L], agn[1], agn[2],
                                          keys_maps[b].cpu().numpy(),
                                          attn[b].cpu() if not acc.figures else None))


def layer_rows(acc: LayerAnalysis) -> list[dict[str, Any]]:
    n = max(acc.count, 1)
    rows = []
    for layer in range(1, acc.depth + 1):
        rows.append({"layer": layer, "hellinger": round(float(acc.hellinger_sum[layer - 1] / n), 6),
                     "single_layer_miou": _round(acc.best(f"layer{layer}")),
                     "first_k_miou": _round(acc.best(f"first{layer}")),
                     "reactivation_weight": round(float(acc.weight_sum[layer - 1] / n), 6),
                     "single_layer_threshold": acc.best_threshold(f"layer{layer}"),
                     "own_segment_attention": _share(acc.own_sum[layer - 1], acc.fg_queries[layer - 1]),
                     "bg_attention_on_objects": _share(acc.bg_on_objects_sum[layer - 1], acc.bg_queries[layer - 1])})
    return rows


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def _share(total: float, count: float) -> float | None:
    return round(float(total / count), 6) if count else None


def _best(values: list[float | None]) -> tuple[int | None, float | None]:
    """(1-based index, value) of the largest value; (None, None) when no layer has an mIoU (no masks)."""
    scored = [(v, i + 1) for i, v in enumerate(values) if v is not None]
    if not scored:
        return None, None
    value, index = max(scored, key=lambda t: (t[0], -t[1]))  # ties: the first layer
    return index, value


def summary_metrics(acc: LayerAnalysis, rows: list[dict[str, Any]]) -> dict[str, Any]:
    single = [r["single_layer_miou"] for r in rows]
    best_single, best_single_miou = _best(single)
    best_k, best_k_miou = _best([r["first_k_miou"] for r in rows])
    return {
        "num_images": acc.count,
        "non_refined_miou": _round(acc.best("cam")),
        "avg_miou": _round(acc.best("avg")),
        "aream_miou": _round(acc.best("aream")),
        "best_single_layer": best_single,
        "best_single_layer_miou": best_single_miou,
        "last_layer_miou": single[-1],
        "best_first_k": best_k,
        "best_first_k_miou": best_k_miou,
        "hellinger_first_layer": rows[0]["hellinger"],
        "hellinger_last_layer": rows[-1]["hellinger"],
        "oracle_miou": _round(acc.best("oracle")),
        "best_thresholds": {name: acc.best_threshold(name) for name in ("cam", "avg", "aream", "oracle")},
    }


def layers_markdown(rows: list[dict[str, Any]], metrics: dict[str, Any]) -> str:
    lines = ["| layer | Hellinger | single-layer mIoU (%) | at threshold | first-K mIoU (%) | re-activation weight | "
             "fg attention on own segment (%) | bg attention on objects (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['hellinger']:.3f} | {percent_text(r['single_layer_miou'])} | "
                     f"{_cell(r['single_layer_threshold'])} | {percent_text(r['first_k_miou'])} | "
                     f"{r['reactivation_weight']:.2f} | {percent_text(r['own_segment_attention'])} | "
                     f"{percent_text(r['bg_attention_on_objects'])} |")
    at = metrics["best_thresholds"]
    lines += ["", f"Non-refined CAM {percent_text(metrics['non_refined_miou'])} (at threshold {_cell(at['cam'])}), "
              f"all-layer average affinity (Eqs. 4-5) {percent_text(metrics['avg_miou'])} (at {_cell(at['avg'])}), "
              f"entropy-weighted AReAM affinity (Eq. 12) {percent_text(metrics['aream_miou'])} "
              f"(at {_cell(at['aream'])}), "
              f"oracle \"same ground-truth segment\" affinity {percent_text(metrics['oracle_miou'])} (at "
              f"{_cell(at['oracle'])}): best background-threshold mIoU on {metrics['num_images']} train images, one "
              "scale, no flip; Eq. 16 labels with the fixed threshold pseudo.alpha1 (the paper's 0.25) instead. The "
              "oracle is the ceiling of any affinity refinement of this CAM; the attention columns say how much of "
              "each layer's attention stays within a foreground token's own class and how much of a background "
              "token's attention lands on objects (ground truth on the token grid)."]
    return "\n".join(lines) + "\n"


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def layers_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- figures


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _colorbar(fig, axes, label: str) -> None:
    """A horizontal colour bar under ``axes`` for the overlays' [0, 1] heat-map colours."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), heatmap_colormap()), ax=np.ravel(axes).tolist(),
                       orientation="horizontal", fraction=0.05, pad=0.04, aspect=40)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def draw_figures(acc: LayerAnalysis, rows: list[dict[str, Any]], metrics: dict[str, Any], out: Path) -> list[str]:
    """Write the PNGs into ``out``; returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    layers = [r["layer"] for r in rows]
    if acc.count:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        single = [100 * (r["single_layer_miou"] or 0) for r in rows]
        firstk = [100 * (r["first_k_miou"] or 0) for r in rows]
        ax.plot(layers, single, "o--", color="tab:blue", label="refined with layer l")
        ax.plot(layers, firstk, "s-", color="tab:green", label="refined with layers 1..K (Table III)")
        base, avg, aream = (100 * (metrics[k] or 0) for k in ("non_refined_miou", "avg_miou", "aream_miou"))
        ax.axhline(base, ls=":", color="k", label="non-refined")
        ax.axhline(avg, ls="-", color="tab:blue", label="refined (avg)")
        ax.axhline(aream, ls="-.", color="tab:orange", label="refined (AReAM weights)")
        if metrics.get("oracle_miou") is not None:
            ax.axhline(100 * metrics["oracle_miou"], ls="--", color="tab:red", label="oracle affinity (ceiling)")
        # Fig. 6's shading: what the AReAM weights change against the plain average (a gain or a loss)
        ax.fill_between([layers[0], layers[-1]], avg, aream, color="tab:orange", alpha=0.15,
                        label="AReAM weights vs avg")
        ax.set_xlabel("layer l / K")
        ax.set_ylabel("mIoU (%)")
        ax.set_xticks(layers)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # beside the lines
        ax.set_title(f"CAM refinement per layer ({acc.count} train images)", fontsize=9)
        write_bytes(out / "layer_miou.png", _png(fig))
        written.append("layer_miou.png")

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(layers, [r["hellinger"] for r in rows], "o-")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean Hellinger distance between rows")
    ax.set_xticks(layers)
    ax.set_title("Affinity row diversity (Eq. 6)", fontsize=9)
    write_bytes(out / "hellinger.png", _png(fig))
    written.append("hellinger.png")

    figs = acc.figures
    if figs and figs[0].attn is not None:
        mats = affinity_images(figs[0].attn)
        fig, axes = plt.subplots(1, len(mats), figsize=(1.6 * len(mats), 1.9), squeeze=False)
        for layer, (a, m) in enumerate(zip(axes[0], mats), 1):
            a.imshow(m)
            a.set_title(f"layer {layer}", fontsize=7)
            a.axis("off")
        fig.suptitle(f"affinity matrices of {figs[0].id} (rows: queries, columns: keys)", fontsize=8)
        _colorbar(fig, axes[0], "sqrt of the affinity, min-max scaled per layer")
        write_bytes(out / "affinity_layers.png", _png(fig))
        written.append("affinity_layers.png")

    if figs:
        fig, axes = plt.subplots(len(figs), 2, figsize=(3.6, 1.8 * len(figs)), squeeze=False)
        for row, f in zip(axes, figs):
            row[0].imshow(f.image)
            row[0].set_title(f.id, fontsize=7)
            row[1].imshow(blend(f.image, minmax(f.keys_map)))
            row[1].set_title("attended keys, last layer", fontsize=7)
            for a in row:
                a.axis("off")
        _colorbar(fig, axes[:, 1], "last-layer attention, mean over queries (min-max)")
        write_bytes(out / "attended_keys.png", _png(fig))
        written.append("attended_keys.png")

        titles = ["image", "GT", "CAM"] + [f"L{layer}" for layer in layers] + ["avg", "AReAM"]
        panels = [layer_panel(f.image, f.mask, f.cam, f.per_layer, [f.avg, f.aream]) for f in figs]
        fig, axes = plt.subplots(len(panels), len(titles), figsize=(1.25 * len(titles), 1.35 * len(panels)),
                                 squeeze=False)
        for r, (row, tiles) in enumerate(zip(axes, panels)):
            for c, (a, t) in enumerate(zip(row, tiles)):
                a.imshow(t)
                a.axis("off")
                if r == 0:
                    a.set_title(titles[c], fontsize=7)
        fig.suptitle("Fig. 8: CAMs (max over the image's classes) refined by each layer's affinity (L1..), by "
                     "their average (avg) and with the AReAM weights", fontsize=8)
        _colorbar(fig, axes[:, 2:], "activation / its maximum (each map)")
        write_bytes(out / "layers_overlay.png", _png(fig))
        written.append("layers_overlay.png")
    return written


def analyze(model: Any, samples: Sequence[Sample], *, depth: int, num_classes: int, sweep: Sequence[float],
            img_size: int, patch_size: int, scale: float, batch_size: int, device: torch.device,
            preprocess: Callable | None = None, num_figures: int = 0, normalize: str = "minmax") -> LayerAnalysis:
    """Run the analysis over ``samples`` (all must have masks)."""
    acc = LayerAnalysis(depth, thresholds_from(sweep), num_classes + 1, normalize=normalize)
    for start in progress(range(0, len(samples), batch_size), desc="analyze_layers"):
        batch = list(samples[start:start + batch_size])
        images = [read_rgb(s.image) for s in batch]
        masks = [read_label_png(s.mask) for s in batch]
        for s, img, m in zip(batch, images, masks):
            if m.shape != img.shape[:2]:
                raise DataError(f"{s.mask}: mask {m.shape} and image {img.shape[:2]} differ in size")
        analyze_batch(model, images, masks, batch, acc, img_size=img_size, patch_size=patch_size, scale=scale,
                      device=device, preprocess=preprocess, num_figures=num_figures)
    return acc

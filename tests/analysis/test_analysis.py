"""Layer-wise analysis: Hellinger distance (Eq. 6), per-layer and first-K refinements, the stage's outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fakes import FakeViT, cam_dataset
from pipeline.analysis.measures import (attended_keys, first_k_refinements, hellinger_distance, tile_grid,
                                        upsample_scores)
from pipeline.cams.aream import first_k_affinity, refine_cams, refine_per_layer
from pipeline.cams.infer import refine_variants

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- Eq. 6


def test_hellinger_identical_rows_is_zero():
    # exactly 0 on any machine: the distance comes from the differences of the square-root rows, not from
    # 1 - <sqrt p, sqrt q>, where a rounding of 6e-8 becomes 2.4e-4 after the square root
    attn = torch.tensor([0.2, 0.3, 0.5]).expand(3, 3)
    assert hellinger_distance(attn).item() == 0.0
    wide = torch.rand(1, 197, generator=torch.Generator().manual_seed(0)).softmax(-1).expand(2, 40, 197)
    assert torch.equal(hellinger_distance(wide), torch.zeros(2))


def test_hellinger_disjoint_supports_is_one():
    assert hellinger_distance(torch.eye(5)).item() == pytest.approx(1.0)


def test_hellinger_hand_made_cases():
    # rows [1, 0] and [0.5, 0.5]: Bhattacharyya coefficient sqrt(0.5), H = sqrt(1 - sqrt(0.5))
    two = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert hellinger_distance(two).item() == pytest.approx(math.sqrt(1 - math.sqrt(0.5)), abs=1e-6)
    # the direct formula of Eq. 6 gives the same number
    direct = (two[0].sqrt() - two[1].sqrt()).pow(2).sum().sqrt() / math.sqrt(2)
    assert hellinger_distance(two).item() == pytest.approx(direct.item(), abs=1e-6)
    # three rows: pairs (0,1) = 1, (0,2) = 0, (1,2) = 1 -> mean 2/3 over distinct pairs
    three = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])
    assert hellinger_distance(three).item() == pytest.approx(2 / 3)
    # unnormalised rows are re-normalised; batch dims are kept
    batch = torch.stack([two * 3, torch.eye(2)])[None]  # (1, 2, 2, 2)
    out = hellinger_distance(batch)
    assert out.shape == (1, 2)
    torch.testing.assert_close(out, torch.tensor([[math.sqrt(1 - math.sqrt(0.5)), 1.0]]))


def test_hellinger_matches_the_pairwise_loop_on_random_rows():
    attn = torch.rand(2, 7, 7).softmax(-1)
    for b in range(2):
        vals = [(attn[b, i].sqrt() - attn[b, j].sqrt()).pow(2).sum().sqrt() / math.sqrt(2)
                for i in range(7) for j in range(7) if i != j]
        assert hellinger_distance(attn)[b].item() == pytest.approx(torch.stack(vals).mean().item(), abs=1e-5)


# ---------------------------------------------------------------------------------------------- refinements


def test_first_k_refinements_against_refine_cams():
    gen = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 3, 3, 4, generator=gen)
    attn = torch.rand(2, 4, 12, 12, generator=gen).softmax(-1)
    per = refine_per_layer(cam, attn)
    fk = first_k_refinements(per)
    assert fk.shape == (2, 4, 3, 3, 4)
    for k in range(1, 5):
        torch.testing.assert_close(fk[:, k - 1], refine_cams(cam, first_k_affinity(attn, k)))
    # first K = L is the export's `avg` variant
    torch.testing.assert_close(fk[:, -1], refine_variants(cam, attn, ["avg"], 1)["avg"])


def test_attended_keys_hand_case():
    attn = torch.zeros(1, 4, 4)
    attn[0, :, 1] = 0.75  # every query puts 3/4 on key 1 ...
    attn[0, :, 2] = 0.25  # ... and 1/4 on key 2
    m = attended_keys(attn, (2, 2))
    torch.testing.assert_close(m, torch.tensor([[[0.0, 0.75], [0.25, 0.0]]]))


def test_upsample_scores_and_tiles():
    maps = torch.tensor([[[[0.0, 2.0], [1.0, 0.0]]]])  # (1, 1, 2, 2)
    up = upsample_scores(maps, (6, 6))
    assert up.shape == (1, 1, 6, 6) and up.max() == pytest.approx(1.0) and up.min() >= 0
    grid = tile_grid([[np.zeros((4, 5, 3), np.uint8), np.zeros((2, 3, 3), np.uint8)], [np.zeros((3, 3, 3), np.uint8)]])
    assert grid.shape == (2 + 4 + 2 + 3 + 2, 2 + 5 + 2 + 3 + 2, 3)


# ---------------------------------------------------------------------------------------------- diagnostics


def test_token_labels_majority_of_labelled_pixels():
    from pipeline.metrics import token_labels

    mask = np.array([[1, 1, 0, 0],
                     [1, 0, 0, 0],
                     [255, 255, 2, 2],
                     [2, 0, 2, 0]], np.uint8)
    # top-left 3 x 1 vs 1 x 0; bottom-left 255 left out, 1 x 2 vs 1 x 0 ties to 0; bottom-right 3 x 2 vs 1 x 0
    assert token_labels(mask, (2, 2), num_classes=3).tolist() == [[1, 0], [0, 2]]


def test_oracle_affinity_spreads_a_cam_over_its_own_segment_only():
    from pipeline.analysis.measures import oracle_affinity
    from pipeline.cams.aream import refine_cams

    labels = torch.tensor([0, 1, 1, 0])
    a = oracle_affinity(labels)
    torch.testing.assert_close(a[0], torch.tensor([0.5, 0.0, 0.0, 0.5]))
    torch.testing.assert_close(a[1], torch.tensor([0.0, 0.5, 0.5, 0.0]))
    cam = torch.tensor([0.2, 1.0, 0.6, 0.0]).reshape(1, 1, 2, 2)
    refined = refine_cams(cam, a[None]).flatten()  # Eq. 5: each token the mean of its segment
    torch.testing.assert_close(refined, torch.tensor([0.1, 0.8, 0.8, 0.1]))


def test_segment_attention_hand_case():
    from pipeline.analysis.measures import segment_attention

    labels = torch.tensor([0, 1, 1, 0])
    attn = torch.tensor([[[0.5, 0.25, 0.25, 0.0],    # background query: 0.5 on objects
                          [0.1, 0.6, 0.2, 0.1],      # class-1 query: 0.8 on its own segment
                          [0.0, 0.5, 0.5, 0.0],      # class-1 query: 1.0
                          [0.25, 0.25, 0.0, 0.5]]])  # background query: 0.25 on objects
    own, on_objects, n_fg, n_bg = segment_attention(attn, labels)
    torch.testing.assert_close(own / n_fg, torch.tensor([0.9]))
    torch.testing.assert_close(on_objects / n_bg, torch.tensor([0.375]))


# ---------------------------------------------------------------------------------------------- stage


def test_analysis_stage_outputs(tmp_path):
    from pipeline.analysis.layers import (analyze, draw_figures, layer_rows, layers_csv, layers_markdown,
                                          select_samples, summary_metrics)

    samples = select_samples(cam_dataset(tmp_path, 6), 4)
    assert [s.id for s in samples] == ["img1", "img2", "img4", "img5"]  # img0 has no mask; evenly spaced
    model = FakeViT(depth=4)
    acc = analyze(model, samples, depth=4, num_classes=3, sweep=[0.0, 0.8, 0.05], img_size=32, patch_size=8,
                  scale=1.0, batch_size=3, device=torch.device("cpu"), num_figures=2)
    rows = layer_rows(acc)
    metrics = summary_metrics(acc, rows)
    assert acc.count == 4 and len(rows) == 4
    # the fake's layers get flatter with depth: the Hellinger distance falls layer after layer
    h = [r["hellinger"] for r in rows]
    assert all(a > b for a, b in zip(h, h[1:])), h
    for r in rows:
        assert 0 <= r["single_layer_miou"] <= 1 and 0 <= r["first_k_miou"] <= 1
    assert rows[-1]["first_k_miou"] == pytest.approx(metrics["avg_miou"])  # K = L is the average
    assert rows[0]["first_k_miou"] == pytest.approx(rows[0]["single_layer_miou"])
    assert 0 < metrics["non_refined_miou"] <= 1 and metrics["num_images"] == 4
    w = [r["reactivation_weight"] for r in rows]
    assert all(0 <= x <= 1 for x in w)
    csv_text = layers_csv(rows)
    assert csv_text.splitlines()[0] == ("layer,hellinger,single_layer_miou,first_k_miou,reactivation_weight,"
                                        "single_layer_threshold,own_segment_attention,bg_attention_on_objects")
    for r in rows:
        assert 0 <= r["own_segment_attention"] <= 1 and 0 <= r["bg_attention_on_objects"] <= 1
    assert 0 <= metrics["oracle_miou"] <= 1 and set(metrics["best_thresholds"]) == {"cam", "avg", "aream", "oracle"}
    assert "| 4 |" in layers_markdown(rows, metrics)
    names = draw_figures(acc, rows, metrics, tmp_path)
    assert set(names) == {"layer_miou.png", "hellinger.png", "affinity_layers.png", "attended_keys.png",
                          "layers_overlay.png"}
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)


# ---------------------------------------------------------------------------------------------- both stages, real model


def test_both_stages_run_with_a_real_classifier(tmp_path, monkeypatch):
    """stages.export_cams.run and stages.analyze_layers.run on a tiny random classifier in a scratch project."""
    import stages.analyze_layers as analyze_stage
    import stages.export_cams as export_stage
    from pipeline.common.io import read_json, write_json
    from pipeline.config import load_params
    from pipeline.data.manifest import Manifest
    from pipeline.models.vit import build_classifier, save_classifier

    monkeypatch.chdir(tmp_path)
    samples = cam_dataset(tmp_path, 6)
    splits = {"train": tuple(samples[:4]), "val": tuple(samples[4:])}
    write_json("data/prepared/manifest.json", Manifest("toy", ("background", "a", "b", "c"), splits).to_dict())
    params = load_params(profile="scratch",
                         overrides={"runtime": {"device": "cpu", "task_runner": "serial", "workers": 1},
                           "classifier": {"img_size": 32, "patch_size": 8, "depth": 3, "cam": "class_attn"},
                           "cams": {"scales": [1.0, 1.5], "flip": True, "first_k": 2, "batch_size": 4},
                           "analysis": {"num_images": 3, "num_figures": 1}})
    torch.manual_seed(0)
    save_classifier(build_classifier(params.classifier, 3), "models/classifier/model.pt")
    export_stage.run(params)
    assert sorted(p.stem for p in (tmp_path / "data/cams").glob("*.npz")) == [s.id for s in samples]
    npz = np.load(tmp_path / "data/cams/img5.npz")
    assert npz["aream"].shape == (2, 12, 9) and list(npz["keys"]) == [1, 2]  # 45 x 34 image at stride 4
    metrics = read_json("reports/cams/metrics.json")
    assert metrics["num_images"] == 3 and set(metrics) == {"cam", "avg", "aream", "first_k", "num_images"}
    assert all(0 <= metrics[v]["best_miou"] <= 1 for v in ("cam", "avg", "aream", "first_k"))
    tag = read_json("data/cams/_params.json")
    export_stage.run(params)  # nothing left to do: same files, same tag
    assert read_json("data/cams/_params.json") == tag

    analyze_stage.run(params)
    rows = (tmp_path / "reports/analysis/layers.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("layer,hellinger")
    m = read_json("reports/analysis/metrics.json")
    assert m["num_images"] == 3 and 0 <= m["hellinger_last_layer"] <= 1
    assert (tmp_path / "reports/analysis/figures/layers_overlay.png").exists()

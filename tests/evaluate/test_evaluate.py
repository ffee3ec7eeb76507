"""Evaluation: multi-scale + flip inference, the metrics file, the confusion outputs, the stage end to end."""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import defaults, load_params
from pipeline.evaluate.inference import crf_label, image_tensor, predict_probs, side_by_side, to_label
from pipeline.evaluate.scoring import confusion_csv, summarize
from pipeline.models.segmenter import build_segmenter, save_segmenter

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

torch.set_num_threads(1)


class PixelModel(torch.nn.Module):
    """A 1x1 convolution: commutes with flips, and with resizing on a constant image."""

    def __init__(self, k=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, k, 1)

    def forward(self, x):
        return self.conv(x)


def test_single_scale_no_flip_is_the_plain_softmax():
    torch.manual_seed(0)
    model = build_segmenter(SCRATCH.seg.replace(decoder_channels=16), 4).eval()
    x = torch.rand(1, 3, 37, 41)
    with torch.no_grad():
        expected = torch.softmax(model(x), 1)
    got = predict_probs(model, x, scales=[1.0], flip=False)
    assert got.shape == (1, 4, 37, 41)
    assert torch.equal(got, expected)


def test_flip_and_scales_average_to_the_same_for_an_equivariant_model():
    model = PixelModel()
    x = torch.rand(1, 3, 20, 24)
    single = predict_probs(model, x, [1.0], flip=False)
    torch.testing.assert_close(predict_probs(model, x, [1.0], flip=True), single)
    const = torch.full((1, 3, 20, 24), 0.3)
    torch.testing.assert_close(predict_probs(model, const, [0.5, 1.0, 1.5], flip=True),
                               predict_probs(model, const, [1.0]))


def test_multi_scale_probs_sum_to_one_and_keep_the_size():
    torch.manual_seed(0)
    model = build_segmenter(SCRATCH.seg.replace(decoder_channels=16), 3).eval()
    p = predict_probs(model, torch.rand(1, 3, 33, 29), scales=[0.75, 1.25], flip=True)
    assert p.shape == (1, 3, 33, 29)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 33, 29))


def test_flip_averages_the_mirrored_prediction():
    class LeftBias(torch.nn.Module):  # class 1 wins in the left half of its input
        def forward(self, x):
            w = x.shape[-1]
            left = (torch.arange(w) < w // 2).float().expand(x.shape[0], 1, x.shape[2], w)
            return torch.cat([torch.zeros_like(left), 4 * left], 1)

    p = predict_probs(LeftBias(), torch.rand(1, 3, 2, 4), [1.0], flip=True)
    # every pixel sees the bias once (left half) and not once: mean of sigmoid(4) and 0.5
    expected = (torch.sigmoid(torch.tensor(4.0)) + 0.5) / 2
    torch.testing.assert_close(p[0, 1], torch.full((2, 4), float(expected)))


def test_summarize_by_hand():
    conf = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])  # class 2 absent from GT and prediction
    m = summarize(conf, ["background", "a", "b"])
    iou_bg, iou_a = 8 / (8 + 2 + 1), 3 / (3 + 2 + 1)
    assert m["per_class"]["background"] == pytest.approx(iou_bg, abs=1e-6)
    assert m["per_class"]["a"] == pytest.approx(iou_a, abs=1e-6)
    assert m["per_class"]["b"] is None
    assert m["miou"] == pytest.approx((iou_bg + iou_a) / 2, abs=1e-6)
    assert m["pixel_acc"] == pytest.approx(11 / 14, abs=1e-6)
    json.dumps(m, allow_nan=False)  # valid JSON: no NaN


def test_confusion_csv_long_format():
    rows = list(csv.DictReader(io.StringIO(confusion_csv(np.array([[3, 1], [0, 4]]), ["bg", "a"]))))
    assert [(r["actual"], r["predicted"], int(r["pixels"])) for r in rows] == [("bg", "bg", 3), ("bg", "a", 1),
                                                                               ("a", "a", 4)]
    assert float(rows[1]["fraction"]) == pytest.approx(0.25)


def test_crf_label_keeps_a_confident_prediction():
    image = np.zeros((12, 16, 3), np.uint8)
    image[:, 8:] = 255
    probs = np.full((2, 12, 16), 0.1, np.float32)
    probs[1, :, 8:] = 0.9
    probs[0, :, :8] = 0.9
    kernels = SCRATCH.eval.crf.replace(gauss_sxy=3, gauss_compat=3, bi_sxy=20, bi_srgb=13, bi_compat=10,
                                          iterations=5)
    label = crf_label((image, probs), kernels)
    assert label.dtype == np.uint8 and label.shape == (12, 16)
    assert (label[:, :8] == 0).all() and (label[:, 8:] == 1).all()


def test_helpers():
    assert image_tensor(np.full((2, 3, 3), 255, np.uint8)).shape == (1, 3, 2, 3)
    assert to_label(torch.tensor([[[[0.2]], [[0.8]]]])).tolist() == [[1]]
    assert side_by_side([np.zeros((2, 3, 3), np.uint8)] * 3, gap=1).shape == (2, 11, 3)


@pytest.mark.parametrize("crf", [False, True])
def test_stage_writes_metrics_figures_and_csv(tmp_path, monkeypatch, crf):
    import stages.evaluate as stage
    from fakes import write_toy_project

    write_toy_project(tmp_path, n_train=2, n_val=3)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = build_segmenter(SCRATCH.seg.replace(decoder_channels=16), 4)
    save_segmenter(model, tmp_path / "models/segmenter/model.pt", ["background", "red", "green", "blue"])
    params = load_params(profile="scratch",
                         overrides={"eval": {"scales": [0.75, 1.0], "flip": True, "crf": {"enabled": crf},
                                             "num_overlays": 2},
                                    "runtime": {"device": "cpu", "task_runner": "serial"}})
    stage.run(params)
    metrics = json.loads((tmp_path / "reports/evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["num_images"] == 3
    assert set(metrics["per_class"]) == {"background", "red", "green", "blue"}
    overlays = sorted((tmp_path / "reports/evaluate/figures/overlays").glob("*.png"))
    assert len(overlays) == 2
    with Image.open(overlays[0]) as im:  # three titled panels side by side, a legend below
        assert im.size[0] > 3 * 32 and im.size[0] > im.size[1]
    assert (tmp_path / "reports/evaluate/figures/confusion.png").stat().st_size > 1000
    rows = list(csv.DictReader((tmp_path / "reports/evaluate/confusion.csv").open()))
    assert sum(int(r["pixels"]) for r in rows) > 0


def test_stage_refuses_a_model_with_other_classes(tmp_path, monkeypatch):
    import stages.evaluate as stage
    from pipeline.common.io import DataError
    from fakes import write_toy_project

    write_toy_project(tmp_path, n_train=2, n_val=2)
    monkeypatch.chdir(tmp_path)
    save_segmenter(build_segmenter(SCRATCH.seg.replace(decoder_channels=16), 6),
                   tmp_path / "models/segmenter/model.pt",
                   [str(i) for i in range(6)])
    with pytest.raises(DataError, match="6 classes"):
        stage.run(load_params(profile="scratch", overrides={"runtime": {"device": "cpu"}}))


def test_overlay_legend_names_every_label_in_either_map():
    from pipeline.evaluate.scoring import overlay_legend

    gt = np.array([[0, 2], [255, 2]], np.uint8)
    pred = np.array([[0, 1], [1, 2]], np.uint8)
    legend = overlay_legend(gt, pred, ["background", "cat", "dog"])
    # VOC palette: 0 black, 1 (128, 0, 0), 2 (0, 128, 0); 255 the cream "ignored" colour
    assert legend == [("background", (0, 0, 0)), ("cat", (128, 0, 0)), ("dog", (0, 128, 0)),
                      ("ignored", (224, 224, 192))]


def test_capped_inference_size_and_labels_scaled_back():
    from pipeline.evaluate.inference import cap_side, capped_size, label_to_size

    # 3000 x 2000 capped at 500: scale 1/6 -> 500 x 333 (333.33 rounded); small images untouched
    assert capped_size(2000, 3000, 500) == (333, 500)
    assert capped_size(375, 500, 500) == (375, 500)
    image = np.zeros((60, 90, 3), np.uint8)
    image[:, 45:] = 200
    small = cap_side(image, 30)
    assert small.shape == (20, 30, 3) and small[0, 0, 0] == 0 and small[0, -1, 0] == 200
    assert cap_side(image, 90) is image
    label = np.array([[1, 2], [3, 4]], np.uint8)
    assert label_to_size(label, (4, 4)).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


def test_predict_caps_what_the_network_sees_and_writes_full_size_labels(tmp_path, monkeypatch):
    """A 300 x 200 photo with --max-side 64: the network gets 64 x 43, the label PNG is 300 x 200 again."""
    from PIL import Image

    import pipeline.models.segmenter as segmenter
    from pipeline.tools import predict

    seen = []

    class Stub(torch.nn.Module):
        class_names = ("background", "a")

        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            logits[:, 1, :, x.shape[-1] // 2:] = 1.0  # right half: class 1
            return logits

    monkeypatch.setattr(segmenter, "load_segmenter", lambda path, device: Stub().eval())
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(tmp_path / "big.png")
    errors = predict.predict_files(tmp_path / "m.pt", [tmp_path / "big.png"], tmp_path / "out", device="cpu",
                                   progress=False, max_side=64)
    assert errors == [] and seen == [(43, 64)]
    label = np.asarray(Image.open(tmp_path / "out" / "big.png"))
    assert label.shape == (200, 300) and label[:, :140].max() == 0 and label[:, 160:].min() == 1

"""Segmentation training: the loss ignores 255 exactly, augmentation pads with ignore / mean, the poly
schedule, training lowers the loss, and a resumed run equals the uninterrupted one bit for bit."""

import json
import math

import numpy as np
import pytest
import torch

from pipeline.config import Seg, defaults, load_params
from pipeline.models.segmenter import build_segmenter
from pipeline.train.harness import make_scheduler
from pipeline.train.segmenter import SegTrainSet, augment, make_optimizer, segmentation_loss, train_segmenter

from fakes import square_pairs, write_toy_project

SCRATCH = defaults("scratch")  # params.yaml + profiles/scratch.yaml: the random-init networks tests build

torch.set_num_threads(1)
def tiny_cfg(**kw) -> Seg:
    base = dict(decoder_channels=16, crop_size=32, batch_size=4, epochs=2, lr=1e-3, scale_range=[0.75, 1.25])
    return SCRATCH.seg.replace(**{**base, **kw})


def test_loss_of_uniform_logits_is_log_k_and_ignores_255():
    logits = torch.zeros(1, 4, 2, 2)
    target = torch.tensor([[[0, 1], [255, 3]]])
    assert segmentation_loss(logits, target).item() == pytest.approx(math.log(4))
    logits[0, 1, 0, 1] = 10.0  # the labelled pixel of class 1 becomes nearly certain
    expected = (2 * math.log(4) + math.log(3 + math.exp(10)) - 10) / 3
    assert segmentation_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_all_ignored_batch_gives_zero_loss_and_exactly_zero_gradient():
    torch.manual_seed(0)
    model = build_segmenter(tiny_cfg(), 4).train()
    loss = segmentation_loss(model(torch.rand(2, 3, 32, 32)), torch.full((2, 32, 32), 255, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_the_poly_schedule_steps_every_group_from_its_own_rate():
    # lr * (1 - i / max_i) ** 0.9: 0.01 at step 0, 0.01 * 0.5 ** 0.9 halfway, 0 at the end; the head at 10x
    model = build_segmenter(tiny_cfg(), 4)
    optimizer = make_optimizer(model, tiny_cfg(optimizer="sgd", lr=0.01, head_lr_mult=10.0))
    scheduler = make_scheduler(optimizer, 100, 0, "poly", 0.9)
    rates = []
    for _ in range(101):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert rates[0] == [0.01, 0.1]
    assert rates[50] == pytest.approx([0.01 * 0.5**0.9, 0.1 * 0.5**0.9])
    assert rates[100] == [0.0, 0.0]


def test_augment_pads_labels_with_255_and_images_with_the_mean():
    image = np.full((10, 12, 3), 200, np.uint8)
    label = np.ones((10, 12), np.uint8)
    fill = (10.0, 20.0, 30.0)
    img, lab = augment(np.random.default_rng(0), image, label, crop=16, scale_range=(1.0, 1.0), hflip=False, fill=fill)
    assert img.shape == (3, 16, 16) and lab.shape == (16, 16) and lab.dtype == np.int64
    assert (lab[:10, :12] == 1).all() and (lab[10:] == 255).all() and (lab[:, 12:] == 255).all()
    np.testing.assert_allclose(img[:, 12, 0] * 255, fill, rtol=1e-6)
    np.testing.assert_allclose(img[:, 0, 0], 200 / 255, rtol=1e-6)


def test_augment_is_a_function_of_the_generator():
    image, label = square_pairs(1, 40)[0]
    a = augment(np.random.default_rng(3), image, label, 32, (0.5, 1.5), True, (0, 0, 0))
    b = augment(np.random.default_rng(3), image, label, 32, (0.5, 1.5), True, (0, 0, 0))
    c = augment(np.random.default_rng(4), image, label, 32, (0.5, 1.5), True, (0, 0, 0))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.02), ("adamw", 5e-3)])
def test_training_lowers_the_loss(optimizer, lr):
    torch.manual_seed(0)
    cfg = tiny_cfg(epochs=10, lr=lr, optimizer=optimizer)
    model = build_segmenter(cfg, 4)
    history = train_segmenter(model, SegTrainSet(square_pairs(8), cfg, 0), cfg, torch.device("cpu"), progress=False)
    assert len(history) == 10
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["lr"] < cfg.lr


def test_resume_equals_uninterrupted():
    cfg = tiny_cfg(epochs=2)
    data = square_pairs(6)

    def fresh():
        torch.manual_seed(0)
        return build_segmenter(cfg, 4)

    full = fresh()
    train_segmenter(full, SegTrainSet(data, cfg, 0), cfg, torch.device("cpu"), progress=False)

    saved: list[dict] = []

    class Stop(Exception):
        pass

    def stop_after_first(epoch, metrics, state):
        saved.append(state)
        raise Stop

    with pytest.raises(Stop):
        train_segmenter(fresh(), SegTrainSet(data, cfg, 0), cfg, torch.device("cpu"), on_epoch=stop_after_first,
                        progress=False)
    torch.manual_seed(123)  # the resumed process starts from other random state
    state = saved[0]
    resumed = build_segmenter(cfg, 4)
    history = train_segmenter(resumed, SegTrainSet(data, cfg, 0), cfg, torch.device("cpu"), resume=state,
                              progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_stage_trains_writes_outputs_and_resumes(tmp_path, monkeypatch, capsys):
    import stages.train_seg as stage
    from pipeline.train.harness import Checkpoint

    write_toy_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    params = load_params(profile="scratch",
                         overrides={"seg": {"decoder_channels": 16, "crop_size": 32, "batch_size": 4, "epochs": 1},
                                    "runtime": {"device": "cpu"}})
    stage.run(params)
    metrics = json.loads((tmp_path / "reports/train_seg/metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["train_images"] == 6
    assert "resumed_from_epoch" not in metrics and "train_seconds" not in metrics  # not DVC outputs: they vary
    assert json.loads((tmp_path / "reports/timing/train_seg.json").read_text())["resumed_from_epoch"] == 0
    assert (tmp_path / "models/segmenter/model.pt").is_file()
    assert not (tmp_path / "models/segmenter_ckpt/last.pt").exists()  # finished: a forced rerun trains anew
    assert (tmp_path / "reports/train_seg/live/plots/metrics/loss.tsv").is_file()
    first = (tmp_path / "models/segmenter/model.pt").read_bytes()
    stage.run(params)  # dvc repro -f: trains again, and the same run gives the same bytes
    assert "resuming" not in capsys.readouterr().err
    assert (tmp_path / "models/segmenter/model.pt").read_bytes() == first

    two = load_params(profile="scratch",
                      overrides={"seg": {"decoder_channels": 16, "crop_size": 32, "batch_size": 4, "epochs": 2},
                                 "runtime": {"device": "cpu"}})
    real_save = Checkpoint.save

    def killed_after_first_checkpoint(*args):
        real_save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        stage.run(two)
    monkeypatch.setattr(Checkpoint, "save", real_save)
    stage.run(two)  # the same inputs: resumes after the interrupted run's first epoch
    assert "resuming" in capsys.readouterr().err
    assert json.loads((tmp_path / "reports/timing/train_seg.json").read_text())["resumed_from_epoch"] == 1
    # the curves are replayed from the checkpoint, not appended twice
    assert len((tmp_path / "reports/train_seg/live/plots/metrics/loss.tsv").read_text().splitlines()) == 3

    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(Checkpoint, "save", killed_after_first_checkpoint)
        stage.run(two)
    monkeypatch.setattr(Checkpoint, "save", real_save)
    monkeypatch.setattr("pipeline.common.digests.code_sha256", lambda module, root=None: "an edited stage")
    stage.run(two)  # the code changed since the checkpoint: trains from scratch
    assert "other params, code" in capsys.readouterr().err
    assert json.loads((tmp_path / "reports/timing/train_seg.json").read_text())["resumed_from_epoch"] == 0
    (tmp_path / "data/pseudo/train_0.png").unlink()
    with pytest.raises(Exception, match="pseudo label not found"):
        stage.run(params)


def test_disabled_upper_bound_skips_training_and_evaluation(tmp_path, monkeypatch):
    """upper_bound.enabled: false -> train_seg_gt and evaluate_gt write 'skipped' outputs, no model."""
    from stages import evaluate, train_seg
    from fakes import write_report_inputs
    from pipeline.evaluate.report import build_report

    monkeypatch.chdir(tmp_path)
    params = SCRATCH.replace(upper_bound={"enabled": False})
    train_seg.run(params, upper_bound=True)
    assert (tmp_path / "models/segmenter_gt/SKIPPED.txt").is_file()
    assert not (tmp_path / "models/segmenter_gt/model.pt").exists()
    assert json.loads((tmp_path / "reports/train_seg_gt/metrics.json").read_text()) == {"skipped": True}
    # the plots folder dvc.yaml declares exists (DVC fails a stage whose declared output is missing)
    assert (tmp_path / "reports/train_seg_gt/live/plots/metrics/loss.tsv").read_text() == "step\tloss\n"
    evaluate.run(params, upper_bound=True)
    assert json.loads((tmp_path / "reports/evaluate_gt/metrics.json").read_text()) == {"miou": None, "skipped": True}
    assert (tmp_path / "reports/evaluate_gt/figures").is_dir()
    gt = json.loads((tmp_path / "reports/evaluate_gt/metrics.json").read_text())
    text = build_report(params, write_report_inputs(tmp_path / "reports", **{"evaluate_gt/metrics.json": gt}))
    assert "(fully supervised bound)" not in text and "reaches" not in text

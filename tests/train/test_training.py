"""The shared training harness: padded per-process order, batches, checkpoints, curves, progress lines."""

import pytest
import torch

from pipeline.common.progress import progress
from pipeline.common.grouping import groups_of
from pipeline.train.harness import DROPOUT_STREAM, STREAM_STRIDE, Checkpoint, Distributed, epoch_order, epoch_seed


def test_epoch_order_pads_so_every_process_gets_the_same_count():
    shards = [epoch_order(10, 0, 1, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # 10 -> 12 by wrapping the first two of the permutation
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(10)) and len(flat) == 12
    assert epoch_order(10, 0, 1) != epoch_order(10, 0, 2)
    # the case that hung DDP: 401 images, 2 processes, batch 8 per process -> 26 steps on both
    assert [len(groups_of(epoch_order(401, 0, 0, r, 2), 8)) for r in (0, 1)] == [26, 26]
    # one process sees the plain permutation, independent of the global RNG
    torch.manual_seed(123)
    assert sorted(epoch_order(7, 5, 3)) == list(range(7)) and epoch_order(7, 5, 3) == epoch_order(7, 5, 3)


def test_epoch_seed_is_one_mixer_with_disjoint_streams():
    assert epoch_seed(0, 0) == 0 and epoch_seed(2, 5) == 2_000_011  # 2 * 1,000,003 + 5
    assert epoch_seed(2, 5, DROPOUT_STREAM) == 2_000_011 + 2_654_435_761  # below 2**32: no wrap
    assert epoch_seed(2000, 5, DROPOUT_STREAM) == (2_000_006_005 + 2_654_435_761) % 2**32  # wraps to 32 bits
    # the docstring's promise, exactly: stream 0 never wraps for seeds < 4,000 and epochs < 100,000, and a stream-1
    # seed equals a stream-0 seed only where stride (or stride - 2**32) = d * 1,000,003 + (e0 - e1) with |d| < 4,000
    # and |e0 - e1| < 100,000, which no d allows
    assert 3_999 * 1_000_003 + 99_999 < 2**32
    for offset in (STREAM_STRIDE, STREAM_STRIDE - 2**32):
        assert min(abs(offset - d * 1_000_003) for d in range(-3_999, 4_000)) >= 100_000
    g = torch.Generator().manual_seed(epoch_seed(4, 1))  # epoch_order draws from stream 0
    assert epoch_order(9, 4, 1) == torch.randperm(9, generator=g).tolist()
    # the streams differ in what torch's CPU generator draws (it keeps the low 32 bits of a seed only)
    draws = [torch.rand(4, generator=torch.Generator().manual_seed(epoch_seed(0, 0, k))) for k in (0, 1)]
    assert not torch.equal(*draws)
    with pytest.raises(ValueError, match="stream must be"):
        epoch_seed(0, 0, 2)  # a third stream would not keep the promise above


def test_checkpoint_resumes_only_under_its_tag_and_is_gone_when_finished(tmp_path, capsys):
    path = tmp_path / "ckpt" / "last.pt"
    Checkpoint(path, "tag-a", "trainer").save({"epoch": 3, "w": torch.ones(2)})
    assert Checkpoint(path, "tag-b", "trainer").load() is None
    assert "other params, code, data or weights" in capsys.readouterr().err
    state = Checkpoint(path, "tag-a", "trainer").load()
    assert state["epoch"] == 3 and torch.equal(state["w"], torch.ones(2))
    assert "resuming from" in capsys.readouterr().err
    Checkpoint(path, "tag-a", "trainer", Distributed(rank=1, world_size=2)).finish()  # not the main process
    assert path.exists()
    Checkpoint(path, "tag-a", "trainer").finish()
    assert not path.exists() and Checkpoint(path, "tag-a", "trainer").load() is None
    path.write_bytes(b"not a checkpoint")
    assert Checkpoint(path, "tag-a", "trainer").load() is None
    assert "unreadable" in capsys.readouterr().err


def test_progress_off_a_terminal_prints_lines_not_redraws(capsys):
    assert list(progress(range(5), "epoch 1/2", every=0.0)) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err  # pytest's captured stderr is not a terminal
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("epoch 1/2: 1/5") and lines[-1].startswith("epoch 1/2: 5 done in")

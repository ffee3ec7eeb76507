"""Groups of a fixed size and a fixed number of near-equal groups."""

import pytest

from pipeline.common.grouping import groups_of, split_evenly


def test_groups_of_keeps_order_and_can_drop_a_single_tail():
    assert groups_of(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert [len(b) for b in groups_of(list(range(9)), 4, drop_single=True)] == [4, 4]  # BatchNorm cannot take 1
    assert [len(b) for b in groups_of(list(range(10)), 4, drop_single=True)] == [4, 4, 2]
    assert groups_of([7], 4, drop_single=True) == [[7]]  # the only group stays
    assert groups_of([], 3) == []
    with pytest.raises(ValueError, match="at least 1"):
        groups_of([1, 2], 0)


def test_split_evenly_keeps_order_and_covers_all():
    items = list(range(11))
    chunks = split_evenly(items, 4)
    assert chunks == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    assert split_evenly([1], 8) == [[1]]
    assert split_evenly([], 3) == []

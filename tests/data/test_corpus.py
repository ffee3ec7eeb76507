"""The pretraining corpus: deterministic, balanced, and sharing no class design with toy VOC."""

import numpy as np
import pytest

from pipeline.data.corpus import (BODIES, FREE_MARKS, MAX_CORPUS_CLASSES, corpus_classes, render_chunk,
                                  render_corpus_image)
from pipeline.data.toyvoc import MAX_CLASSES, TOY_CLASS_NAMES


def test_no_toy_class_design_enters_the_corpus():
    toy = set(TOY_CLASS_NAMES[:MAX_CLASSES])  # every toy class any toy size can have
    classes = corpus_classes(MAX_CORPUS_CLASSES)
    assert not {c.part.name for c in classes} & toy
    assert len(FREE_MARKS) == len(set(FREE_MARKS))
    # the params schema's bound on pretrain.num_classes is this limit (config cannot import the corpus)
    from pipeline.config import Pretrain

    bounds = [m.le for m in Pretrain.model_fields["num_classes"].metadata if getattr(m, "le", None) is not None]
    assert bounds == [MAX_CORPUS_CLASSES]


def test_a_class_needs_its_mark_and_its_body():
    classes = corpus_classes(128)
    names = [c.name for c in classes]
    assert len(set(names)) == 128  # (mark, body) pairs are distinct
    by_mark, by_body = {}, {}
    for c in classes:
        by_mark.setdefault(c.part.name, set()).add(c.body)
        by_body.setdefault(c.body, set()).add(c.part.name)
    assert all(len(bodies) == 2 for bodies in by_mark.values())  # a mark alone leaves two classes
    assert min(len(marks) for marks in by_body.values()) >= 2  # a body alone leaves several
    assert len(BODIES) == 90 and len(set(BODIES)) == 90


def test_designs_depend_on_the_class_index_only():
    assert [c.name for c in corpus_classes(20)[:6]] != []
    assert corpus_classes(128)[:10] == corpus_classes(128)[:10]
    with pytest.raises(ValueError):
        corpus_classes(1)


def test_images_are_deterministic_balanced_and_seeded():
    classes = corpus_classes(6)
    a, la = render_chunk(("train", 0, 12), classes, seed=0, size=48)
    b, lb = render_chunk(("train", 0, 12), classes, seed=0, size=48)
    assert a.shape == (12, 48, 48, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert la.tolist() == [i % 6 for i in range(12)]  # balanced classes
    one, label = render_corpus_image(classes, 0, "train", 7, 48)
    np.testing.assert_array_equal(one, a[7])  # an image does not depend on its chunk
    assert label == 1
    other, _ = render_chunk(("train", 0, 12), classes, seed=1, size=48)
    assert not np.array_equal(a, other)
    val, _ = render_chunk(("val", 0, 12), classes, seed=0, size=48)
    assert not np.array_equal(a, val)

"""The generated pretraining corpus: what ImageNet is to the paper, for the embedded toy set.

The paper's networks start from ImageNet weights, and attention refinement exploits the object grouping
such pretraining gives. No pretrained ViT can be had offline, so stage ``pretrain`` trains one on this
corpus before ``train_cls`` fine-tunes it on the toy VOC set, as the paper fine-tunes DeiT-S.

Like ImageNet for VOC, the corpus shares the visual vocabulary of the target set (body shapes, colour
families, textures, scenes, part marks, the renderer) but none of its classes:

- **Classes are disjoint from toy VOC.** A toy class is its part mark: a (colour, pattern, colour)
  triple (:data:`pipeline.data.toyvoc.TOY_CLASS_NAMES`). Corpus classes use only triples that no toy
  class of any size (all 254 possible) uses, so no toy class design enters the corpus.
- **Recognising a class needs the whole object.** A corpus class is a part mark *and* a body (shape,
  colour family, texture). Each part mark is shared by two classes with different bodies, and each body
  by about three classes with different marks, so neither the mark nor the body alone names the class:
  a classifier has to group the mark with the body it belongs to.
- **Image-level labels only.** One or two objects of one class on a random scene with clutter; the
  label is the class index. No mask is made.

Determinism: image ``index`` of a split is drawn from ``default_rng([seed, split, index])`` and its class
is ``index % num_classes`` (balanced); class designs depend only on the class index.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.data.toyvoc import (BODY_HUES, BODY_SHAPES, BODY_TEXTURES, MAX_CLASSES, PART_COLOURS, PART_PATTERNS,
                                  PART_SHAPES, SCENES, TOY_CLASS_NAMES, ClassDesign, _clutter, _make_object,
                                  _render_scene, encode_jpeg)

SPLITS = ("train", "val")
DESIGN_SEED = 20_231  # fixes the order of the corpus class designs (not a data seed)
TEXTURES = ("shade", "stripes", "speckle")
assert set(TEXTURES) == set(BODY_TEXTURES)


@dataclass(frozen=True)
class CorpusClass:
    """Corpus class ``index`` (0-based): its part mark and its body (shape, hue, texture)."""

    index: int
    part: ClassDesign
    body: tuple[str, float, str]

    @property
    def name(self) -> str:
        shape, hue, texture = self.body
        return f"{self.part.name}/{shape}-{BODY_HUES.index(hue)}-{texture}"


def _free_marks() -> list[tuple[str, str, str]]:
    """Every (colour a, pattern, colour b) part mark no toy class uses, in a fixed shuffled order."""
    toy = set(TOY_CLASS_NAMES[:MAX_CLASSES])
    colours = list(PART_COLOURS)
    marks = [(a, p, b) for a in colours for p in PART_PATTERNS for b in colours
             if a != b and f"{a}-{p}-{b}" not in toy]
    order = np.random.default_rng(DESIGN_SEED).permutation(len(marks))
    return [marks[i] for i in order]


FREE_MARKS: tuple[tuple[str, str, str], ...] = tuple(_free_marks())
MAX_CORPUS_CLASSES = 2 * len(FREE_MARKS)


def _bodies() -> list[tuple[str, float, str]]:
    bodies = [(s, h, t) for s in BODY_SHAPES for h in BODY_HUES for t in TEXTURES]
    order = np.random.default_rng(DESIGN_SEED + 1).permutation(len(bodies))
    return [bodies[i] for i in order]


BODIES: tuple[tuple[str, float, str], ...] = tuple(_bodies())


def corpus_classes(num_classes: int) -> list[CorpusClass]:
    """The ``num_classes`` class designs: class c has mark ``c // 2`` and body ``c % num_bodies`` with
    ``num_bodies = min(90, max(2, num_classes // 3))``, so two classes share each mark (with different
    bodies) and about three share each body (with different marks)."""
    if not 2 <= num_classes <= MAX_CORPUS_CLASSES:
        raise ValueError(f"num_classes must be in 2..{MAX_CORPUS_CLASSES}, got {num_classes}")
    num_bodies = min(len(BODIES), max(2, num_classes // 3))
    out = []
    for c in range(num_classes):
        a, pattern, b = FREE_MARKS[c // 2]
        part = ClassDesign(index=c + 1, name=f"{a}-{pattern}-{b}", pattern=pattern, colour_a=PART_COLOURS[a],
                           colour_b=PART_COLOURS[b], part_shape=PART_SHAPES[(c // 2) % len(PART_SHAPES)], scene=0)
        out.append(CorpusClass(c, part, BODIES[c % num_bodies]))
    return out


def render_corpus_image(classes: list[CorpusClass], seed: int, split: str, index: int,
                        size: int) -> tuple[np.ndarray, int]:
    """Image ``index`` of ``split``: (size, size, 3) uint8 after a JPEG round trip (as the toy set's files)
    and its class ``index % len(classes)``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    cls = classes[index % len(classes)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    img = _render_scene(rng, int(rng.integers(len(SCENES))), size, size, yy, xx)
    for _ in range(int(rng.integers(0, 3))):
        _clutter(rng, img, size, size, yy, xx)
    n_obj = 1 if rng.random() < 0.7 else 2
    drawn = 0
    for _ in range(4 * n_obj):
        obj = _make_object(rng, cls.part, 0, size, size, yy, xx, 1.0 if n_obj == 1 else 0.8, look=cls.body)
        if obj is None:
            continue
        region = obj.body | obj.part
        img[region] = obj.colour[region]
        drawn += 1
        if drawn == n_obj:
            break
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    rgb = np.clip(img, 0, 255).round().astype(np.uint8)
    return np.asarray(Image.open(io.BytesIO(encode_jpeg(rgb))).convert("RGB")), cls.index


def render_chunk(item: tuple[str, int, int], classes: list[CorpusClass], seed: int,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start..stop-1`` of a split as (N, size, size, 3) uint8 and (N,) int64 labels (a picklable
    job for :func:`pipeline.common.parallel.map_items`)."""
    split, start, stop = item
    pairs = [render_corpus_image(classes, seed, split, i, size) for i in range(start, stop)]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs], np.int64)

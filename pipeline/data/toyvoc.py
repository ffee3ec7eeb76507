"""A generated toy dataset in PASCAL VOC 2012 layout: small enough for two CPU cores, hard enough that
weakly supervised segmentation has something to recover.

What makes it a WSSS benchmark rather than a colour-lookup task:

- **Part and body.** Every object is a large *body* plus a small *discriminative part* (a two-colour
  mark such as a ring, a checker or stripes, attached at one end of the body, like a head). The part's
  pattern and colours identify the class. The body's shape family and colour family are shared by a
  *body group* of classes (``classes_per_body`` classes per group), and its texture (shading, stripes, speckle)
  is drawn per instance from a pool shared by every class. A classifier therefore keys on the part and
  learns only group-level evidence from the body: raw CAMs under-activate the body, while the body is
  visually coherent (one colour family, gentle texture) so colour-affinity refinement (PAR, CRF,
  random walk) can grow into it. The ground-truth mask covers part + body.
- **Context.** Backgrounds are textured scenes (noise, stripes, blobs, gradients, tiles; eight named
  scenes such as grass or water). Each class has a typical scene that appears behind it with
  probability ``context``, so CAMs can spill into co-occurring context.
- **Clutter.** Unlabelled distractor shapes with body textures lie in the background, in a body colour family
  (with probability ``clutter_body_colours``) or in their scene's colours.
- **Occlusion.** Objects are drawn in order, later over earlier; the mask holds the visible pixels.
  Placement keeps at least half of each earlier body and most of its part visible.
- **VOC-like ignore band.** ``boundary`` pixels along every object boundary are 255 in the mask.

The knobs that place the set beside VOC (``dataset.toy``; chosen by stage ``calibrate``'s figures, README
"Calibration"): ``object_scale`` (body radius range: VOC's objects run from specks to most of the image),
``max_objects`` and ``repeat`` (further instances of a class already present), ``classes_per_body`` (how many
classes share one body appearance, so how much class evidence the body carries), ``texture`` (body texture
strength), ``body_saturation`` (how far bodies stand out from the muted scenes) and ``clutter_body_colours``
(how often a distractor wears a body colour rather than its scene's). At the values of
``profiles/toy-original.yaml`` the generator gives the bytes it gave before these knobs existed.

Determinism: image ``index`` of ``split`` is drawn from ``numpy.random.default_rng([seed, split, index])``
and JPEGs are encoded with fixed settings, so the same spec gives byte-identical files, in any order
and in parallel. The class designs depend only on the class index (not on the seed).

:func:`render_sample` is pure (arrays in, arrays out); :func:`generate_toyvoc` is the one writer.
"""

from __future__ import annotations

import colorsys
import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from pipeline.config import ToySpec
from pipeline.common.io import write_bytes, write_label_png, write_text
from pipeline.vocabulary import IGNORE_INDEX

SPLITS = ("train", "val")
JPEG_QUALITY = 90

# Saturated part colours (the discriminative marks); bodies and scenes use muted colours.
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30), "orange": (250, 140, 0), "yellow": (250, 230, 20), "lime": (150, 240, 20),
    "green": (0, 170, 60), "cyan": (0, 220, 230), "blue": (20, 60, 240), "violet": (140, 40, 230),
    "magenta": (240, 0, 200), "pink": (255, 150, 190), "white": (250, 250, 250), "black": (10, 10, 10),
}
PART_PATTERNS = ("dot", "ring", "half", "stripes", "checker", "cross", "rim")
PART_SHAPES = ("disc", "square", "diamond")
BODY_SHAPES = ("ellipse", "box", "triangle", "blob", "capsule")
BODY_HUES = (0.03, 0.11, 0.27, 0.48, 0.6, 0.8)  # hue centres of the body colour families
BODY_TEXTURES = ("shade", "stripes", "speckle")
# name, texture type, two base colours
SCENES: tuple[tuple[str, str, tuple[int, int, int], tuple[int, int, int]], ...] = (
    ("grass", "noise", (70, 110, 50), (120, 155, 75)),
    ("water", "stripes", (40, 80, 130), (80, 125, 170)),
    ("sand", "blobs", (195, 175, 125), (160, 140, 95)),
    ("sky", "gradient", (140, 185, 225), (215, 228, 240)),
    ("forest", "blobs", (30, 60, 35), (70, 100, 55)),
    ("brick", "tiles", (150, 75, 55), (125, 115, 105)),
    ("snow", "noise", (225, 228, 235), (185, 192, 205)),
    ("room", "stripes", (135, 125, 115), (175, 165, 150)),
)
MAX_CLASSES = 254
# The original generator's body radius range (fraction of the shorter side) and body saturation range: the
# defaults of the drawing helpers, so the corpus and profiles/toy-original.yaml keep their images.
RADIUS_RANGE = (0.17, 0.3)
SATURATION_RANGE = (0.3, 0.6)


@dataclass(frozen=True)
class ClassDesign:
    """How class ``index`` (1..C) looks: its part (pattern, colours, shape), body group and typical scene."""

    index: int
    name: str
    pattern: str
    colour_a: tuple[int, int, int]  # dominant part colour
    colour_b: tuple[int, int, int]  # secondary part colour
    part_shape: str
    scene: int


def _design(index: int) -> ClassDesign:
    k = index - 1
    names = list(PART_COLOURS)
    a = k % len(names)
    b = (a + 1 + (k // len(names)) % (len(names) - 1)) % len(names)  # (a, b) distinct for k < 132
    pattern = PART_PATTERNS[k % len(PART_PATTERNS)]
    return ClassDesign(index=index, name=f"{names[a]}-{pattern}-{names[b]}", pattern=pattern,
                       colour_a=PART_COLOURS[names[a]], colour_b=PART_COLOURS[names[b]],
                       part_shape=PART_SHAPES[(k // 3) % len(PART_SHAPES)], scene=k % len(SCENES))


#: Foreground class names of the toy dataset (class k is ``TOY_CLASS_NAMES[k - 1]``).
TOY_CLASS_NAMES: tuple[str, ...] = tuple(_design(i).name for i in range(1, MAX_CLASSES + 1))


def toy_class_names(num_classes: int) -> list[str]:
    """``["background", class 1, ..., class C]`` for a toy dataset with C foreground classes."""
    return ["background", *TOY_CLASS_NAMES[:num_classes]]


def num_body_groups(num_classes: int, per_body: int = 4) -> int:
    """About ``per_body`` classes share a body appearance (at least 2 groups, at most 30 distinct ones)."""
    return min(30, max(2, math.ceil(num_classes / per_body)))


def body_group(index: int, num_classes: int, per_body: int = 4) -> int:
    """Body group of class ``index`` (1..C); classes of one group differ only by their part."""
    return (index - 1) % num_body_groups(num_classes, per_body)


def sample_id(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


# ----------------------------------------------------------------------------------------------
# Texture helpers: (H, W) float32 fields
# ----------------------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1]: random values on a grid of ``cell`` pixels, bilinearly upsampled."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    low = rng.random((gh, gw), dtype=np.float32)
    return np.asarray(Image.fromarray(low).resize((w, h), Image.BILINEAR), dtype=np.float32)


def _lerp(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(H, W) t -> (H, W, 3) colours between c1 and c2."""
    return c1 + (c2 - c1) * t[..., None]


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


def _render_scene(rng: np.random.Generator, scene: int, h: int, w: int,
                  yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 background of scene type ``SCENES[scene]``."""
    _, kind, c1, c2 = SCENES[scene]
    c1, c2 = _jitter(rng, c1, 18), _jitter(rng, c2, 18)
    if kind == "noise":
        t = 0.65 * _noise(rng, h, w, rng.uniform(10, 20)) + 0.35 * _noise(rng, h, w, rng.uniform(2.5, 4))
        img = _lerp(c1, c2, t)
    elif kind == "stripes":
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(6, 14)
        wobble = 3.0 * _noise(rng, h, w, 16)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(ang) + yy * math.sin(ang)) / period + wobble)
        img = _lerp(c1, c2, t)
    elif kind == "blobs":
        img = np.empty((h, w, 3), np.float32)
        img[:] = c1
        for _ in range(int(rng.integers(12, 28))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(3, 14, 2)
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            img[inside] = _lerp(c1, c2, np.float32(rng.uniform(0.3, 1.0)))
    elif kind == "gradient":
        ang = rng.uniform(0.3 * math.pi, 0.7 * math.pi)
        proj = xx * math.cos(ang) + yy * math.sin(ang)
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        img = _lerp(c1, c2, np.clip(t + 0.25 * (_noise(rng, h, w, 12) - 0.5), 0, 1))
    elif kind == "tiles":
        th, tw = rng.uniform(6, 11), rng.uniform(12, 22)
        row = np.floor(yy / th)
        shifted = xx + (row % 2) * tw / 2
        mortar = ((yy % th) < 1.5) | ((shifted % tw) < 1.5)
        tile_id = (row * 997 + np.floor(shifted / tw)).astype(np.int64)
        shade = rng.uniform(-14, 14, 4096).astype(np.float32)[tile_id % 4096]
        img = np.where(mortar[..., None], c2, c1 + shade[..., None])
    else:  # pragma: no cover - SCENES only holds the kinds above
        raise ValueError(kind)
    return img.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Shapes: boolean (H, W) masks on pixel-centre coordinates
# ----------------------------------------------------------------------------------------------


def _rotated(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u along theta, v across) relative to the centre."""
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(theta), math.sin(theta)
    return dx * c + dy * s, -dx * s + dy * c


def _body_mask(shape: str, u: np.ndarray, v: np.ndarray, a: float, b: float, phase: float) -> np.ndarray:
    if shape == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if shape == "box":
        return (u / a) ** 4 + (v / b) ** 4 <= 1
    if shape == "triangle":
        return (u >= -a) & (np.abs(v) <= b * (a - u) / (2 * a) * 1.6)
    if shape == "blob":
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        return r <= 1 + 0.16 * np.sin(3 * np.arctan2(v, u) + phase)
    if shape == "capsule":
        half = max(a - b, 0.0)
        return (np.abs(v) <= b) & (np.abs(u) <= half) | ((np.abs(u) - half) ** 2 + v ** 2 <= b ** 2)
    raise ValueError(shape)  # pragma: no cover


def _part_mask(shape: str, pu: np.ndarray, pv: np.ndarray, r: float) -> np.ndarray:
    if shape == "disc":
        return pu ** 2 + pv ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(pu) <= 0.88 * r) & (np.abs(pv) <= 0.88 * r)
    if shape == "diamond":
        return np.abs(pu) + np.abs(pv) <= 1.2 * r
    raise ValueError(shape)  # pragma: no cover


def _part_pattern(pattern: str, pu: np.ndarray, pv: np.ndarray, r: float) -> np.ndarray:
    """True where the secondary colour B goes (A elsewhere)."""
    rr = np.sqrt(pu ** 2 + pv ** 2) / r
    if pattern == "dot":
        return rr <= 0.45
    if pattern == "ring":
        return (rr > 0.4) & (rr <= 0.72)
    if pattern == "half":
        return pu > 0
    if pattern == "stripes":
        period = max(3.0, 0.8 * r)
        return (np.floor(pu / (period / 2)) % 2) == 1
    if pattern == "checker":
        return (pu > 0) ^ (pv > 0)
    if pattern == "cross":
        bar = 0.2 * r + 0.5
        return (np.abs(pu) <= bar) | (np.abs(pv) <= bar)
    if pattern == "rim":
        return rr > 0.68
    raise ValueError(pattern)  # pragma: no cover


def _body_colour(rng: np.random.Generator, hue: float, saturation: Sequence[float] = SATURATION_RANGE) -> np.ndarray:
    h = (hue + rng.uniform(-0.035, 0.035)) % 1.0
    rgb = colorsys.hsv_to_rgb(h, rng.uniform(*saturation), rng.uniform(0.45, 0.85))
    return np.array(rgb, np.float32) * 255


def _texture_factor(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, a: float,
                    kind: str | None = None, strength: float = 1.0) -> np.ndarray:
    """Brightness modulation of a body, drawn from the texture pool shared by all classes (``kind`` fixes
    the texture; the draw still happens, so the random stream is the same either way). ``strength`` scales
    the modulation's amplitude (0 = a flat body)."""
    drawn = BODY_TEXTURES[int(rng.integers(len(BODY_TEXTURES)))]
    kind = kind or drawn
    ang = rng.uniform(0, 2 * math.pi)
    proj = u * math.cos(ang) + v * math.sin(ang)
    if kind == "shade":
        return 1 + strength * (0.2 * proj / a)
    if kind == "stripes":
        return 1 + strength * (0.1 * np.sin(2 * math.pi * proj / rng.uniform(4, 8)))
    h, w = u.shape
    return 1 + strength * (0.28 * (_noise(rng, h, w, rng.uniform(2, 4)) - 0.5))


@dataclass
class _Placed:
    cls: int
    body: np.ndarray  # (H, W) bool, full body before occlusion
    part: np.ndarray  # (H, W) bool, full part before occlusion
    colour: np.ndarray  # (H, W, 3) float32 object pixels (valid under body | part)
    body_px: int = 0  # full areas, before any occlusion
    part_px: int = 0

    def __post_init__(self) -> None:
        self.body_px, self.part_px = int(self.body.sum()), int(self.part.sum())


def _make_object(rng: np.random.Generator, design: ClassDesign, group: int, h: int, w: int,
                 yy: np.ndarray, xx: np.ndarray, scale: float, tries: int = 10,
                 look: tuple[str, float, str] | None = None, radius_range: Sequence[float] = RADIUS_RANGE,
                 texture: float = 1.0, saturation: Sequence[float] = SATURATION_RANGE) -> _Placed | None:
    """Draw one object at a random pose with its part fully inside the image (None if that fails).

    The body's shape and hue come from its body ``group`` and its texture from the shared pool, unless
    ``look`` = (shape, hue, texture) fixes all three (the pretraining corpus's classes). The body's radius is
    drawn from ``radius_range`` (fractions of the shorter side) times ``scale``; ``texture`` scales the body
    texture's amplitude; ``saturation`` is the range of the body colour's HSV saturation."""
    shape = BODY_SHAPES[group % len(BODY_SHAPES)] if look is None else look[0]
    hue = BODY_HUES[group % len(BODY_HUES)] if look is None else look[1]
    side = min(h, w)
    radius = rng.uniform(*radius_range) * side * scale
    a = radius
    b = radius * (rng.uniform(0.5, 0.75) if shape == "capsule" else rng.uniform(0.6, 0.9))
    rp = max(4.0, radius * rng.uniform(0.36, 0.46))
    theta = rng.uniform(0, 2 * math.pi)
    for _ in range(tries):
        cy = rng.uniform(0.55 * b, h - 0.55 * b)
        cx = rng.uniform(0.55 * b, w - 0.55 * b)
        reach = a * rng.uniform(0.8, 0.95)
        py, px = cy + reach * math.sin(theta), cx + reach * math.cos(theta)
        if rp <= py <= h - rp and rp <= px <= w - rp:
            break
        theta = rng.uniform(0, 2 * math.pi)
    else:
        return None
    u, v = _rotated(yy, xx, cy, cx, theta)
    body = _body_mask(shape, u, v, a, b, rng.uniform(0, 2 * math.pi))
    pu, pv = _rotated(yy, xx, py, px, rng.uniform(0, 2 * math.pi))
    part = _part_mask(design.part_shape, pu, pv, rp)
    colour = _body_colour(rng, hue, saturation)[None, None, :] * _texture_factor(rng, u, v, a, look and look[2],
                                                                      texture)[..., None]
    use_b = _part_pattern(design.pattern, pu, pv, rp)
    part_rgb = np.where(use_b[..., None], _jitter(rng, design.colour_b, 12), _jitter(rng, design.colour_a, 12))
    colour = np.where(part[..., None], part_rgb, colour).astype(np.float32)
    return _Placed(design.index, body, part, colour)


def _clutter(rng: np.random.Generator, img: np.ndarray, h: int, w: int, yy: np.ndarray, xx: np.ndarray,
             body_colours: float = 1.0, scene: int = 0, texture: float = 1.0,
             saturation: Sequence[float] = SATURATION_RANGE) -> None:
    """Unlabelled distractor, in place: a small body-like shape with a body texture. Its colour comes from a
    body colour family with probability ``body_colours`` (then it looks like an object's body), else from
    the colours of ``scene`` (a shape of the background's own stuff); body colours and textures as the bodies'
    (``saturation``, ``texture``). At ``body_colours`` 1 no extra random draw is made."""
    shape = BODY_SHAPES[int(rng.integers(len(BODY_SHAPES)))]
    a = rng.uniform(0.06, 0.13) * min(h, w)
    b = a * rng.uniform(0.5, 0.9)
    u, v = _rotated(yy, xx, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, 2 * math.pi))
    inside = _body_mask(shape, u, v, a, b, rng.uniform(0, 2 * math.pi))
    if body_colours >= 1 or rng.random() < body_colours:
        colour = _body_colour(rng, BODY_HUES[int(rng.integers(len(BODY_HUES)))], saturation)
    else:
        colour = _jitter(rng, SCENES[scene][2 + int(rng.integers(2))], 18)
    img[inside] = (colour[None, None, :] * _texture_factor(rng, u, v, a, strength=texture)[..., None])[inside]


def _dilate_box(mask: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Binary dilation of (H, W) bool by the box of offsets lo..hi on both axes."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        n = src.shape[axis]
        for off in range(lo, hi + 1):
            if off == 0 or abs(off) >= n:
                continue
            if axis == 0:
                if off > 0:
                    out[off:] |= src[:-off]
                else:
                    out[:off] |= src[-off:]
            else:
                if off > 0:
                    out[:, off:] |= src[:, :-off]
                else:
                    out[:, :off] |= src[:, -off:]
    return out


def boundary_band(label: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: the ``width``-pixel band centred on every boundary between different labels."""
    if width <= 0:
        return np.zeros(label.shape, bool)
    edge = np.zeros(label.shape, bool)
    edge[:-1] |= label[:-1] != label[1:]
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    return _dilate_box(edge, -((width - 1) // 2), width // 2)


def render_sample(spec: ToySpec, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split``: ``rgb`` (H, W, 3) uint8 and ``mask`` (H, W) uint8 in 0..C, 255.

    H and W are drawn independently in [min_size, max_size]; 1..max_objects objects (fewer objects
    are likelier, as in VOC), each visible in the mask.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), index])
    h, w = (int(x) for x in rng.integers(spec.min_size, spec.max_size + 1, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5

    counts = np.arange(1, spec.max_objects + 1)
    n_obj = int(rng.choice(counts, p=(1 / counts) / (1 / counts).sum()))
    classes = [int(c) for c in rng.integers(1, spec.num_classes + 1, n_obj)]
    if spec.repeat > 0:  # further instances of a class already present (VOC's people, sheep, bottles)
        for k in range(1, n_obj):
            if rng.random() < spec.repeat:
                classes[k] = classes[int(rng.integers(k))]
    scene = _design(classes[0]).scene if rng.random() < spec.context else int(rng.integers(len(SCENES)))

    img = _render_scene(rng, scene, h, w, yy, xx)
    for _ in range(int(rng.integers(0, spec.clutter + 1))):
        _clutter(rng, img, h, w, yy, xx, spec.clutter_body_colours, scene, spec.texture, spec.body_saturation)

    label = np.zeros((h, w), np.uint8)
    placed: list[_Placed] = []
    scale = 1.0 if n_obj == 1 else 0.8
    for cls in classes:
        design = _design(cls)
        group = body_group(cls, spec.num_classes, spec.classes_per_body)
        for _attempt in range(12):
            obj = _make_object(rng, design, group, h, w, yy, xx, scale, radius_range=spec.object_scale,
                               texture=spec.texture, saturation=spec.body_saturation)
            if obj is not None and _keeps_earlier_visible(obj, placed):
                break
            obj = None
        if obj is None:
            continue  # no pose leaves the earlier objects visible enough: skip this object
        region = obj.body | obj.part
        img[region] = obj.colour[region]
        label[region] = cls
        placed.append(obj)
        for earlier in placed[:-1]:
            earlier.body &= ~region
            earlier.part &= ~region
    if not placed:  # pragma: no cover - the first object always finds a pose in practice
        raise RuntimeError(f"toy sample {split}/{index}: no object could be placed")

    img += rng.normal(0, 4, img.shape).astype(np.float32)
    rgb = np.clip(img, 0, 255).round().astype(np.uint8)
    label[boundary_band(label, spec.boundary)] = IGNORE_INDEX
    return rgb, label


def _keeps_earlier_visible(obj: _Placed, placed: list[_Placed]) -> bool:
    """A new object may hide at most half of an earlier body and a third of its part."""
    region = obj.body | obj.part
    for earlier in placed:
        if ((earlier.body & ~region).sum() < 0.5 * earlier.body_px
                or (earlier.part & ~region).sum() < 0.67 * earlier.part_px):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------


def encode_jpeg(rgb: np.ndarray) -> bytes:
    """Fixed JPEG settings (quality 90, no chroma subsampling, so the small colour marks survive)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def write_toy_sample(voc_root: str | Path, spec: ToySpec, item: tuple[str, int]) -> str:
    """Render and write one image + mask into ``voc_root`` (VOCdevkit/VOC2012); returns its id."""
    split, index = item
    rgb, mask = render_sample(spec, split, index)
    sid = sample_id(split, index)
    root = Path(voc_root)
    write_bytes(root / "JPEGImages" / f"{sid}.jpg", encode_jpeg(rgb))
    write_label_png(root / "SegmentationClass" / f"{sid}.png", mask)
    return sid


def generate_toyvoc(root: str | Path, spec: ToySpec,
                    map_fn: Callable[[Callable, list, str], list] | None = None) -> Path:
    """Write the toy dataset under ``root``/VOCdevkit/VOC2012 and return that folder.

    Layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png (VOC palette, mode P),
    ImageSets/Segmentation/{train,val,trainval}.txt. ``map_fn(fn, items, desc)`` fans the per-image
    work out (e.g. ``functools.partial(pipeline.common.parallel.map_items, runtime=...)``); default serial.
    """
    voc_root = Path(root) / "VOCdevkit" / "VOC2012"
    items = [("train", i) for i in range(spec.num_train)] + [("val", i) for i in range(spec.num_val)]
    fn = functools.partial(write_toy_sample, str(voc_root), spec)
    ids = map_fn(fn, items, "toyvoc") if map_fn is not None else [fn(x) for x in items]
    lists = {s: [i for i, (split, _) in zip(ids, items) if split == s] for s in SPLITS}
    lists["trainval"] = lists["train"] + lists["val"]
    for name, rows in lists.items():
        write_text(voc_root / "ImageSets" / "Segmentation" / f"{name}.txt", "".join(f"{r}\n" for r in rows))
    return voc_root

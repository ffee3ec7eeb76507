"""Typed, validated view of ``params.yaml``: the one place that knows the keys.

Every stage calls :func:`load_params`; an unknown key, a wrong type or an out-of-range value stops
it with one :class:`ConfigError` naming the dotted key (``train_cls.lr: ...``).

Profiles (``profiles/<name>.yaml``) are partial overrides in the same nested layout. They are
applied with ``dvc exp run`` set-arguments, so DVC tracks every value that shaped a result::

    dvc exp run $(python -m pipeline.config set-args smoke)

``python -m pipeline.config show`` prints the validated, fully resolved parameters.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.vocabulary import CAM_VARIANTS, LABEL_SOURCES, WEIGHT_KEYWORDS

ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = ROOT / "params.yaml"
PROFILES_DIR = ROOT / "profiles"


class ConfigError(ValueError):
    """A parameter a user can fix; the message names the dotted key."""


WEIGHTS_DIR = Path("weights")  # local starting weights live here (files or symlinks), relative to the project
TOY_ROOT = "data/toyvoc/VOCdevkit/VOC2012"  # where stage generate_toy writes the toy set (dataset.root of toyvoc)


def weights_file(value: str) -> Path | None:
    """The local file a weights parameter names, or None for ``none`` / ``timm`` / ``imagenet``.

    In params.yaml a local file is given by its name under ``weights/`` (put the file or a symlink there),
    because dvc.yaml depends on ``weights/<value>``: DVC then hashes the file itself, and replacing it at the
    same path reruns the stages that start from it. The keywords are small marker files in that folder.
    Absolute paths are accepted by the library (tests, ``pipeline.tools.predict``) but not by stage ``check``.
    """
    if value in WEIGHT_KEYWORDS:
        return None
    path = Path(value)
    return path if path.is_absolute() else WEIGHTS_DIR / path


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def replace(self, **changes: Any) -> Section:
        """A validated copy with some fields changed (nested sections as dicts or sections)."""
        data = self.model_dump()
        data.update({k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in changes.items()})
        try:
            return type(self).model_validate(data)
        except ValidationError as err:
            raise ConfigError(_format_error(err, type(self).__name__)) from None


# ----------------------------------------------------------------------------------------------
# Sections. They hold no defaults: params.yaml is the one place where default values live, so every key
# must be written there (a missing one is an error naming it). Code and tests that need the defaults
# call defaults() and change what they need with Section.replace().
# ----------------------------------------------------------------------------------------------


class Runtime(Section):
    device: str  # auto | cpu | cuda | cuda:N
    workers: int = Field(ge=0)  # parallel CPU workers for per-image work; 0 = all cores
    loader_workers: int = Field(ge=0)  # torch DataLoader workers
    nproc: int = Field(ge=1)  # DDP processes per node for the training stages (one per GPU)
    task_runner: Literal["serial", "process", "prefect", "dask"]
    dask_address: str | None  # scheduler address for task_runner: dask; None = local cluster


class ToySpec(Section):
    num_classes: int = Field(ge=2, le=254)
    num_train: int = Field(ge=2)
    num_val: int = Field(ge=2)
    min_size: int = Field(ge=32)
    max_size: int = Field(ge=32)
    max_objects: int = Field(ge=1, le=8)
    boundary: int = Field(ge=0, le=16)  # width in pixels of the 255 ignore band
    context: float = Field(ge=0, le=1)  # P(background = the first object's typical scene)
    clutter: int = Field(ge=0, le=12)  # unlabelled distractor shapes per image: 0..clutter
    clutter_body_colours: float = Field(ge=0, le=1)  # P(a distractor takes a body colour family, not the scene's)
    object_scale: list[float] = Field(min_length=2, max_length=2)  # body radius range, fraction of the short side
    repeat: float = Field(ge=0, le=1)  # P(each further object repeats a class already in the image)
    texture: float = Field(ge=0, le=2)  # strength of the body textures (0 = flat bodies, 1 = the original pool)
    body_saturation: list[float] = Field(min_length=2, max_length=2)  # HSV saturation range of body colours
    classes_per_body: int = Field(ge=1, le=16)  # classes sharing one body appearance (shape + colour family)
    seed: int

    @model_validator(mode="after")
    def _sizes(self) -> ToySpec:
        if self.max_size < self.min_size:
            raise ValueError("max_size must be >= min_size")
        if not 0.05 <= self.object_scale[0] <= self.object_scale[1] <= 0.6:
            raise ValueError("object_scale must be [low, high] with 0.05 <= low <= high <= 0.6")
        if not 0 <= self.body_saturation[0] <= self.body_saturation[1] <= 1:
            raise ValueError("body_saturation must be [low, high] with 0 <= low <= high <= 1")
        return self


class CocoSpec(Section):
    train_images: str
    val_images: str
    train_annotations: str
    val_annotations: str
    keep_unlabelled: bool  # keep val images without annotations (train always drops them)


class Dataset(Section):
    name: Literal["toyvoc", "voc", "coco"]
    root: str  # voc: .../VOCdevkit/VOC2012; coco: folder with images + annotations (a DVC dependency)
    train_split: str  # voc: train | train_aug ; coco: train
    val_split: str
    max_images: int = Field(ge=0)  # 0 = all; >0 keeps the first N of each split (quick trials)
    toy: ToySpec
    coco: CocoSpec


class Classifier(Section):
    backbone: str
    pretrained: str  # none | timm | path/to/weights.(pth|safetensors)
    img_size: int = Field(ge=16)
    patch_size: int = Field(ge=2)
    depth: int = Field(ge=1)
    drop_path: float = Field(ge=0.0, lt=1.0)
    cam: Literal["fused", "class_attn", "patch"]
    cam_layers: int = Field(ge=1)  # class-attention summed over the last K layers


class TrainCls(Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: Literal["adamw", "sgd"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_epochs: int = Field(ge=0)
    schedule: Literal["cosine", "poly", "constant"]
    crop_scale: list[float]
    hflip: bool
    color_jitter: float = Field(ge=0)
    amp: bool  # used on CUDA only


class Pretrain(Section):
    """Stage pretrain: the classifier's ViT trained on the generated corpus (pipeline/data/corpus.py)."""
    enabled: bool  # false skips the stage (classifier.pretrained must then not name its output)
    num_classes: int = Field(ge=2, le=1340)  # corpus classes (1340 = two per free part mark)
    images_per_class: int = Field(ge=1)
    val_per_class: int = Field(ge=1)
    image_size: int = Field(ge=16)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_epochs: int = Field(ge=0)
    label_smoothing: float = Field(ge=0, lt=1)
    crop_scale: list[float] = Field(min_length=2, max_length=2)
    drop_path: float = Field(ge=0, lt=1)
    amp: bool  # used on CUDA only
    teacher: str  # none | a weights file under weights/ (whole-network state dict) | timm: the ImageNet CNN teacher
    teacher_backbone: str  # the teacher's timm CNN
    teacher_stride: Literal[4, 8, 16, 32]  # the teacher feature level each patch token regresses
    distill_logits: float = Field(ge=0)  # weight of the distillation token's soft-prediction term
    distill_features: float = Field(ge=0)  # weight of the token-level feature regression term
    distill_temperature: float = Field(gt=0)
    seed: int

    @model_validator(mode="after")
    def _crop(self) -> Pretrain:
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError("crop_scale must be [low, high] with 0 < low <= high <= 1")
        if self.teacher != "none" and self.distill_logits == 0 and self.distill_features == 0:
            raise ValueError("a teacher needs distill_logits > 0 or distill_features > 0 (or set teacher: none)")
        return self


class AReAM(Section):
    enabled: bool
    lam: float = Field(ge=0)  # lambda of Eq. 20 (the paper and the default: 0.2; scratch profile: 0.05)
    start_epoch: int = Field(ge=0)  # classification-only warm-up epochs before L_aff
    alpha1: float = Field(gt=0, lt=1)  # Eq. 16 background threshold
    alpha2: float = Field(gt=0, lt=1)  # Eq. 16 foreground threshold
    weights: Literal["per_image", "dataset"]  # paper | authors' dataset-wide file
    refine_layers: int = Field(ge=0)  # 0 = all layers (paper); K = the first K only (authors' code)
    loss_layers: int = Field(ge=0)  # 0 = all layers (paper); K = the last K only (authors' code)
    par_scale: float = Field(gt=0, le=1)  # image resolution PAR runs at during training

    @model_validator(mode="after")
    def _alphas(self) -> AReAM:
        if self.alpha1 >= self.alpha2:
            raise ValueError("alpha1 must be < alpha2")
        return self


class PAR(Section):
    c_i: float = Field(gt=0)
    c_l: float = Field(gt=0)
    w_i: float = Field(ge=0)
    w_l: float = Field(ge=0)
    dilations: list[int]
    iterations: int = Field(ge=1)


class Cams(Section):
    variants: list[Literal[CAM_VARIANTS]]
    first_k: int = Field(ge=1)  # must not exceed the classifier's depth (checked at export)
    scales: list[float]
    flip: bool
    stride: int = Field(ge=1)  # stored at image size / stride
    batch_size: int = Field(ge=1)
    splits: list[str]  # manifest splits exported
    sweep: list[float]  # background threshold start, stop (inclusive), step
    normalize: Literal["minmax", "max"]  # per-class scaling of the merged maps to [0, 1]

    @model_validator(mode="after")
    def _check(self) -> Cams:
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError("variants must list distinct CAM variants (at least one)")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError("scales must be a non-empty list of positive factors")
        if not self.splits:
            raise ValueError("splits must name at least one manifest split")
        if len(self.sweep) != 3 or not (self.sweep[2] > 0 and self.sweep[1] >= self.sweep[0] >= 0):
            raise ValueError("sweep must be [start, stop, step] with 0 <= start <= stop and step > 0")
        return self


class Analysis(Section):
    num_images: int = Field(ge=1)
    num_figures: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    scale: float = Field(gt=0)  # single test scale of the analysis (no flip: one forward per image)


class Post(Section):
    cam_variant: Literal[CAM_VARIANTS]  # input of PAR / CRF / PSA (default avg; scratch: cam)
    par_mode: Literal["image", "afa"]  # PAR at image size on the class maps, or AFA's reference refinement
    par_backgrounds: tuple[float, float]  # afa: (high, low) constant background scores before the softmax
    walk_pool: Literal["adaptive", "padded"]  # random-walk input: adaptive pooling, or PSA's zero-pad + crop

    @model_validator(mode="after")
    def _backgrounds_order(self) -> Post:
        high, low = self.par_backgrounds
        if not high >= low:
            raise ValueError(f"post.par_backgrounds: (high, low) expected, got {list(self.par_backgrounds)}")
        return self


class CRFKernels(Section):
    """The dense CRF's kernels (pydensecrf): Gaussian (position) and bilateral (position + colour)."""
    gauss_sxy: float = Field(gt=0)
    gauss_compat: float = Field(ge=0)
    bi_sxy: float = Field(gt=0)
    bi_srgb: float = Field(gt=0)
    bi_compat: float = Field(ge=0)
    iterations: int = Field(ge=1)


class CRF(CRFKernels):
    alpha: float = Field(gt=0)  # background score (1 - max)^alpha for the CRF scores output
    alpha_low: float = Field(gt=0)  # low background: confident foreground (PSA)
    alpha_high: float = Field(gt=0)  # high background: confident background (PSA)


class PSA(Section):
    backbone: str
    pretrained: str
    crop_size: int = Field(ge=16)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    embed_dim: int = Field(ge=1)  # AffinityNet embedding channels
    radius: int = Field(ge=2)
    pairs: Literal["all", "cropped"]  # in-map pairs within the radius, or PSA's (no source cell near the border)
    feature_stride: int = Field(ge=1)
    alpha: float = Field(gt=0)  # background channel (1 - max)^alpha of the random-walk input
    beta: float = Field(gt=0)
    logt: int = Field(ge=0)  # t = 2^logt walk steps (the reference: 8 at stride 8 on VOC-sized images)
    amp: bool  # used on CUDA only


class Pseudo(Section):
    source: Literal[LABEL_SOURCES]
    alpha1: float = Field(gt=0, lt=1)
    alpha2: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _alphas(self) -> Pseudo:
        if self.alpha1 >= self.alpha2:
            raise ValueError("alpha1 must be < alpha2")
        return self


class Seg(Section):
    labels: Literal["pseudo", "gt"]
    arch: Literal["deeplabv3plus", "deeplabv3", "deeplabv2"]
    encoder: str
    encoder_weights: str  # none | imagenet | path/to/weights.pth
    output_stride: Literal[0, 8, 16]  # 0 = the architecture's default (v3+: 16, v3 / v2: 8)
    decoder_channels: int = Field(ge=8)  # ASPP / decoder width (deeplabv3plus, deeplabv3)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)  # global batch (split over DDP processes)
    optimizer: Literal["sgd", "adamw"]  # sgd (DeepLab recipe) | adamw (faster from scratch)
    lr: float = Field(gt=0)
    head_lr_mult: float = Field(gt=0)  # decoder / classifier learning-rate multiplier
    weight_decay: float = Field(ge=0)
    momentum: float = Field(ge=0, lt=1)
    poly_power: float = Field(ge=0)
    crop_size: int = Field(ge=16)
    scale_range: list[float] = Field(min_length=2, max_length=2)
    hflip: bool
    amp: bool

    @model_validator(mode="after")
    def _scales(self) -> Seg:
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError("scale_range must be [low, high] with 0 < low <= high")
        return self


class Baseline(Section):
    enabled: bool  # train_cls_base / export_cams_base: the "w/o AReAM" classifier of Table I; false skips both


class UpperBound(Section):
    enabled: bool  # train_seg_gt / evaluate_gt train and score the ground-truth model; false skips both


class EvalCRF(CRFKernels):
    """Test-time dense CRF on the segmenter's probabilities (DeepLab-style; its own kernels, so that a
    pseudo-label CRF edit does not rerun evaluation)."""
    enabled: bool


class Eval(Section):
    scales: list[float] = Field(min_length=1)
    flip: bool
    crf: EvalCRF
    max_side: int = Field(ge=32)  # longest side the network sees; larger images are shrunk, labels scaled back
    num_overlays: int = Field(ge=0)

    @model_validator(mode="after")
    def _scales(self) -> Eval:
        if any(s <= 0 for s in self.scales):
            raise ValueError("scales must all be > 0")
        return self


class Calibration(Section):
    """Stage calibrate: the dataset measured by the field's standard CNN CAM and its refinements, without AReAM."""
    enabled: bool
    backbone: str  # a timm CNN
    pretrained: str  # a weights file under weights/ (the whole network's state dict) | none | timm
    output_stride: Literal[8, 16, 32]
    frozen_stride: Literal[0, 2, 4, 8]  # layers before the first feature level deeper than this stay fixed (0: none)
    img_size: int = Field(ge=32)
    crop_scale: list[float] = Field(min_length=2, max_length=2)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    cam_sizes: list[int] = Field(min_length=1)
    flip: bool
    token_grid: int = Field(ge=1)
    seed: int = Field(ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> Calibration:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError("crop_scale must satisfy 0 < low <= high <= 1")
        if any(s < 32 for s in self.cam_sizes):
            raise ValueError("cam_sizes must all be >= 32")
        return self


class Params(Section):
    runtime: Runtime
    seed: int = Field(ge=0)  # training seed of the fine-tuning stages (pretraining and data keep their own)
    dataset: Dataset
    pretrain: Pretrain
    classifier: Classifier
    train_cls: TrainCls
    aream: AReAM
    par: PAR
    cams: Cams
    analysis: Analysis
    post: Post
    crf: CRF
    psa: PSA
    pseudo: Pseudo
    seg: Seg
    baseline: Baseline
    upper_bound: UpperBound
    eval: Eval
    calibration: Calibration


# ----------------------------------------------------------------------------------------------


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against params.yaml)"
        elif e["type"] == "missing":
            msg = "missing (every key must be set; the repository's params.yaml lists them all)"
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{key}: {msg}{shown}")
    return f"{source}: invalid parameter " + "; ".join(lines)


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` updated recursively by ``override`` (new dict; inputs untouched)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a nested dict of parameters; raise :class:`ConfigError` naming the bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameters file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return data or {}


def load_params(path: str | Path = PARAMS_FILE, overrides: dict | None = None, profile: str | None = None) -> Params:
    """Load and validate ``params.yaml``, optionally merged with ``profiles/<profile>.yaml`` and then with
    nested ``overrides``."""
    path = Path(path)
    raw = read_yaml(path)
    if profile:
        raw = deep_merge(raw, profile_overrides(profile))
    if overrides:
        raw = deep_merge(raw, overrides)
    return parse_params(raw, str(path.name))


@functools.lru_cache(maxsize=4)
def defaults(profile: str | None = None) -> Params:
    """The repository's params.yaml: the default value of every parameter (read once per process), or
    those values with a profile applied (``defaults("scratch")``: random-init networks, what unit tests
    build)."""
    return load_params(PARAMS_FILE, profile=profile)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def profile_overrides(name: str, profiles_dir: Path = PROFILES_DIR) -> dict:
    path = profiles_dir / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in profiles_dir.glob("*.yaml"))
        raise ConfigError(f"profile {name!r} not found in {profiles_dir} (known: {', '.join(known)})")
    raw = read_yaml(path)
    parse_params(deep_merge(read_yaml(PARAMS_FILE), raw), str(path.name))  # every key must be a real parameter
    return raw


def set_args(overrides: dict) -> list[str]:
    """``dvc exp run`` arguments (``-S key=value`` pairs) for a nested override dict."""
    args: list[str] = []
    for key, value in flatten(overrides).items():
        text = json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)
        if value is None:
            text = "null"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        if any(c.isspace() for c in text) or any(c in text for c in "'\"$`\\;&|<>*?"):
            raise ConfigError(f"{key}: value {text!r} cannot be passed through $(...) word splitting; "
                              "use `python -m pipeline.config apply` on a copy of params.yaml instead")
        args += ["-S", f"{key}={text}"]
    return args


_LITERAL = re.compile(r"``([^`]+?)``")  # may span a line break
_ROLE = re.compile(r":[\w.:-]+:`(~?)([^`<]*?)\s*(?:<[^`>]*>)?`")


def plain_doc(doc: str | None) -> str:
    """A module docstring as plain text for ``--help``: Sphinx literals and roles lose their markup (a role
    whose target starts with ``~`` keeps the target's last part), a paragraph's closing ``::`` becomes ``:``."""
    text = _LITERAL.sub(r"\1", doc or "")
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)
    return re.sub(r"::$", ":", text, flags=re.MULTILINE).strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.config", description=plain_doc(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("show", help="print the validated parameters")
    p = sub.add_parser("set-args", help="print `-S key=value` arguments of a profile for dvc exp run")
    p.add_argument("profile")
    p = sub.add_parser("apply", help="write a profile's values into a params file (for scratch copies)")
    p.add_argument("profile")
    p.add_argument("--params", default=str(PARAMS_FILE))
    args = parser.parse_args(argv)
    try:
        if args.cmd == "show":
            print(yaml.safe_dump(load_params().model_dump(), sort_keys=False))
        elif args.cmd == "set-args":
            print(" ".join(set_args(profile_overrides(args.profile))))
        elif args.cmd == "apply":
            path = Path(args.params)
            merged = deep_merge(read_yaml(path), profile_overrides(args.profile))
            parse_params(merged, path.name)
            path.write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

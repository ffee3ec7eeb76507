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
import json
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = ROOT / "params.yaml"
PROFILES_DIR = ROOT / "profiles"


class ConfigError(ValueError):
    """A parameter a user can fix; the message names the dotted key."""


WEIGHTS_DIR = Path("weights")  # local starting weights live here (files or symlinks), relative to the project
WEIGHT_KEYWORDS = ("none", "timm", "imagenet")  # none: random init; timm / imagenet: the hub (needs internet)
TOY_ROOT = "data/toyvoc/VOCdevkit/VOC2012"  # where stage generate_toy writes the toy set (dataset.root of toyvoc)


def weights_file(value: str) -> Path | None:
    """The local file a weights parameter names, or None for ``none`` / ``timm`` / ``imagenet``.

    In params.yaml a local file is given by its name under ``weights/`` (put the file or a symlink there),
    because dvc.yaml depends on ``weights/<value>``: DVC then hashes the file itself, and replacing it at the
    same path reruns the stages that start from it. The keywords are small marker files in that folder.
    Absolute paths are accepted by the library (tests, ``pipeline.predict``) but not by stage ``check``.
    """
    if value in WEIGHT_KEYWORDS:
        return None
    path = Path(value)
    return path if path.is_absolute() else WEIGHTS_DIR / path


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------------------------
# Sections. Defaults here mirror params.yaml; params.yaml is the documented source of truth.
# ----------------------------------------------------------------------------------------------


class Runtime(Section):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = Field(0, ge=0)  # parallel CPU workers for per-image work; 0 = all cores
    loader_workers: int = Field(0, ge=0)  # torch DataLoader workers
    task_runner: Literal["serial", "process", "prefect", "dask"] = "process"
    dask_address: str | None = None  # scheduler address for task_runner: dask; None = local cluster


class ToySpec(Section):
    num_classes: int = Field(20, ge=2, le=254)
    num_train: int = Field(400, ge=2)
    num_val: int = Field(100, ge=2)
    min_size: int = Field(96, ge=32)
    max_size: int = Field(144, ge=32)
    max_objects: int = Field(3, ge=1, le=8)
    boundary: int = Field(2, ge=0, le=16)  # width in pixels of the 255 ignore band
    context: float = Field(0.6, ge=0, le=1)  # P(background = the first object's typical scene)
    clutter: int = Field(3, ge=0, le=12)  # unlabelled distractor shapes per image: 0..clutter
    seed: int = 0

    @model_validator(mode="after")
    def _sizes(self) -> "ToySpec":
        if self.max_size < self.min_size:
            raise ValueError("max_size must be >= min_size")
        return self


class CocoSpec(Section):
    train_images: str = "train2014"
    val_images: str = "val2014"
    train_annotations: str = "annotations/instances_train2014.json"
    val_annotations: str = "annotations/instances_val2014.json"
    keep_unlabelled: bool = False  # keep val images without annotations (train always drops them)


class Dataset(Section):
    name: Literal["toyvoc", "voc", "coco"] = "toyvoc"
    root: str = TOY_ROOT  # voc: .../VOCdevkit/VOC2012; coco: folder with images + annotations (a DVC dependency)
    train_split: str = "train"  # voc: train | train_aug ; coco: train
    val_split: str = "val"
    max_images: int = Field(0, ge=0)  # 0 = all; >0 keeps the first N of each split (quick trials)
    toy: ToySpec = ToySpec()
    coco: CocoSpec = CocoSpec()


class Classifier(Section):
    backbone: str = "deit_tiny_patch16_224"
    pretrained: str = "none"  # none | timm | path/to/weights.(pth|safetensors)
    img_size: int = Field(96, ge=16)
    patch_size: int = Field(8, ge=2)
    depth: int = Field(6, ge=1)
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    cam: Literal["fused", "class_attn", "patch"] = "class_attn"
    cam_layers: int = Field(3, ge=1)  # class-attention summed over the last K layers


class TrainCls(Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: int = Field(2, ge=0)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    crop_scale: list[float] = [0.8, 1.0]
    hflip: bool = True
    color_jitter: float = Field(0.3, ge=0)
    amp: bool = True  # used on CUDA only
    seed: int = 0


class AReAM(Section):
    enabled: bool = True
    lam: float = Field(0.05, ge=0)  # lambda of Eq. 20 (the paper: 0.2, pretrained; see params.yaml)
    start_epoch: int = Field(5, ge=0)  # classification-only warm-up epochs before L_aff
    alpha1: float = Field(0.25, gt=0, lt=1)  # Eq. 16 background threshold
    alpha2: float = Field(0.7, gt=0, lt=1)  # Eq. 16 foreground threshold
    weights: Literal["per_image", "dataset"] = "per_image"  # paper | authors' dataset-wide file
    refine_layers: int = Field(0, ge=0)  # 0 = all layers (paper); K = the first K only (authors' code)
    loss_layers: int = Field(0, ge=0)  # 0 = all layers (paper); K = the last K only (authors' code)
    par_scale: float = Field(0.5, gt=0, le=1)  # image resolution PAR runs at during training

    @model_validator(mode="after")
    def _alphas(self) -> "AReAM":
        if self.alpha1 >= self.alpha2:
            raise ValueError("alpha1 must be < alpha2")
        return self


class PAR(Section):
    c_i: float = Field(0.3, gt=0)
    c_l: float = Field(0.3, gt=0)
    w_i: float = Field(1.0, ge=0)
    w_l: float = Field(0.01, ge=0)
    dilations: list[int] = [1, 2, 4, 8, 12, 24]
    iterations: int = Field(10, ge=1)


class Cams(Section):
    variants: list[Literal["cam", "avg", "aream", "first_k"]] = ["cam", "avg", "aream", "first_k"]
    first_k: int = Field(3, ge=1)  # must not exceed the classifier's depth (checked at export)
    scales: list[float] = [1.0, 0.75, 1.25]
    flip: bool = True
    stride: int = Field(4, ge=1)  # stored at image size / stride
    batch_size: int = Field(16, ge=1)
    splits: list[str] = ["train", "val"]  # manifest splits exported
    sweep: list[float] = [0.0, 0.8, 0.01]  # background threshold start, stop (inclusive), step
    normalize: Literal["minmax", "max"] = "minmax"  # per-class scaling of the merged maps to [0, 1]

    @model_validator(mode="after")
    def _check(self) -> "Cams":
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
    num_images: int = Field(32, ge=1)
    num_figures: int = Field(4, ge=0)
    batch_size: int = Field(8, ge=1)
    scale: float = Field(1.0, gt=0)  # single test scale of the analysis (no flip: one forward per image)


class Post(Section):
    cam_variant: Literal["cam", "avg", "aream", "first_k"] = "cam"  # input of PAR / CRF / PSA (voc profile: avg)


class CRFKernels(Section):
    """The dense CRF's kernels (pydensecrf): Gaussian (position) and bilateral (position + colour)."""
    gauss_sxy: float = Field(3, gt=0)
    gauss_compat: float = Field(3, ge=0)
    bi_sxy: float = Field(80, gt=0)
    bi_srgb: float = Field(13, gt=0)
    bi_compat: float = Field(10, ge=0)
    iterations: int = Field(10, ge=1)


class CRF(CRFKernels):
    alpha: float = Field(8, gt=0)  # background score (1 - max)^alpha for the CRF scores output
    alpha_low: float = Field(4, gt=0)  # low background: confident foreground (PSA)
    alpha_high: float = Field(32, gt=0)  # high background: confident background (PSA)


class PSA(Section):
    backbone: str = "resnet18"
    pretrained: str = "none"
    crop_size: int = Field(96, ge=16)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    embed_dim: int = Field(128, ge=1)  # AffinityNet embedding channels
    radius: int = Field(5, ge=2)
    feature_stride: int = Field(4, ge=1)
    alpha: float = Field(16, gt=0)  # background channel (1 - max)^alpha of the random-walk input
    beta: float = Field(8, gt=0)
    logt: int = Field(4, ge=0)  # t = 2^logt walk steps (the reference: 8 at stride 8 on VOC-sized images)
    amp: bool = True  # used on CUDA only
    seed: int = 0


class Pseudo(Section):
    source: Literal["cam", "avg", "aream", "first_k", "par", "crf", "psa"] = "psa"
    alpha1: float = Field(0.25, gt=0, lt=1)
    alpha2: float = Field(0.7, gt=0, lt=1)

    @model_validator(mode="after")
    def _alphas(self) -> "Pseudo":
        if self.alpha1 >= self.alpha2:
            raise ValueError("alpha1 must be < alpha2")
        return self


class Seg(Section):
    labels: Literal["pseudo", "gt"] = "pseudo"
    arch: Literal["deeplabv3plus", "deeplabv3", "deeplabv2"] = "deeplabv3plus"
    encoder: str = "resnet18"
    encoder_weights: str = "none"  # none | imagenet | path/to/weights.pth
    output_stride: Literal[0, 8, 16] = 0  # 0 = the architecture's default (v3+: 16, v3 / v2: 8)
    decoder_channels: int = Field(256, ge=8)  # ASPP / decoder width (deeplabv3plus, deeplabv3)
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(16, ge=2)  # global batch (split over DDP processes)
    optimizer: Literal["sgd", "adamw"] = "adamw"  # sgd (DeepLab recipe) | adamw (faster from scratch)
    lr: float = Field(1e-3, gt=0)
    head_lr_mult: float = Field(1.0, gt=0)  # decoder / classifier learning-rate multiplier
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    poly_power: float = Field(0.9, ge=0)
    crop_size: int = Field(96, ge=16)
    scale_range: list[float] = Field([0.75, 1.5], min_length=2, max_length=2)
    hflip: bool = True
    amp: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _scales(self) -> "Seg":
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError("scale_range must be [low, high] with 0 < low <= high")
        return self


class UpperBound(Section):
    enabled: bool = True  # train_seg_gt / evaluate_gt train and score the ground-truth model; false skips both


class EvalCRF(CRFKernels):
    """Test-time dense CRF on the segmenter's probabilities (DeepLab-style; its own kernels, so that a
    pseudo-label CRF edit does not rerun evaluation)."""
    enabled: bool = False


class Eval(Section):
    scales: list[float] = Field([1.0], min_length=1)
    flip: bool = True
    crf: EvalCRF = EvalCRF()
    num_overlays: int = Field(6, ge=0)

    @model_validator(mode="after")
    def _scales(self) -> "Eval":
        if any(s <= 0 for s in self.scales):
            raise ValueError("scales must all be > 0")
        return self


class Params(Section):
    runtime: Runtime = Runtime()
    dataset: Dataset = Dataset()
    classifier: Classifier = Classifier()
    train_cls: TrainCls = TrainCls()
    aream: AReAM = AReAM()
    par: PAR = PAR()
    cams: Cams = Cams()
    analysis: Analysis = Analysis()
    post: Post = Post()
    crf: CRF = CRF()
    psa: PSA = PSA()
    pseudo: Pseudo = Pseudo()
    seg: Seg = Seg()
    upper_bound: UpperBound = UpperBound()
    eval: Eval = Eval()


# ----------------------------------------------------------------------------------------------


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against params.yaml)"
        got = e.get("input")
        shown = "" if e["type"] == "extra_forbidden" or isinstance(got, dict) else f" (got {got!r})"
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


def load_params(path: str | Path = PARAMS_FILE, overrides: dict | None = None) -> Params:
    """Load and validate ``params.yaml`` (optionally merged with nested ``overrides``)."""
    path = Path(path)
    raw = read_yaml(path)
    if overrides:
        raw = deep_merge(raw, overrides)
    return parse_params(raw, str(path.name))


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
    parse_params(raw, str(path.name))  # every key of a profile must be a real parameter
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


def params_hash(section: BaseModel | dict) -> str:
    """Stable short hash of a (section of the) parameters, to tag checkpoints."""
    import hashlib
    import json

    data = section.model_dump() if isinstance(section, BaseModel) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.config", description=__doc__,
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

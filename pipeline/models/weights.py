"""The one place that turns starting weights that cannot be used into one :class:`~pipeline.config.ConfigError`
line naming the params key: a weights value that names nothing usable (:func:`check_weight_params`, run by stage
check before any output is deleted), a weights file that does not fit the configured network
(:func:`loading_weights`, :func:`check_state_fits`, :func:`mismatch_summary`), and hub weights that cannot be
downloaded (:func:`hub_error`).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Mapping, Sequence

from pipeline.config import WEIGHTS_DIR, ConfigError, Params, weights_file
from pipeline.vocabulary import (BUILT_WEIGHTS, IMAGENET_CNN, IMAGENET_CNN_BACKBONE, PRETRAINED_VIT, SMP_WEIGHTS,
                                 TIMM_WEIGHTS, WEIGHT_KEYWORDS)

# classification heads a whole-network weights file may carry beyond a backbone or encoder (EfficientNet: conv_head,
# bn2); ``model.``: smp's tu- encoders hold the timm network as ``model``
HEAD_PREFIXES = tuple(p + h for p in ("", "model.") for h in ("fc.", "classifier.", "head.", "last_linear.", "head_fc.",
                                                              "conv_head.", "bn2."))
# torch's load_state_dict error: one line per tensor (a ViT of another width: ~150 lines)
_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
                            r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)")
_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: ((?:\"[^\"]*\"(?:, )?)+)")
# where the errors of a failed download come from when they are not OSErrors
_NETWORK_MODULES = ("huggingface_hub", "requests", "httpx", "httpcore", "urllib3")

Shape = Sequence[int]


def state_mismatch(state: Mapping[str, Any], own: Mapping[str, Any]) -> tuple[list[tuple[str, Shape, Shape]],
                                                                            list[str], list[str]]:
    """What keeps the state dict ``state`` (a file's) from loading into a model whose state dict is ``own``:
    (key, file shape, model shape) of each tensor of another shape, the missing keys, the unexpected keys."""
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    return shapes, [k for k in own if k not in state], [k for k in state if k not in own]


def mismatch_summary(shapes: Sequence[tuple[str, Shape, Shape]], missing: Sequence[str] = (),
                     unexpected: Sequence[str] = ()) -> str:
    """One line on a state dict that does not fit a model: how many tensors of each kind, one example each
    (``2 tensors mismatch in shape (e.g. blocks.0.attn.qkv.weight: file [1152, 384] vs model [576, 192])``)."""
    parts = []
    if shapes:
        key, file_shape, model_shape = shapes[0]
        parts.append(f"{len(shapes)} tensors mismatch in shape (e.g. {key}: file {list(file_shape)} vs model "
                     f"{list(model_shape)})")
    if missing:
        parts.append(f"{len(missing)} tensors missing from the file (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors in the file (e.g. {unexpected[0]})")
    return "; ".join(parts)


def check_state_fits(key: str, source: str | Path, model: str, state: Mapping[str, Any],
                     own: Mapping[str, Any]) -> None:
    """One ConfigError line unless the state dict ``state`` of the weights file ``source`` (params key ``key``)
    fills every tensor of ``own`` (the state dict of ``model``, named in the message) at its shape; head keys
    (:data:`HEAD_PREFIXES`) that ``own`` lacks are ignored."""
    state = {k: v for k, v in state.items() if k in own or not k.startswith(HEAD_PREFIXES)}
    shapes, missing, unexpected = state_mismatch(state, own)
    if shapes or missing or unexpected:
        raise ConfigError(f"{key}: weights file {str(source)!r} does not fit {model}: "
                          f"{mismatch_summary(shapes, missing, unexpected)}")


def load_error_summary(err: BaseException) -> str | None:
    """:func:`mismatch_summary` of the error ``load_state_dict`` raised; None for any other error."""
    text = str(err)
    if not isinstance(err, RuntimeError) or "Error(s) in loading state_dict" not in text:
        return None
    shapes = [(k, _dims(a), _dims(b)) for k, a, b in _SIZE_MISMATCH.findall(text)]
    keys = {kind: re.findall(r'"([^"]*)"', names) for kind, names in _KEYS.findall(text)}
    summary = mismatch_summary(shapes, keys.get("Missing", ()), keys.get("Unexpected", ()))
    return summary or text.strip().splitlines()[0]


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split(",") if d.strip())


def is_network_error(err: BaseException) -> bool:
    """Whether ``err`` is how a download fails (offline, no DNS, not cached under ``HF_HUB_OFFLINE``)."""
    return isinstance(err, OSError) or type(err).__module__.split(".")[0] in _NETWORK_MODULES


def hub_error(key: str, err: BaseException) -> ConfigError:
    """The one line for hub weights (``timm`` / ``imagenet``) that could not be downloaded."""
    return ConfigError(f"{key}: hub weights could not be downloaded ({type(err).__name__}); they need internet "
                       "(or the hub's cache): offline, name a local weights file under weights/ instead "
                       "(see weights/README.md)")


@contextlib.contextmanager
def loading_weights(key: str, source: str | Path | None, model: str) -> Iterator[None]:
    """Around the code that loads the starting weights of the params key ``key`` into ``model`` (its name, for
    the message): from the local file ``source``, or from the hub when it is None. A state dict that does not
    fit and, from the hub, a failed download become one ConfigError line; any other error passes."""
    try:
        yield
    except Exception as err:
        if isinstance(err, ConfigError):
            raise
        summary = load_error_summary(err)
        if summary is not None:
            where = "the hub weights do" if source is None else f"weights file {str(source)!r} does"
            raise ConfigError(f"{key}: {where} not fit {model}: {summary}") from None
        if source is None and is_network_error(err):
            raise hub_error(key, err) from None
        raise


# the params keys naming starting weights, and the keywords each takes
WEIGHT_PARAMS = (("classifier.pretrained", TIMM_WEIGHTS), ("psa.pretrained", TIMM_WEIGHTS),
                 ("seg.encoder_weights", SMP_WEIGHTS), ("calibration.pretrained", TIMM_WEIGHTS),
                 ("pretrain.teacher", TIMM_WEIGHTS))


def check_built_weights(params: Params, dotted: str, value: str) -> None:
    """A weights file that a stage of the DAG writes fits only the networks it is made for."""
    fits = {PRETRAINED_VIT: ("classifier.pretrained",), IMAGENET_CNN: ("psa.pretrained", "seg.encoder_weights",
                                                                         "calibration.pretrained", "pretrain.teacher")}
    if dotted not in fits[value]:
        raise ConfigError(f"{dotted}: {value} (written by stage {BUILT_WEIGHTS[value]}) is for "
                          f"{' / '.join(fits[value])}, not for {dotted}")
    if dotted == "pretrain.teacher" and params.pretrain.teacher_backbone != IMAGENET_CNN_BACKBONE:
        raise ConfigError(f"pretrain.teacher: {value} holds a whole {IMAGENET_CNN_BACKBONE}, not "
                          f"pretrain.teacher_backbone {params.pretrain.teacher_backbone!r} (set it to "
                          f"{IMAGENET_CNN_BACKBONE}, or name another teacher)")
    if value == PRETRAINED_VIT and not params.pretrain.enabled:
        raise ConfigError(f"{dotted}: {value} is written by stage pretrain, which pretrain.enabled: false skips "
                          "(set classifier.pretrained: none, or pretrain.enabled: true)")


def check_weight_params(params: Params) -> None:
    """Each weights key of ``params`` (:data:`WEIGHT_PARAMS`) is one of its keywords, a file a stage of the DAG
    writes that fits it, or a file under weights/ (DVC depends on weights/<value>); stage check runs this before
    any stage's outputs are deleted."""
    for dotted, keywords in WEIGHT_PARAMS:
        section, key = dotted.split(".")
        value = getattr(getattr(params, section), key)
        if value in keywords:
            continue
        if value in BUILT_WEIGHTS:  # written by a stage of the DAG (after this one)
            check_built_weights(params, dotted, value)
            continue
        if value in WEIGHT_KEYWORDS:
            raise ConfigError(f"{dotted}: {value!r} is not a choice here (use {' or '.join(keywords)}, or a file "
                              f"under {WEIGHTS_DIR}/)")
        path = Path(value)
        if path.is_absolute() or ".." in path.parts:
            raise ConfigError(f"{dotted}: {value!r}: give a file name under {WEIGHTS_DIR}/ (copy or symlink the "
                              f"file there: ln -s {value} {WEIGHTS_DIR}/{path.name}), so DVC tracks its content")
        if not weights_file(value).is_file():
            raise ConfigError(f"{dotted}: weights file {weights_file(value)} not found")

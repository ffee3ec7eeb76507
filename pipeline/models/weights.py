"""The one place that turns starting weights that cannot be used into one :class:`~pipeline.config.ConfigError`
line naming the params key: a weights file that does not fit the configured network (:func:`loading_weights`,
:func:`check_state_fits`, :func:`mismatch_summary`), and hub weights that cannot be downloaded (:func:`hub_error`).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from pipeline.config import ConfigError

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

"""Loading the trained classifier (stages export_cams and analyze_layers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.common.io import DataError
from pipeline.config import Params
from stages._common import CLASSIFIER


def load_trained_classifier(params: Params, folder: Path = CLASSIFIER) -> tuple[Any, Any]:
    """(classifier in eval mode, device) from ``folder``/model.pt; on CPU torch gets
    ``runtime.workers`` threads (the stage runs one batched forward at a time)."""

    from pipeline.common.device import resolve_device, use_cpu_threads
    from pipeline.common.parallel import num_workers
    from pipeline.models.vit import load_classifier

    path = folder / "model.pt"
    if not path.exists():
        raise DataError(f"{path}: classifier not found (run stage train_cls first)")
    device = resolve_device(params.runtime.device)
    model = load_classifier(path, device)
    model.eval()
    use_cpu_threads(device, num_workers(params.runtime))
    return model, device

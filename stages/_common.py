"""What every stage shares: the output paths of the DAG (mirrored in dvc.yaml) and the entry wrapper."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from pipeline.config import ConfigError, Params, load_params
from pipeline.io import DataError

DATA = Path("data")
MODELS = Path("models")
REPORTS = Path("reports")

PREPARED = DATA / "prepared"                 # prepare: manifest.json (+ generated / rasterised files)
MANIFEST = PREPARED / "manifest.json"
CAMS = DATA / "cams"                         # export_cams: <id>.npz per image
SCORES = DATA / "scores"                     # postprocess_<m>: SCORES/<m>/<id>.npz
PSEUDO = DATA / "pseudo"                     # pseudo_labels: <id>.png (VOC palette)
CLASSIFIER = MODELS / "classifier"           # train_cls: model.pt
CLASSIFIER_CKPT = MODELS / "classifier_ckpt"  # train_cls: resumable checkpoint (persist)
AFFINITYNET = MODELS / "affinitynet"         # train_psa: model.pt
SEGMENTER = MODELS / "segmenter"             # train_seg: model.pt
SEGMENTER_CKPT = MODELS / "segmenter_ckpt"   # train_seg: resumable checkpoint (persist)


def stage_main(run: Callable[[Params], None]) -> None:
    """Load params.yaml, run the stage; a user-fixable error prints one line and exits 2."""
    start = time.perf_counter()
    try:
        params = load_params()
        run(params)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; rerun the stage to continue", file=sys.stderr)
        sys.exit(130)
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)

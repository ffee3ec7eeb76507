"""The pipeline's words, each defined once: the params schema builds its choices from them, and the stages, the
report and the benchmarks read them from here."""

from __future__ import annotations

IGNORE_INDEX = 255  # the label of pixels no loss or score counts (VOC's object-boundary band)

CAM_VARIANTS = ("cam", "avg", "aream", "first_k")  # the exported CAM variants (pipeline.cams.infer)
REFINED_VARIANTS = ("avg", "aream", "first_k")  # the variants that use an affinity matrix
POST_METHODS = ("par", "crf", "psa")  # the post-processing methods (pipeline.postprocess)
LABEL_SOURCES = CAM_VARIANTS + POST_METHODS  # what pseudo labels can be made from

TIMM_WEIGHTS = ("none", "timm")  # keywords of a timm network's weights: random init | the hub (needs internet)
SMP_WEIGHTS = ("none", "imagenet")  # keywords of an smp encoder's weights: random init | smp's download
WEIGHT_KEYWORDS = ("none", "timm", "imagenet")  # every keyword; anything else names a file under weights/
PRETRAINED_VIT = "pretrained_vit.pth"  # written under weights/ by stage pretrain (the classifier's start)
IMAGENET_CNN = "efficientnet_lite0.pth"  # written under weights/ by stage import_weights (the CNNs' start)
IMAGENET_CNN_BACKBONE = "tf_efficientnet_lite0"  # the timm network IMAGENET_CNN's whole state dict fits
BUILT_WEIGHTS = {PRETRAINED_VIT: "pretrain", IMAGENET_CNN: "import_weights"}  # weights file -> its stage

"""Datasets: the toy-VOC generator, the VOC and COCO readers, and the prepared-manifest contract.

Later stages need only :mod:`pipeline.data.manifest`; the readers are used by stage ``prepare``.
"""

from pipeline.data.manifest import Manifest, Sample, labels_from_mask, load_manifest, multi_hot, validate_mask

__all__ = ["Manifest", "Sample", "labels_from_mask", "load_manifest", "multi_hot", "validate_mask"]

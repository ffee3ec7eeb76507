"""Stage `generate_toy`: write the embedded toy dataset, in PASCAL VOC layout, to data/toyvoc/.

Reads the params section ``dataset.toy`` only; writes ``data/toyvoc/VOCdevkit/VOC2012`` (JPEGImages,
SegmentationClass, ImageSets/Segmentation/{train,val,trainval}.txt). The default ``dataset.root`` points
there, so stage ``prepare`` reads the toy set through the same VOC reader (and the same DVC dependency on
``${dataset.root}``) as a real VOC root. The same seed gives the same bytes. With a real dataset this
stage stays up to date and costs nothing.
"""

from __future__ import annotations

from pipeline.common.io import atomic_dir
from pipeline.common.parallel import map_items
from pipeline.config import Params
from pipeline.data.toyvoc import generate_toyvoc
from stages._common import TOYVOC, stage_main


def run(params: Params) -> None:
    spec = params.dataset.toy
    with atomic_dir(TOYVOC) as tmp:
        generate_toyvoc(tmp, spec, lambda fn, items, desc: map_items(fn, items, params.runtime, desc))
    print(f"generate_toy: {spec.num_train} train + {spec.num_val} val images, {spec.num_classes} classes "
          f"-> {TOYVOC}", flush=True)


if __name__ == "__main__":
    stage_main(run)

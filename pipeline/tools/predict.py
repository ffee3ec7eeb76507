"""Segment your own images with a trained model.

Usage::

    python -m pipeline.tools.predict --model models/segmenter/model.pt --out predictions/ img1.jpg photos/ ...

Inputs are image files or folders (their .jpg / .jpeg / .png files, not recursive). For each
image ``<stem>.<ext>`` it writes

- ``OUT/<stem>.png``: the label map, a single-channel PNG with the VOC palette (0 background,
  k = the model's class k: the command first prints them to stderr, ``classes: 0 background, 1 ...``);
- ``OUT/<stem>_overlay.jpg``: the prediction blended over the image.

Options: ``--scales 0.5,1.0,1.5`` multi-scale inference (softmax averaged; default 1.0),
``--flip`` adds horizontally flipped passes, ``--crf`` refines with a dense CRF (the default
``eval.crf`` kernels, as stage evaluate), ``--device auto|cpu|cuda|cuda:N``. A missing model stops with a message;
unreadable images are reported and skipped, and the command then exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pipeline.common.progress import progress as progress_lines
from pipeline.config import EvalCRF, load_params

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files as given plus the images directly inside given folders (sorted); raises
    FileNotFoundError naming a missing input and ValueError when two outputs would collide."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen and seen[f.stem].resolve() != f.resolve():
            raise ValueError(f"{seen[f.stem]} and {f} would both write {f.stem}.png; rename one")
        seen[f.stem] = f
    return list(dict.fromkeys(seen.values()))


def predict_files(model_path: str | Path, files: list[Path], out: str | Path, scales: list[float] = (1.0,),
                  flip: bool = False, crf: EvalCRF | None = None, device: str = "auto", progress: bool = True,
                  max_side: int = 500) -> list[str]:
    """Write ``<stem>.png`` and ``<stem>_overlay.jpg`` for every file; returns the error messages
    of the images that could not be read (they are skipped). ``crf``: the dense CRF's kernels (the ``eval.crf``
    section), None for none. With ``progress``, the model's class names
    (``classes: 0 background, 1 ...``) and the progress go to stderr."""
    from pipeline.common.device import resolve_device
    from pipeline.common.io import DataError, read_rgb, write_label_png, write_rgb
    from pipeline.common.palette import overlay
    from pipeline.evaluate.inference import cap_side, crf_refine, image_tensor, label_to_size, predict_probs, to_label
    from pipeline.models.segmenter import load_segmenter

    dev = resolve_device(device)
    model = load_segmenter(model_path, dev)
    if progress:
        print("classes: " + ", ".join(f"{k} {name}" for k, name in enumerate(model.class_names)), file=sys.stderr)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    errors = []
    with torch.no_grad():
        for f in progress_lines(files, desc="predict", enabled=progress):
            try:
                image = read_rgb(f)
            except DataError as err:
                errors.append(str(err))
                continue
            small = cap_side(image, max_side)  # bounded memory: the network and the CRF at <= max_side
            probs = predict_probs(model, image_tensor(small, dev), scales, flip, amp=dev.type == "cuda")
            if crf is not None:
                label = to_label(crf_refine(small, probs[0].cpu().numpy(), crf))
            else:
                label = to_label(probs)
            del probs
            label = label_to_size(label, image.shape[:2])
            write_label_png(out / f"{f.stem}.png", label)
            write_rgb(out / f"{f.stem}_overlay.jpg", overlay(image, label))
    return errors


def _scales(text: str) -> list[float]:
    """``"0.5,1.0,1.5"`` -> [0.5, 1.0, 1.5] (each > 0)."""
    try:
        scales = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not scales or any(v <= 0 for v in scales):
        raise argparse.ArgumentTypeError(f"scales must be numbers > 0, got {text!r}")
    return scales


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import plain_doc

    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.predict", description=plain_doc(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files or folders of .jpg / .png images")
    parser.add_argument("--model", default="models/segmenter/model.pt", help="trained model (stage train_seg)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--scales", type=_scales, default=[1.0],
                        help="comma-separated inference scales, e.g. 0.5,1.0,1.5 (default: 1.0)")
    parser.add_argument("--flip", action="store_true", help="also average horizontally flipped predictions")
    parser.add_argument("--crf", action="store_true", help="refine with a dense CRF (params.yaml's eval.crf)")
    parser.add_argument("--max-side", type=int, default=500, metavar="PX",
                        help="shrink larger images to this longest side for the network and the CRF; the label "
                             "map is scaled back to the image's size (default: 500, VOC's largest side)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    from pipeline.common.io import DataError

    try:
        files = collect_inputs(args.inputs)
        if not files:
            raise ValueError(f"no .jpg / .png images in {', '.join(args.inputs)}")
        if not Path(args.model).is_file():
            raise DataError(f"{args.model}: segmentation model not found (train one with `dvc repro train_seg` "
                            "or pass --model)")
        if args.max_side < 32:
            raise ValueError(f"--max-side: {args.max_side} (must be >= 32)")
        kernels = load_params().eval.crf if args.crf else None  # params.yaml's eval.crf, through the schema
        errors = predict_files(args.model, files, args.out, args.scales, args.flip, kernels, args.device,
                               max_side=args.max_side)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    done = len(files) - len(errors)
    print(f"wrote {done} label maps and overlays to {args.out}" + (f"; {len(errors)} images failed" if errors else ""),
          file=sys.stderr)
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""What it costs to make the dataset root a DVC dependency: `dvc status` on a VOC-sized root.

Builds a scratch DVC project whose one stage depends on a synthetic root with VOC 2012's file count
(17,125 JPEGImages + 2,913 SegmentationClass by default, random bytes of VOC's mean sizes) and times
`dvc status`: the first call (DVC hashes every file), later calls (DVC's state database: a stat per
file), after one file changed, and the same project without the root as the baseline.

    python benchmarks/bench_dvc_status.py [--images 17125] [--masks 2913] [--kb 110]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def dvc(*args: str, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def project(base: Path, dep: str | None) -> Path:
    repo = base / ("with_root" if dep else "baseline")
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q", cwd=repo)
    (repo / "input.txt").write_text("x\n")
    deps = f"\n      - {dep}" if dep else ""
    (repo / "dvc.yaml").write_text("stages:\n  prepare:\n    cmd: echo ok > out.txt\n    deps:\n"
                                   f"      - input.txt{deps}\n    outs:\n      - out.txt\n")
    dvc("repro", "-q", cwd=repo)
    return repo


def main() -> None:
    cli = argparse.ArgumentParser(prog=f"python benchmarks/{Path(__file__).name}", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--images", type=int, default=17125)
    cli.add_argument("--masks", type=int, default=2913)
    cli.add_argument("--kb", type=int, default=110, help="mean image size (masks get a fifth of it)")
    args = cli.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-dvc-status-"))
    try:
        root = base / "VOC2012"
        start = time.perf_counter()
        for folder, count, kb in (("JPEGImages", args.images, args.kb),
                                  ("SegmentationClass", args.masks, args.kb // 5)):
            (root / folder).mkdir(parents=True)
            for i in range(count):
                (root / folder / f"{i:06d}.bin").write_bytes(os.urandom(kb * 1024))
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**30
        print(f"root: {args.images + args.masks} files, {size:.2f} GiB, written in {time.perf_counter() - start:.1f} s")
        baseline = project(base, None)
        repo = project(base, str(root))  # repro has hashed the root once already; drop that to time it
        shutil.rmtree(repo / ".dvc" / "tmp", ignore_errors=True)
        from dvc.repo import Repo

        with Repo(str(repo)) as r:
            site = Path(r.site_cache_dir)
        shutil.rmtree(site, ignore_errors=True)
        first = dvc("status", cwd=repo)
        later = min(dvc("status", cwd=repo) for _ in range(3))
        base_t = min(dvc("status", cwd=baseline) for _ in range(3))
        (root / "JPEGImages" / "000000.bin").write_bytes(os.urandom(args.kb * 1024))
        changed = dvc("status", cwd=repo)
        print(f"dvc status, no dataset dependency (baseline): {base_t:.2f} s")
        print(f"dvc status, first call (hashes every file):   {first:.2f} s ({first / base_t:.1f}x)")
        print(f"dvc status, later calls (stat per file):      {later:.2f} s ({later / base_t:.1f}x)")
        print(f"dvc status, one file changed:                  {changed:.2f} s ({changed / base_t:.1f}x)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

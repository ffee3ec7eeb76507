"""Which project files a stage's code runs: the import closure of a module inside this repository.

``dvc.yaml`` must list exactly these files as a stage's code dependencies (``tests/stages/test_dag.py``
checks it), and a training stage's resume tag hashes them (:func:`pipeline.common.digests.code_sha256`), so a
code edit is never mistaken for an interruption. Imports are read from the source (every ``import`` statement, at
module level or inside a function), so a lazily imported module counts too; package ``__init__.py`` files count because
importing a submodule runs them.

``python -m pipeline.common.codedeps stages.train_cls`` prints the list for a stage module.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "stages")  # the project's own top-level packages


def module_path(name: str, root: Path = ROOT) -> Path | None:
    """``pipeline.common.io`` -> ``pipeline/common/io.py`` (or a package's ``__init__.py``); None outside the
    project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module name an import statement in ``path`` may load (``from a import b``: ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def closure(module: str, root: Path = ROOT) -> list[str]:
    """Sorted repository-relative paths of every project file that running ``module`` may execute."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way, then the module itself
            sub = ".".join(parts[:i])
            if sub in seen:
                continue
            path = module_path(sub, root)
            if path is None:
                continue
            seen[sub] = path
            todo.extend(_imported_names(path, sub))
    return sorted(p.relative_to(root).as_posix() for p in seen.values())


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import plain_doc

    parser = argparse.ArgumentParser(prog="python -m pipeline.common.codedeps", description=plain_doc(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", default=["stages.train_cls"], metavar="MODULE",
                        help="dotted module names (default: stages.train_cls)")
    for mod in parser.parse_args(argv).modules:
        if module_path(mod) is None:
            print(f"error: {mod}: not a module of this project ({', '.join(PACKAGES)})", file=sys.stderr)
            return 2
        print(f"{mod}:")
        for rel in closure(mod):
            print(f"  - {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The folder shows the architecture: pipeline's subpackages form layers, and an import only points down them
(the order the README's map of the code lists them in). An upward import, or a cycle, fails here."""

import ast

from pipeline.config import ROOT

# lowest first: a module may import its own unit and any unit before it
LAYERS = ("vocabulary", "config", "metrics", "common", "models", "data", "cams", "postprocess", "train", "evaluate",
          "analysis", "tools")


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "pipeline" else None


def _imports(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_every_module_belongs_to_a_layer():
    units = {_unit(".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in (ROOT / "pipeline").rglob("*.py")}
    assert units - {None, "__init__"} <= set(LAYERS)


def test_imports_only_point_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in (ROOT / "pipeline").rglob("*.py"):
        source = _unit(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if source not in rank:
            continue
        for name in _imports(path):
            target = _unit(name)
            if target in rank and rank[target] > rank[source]:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []

"""The import closure behind dvc.yaml's code dependencies and the resume tags, on a hand-made package."""

import textwrap

from pipeline.common.codedeps import closure
from pipeline.common.digests import code_sha256


def _tree(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_closure_follows_every_kind_of_project_import(tmp_path):
    _tree(tmp_path, {
        "stages/__init__.py": "",
        "stages/one.py": """
            import numpy
            from pipeline import a
            from pipeline.sub.b import thing

            def lazy():
                import pipeline.c
        """,
        "pipeline/__init__.py": "",
        "pipeline/a.py": "from .d import x\n",          # relative import
        "pipeline/d.py": "x = 1\n",
        "pipeline/sub/__init__.py": "from pipeline.e import y\n",  # a package __init__ that imports
        "pipeline/sub/b.py": "thing = 2\n",
        "pipeline/c.py": "",
        "pipeline/e.py": "y = 3\n",
        "pipeline/unused.py": "",
    })
    assert closure("stages.one", tmp_path) == [
        "pipeline/__init__.py", "pipeline/a.py", "pipeline/c.py", "pipeline/d.py", "pipeline/e.py",
        "pipeline/sub/__init__.py", "pipeline/sub/b.py", "stages/__init__.py", "stages/one.py"]


def test_code_sha256_changes_with_any_file_of_the_closure_only(tmp_path):
    _tree(tmp_path, {"stages/__init__.py": "", "stages/one.py": "import pipeline.a\n",
                     "pipeline/__init__.py": "", "pipeline/a.py": "x = 1\n", "pipeline/other.py": ""})
    before = code_sha256("stages.one", tmp_path)
    (tmp_path / "pipeline/other.py").write_text("# not imported by stages.one\n")
    assert code_sha256("stages.one", tmp_path) == before
    (tmp_path / "pipeline/a.py").write_text("x = 1  # an edit\n")
    assert code_sha256("stages.one", tmp_path) != before

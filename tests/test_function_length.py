"""No function in edge_sdk/ over 60 lines unless its docstring says why, with the marker "long:"
(PREAMBLE/issue 14: "no function over ~60 lines without a reason in its docstring"). ast-based:
a function's lines are ``end_lineno - lineno + 1`` (decorators excluded, nested functions counted
inside their parent and again on their own)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60
MARKER = "long:"

# Known offenders awaiting a split (none today). A name here that is no longer long fails the
# test, so the list cannot go stale.
ALLOWED: set[str] = set()


def long_functions(root: Path = ROOT / "edge_sdk", limit: int = LIMIT) -> dict[str, int]:
    """``{"path::qualified.name": lines}`` of every function over ``limit`` lines whose docstring
    lacks the marker."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))

        def visit(node, prefix=""):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = prefix + child.name
                    if not isinstance(child, ast.ClassDef):
                        lines = child.end_lineno - child.lineno + 1
                        if lines > limit and MARKER not in (ast.get_docstring(child) or ""):
                            out[f"{rel}::{name}"] = lines
                    visit(child, name + ".")
                else:
                    visit(child, prefix)

        visit(tree)
    return out


def test_no_long_function_without_a_reason():
    found = long_functions()
    new = {k: v for k, v in found.items() if k not in ALLOWED}
    assert not new, ("functions over %d lines without %r in the docstring (split them, or say why):\n" % (LIMIT, MARKER)
                     + "\n".join(f"  {k}: {v} lines" for k, v in sorted(new.items())))
    stale = sorted(ALLOWED - set(found))
    assert not stale, f"no longer long (or gone): remove from ALLOWED: {stale}"


@pytest.mark.parametrize("doc, flagged", [("", True), ("long: one table per section, in order", False)])
def test_the_check_catches_what_it_must(tmp_path, doc, flagged):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (pkg / "m.py").write_text(f'class C:\n    def f(self):\n        """{doc}"""\n'
                              + body.replace("\n    ", "\n        ").replace("    x0", "        x0", 1) + "\n"
                              + "def short():\n    return 1\n")
    assert long_functions(pkg) == ({"pkg/m.py::C.f": LIMIT + 2} if flagged else {})

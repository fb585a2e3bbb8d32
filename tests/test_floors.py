"""The floors are a contract (pyproject.toml [tool.importlinter]; docs/design.md has the table):
no module imports a higher floor or a sideways package, and no import cycle anywhere in edge_sdk.
Run by hand: ``lint-imports`` in the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY = ("__init__.py", "top.py", "left.py", "right.py", "ground.py")


def _check(root: Path) -> tuple[list[str], str]:
    """(names of the broken contracts, import-linter's report) for the pyproject.toml in ``root``."""
    pytest.importorskip("importlinter", reason="import-linter comes with the test extra: pip install -e '.[test]'")
    run = ("import sys; from importlinter.cli import lint_imports; "
           "sys.exit(lint_imports(no_cache=True, no_logo=True))")
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", run], cwd=root, env=env, capture_output=True, text=True,
                         timeout=120)
    broken = [line[: -len(" BROKEN")] for line in out.stdout.splitlines() if line.endswith(" BROKEN")]
    assert out.returncode == (1 if broken else 0), out.stdout + out.stderr
    return broken, out.stdout


def test_the_floors_hold():
    broken, report = _check(ROOT)
    assert not broken, report


def _toy(tmp_path: Path, files: dict[str, str]) -> Path:
    """A package ``toy`` with the same kinds of contracts, to prove the check catches what it must."""
    for name, text in files.items():
        f = tmp_path / "toy" / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent('''
        [tool.importlinter]
        root_package = "toy"
        [[tool.importlinter.contracts]]
        id = "floors"
        name = "floors"
        type = "layers"
        layers = ["toy.top", "toy.left | toy.right", "toy.ground"]
        [[tool.importlinter.contracts]]
        id = "no-cycles"
        name = "no cycles"
        type = "acyclic_siblings"
        ancestors = ["toy"]
        depth = 10
        '''))
    return tmp_path


@pytest.mark.parametrize("files, expect", [
    ({"ground.py": "import toy.top\n", "top.py": ""}, "floors"),                       # runs back up
    ({"left.py": "import toy.right\n", "right.py": ""}, "floors"),                     # sideways
    ({"pair/__init__.py": "", "pair/a.py": "from . import b\n",
      "pair/b.py": "def f():\n    from . import a\n"}, "no cycles"),               # a circle, even a lazy one
    ({"top.py": "import toy.left\n", "left.py": "import toy.ground\n", "ground.py": ""}, None),
])
def test_the_check_catches_what_it_must(tmp_path, files, expect):
    broken, report = _check(_toy(tmp_path, {**dict.fromkeys(TOY, ""), **files}))
    assert broken == ([expect] if expect else []), report

"""Our distribution name is ours: pyproject names ``gemma-edge-sdk`` (PyPI's ``edge-sdk`` is an unrelated
project), and no fix message tells anyone to ``pip install`` something that is not our code or one of
our declared dependencies."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _dist(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_distribution_name_is_ours():
    from edge_sdk.errors import DISTRIBUTION
    proj = _project()
    assert proj["name"] == DISTRIBUTION == "gemma-edge-sdk"
    assert proj["scripts"] == {"edge-sdk": "edge_sdk.cli:main"}


def _tracked() -> list[Path]:
    """The repository's own files (what git tracks): never a venv, a build or generated caches such
    as the arm64 root filesystem under .cache/."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / n for n in out.decode().split("\0") if n and (ROOT / n).is_file()]


def test_every_pip_install_names_our_code_or_a_declared_dependency():
    proj = _project()
    declared = {_dist(r) for r in proj["dependencies"]}
    declared |= {_dist(r) for reqs in proj["optional-dependencies"].values() for r in reqs}
    files = [p for p in _tracked() if p.suffix in (".py", ".md", ".kt", ".toml", ".txt", "")
             and p != Path(__file__).resolve()]
    bad = []
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for m in re.finditer(r"pip install ((?:-[-\w]+ )*)(['\"]?)([^'\"\s)`]+)", text):
            flags, target = m.group(1), m.group(3)
            if "-e" in flags.split() or target.startswith((".", "/", "{")):
                continue                          # this checkout (editable or a path)
            if _dist(target) not in (declared | {proj["name"]}) - {"edge-sdk"}:
                bad.append(f"{p.relative_to(ROOT)}: {m.group(0)}")
    assert not bad, bad


def test_missing_bundler_fix_installs_this_checkout(tmp_path):
    """With LiteRT-LM's builder absent, ``bundle`` says how to install *our* bundle extra."""
    code = ("import sys; sys.modules['litert_lm_builder'] = None; from edge_sdk.cli import main; "
            f"sys.exit(main(['bundle', {str(tmp_path)!r}, '-o', {str(tmp_path / 'm.litertlm')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"pip install -e '{ROOT}[bundle]'" in r.stderr, r.stderr
    assert "edge-sdk[" not in r.stderr

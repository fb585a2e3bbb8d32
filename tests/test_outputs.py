"""``convert --overwrite`` replaces only a directory ``edge-sdk convert`` wrote: never one that holds or
is the source checkpoint, never the working directory, ``$HOME`` or ``/``, never a directory whose
model.json is not ours. Everything refused is one line, exit 2, naming the directory and the fix, and
nothing is touched. (``bundle``'s side of the rule is in test_bundle.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_sdk.cli import main
from edge_sdk.outputs import MODEL_FORMAT, is_model_dir

GEO = ["--context", "16", "--prefill", "4", "--text-only", "--recipe", "float"]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` → its bytes (None for directories)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def ours(multimodal_ckpt, tmp_path_factory) -> Path:
    """A real ``edge-sdk convert`` output directory."""
    out = tmp_path_factory.mktemp("ours") / "model"
    assert main(["convert", str(multimodal_ckpt), "-o", str(out), *GEO]) == 0
    return out


def refused(argv, capsys, *needles) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "fix:" in err and all(n in err for n in needles), err
    return err


def test_model_json_format_is_the_exporters(ours):
    from edge_sdk.litert.export import MODEL_FORMAT as EXPORTED
    assert MODEL_FORMAT == EXPORTED and is_model_dir(ours)


def test_replaces_its_own_output(multimodal_ckpt, ours, tmp_path, capsys):
    out = tmp_path / "model"
    shutil.copytree(ours, out)
    (out / "stale.tflite").write_bytes(b"old")
    argv = ["convert", str(multimodal_ckpt), "-o", str(out), *GEO]
    refused(argv, capsys, str(out), "--overwrite")          # not empty, no --overwrite
    assert main(argv + ["--overwrite"]) == 0
    assert is_model_dir(out) and not (out / "stale.tflite").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]   # no staging or old copy left


def test_refuses_a_directory_that_is_not_ours(multimodal_ckpt, tmp_path, capsys):
    """The issue's ``-o models/tiny-gemma4 --overwrite``: checkpoints, notes, eval results."""
    models = tmp_path / "tiny-gemma4"
    shutil.copytree(multimodal_ckpt, models / "qat")
    (models / "README.md").write_text("notes")
    (models / "eval.json").write_text("{}")
    before = tree(models)
    refused(["convert", str(models / "qat"), "-o", str(models), *GEO, "--overwrite"], capsys,
            str(models), "source checkpoint")
    other = tmp_path / "other"
    shutil.copytree(models, other)
    shutil.rmtree(other / "qat")
    refused(["convert", str(multimodal_ckpt), "-o", str(other), *GEO, "--overwrite"], capsys,
            str(other), "no model.json")
    (other / "model.json").write_text(json.dumps({"format": "someone-else", "files": {}}))
    refused(["convert", str(multimodal_ckpt), "-o", str(other), *GEO, "--overwrite"], capsys,
            str(other), "not written by edge-sdk")
    assert tree(models) == before and sorted(p.name for p in other.iterdir()) == ["README.md", "eval.json",
                                                                                  "model.json"]


def test_refuses_the_source_inside_our_output(multimodal_ckpt, ours, tmp_path, capsys):
    out = tmp_path / "model"
    shutil.copytree(ours, out)
    shutil.copytree(multimodal_ckpt, out / "ckpt")
    before = tree(out)
    refused(["convert", str(out / "ckpt"), "-o", str(out), *GEO, "--overwrite"], capsys,
            str(out), "contains the source checkpoint")
    refused(["convert", str(out / "ckpt"), "-o", str(out / "ckpt"), *GEO, "--overwrite"], capsys,
            "is the source checkpoint")
    assert tree(out) == before


def test_refuses_weights_inside_our_output(multimodal_ckpt, ours, tmp_path, capsys):
    out = tmp_path / "model"
    shutil.copytree(ours, out)
    shutil.copy(multimodal_ckpt / "model.safetensors", out / "model.safetensors")
    before = tree(out)
    refused(["convert", str(multimodal_ckpt), "-o", str(out), *GEO, "--overwrite"], capsys,
            "checkpoint weights", "model.safetensors")
    assert tree(out) == before


def test_refuses_cwd_home_and_root(multimodal_ckpt, ours, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(ours, work)               # even an edge-sdk output is not replaced when it is "."
    before = tree(work)
    monkeypatch.chdir(work)
    refused(["convert", str(multimodal_ckpt), "-o", ".", *GEO, "--overwrite"], capsys,
            "the working directory")
    refused(["convert", str(multimodal_ckpt), "-o", "..", *GEO, "--overwrite"], capsys,
            "contains the working directory")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(work))
    refused(["convert", str(multimodal_ckpt), "-o", str(work), *GEO, "--overwrite"], capsys, "$HOME")
    refused(["convert", str(multimodal_ckpt), "-o", "/", *GEO, "--overwrite"], capsys, "is /")
    assert tree(work) == before

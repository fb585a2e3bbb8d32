"""Bad input or a bad environment is one line on stderr, exit 2, naming the file and the fix; never a
traceback, never exit 0 with nothing done. Walks the verbs through what issue 12 saw."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from edge_sdk.cli import main

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny-gemma4" / "qat"
GEO = ["--text-only", "--context", "32", "--prefill", "8"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    if not (TINY / "config.json").is_file():
        pytest.skip(f"{TINY} not present")
    out = tmp_path_factory.mktemp("cli") / "model"
    assert main(["convert", str(TINY), "-o", str(out), *GEO]) == 0
    return out


def one_line(argv, capsys, *needles) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, rc, err)
    # a stage that ran past a second on a loaded machine prints its progress line first ("edge-sdk
    # convert: ... done in"); the error itself is one line
    err = "".join(ln for ln in err.splitlines(keepends=True) if not re.match(r"edge-sdk \w+: ", ln))
    assert err.startswith("edge-sdk: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert all(n in err for n in needles), (needles, err)
    return err


def test_unwritable_output(model, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    one_line(["convert", str(TINY), "-o", str(blocker / "out"), *GEO], capsys, str(blocker), "fix:")
    one_line(["bundle", str(model), "-o", str(blocker / "m.litertlm")], capsys, str(blocker))
    assert blocker.read_text() == "not a directory"


def test_run_flags(model, tmp_path, capsys):
    one_line(["run", str(model), "--ids", "2,3", "-n", "-5"], capsys, "-n", "at least 1")
    one_line(["run", str(model), "--ids", "2,3", "--threads", "-2"], capsys, "--threads", "at least 1")
    missing = tmp_path / "no" / "such"
    one_line(["run", str(model), "--ids", "2,3", "--logits-out", str(missing / "l.npy")], capsys,
             str(missing), "--logits-out", "fix:")
    assert not (tmp_path / "no").exists()


def test_convert_flags_and_recipe(tmp_path, capsys):
    if not (TINY / "config.json").is_file():
        pytest.skip(f"{TINY} not present")
    one_line(["convert", str(TINY), "-o", str(tmp_path / "c0"), "--text-only", "--context", "0"], capsys,
             "--context", "at least 1")
    err = one_line(["convert", str(TINY), "-o", str(tmp_path / "i4"), "--recipe", "int4", "--text-only",
                    "--context", "32", "--prefill", "8"], capsys, "fix:", "tensor '")
    assert "Config(" not in err and "<" not in err, err        # no Python repr of a config
    assert not (tmp_path / "i4").exists()


def test_truncated_tflite(model, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    data = (bad / "prefill_decode.tflite").read_bytes()
    (bad / "prefill_decode.tflite").write_bytes(data[:5000])
    one_line(["inspect", str(bad)], capsys, str(bad), "fix:")
    one_line(["bundle", str(bad), "-o", str(tmp_path / "m.litertlm")], capsys,
             str(bad / "prefill_decode.tflite"), "fix:")
    assert not list(tmp_path.glob("*.litertlm*"))


def test_validate_and_run_refuse_bad_numbers_and_changed_files(tmp_path, capsys):
    """validate --context 0 / --budget 0 / --runs 0 and a bit-flipped model file: one line, exit 2,
    before anything is measured or run (a changed file is named)."""
    from edge_sdk.cli import main
    from edge_sdk.pipeline import convert

    out = tmp_path / "m"
    convert(Path(__file__).resolve().parents[1] / "models" / "tiny-gemma4" / "qat", out, recipe="mobile",
            text_only=True, context=64)
    capsys.readouterr()
    for argv, needle in ((["--context", "0"], "at least 1"), (["--budget", "0"], "more than 0"),
                         (["--runs", "0"], "at least 1"), (["--context", "1"], "at least 2")):
        assert main(["validate", str(out), "--no-quality", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.strip().count("\n") == 0, (argv, err)
    data = bytearray((out / "embedder.tflite").read_bytes())
    data[len(data) // 2] ^= 0x10
    (out / "embedder.tflite").write_bytes(bytes(data))   # same size: only the sha256 can tell
    for argv in (["validate", str(out), "--no-quality"], ["run", str(out), "--ids", "2,3", "-n", "2"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "embedder.tflite" in err and "sha256" in err and err.strip().count("\n") == 0, err


def test_plan_budget_zero(capsys):
    one_line(["plan", str(Path(__file__).resolve().parents[1] / "models" / "configs" / "gemma-4-e2b.json"),
              "--budget", "0"], capsys, "--budget 0", "more than 0")

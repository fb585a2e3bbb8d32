"""``edge-sdk run --profile`` / ``validate --profile`` (issue 13): one decode step of the tiny
``mobile`` model broken down per op kind and scheme and outside the model, summing to the step."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-gemma4" / "qat"


@pytest.fixture(scope="module")
def tiny_mobile(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prof") / "m"
    subprocess.run([sys.executable, "-m", "edge_sdk", "convert", str(TINY), "-o", str(out), "--recipe", "mobile",
                    "--text-only"], check=True, capture_output=True)
    return out


def test_run_profile_breaks_a_decode_step_down(tiny_mobile, tmp_path):
    js = tmp_path / "profile.json"
    r = subprocess.run([sys.executable, "-m", "edge_sdk", "run", str(tiny_mobile), "--ids", "2,10,20", "-n", "2",
                        "--api", "compiled", "--threads", "1", "--profile", str(js)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "part of the step" in r.stderr and "FULLY_CONNECTED int2 per-channel" in r.stderr
    p = json.loads(js.read_text())
    b = p["breakdown"]
    # the rows are the step: op categories + between ops + feeds/copies + Python + argmax
    assert sum(row["seconds"] for row in b["rows"]) == pytest.approx(b["step_s"], rel=1e-9, abs=1e-12)
    parts = {row["part"] for row in b["rows"]}
    for want in ("FULLY_CONNECTED int2 per-channel", "FULLY_CONNECTED int4 per-channel",
                 "FULLY_CONNECTED int8 per-channel", "attention (BATCH_MATMUL, SOFTMAX)",
                 "KV cache update (QUANTIZE, DYNAMIC_UPDATE_SLICE)", "KV cache read (DEQUANTIZE int8 -> float)",
                 "GATHER (embedding tables)", "feeds written and outputs read (logits copy)"):
        assert want in parts, (want, sorted(parts))
    assert any(k.startswith("LM head FULLY_CONNECTED") and "2048x128" in k for k in parts)
    cats = p["ops"]["by_category"]
    assert all(e["untimed_ops"] == 0 for e in cats.values()), cats
    # every op of the three decode signatures is counted once
    assert sum(e["ops"] for e in cats.values()) == p["ops"]["ops"]
    assert p["steps"]["signature"] == "decode"   # converted without --decode-spans
    assert p["steps"]["compute_s"].keys() == {"embedder", "per_layer_embedder", "prefill_decode"}
    assert all(v > 0 for v in p["steps"]["compute_s"].values())


def test_validate_profile_lands_in_the_report(tiny_mobile, tmp_path):
    rep = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "edge_sdk", "validate", str(tiny_mobile), "--no-quality", "--runtime",
                        "edge_sdk", "--runs", "1", "--no-first-run", "--profile", "-o", str(rep)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    p = json.loads((rep / "report.json").read_text())["decode_profile"]
    assert sum(row["seconds"] for row in p["breakdown"]["rows"]) == pytest.approx(p["breakdown"]["step_s"], rel=1e-9)
    assert p["steps"]["api"] == "compiled"
    md = (rep / "report.md").read_text()
    assert "## Where one decode step goes (--profile)" in md and "FULLY_CONNECTED int2 per-channel" in md

"""`edge-sdk validate --device` through the real adb binary against tests/adb_loopback.py's device.

The loopback device runs shell commands on this machine, so the device runner measures real Linux
figures for the real model: they must agree with a host run of the same model (memory within 10%,
quality exactly equal: same runner, same machine). Nothing here ran on a phone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("adbutils")
pytest.importorskip("ai_edge_litert")

sys.path.insert(0, str(Path(__file__).parent))
from test_device import _ExtraDevice, adb, device  # noqa: E402,F401  (module fixtures)

from edge_sdk.artefacts import ModelInfo  # noqa: E402
from edge_sdk.errors import DeviceError  # noqa: E402
from edge_sdk.device import benchmark_model  # noqa: E402
from edge_sdk.device.remote import sanitize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny-gemma4" / "qat"
FAST = ["--runs", "1", "--decode-tokens", "8", "--max-tokens", "4000"]   # 4,000 held-out tokens: host and device alike


def _cli(args, port, **kw):
    env = dict(os.environ, ANDROID_ADB_SERVER_PORT=str(port))
    return subprocess.run([sys.executable, "-m", "edge_sdk.cli", *args], env=env, capture_output=True,
                          text=True, timeout=170, cwd=REPO, **kw)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    if not TINY.is_dir():
        pytest.skip("tiny model fixture missing")
    out = tmp_path_factory.mktemp("conv") / "out"
    r = subprocess.run([sys.executable, "-m", "edge_sdk.cli", "convert", str(TINY), "-o", str(out),
                        "--recipe", "mobile", "--text-only"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_device_report_matches_host(adb, device, model, tmp_path):  # noqa: F811
    # like with like: our runner on both (LiteRT-LM is measured on the host only)
    host = _cli(["validate", str(model), "--runtime", "edge_sdk", "--report", str(tmp_path / "host"), *FAST],
                adb.port)
    assert host.returncode == 0, host.stderr
    dev = _cli(["validate", str(model), "--device", device.serial, "--report", str(tmp_path / "dev"), *FAST],
               adb.port)
    assert dev.returncode == 0, dev.stderr
    assert "push prefill_decode.tflite" in dev.stderr
    h = json.loads((tmp_path / "host" / "report.json").read_text())
    d = json.loads((tmp_path / "dev" / "report.json").read_text())
    assert h["target"] == "host" and d["target"] == device.serial
    assert d["runner"]["device"]["serial"] == device.serial
    assert d["runner"]["model_dir"].startswith(device.root)   # it really ran from the pushed copy
    for key in ("model_peak_bytes", "peak_rss_bytes"):
        assert d["memory"][key] == pytest.approx(h["memory"][key], rel=0.10), key
    for key in ("ppl", "kld_mean", "top1_agreement"):
        assert d["quality"][key] == h["quality"][key], key
    # per-run files are gone from the device; the model stays for reuse
    assert list(Path(device.root, "edge_sdk", "runs").iterdir()) == []
    assert any(Path(device.root, "edge_sdk", "models").glob("*/prefill_decode.tflite"))
    again = _cli(["validate", str(model), "--device", "auto", "--no-quality", *FAST], adb.port)
    assert again.returncode == 0, again.stderr
    assert "prefill_decode.tflite already on the device" in again.stderr


def test_device_vanishing_mid_run_exits_2(adb, model, tmp_path):  # noqa: F811
    with _ExtraDevice(adb, tmp_path / "dying") as dev:
        env = dict(os.environ, ANDROID_ADB_SERVER_PORT=str(adb.port))
        p = subprocess.Popen([sys.executable, "-m", "edge_sdk.cli", "validate", str(model), "--device",
                              dev.serial, "--no-quality", "--runs", "50", "--decode-tokens", "64"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert dev.wait_for_command("runner.py", timeout=60)
            dev.kill()
            _, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 2, err
        assert "Traceback" not in err
        assert dev.serial in err and ("not connected" in err or "offline" in err or "went" in err), err


def test_runner_crash_is_a_device_error(adb, device, tmp_path):  # noqa: F811
    bad = tmp_path / "bad"
    bad.mkdir()
    # a model.json the host accepts (ModelInfo) over a graph that is not a flatbuffer: the runner dies there
    info = ModelInfo(edge_sdk_version="0", model_type="gemma4", recipe="mobile", text_only=True, context=64,
                     prefill=8, vocab_size=256, hidden_size=8, num_layers=1, bos_token_id=2, eos_token_id=(1,))
    (bad / "model.json").write_text(json.dumps(info.to_json()))
    (bad / "prefill_decode.tflite").write_bytes(b"not a flatbuffer")
    r = _cli(["validate", str(bad), "--device", device.serial, "--no-quality", *FAST], adb.port)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "failed with exit code" in r.stderr
    assert list(Path(device.root, "edge_sdk", "runs").iterdir()) == []


@pytest.mark.slow
def test_device_all_writes_one_report_each_and_a_summary(adb, device, model, tmp_path):  # noqa: F811
    with _ExtraDevice(adb, tmp_path / "second") as second:
        r = _cli(["validate", str(model), "--device", "all", "--report", str(tmp_path / "all"),
                  "--no-quality", *FAST], adb.port)
        assert r.returncode == 0, r.stderr
        summary = json.loads((tmp_path / "all" / "summary.json").read_text())["devices"]
        assert {s["serial"] for s in summary} == {device.serial, second.serial}
        for s in (device.serial, second.serial):
            rep = json.loads((tmp_path / "all" / sanitize(s) / "report.json").read_text())
            assert rep["target"] == s and rep["verdict"] == "pass"
            assert s in r.stdout
        assert "summary.json" in r.stdout


# Recorded in LiteRT's documented benchmark_model format (see the module docstring); one with an
# "INFO: " prefix and the peak line, one as logcat lines without it.
RECORDED_INFO = """\
INFO: STARTING!
INFO: Graph: [/data/local/tmp/edge_sdk/models/out-0123/prefill_decode.tflite]
INFO: Signature to run: [decode]
INFO: Report the peak memory footprint: [1]
INFO: Loaded model /data/local/tmp/edge_sdk/models/out-0123/prefill_decode.tflite
INFO: The input model file size (MB): 1.39264
INFO: Initialized session in 6.395ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=172 first=3620 curr=2761 min=2605 max=18080 avg=3243.58 std=2165 p5=2630 median=2761 p95=5331

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=337 first=2881 curr=2703 min=2605 max=20356 avg=2942.27 std=1190 p5=2647 median=2781 p95=3169

INFO: Inference timings in us: Init: 6395, First inference: 2761, Warmup (avg): 3243.58, Inference (avg): 2942.27
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=39.4531 overall=40.8281
INFO: Overall peak memory footprint (MB) via periodic monitoring: 45.2852
INFO: Memory status at the end of exeution:
"""
RECORDED_LOGCAT = """\
07-08 15:34:26.201 I/tflite  ( 5395): count=10 first=2653894 curr=2709263 min=2640862 max=3025403 avg=2.71985e+06 std=105101 p5=2640862 median=2709263 p95=3025403
07-08 15:34:26.202 I/tflite  ( 5395): Inference timings in us: Init: 458883, First inference: 2732148, Warmup (avg): 2.73215e+06, Inference (avg): 2.71985e+06
07-08 15:34:26.202 I/tflite  ( 5395): Memory footprint delta from the start of the tool (MB): init=286.73 overall=337
"""


def test_benchmark_model_parser_on_recorded_text():
    b = benchmark_model.parse(RECORDED_INFO)
    assert (b.init_us, b.first_inference_us, b.warmup_avg_us, b.inference_avg_us) == (6395, 2761, 3243.58, 2942.27)
    assert b.runs == 337 and b.inference_std_us == 1190            # the last count= line: the timed runs
    assert b.peak_memory_bytes == round(45.2852 * 2**20)
    assert b.overall_delta_bytes == round(40.8281 * 2**20) and b.init_delta_bytes == round(39.4531 * 2**20)
    c = benchmark_model.parse(RECORDED_LOGCAT)
    assert c.inference_avg_us == 2.71985e6 and c.runs == 10
    assert c.overall_delta_bytes == 337 * 2**20 and c.peak_memory_bytes is None
    with pytest.raises(DeviceError, match="no 'Inference timings"):
        benchmark_model.parse("ERROR: Could not open 'x.tflite'.\nAborted")


def test_android_report_has_null_quality_with_a_reason(model, tmp_path):
    """The report built from benchmark_model's (recorded) output; the adb half is not faked."""
    from edge_sdk.budget import Budget
    from edge_sdk.validate.remote import QUALITY_UNAVAILABLE, benchmark_validate

    class Recorded:
        kind = "benchmark_model"

        def run_benchmark(self, *a, **k):
            return benchmark_model.parse(RECORDED_INFO), {"serial": "phone"}

    rep = benchmark_validate(Recorded(), model, budget=Budget(40 * 2**20), report=tmp_path, target="phone",
                             threads=None, backend="xnnpack", runs=5, context=64)
    j = json.loads((tmp_path / "report.json").read_text())
    assert j["target"] == "phone" and j["quality"] is None and QUALITY_UNAVAILABLE in j["warnings"]
    assert j["memory"]["model_peak_bytes"] == round(45.2852 * 2**20) and rep.verdict == "fail"

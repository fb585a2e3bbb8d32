"""How memory is measured: page-cache eviction, per-mapping smaps breakdown, madvise on mapped
tables, the XNNPACK weight cache's first run and reopen, and LiteRT-LM's measuring child — all on
the real kernel, the real LiteRT runtime and the real LiteRT-LM engine (tiny model)."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.litert import paging
from edge_sdk.litert.runtime import LiteRTModel, file_key
from edge_sdk.validate import memwatch

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny-gemma4" / "qat"
PAGE = mmap.PAGESIZE


def _fs_type(path: Path) -> str:
    best, fstype = "", ""
    for line in open("/proc/mounts"):
        parts = line.split()
        if str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
            best, fstype = parts[1], parts[2]
    return fstype


@pytest.fixture
def big_file(tmp_path):
    if _fs_type(tmp_path) == "tmpfs":
        pytest.skip("tmpfs pages cannot be evicted: the page cache is the file")
    p = tmp_path / "table.bin"
    rng = np.random.default_rng(0)
    with open(p, "wb") as f:
        for _ in range(16):   # 64 MiB of incompressible bytes, written in 4 MiB blocks
            f.write(rng.integers(0, 256, 4 << 20, dtype=np.uint8).tobytes())
    return p


def test_evict_drops_the_file_from_the_page_cache(big_file):
    big_file.read_bytes()
    assert paging.cached_bytes(str(big_file)) >= 60 << 20
    got = paging.evict([big_file])[str(big_file)]
    assert got["cached_before"] >= 60 << 20 and got["size"] == 64 << 20
    assert got["cached_after"] == 0 == paging.cached_bytes(str(big_file))


def _touch_rows(path: Path, advice: str | None, rows: int = 200) -> int:
    """Map ``path``, optionally advise it, read one byte of ``rows`` rows spread over the file
    (cold), and return the mapping's RSS from smaps."""
    paging.evict([path])
    size = path.stat().st_size
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
        try:
            if advice:
                assert paging.advise([path], advice) >= size
            step = size // rows
            total = sum(m[i * step] for i in range(rows))   # one byte per row: one page fault each
            assert total >= 0
            rows_ = memwatch.smaps_breakdown({os.path.realpath(path): "table"})
            return rows_["table"]["rss"]
        finally:
            m.close()


def test_madv_random_keeps_only_touched_pages(big_file):
    """Cold, a page fault on a mapping reads around it (readahead) and maps neighbours in;
    with MADV_RANDOM a looked-up row costs its own page. This is what keeps the mapped
    embedding tables near the planner's rows-touched figure."""
    normal = _touch_rows(big_file, None)
    rand = _touch_rows(big_file, "random")
    assert rand <= 200 * PAGE * 2, rand          # one page per row (+ slack for a row on a boundary)
    assert normal >= 4 * rand, (normal, rand)    # read-around maps several pages per fault


def test_dontneed_releases_pages_of_a_read_only_mapping(big_file):
    with open(big_file, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            m.read()   # touch everything
            label = {os.path.realpath(big_file): "t"}
            assert memwatch.smaps_breakdown(label)["t"]["rss"] >= 60 << 20
            assert paging.advise([big_file], "dontneed") >= 64 << 20
            assert memwatch.smaps_breakdown(label)["t"]["rss"] < 1 << 20
            assert m[12345] == big_file.read_bytes()[12345]   # the data comes back from the file
        finally:
            m.close()


def test_smaps_breakdown_accounts_for_all_of_rss():
    rows = memwatch.smaps_breakdown()
    total = sum(r["rss"] for r in rows.values())
    status = memwatch.read_status()
    assert abs(total - status["VmRSS"]) <= 8 << 20, (total, status["VmRSS"])
    assert all(r["rss"] == r["anon"] + r["file"] for r in rows.values())
    assert "anonymous (heap, buffers, KV cache)" in rows and "shared libraries" in rows


def test_sampler_series_phases_and_peak():
    s = memwatch.Sampler(0.002, series_every=0.0)
    s.start()
    s.set_phase("grow")
    blob = np.ones(64 << 20, np.uint8)   # 64 MiB touched
    s.set_phase("free")
    del blob
    s.stop()
    j = s.to_json()
    assert [p["phase"] for p in j["phases"]] == ["baseline", "grow", "free"]
    assert j["peak"]["phase"] in ("grow", "free") and j["peak"]["rss"] >= (64 << 20)
    assert len(j["series"]) >= 3 and all(len(p) == 5 for p in j["series"])
    assert j["smaps_near_peak"]["rows"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from edge_sdk.pipeline import convert
    out = tmp_path_factory.mktemp("mm") / "out"
    convert(TINY, out, recipe="mobile", text_only=True, context=128)
    return out


def test_weight_cache_key_moves_when_the_file_is_patched_in_place(tiny, tmp_path):
    p = tmp_path / "m.tflite"
    p.write_bytes((tiny / "embedder.tflite").read_bytes())
    st = p.stat()
    before = file_key(str(p))
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    with open(p, "r+b") as f:     # same size, same inode
        f.write(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))   # even with the mtime put back
    assert file_key(str(p)) != before


def test_first_run_builds_the_cache_and_reopens(tiny, tmp_path):
    """The first run packs the weights into the cache and reopens the model, so its memory is the
    steady state's; both runs compute the same logits, and the KV cache is updated in place."""
    ids = np.arange(2, 40)
    first = LiteRTModel(tiny, api="compiled", cache_dir=str(tmp_path))
    assert first.backend_info["weight_cache_built"] and first.backend_info["kv_cache"].startswith("in place")
    a = first.prefill(ids)
    first.close()
    steady = LiteRTModel(tiny, api="compiled", cache_dir=str(tmp_path))
    assert not steady.backend_info["weight_cache_built"]
    np.testing.assert_array_equal(steady.prefill(ids), a)
    assert steady.backend_info["tables_madv_random_bytes"] > 0


def test_engine_runner_first_and_steady(tiny, tmp_path):
    """LiteRT-LM's measuring child: cold, the first run builds its weight cache (through a
    throw-away engine), the steady run finds it; the bundle's mappings are named by section."""
    pytest.importorskip("litert_lm")
    from edge_sdk.pipeline import _engine_bundle
    bundle, sections = _engine_bundle(tiny, None, tmp_path)
    (tmp_path / "sections.json").write_text(json.dumps(sections))
    cache = tmp_path / "cache"
    out = {}
    for state in ("first", "steady"):
        res = tmp_path / f"{state}.json"
        r = subprocess.run([sys.executable, "-m", "edge_sdk.validate.engine_runner", "--bundle", str(bundle),
                            "--out", str(res), "--cache-dir", str(cache), "--max-num-tokens", "128",
                            "--prefill-tokens", "96", "--decode-tokens", "8", "--cold", "--prebuild",
                            "--sections", str(tmp_path / "sections.json")],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        out[state] = json.loads(res.read_text())
    f, s = out["first"], out["steady"]
    assert f["state"] == "first" and f["prebuilt_cache"] and not f["weight_cache"]["before"]
    assert s["state"] == "steady" and not s["prebuilt_cache"] and s["weight_cache"]["before"]
    assert all(v["cached_after"] == 0 for v in s["evicted"].values()) and len(s["evicted"]) == 2
    for r in (f, s):
        m = r["memory"]
        assert m["peak_rss_bytes"] > m["baseline_rss_bytes"] > 0
        assert r["timing"]["engine"]["last_prefill_token_count"] == 96
        assert any(k.startswith("model.litertlm: tf_lite_prefill_decode") for k in r["smaps"]["end"])
        assert [p["phase"] for p in r["series"]["phases"]][:3] == ["baseline", "load", "generate"]


def _validate_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edge_sdk.cli", "validate", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_validate_a_litertlm_alone_in_litert_lm(tiny, tmp_path):
    """Any .litertlm (here ours, packed by the pipeline) is measured in LiteRT-LM only: first run
    and steady state, cold; no quality (the engine gives no logits), said as a warning."""
    pytest.importorskip("litert_lm")
    from edge_sdk.pipeline import _engine_bundle
    bundle, _ = _engine_bundle(tiny, None, tmp_path)
    r = _validate_cli(bundle, "--budget", "1GB", "--report", tmp_path / "rep", "--decode-tokens", "8")
    assert r.returncode == 0, r.stderr[-1500:]
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [x["label"] for x in rep["memory"]["runs"]] == ["litert-lm, first, cold", "litert-lm, steady, cold"]
    assert rep["quality"] is None and any("quality not measured" in w for w in rep["warnings"])
    assert rep["budget"]["passed"] is True and rep["evaluation"]["context"] == 128
    r = _validate_cli(bundle, "--budget", "1MB", "--warm", "--no-first-run")
    assert r.returncode == 1 and "litert-lm, steady, warm" in r.stderr, r.stderr[-800:]


def test_validate_warm_and_steady_only(tiny, tmp_path):
    r = _validate_cli(tiny, "--runtime", "edge_sdk", "--no-quality", "--warm", "--no-first-run", "--runs", "1",
                      "--report", tmp_path / "rep")
    assert r.returncode == 0, r.stderr[-1500:]
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [x["label"] for x in rep["memory"]["runs"]] == ["edge_sdk, steady, warm"]   # cache built unmeasured
    raw = json.loads((tmp_path / "rep" / "runner_result_steady.json").read_text())
    assert raw["evicted"] == {} and raw["cold"] is False

"""Memory the way a phone meets it: cold, the first launch and the steady state, in LiteRT-LM's
engine (what an app runs) and in our runner (what has the logits).

Each measurement is a fresh child process (``engine_runner`` for a ``.litertlm``, ``runner`` for a
converted model directory) that evicts the model's files from the page cache first (``cold``;
``warm`` skips it), so a figure does not depend on what ran before it. The *first* run builds the
XNNPACK weight cache in a fresh directory under the work directory (nothing of the user's is
touched); the *steady* run finds it there. ``summarize`` turns a child's result into one
``MemoryRun``: the model share (VmHWM − the RSS after the runtime library is loaded, before the
model), its split into anonymous and file-backed pages, the per-mapping growth at the peak, and
the RSS time series with its phases.

LiteRT-LM's first run is measured the way ``android_demo`` launches the first time: a throw-away
engine builds the weight cache, then the measured engine maps it (``--prebuild``). An engine that
packs the weights itself keeps the packing buffers for its lifetime: +0.2 GB on E2B (1.17 GB vs
0.96 GB model share, cold, measured 2026-12-01).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import progress as P
from ..errors import EdgeSdkError

ENGINE_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class MemoryRun:
    runtime: str                 # "litert-lm" | "edge_sdk"
    state: str                   # "first" (weight cache built) | "steady" (cache present) | "only"
    cold: bool
    model_peak_bytes: int        # VmHWM − baseline: what the budget gates
    peak_rss_bytes: int
    baseline_rss_bytes: int
    anon_growth_bytes: int       # at the sampled peak
    file_growth_bytes: int
    peak_phase: str | None
    breakdown: dict              # {mapping: {rss, anon, file, size}} growth since the baseline, near the peak
    series: dict = field(repr=False, default_factory=dict)   # {columns, series, phases}
    speed: dict = field(default_factory=dict)
    weight_cache_bytes: int = 0

    @property
    def label(self) -> str:
        return f"{self.runtime}, {self.state}" + (", cold" if self.cold else ", warm")

    def to_json(self) -> dict:
        d = asdict(self)
        d["label"] = self.label
        return d


def summarize(r: dict, runtime: str, state: str) -> MemoryRun:
    """One child's result → ``MemoryRun``."""
    m = r["memory"]
    base = m["baseline_rss_bytes"]
    speed = {}
    t = r.get("timing") or {}
    if runtime == "litert-lm":
        e = t.get("engine") or {}
        speed = {"prefill_tokens_per_s": e.get("last_prefill_tokens_per_second"),
                 "decode_tokens_per_s": e.get("last_decode_tokens_per_second"),
                 "time_to_first_token_s": e.get("time_to_first_token_in_second"),
                 "prefill_tokens": e.get("last_prefill_token_count"), "decode_tokens": e.get("last_decode_token_count"),
                 "load_s": t.get("load_s"), "engine_init_s": e.get("init_time_in_second")}
    elif t:
        speed = {"prefill_tokens_per_s": (t.get("prefill_tokens_per_s") or {}).get("median"),
                 "decode_tokens_per_s": (t.get("decode_tokens_per_s") or {}).get("median"),
                 "time_to_first_token_s": (t.get("time_to_first_token_s") or {}).get("median"),
                 "decode_at_context_tokens_per_s": (t.get("fill_decode") or {}).get("tokens_per_s"),
                 "load_s": t.get("load_s")}
    cache = (r.get("weight_cache") or {}).get("after") or r.get("weight_cache_files") or {}
    return MemoryRun(
        runtime=runtime, state=state, cold=bool(r.get("cold")), model_peak_bytes=m["peak_rss_bytes"] - base,
        peak_rss_bytes=m["peak_rss_bytes"], baseline_rss_bytes=base,
        anon_growth_bytes=(m.get("rss_anon_at_peak_bytes") or 0) - (m.get("baseline_rss_anon_bytes") or 0),
        file_growth_bytes=(m.get("rss_file_at_peak_bytes") or 0) - (m.get("baseline_rss_file_bytes") or 0),
        peak_phase=m.get("peak_phase"), breakdown=(r.get("smaps") or {}).get("growth_near_peak") or {},
        series=r.get("series") or {}, speed=speed, weight_cache_bytes=int(sum(cache.values())))


def run_engine(bundle: Path, work: Path, *, cache_dir: Path, context: int, prefill_tokens: int,
               decode_tokens: int, threads: int | None, cold: bool, tag: str, sections: list | None = None,
               prebuild: bool = True, timeout: float = ENGINE_TIMEOUT_S) -> dict:
    """Spawn ``engine_runner`` on ``bundle``; its result dict (EdgeSdkError when it fails).
    ``sections``: [[begin, end, name], ...] of the bundle, to label its mappings; ``prebuild``:
    with no weight cache yet, build it with a throw-away engine first, as android_demo's first
    launch does (the engine that packs keeps ~0.2 GB of packing buffers for its lifetime)."""
    out, log = work / f"engine_{tag}.json", work / f"engine_{tag}.log"
    cmd = [sys.executable, "-m", "edge_sdk.validate.engine_runner", "--bundle", str(bundle), "--out", str(out),
           "--cache-dir", str(cache_dir), "--max-num-tokens", str(context), "--prefill-tokens", str(prefill_tokens),
           "--decode-tokens", str(decode_tokens)]
    if sections:
        (work / "bundle_sections.json").write_text(json.dumps(sections))
        cmd += ["--sections", str(work / "bundle_sections.json")]
    if threads:
        cmd += ["--threads", str(threads)]
    if cold:
        cmd.append("--cold")
    if prebuild:
        cmd.append("--prebuild")
    what = {"first": "first run, builds the weight cache", "steady": "steady state"}.get(tag, tag)
    return spawn(cmd, out, log, label=f"LiteRT-LM engine ({what}{', cold' if cold else ''})", timeout=timeout,
                 path=bundle, failed="LiteRT-LM's engine failed on the bundle", fix=f"see {log}")


def spawn(cmd: list[str], out: Path, log: Path, *, label: str, timeout: float, path: Path, failed: str,
          fix: str) -> dict:
    """Run a measuring child (announced as ``label``) and read its result JSON ``out``; its output
    goes to ``log``. EdgeSdkError ``failed`` with the log's last lines when it fails or times out.

    Through a small shell that forks the child: Linux folds the RSS of the process that execs into
    the new program's ru_maxrss (exec keeps signal->maxrss), so a child spawned straight from a large
    parent (pytest with torch: 400+ MB) would report the parent's RSS in getrusage; a forked child of
    /bin/sh starts from the shell's ~1 MB. VmHWM is per address space and unaffected."""
    if os.path.exists("/bin/sh"):
        cmd = ["/bin/sh", "-c", '"$@"; rc=$?; exit $rc', "sh", *cmd]
    try:
        with P.stage(label, announce=True), open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        raise EdgeSdkError(f"{label} did not finish within {timeout:.0f} s", path=path) from None
    if rc != 0 or not out.is_file():
        lines = [ln for ln in log.read_text(errors="replace").strip().splitlines() if "INFO:" not in ln]
        tail = " | ".join(lines[-4:])
        tail = tail if len(tail) < 800 else tail[:400] + " ... " + tail[-400:]
        raise EdgeSdkError(f"{failed} (exit {rc}): {tail}", path=path, fix=fix)
    return json.loads(out.read_text())


def engine_runs(bundle: Path, work: Path, *, context: int, decode_tokens: int, threads: int | None,
                cold: bool, first_run: bool, sections: list | None = None) -> list[tuple[MemoryRun, dict]]:
    """LiteRT-LM: the first run (its weight cache built in a fresh directory) and the steady state."""
    cache = work / "litert_lm_cache"
    if first_run and cache.exists():
        for p in cache.iterdir():   # our own scratch directory inside the work directory
            p.unlink()
    kw = dict(cache_dir=cache, context=context, prefill_tokens=max(1, context - decode_tokens),
              decode_tokens=decode_tokens, threads=threads, cold=cold, sections=sections)
    out = []
    if not first_run:   # build the cache in a run that is not measured
        run_engine(bundle, work, tag="warmup", **dict(kw, prefill_tokens=8, decode_tokens=1))
    for state in (("first", "steady") if first_run else ("steady",)):
        r = run_engine(bundle, work, tag=state, **kw)
        out.append((summarize(r, "litert-lm", r.get("state", state)), r))
    return out

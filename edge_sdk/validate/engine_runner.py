"""The measuring child process for LiteRT-LM's engine: run a ``.litertlm`` the way an app does and
write what it cost.

    python -m edge_sdk.validate.engine_runner --bundle FILE.litertlm --out result.json
        --cache-dir DIR [--prefill-tokens N] [--decode-tokens N] [--max-num-tokens N]
        [--threads N] [--cold] [--sections sections.json] [--advise-random]

Order of events (each figure in ``result.json`` says which it is):

1. ``import litert_lm`` and load ``liblitert-lm.so`` (``litert_lm._ffi._get_lib()``): the runtime
   library belongs to the baseline (the app has it too), the model does not. With ``--cold`` the
   bundle and every file in ``--cache-dir`` are evicted from the page cache first
   (``memwatch.evict``), so the run reads them from storage as a first launch after an install
   (or after a reboot) does. Then the **baseline**: VmRSS / RssAnon / RssFile and a smaps breakdown.
2. **load**: engine settings and ``litert_lm_engine_create`` (LiteRT-LM builds its XNNPACK weight
   cache in ``--cache-dir`` when there is none: the *first run*; with one present, the *steady
   state*).
3. **generate**: one session, ``prefill_tokens`` of prompt and ``decode_tokens`` decoded, with the
   engine's own benchmark mode (``litert_lm.Benchmark`` does the same calls in one go); the
   engine's figures (init time, time to first token, prefill and decode tokens/s) come back from
   its benchmark info. The KV cache is filled to ``prefill_tokens + decode_tokens``.
4. **peak**: VmHWM, the sampled split at the peak, the time series (``memwatch.Sampler``) and a
   smaps breakdown taken near the peak; the bundle's mappings are labelled by section
   (``--sections``: [[begin, end, name], ...] for the bundle).

``--advise-random`` applies ``madvise(MADV_RANDOM)`` to the bundle's embedding sections after the
engine is created — not something the engine does; it shows what the readahead costs (docs).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import sys
import time

try:
    from edge_sdk.validate import memwatch
except ImportError:  # standalone: memwatch.py beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import memwatch  # type: ignore[no-redef]

RESULT_VERSION = 1
TABLE_SECTIONS = ("tf_lite_embedder", "tf_lite_per_layer_embedder")


def _cache_files(cache_dir: str) -> dict[str, int]:
    out = {}
    for name in sorted(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else []:
        p = os.path.join(cache_dir, name)
        if os.path.isfile(p):
            out[name] = os.path.getsize(p)
    return out


def _create_engine(lib, litert_lm, bundle: str, args):
    """A LiteRT-LM CPU engine in benchmark mode with the run's token counts and cache directory."""
    settings = lib.litert_lm_engine_settings_create(bundle, litert_lm.Backend.CPU().get_name(), None, None)
    if not settings:
        raise SystemExit(f"engine_runner: {bundle}: LiteRT-LM could not create engine settings")
    lib.litert_lm_engine_settings_enable_benchmark(settings)
    if args.threads:
        lib.litert_lm_engine_settings_set_num_threads(settings, args.threads)
    lib.litert_lm_engine_settings_set_max_num_tokens(settings, args.max_num_tokens)
    lib.litert_lm_engine_settings_set_num_prefill_tokens(settings, args.prefill_tokens)
    lib.litert_lm_engine_settings_set_num_decode_tokens(settings, args.decode_tokens)
    lib.litert_lm_engine_settings_set_cache_dir(settings, args.cache_dir)
    eng = lib.litert_lm_engine_create(settings)
    lib.litert_lm_engine_settings_delete(settings)
    if not eng:
        raise SystemExit(f"engine_runner: {bundle}: LiteRT-LM could not create the engine (see its log above)")
    return eng


def _load(lib, litert_lm, bundle: str, args, sections: dict | None, cache_before: dict):
    """(engine, load seconds, status after load, bytes advised random, whether a throwaway engine
    built the weight cache first)."""
    t0 = time.perf_counter()
    prebuilt = False
    if args.prebuild and not cache_before:
        # what android_demo does on a first launch: an engine made only to build the weight cache,
        # deleted at once, so the buffers that packing used are gone before the real one loads
        lib.litert_lm_engine_delete(_create_engine(lib, litert_lm, bundle, args))
        memwatch.malloc_trim()
        prebuilt = True
    engine = _create_engine(lib, litert_lm, bundle, args)
    load_s = time.perf_counter() - t0
    after_load = memwatch.read_status()
    advised = 0
    if args.advise_random and sections:
        ranges = [(b, e) for b, e, name in sections[bundle] if name in TABLE_SECTIONS]
        advised = memwatch.advise([bundle], "random", offset_ranges={bundle: ranges})
    return engine, load_s, after_load, advised, prebuilt


def _generate(lib, litert_lm, engine, bundle: str, text: str):
    """One session generating from ``text``: (the session, still open; seconds; the engine's
    benchmark info as a dict, or None)."""
    from litert_lm._ffi import InputDataType

    t1 = time.perf_counter()
    session = lib.litert_lm_engine_create_session(engine, None)
    if not session:
        lib.litert_lm_engine_delete(engine)
        raise SystemExit(f"engine_runner: {bundle}: LiteRT-LM could not create a session")
    prompt = text.encode("utf-8")
    inp = lib.litert_lm_input_data_create(InputDataType.TEXT, prompt, len(prompt))
    inputs = (ctypes.c_void_p * 1)(inp)
    try:
        responses = lib.litert_lm_session_generate_content(session, inputs, 1)
        if responses:
            lib.litert_lm_responses_delete(responses)
    finally:
        lib.litert_lm_input_data_delete(inp)
    generate_s = time.perf_counter() - t1
    info_ptr = lib.litert_lm_session_get_benchmark_info(session)
    info = None
    if info_ptr:
        bi = litert_lm.interfaces.create_benchmark_info(lib, info_ptr)
        lib.litert_lm_benchmark_info_delete(info_ptr)
        info = {k: getattr(bi, k) for k in bi.__dataclass_fields__}
    return session, generate_s, info


def _mark_decode(series: dict, info: dict | None) -> None:
    """The engine's own phase boundary inside "generate" (decode starts at its time to first token)."""
    if not info:
        return
    ttft = info.get("time_to_first_token_in_second") or 0.0
    gen0 = next((p["start_s"] for p in series["phases"] if p["phase"] == "generate"), None)
    if gen0 is not None and ttft:
        series["phases"].append({"phase": "decode", "start_s": round(gen0 + ttft, 4),
                                 "note": "generate start + the engine's time to first token"})
        series["phases"].sort(key=lambda p: p["start_s"])


def _memory(baseline: dict, after_load: dict, end: dict, peak: dict, ru: int, sampler) -> dict:
    """The result's ``memory`` (the same keys as our runner's)."""
    return {
        "baseline_rss_bytes": baseline.get("VmRSS"), "baseline_rss_anon_bytes": baseline.get("RssAnon"),
        "baseline_rss_file_bytes": baseline.get("RssFile"), "baseline_rss_shmem_bytes": baseline.get("RssShmem"),
        "baseline_hwm_bytes": baseline.get("VmHWM"), "after_load_rss_bytes": after_load.get("VmRSS"),
        # VmHWM is folded lazily from per-CPU counters: a sample can read a few kB above it
        "peak_rss_bytes": max(end["VmHWM"], peak.get("VmRSS") or 0),
        "ru_maxrss_bytes": ru, "end_rss_bytes": end["VmRSS"],
        "sampled_peak_rss_bytes": peak.get("VmRSS"), "rss_anon_at_peak_bytes": peak.get("RssAnon"),
        "rss_file_at_peak_bytes": peak.get("RssFile"), "rss_shmem_at_peak_bytes": peak.get("RssShmem"),
        "peak_phase": peak.get("phase"), "samples": sampler.samples, "sample_interval_s": sampler.interval,
    }


def run(args: argparse.Namespace) -> dict:
    """The engine's run (the module docstring's steps): load (and prebuild), generate, end."""
    import litert_lm
    from litert_lm._ffi import _get_lib

    lib = _get_lib()
    bundle = os.path.realpath(args.bundle)
    os.makedirs(args.cache_dir, exist_ok=True)
    sections = None
    if args.sections:
        with open(args.sections) as f:
            sections = {bundle: [tuple(s) for s in json.load(f)]}
    cache_before = _cache_files(args.cache_dir)
    evicted = {}
    if args.cold:
        evicted = memwatch.evict([bundle] + [os.path.join(args.cache_dir, n) for n in cache_before])
    baseline = memwatch.read_status()
    smaps_base = memwatch.smaps_breakdown(sections=sections)
    sampler = memwatch.Sampler(args.sample_ms / 1000.0, sections=sections)
    sampler.sample(force_point=True)
    sampler.start()

    sampler.set_phase("load")
    engine, load_s, after_load, advised, prebuilt = _load(lib, litert_lm, bundle, args, sections, cache_before)

    sampler.set_phase("generate")
    session, generate_s, info = _generate(lib, litert_lm, engine, bundle, args.prompt)
    sampler.set_phase("end")
    smaps_end = memwatch.smaps_breakdown(sections=sections)
    sampler.stop()
    end = memwatch.read_status()
    lib.litert_lm_session_delete(session)
    lib.litert_lm_engine_delete(engine)
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = sampler.peak
    series = sampler.to_json()
    _mark_decode(series, info)
    near = memwatch.nearest_to_peak(series.get("smaps_near_peak"), smaps_end, series["phases"][-1]["phase"])
    return {
        "version": RESULT_VERSION, "runtime": "litert-lm", "pid": os.getpid(),
        "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
        "page_size": os.sysconf("SC_PAGE_SIZE"), "bundle": bundle, "bundle_bytes": os.path.getsize(bundle),
        "cold": bool(args.cold), "evicted": evicted,
        "state": "steady" if cache_before else "first",
        "weight_cache": {"dir": os.path.abspath(args.cache_dir), "before": cache_before,
                         "after": _cache_files(args.cache_dir)},
        "advise_random_bytes": advised, "prebuilt_cache": prebuilt,
        "requested": {"prefill_tokens": args.prefill_tokens, "decode_tokens": args.decode_tokens,
                      "max_num_tokens": args.max_num_tokens, "threads": args.threads},
        "memory": _memory(baseline, after_load, end, peak, ru, sampler),
        "smaps": {"baseline": smaps_base, "near_peak": near, "end": smaps_end,
                  "growth_near_peak": memwatch.diff_breakdown(near["rows"], smaps_base)},
        "series": series,
        "timing": {"load_s": load_s, "generate_s": generate_s, "engine": info},
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge_sdk.validate.engine_runner", description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True, help="the .litertlm file")
    ap.add_argument("--out", required=True, help="result JSON path")
    ap.add_argument("--cache-dir", required=True, help="LiteRT-LM's cache directory (its XNNPACK weight cache)")
    ap.add_argument("--prefill-tokens", type=int, default=128, help="prompt tokens the engine prefills")
    ap.add_argument("--decode-tokens", type=int, default=32, help="tokens the engine decodes")
    ap.add_argument("--max-num-tokens", type=int, required=True, help="the engine's context (KV cache length)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: the engine's)")
    ap.add_argument("--prompt", default="How are you", help="prompt text (benchmark mode pads it to --prefill-tokens)")
    ap.add_argument("--cold", action="store_true", help="evict the bundle and the cache from the page cache first")
    ap.add_argument("--sections", default=None, help="JSON [[begin, end, name], ...] of the bundle's sections")
    ap.add_argument("--advise-random", action="store_true", help="MADV_RANDOM on the embedding sections (experiment)")
    ap.add_argument("--prebuild", action="store_true",
                    help="with no weight cache: build it with a throw-away engine first (as android_demo does)")
    ap.add_argument("--sample-ms", type=float, default=5.0, help="RSS sampling interval")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    memwatch.write_result(args.out, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

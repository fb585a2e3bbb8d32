"""The measuring child process: load a converted model, run it, and write what it cost.

    python -m edge_sdk.validate.runner --model OUT_DIR --ids-file IDS --out result.json
        [--logits LOGITS.npy] [--backend xnnpack|builtin] [--api interpreter|compiled]
        [--threads N] [--runs 5] [--prompt-tokens 128] [--decode-tokens 32] [--chunk N]

The validator spawns this as a fresh process so that the memory figures are this process alone.
The same file runs standalone on a Linux device with Python (the adb path pushes it beside the
runtime): its imports are numpy, ai_edge_litert (through the runtime) and
``edge_sdk.litert.runtime`` (or a sibling ``runtime.py`` when edge_sdk is not installed).

Order of events (every figure in ``result.json`` says which it is):

1. imports; then **baseline**: VmRSS / RssAnon / RssFile read from ``/proc/self/status`` before the
   model is touched. A sampling thread starts reading ``/proc/self/status`` every ``--sample-ms``
   (invoke releases the GIL, so it samples during inference too) and keeps the RssAnon/RssFile of
   the sample with the largest VmRSS, i.e. the split *at* the peak.
2. **load** (timed): ``LiteRTModel(out_dir, backend=..., api=..., threads=...)``.
3. **eval**: each window of ``IDS`` from a fresh cache (``reset``), fed to ``prefill`` in chunks
   of ``--chunk`` tokens (default: the model's prefill length); logits of every position are
   appended to ``--logits`` with plain ``write`` calls (page cache, not this process's RSS). The
   last window is followed by ``--decode-tokens`` greedy decode steps, so a window of
   ``context - decode_tokens`` tokens fills the KV cache to the context.
4. **speed**: ``--runs`` times: reset, prefill the first ``--prompt-tokens`` tokens of the first
   window (time to first token = prefill + argmax), then ``--decode-tokens`` greedy steps.
   Medians with min/max and interquartile range.
5. **peak**: VmHWM (what the budget is checked against), ``getrusage(RUSAGE_SELF).ru_maxrss``
   (the kernel's own high-water mark, for cross-checking), the sampled split at the peak.

Logit sanity (non-finite values, rows that are constant) is counted here as they stream by.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np



def _import_siblings():
    """Standalone on a device, where edge_sdk is not installed: ``remote.RUNNER_FILES`` pushed
    runtime.py, memwatch.py and paging.py beside this file. The one place the runner touches
    ``sys.path``, on purpose, and only in that case (an ImportError inside an installed edge_sdk
    is raised as it is, not hidden behind a sibling lookup)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import memwatch as watch  # type: ignore[import-not-found]
    from runtime import LiteRTModel as model  # type: ignore[import-not-found]
    return model, watch


try:
    import edge_sdk  # noqa: F401  (installed, or the repository on sys.path)
except ImportError:
    LiteRTModel, memwatch = _import_siblings()
else:
    from edge_sdk.litert.runtime import LiteRTModel
    from edge_sdk.validate import memwatch

RESULT_VERSION = 2
_NAMES = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file", "RssShmem": "rss_shmem"}


class LogitSink:
    """Streams [rows, V] float32 blocks into an .npy file whose header states the final shape;
    counts non-finite values and constant rows as they pass."""

    def __init__(self, path: str | None, rows: int, vocab: int):
        self.rows, self.vocab, self.written = rows, vocab, 0
        self.nonfinite = 0
        self.constant_rows = 0
        self.max_abs = 0.0
        self.same_as_first = 0  # rows equal to the very first row (a model that ignores its input)
        self._first = None
        self._f = None
        if path:
            self._f = open(path, "wb")
            np.lib.format.write_array_header_2_0(
                self._f, {"descr": np.dtype("<f4").str, "fortran_order": False, "shape": (rows, vocab)})

    def add(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float32).reshape(-1, self.vocab)
        finite = np.isfinite(block)
        self.nonfinite += int(block.size - np.count_nonzero(finite))
        if finite.all():
            self.max_abs = max(self.max_abs, float(np.abs(block).max(initial=0.0)))
            self.constant_rows += int(np.count_nonzero(block.max(axis=1) == block.min(axis=1)))
        if self._first is None and len(block):
            self._first = block[0].copy()
        self.same_as_first += int(np.count_nonzero((block == self._first).all(axis=1)))
        if self._f is not None:
            self._f.write(np.ascontiguousarray(block).tobytes())
        self.written += block.shape[0]

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def load_ids(path: str) -> list[np.ndarray]:
    """Windows of token ids: .json ``{"windows": [[...], ...]}`` or a list; .npy 1-D or 2-D."""
    if path.endswith(".npy"):
        a = np.load(path)
        windows = [a] if a.ndim == 1 else list(a)
    else:
        with open(path) as f:
            data = json.load(f)
        windows = data["windows"] if isinstance(data, dict) else data
        if windows and not isinstance(windows[0], list):
            windows = [windows]
    out = [np.asarray(w, dtype=np.int32) for w in windows]
    if not out or any(w.ndim != 1 or w.size == 0 for w in out):
        raise SystemExit(f"runner: {path}: no token windows")
    return out


def spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"median": None, "min": None, "max": None, "q1": None, "q3": None, "runs": []}
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "min": float(a.min()), "max": float(a.max()), "q1": float(q1),
            "q3": float(q3), "runs": [float(v) for v in a]}


def _prefill_no_logits(model, ids: np.ndarray) -> None:
    try:
        model.prefill(ids, logits=False)   # the engine's prefill signature: no logits computed
    except TypeError:                      # a runtime without the keyword
        model.prefill(ids)


def prefill_chunked(model, ids: np.ndarray, chunk: int, sink: LogitSink | None) -> np.ndarray:
    """Prefill ``ids`` in chunks of ``chunk`` (the cache carries over); return the last position's
    logits. With a sink every position's logits are computed and streamed to it; without one the
    prompt but its last token runs without logits and the last token through ``decode`` (how an
    app gets its first token)."""
    if sink is None:
        for s in range(0, len(ids) - 1, chunk):
            _prefill_no_logits(model, ids[s:min(s + chunk, len(ids) - 1)])
        return np.asarray(model.decode(int(ids[-1])))
    last = None
    for s in range(0, len(ids), chunk):
        logits = np.asarray(model.prefill(ids[s:s + chunk]))
        sink.add(logits)
        last = logits[-1]
    return last


def decode_steps(model, first: np.ndarray, n: int, sink: LogitSink | None = None) -> tuple[list[int], list[float]]:
    """Greedy decode ``n`` tokens after logits ``first``; (tokens, per-step seconds)."""
    tokens, times, logits = [], [], first
    for _ in range(n):
        tok = int(np.argmax(logits))
        t0 = time.perf_counter()
        logits = np.asarray(model.decode(tok))
        times.append(time.perf_counter() - t0)
        tokens.append(tok)
        if sink is not None:
            sink.add(logits)
    return tokens, times


HEAVY_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D")


def _delegated(ops: list[dict]) -> set[int]:
    """Indices of the original nodes each DELEGATE node replaced: walk back from the delegate's
    outputs to its inputs through the producers (the partition is exactly that set)."""
    producer = {}
    for op in ops:
        if op["op_name"] != "DELEGATE":
            for t in op["outputs"]:
                producer[int(t)] = op["index"]
    by_index = {op["index"]: op for op in ops}
    covered: set[int] = set()
    for d in (op for op in ops if op["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:
            t = stack.pop()
            n = producer.get(t)
            if t in boundary or n is None or n in covered:
                continue
            covered.add(n)
            stack.extend(int(x) for x in by_index[n]["inputs"] if x >= 0)
    return covered


def kernel_census(model) -> dict:
    """Which ops of each interpreter's primary subgraph ran inside the XNNPACK delegate and which
    on builtin kernels (Interpreter API only; reads the runtime's interpreters)."""
    out = {}
    for key, sess in (getattr(model, "_s", None) or {}).items():
        it = getattr(sess, "_it", None)
        if it is None:
            continue
        try:
            ops = it._get_ops_details()
        except Exception as e:  # noqa: BLE001 - a census is best effort, never fatal
            out[key] = {"error": str(e)}
            continue
        covered = _delegated(ops)
        builtin: dict[str, int] = {}
        for op in ops:
            if op["op_name"] != "DELEGATE" and op["index"] not in covered:
                builtin[op["op_name"]] = builtin.get(op["op_name"], 0) + 1
        out[key] = {"ops": sum(1 for op in ops if op["op_name"] != "DELEGATE"),
                    "delegates": sum(1 for op in ops if op["op_name"] == "DELEGATE"),
                    "delegated_ops": len(covered), "builtin_ops": dict(sorted(builtin.items())),
                    "heavy_builtin": {k: v for k, v in builtin.items() if k in HEAVY_OPS}}
    return out


def _model_meta(model_dir: str) -> dict:
    try:
        with open(os.path.join(model_dir, "model.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _model_files(model_dir: str) -> dict[str, str]:
    """{real path: file name} of the model's .tflite files (the rows of the smaps breakdown)."""
    meta = _model_meta(model_dir)
    names = [v["file"] for v in (meta.get("files") or {}).values() if isinstance(v, dict) and "file" in v]
    return {os.path.realpath(os.path.join(model_dir, n)): n for n in names}


def _weight_cache_files(model_dir: str, api: str, backend: str, cache_dir: str | None) -> list[str]:
    """The XNNPACK weight cache files this model's files would use now (empty: this run builds them)."""
    if api != "compiled" or backend != "xnnpack":
        return []
    from_meta = _model_meta(model_dir).get("files") or {}
    paths = [LiteRTModel.weight_cache_path(os.path.join(model_dir, v["file"]), cache_dir)
             for v in from_meta.values() if isinstance(v, dict) and "file" in v]
    return sorted(p for p in paths if os.path.isfile(p))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _before_baseline(args) -> tuple[dict[str, str], dict, str]:
    """Load the LiteRT libraries (they belong to the baseline: the app's runtime has them too, not
    the model) and, with ``--cold``, evict the model's files: (model files, evicted, cache state)."""
    import ai_edge_litert.interpreter  # noqa: F401
    if args.api == "compiled":
        import ai_edge_litert.compiled_model  # noqa: F401
    model_files = _model_files(args.model)
    cache_files = _weight_cache_files(args.model, args.api, args.backend, args.cache_dir)
    evicted = memwatch.evict(list(model_files) + cache_files) if args.cold else {}
    state = "steady" if cache_files else ("first" if args.api == "compiled" and args.backend == "xnnpack" else "n/a")
    return model_files, evicted, state


def _eval_phase(model, windows: list[np.ndarray], chunk: int, args, sampler, vocab: int):
    """Each window from a fresh cache (its logits to ``args.logits``), the last one's decode
    steps filling the cache to the context: (sanity sink, tokens, seconds, generated, fill step times)."""
    rows = sum(len(x) for x in windows) + args.decode_tokens
    sink = LogitSink(args.logits, rows, vocab) if args.logits else None
    check = LogitSink(None, 0, vocab) if sink is None else sink   # sanity counts without a file
    eval_tokens, t_eval, generated, fill_times = 0, 0.0, [], []
    for i, w in enumerate(windows):
        model.reset()
        t0 = time.perf_counter()
        last = prefill_chunked(model, w, chunk, sink)
        t_eval += time.perf_counter() - t0
        eval_tokens += len(w)
        if sink is None:
            check.add(last)
        if i == len(windows) - 1:  # fill the cache to the context with decode steps
            generated, fill_times = decode_steps(model, last, args.decode_tokens, check)
        sampler.sample()
    check.close()
    return check, eval_tokens, t_eval, generated, fill_times


def _speed_phase(model, windows: list[np.ndarray], chunk: int, args, sampler):
    """``args.runs`` timed runs of a ``prompt_tokens`` prompt and its decode steps:
    (prompt, time to first token, prefill tok/s, decode tok/s) per run."""
    prompt = windows[0][: max(1, min(args.prompt_tokens, len(windows[0])))]
    ttft, prefill_tps, decode_tps = [], [], []
    for _ in range(args.runs):
        model.reset()
        t0 = time.perf_counter()
        last = prefill_chunked(model, prompt, chunk, None)
        int(np.argmax(last))
        dt = time.perf_counter() - t0
        ttft.append(dt)
        prefill_tps.append(len(prompt) / dt)
        if args.decode_tokens:
            _, times = decode_steps(model, last, args.decode_tokens)
            decode_tps.append(len(times) / sum(times))
        sampler.sample()
    return prompt, ttft, prefill_tps, decode_tps


def _memory(baseline: dict, hwm_before: int, after_load: dict, end: dict, peak: dict, ru_maxrss: int,
            sampler) -> dict:
    """The result's ``memory``: baseline, after load, peak (sampled and VmHWM), end."""
    return {
        **{f"baseline_{n}_bytes": baseline.get(k) for k, n in _NAMES.items()},
        "baseline_hwm_bytes": hwm_before, "after_load_rss_bytes": after_load["VmRSS"],
        # VmHWM is folded lazily from per-CPU counters: a sample can read a few kB above it
        "peak_rss_bytes": max(end["VmHWM"], peak.get("VmRSS") or 0),
        "ru_maxrss_bytes": ru_maxrss, "end_rss_bytes": end["VmRSS"],
        "sampled_peak_rss_bytes": peak.get("VmRSS"),
        **{f"{n}_at_peak_bytes": peak.get(k) for k, n in _NAMES.items() if k != "VmRSS"},
        "peak_phase": peak.get("phase"), "samples": sampler.samples, "sample_interval_s": sampler.interval,
    }


def _timing(args, load_s: float, chunk: int, windows: list, eval_tokens: int, t_eval: float, fill_times: list,
            prompt, ttft: list, prefill_tps: list, decode_tps: list) -> dict:
    """The result's ``timing``: load, eval, the fill's decode steps, the speed runs' spreads."""
    return {
        "load_s": load_s,
        "chunk": chunk,
        "eval": {"windows": len(windows), "tokens": eval_tokens, "seconds": t_eval,
                 "tokens_per_s": eval_tokens / t_eval if t_eval else None,
                 "window_tokens": [len(w) for w in windows]},
        "fill_decode": {"tokens": len(fill_times), "seconds": sum(fill_times),
                        "tokens_per_s": len(fill_times) / sum(fill_times) if fill_times else None,
                        "context_reached": len(windows[-1]) + len(fill_times)},
        "prompt_tokens": len(prompt),
        "decode_tokens": args.decode_tokens,
        "runs": args.runs,
        "time_to_first_token_s": spread(ttft),
        "prefill_tokens_per_s": spread(prefill_tps),
        "decode_tokens_per_s": spread(decode_tps),
    }


def run(args: argparse.Namespace) -> dict:
    """The measurement (the module docstring's steps): load, eval, speed, end; its result dict."""
    windows = load_ids(args.ids_file)
    model_files, evicted, state = _before_baseline(args)
    baseline = memwatch.read_status()
    smaps_base = memwatch.smaps_breakdown(model_files)
    sampler = memwatch.Sampler(args.sample_ms / 1000.0, model_files=model_files)
    sampler.sample(force_point=True)
    sampler.start()

    sampler.set_phase("load")
    t0 = time.perf_counter()
    model = LiteRTModel(args.model, backend=args.backend, api=args.api, threads=args.threads,
                        cache_dir=args.cache_dir)
    load_s = time.perf_counter() - t0
    after_load = memwatch.read_status()
    meta = _model_meta(args.model)
    chunk = args.chunk or getattr(model, "prefill_length", None) or meta.get("prefill") or 128

    sampler.set_phase("eval")
    vocab = int(getattr(model, "vocab_size", None) or meta["vocab_size"])
    check, eval_tokens, t_eval, generated, fill_times = _eval_phase(model, windows, chunk, args, sampler, vocab)

    sampler.set_phase("speed")
    prompt, ttft, prefill_tps, decode_tps = _speed_phase(model, windows, chunk, args, sampler)

    sampler.set_phase("end")
    smaps_end = memwatch.smaps_breakdown(model_files)
    sampler.stop()
    end = memwatch.read_status()
    peak = sampler.peak
    series = sampler.to_json()
    near = memwatch.nearest_to_peak(series.get("smaps_near_peak"), smaps_end)
    info = getattr(model, "backend_info", None)
    return _jsonable({
        "version": RESULT_VERSION,
        "pid": os.getpid(), "python": sys.version.split()[0], "platform": platform.platform(),
        "machine": platform.machine(), "page_size": os.sysconf("SC_PAGE_SIZE"),
        "model_dir": os.path.abspath(args.model), "runtime": "edge_sdk",
        "cold": bool(args.cold), "evicted": evicted, "state": state,
        "weight_cache_files": {os.path.basename(p): os.path.getsize(p) for p in _weight_cache_files(
            args.model, args.api, args.backend, args.cache_dir)},
        "requested": {"backend": args.backend, "api": args.api, "threads": args.threads},
        "backend_info": info() if callable(info) else info,
        "kernels": kernel_census(model),
        "memory": _memory(baseline, baseline.get("VmHWM", 0), after_load, end, peak,
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, sampler),  # Linux: kB
        "smaps": {"baseline": smaps_base, "near_peak": near, "end": smaps_end,
                  "growth_near_peak": memwatch.diff_breakdown(near["rows"], smaps_base)},
        "series": series,
        "timing": _timing(args, load_s, chunk, windows, eval_tokens, t_eval, fill_times, prompt, ttft, prefill_tps,
                          decode_tps),
        "logits": {"path": os.path.abspath(args.logits) if args.logits else None,
                   "shape": [check.written, vocab], "dtype": "float32",
                   "checked_rows": check.written, "nonfinite": check.nonfinite,
                   "constant_rows": check.constant_rows, "rows_equal_to_first": check.same_as_first,
                   "max_abs": check.max_abs},
        "generated": generated,
    })


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge_sdk.validate.runner", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="converted model directory")
    ap.add_argument("--ids-file", required=True, help=".json {'windows': [[ids]]} or .npy of token ids")
    ap.add_argument("--out", required=True, help="result JSON path")
    ap.add_argument("--logits", default=None, help="write every position's logits here (.npy)")
    ap.add_argument("--backend", default="xnnpack", choices=("xnnpack", "builtin"))
    ap.add_argument("--api", default="interpreter", choices=("interpreter", "compiled"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=5, help="timed speed runs (median reported)")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt length of the speed runs")
    ap.add_argument("--decode-tokens", type=int, default=32, help="greedy decode steps per run")
    ap.add_argument("--chunk", type=int, default=None, help="prefill chunk (default: model's prefill length)")
    ap.add_argument("--sample-ms", type=float, default=5.0, help="RSS sampling interval")
    ap.add_argument("--cache-dir", default=None,
                    help="directory of the XNNPACK weight cache (default: MODEL/.xnnpack_cache)")
    ap.add_argument("--cold", action="store_true",
                    help="evict the model's files and its weight cache from the page cache before loading")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    memwatch.write_result(args.out, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

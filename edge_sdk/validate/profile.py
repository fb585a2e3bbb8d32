"""Where one decode step goes: per op kind and quantization scheme, and outside the model.

``decode_profile(model_dir, ...)`` cuts a step two ways and joins them into one breakdown that sums
to the step:

1. **The step as our runner runs it** (``LiteRTModel`` with the chosen API and kernels, the KV cache
   bound in place): after a ``fill``-token prefill, ``steps`` greedy decode steps, each file's runs
   timed by the runtime's own hook (``LiteRTModel.start_timing``): the runtime's call ("compute"),
   the feeds written and outputs read around it, the Python of ``decode()``, the caller's argmax.
2. **Every op of each file's decode signature alone** (``edge_sdk.litert.oneop``): each distinct op
   cut into a one-op model with its real weights and timed on XNNPACK (weights cold, fastest of
   ``reps``, an empty invoke subtracted), × its occurrences, summed per category: FULLY_CONNECTED
   int2/int4/int8 per channel, the LM head, attention, KV cache update and read, GATHER, norms and
   elementwise, layout.

The breakdown: each category's isolated time, then "between ops" = the measured compute of all
files − the sum of the isolated ops (scheduling, partition boundaries; negative when ops run
faster in the graph than alone), then the parts outside the model. The rows sum to the step
(``decode()`` + argmax). LiteRT's own per-op profiler is not reachable from the Python wheel (see
``oneop``), hence the cut. A profile, not a benchmark: one process, a loaded machine says so.

``python -m edge_sdk.validate.profile --model DIR --out JSON`` runs it as the validator's child.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

FLUSH_BYTES = 64 << 20          # > a 32 MiB last-level cache

ROLES = ("embedder", "per_layer_embedder", "prefill_decode")


def category(kind: str, in_types: list[str], w_shape: list[int] | None, vocab: int) -> str:
    if kind == "FULLY_CONNECTED":
        w = in_types[1] if len(in_types) > 1 else "?"
        if w_shape and vocab in w_shape:
            return f"LM head FULLY_CONNECTED {w.lower()} ({w_shape[0]}x{w_shape[1]})"
        return f"FULLY_CONNECTED {w.lower()} per-channel"
    if kind in ("BATCH_MATMUL", "SOFTMAX"):
        return "attention (BATCH_MATMUL, SOFTMAX)"
    if kind in ("DYNAMIC_UPDATE_SLICE", "QUANTIZE"):
        return "KV cache update (QUANTIZE, DYNAMIC_UPDATE_SLICE)"
    if kind == "DEQUANTIZE":
        return "KV cache read (DEQUANTIZE int8 -> float)"
    if kind in ("GATHER", "GATHER_ND", "EMBEDDING_LOOKUP"):
        return "GATHER (embedding tables)"
    if kind in ("RESHAPE", "SLICE", "STRIDED_SLICE", "TRANSPOSE", "CONCATENATION", "SPLIT"):
        return "layout (RESHAPE, SLICE, TRANSPOSE, CONCATENATION)"
    if kind in ("MUL", "ADD", "SQUARE", "MEAN", "RSQRT", "GELU", "TANH", "DIV", "SUB", "CAST"):
        return "norms and elementwise (MUL, ADD, SQUARE, MEAN, RSQRT, GELU, TANH)"
    return "other (mask and position arithmetic)"


def profile_steps(model_dir: str, *, api: str, backend: str, threads: int | None, fill: int, steps: int,
                  cache_dir: str | None = None) -> dict:
    """Part 1 (see the module docstring); seconds, medians over ``steps``."""
    from ..litert.runtime import LiteRTModel
    model = LiteRTModel(model_dir, backend=backend, api=api, threads=threads, cache_dir=cache_dir)
    try:
        rng = np.random.default_rng(0)
        ids = rng.integers(3, model.vocab_size, size=max(1, min(fill, model.context - steps - 2)))
        model.reset()
        model.prefill(ids, logits=False)
        logits = model.decode(int(ids[-1]))
        signature = model.decode_signature()   # decode_<S> when the model has spans (runtime docstring)
        timings = model.start_timing()
        step_s, argmax_s = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            tok = int(np.argmax(logits))
            t1 = time.perf_counter()
            logits = model.decode(tok)
            step_s.append(time.perf_counter() - t1)
            argmax_s.append(t1 - t0)
    finally:
        model.close()
    med = {role: {k: statistics.median(v) for k, v in t.items()} for role, t in timings.items()}
    return {"fill_tokens": int(ids.size), "steps": steps, "signature": signature, "threads": threads, "api": api,
            "backend": backend,
            "decode_s": statistics.median(step_s), "decode_min_s": min(step_s), "decode_max_s": max(step_s),
            "argmax_s": statistics.median(argmax_s),
            "compute_s": {r: m.get("compute", 0.0) for r, m in med.items()},
            "copies_s": sum(m.get("run", 0.0) - m.get("compute", 0.0) for m in med.values()),
            "run_s": sum(m.get("run", 0.0) for m in med.values())}


def profile_ops(model_dir: str, *, threads: int, reps: int, flush_bytes: int = FLUSH_BYTES,
                log=lambda s: None, signature: str | None = None) -> dict:
    """Part 2: every distinct op of every file's decode signature alone (``signature``: the
    prefill_decode signature the step ran, e.g. ``decode_512``); seconds per category."""
    from ..litert.oneop import OneOpModels, empty_model, time_invoke
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    vocab = int(meta["vocab_size"])
    flush = np.zeros(max(1, flush_bytes // 4), np.float32)
    null = min(time_invoke(empty_model(), threads, reps, flush)[0] for _ in range(3))
    rows, n_ops = [], 0
    for role in ROLES:
        if role not in meta["files"]:
            continue
        cut = OneOpModels(os.path.join(model_dir, meta["files"][role]["file"]))
        sig = signature if role == "prefill_decode" and signature else meta["signatures"][role]["decode"]
        sgi = cut.subgraph(sig)
        groups: dict = {}
        for op in cut.model.subgraphs[sgi].operators:
            kind, key = cut.describe(sgi, op)
            groups.setdefault(key, {"kind": kind, "count": 0, "op": op})["count"] += 1
            n_ops += 1
        log(f"profile: {role} '{sig}': {sum(g['count'] for g in groups.values())} ops, {len(groups)} distinct")
        for key, g in groups.items():
            kind, ins = g["kind"], key[1]
            w_shape = list(ins[1][0]) if kind == "FULLY_CONNECTED" and len(ins) > 1 and ins[1] else None
            try:
                t = time_invoke(cut.build(sgi, g["op"]), threads, reps, flush)[0]
                net, err = max(0.0, t - null), None
            except Exception as e:  # noqa: BLE001 - an op that cannot stand alone is reported, not fatal
                net, err = None, f"{type(e).__name__}: {e}"[:200]
            rows.append({"file": role, "kind": kind, "count": g["count"],
                         "category": category(kind, [x[1] if x else "-" for x in ins], w_shape, vocab),
                         "inputs": [[list(x[0]), x[1], x[2]] if x else None for x in ins],
                         "each_s": net, "total_s": None if net is None else net * g["count"], "error": err})
        del cut   # its arrays view the mapped file; the map goes with the last of them
    by_cat: dict[str, dict] = {}
    for r in rows:
        e = by_cat.setdefault(r["category"], {"ops": 0, "seconds": 0.0, "untimed_ops": 0})
        e["ops"] += r["count"]
        e["untimed_ops"] += r["count"] if r["total_s"] is None else 0
        e["seconds"] += r["total_s"] or 0.0
    return {"ops": n_ops, "distinct": len(rows), "empty_invoke_s": null, "reps": reps, "threads": threads,
            "isolated_sum_s": sum(e["seconds"] for e in by_cat.values()),
            "by_category": dict(sorted(by_cat.items(), key=lambda kv: -kv[1]["seconds"])),
            "top": sorted(rows, key=lambda r: -(r["total_s"] or 0))[:12]}


def breakdown(steps: dict, ops: dict) -> dict:
    """One table that sums to the step (``decode()`` + argmax): rows of (part, seconds)."""
    rows = [(k, e["seconds"]) for k, e in ops["by_category"].items()]
    compute = sum(steps["compute_s"].values())
    rows.append(("between ops (model compute - the ops alone)", compute - ops["isolated_sum_s"]))
    rows.append(("feeds written and outputs read (logits copy)", steps["copies_s"]))
    rows.append(("Python in decode() (mask, positions)", steps["decode_s"] - steps["run_s"]))
    rows.append(("argmax over the logits (caller)", steps["argmax_s"]))
    return {"step_s": steps["decode_s"] + steps["argmax_s"], "model_compute_s": compute,
            "rows": [{"part": k, "seconds": v} for k, v in rows]}


def decode_profile(model_dir: str, *, api: str = "compiled", backend: str = "xnnpack", threads: int | None = None,
                   fill: int = 128, steps: int = 16, reps: int = 9, cache_dir: str | None = None,
                   flush_bytes: int = FLUSH_BYTES, log=lambda s: None) -> dict:
    load = os.getloadavg()
    st = profile_steps(model_dir, api=api, backend=backend, threads=threads, fill=fill, steps=steps,
                       cache_dir=cache_dir)
    op = profile_ops(model_dir, threads=threads or 1, reps=reps, flush_bytes=flush_bytes, log=log,
                     signature=st["signature"])
    return {"version": 1, "model": os.path.abspath(model_dir), "cpus": os.cpu_count(),
            "loadavg": [load[0], os.getloadavg()[0]], "steps": st, "ops": op, "breakdown": breakdown(st, op)}


def render(p: dict) -> str:
    st, b = p["steps"], p["breakdown"]
    step = b["step_s"]
    lines = [f"decode step '{st['signature']}' ({st['api']}, {st['backend']}, {st['threads'] or 1} thread(s), after {st['fill_tokens']} "
             f"tokens; load {p['loadavg'][0]:.1f}): {step * 1e3:.2f} ms ({1 / step:.2f} tok/s); ops alone on XNNPACK, "
             f"fastest of {p['ops']['reps']}, {p['ops']['ops']} ops ({p['ops']['distinct']} distinct)",
             f"{'part of the step':<58} {'ops':>6} {'ms':>9} {'share':>7}"]
    cats = p["ops"]["by_category"]
    for r in b["rows"]:
        n = cats.get(r["part"], {}).get("ops", "")
        lines.append(f"{r['part']:<58} {n!s:>6} {r['seconds'] * 1e3:>9.3f} {r['seconds'] / step:>7.1%}")
    lines.append(f"{'step (decode() + argmax)':<58} {'':>6} {step * 1e3:>9.3f} {1:>7.1%}")
    return "\n".join(lines)


def render_markdown(p: dict) -> str:
    st, b = p["steps"], p["breakdown"]
    step, cats = b["step_s"], p["ops"]["by_category"]
    lines = [f"One decode step (`{st['signature']}`) after {st['fill_tokens']} tokens ({st['api']}, {st['backend']}, "
             f"{st['threads'] or 1} thread(s), load average {p['loadavg'][0]:.1f}): {step * 1e3:.2f} ms. Op rows: each "
             f"distinct op of the decode signatures alone on XNNPACK (weights cold, fastest of {p['ops']['reps']}) × its "
             "count; 'between ops' is the measured model compute minus their sum.", "",
             "| part of the step | ops | ms | share |", "|---|---:|---:|---:|"]
    for r in b["rows"]:
        lines.append(f"| {r['part']} | {cats.get(r['part'], {}).get('ops', '')} | {r['seconds'] * 1e3:.3f} | "
                     f"{r['seconds'] / step:.1%} |")
    lines.append(f"| **step** (decode() + argmax) | | **{step * 1e3:.3f}** | |")
    return "\n".join(lines)


def write_json(path: str, res: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="profile one decode step (the validator's child)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--api", default="compiled", choices=("interpreter", "compiled"))
    ap.add_argument("--backend", default="xnnpack", choices=("xnnpack", "builtin"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fill", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)
    res = decode_profile(a.model, api=a.api, backend=a.backend, threads=a.threads, fill=a.fill, steps=a.steps,
                         reps=a.reps, cache_dir=a.cache_dir, log=lambda s: print(s, file=sys.stderr, flush=True))
    write_json(a.out, res)
    print(render(res), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Where one decode step of a converted model goes: per op kind and scheme, and outside the model.

    python scripts/profile_decode.py OUT_DIR [--threads 2] [--fill 128] [--steps 16] [--reps 7]
        [--cache-dir DIR] [--json profile.json] [--only-ops | --only-steps]

The LiteRT wheel has no per-op profiler in Python (the Interpreter's ``experimental_*`` flags keep
tensors or force delegate profiling, but nothing reads a profile back; ``benchmark_model`` is not
shipped), so the step is cut in two ways:

1. **The step as our runner runs it** (``LiteRTModel``, CompiledModel + XNNPACK weight cache, the KV
   cache bound in place): after a ``--fill``-token prefill, ``--steps`` greedy decode steps; each
   ``_Session.run`` and each ``CompiledModel.run_by_name`` inside it is timed (by wrapping them in
   this process; the runtime is not changed). Per step: model compute per file (``embedder`` and
   ``per_layer_embedder``: their GATHERs; ``prefill_decode``: the decoder and the LM head), feeds and
   output copies (``run`` − ``run_by_name``: the input writes and the 1 MB logits read), and Python
   (``decode`` − the sessions: mask, position, argmax is outside ``decode``).
2. **Every op of the ``decode`` signature alone**: each distinct op (kind, input shapes, dtypes,
   constant or not, quantization, options) is cut out into a one-op model with its real weights and
   run on the Interpreter with the XNNPACK delegate (what XNNPACK does not take runs on the builtin
   kernel, as in the whole graph) at ``--threads``; the last-level cache is flushed before every
   timed invoke and the op's inputs are written after the flush, so weights come from DRAM as in a
   step that streams 0.8 GB while activations are as hot as the op before left them; the fastest of
   ``--reps`` invokes counts (on a shared machine a 2-thread invoke that loses a core stalls for
   milliseconds). An empty invoke's time (a one-element ADD) is subtracted. Times × occurrences, summed per op kind and per
   scheme (FULLY_CONNECTED int2/int4/int8 per-channel, the LM head, attention, KV cache update and
   read, norms/elementwise, layout). The sum of the isolated ops against the ``prefill_decode``
   compute of part 1 says how much is between ops (partition boundaries, scheduling).

Prints a table and writes JSON. A profile, not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLUSH_BYTES = 64 << 20          # > the 32 MiB L3 of the bench machine


# ---------------------------------------------------------------- part 1: the step as our runner runs it
def profile_steps(out_dir: str, threads: int, fill: int, steps: int, cache_dir: str | None) -> dict:
    """The package's step timing (``edge_sdk.validate.profile.profile_steps``, what ``run --profile``
    uses), in this script's table form: compute per file, feeds/copies, Python, argmax."""
    from edge_sdk.validate.profile import profile_steps as package_steps

    st = package_steps(out_dir, api="compiled", backend="xnnpack", threads=threads, fill=fill, steps=steps,
                       cache_dir=cache_dir)
    step = st["decode_s"]
    parts = {f"model: {f}": v for f, v in sorted(st["compute_s"].items())}
    parts["feeds and output copies (run - run_by_name)"] = st["copies_s"]
    parts["Python in decode() (mask, positions, reshape)"] = step - st["run_s"]
    parts["argmax over the logits (caller)"] = st["argmax_s"]
    return {"fill_tokens": st["fill_tokens"], "steps": steps, "threads": threads, "signature": st["signature"],
            "decode_step_s": {"median": step, "min": st["decode_min_s"], "max": st["decode_max_s"]},
            "tokens_per_s": 1.0 / step, "parts_s": parts}


# ---------------------------------------------------------------- part 2: every op alone
# the cutter, the timing and the categories are the package's (edge-sdk run --profile uses them)
from edge_sdk.litert.oneop import OneOpModels, empty_model as _null_model, time_invoke as _time_model  # noqa: E402
from edge_sdk.validate.profile import category  # noqa: E402


def profile_ops(out_dir: str, threads: int, reps: int, log=print, save_dir: str | None = None,
                save_top: int = 0) -> dict:
    meta = json.loads((Path(out_dir) / "model.json").read_text())
    vocab = int(meta["vocab_size"])
    path = os.path.join(out_dir, meta["files"]["prefill_decode"]["file"])
    sig = meta["signatures"]["prefill_decode"]["decode"]
    cut = OneOpModels(path)
    sgi = cut.subgraph(sig)
    sg = cut.model.subgraphs[sgi]
    groups: dict = {}
    for op in sg.operators:
        kind, key = cut.describe(sgi, op)
        g = groups.setdefault(key, {"kind": kind, "count": 0, "op": op})
        g["count"] += 1
    flush = np.zeros(FLUSH_BYTES // 4, np.float32)
    null = min(_time_model(_null_model(), threads, reps, flush)[0] for _ in range(3))
    log(f"profile_decode: {len(sg.operators)} ops in '{sig}', {len(groups)} distinct; empty invoke {null * 1e6:.1f} us")
    rows = []
    t_start = time.perf_counter()
    for i, (key, g) in enumerate(groups.items()):
        kind, ins = g["kind"], key[1]
        w_shape = list(ins[1][0]) if kind == "FULLY_CONNECTED" and len(ins) > 1 and ins[1] else None
        in_types = [x[1] if x else "-" for x in ins]
        try:
            content = cut.build(sgi, g["op"])
            t, t_med = _time_model(content, threads, reps, flush)
            err = None
        except Exception as e:  # noqa: BLE001 - one op that cannot stand alone is reported, not fatal
            t, t_med, err = None, None, f"{type(e).__name__}: {e}"[:200]
        net = None if t is None else max(0.0, t - null)
        rows.append({"kind": kind, "category": category(kind, in_types, w_shape, vocab), "count": g["count"],
                     "inputs": [list(x) if x else None for x in ins], "outputs": [list(x) for x in key[2]],
                     "invoke_s": t, "invoke_median_s": t_med, "net_s": net, "total_s": None if net is None else net * g["count"],
                     "error": err})
        if (i + 1) % 20 == 0:
            log(f"profile_decode: {i + 1}/{len(groups)} distinct ops timed ({time.perf_counter() - t_start:.0f} s)")
    saved = []
    if save_dir and save_top:
        # the costliest distinct ops as standalone models: a reproduction for LiteRT's own
        # benchmark_model (--graph=FILE --num_threads=N) or anyone's Interpreter
        os.makedirs(save_dir, exist_ok=True)
        ranked = sorted(((r["total_s"] or 0, key) for r, key in zip(rows, groups)), key=lambda x: -x[0])
        for rank, (_, key) in enumerate(ranked[:save_top]):
            r = next(x for x, k in zip(rows, groups) if k == key)
            w = r["inputs"][1] if r["kind"] in ("FULLY_CONNECTED", "BATCH_MATMUL") else None
            shape = "x".join(map(str, (w or r["inputs"][0])[0]))
            name = f"{rank + 1:02d}_{r['kind'].lower()}_{(w or r['inputs'][0])[1].lower()}_{shape}.tflite"
            with open(os.path.join(save_dir, name), "wb") as f:
                f.write(cut.build(sgi, groups[key]["op"]))
            saved.append(name)
    by_cat: dict[str, dict] = {}
    by_kind: dict[str, dict] = {}
    for r in rows:
        for table, k in ((by_cat, r["category"]), (by_kind, r["kind"])):
            e = table.setdefault(k, {"ops": 0, "seconds": 0.0, "untimed_ops": 0})
            e["ops"] += r["count"]
            if r["total_s"] is None:
                e["untimed_ops"] += r["count"]
            else:
                e["seconds"] += r["total_s"]
    total = sum(e["seconds"] for e in by_cat.values())
    return {"signature": sig, "ops": len(sg.operators), "distinct": len(groups), "empty_invoke_s": null,
            "threads": threads, "reps": reps, "isolated_sum_s": total, "saved_models": saved,
            "by_category": dict(sorted(by_cat.items(), key=lambda kv: -kv[1]["seconds"])),
            "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]["seconds"])),
            "rows": sorted(rows, key=lambda r: -(r["total_s"] or 0))}


def render(result: dict) -> str:
    lines = []
    st = result.get("steps")
    if st:
        step = st["decode_step_s"]["median"]
        lines += [f"decode step as our runner runs it (CompiledModel + XNNPACK cache, {st['threads']} threads, "
                  f"after {st['fill_tokens']} tokens): {step * 1e3:.1f} ms median ({st['tokens_per_s']:.2f} tok/s)",
                  "", "| part of the step | ms | share |", "|---|---:|---:|"]
        for k, v in st["parts_s"].items():
            lines.append(f"| {k} | {v * 1e3:.2f} | {v / step:.1%} |")
        lines.append("")
    op = result.get("ops")
    if op:
        ref = (st or {}).get("parts_s", {}).get("model: prefill_decode")
        lines += [f"ops of '{op['signature']}' alone ({op['ops']} ops, {op['distinct']} distinct, XNNPACK, "
                  f"{op['threads']} threads, weights flushed from the LLC before each invoke, fastest of {op['reps']}, empty invoke "
                  f"{op['empty_invoke_s'] * 1e6:.0f} us subtracted): sum {op['isolated_sum_s'] * 1e3:.1f} ms"
                  + (f" vs {ref * 1e3:.1f} ms for the graph in one run" if ref else ""),
                  "", "| op kind / scheme | ops | ms per step | share of the isolated sum |", "|---|---:|---:|---:|"]
        for k, e in op["by_category"].items():
            note = f" ({e['untimed_ops']} untimed)" if e["untimed_ops"] else ""
            lines.append(f"| {k} | {e['ops']}{note} | {e['seconds'] * 1e3:.2f} | "
                         f"{e['seconds'] / op['isolated_sum_s']:.1%} |")
        lines += ["", "| op | ops | ms per step |", "|---|---:|---:|"]
        for k, e in op["by_kind"].items():
            lines.append(f"| {k} | {e['ops']} | {e['seconds'] * 1e3:.2f} |")
        lines += ["", "top distinct ops (time x count):", "", "| op | inputs (shape, dtype) | count | us each | ms per step |",
                  "|---|---|---:|---:|---:|"]
        for r in op["rows"][:12]:
            ins = ", ".join(f"{'x'.join(map(str, x[0]))} {x[1].lower()}{' const' if x[2] else ''}"
                            for x in r["inputs"] if x)
            each = "n/a" if r["net_s"] is None else f"{r['net_s'] * 1e6:.0f}"
            tot = "n/a" if r["total_s"] is None else f"{r['total_s'] * 1e3:.2f}"
            lines.append(f"| {r['kind']} | {ins} | {r['count']} | {each} | {tot} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="converted model directory (edge-sdk convert output)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fill", type=int, default=128, help="prompt tokens before the decode steps")
    ap.add_argument("--steps", type=int, default=16, help="decode steps timed (part 1)")
    ap.add_argument("--reps", type=int, default=9, help="timed invokes per distinct op (part 2)")
    ap.add_argument("--cache-dir", default=None, help="XNNPACK weight cache directory (default: the runtime's)")
    ap.add_argument("--json", default="profile_decode.json", help="write the result here")
    ap.add_argument("--save-ops", default=None, metavar="DIR",
                    help="write the --save-top costliest distinct ops as one-op .tflite models here")
    ap.add_argument("--save-top", type=int, default=5)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--only-steps", action="store_true", help="part 1 only")
    g.add_argument("--only-ops", action="store_true", help="part 2 only")
    args = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    result = {"model": os.path.abspath(args.model), "machine": platform.machine(), "cpus": os.cpu_count(),
              "loadavg_before": os.getloadavg()}
    if not args.only_ops:
        result["steps"] = profile_steps(args.model, args.threads, args.fill, args.steps, args.cache_dir)
    if not args.only_steps:
        result["ops"] = profile_ops(args.model, args.threads, args.reps, log, args.save_ops, args.save_top)
    result["loadavg_after"] = os.getloadavg()
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

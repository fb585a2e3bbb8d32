#!/usr/bin/env python
"""Converted models of one checkpoint side by side in our runner, alternating: prefill chunk length T
(32/128/256), or a graph before and after a change.

    python scripts/bench_prefill_chunk.py DIR_A DIR_B [DIR_C ...] [--rounds 3] [--threads 2] [--deep]
        [--work /tmp/bench-chunk] [--json WORK/bench_prefill_chunk.json]

Each DIR is an ``edge-sdk convert`` output of the same checkpoint (e.g. ``--prefill T``); ``--deep``
adds the decode at 4K context (bench_peers' 4064-token window: ~2 min a model a round). Per round every model runs
once (order rotated per round) in our runner (``edge_sdk.validate.runner``, CompiledModel +
XNNPACK weight cache, a warm-up run builds each cache first): a 128-token and a 512-token prompt
(``bench_peers.run_ours`` without the 4K run). Reports medians of prefill tok/s, decode tok/s and
the model's share of peak RSS (the 512-token run: the largest activation arena a chunk needs),
with the ratio to the first DIR taken round by round. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers as B  # noqa: E402

FIELDS = (("prefill_128", "prefill tok/s, 128-token prompt"), ("prefill_512", "prefill tok/s, 512-token prompt"),
          ("decode_short", "decode tok/s after 128 tokens"), ("decode_4k", "decode tok/s at 4K context (--deep)"),
          ("model_share", "model share of peak RSS (GB)"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bench-chunk"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--deep", action="store_true", help="also decode at 4K context")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    names = [f"{Path(m).name} (T={json.loads((Path(m) / 'model.json').read_text())['prefill']})" for m in a.models]
    cache = str(work / "xnnpack_cache")
    for m in a.models:   # build each weight cache outside the measurement
        B.run_ours(m, cache, a.threads, work, deep_run=False)
    rounds, loads = [], []
    for i in range(a.rounds):
        order = list(range(len(a.models)))
        order = order[i % len(order):] + order[:i % len(order)]
        rnd = {}
        for j in order:
            loads.append(os.getloadavg()[0])
            r = B.run_ours(a.models[j], cache, a.threads, work, deep_run=a.deep)
            rnd[names[j]] = {k: r.get(k) for k, _ in FIELDS}
            B.log(f"round {i + 1}: {names[j]} {rnd[names[j]]}")
        rounds.append(rnd)
    summary = {}
    for n in names:
        summary[n] = {}
        for k, _ in FIELDS:
            vals = [r[n][k] for r in rounds if r[n][k] is not None]
            ratio = [r[n][k] / r[names[0]][k] for r in rounds if r[n][k] and r[names[0]][k]]
            summary[n][k] = {"median": statistics.median(vals) if vals else None,
                             "min": min(vals, default=None), "max": max(vals, default=None),
                             "ratio": statistics.median(ratio) if ratio else None}
    out = {"models": dict(zip(names, a.models)), "threads": a.threads, "rounds": rounds, "summary": summary,
           "load_min": min(loads), "load_max": max(loads), "cpus": os.cpu_count()}
    Path(a.json or work / "bench_prefill_chunk.json").write_text(json.dumps(out, indent=1))
    print(f"| {a.threads} threads, {a.rounds} rounds, load {min(loads):.1f}-{max(loads):.1f} | "
          + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for k, label in FIELDS:
        cells = []
        for n in names:
            s = summary[n][k]
            if s["median"] is None:
                cells.append("-")
                continue
            v = (lambda x: f"{x / 1e9:.3f}") if k == "model_share" else (lambda x: f"{x:.1f}")
            cells.append(f"{v(s['median'])} ({v(s['min'])}–{v(s['max'])})"
                         + (f" {s['ratio']:.2f}×" if n != names[0] and s["ratio"] else ""))
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

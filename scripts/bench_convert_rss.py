#!/usr/bin/env python
"""Converter memory at full width: peak RSS of ``edge-sdk convert`` per size and depth, per layer.

    python scripts/bench_convert_rss.py --size 31b --layers 4,8 [--recipe int4] [--work DIR]
        [--json scripts/results/convert_rss_31b.json] [--docs docs/benchmarks.md] [--keep]
    python scripts/bench_convert_rss.py --size 12b            # every layer (a full-size checkpoint)

For each depth (``--layers``: reduced-depth checkpoints of the size's full width; without it, the
full model):
1. a config: the size's hub config (``models/configs/gemma-4-SIZE.json``) with ``num_hidden_layers``
   = N and ``layer_types`` = the real model's last N layer types (so sliding and full layers keep their
   order, and the last layer is a full one, as in every Gemma 4); every tensor keeps its real shape;
2. ``scripts/make_synthetic_checkpoint.py`` on it (bf16, streamed in row blocks);
3. ``edge-sdk convert CKPT --recipe R --text-only`` in a child process (this script with ``--child``):
   ``edge_sdk.validate.memwatch.Sampler`` samples the child's own RSS every 50 ms, and each planned
   tensor's data being written is stamped with the time and VmRSS (a ``WeightBank`` whose ``on_data``
   also records; nothing else changes), so per-layer time and RSS come from one run. The parent also
   takes the child's ``wait4`` ru_maxrss;
4. plan vs written, to the byte: each planned tensor's constant in the written .tflite has exactly the
   plan's ``data_bytes``, and its codebooks / block scales buffer exactly its ``overhead_bytes``
   (per-channel scales live in the flatbuffer's quantization parameters); the sums are reported;
5. the checkpoint is deleted (``--keep`` keeps it).

Prints a table, writes ``--json`` and, with ``--docs``, the size's block between its markers.
RSS growth per layer is the least-squares slope of VmRSS at each layer's end over the layers; with two
depths, also (peak(N2) - peak(N1)) / (N2 - N1). The machine is shared: times are under load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = re.compile(r"^layers\.(\d+)\.")
GOAL_RSS = 2e9


def derived_config(config: Path, layers: int | None, out: Path, vocab: int | None = None) -> Path:
    """The hub config with its text stack cut to the real model's last ``layers`` layers (and, with
    ``vocab``, the embedding tables to that many rows: their width stays real)."""
    cfg = json.loads(config.read_text())
    text = cfg.get("text_config", cfg)
    if vocab is not None:
        text["vocab_size"] = vocab
        if text.get("vocab_size_per_layer_input"):
            text["vocab_size_per_layer_input"] = vocab
    if layers is not None:
        types = list(text["layer_types"])
        if not 0 < layers <= len(types):
            raise SystemExit(f"--layers {layers}: the model has {len(types)} layers")
        text["num_hidden_layers"], text["layer_types"] = layers, types[-layers:]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def child(ckpt: str, out: str, recipe: str, context: int, result: str) -> int:
    """The measured conversion (runs in its own process)."""
    from edge_sdk.validate.memwatch import Sampler, read_status, write_result

    sampler = Sampler(interval=0.05, series_every=1.0, smaps_step=0.05, smaps_gap=5.0)
    sampler.start()
    import edge_sdk.litert.export as export
    from edge_sdk.pipeline import convert

    events: list[list] = []
    base = export.WeightBank

    class RecordingBank(base):   # stamps each tensor's data write; the bytes are the converter's own
        def __init__(self, *a, on_data=None, **kw):
            def stamp(name, nbytes):
                events.append([round(time.perf_counter() - sampler.t0, 3), name, read_status()["VmRSS"]])
                if on_data is not None:
                    on_data(name, nbytes)
            super().__init__(*a, on_data=stamp, **kw)

    export.WeightBank = RecordingBank
    sampler.set_phase("convert")
    t0 = time.perf_counter()
    res = convert(ckpt, out, recipe=recipe, text_only=True, context=context, overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    sampler.stop()
    write_result(result, {"wall_s": wall, "events": events, "sampler": sampler.to_json(),
                          "conversion_peak_rss_bytes": res.conversion.peak_rss_bytes})
    return 0


def run_child(cmd: list[str], log) -> dict:
    """``bench_size.timed_child``: wall seconds, exit status, the child's peak RSS (wait4 ru_maxrss)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_size import timed_child
    return timed_child(cmd, log)


def per_layer(events: list[list]) -> list[dict]:
    """Per decoder layer: the time its data took (from the write before the run of its tensors that ends
    with its last one: small tensors are written inline, ahead of every big one) and VmRSS at its end."""
    last: dict[int, int] = {}
    for k, (_, name, _) in enumerate(events):
        m = LAYER.match(name)
        if m:
            last[int(m.group(1))] = k

    def layer_of(k):
        m = LAYER.match(events[k][1])
        return int(m.group(1)) if m else None

    rows = []
    for i in sorted(last):
        k = last[i]
        while k > 0 and layer_of(k - 1) == i:
            k -= 1
        t, rss = events[last[i]][0], events[last[i]][2]
        rows.append({"layer": i, "t_s": t, "seconds": round(t - events[k - 1][0], 3) if k else None, "rss": rss})
    return rows


def summarize(row: dict, events: list[list]) -> None:
    """Per-layer rows, their median time and the RSS slope, from the child's stamped writes."""
    lay = per_layer(events)
    secs = sorted(x["seconds"] for x in lay if x["seconds"] is not None)
    row.update({"per_layer": lay, "layer_seconds_median": secs[len(secs) // 2] if secs else None,
                "rss_growth_per_layer_bytes": slope([x["layer"] for x in lay], [x["rss"] for x in lay])})


def slope(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def plan_vs_written(out: Path) -> dict:
    """Each planned tensor's written constant(s) against the plan's bytes (see the module docstring)."""
    from edge_sdk.litert.reader import read_tflite

    plan = json.loads((out / "plan.json").read_text())
    files = {f: {c.name: c for c in read_tflite(out / f).constants} for f in {t["file"] for t in plan["tensors"]}}
    planned = written = 0
    mismatches = []
    for t in plan["tensors"]:
        consts = files[t["file"]]
        got = consts[t["name"]].nbytes if t["name"] in consts else -1
        side = next((consts[t["name"] + s] for s in ("_codebooks", "_scales") if t["name"] + s in consts), None)
        want_side = t["overhead_bytes"] if side is not None else 0
        got_side = side.nbytes if side is not None else 0
        planned += t["data_bytes"] + want_side
        written += max(got, 0) + got_side
        if got != t["data_bytes"] or got_side != want_side:
            mismatches.append({"tensor": t["name"], "planned": [t["data_bytes"], want_side], "written": [got, got_side]})
    file_bytes = {f: (out / f).stat().st_size for f in files}
    return {"tensors": len(plan["tensors"]), "planned_bytes": planned, "written_bytes": written,
            "mismatches": mismatches[:20], "n_mismatches": len(mismatches), "file_bytes": file_bytes}


def measure_depth(size: str, config: Path, layers: int | None, args, log) -> dict:
    """One depth: config, checkpoint, measured conversion, plan check, cleanup."""
    tag = (f"L{layers}" if layers is not None else "full") + (f"-V{args.vocab}" if args.vocab else "")
    work = Path(args.work) / f"{size}-{tag}"
    cfg = derived_config(config, layers, work / "config.json", args.vocab)
    ckpt, out = work / "ckpt", work / "out"
    row: dict = {"size": size, "layers": layers, "recipe": args.recipe, "vocab": args.vocab}
    if not (ckpt / "model.safetensors.index.json").is_file():
        r = run_child([sys.executable, str(ROOT / "scripts" / "make_synthetic_checkpoint.py"), str(cfg), str(ckpt)],
                      log)
        if r["rc"] != 0:
            raise SystemExit(f"make_synthetic_checkpoint failed for {tag}")
        row["checkpoint_seconds"] = round(r["seconds"], 1)
    row["checkpoint_bytes"] = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    result = work / "child.json"
    r = run_child([sys.executable, __file__, "--child", str(ckpt), str(out), args.recipe, str(args.context),
                   str(result)], log)
    if r["rc"] != 0:
        raise SystemExit(f"convert failed for {tag}")
    res = json.loads(result.read_text())
    text = json.loads(cfg.read_text())
    text = text.get("text_config", text)
    row.update({
        "num_layers": text["num_hidden_layers"], "layer_types": text["layer_types"],
        "wall_s": round(res["wall_s"], 1), "peak_rss_bytes": r["peak_rss_bytes"],
        "sampler_peak_rss_bytes": res["sampler"]["peak"]["rss"], "peak_phase_t_s": res["sampler"]["peak"]["t_s"],
        "child_result": str(result), "rss_series": res["sampler"]["series"], "plan_check": plan_vs_written(out),
    })
    summarize(row, res["events"])
    row["output_bytes"] = sum(row["plan_check"]["file_bytes"].values())
    if not args.keep:
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    return row


def gb(n) -> str:
    return "n/a" if n is None else f"{n / 1e9:.3f} GB"


def markdown(res: dict) -> str:
    rows = res["runs"]
    size = res["size"]
    lines = [f"## Converter memory, Gemma 4 {size.upper()} at full width (`{res['recipe']} --text-only`)", "",
             f"Produced by `python scripts/bench_convert_rss.py --size {size}"
             + (f" --layers {','.join(str(r['layers']) for r in rows)}" if rows[0]["layers"] else "")
             + (f" --vocab {rows[0]['vocab']}" if rows[0].get("vocab") else "")
             + f" --recipe {res['recipe']}` on {res['host']} ({res['cpus']} CPUs, shared: times are under load), "
             f"{res['date']}. Synthetic bf16 checkpoints (`scripts/make_synthetic_checkpoint.py`) with every tensor "
             "of the real shape; reduced depth = the real model's last N layer types. Peak RSS: the converter "
             "process's own (`wait4` ru_maxrss; GB = 10^9 bytes). Per layer: from the write before a layer's first "
             "tensor to its last tensor's; RSS growth: least-squares slope of VmRSS at each layer's end."
             + (f" Vocabulary cut to {rows[0]['vocab']:,} rows (the tables keep their real width; they are "
                "prepared in row blocks of ≤ 64 MB float32, so their rows set time, not memory)."
                if rows[0].get("vocab") else ""), "",
             "| layers | checkpoint | convert wall | s / layer (median) | peak RSS | RSS growth / layer | "
             "output | plan bytes = written |", "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        pc = r["plan_check"]
        g = r["rss_growth_per_layer_bytes"]
        lines.append(f"| {r['num_layers']} | {gb(r['checkpoint_bytes'])} | {r['wall_s']:.0f} s | "
                     f"{'n/a' if r['layer_seconds_median'] is None else '%.1f s' % r['layer_seconds_median']} | "
                     f"{gb(r['peak_rss_bytes'])} | {'n/a' if g is None else '%+.2f MB' % (g / 1e6)} | "
                     f"{gb(r['output_bytes'])} | "
                     + ("yes, " if pc["n_mismatches"] == 0 else f"**no** ({pc['n_mismatches']} tensors), ")
                     + f"{pc['planned_bytes']:,} B in {pc['tensors']} tensors |")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        d = (b["peak_rss_bytes"] - a["peak_rss_bytes"]) / (b["num_layers"] - a["num_layers"])
        lines += ["", f"Peak RSS from {a['num_layers']} to {b['num_layers']} layers: {d / 1e6:+.2f} MB per layer "
                  f"(goal: ≤ {GOAL_RSS / 1e9:.0f} GB whatever the depth)."]
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=5, metavar=("CKPT", "OUT", "RECIPE", "CONTEXT", "RESULT"), help=argparse.SUPPRESS)
    ap.add_argument("--size", default="31b", help="models/configs/gemma-4-SIZE.json")
    ap.add_argument("--config", default=None, help="a hub config instead of --size's")
    ap.add_argument("--layers", default="", help="reduced depths, e.g. 4,8 (default: the full model)")
    ap.add_argument("--recipe", default="int4")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--work", default="/tmp/convert-rss")
    ap.add_argument("--json", default=None, help="default scripts/results/convert_rss_SIZE.json")
    ap.add_argument("--docs", default=None, help="regenerate this size's block in this markdown file")
    ap.add_argument("--vocab", type=int, default=None, help="cut the embedding tables to this many rows")
    ap.add_argument("--merge", nargs="+", default=None, help="render these result JSONs' runs as one table")
    ap.add_argument("--keep", action="store_true", help="keep checkpoints and outputs")
    args = ap.parse_args(argv)
    if args.child:
        ckpt, out, recipe, context, result = args.child
        return child(ckpt, out, recipe, int(context), result)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        res = {**parts[0], "runs": sorted((r for p in parts for r in p["runs"]), key=lambda r: r["num_layers"])}
        for r in res["runs"]:   # per-layer figures recomputed from the child's stamps when they are at hand
            if r.get("child_result") and Path(r["child_result"]).is_file():
                summarize(r, json.loads(Path(r["child_result"]).read_text())["events"])
        return finish(res, args)
    config = Path(args.config or ROOT / "models" / "configs" / f"gemma-4-{args.size}.json")
    depths = [int(x) for x in args.layers.split(",") if x] or [None]
    res = {"size": args.size, "config": str(config), "recipe": args.recipe, "context": args.context,
           "date": time.strftime("%Y-%m-%d"), "host": os.uname().sysname + " " + os.uname().machine,
           "cpus": os.cpu_count(), "runs": []}
    jpath = Path(args.json or ROOT / "scripts" / "results" / f"convert_rss_{args.size}.json")
    for n in depths:
        res["runs"].append(measure_depth(args.size, config, n, args, log))
        jpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = jpath.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, jpath)
    return finish(res, args)


def finish(res: dict, args) -> int:
    """Print the table; write the JSON (``--merge``: to ``--json``) and the docs block."""
    if args.merge and args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    md = markdown(res)
    print(md)
    if args.docs:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_size import write_docs
        write_docs(Path(args.docs), md, f"convert_rss_{res['size']}", script="bench_convert_rss.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())

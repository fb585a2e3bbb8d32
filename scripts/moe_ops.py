#!/usr/bin/env python
"""Operators per layer of the mixture-of-experts block, per signature, in a real conversion.

    python scripts/moe_ops.py CKPT [--recipe int4] [--work DIR] [--json OUT.json] [--tag NAME] [--keep]

Converts ``CKPT`` (e.g. a full-width reduced-depth 26B-A4B checkpoint from ``make_synthetic_checkpoint.py``)
with ``edge-sdk convert --text-only`` in this process, with ``gemma4.moe_feed_forward`` wrapped to count
the operators each call adds to its subgraph (so the figure is the MoE block's own: router, experts,
shared-MLP norm; the attention and dense MLP are left out), then counts every operator of each signature
in the written ``prefill_decode.tflite``. Prints a table and writes JSON. The edge_sdk on ``PYTHONPATH``
is the one measured: point it at an export of an older commit to count that formulation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path


def count(ckpt: str, out: Path, recipe: str) -> dict:
    import edge_sdk.litert.gemma4 as gemma4
    from ai_edge_litert import schema_py_generated as schema
    from edge_sdk.cli import main

    inner = gemma4.moe_feed_forward
    per_call: dict[str, list[int]] = {}

    def counted(step, layer, r, mlp_out):
        ops = step.g.writer._subgraph(step.g.index).operators
        before = len(ops)
        h = inner(step, layer, r, mlp_out)
        per_call.setdefault(step.g.name, []).append(len(ops) - before)
        return h

    gemma4.moe_feed_forward = counted
    try:
        rc = main(["convert", ckpt, "-o", str(out), "--recipe", recipe, "--text-only", "--overwrite"])
    finally:
        gemma4.moe_feed_forward = inner
    if rc != 0:
        raise SystemExit(f"convert failed ({rc})")
    buf = (out / "prefill_decode.tflite").read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    total = {}
    for sg in model.subgraphs:
        kinds = Counter(names[model.operatorCodes[op.opcodeIndex].builtinCode] for op in sg.operators)
        total[sg.name.decode()] = {"ops": len(sg.operators), "by_kind": dict(kinds.most_common())}
    return {"moe_ops_per_layer": per_call, "subgraphs": total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--recipe", default="int4")
    ap.add_argument("--work", default=None, help="conversion output goes here (deleted after)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--tag", default="", help="a label for the formulation measured (e.g. the commit)")
    ap.add_argument("--keep", action="store_true", help="keep the converted model (WORK/out)")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="moe_ops_"))
    out = work / "out"
    try:
        res = {"ckpt": args.ckpt, "recipe": args.recipe, "tag": args.tag, **count(args.ckpt, out, args.recipe)}
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(f"{'signature':<16} {'MoE ops / layer':>16} {'layers':>7} {'all ops':>8}  ({args.tag})")
    for name, sg in res["subgraphs"].items():
        calls = res["moe_ops_per_layer"].get(name, [])
        per = "n/a" if not calls else "/".join(str(c) for c in sorted(set(calls)))
        print(f"{name:<16} {per:>16} {len(calls):>7} {sg['ops']:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

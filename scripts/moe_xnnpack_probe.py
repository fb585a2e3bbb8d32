#!/usr/bin/env python
"""Does a group of routed experts cost its float copy once, or once per group? Builtin kernels vs XNNPACK.

    python scripts/moe_xnnpack_probe.py [--json OUT.json]

Builds small graphs shaped like one matmul of the 26B-A4B MoE block (``litert/gemma4_moe.py``): an
int8 [16, 1408, 2816] expert stack (constant), 8 pairs a group, and per group GATHER(stack, ids) →
CAST float32 → matmul with the pairs' rows (127 MB of float32 a group), for 1 and 4 groups, with the
matmul as BATCH_MATMUL (``adj_y``, as the converter emits it), with ``adj_x`` too, at rank 5, with
the experts on the left, or as one FULLY_CONNECTED with dynamic weights. Each runs in a fresh child process that
loads the model in the real LiteRT Interpreter (builtin kernels, or the default XNNPACK delegate),
invokes it once and reports VmRSS. Prints a table (RSS after the invoke, and what each group past the
first adds) and writes JSON. RSS is a page count, so the machine's load does not change it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

E, N, O, I = 16, 8, 1408, 2816
FORMS = ("bmm_adj_y", "bmm_adj_x", "bmm_rank5", "experts_left", "fc_dynamic")


def build(path: Path, form: str, groups: int) -> None:
    import numpy as np
    from edge_sdk.litert.graph import GraphBuilder
    from edge_sdk.litert.writer import LiteRTWriter

    w = LiteRTWriter(path)
    g = GraphBuilder(w, "main")
    stack = g.const("codes", np.random.default_rng(0).integers(-7, 8, size=(E, O, I), dtype=np.int8))
    x = g.input("x", [N, 1, I], "float32")
    ids = g.input("ids", [N], "int32")
    ys = []
    for _ in range(groups):
        wt = g.cast(g.gather(stack, ids, axis=0), "float32")
        if form == "bmm_adj_y":
            y = g.batch_matmul(x, wt, adj_y=True)
        elif form == "bmm_adj_x":
            y = g.batch_matmul(g.reshape(x, [N, I, 1]), wt, adj_x=True, adj_y=True)
        elif form == "bmm_rank5":
            y = g.reshape(g.batch_matmul(g.reshape(x, [N, 1, 1, 1, I]), g.reshape(wt, [N, 1, 1, O, I]), adj_y=True),
                          [N, 1, O])
        elif form == "experts_left":
            y = g.reshape(g.batch_matmul(wt, g.reshape(x, [N, I, 1])), [N, 1, O])
        else:
            y = g.reshape(g.fully_connected(g.reshape(x, [N, I]), g.reshape(wt, [N * O, I])), [N, 1, N * O])
        ys.append(y)
    g.output("y", ys[0] if groups == 1 else g.concatenation(ys, axis=1))
    g.finish("main")
    w.finish()


def child(path: str, backend: str) -> int:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {} if backend == "xnnpack" else {
        "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    it = Interpreter(model_path=path, **kw)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.arange(N, dtype=np.int32) if d["dtype"] == np.int32
                      else np.ones(d["shape"], np.float32))
    it.invoke()
    rss = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))
    print(json.dumps({"rss": rss}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.child:
        return child(*args.child)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for form in FORMS:
            for groups in (1, 4):
                path = Path(tmp) / f"{form}_{groups}.tflite"
                build(path, form, groups)
                for backend in ("builtin", "xnnpack"):
                    out = subprocess.run([sys.executable, __file__, "--child", str(path), backend],
                                         capture_output=True, text=True, check=True).stdout
                    rss = json.loads(out.strip().splitlines()[-1])["rss"]
                    rows.append({"form": form, "groups": groups, "backend": backend, "rss": rss})
    print(f"{'form':<14} {'backend':<8} {'RSS 1 group':>12} {'RSS 4 groups':>13} {'per extra group':>16}")
    for form in FORMS:
        for backend in ("builtin", "xnnpack"):
            one, four = (next(r["rss"] for r in rows if (r["form"], r["groups"], r["backend"]) == (form, n, backend))
                         for n in (1, 4))
            print(f"{form:<14} {backend:<8} {one / 2**20:>9.0f} MiB {four / 2**20:>10.0f} MiB "
                  f"{(four - one) / 3 / 2**20:>13.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"group_float_bytes": N * O * I * 4, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

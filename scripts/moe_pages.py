#!/usr/bin/env python
"""Does LiteRT touch only the routed experts' pages? Measured on a converted MoE model with large experts.

Builds (transformers, random init, float32) a 2-layer Gemma 4 MoE text model with 64 experts of
width 512 at hidden 256 (top-2), converts it with the ``int4`` preset (experts int4 per channel:
one expert's gate_up is 128 KiB, 32 pages), then, in a fresh child process per run: evicts the
model files from the page cache (POSIX_FADV_DONTNEED), loads the model in the real LiteRT
interpreter, runs ``decode`` (one token) or a prompt of N tokens, and reads
``/proc/self/pagemap`` over LiteRT's own mapping of ``prefill_decode.tflite``: which pages of each
expert stack are present in the process. An expert counts as touched when any of its pages is.

    python scripts/moe_pages.py [--work DIR] [--json OUT.json]

Prints a table (backend, tokens, experts touched per stack vs the most routing allows, present
bytes of the stacks vs their size) and writes JSON. The machine is shared and loaded; the figures
are page counts, not timings, so load does not change them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CFG = dict(vocab_size=512, hidden_size=256, intermediate_size=192, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, head_dim=32, global_head_dim=64,
           num_global_key_value_heads=1, attention_k_eq_v=True, sliding_window=8,
           layer_types=["sliding_attention", "full_attention"], hidden_size_per_layer_input=0,
           vocab_size_per_layer_input=0, final_logit_softcapping=30.0, enable_moe_block=True,
           num_experts=64, top_k_experts=2, moe_intermediate_size=512)
PAGE = os.sysconf("SC_PAGE_SIZE")


def build(work: Path) -> Path:
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    ckpt = work / "ckpt"
    if not (ckpt / "config.json").is_file():
        torch.manual_seed(0)
        model = Gemma4ForCausalLM(Gemma4TextConfig(**CFG))
        with torch.no_grad():   # routing spread over the experts (transformers inits proj at std 0.02)
            for layer in model.model.layers:
                layer.router.proj.weight.normal_(0.0, 1.0)
        model.save_pretrained(ckpt)
    out = work / "int4"
    if not (out / "model.json").is_file():
        from edge_sdk.cli import main
        if main(["convert", str(ckpt), "-o", str(out), "--recipe", "int4", "--context", "64", "--prefill", "8",
                 "--overwrite"]) != 0:
            raise SystemExit("convert failed")
    return out


def child(out: str, backend: str, tokens: int) -> dict:
    """Runs in a fresh process: cold load, run, pagemap of the expert stacks."""
    import numpy as np

    from edge_sdk.litert.reader import read_tflite
    from edge_sdk.litert.runtime import LiteRTModel

    path = os.path.realpath(os.path.join(out, "prefill_decode.tflite"))
    for f in Path(out).glob("*.tflite"):
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    stacks = {c.name: c for c in read_tflite(path).constants if c.name.endswith(("experts.gate_up_proj",
                                                                                 "experts.down_proj"))}
    m = LiteRTModel(out, backend=backend)
    if tokens == 1:
        m.decode(7)
    else:
        m.prefill(list(np.random.default_rng(0).integers(3, 500, tokens)))
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == path:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                maps.append((lo, hi, int(parts[2], 16)))
    E = CFG["num_experts"]
    res = {"backend": backend, "tokens": tokens, "max_routed": min(E, tokens * CFG["top_k_experts"]),
           "stacks": {}, "mapped": bool(maps)}
    with open("/proc/self/pagemap", "rb") as pm:
        for name, c in sorted(stacks.items()):
            per = c.nbytes // E
            touched, present = 0, 0
            for e in range(E):
                a, b = c.offset + e * per, c.offset + (e + 1) * per
                pages = 0
                for lo, hi, off in maps:
                    s, t = max(a, off), min(b, off + hi - lo)
                    for p in range((s - off + lo) // PAGE, (t - off + lo + PAGE - 1) // PAGE) if s < t else ():
                        pm.seek(8 * p)
                        pages += int.from_bytes(pm.read(8), "little") >> 63 & 1
                touched += pages > 0
                present += pages * PAGE
            res["stacks"][name] = {"experts_touched": touched, "present_bytes": present, "bytes": c.nbytes}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], int(a.child[2]))))
        return 0
    work = Path(a.work or tempfile.mkdtemp(prefix="moe_pages_"))
    out = build(work)
    rows = []
    for backend in ("builtin", "xnnpack"):
        for tokens in (1, 8):
            r = subprocess.run([sys.executable, __file__, "--child", str(out), backend, str(tokens)],
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if r.returncode:
                raise SystemExit(r.stderr[-2000:])
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"{'backend':8} {'tokens':>6} {'max routed':>10} {'touched per stack':>18} {'routed bound':>13} "
          f"{'present':>8} {'stacks':>8} (MiB)")
    for r in rows:
        t = [s["experts_touched"] for s in r["stacks"].values()]
        pb = sum(s["present_bytes"] for s in r["stacks"].values())
        sb = sum(s["bytes"] for s in r["stacks"].values())
        r["routed_bound_bytes"] = bound = sum(r["max_routed"] * s["bytes"] // CFG["num_experts"]
                                              for s in r["stacks"].values())
        print(f"{r['backend']:8} {r['tokens']:>6} {r['max_routed']:>10} {str(t):>18} {bound / 2**20:>13.2f} "
              f"{pb / 2**20:>8.2f} {sb / 2**20:>8.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

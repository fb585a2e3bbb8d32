#!/usr/bin/env python
"""Rebuild ``models/tiny-gemma4/qat`` with ``edge-sdk qat`` and measure it through ``edge-sdk validate``.

    python scripts/qat_tiny.py [--out models/tiny-gemma4/qat] [--steps N] [--recipe mobile] [--json qat_tiny.json]
    python scripts/qat_tiny.py --fixture models/tiny-gemma4-prose     # the prose fixture: its float/, split, qat/

1. the fixture's train / held-out split as JSON Lines (``scripts/tiny_data.py``; the embedded
   default's is CPython standard-library source files, the prose fixture's ``pydoc_data.topics``);
2. ``edge-sdk qat models/tiny-gemma4/float --data train.jsonl --eval heldout.jsonl -o OUT --recipe
   mobile --steps 1400 --seq-len 128 --threads 1 --teacher-samples 8192`` (``QAT_FLAGS``; every other
   flag at its default: KL distillation from the float model, learned scales, codebooks refitted
   every 50 steps; half of each batch from 8,192 sequences the float model wrote);
3. ``edge-sdk convert OUT --recipe mobile --text-only`` and ``edge-sdk validate`` of the converted
   model against the float checkpoint on the held-out split (``--reference``; 480-token windows,
   the converted model's context 512 less the 32 decode steps);
4. prints a table and writes JSON: QAT wall time, the monitor's last held-out figures, and
   validate's PPL / mean KLD / top-1 vs float.

The training is deterministic for the seed, torch version and thread count; the wall time depends
on the machine's load (it was shared and loaded when the committed model was built: say so when
quoting it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-gemma4"
sys.path.insert(0, str(Path(__file__).resolve().parent))

QAT_FLAGS = ["--seq-len", "128", "--batch", "16", "--eval-every", "100", "--threads", "1",
             "--teacher-samples", "8192", "--anneal-steps", "200"]


def edge_sdk(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_sdk", *map(str, args)], capture_output=True, text=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixture", type=Path, default=TINY,
                    help="a tiny model directory: float/, split.json (topics or stdlib source), qat/")
    ap.add_argument("--out", type=Path, default=None, help="default: FIXTURE/qat")
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--recipe", default="mobile", help="preset or recipe .json, for QAT and convert alike")
    ap.add_argument("--skip-train", action="store_true", help="measure an existing --out")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.out = args.out or args.fixture / "qat"
    float_dir = args.fixture / "float"

    from tiny_data import write_splits

    work = Path(tempfile.mkdtemp(prefix="qat_tiny_"))
    data = write_splits(work / "data", args.fixture / "split.json")
    result = {"flags": ["--recipe", str(args.recipe)] + QAT_FLAGS + ["--steps", str(args.steps)]}
    if not args.skip_train:
        t0 = time.time()
        r = edge_sdk("qat", float_dir, "--data", data["train"], "--eval", data["heldout"], "-o", args.out,
                     "--overwrite", "--recipe", args.recipe, *QAT_FLAGS, "--steps", args.steps)
        result["qat_wall_s"] = time.time() - t0
        print(r.stdout + r.stderr, end="")
        if r.returncode not in (0, 1):
            return r.returncode
    if not any((d / "split.json").is_file() for d in (args.out, args.out.parent)):
        shutil.copyfile(args.fixture / "split.json", args.out / "split.json")   # validate's held-out topics
    if (args.out / "qat_report.json").is_file():   # a model edge-sdk qat wrote
        rep = json.loads((args.out / "qat_report.json").read_text())
        result["monitor"], result["monitor_ptq"] = rep["evals"][-1], rep["evals"][0]
    conv = work / "converted"
    r = edge_sdk("convert", args.out, "-o", conv, "--recipe", args.recipe, "--text-only")
    if r.returncode:
        print(r.stderr, end="")
        return r.returncode
    r = edge_sdk("validate", conv, "--reference", float_dir, "-o", work / "report", "--runtime", "edge_sdk",
                 "--json", "--runs", "1", "--max-kld", "0.05", "--min-top1", "0.9")
    report = json.loads((work / "report" / "report.json").read_text())
    q = report.get("quality") or {}
    result["validate"] = {k: q.get(k) for k in ("ppl", "ppl_reference", "kld_mean", "kld_p99", "top1_agreement",
                                                "positions")}
    result["validate_exit"] = r.returncode
    v = result["validate"]
    print(f"\n{'measure':<44} {'PPL':>8} {'KLD':>8} {'top-1':>7}")
    for name, key in (("PTQ", "monitor_ptq"), ("QAT", "monitor")):
        if key in result:
            m = result[key]
            print(f"{'monitor (PyTorch, 128-token windows) ' + name:<44} {m['ppl']:8.2f} {m['kld']:8.4f} "
                  f"{m['top1']:7.1%}")
    print(f"{'edge-sdk validate (LiteRT, converted) QAT':<44} {v['ppl'] or 0:8.2f} {v['kld_mean'] or 0:8.4f} "
          f"{v['top1_agreement'] or 0:7.1%}")
    if "qat_wall_s" in result:
        print(f"QAT wall time {result['qat_wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""How hesitant is a float model on the tiny held-out topics, and what top-1 would QAT reach on it?

    python scripts/float_margins.py [FLOAT_DIR ...] [--qat models/tiny-gemma4-prose/qat] [--json out.json]
    python scripts/float_margins.py /tmp/code/float --data /tmp/code/data    # another corpus's split

Top-1 agreement depends on the float model's own margins (``log p1 - log p2`` of its two likeliest
tokens): where it hesitates, any perturbation flips its argmax (docs/qat.md). This script reads
each FLOAT_DIR (default: ``models/tiny-gemma4-prose/float``; e.g. a float model trained on more text by
``scripts/train_tiny.py --docstrings --float-only``) on the held-out topics in 128-token windows and
prints its PPL and the share of positions per margin bin (``monitor.MARGIN_BINS``). The QAT
model's agreement per bin, measured against ``models/tiny-gemma4-prose/float``, turns each model's shares
into the top-1 a QAT model with the same per-bin error would reach: the question is whether a
better-trained float model alone would lift top-1. ``--data DIR`` (``train.jsonl``/``heldout.jsonl``,
as ``scripts/train_tiny.py --corpus code`` writes them) measures the other FLOAT_DIRs on that
corpus's held-out split instead of the topics'.

The exported QAT weights are float32 on their grid, so a plain float32 load computes the quantized
forward (the int8 KV cache aside). Deterministic; prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-gemma4-prose"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def held_out(float_dir: Path, data: dict):
    import torch

    from edge_sdk.qat.data import load_corpus
    from edge_sdk.qat.monitor import HeldOut
    from edge_sdk.qat.train import _load_tokenizer

    cls, tok = _load_tokenizer(float_dir)
    corpus = load_corpus(data["train"], tok, 128, data["heldout"])
    model = cls.from_pretrained(str(float_dir), dtype=torch.float32).eval().requires_grad_(False)
    return cls, HeldOut(corpus.heldout, model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("float_dirs", nargs="*", type=Path, default=[TINY / "float"])
    ap.add_argument("--qat", type=Path, default=TINY / "qat", help="QAT model whose per-bin agreement is applied")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None,
                    help="DIR with train.jsonl/heldout.jsonl for the other FLOAT_DIRs (default: the topics)")
    args = ap.parse_args(argv)

    import tempfile

    import torch

    from edge_sdk.qat.monitor import top1_by_margin
    from tiny_data import write_splits

    torch.set_num_threads(1)
    data = write_splits(Path(tempfile.mkdtemp(prefix="float_margins_")), TINY / "split.json")
    cls, held = held_out(TINY / "float", data)
    qat = cls.from_pretrained(str(args.qat), dtype=torch.float32).eval()
    agree = top1_by_margin(qat, held)
    rows = []
    for d in args.float_dirs:
        own = {p: args.data / f"{p}.jsonl" for p in ("train", "heldout")} if args.data else data
        h = held if d.resolve() == (TINY / "float").resolve() else held_out(d, own)[1]
        bins = top1_by_margin(h.float_model, h)   # the float model against itself: only the shares matter
        predicted = sum(b["share"] * a["top1"] for b, a in zip(bins, agree) if b["share"])
        rows.append({"float": str(d.resolve().relative_to(ROOT) if d.resolve().is_relative_to(ROOT) else d),
                     "heldout": str(own["heldout"]) if h is not held else "the topics' held-out split",
                     "ppl": h.float_ppl, "shares": [b["share"] for b in bins], "predicted_top1": predicted})
    edges = [(a["lo"], a["hi"]) for a in agree]
    label = [f"[{lo:g},{'inf' if hi is None else f'{hi:g}'})" for lo, hi in edges]
    print(f"{'float model':<40} {'PPL':>7} " + " ".join(f"{x:>9}" for x in label) + f" {'top-1*':>7}")
    print(f"{'QAT agreement per bin (' + args.qat.name + ')':<40} {'':>7} "
          + " ".join(f"{a['top1']:9.1%}" for a in agree) + f" {'':>7}")
    for r in rows:
        print(f"{r['float']:<40} {r['ppl']:7.2f} " + " ".join(f"{s:9.1%}" for s in r["shares"])
              + f" {r['predicted_top1']:7.1%}")
    print("top-1*: the share-weighted per-bin agreement of the QAT model: its top-1 on that float model "
          "if its error per bin stayed the same")
    if args.json:
        args.json.write_text(json.dumps({"qat": str(args.qat), "bins": edges, "qat_agreement": agree,
                                         "floats": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

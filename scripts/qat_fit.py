#!/usr/bin/env python
"""Is a QAT model's held-out gap generalisation or capacity? Measure it where it trained and where it did not.

    python scripts/qat_fit.py [--model models/tiny-gemma4-prose/qat] [--windows 160] [--json out.json]

KLD and top-1 against the float model (``monitor.HeldOut``, the QAT run's own monitor) on four sets
of ``seq_len``-token windows, with the float model's own difficulty on each (mean entropy, share of
positions where its two likeliest tokens are within 0.4 nats):

- ``train windows``: ``--windows`` random windows of the training split (seed 0);
- ``its teacher samples``: the first ``--windows`` of the samples the run distilled on, regenerated
  from its report's seed (``samples.teacher_samples`` draws ``GEN_BATCH`` sequences at a time, so the
  first whole batches of n samples are those of any larger n); only for a run made with
  ``--teacher-samples``;
- ``fresh teacher samples``: the same generator under another seed, never trained on;
- ``held-out``: the held-out topics.

If the model does as well on fresh samples as on the samples it trained on, more of the same data
cannot lower its held-out KLD: the rest of the gap is what the quantized model can represent (or
what the optimiser finds). Deterministic on CPU (one thread); a few minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-gemma4-prose"
sys.path.insert(0, str(Path(__file__).resolve().parent))
FRESH_SEED = 12345
TIE_NATS = 0.4


def difficulty(held) -> dict:
    """The float model's mean next-token entropy (nats) and share of near ties on ``held``'s windows."""
    import torch

    from edge_sdk.qat.monitor import _logprobs
    ent, ties, n = 0.0, 0, 0
    with torch.no_grad():
        for i, x in enumerate(held._batches()):
            t = held._cache[i] if held._cache is not None else _logprobs(held.float_model, x)
            top2 = t.topk(2, -1).values
            ent += float(-(t.exp() * t).sum(-1).sum())
            ties += int(((top2[..., 0] - top2[..., 1]) < TIE_NATS).sum())
            n += t.shape[0] * t.shape[1]
    return {"float_entropy": ent / n, "near_ties": ties / n}


def measure_sets(model, sets: dict, float_model) -> list[dict]:
    from edge_sdk.qat.monitor import HeldOut
    rows = []
    for name, windows in sets.items():
        held = HeldOut(windows, float_model)
        m = held.measure(model)
        rows.append({"set": name, "positions": held.positions, "kld": m["kld"], "top1": m["top1"],
                     **difficulty(held)})
        print(f"{name:<24} {held.positions:>9} {m['kld']:8.4f} {m['top1']:7.1%} "
              f"{rows[-1]['float_entropy']:9.2f} {rows[-1]['near_ties']:10.1%}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=TINY / "qat", help="a QAT checkpoint with qat_report.json")
    ap.add_argument("--windows", type=int, default=160, help="windows per set (training windows, samples)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from edge_sdk.qat.samples import GEN_BATCH, teacher_samples
    from tiny_data import tiny_heldout

    settings = json.loads((args.model / "qat_report.json").read_text())["settings"]
    seq_len, seed, n_samples = settings["seq_len"], settings["seed"], settings.get("teacher_samples", 0)
    cls, corpus, float_model, held = tiny_heldout(seq_len)
    model = cls.from_pretrained(str(args.model), dtype=torch.float32).eval()
    tr = np.asarray(corpus.train)
    whole = tr[:len(tr) // seq_len * seq_len].reshape(-1, seq_len)
    pick = np.random.default_rng(0).choice(len(whole), size=min(len(whole), args.windows), replace=False)
    sets = {"train windows": whole[np.sort(pick)]}
    k = args.windows
    if n_samples:
        whole_batches = -(-k // GEN_BATCH) * GEN_BATCH     # draws are the run's only in whole batches
        sets["its teacher samples"] = teacher_samples(float_model, corpus.train, min(n_samples, whole_batches),
                                                      seq_len, seed)[:k]
    sets["fresh teacher samples"] = teacher_samples(float_model, corpus.train, k, seq_len, FRESH_SEED)
    sets["held-out"] = corpus.heldout
    print(f"{args.model}: KLD and top-1 against float, {seq_len}-token windows\n")
    print(f"{'set':<24} {'positions':>9} {'KLD':>8} {'top-1':>7} {'float H':>9} {'near ties':>10}")
    rows = measure_sets(model, sets, float_model)
    if args.json:
        where = args.model.resolve()
        args.json.write_text(json.dumps({
            "model": str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where),
            "seq_len": seq_len, "seed": seed, "teacher_samples": n_samples, "fresh_seed": FRESH_SEED,
            "near_tie_nats": TIE_NATS, "sets": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""What each quantized section costs the tiny model, and why top-1 lags KLD on it.

    python scripts/qat_sections.py [--model models/tiny-gemma4-prose/qat] [--recipe mobile] [--json out.json]

1. PTQ, one section at a time: the float model with only that section fake-quantized (``only``)
   and with every section but that one (``all but``), on the held-out topics in 128-token windows
   (``monitor.HeldOut``, the QAT run's own monitor): held-out KLD and top-1 against float;
2. top-1 agreement by the float model's margin between its two likeliest tokens
   (``monitor.top1_by_margin``) for the PTQ model and for ``--model`` (a QAT checkpoint on the
   grid, loaded as plain transformers weights);
3. a Gaussian reading of ``--model``'s top-1: the std ``sigma`` of an error on each position's
   top-2 difference that gives its agreement (mean Phi(margin / sigma) over the float model's
   margins), and the ``sigma`` that 90 % would need: the ratio of their squares is how much
   smaller the logits' error (and so, roughly, the KLD) has to get.

Prints two tables, writes JSON. Deterministic on CPU (one thread); about a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-gemma4-prose"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _set_sections(quantizers: dict, on: set) -> None:
    for sec, qs in quantizers.items():
        for q in qs:
            q.bypass = sec not in on


def float_margins(held):
    """The float model's ``log p1 - log p2`` at every held-out position (its cached log-probs)."""
    import torch
    out = []
    for i, x in enumerate(held._batches()):
        t = held._cache[i] if held._cache is not None else None
        if t is None:
            from edge_sdk.qat.monitor import _logprobs
            t = _logprobs(held.float_model, x)
        top2 = t.topk(2, -1).values
        out.append((top2[..., 0] - top2[..., 1]).flatten())
    return torch.cat(out).double()


def agreement_at(margins, sigma: float) -> float:
    """Top-1 agreement if the QAT model's error on each position's top-2 difference were Gaussian
    with std ``sigma`` nats: mean Phi(margin / sigma)."""
    import torch
    return float((0.5 * (1 + torch.erf(margins / (sigma * 2 ** 0.5)))).mean())


def sigma_for(margins, top1: float) -> float:
    """The ``sigma`` at which ``agreement_at`` equals ``top1`` (bisection; agreement falls with sigma)."""
    lo, hi = 1e-3, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if agreement_at(margins, mid) > top1 else (lo, mid)
    return (lo + hi) / 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=TINY / "qat", help="a QAT checkpoint (on the grid)")
    ap.add_argument("--recipe", default="mobile")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from edge_sdk.qat.apply import apply_qat, quantized_roles
    from edge_sdk.qat.monitor import section_of, top1_by_margin
    from edge_sdk.quant import load_recipe
    from tiny_data import tiny_heldout

    cls, _, _, held = tiny_heldout()

    ptq = cls.from_pretrained(str(TINY / "float"), dtype=torch.float32).eval()
    apply_qat(ptq, load_recipe(args.recipe))
    quantizers: dict[str, list] = {}
    for role, (_, q) in quantized_roles(ptq).items():
        quantizers.setdefault(section_of(role), []).append(q)
    rows = []
    for sec in quantizers:
        _set_sections(quantizers, {sec})
        only = held.measure(ptq)
        _set_sections(quantizers, set(quantizers) - {sec})
        but = held.measure(ptq)
        rows.append({"section": sec, "only": {k: only[k] for k in ("kld", "top1")},
                     "all_but": {k: but[k] for k in ("kld", "top1")}})
    _set_sections(quantizers, set(quantizers))
    every = held.measure(ptq)
    margins = {"ptq": top1_by_margin(ptq, held)}
    gaussian = {}
    if args.model.is_dir():
        qat_model = cls.from_pretrained(str(args.model), dtype=torch.float32).eval()
        margins[args.model.name] = top1_by_margin(qat_model, held)
        m = held.measure(qat_model)
        g = float_margins(held)
        where = args.model.resolve()
        gaussian = {"model": str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where), "kld": m["kld"], "top1": m["top1"],
                    "sigma_fit": sigma_for(g, m["top1"]), "sigma_for_90": sigma_for(g, 0.90)}

    print(f"PTQ `{args.recipe}` on the held-out topics ({held.positions} positions): every section "
          f"KLD {every['kld']:.4f}, top-1 {every['top1']:.1%}\n")
    print(f"{'section':<12} {'only: KLD':>10} {'top-1':>7}   {'all but: KLD':>12} {'top-1':>7}")
    for r in rows:
        print(f"{r['section']:<12} {r['only']['kld']:10.4f} {r['only']['top1']:7.1%}   "
              f"{r['all_but']['kld']:12.4f} {r['all_but']['top1']:7.1%}")
    print(f"\n{'margin (nats)':<14} {'share':>6}" + "".join(f" {n + ' top-1':>14}" for n in margins))
    for i, b in enumerate(margins["ptq"]):
        hi = "inf" if b["hi"] is None else f"{b['hi']:g}"
        cells = "".join(f" {m[i]['top1']:14.1%}" if m[i]["top1"] is not None else f" {'-':>14}"
                        for m in margins.values())
        print(f"[{b['lo']:g}, {hi})".ljust(14) + f" {b['share']:6.1%}" + cells)
    if gaussian:
        ratio = (gaussian["sigma_for_90"] / gaussian["sigma_fit"]) ** 2
        print(f"\n{args.model.name}: KLD {gaussian['kld']:.4f}, top-1 {gaussian['top1']:.1%}: as if its error on the "
              f"top-2 difference were Gaussian with sigma {gaussian['sigma_fit']:.2f} nats; top-1 90 % needs sigma "
              f"{gaussian['sigma_for_90']:.2f}, about {ratio:.2f} x its error variance (KLD scales with it)")
    if args.json:
        args.json.write_text(json.dumps({"recipe": args.recipe, "positions": held.positions,
                                         "ptq_all": {k: every[k] for k in ("kld", "top1")}, "sections": rows,
                                         "top1_by_margin": margins,
                                         "gaussian": gaussian}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Which QAT choices close the gap on the tiny model: PTQ vs QAT vs float per choice, held-out split.

    python scripts/qat_ablation.py [--steps 100] [--seq-len 128] [--batch 16] [--json out.json]

Each variant is one ``edge_sdk.qat.qat`` run from ``models/tiny-gemma4-prose/float`` on the train split
(``scripts/tiny_data.py``), the same seed, steps and batches; every figure is the run's own held-out
monitor (``monitor.HeldOut``: PyTorch float32, the held-out topics in non-overlapping windows of
``--seq-len``), so the variants are measured side by side against one float model:

- ``ce, fixed scales``      cross-entropy on the text, PTQ scales frozen (``scale_lr`` 0);
- ``ce, learned scales``    + LSQ-style scale gains;
- ``kl, learned scales``    loss = KL(float || QAT) on the logits instead (the default);
- ``kl, no refresh``        the default without refitting the PLE codebooks;
- ``kl, lr 3e-4``           the default at the learning rate the first tiny QAT model used;
- ``kl, lr 5e-4``           half the default learning rates;
- ``kl, teacher samples N`` half of each batch from N sequences the float model wrote
                            (``teacher_samples``, LLM-QAT's data-free distillation);
- ``kl, 4 x 512 tokens``    the same tokens per step in windows of 512 (validate scores 480); its
                            monitor windows are 512 too: compare it through ``qat_tiny.py``.
- ``kl, anneal 25%``        the default for 75 % of ``--steps``, then the last 25 % as
                            ``anneal_steps``: snapped onto the grid, AdamW reset, 0.3 x the rates;
- ``kl, anneal 25%, no snap`` the same second phase without ``snap_to_grid`` (the latent weights
                            stay where phase 1 left them): what the snap itself is worth;
- ``kl, one rate``          every weight at ``lr`` (``fine_lr = lr``): the default before
                            ``--fine-lr``. docs/qat_ablation.json, qat_ablation_300.json and
                            qat_ablation_anneal.json were measured then: the ``lr`` variants below
                            set ``fine_lr`` too, so they still mean what those files recorded.
- ``kl, equalize``          ``--equalize``: learned per-input-column gains (``qat/equalize.py``);
- ``kl, dampening L``       + L x the 2-bit weights' mean squared distance to their bin centre in
                            code units, L ramped from 0 by a half cosine (oscillation dampening,
                            Nagel et al. 2022); a counterfactual: patched into the loss here only;
- ``kl, hidden states B``   + B x each layer's output MSE against the float model's, over its mean
                            square (TernaryBERT's layer-wise distillation); patched here only.
                            docs/qat_more_levers.json holds these five at 400 steps.

PTQ is every run's step-0 evaluation (max-abs scales, k-means codebooks: the same for all).
Prints a table, writes JSON. The machine it ran on was shared and loaded: the wall times are
indicative only; the quality figures do not depend on load (deterministic on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "ce, fixed scales": {"teacher": False, "scale_lr": 0.0},
    "ce, learned scales": {"teacher": False},
    "kl, learned scales": {},
    "kl, no refresh": {"refresh_every": 10 ** 9},
    "kl, lr 3e-4": {"lr": 3e-4, "fine_lr": 3e-4, "scale_lr": 5e-3},
    "kl, lr 5e-4": {"lr": 5e-4, "fine_lr": 5e-4, "scale_lr": 5e-3},
    "kl, teacher samples 4096": {"teacher_samples": 4096},
    "kl, teacher samples 16384": {"teacher_samples": 16384},
    "kl, 4 x 512 tokens": {"batch": 4, "seq_len": 512},
    "kl, anneal 25%": {"anneal_share": 0.25},
    "kl, anneal 25%, no snap": {"anneal_share": 0.25, "snap": False},
    "kl, one rate": {"fine_lr": 1e-3},
    "kl, equalize": {"equalize": True},
    "kl, dampening 0.05": {"damp": 0.05},
    "kl, dampening 0.5": {"damp": 0.5},
    "kl, hidden states 0.1": {"hidden": 0.1},
    "kl, hidden states 1": {"hidden": 1.0},
}
PATCHES = ("snap", "damp", "hidden")    # variant keys that patch edge_sdk.qat.train, not qat() kwargs


def _damped(real, lmax: float, total: int):
    """``real`` loss + lmax * (half-cosine ramp over ``total`` calls) * mean (x - code)^2 of the
    2-bit weights, x = w * c / scale (Nagel et al. 2022's dampening, in code units)."""
    import math

    import torch

    from edge_sdk.qat.apply import quantized_roles
    from edge_sdk.qat.fake_quant import AffineQuantizer
    calls = [0]

    def loss(model, teacher, x, use_teacher):
        base = real(model, teacher, x, use_teacher)
        lam = lmax * 0.5 * (1 - math.cos(math.pi * min(1.0, calls[0] / total)))
        calls[0] += 1
        if lam == 0:
            return base
        terms = []
        for m, q in quantized_roles(model).values():
            if isinstance(q, AffineQuantizer) and q.cfg.bits <= 2:
                w = m.parametrizations.weight.original
                if q.column_gain is not None:
                    w = w * q.column_gain().detach()
                xq = w / q.effective_scale().detach().reshape(-1, 1)
                code = torch.clamp(torch.round(xq), q.cfg.qmin, q.cfg.qmax).detach()
                terms.append(((xq - code) ** 2).mean())
        return base + lam * torch.stack(terms).mean()
    return loss


def _hidden(beta: float):
    """KL on the logits + beta * mean over layers of MSE(student, float) / mean square(float)."""
    import torch
    import torch.nn.functional as F

    def loss(student, teacher, x, use_teacher):
        so = student(input_ids=x, use_cache=False, output_hidden_states=True)
        with torch.no_grad():
            to = teacher(input_ids=x, use_cache=False, output_hidden_states=True)
            t = F.log_softmax(to.logits.float(), -1)
        kl = F.kl_div(F.log_softmax(so.logits.float(), -1), t, log_target=True, reduction="none").sum(-1).mean()
        hs = [((a - b) ** 2).mean() / (b ** 2).mean() for a, b in zip(so.hidden_states[1:], to.hidden_states[1:])]
        return kl + beta * torch.stack(hs).mean()
    return loss


@contextmanager
def patched(kw: dict, total: int):
    """The counterfactuals: ``snap=False`` (the anneal phase without its snap), ``damp`` and
    ``hidden`` (extra loss terms); ``edge_sdk.qat.train`` restored afterwards."""
    from edge_sdk.qat import train
    real_snap, real_loss = train.snap_to_grid, train._loss
    if not kw.get("snap", True):
        train.snap_to_grid = lambda model: 0
    if kw.get("damp"):
        train._loss = _damped(real_loss, kw["damp"], total)
    if kw.get("hidden"):
        train._loss = _hidden(kw["hidden"])
    try:
        yield
    finally:
        train.snap_to_grid, train._loss = real_snap, real_loss


def _steps(kw: dict, steps: int) -> dict:
    """``anneal_share`` x of ``steps`` as the anneal phase, the rest as phase 1 (same total)."""
    share = kw.pop("anneal_share", 0)
    anneal = int(round(steps * share))
    return {**kw, "steps": steps - anneal, "anneal_steps": anneal}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from edge_sdk.qat import qat
    from tiny_data import write_splits

    work = Path(tempfile.mkdtemp(prefix="qat_ablation_"))
    data = write_splits(work / "data", ROOT / "models" / "tiny-gemma4-prose" / "split.json")
    rows, ptq = [], None
    for name, kw in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        kw = {"batch": args.batch, "seq_len": args.seq_len, **kw}
        run = _steps({k: v for k, v in kw.items() if k not in PATCHES}, args.steps)
        with patched(kw, run["steps"] + run["anneal_steps"]):
            res = qat(ROOT / "models" / "tiny-gemma4-prose" / "float", data["train"],
                      work / name.replace(" ", "_").replace("%", "").replace(",", ""),
                      eval_file=data["heldout"], eval_every=args.steps, max_ppl_increase=None,
                      threads=args.threads, **run)
        first, last = res.report["evals"][0], res.report["evals"][-1]
        ptq = ptq or first
        rows.append({"variant": name, "settings": kw, "ppl": last["ppl"], "kld": last["kld"],
                     "top1": last["top1"], "wall_s": time.time() - t0})
        print(f"{name}: PPL {last['ppl']:.2f} KLD {last['kld']:.4f} top-1 {last['top1']:.1%} "
              f"({time.time() - t0:.0f} s)", flush=True)
        out = {"steps": args.steps, "seq_len": args.seq_len, "batch": args.batch, "float_ppl": ptq["ppl_float"],
               "ptq": {"ppl": ptq["ppl"], "kld": ptq["kld"], "top1": ptq["top1"]}, "variants": rows}
        if args.json:   # after every variant: an interrupted sweep keeps what it measured
            args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'weights':<24} {'PPL':>8} {'KLD':>8} {'top-1':>7}")
    print(f"{'float':<24} {ptq['ppl_float']:8.2f} {'-':>8} {'-':>7}")
    print(f"{'PTQ mobile':<24} {ptq['ppl']:8.2f} {ptq['kld']:8.4f} {ptq['top1']:7.1%}")
    for r in rows:
        print(f"{'QAT ' + r['variant']:<24} {r['ppl']:8.2f} {r['kld']:8.4f} {r['top1']:7.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Continue a QAT checkpoint (on its grid) with another loss or learning rate: what a second phase buys.

    python scripts/qat_continue.py [--init models/tiny-gemma4-prose/qat] [--loss kl|kl+ce|kl+margin|kl+T]
                                   [--steps 200] [--lr 3e-4] [--scale-lr 3e-3] [--samples N] [--batch 16]
                                   [--json out.json]

The student starts from ``--init`` exactly as exported (weights on the grid; the exported scales
become the base scales, gains 0; the exported PLE codebooks, not refitted): the state
``qat(anneal_steps=...)`` reaches in-process after its snap. The float model of
``models/tiny-gemma4-prose/float`` is teacher and reference; batches are the tiny model's training topics
(``scripts/tiny_data.py``), half from ``--samples`` teacher sequences when given. AdamW, warmup 10,
cosine to 5 %. Every ``--every`` steps the held-out monitor (``monitor.HeldOut``) prints PPL, KLD and
top-1 vs float. Losses (``t``, ``s``: float and student log-probabilities):

- ``kl``         KL(t || s), ``edge-sdk qat``'s loss;
- ``kl+ce``      + ``--lam`` x cross-entropy on the float model's argmax (hard labels);
- ``kl+margin``  + ``--lam`` x squared error of the student's top-k log-probability differences to
                 the float model's (its top ``--topk`` tokens), weighted exp(-margin) toward near ties;
- ``kl+T``       + ``--lam`` x KL at temperature ``--T`` (T < 1 stresses the likeliest tokens).

This is how the anneal phase was found (docs/qat.md); deterministic on CPU (one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-gemma4-prose"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_student(cls, init: Path):
    """``init`` as a QAT student: fake-quantizers whose scales / codebooks are the exported ones."""
    import torch
    from safetensors.torch import load_file

    from edge_sdk.qat.apply import apply_qat, quantized_roles
    from edge_sdk.quant import load_recipe

    student = cls.from_pretrained(str(init), dtype=torch.float32).eval()
    apply_qat(student, load_recipe("mobile"))
    scales = load_file(str(init / "qat_scales.safetensors"))
    books = load_file(str(init / "qat_codebooks.safetensors"))
    with torch.no_grad():
        for role, (_, q) in quantized_roles(student).items():
            if hasattr(q, "base_scale"):
                q.base_scale.copy_(scales[f"{role}.scale"].reshape(q.base_scale.shape))
                q.log_gain.zero_()
            else:
                q.set_codebooks(books[f"{role}.codebooks"].numpy())
    return student


def make_loss(args):
    import torch.nn.functional as F

    def loss(student_logits, teacher_logits):
        t, s = F.log_softmax(teacher_logits, -1), F.log_softmax(student_logits, -1)
        kl = (t.exp() * (t - s)).sum(-1).mean()
        if args.loss == "kl":
            return kl
        if args.loss == "kl+ce":
            return kl + args.lam * F.cross_entropy(student_logits.flatten(0, -2), t.argmax(-1).flatten())
        if args.loss == "kl+T":
            tT, sT = F.log_softmax(teacher_logits / args.T, -1), F.log_softmax(student_logits / args.T, -1)
            return kl + args.lam * (tT.exp() * (tT - sT)).sum(-1).mean()
        idx = t.topk(args.topk, -1).indices   # kl+margin
        tg, sg = t.gather(-1, idx), s.gather(-1, idx)
        dt, ds = tg[..., :1] - tg[..., 1:], sg[..., :1] - sg[..., 1:]
        return kl + args.lam * (dt.clamp(min=0).neg().exp() * (ds - dt) ** 2).mean()
    return loss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", type=Path, default=TINY / "qat")
    ap.add_argument("--loss", choices=("kl", "kl+ce", "kl+margin", "kl+T"), default="kl")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--T", type=float, default=0.5)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--scale-lr", type=float, default=3e-3)
    ap.add_argument("--samples", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from edge_sdk.qat.apply import qat_parameters
    from edge_sdk.qat.samples import teacher_samples
    from edge_sdk.qat.train import batch_at, lr_factor
    from tiny_data import tiny_heldout

    cls, corpus, teacher, held = tiny_heldout()
    student = load_student(cls, args.init)
    samples = (teacher_samples(teacher, corpus.train, args.samples, 128, 0) if args.samples else None)
    scales, rest = qat_parameters(student)
    opt = torch.optim.AdamW([{"params": scales, "peak": args.scale_lr}, {"params": rest, "peak": args.lr}],
                            lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    loss_fn = make_loss(args)
    rows = [{"step": 0, **held.measure(student)}]
    print(f"step 0: KLD {rows[0]['kld']:.4f} top-1 {rows[0]['top1']:.1%}", flush=True)
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = g["peak"] * lr_factor(step, args.steps, 10)
        x = batch_at(corpus.train, args.seed, step, args.batch, 128, samples)
        with torch.no_grad():
            t_logits = teacher(input_ids=x, use_cache=False).logits.float()
        loss = loss_fn(student(input_ids=x, use_cache=False).logits.float(), t_logits)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            m = held.measure(student)
            rows.append({"step": step + 1, "loss": loss.item(), **m})
            print(f"step {step + 1}: loss {loss.item():.4f} PPL {m['ppl']:.2f} KLD {m['kld']:.4f} "
                  f"top-1 {m['top1']:.1%} ({time.time() - t0:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "evals": rows},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

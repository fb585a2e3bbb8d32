#!/usr/bin/env python
"""QAT vs PTQ on the tiny Gemma 4: held-out perplexity, KL divergence and top-1 agreement vs float.

    python scripts/eval_tiny.py [--model models/tiny-gemma4-prose] [--json models/tiny-gemma4-prose/eval.json]

Three weight sets, all run through the NumPy reference forward (``edge_sdk.reference.Reference``,
float32, no torch):
- float: ``float/`` as stored (bfloat16, read as float32);
- PTQ:   the ``mobile`` recipe applied to ``float/`` after training with the NumPy kernels
         (``quant.quantize`` with fresh max|w|/qmax scales, ``DictionaryQuantizer`` k-means
         codebooks for the PLE table), dequantized to float32;
- QAT:   ``qat/`` as stored (float32 on the grid). It is first checked to re-quantize with its
         sidecar scales and codebooks with error exactly 0, so these weights are exactly what the
         converter packs.
Weights only: the KV cache and activations stay float32 in all three (``--kv-int8`` adds an int8
per-(token, head) KV fake-quant to PTQ and QAT as extra rows).

Held-out text: the ``split.json`` topics, each ``<bos> text <eos>``, concatenated and cut into
non-overlapping windows of 128 tokens (shorter tail dropped); every position except a window's
first is scored. llama.cpp conventions: PPL = exp(mean NLL of the actual next token); per
position KL(P_float || P_quant) = sum P_float (log P_float - log P_quant), reported as mean and
99th percentile; top-1 = fraction of positions where argmax agrees with float.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny import CTX, PROSE_OUT, eval_windows, split_topics, token_stream, topic_texts  # noqa: E402

from edge_sdk.quant import (PRESETS, AffineConfig, DictionaryConfig, DictionaryQuantizer,  # noqa: E402
                            dequantize, quantize, read_qat_sidecar, resolve, resolve_shared)
from edge_sdk.reference import Reference, weights_from_checkpoint  # noqa: E402


def role_config(recipe, name: str):
    role = name.removesuffix(".weight")
    if role == "embed_tokens":
        return resolve_shared(recipe, ["embed_tokens", "lm_head"])
    return resolve(recipe, role) if name.endswith(".weight") else None


class PTQWeights:
    """The float checkpoint's weights with ``recipe`` applied post-training (NumPy kernels)."""

    def __init__(self, base, recipe):
        self.base, self.recipe, self.spec = base, recipe, base.spec
        self.errors: dict[str, float] = {}

    def __call__(self, name: str) -> np.ndarray:
        w = self.base(name)
        cfg = role_config(self.recipe, name)
        if isinstance(cfg, AffineConfig):
            qt = quantize(w, cfg)
            self.errors[name] = qt.error
            return dequantize(qt)
        if isinstance(cfg, DictionaryConfig):
            dq = DictionaryQuantizer(cfg)
            dt = dq.quantize(w)
            self.errors[name] = dt.error
            return dq.dequantize(dt)
        return w


def check_qat_grid(qat_dir: Path, weights) -> dict:
    """Re-quantize every stored QAT weight with its sidecar scale / codebooks: max error per role."""
    from edge_sdk.quant.codebooks import CODEBOOKS_NAME, dictionary_codes, read_qat_codebooks
    side = read_qat_sidecar(qat_dir / "qat_scales.safetensors")
    books = read_qat_codebooks(qat_dir / CODEBOOKS_NAME)
    err, kmeans_refit = {}, {}
    for role, s in side.scales.items():
        err[role] = quantize(weights(f"{role}.weight"), role_config(side.recipe, f"{role}.weight"),
                             scales=s).error
    for role, b in books.items():
        cfg = role_config(side.recipe, f"{role}.weight")
        w = weights(f"{role}.weight")
        codes = dictionary_codes(w, b, cfg)
        group = np.arange(w.shape[0]) // cfg.rows_per_codebook
        err[role] = float(np.abs(w - b[group[:, None], codes]).max())
        # what a converter that refits k-means (instead of reading the codebooks) would get
        kmeans_refit[role] = float(DictionaryQuantizer(cfg).quantize(w).error)
    quantized = {r for r in err}
    return {"recipe": side.recipe.name, "tensors": len(quantized),
            "max_rerounding_error": max(err.values()), "kmeans_refit_error": kmeans_refit}


def kv_int8(x: np.ndarray) -> np.ndarray:
    """int8 fake-quant of K or V [heads, tokens, dim], one max-abs scale per (head, token)."""
    amax = np.abs(x).max(axis=-1, keepdims=True)
    s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    return (np.clip(np.rint(x / s), -127, 127) * s).astype(np.float32)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def run(ref: Reference, windows: np.ndarray) -> np.ndarray:
    """log-probs [windows, CTX-1, V] of the next token at every scored position."""
    out = []
    for w in windows:
        ref.reset()
        out.append(log_softmax(ref.prefill(w))[:-1])
    return np.stack(out)


def metrics(logp: np.ndarray, windows: np.ndarray, base: np.ndarray | None) -> dict:
    tgt = windows[:, 1:]
    nll = -np.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    m = {"ppl": float(math.exp(nll.mean())), "nll": float(nll.mean())}
    if base is not None:
        kl = (np.exp(base) * (base - logp)).sum(-1).reshape(-1)
        kl = np.maximum(kl, 0.0)
        m.update(kld_mean=float(kl.mean()), kld_p99=float(np.percentile(kl, 99)),
                 kld_max=float(kl.max()),
                 top1=float((logp.argmax(-1) == base.argmax(-1)).mean()))
    return m


def _display(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=PROSE_OUT)
    ap.add_argument("--json", type=Path, default=None, help="default: <model>/eval.json")
    ap.add_argument("--kv-int8", action="store_true", help="also PTQ/QAT with an int8 KV cache")
    args = ap.parse_args(argv)
    t0 = time.time()
    model = args.model
    split = json.loads((model / "split.json").read_text())
    now = split_topics()
    if now["sha256"]["heldout"] != split["sha256"]["heldout"]:
        print(f"warning: this Python's pydoc_data.topics held-out text differs from the one in "
              f"split.json (Python {split['python']}); numbers will not match the README",
              file=sys.stderr)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model / "float"))
    windows = eval_windows(token_stream(tok, topic_texts(split["heldout"])), CTX)

    recipe = PRESETS["mobile"]
    float_w = weights_from_checkpoint(model / "float")
    qat_w = weights_from_checkpoint(model / "qat")
    text = float_w.spec.text
    grid = check_qat_grid(model / "qat", qat_w)
    if grid["max_rerounding_error"] != 0.0:
        raise SystemExit(f"QAT checkpoint is off its grid: {grid}")
    ptq_w = PTQWeights(float_w, recipe)

    runs = [("float", Reference(text, float_w)), ("PTQ", Reference(text, ptq_w)),
            ("QAT", Reference(text, qat_w))]
    if args.kv_int8:
        runs += [("PTQ+kv8", Reference(text, ptq_w, kv_quant=kv_int8)),
                 ("QAT+kv8", Reference(text, qat_w, kv_quant=kv_int8))]
    results, base = {}, None
    for name, ref in runs:
        logp = run(ref, windows)
        results[name] = metrics(logp, windows, base)
        if base is None:
            base = logp
        print(f"  {name}: done [{time.time() - t0:.0f}s]", file=sys.stderr)

    report = {
        "model": _display(model), "recipe": recipe.name, "forward": "edge_sdk.reference (NumPy float32)",
        "heldout": {"topics": len(split["heldout"]), "windows": int(len(windows)), "ctx": CTX,
                    "scored_positions": int(windows[:, 1:].size)},
        "qat_grid": grid, "results": results,
        "qat_beats_ptq_on_kld": results["QAT"]["kld_mean"] < results["PTQ"]["kld_mean"],
    }
    out = args.json or model / "eval.json"
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"held-out: {len(split['heldout'])} topics, {len(windows)} windows x {CTX} tokens, "
          f"{windows[:, 1:].size} scored positions; recipe '{recipe.name}' (weights)")
    print(f"{'model':<10}{'PPL':>9}{'KLD mean':>11}{'KLD p99':>10}{'top-1':>9}")
    for name, m in results.items():
        if "kld_mean" in m:
            print(f"{name:<10}{m['ppl']:>9.3f}{m['kld_mean']:>11.4f}{m['kld_p99']:>10.4f}"
                  f"{m['top1'] * 100:>8.2f}%")
        else:
            print(f"{name:<10}{m['ppl']:>9.3f}{'—':>11}{'—':>10}{'—':>9}")
    print(f"QAT grid: {grid['tensors']} tensors re-quantize with max error "
          f"{grid['max_rerounding_error']}; PLE k-means refit error {grid['kmeans_refit_error']}")
    print(f"wrote {out}  [{time.time() - t0:.0f}s]")
    return 0 if report["qat_beats_ptq_on_kld"] else 1


if __name__ == "__main__":
    sys.exit(main())

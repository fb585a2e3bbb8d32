"""Held-out monitoring of a QAT run: perplexity of the QAT and float models, KLD and top-1 vs float,
the stop rule, and which sections to widen when the target is missed.

Conventions are ``edge-sdk validate``'s (llama.cpp's): every position of a window but the first is
scored; PPL = exp(mean NLL of the actual next token); KLD = KL(P_float || P_qat) per position, mean;
top-1 = share of positions whose argmax agrees with float.

Stop rule (``StopRule``): the target is ``ppl_qat <= ppl_float * (1 + max_ppl_increase)``. Training
ends early when the target is missed and the best increase has not improved by ``min_gain``
(relative) over the last ``patience`` evaluations after half the steps. When the target is missed
(early or at the end) ``section_sensitivity`` measures, for each section the recipe quantizes
(attention, MLP, embedding, PLE projections, PLE table), the held-out KLD with that section left
float: the sections whose release lowers the KLD most are the ones to widen (``widen_advice``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..quant import AffineConfig, DictionaryConfig
from ..quant.presets import ATTN, EMBED, MLP, PLE_LINEAR, PLE_TABLE
from .apply import quantized_roles

SECTIONS = (("attention", ATTN), ("mlp", MLP), ("ple_table", PLE_TABLE), ("ple_linear", PLE_LINEAR),
            ("embedding", EMBED))
TEACHER_CACHE_BYTES = 512 << 20


def section_of(role: str) -> str:
    for name, pat in SECTIONS:
        if re.fullmatch(pat, role):
            return name
    return "other"


def _logprobs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(model(input_ids=x, use_cache=False).logits[:, :-1].float(), -1)


class HeldOut:
    """The held-out windows and the float model's log-probabilities on them (cached when small)."""

    def __init__(self, windows: np.ndarray, float_model: nn.Module, batch: int = 8):
        self.windows = torch.from_numpy(np.ascontiguousarray(windows))
        self.float_model, self.batch = float_model, batch
        n, t = self.windows.shape
        vocab = float_model.get_output_embeddings().weight.shape[0]
        self._cache = [] if n * max(t - 1, 0) * vocab * 4 <= TEACHER_CACHE_BYTES else None
        self.float_ppl = None
        with torch.no_grad():
            nll, count = 0.0, 0
            for i, x in enumerate(self._batches()):
                lp = _logprobs(float_model, x)
                if self._cache is not None:
                    self._cache.append(lp)
                nll += -lp.gather(-1, x[:, 1:, None]).sum().item()
                count += x[:, 1:].numel()
        self.positions = count
        self.float_ppl = math.exp(nll / count)

    def _batches(self):
        for i in range(0, len(self.windows), self.batch):
            yield self.windows[i:i + self.batch]

    @torch.no_grad()
    def measure(self, model: nn.Module) -> dict:
        """``{ppl, ppl_float, ppl_increase, kld, top1}`` of ``model`` on the held-out windows."""
        was = model.training
        model.eval()
        nll, kld, agree = 0.0, 0.0, 0
        for i, x in enumerate(self._batches()):
            t = self._cache[i] if self._cache is not None else _logprobs(self.float_model, x)
            s = _logprobs(model, x)
            nll += -s.gather(-1, x[:, 1:, None]).sum().item()
            kld += (t.exp() * (t - s)).sum().item()
            agree += (t.argmax(-1) == s.argmax(-1)).sum().item()
        model.train(was)
        ppl = math.exp(nll / self.positions)
        return {"ppl": ppl, "ppl_float": self.float_ppl, "ppl_increase": ppl / self.float_ppl - 1,
                "kld": kld / self.positions, "top1": agree / self.positions}


MARGIN_BINS = (0.0, 0.1, 0.2, 0.4, 0.8, 1.6, math.inf)   # nats between the float model's top two


@torch.no_grad()
def top1_by_margin(model: nn.Module, held: HeldOut, bins=MARGIN_BINS) -> list[dict]:
    """Top-1 agreement on the held-out positions, binned by the float model's own margin
    ``log p1 - log p2`` (its two likeliest tokens): ``[{lo, hi, share, top1, kld}]``.

    Why top-1 lags KLD on a small model: where the float model hesitates between two tokens, any
    perturbation of the logits flips its argmax at almost no KL cost (``hi`` None: no upper
    bound). On the tiny model 17 % of
    the held-out positions have a margin under 0.2 nats and agree about half the time, while
    positions with a margin over 0.8 nats agree 98-100 % (docs/qat.md)."""
    was = model.training
    model.eval()
    gaps, agree, kld = [], [], []
    for i, x in enumerate(held._batches()):
        t = held._cache[i] if held._cache is not None else _logprobs(held.float_model, x)
        s = _logprobs(model, x)
        top2 = t.topk(2, -1).values
        gaps.append((top2[..., 0] - top2[..., 1]).flatten())
        agree.append((t.argmax(-1) == s.argmax(-1)).flatten())
        kld.append((t.exp() * (t - s)).sum(-1).flatten())
    model.train(was)
    g, a, k = torch.cat(gaps), torch.cat(agree).double(), torch.cat(kld)
    out = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        m = (g >= lo) & (g < hi)
        n = int(m.sum())
        out.append({"lo": lo, "hi": None if math.isinf(hi) else hi, "share": n / len(g), "top1": float(a[m].mean()) if n else None,
                    "kld": float(k[m].mean()) if n else None})
    return out


@dataclass
class StopRule:
    max_ppl_increase: float | None
    patience: int = 3
    min_gain: float = 0.01
    history: list[float] = field(default_factory=list)

    def met(self, increase: float) -> bool:
        return self.max_ppl_increase is None or increase <= self.max_ppl_increase

    def should_stop(self, increase: float, step: int, steps: int) -> bool:
        """Record one evaluation; True when the target is missed and no longer improving."""
        self.history.append(increase)
        if self.met(increase) or step < steps // 2 or len(self.history) <= self.patience:
            return False
        before = min(self.history[:-self.patience])
        recent = min(self.history[-self.patience:])
        return recent > before - self.min_gain * max(abs(before), 1e-9)


@torch.no_grad()
def section_sensitivity(model: nn.Module, held: HeldOut) -> dict[str, dict]:
    """For each quantized section: held-out KLD / PPL with that section's quantizers bypassed."""
    by_section: dict[str, list] = {}
    for role, (_, q) in quantized_roles(model).items():
        by_section.setdefault(section_of(role), []).append((role, q))
    out = {}
    for sec, items in by_section.items():
        for _, q in items:
            q.bypass = True
        try:
            m = held.measure(model)
        finally:
            for _, q in items:
                q.bypass = False
        out[sec] = {"kld_if_float": m["kld"], "ppl_if_float": m["ppl"], "roles": len(items),
                    "scheme": _scheme(items[0][1].cfg)}
    return out


def _scheme(cfg) -> str:
    if isinstance(cfg, AffineConfig):
        return f"int{cfg.bits}"
    if isinstance(cfg, DictionaryConfig):
        return f"{cfg.index_bits}-bit codebook"
    return type(cfg).__name__


_WIDER = {"int2": "int4", "int4": "int8", "int8": "float", "4-bit codebook": "int8"}


def widen_advice(sensitivity: dict[str, dict], kld_now: float, top: int = 2) -> list[dict]:
    """The sections whose float release lowers the KLD most, each with the wider scheme to try."""
    ranked = sorted(sensitivity.items(), key=lambda kv: kv[1]["kld_if_float"])
    out = []
    for sec, s in ranked[:top]:
        gain = kld_now - s["kld_if_float"]
        if gain <= 0:
            continue
        out.append({"section": sec, "from": s["scheme"], "to": _WIDER.get(s["scheme"], "float"),
                    "kld_if_float": s["kld_if_float"], "kld_gain": gain})
    return out

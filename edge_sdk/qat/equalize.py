"""Learned channel equalization for QAT: a per-input-column gain the export folds away.

A per-output-channel grid gives every weight of a row the same step. Where one input column
carries a large activation (or a small one), that single step is too coarse for it (or wastes
levels on it). Equalization (SmoothQuant / AWQ, learned here like OmniQuant's LET) scales a
weight's columns by ``c`` before it is quantized and its input by ``1 / c``, which the forward of
the float model does not see:

    y = W x = (W diag(c)) (diag(1/c) x)        quantized:   y = Q(W diag(c)) (x / c)

The ``1 / c`` must be absorbed by the operation that produces ``x``, so that the exported model is
an ordinary Gemma 4 checkpoint on ordinary per-channel grids. Three places in a Gemma 4 decoder
layer allow that exactly (``GROUPS``):

- ``attn_in``: the columns of ``q_proj``/``k_proj``/``v_proj`` (all read ``input_layernorm``'s
  output), folded into ``input_layernorm.weight`` (Gemma 4's RMSNorm multiplies by ``weight``);
- ``mlp_in``: the columns of ``gate_proj``/``up_proj``, folded into ``pre_feedforward_layernorm``;
- ``mlp_mid``: the columns of ``down_proj`` (its input is ``act(gate) * up``), folded into the rows
  of ``up_proj``, i.e. into ``up_proj``'s per-row scale: ``Q(W_up) / c`` is ``Q`` with ``scale / c``,
  the same codes.

``o_proj`` has none (its input comes through ``v_norm``, which has no weight), nor has the tied
embedding (the LM head's columns are the lookup table's). During training the quantizer computes
``Q(W diag(c)) diag(1/c)`` itself (``AffineQuantizer.column_gain``); ``fold_equalizers`` rewrites
the model into the folded form, which ``export_qat`` does on a copy before it writes. ``c`` starts at
1 (the PTQ model exactly) and trains as ``exp(log_c)`` with the scale gains.

Example (2-bit, codes -2..1, scale = max|w| / 1): the down_proj row ``[0.30, 0.10, -0.06]`` has
scale 0.30 and codes ``[1, 0, 0]``, so it computes with ``[0.30, 0, 0]``: the two small weights are
lost. With ``c = [1, 3, 3]`` the quantizer sees ``[0.30, 0.30, -0.18]``, codes ``[1, 1, -1]``, and the
effective row is ``[0.30, 0.30, -0.30] / c = [0.30, 0.10, -0.10]``; the export stores the codes with
scale 0.30 in down_proj and divides up_proj's rows 2 and 3 (and their scales) by 3. Training, not a
rule, decides which columns get the finer effective step ``scale / c_j``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .fake_quant import AffineQuantizer

GROUPS = ("attn_in", "mlp_in", "mlp_mid")


class ColumnGain(nn.Module):
    """``c = exp(log_c)`` for one activation, shared by every weight that reads it."""

    def __init__(self, n: int, device=None):
        super().__init__()
        self.log_c = nn.Parameter(torch.zeros(n, device=device))

    def forward(self) -> torch.Tensor:
        return torch.exp(self.log_c)

    def extra_repr(self) -> str:
        return f"{self.log_c.numel()} columns"


def _quantizer(module: nn.Module | None) -> AffineQuantizer | None:
    if module is None or not parametrize.is_parametrized(module, "weight"):
        return None
    q = module.parametrizations.weight[0]
    return q if isinstance(q, AffineQuantizer) else None


def _norm_weight(norm: nn.Module | None) -> nn.Parameter | None:
    w = getattr(norm, "weight", None) if norm is not None else None
    return w if isinstance(w, nn.Parameter) else None


def attach_equalizers(text: nn.Module) -> list[dict]:
    """Give the quantized weights of every decoder layer of ``text`` (a Gemma4TextModel) their
    shared column gains; returns the fold plan: one dict per gain with ``group``, ``layer``,
    ``gain``, ``readers`` (modules whose columns it scales) and ``into`` (the norm or up_proj that
    absorbs ``1 / c``). A group is skipped where one of its readers is not on an affine grid (a
    reader left float would need the same folding of its float weight: not worth the case)."""
    plan = []
    for i, layer in enumerate(getattr(text, "layers", [])):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        cands = []
        if attn is not None:
            readers = [m for m in (getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj")) if m is not None]
            cands.append(("attn_in", readers, _norm_weight(getattr(layer, "input_layernorm", None))))
        if mlp is not None:
            gate, up, down = (getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
            cands.append(("mlp_in", [m for m in (gate, up) if m is not None],
                          _norm_weight(getattr(layer, "pre_feedforward_layernorm", None))))
            cands.append(("mlp_mid", [down] if down is not None else [], up if _quantizer(up) else None))
        for group, readers, into in cands:
            qs = [_quantizer(m) for m in readers]
            if not readers or into is None or any(q is None or q.column_gain is not None for q in qs):
                continue
            n = readers[0].parametrizations.weight.original.shape[1]
            gain = ColumnGain(n, device=readers[0].parametrizations.weight.original.device)
            for q in qs:
                q.column_gain = gain
            plan.append({"group": group, "layer": i, "gain": gain, "readers": readers, "into": into})
    return plan


@torch.no_grad()
def fold_equalizers(model: nn.Module) -> int:
    """Rewrite ``model`` (prepared by ``apply_qat(equalize=True)``) into the folded form: each
    reader's latent weight ``W := W diag(c)`` and its quantizer's gain removed, the norm weight
    ``:= weight / c`` or up_proj's latent rows and base scale ``:= / c``. The forward is the same up
    to float32 rounding; the result is a model whose quantized weights are plain per-channel grids
    (what ``export_qat`` writes). Returns the number of gains folded."""
    plan = getattr(model, "_edge_sdk_qat_equalizers", None) or []
    for entry in plan:
        c = entry["gain"]().detach()
        for m in entry["readers"]:
            m.parametrizations.weight.original.mul_(c[None, :])
            m.parametrizations.weight[0].column_gain = None
        into = entry["into"]
        if isinstance(into, nn.Parameter):
            into.div_(c)
        else:
            q = into.parametrizations.weight[0]
            into.parametrizations.weight.original.div_(c[:, None])
            q.base_scale.div_(c.reshape(-1, *([1] * (q.base_scale.dim() - 1))))
    model._edge_sdk_qat_equalizers = []
    return len(plan)


def has_equalizers(model: nn.Module) -> bool:
    return bool(getattr(model, "_edge_sdk_qat_equalizers", None))

"""The Gemma 4 mixture-of-experts block (26B-A4B) as LiteRT builtin ops.

Mirrors ``edge_sdk.reference.moe`` (see its docstring for the maths). The hook in
``gemma4._layer`` calls ``moe_feed_forward`` with the residual stream and the shared MLP's output.

Routing, as transformers: ``z = FC(rmsnorm(r) · scale · H^-0.5, router.proj)``; SOFTMAX; TOPK_V2
(values and int32 indices [T, k]); the values divided by their SUM; times
GATHER(per_expert_scale, indices).

Experts: for every (token, slot) pair ``j`` (``j // k`` is the token), the routed expert's weights
are GATHERed out of the [E, out, in] stacks: ``GATHER(gate_up, idx[j])`` → [n, 2I, H]
(quantized: int8/int4 codes, CAST to float32, and the BATCH_MATMUL result times
``GATHER(scales, idx[j])`` [n, 1, 2I]: a per-row scale factors out of the dot product), then
BATCH_MATMUL with the pair's token [n, 1, H] (adj_y), gelu_tanh(gate) · up, the same for down,
times the pair's routing weight; the pairs are reshaped to [T, k, H] and SUMmed over k.

Only the routed experts' bytes are read: GATHER copies the indexed [out, in] slices of a
constant that stays in the file (memory-mapped, external buffer); no other op reads the stacks
(measured: ``scripts/moe_pages.py``, docs/moe.md). Pairs go in groups of
``quant.moe_layout.group_pairs`` so one group's float copies stay bounded (real size: one pair).

Expert codes are written per expert (one expert's rows read, quantized with the scales the graph
pass took, packed, written), so conversion holds one expert at a time.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from ..errors import RecipeError
from ..quant.formats import format_of
from ..quant.kernels import quantize
from ..quant.moe_layout import group_pairs
from .dtypes import tensor_nbytes, to_bytes
from .gemma4_attention import Step, rms_norm
from .gemma4_weights import WeightBank
from .graph import GraphBuilder, Tensor


def topk(g: GraphBuilder, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """TOPK_V2 over the last axis: (values, int32 indices), each x.shape[:-1] + [k]; ties: lower
    index first."""
    kt = g.const_i32(k)
    shape = x.shape[:-1] + (k,)
    vals = g._tensor(None, shape, x.dtype, hint="topk_values")
    idx = g._tensor(None, shape, "int32", hint="topk_indices")
    g._check(x)
    g.writer.add_operator(g.index, schema.BuiltinOperator.TOPK_V2, [x.index, kt.index],
                          [vals.index, idx.index], schema.TopKV2OptionsT())
    return vals, idx


class ExpertStack:
    """One [E, out, in] expert tensor as graph constants: codes (or float32 weights) and, when
    quantized, float32 scales [E, out]. Scales are taken expert by expert (the Preparer on a slice
    of one expert) while the graph is built; codes are written expert by expert."""

    def __init__(self, bank: WeightBank, name: str):
        self.bank, self.name = bank, name
        self.tp = bank.plan_of(name)
        self.cfg = self.tp.config
        if self.cfg is not None and bank._rows is None:
            raise RecipeError("quantized experts need the converter's row slicer", tensor=name)
        self.scales: np.ndarray | None = None

    def _take_scales(self) -> np.ndarray:
        E, out = self.tp.shape[0], self.tp.shape[1]
        scales = np.empty((E, out), np.float32)
        rec = None
        for e in range(E):
            p = self.bank._rows.prepare_rows(self.tp, e, e + 1)
            scales[e] = np.asarray(p.value.scales, np.float32)
            if rec is None:
                rec = {"scale_source": p.scale_source, "error": float(p.error)}
            else:
                rec["error"] = max(rec["error"], float(p.error))
                if p.scale_source not in rec["scale_source"].split("+"):
                    rec["scale_source"] += "+" + p.scale_source
        self.bank.records[self.name] = rec
        return scales

    def _rows(self, e: int) -> np.ndarray:
        rows = self.bank._rows
        if rows is not None and rows.can_slice_experts(self.tp):
            return rows.read_rows(self.tp, e, e + 1)[0]
        return np.asarray(self.bank.prepared(self.name).value, np.float32)[e]

    def codes(self, g: GraphBuilder) -> Tensor:
        dt = format_of(self.cfg).litert
        if self.cfg is not None:
            self.scales = self._take_scales()
        else:
            self.bank.records[self.name] = {"scale_source": "none", "error": 0.0}

        def produce():
            for e in range(self.tp.shape[0]):
                w = self._rows(e)
                if self.cfg is not None:
                    w = quantize(w, self.cfg, scales=self.scales[e]).codes
                yield to_bytes(w, dt)
            if self.bank.on_data is not None:
                self.bank.on_data(self.name, self.tp.data_bytes)

        ref = g.writer.add_buffer(tensor_nbytes(self.tp.shape, dt), name=self.name, producer=produce)
        return g.const(self.name, ref, shape=self.tp.shape, dtype=dt)

    def scale_const(self, g: GraphBuilder) -> Tensor:
        return g.const(f"{self.name}_scales", self.scales)


def _stack(step: Step, name: str) -> tuple[Tensor, Tensor | None]:
    """(codes, scales or None) of an expert tensor, shared by every signature of the model."""
    bank, g = step.bank, step.g
    stack: list[ExpertStack] = []

    def make_codes():
        stack.append(ExpertStack(bank, name))
        return stack[0].codes(g)

    codes = bank._cached(g, name, make_codes)
    if bank.plan_of(name).config is None:
        return codes, None
    if stack:   # first use: the scales were just taken
        bank._consts[(id(g.writer), name + "#scales")] = stack[0].scale_const(g)
    return codes, g.share(bank._consts[(id(g.writer), name + "#scales")])


def _expert_matmul(g: GraphBuilder, x: Tensor, codes: Tensor, scales: Tensor | None, ids: Tensor) -> Tensor:
    """x [n, 1, in] times the routed experts' [out, in] → [n, 1, out]."""
    w = g.gather(codes, ids, axis=0)
    if w.dtype != "float32":
        w = g.cast(w, "float32")
    y = g.batch_matmul(x, w, adj_y=True)
    if scales is not None:
        n, out = ids.shape[0], codes.shape[1]
        y = g.mul(y, g.reshape(g.gather(scales, ids, axis=0), [n, 1, out]))
    return y


def moe_feed_forward(step: Step, layer, r: Tensor, mlp_out: Tensor) -> Tensor:
    """``h1 + h2`` (before post_feedforward_layernorm) of an MoE layer for the residual ``r`` [T, H]
    and the shared MLP's output ``mlp_out`` [T, H] (see the module docstring)."""
    g, bank, text, T = step.g, step.bank, step.text, step.T
    H, I, K, eps = text.hidden_size, text.moe_intermediate_size, text.top_k_experts, text.rms_norm_eps
    pre = f"layers.{layer.index}."
    h1 = rms_norm(g, mlp_out, bank.vector(g, pre + "post_feedforward_layernorm_1.weight"), eps)

    z = g.mul(g.mul(rms_norm(g, r, None, eps), bank.vector(g, pre + "router.scale")), np.float32(H ** -0.5))
    probs = g.softmax(g.fully_connected(z, bank.fc(g, pre + "router.proj.weight")))
    w, idx = topk(g, probs, K)
    w = g.div(w, g.sum(w, -1))
    w = g.mul(w, g.gather(bank.vector(g, pre + "router.per_expert_scale"), idx, axis=0))

    e = rms_norm(g, r, bank.vector(g, pre + "pre_feedforward_layernorm_2.weight"), eps)
    gu_codes, gu_scales = _stack(step, pre + "experts.gate_up_proj")
    dn_codes, dn_scales = _stack(step, pre + "experts.down_proj")
    flat_idx, flat_w = g.reshape(idx, [T * K]), g.reshape(w, [T * K, 1, 1])
    n_group = group_pairs(text, T)
    outs = []
    for a in range(0, T * K, n_group):
        n = min(n_group, T * K - a)
        ids = g.slice(flat_idx, [a], [n])
        tok = g.const(None, np.asarray([j // K for j in range(a, a + n)], np.int32))
        x = g.reshape(g.gather(e, tok, axis=0), [n, 1, H])
        gu = _expert_matmul(g, x, gu_codes, gu_scales, ids)
        act = g.mul(g.gelu(g.slice(gu, [0, 0, 0], [n, 1, I]), approximate=True), g.slice(gu, [0, 0, I], [n, 1, I]))
        y = _expert_matmul(g, act, dn_codes, dn_scales, ids)
        outs.append(g.mul(y, g.slice(flat_w, [a, 0, 0], [n, 1, 1])))
    y = outs[0] if len(outs) == 1 else g.concatenation(outs, axis=0)
    h2 = g.sum(g.reshape(y, [T, K, H]), 1, keep_dims=False)
    return g.add(h1, rms_norm(g, h2, bank.vector(g, pre + "post_feedforward_layernorm_2.weight"), eps))

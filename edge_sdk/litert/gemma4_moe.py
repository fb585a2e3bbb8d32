"""The Gemma 4 mixture-of-experts block (26B-A4B) as LiteRT builtin ops.

Mirrors ``edge_sdk.reference.moe`` (see its docstring for the maths). The hook in
``gemma4._layer`` calls ``moe_feed_forward`` with the residual stream and the shared MLP's output.

Routing, as transformers: ``z = FC(rmsnorm(r) · scale · H^-0.5, router.proj)``; SOFTMAX; TOPK_V2
(values and int32 indices [T, k]); the values divided by their SUM; times
GATHER(per_expert_scale, indices).

Experts, for all P = T·k (token, slot) pairs at once (``j // k`` is pair j's token): one GATHER
gives every pair its token's pre-normed row [P, 1, H]; per matmul, the pairs' routed experts'
[out, in] slices are GATHERed out of the [E, out, in] stack, CAST to float32 (quantized codes) and
BATCH_MATMULed with the pairs' rows (``adj_y``) → [P, 1, out], then times GATHER(scales, ids)
[P, 1, out] (a per-row scale factors out of the dot product, so this is exact);
gelu_tanh(gate) · up, the same for down, times the pairs' routing weights; reshaped to [T, k, H]
and SUMmed over k.

The float copies of the gathered experts are bounded: each matmul takes the pairs in
``quant.moe_layout.group_sizes`` groups (one SPLIT_V before, one GATHER + CAST + BATCH_MATMUL per
group, one CONCATENATION after). Real size: decode is one group per matmul (about 25 ops per
layer); prefill_32 (256 pairs) 32 groups for gate_up and 16 for down. The op count grows with
T·k / (pairs per group), not with T·k times the ops of a pair.

Only the routed experts' bytes are read: GATHER copies the indexed [out, in] slices of a
constant that stays in the file (memory-mapped, external buffer); no other op reads the stacks
(measured: ``scripts/moe_pages.py``, docs/moe.md).

Expert codes are written per expert (one expert's rows read, quantized with the scales the graph
pass took, packed, written), so conversion holds one expert at a time.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from ..errors import RecipeError
from ..quant.formats import format_of
from ..quant.kernels import quantize
from ..quant.moe_layout import group_sizes
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


def split_v(g: GraphBuilder, x: Tensor, sizes: list[int], axis: int = 0) -> list[Tensor]:
    """SPLIT_V of ``x`` along ``axis`` into pieces of ``sizes`` (one op, several outputs)."""
    outs = []
    for n in sizes:
        shape = list(x.shape)
        shape[axis] = n
        outs.append(g._tensor(None, shape, x.dtype, hint="split"))
    g._check(x)
    g.writer.add_operator(g.index, schema.BuiltinOperator.SPLIT_V,
                          [x.index, g.const_i32(sizes).index, g.const_i32(axis).index],
                          [t.index for t in outs], schema.SplitVOptionsT(numSplits=len(sizes)))
    return outs


def _routed_matmul(g: GraphBuilder, x: Tensor, codes: Tensor, scales: Tensor | None, ids: Tensor,
                   sizes: list[int]) -> Tensor:
    """x [P, 1, in] times each pair's routed expert's [out, in] → [P, 1, out], in groups of
    ``sizes`` pairs: per group one GATHER of the codes, one CAST, one BATCH_MATMUL (``adj_y``);
    one SPLIT_V of the pairs and of the ids before, one CONCATENATION after; the per-row scales
    once for all pairs (GATHER [P, out], MUL: a per-row scale factors out of the dot product)."""
    P, out = ids.shape[0], codes.shape[1]
    parts = [(x, ids)] if len(sizes) == 1 else list(zip(split_v(g, x, sizes), split_v(g, ids, sizes)))
    ys = []
    for xg, ig in parts:
        w = g.gather(codes, ig, axis=0)
        if w.dtype != "float32":
            w = g.cast(w, "float32")
        ys.append(g.batch_matmul(xg, w, adj_y=True))
    y = ys[0] if len(ys) == 1 else g.concatenation(ys, axis=0)
    if scales is not None:
        y = g.mul(y, g.reshape(g.gather(scales, ids, axis=0), [P, 1, out]))
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
    P = T * K
    ids = g.reshape(idx, [P])
    # every pair's token: [P, 1] indices give [P, 1, H] directly; decode (T = 1): all zeros
    x = g.gather(e, g.const(None, (np.arange(P, dtype=np.int32) // K).reshape(P, 1)), axis=0)
    gu = _routed_matmul(g, x, gu_codes, gu_scales, ids, group_sizes(text, T, "gate_up"))
    act = g.mul(g.gelu(g.slice(gu, [0, 0, 0], [P, 1, I]), approximate=True), g.slice(gu, [0, 0, I], [P, 1, I]))
    y = _routed_matmul(g, act, dn_codes, dn_scales, ids, group_sizes(text, T, "down"))
    y = g.mul(y, g.reshape(w, [P, 1, 1]))
    h2 = g.sum(g.reshape(y, [T, K, H]), 1, keep_dims=False)
    return g.add(h1, rms_norm(g, h2, bank.vector(g, pre + "post_feedforward_layernorm_2.weight"), eps))

"""Gemma 4 attention as LiteRT ops: RMSNorm, RoPE, the KV cache update and the attention core.

Follows ``edge_sdk.reference.forward`` op for op (see its docstring for the maths). Layouts are
Google's (LITERTLM_GEMMA4.md §5.1): K cache ``[1, KVH, C, D]`` (sequence axis 2), V cache
``[1, KVH, D, C]`` (sequence axis 3). New K/V are written with DYNAMIC_UPDATE_SLICE at
``input_pos[0]``; an int8 cache is QUANTIZEd on write and DEQUANTIZEd on read with its one
per-tensor scale (``edge_sdk.quant.kv``). Attention is BATCH_MATMUL + SOFTMAX over the whole
cache with the additive ``mask`` input (causal over the cache); sliding layers additionally
mask keys ``j <= p - W`` (computed in the graph from ``input_pos``). GQA: query head h reads KV
head ``h // (H / KVH)`` by reshaping the heads to ``[KVH, rep * T, D]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..spec.model import LayerSpec, TextSpec
from .dtypes import Quantization
from .gemma4_weights import WeightBank
from .graph import GraphBuilder, Tensor

MASKED = np.float32(-1e30)   # what the graph puts outside a sliding window


def rms_norm(g: GraphBuilder, x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """``x * rsqrt(mean(x**2, -1) + eps) * weight`` (no ``1 + w``)."""
    inv = g.rsqrt(g.add(g.mean(g.square(x), -1), np.float32(eps)))
    y = g.mul(x, inv)
    return y if weight is None else g.mul(y, weight)


@dataclass
class Step:
    """Per-signature state shared by the layers: inputs, RoPE tables, masks, caches."""

    g: GraphBuilder
    sig: str
    T: int
    context: int
    text: TextSpec
    bank: WeightBank
    pos: Tensor                              # input_pos [T] int32
    mask: Tensor                             # [1, 1, T, C] additive
    kv_scales: dict[str, float] | None       # None: float32 cache
    cache_in: dict[str, Tensor] = field(default_factory=dict)
    cache_out: dict[str, Tensor] = field(default_factory=dict)
    _rope: dict = field(default_factory=dict)
    _masks: dict = field(default_factory=dict)
    _starts: dict = field(default_factory=dict)
    _read: dict = field(default_factory=dict)   # layer -> (K [KVH, C, D], V [KVH, D, C]) float

    # ---- tables -----------------------------------------------------------------------
    def rope(self, layer: LayerSpec) -> tuple[Tensor, Tensor]:
        """(cos, signed sin), each [T, 1, D]: ``rope(x) = x*cos + swap_halves(x)*signed_sin``
        where ``signed_sin = [-sin, sin]`` (equal, bit for bit, to ``rotate_half(x)*sin``)."""
        key = (layer.rope, layer.head_dim)
        if key not in self._rope:
            g, d = self.g, layer.head_dim
            inv = np.asarray(layer.rope.inv_freq(d), np.float32).reshape(1, d // 2)
            pos = g.reshape(g.cast(self.pos, "float32"), [self.T, 1])
            freqs = g.mul(pos, g.const(None, inv))
            c, s = g.cos(freqs), g.sin(freqs)
            cos = g.reshape(g.concatenation([c, c], -1), [self.T, 1, d])
            sin = g.reshape(g.concatenation([g.mul(s, np.float32(-1.0)), s], -1), [self.T, 1, d])
            self._rope[key] = (cos, sin)
        return self._rope[key]

    def apply_rope(self, x: Tensor, layer: LayerSpec) -> Tensor:
        """x [T, heads, D]."""
        g = self.g
        cos, sin = self.rope(layer)
        t, h, d = x.shape
        x1 = g.slice(x, [0, 0, 0], [t, h, d // 2])
        x2 = g.slice(x, [0, 0, d // 2], [t, h, d // 2])
        return g.add(g.mul(x, cos), g.mul(g.concatenation([x2, x1], -1), sin))

    def layer_mask(self, layer: LayerSpec) -> Tensor:
        if layer.window is None:
            return self.mask
        w = layer.window
        if w not in self._masks:
            g = self.g
            kpos = g.const(None, np.arange(self.context, dtype=np.int32).reshape(1, self.context))
            lo = g.sub(g.reshape(self.pos, [self.T, 1]), np.int32(w))
            inside = g.reshape(g.greater(kpos, lo), [1, 1, self.T, self.context])
            self._masks[w] = g.select_v2(inside, self.mask, MASKED)
        return self._masks[w]

    def start(self, axis: int) -> Tensor:
        """int32 [4] start index with ``input_pos[0]`` on ``axis`` (2: K, 3: V)."""
        if axis not in self._starts:
            g = self.g
            p0 = g.slice(self.pos, [0], [1])
            parts = [g.const_i32([0] * axis), p0] + ([g.const_i32([0] * (3 - axis))] if axis < 3 else [])
            self._starts[axis] = g.concatenation(parts, 0)
        return self._starts[axis]

    # ---- cache ------------------------------------------------------------------------
    def write_cache(self, name: str, new: Tensor, axis: int) -> Tensor:
        """DUS ``new`` ([1, KVH, T, D] for K / [1, KVH, D, T] for V) into cache ``name``;
        returns the updated cache as float32 for reading."""
        g = self.g
        cache = self.cache_in[name]
        if self.kv_scales is not None:
            q = Quantization(scale=(self.kv_scales[name],), zero_point=(0,))
            new = g.quantize(new, "int8", q)
        out = g.dynamic_update_slice(cache, new, self.start(axis), name=f"{self.sig}_{name}_output")
        self.cache_out[name] = out
        return out if self.kv_scales is None else g.dequantize(out)


def attention(step: Step, layer: LayerSpec, h: Tensor) -> Tensor | None:
    """Self-attention of one layer on normed input h [T, H]; writes this layer's K/V (own-KV
    layers). Returns the o_proj output [T, H], or None when ``step`` only needs the cache."""
    return _attention(step, layer, h, need_output=True)


def write_kv_only(step: Step, layer: LayerSpec, h: Tensor) -> None:
    _attention(step, layer, h, need_output=False)


def _attention(step: Step, layer: LayerSpec, h: Tensor, need_output: bool) -> Tensor | None:
    g, t, bank = step.g, step.text, step.bank
    T, D, nh, nkv = step.T, layer.head_dim, t.num_heads, layer.num_kv_heads
    eps = t.rms_norm_eps
    pre = f"layers.{layer.index}.self_attn."
    if not layer.kv_shared:
        raw = g.reshape(g.fully_connected(h, bank.fc(g, pre + "k_proj.weight")), [T, nkv, D])
        v_raw = raw if layer.k_eq_v else g.reshape(
            g.fully_connected(h, bank.fc(g, pre + "v_proj.weight")), [T, nkv, D])
        k = step.apply_rope(rms_norm(g, raw, bank.vector(g, pre + "k_norm.weight"), eps), layer)
        v = rms_norm(g, v_raw, None, eps)
        i = layer.index
        k_all = step.write_cache(f"kv_cache_k_{i}",
                                 g.reshape(g.transpose(k, [1, 0, 2]), [1, nkv, T, D]), 2)
        v_all = step.write_cache(f"kv_cache_v_{i}",
                                 g.reshape(g.transpose(v, [1, 2, 0]), [1, nkv, D, T]), 3)
        step._read[i] = (g.reshape(k_all, [nkv, step.context, D]),
                         g.reshape(v_all, [nkv, D, step.context]))
    if not need_output:
        return None
    kc, vc = step._read[layer.kv_source]
    rep = nh // nkv
    q = g.reshape(g.fully_connected(h, bank.fc(g, pre + "q_proj.weight")), [T, nh, D])
    q = step.apply_rope(rms_norm(g, q, bank.vector(g, pre + "q_norm.weight"), eps), layer)
    q = g.reshape(g.transpose(q, [1, 0, 2]), [nkv, rep * T, D])
    scores = g.reshape(g.batch_matmul(q, kc, adj_y=True), [nkv, rep, T, step.context])
    probs = g.softmax(g.add(scores, step.layer_mask(layer)))
    out = g.batch_matmul(g.reshape(probs, [nkv, rep * T, step.context]), vc, adj_y=True)
    out = g.reshape(g.transpose(g.reshape(out, [nh, T, D]), [1, 0, 2]), [T, nh * D])
    return g.fully_connected(out, bank.fc(g, pre + "o_proj.weight"))

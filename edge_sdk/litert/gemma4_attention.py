"""Gemma 4 attention as LiteRT ops: RMSNorm, RoPE, the KV cache update and the attention core.

Follows ``edge_sdk.reference.forward`` op for op (see its docstring for the maths). The caches are
the buffers of ``edge_sdk.quant.kv_layout`` (``Step.kv``), in Google's layouts (LITERTLM_GEMMA4.md
§5.1): K ``[1, KVH, L, D]`` (sequence axis 2), V ``[1, KVH, D, L]`` (sequence axis 3). An int8
cache is QUANTIZEd on write and DEQUANTIZEd on read with its one per-tensor scale
(``edge_sdk.quant.kv``).

Full-length caches (L = C; full layers, and sliding layers when the ring would not be shorter):
new K/V are written with DYNAMIC_UPDATE_SLICE at ``input_pos[0]``; attention uses the additive
``mask`` input (causal over the cache) and sliding layers additionally mask keys ``j <= p - W``
(computed in the graph from ``input_pos``).

Ring caches (sliding layers, L = R = min(C, W + T - 1) < C): position p lives in slot p mod R.
Decode (T = 1) writes one slot with DYNAMIC_UPDATE_SLICE at ``input_pos[0] mod R``; a chunk of
T > 1 tokens may wrap around the end, so slot s takes ``new[(s - p0) mod R]`` where that offset is
< T (GATHER of the chunk along the sequence axis + SELECT_V2 against the old cache). The mask is
built in the graph and ignores the external one: with ``last = input_pos[0] + T - 1`` slot s holds
position ``last - ((last - s) mod R)``; query q attends to it iff that position is >= 0, <= q and
> q - W. R >= W + T - 1 guarantees no key a query of the chunk still needs is overwritten.

Attention is BATCH_MATMUL + SOFTMAX over the whole cache, the cache as the left operand (see
``_core``). GQA: query head h reads KV head ``h // (H / KVH)`` by reshaping the heads to
``[1, KVH, rep * T, D]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..quant.kv_layout import KvBuffer, KvLayout
from ..gemma4.model import LayerSpec, TextSpec
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
    mask: Tensor                             # [1, 1, T, span] additive
    kv_scales: dict[str, float] | None       # None: float32 cache
    kv: KvLayout                             # the cache buffers (lengths, rings)
    span: int = 0                            # full-length caches are read up to this slot (decode_<S>)
    cache_in: dict[str, Tensor] = field(default_factory=dict)
    cache_out: dict[str, Tensor] = field(default_factory=dict)
    _rope: dict = field(default_factory=dict)
    _masks: dict = field(default_factory=dict)
    _starts: dict = field(default_factory=dict)
    _ring: dict = field(default_factory=dict)
    _read: dict = field(default_factory=dict)   # layer -> (K [KVH, L, D], V [KVH, D, L], KvBuffer)

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

    def layer_mask(self, layer: LayerSpec, buf: KvBuffer) -> Tensor:
        """Additive mask [1, 1, T, L] for ``layer`` reading cache ``buf`` (its source layer's)."""
        if buf.ring:
            if layer.window is None:
                raise InputError(f"layer {layer.index} attends fully but reads the ring cache {buf.name}")
            return self._ring_mask(layer.window, buf.length)
        if layer.window is None:
            return self.mask
        w = layer.window
        if w not in self._masks:
            g = self.g
            n = self.span or self.context
            kpos = g.const(None, np.arange(n, dtype=np.int32).reshape(1, n))
            lo = g.sub(g.reshape(self.pos, [self.T, 1]), np.int32(w))
            inside = g.reshape(g.greater(kpos, lo), [1, 1, self.T, n])
            self._masks[w] = g.select_v2(inside, self.mask, MASKED)
        return self._masks[w]

    def _p0(self) -> Tensor:
        if "p0" not in self._ring:
            self._ring["p0"] = self.g.slice(self.pos, [0], [1])
        return self._ring["p0"]

    def _ring_mask(self, w: int, R: int) -> Tensor:
        key = ("mask", w, R)
        if key not in self._ring:
            g, T = self.g, self.T
            last = g.add(self._p0(), np.int32(T - 1))                                  # [1]
            slots = g.const(None, np.arange(R, dtype=np.int32).reshape(1, R))
            spos = g.sub(last, g.floor_mod(g.sub(last, slots), np.int32(R)))          # [1, R]
            q = g.reshape(self.pos, [T, 1])
            ok = g.logical_and(g.greater_equal(spos, np.int32(0)), g.greater_equal(q, spos))
            ok = g.logical_and(ok, g.greater(spos, g.sub(q, np.int32(w))))            # [T, R]
            zero = g.const(None, np.zeros((1,), np.float32))
            self._ring[key] = g.select_v2(g.reshape(ok, [1, 1, T, R]), zero, MASKED)
        return self._ring[key]

    def _ring_write(self, R: int) -> tuple[Tensor, Tensor]:
        """(written [R] bool, index [R] int32): slot s takes new[(s - p0) mod R] when < T."""
        key = ("write", R)
        if key not in self._ring:
            g = self.g
            off = g.floor_mod(g.sub(g.const(None, np.arange(R, dtype=np.int32)), self._p0()), np.int32(R))
            self._ring[key] = (g.less(off, np.int32(self.T)), g.minimum(off, np.int32(self.T - 1)))
        return self._ring[key]

    def start(self, axis: int, ring: int | None = None) -> Tensor:
        """int32 [4] start index with ``input_pos[0]`` (``mod ring``) on ``axis`` (2: K, 3: V)."""
        key = (axis, ring)
        if key not in self._starts:
            g = self.g
            p0 = self._p0() if ring is None else g.floor_mod(self._p0(), np.int32(ring))
            parts = [g.const_i32([0] * axis), p0] + ([g.const_i32([0] * (3 - axis))] if axis < 3 else [])
            self._starts[key] = g.concatenation(parts, 0)
        return self._starts[key]

    # ---- cache ------------------------------------------------------------------------
    def write_cache(self, name: str, new: Tensor, axis: int) -> Tensor:
        """Write ``new`` ([1, KVH, T, D] for K / [1, KVH, D, T] for V) into cache ``name``
        (full-length: at input_pos[0]; ring: at input_pos mod R, see the module docstring);
        returns the updated cache as float32 for reading."""
        g = self.g
        cache, buf = self.cache_in[name], self.kv.buffer(name)
        if self.kv_scales is not None:
            q = Quantization(scale=(self.kv_scales[name],), zero_point=(0,))
            new = g.quantize(new, "int8", q)
        out_name = f"{self.sig}_{name}_output"
        if not buf.ring:
            out = g.dynamic_update_slice(cache, new, self.start(axis), name=out_name)
        elif self.T == 1:
            out = g.dynamic_update_slice(cache, new, self.start(axis, buf.length), name=out_name)
        else:
            R = buf.length
            written, idx = self._ring_write(R)
            rows = g.gather(new, idx, axis=axis, quantization=cache.quantization)
            cond = g.reshape(written, [1, 1, R, 1] if axis == 2 else [1, 1, 1, R])
            out = g.select_v2(cond, rows, cache, name=out_name, quantization=cache.quantization)
        self.cache_out[name] = out
        span = self.span or self.context
        if not buf.ring and span < buf.length:   # decode_<S>: read the first S slots only
            shape = list(out.shape)
            shape[axis] = span
            out = g.slice(out, [0, 0, 0, 0], shape)
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
        buf = step.kv.buffer(f"kv_cache_k_{i}")
        k_all = step.write_cache(f"kv_cache_k_{i}",
                                 g.reshape(g.transpose(k, [1, 0, 2]), [1, nkv, T, D]), 2)
        v_all = step.write_cache(f"kv_cache_v_{i}",
                                 g.reshape(g.transpose(v, [1, 2, 0]), [1, nkv, D, T]), 3)
        step._read[i] = (k_all, v_all, buf)
    if not need_output:
        return None
    kc, vc, buf = step._read[layer.kv_source]
    q = g.reshape(g.fully_connected(h, bank.fc(g, pre + "q_proj.weight")), [T, nh, D])
    q = step.apply_rope(rms_norm(g, q, bank.vector(g, pre + "q_norm.weight"), eps), layer)
    out = _core(step, layer, q, kc, vc, buf)
    return g.fully_connected(out, bank.fc(g, pre + "o_proj.weight"))


def _core(step: Step, layer: LayerSpec, q: Tensor, kc: Tensor, vc: Tensor, buf: KvBuffer) -> Tensor:
    """softmax(q Kᵀ + mask) V for q [T, nh, D], caches K [1, KVH, L, D] / V [1, KVH, D, L] →
    [T, nh * D]. The cache (the large operand, new every step) is the LHS of both BATCH_MATMULs:
    XNNPACK repacks a dynamic RHS on every invoke and reads the LHS in place, so Kᵀ q and V pᵀ
    cost a read of the cache where q Kᵀ and p Vᵀ cost a repack of it (4096×512 floats per full
    layer); the two small [rep·T, L] / [D, rep·T] results are transposed instead. The same
    products, the same sums per element."""
    g, T = step.g, step.T
    nkv, L, D = kc.shape[1], kc.shape[2], q.shape[2]
    nh = q.shape[1]
    rep = step.text.kv_groups(layer)
    q = g.reshape(g.transpose(q, [1, 0, 2]), [1, nkv, rep * T, D])
    scores_t = g.batch_matmul(kc, q, adj_y=True)                                 # [1, KVH, L, rep*T]
    scores = g.transpose(scores_t, [0, 1, 3, 2])                                  # [1, KVH, rep*T, L]
    if T > 1:   # the mask [1, 1, T, L] broadcasts over [KVH, rep, T, L]; at T = 1 over this shape as it is
        scores = g.reshape(scores, [nkv, rep, T, L])
    probs = g.softmax(g.add(scores, step.layer_mask(layer, buf)))
    out_t = g.batch_matmul(vc, g.reshape(probs, [1, nkv, rep * T, L]), adj_y=True)  # [1, KVH, D, rep*T]
    out = g.reshape(g.transpose(out_t, [0, 1, 3, 2]), [nh, T, D])
    return g.reshape(g.transpose(out, [1, 0, 2]), [T, nh * D])

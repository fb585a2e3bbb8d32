"""The Gemma 4 text decoder forward in NumPy, float32, with a KV cache.

Mirrors transformers 5.23 ``models/gemma4/modeling_gemma4.py`` (``Gemma4TextModel``) op for op, in
the same order, so that float32 logits agree to ~1e-6. What each step does (and the traps):

embeddings   ``x = E[ids] * float32(sqrt(H))``. (transformers casts the scale to the weight dtype:
             a bf16-loaded model multiplies by bf16(sqrt(H)); here, as in a float32 load, it is f32.)
PLE          ``tok = Eple[ids] * sqrt(P)`` → [T, L, P];
             ``ctx = rmsnorm((x @ Wpm.T) * H**-0.5 → [T, L, P], per_layer_projection_norm)`` where
             ``x`` is the *scaled* embedding; ``ple = (ctx + tok) * 2**-0.5``.
layer i      ``r = x; h = rmsnorm(x, input_layernorm); h = attn(h); h = rmsnorm(h, post_attention_layernorm);
             x = r + h``; ``r = x; h = mlp(rmsnorm(x, pre_feedforward_layernorm));
             x = r + rmsnorm(h, post_feedforward_layernorm)``; with PLE:
             ``r = x; h = gelu(x @ Wgate.T) * ple[:, i]; h = rmsnorm(h @ Wproj.T, post_per_layer_input_norm);
             x = r + h``; finally ``x = x * layer_scalar`` (the whole residual stream).
attention    ``q = rope(rmsnorm_heads(h @ Wq.T, q_norm))``; own-KV layers:
             ``k_raw = h @ Wk.T``; ``v_raw = h @ Wv.T`` or, with k_eq_v (full layers), ``v_raw = k_raw``
             (the raw projection, before k_norm); ``k = rope(rmsnorm_heads(k_raw, k_norm))``;
             ``v = rmsnorm_heads(v_raw)`` (no scale, no RoPE). Scores ``q·k`` with scaling 1.0 (no
             1/sqrt(d)), GQA: query head h reads KV head ``h // (num_heads / num_kv_heads)``.
masks        full: key j visible to query p iff ``j <= p``. sliding (window W): iff ``p - W < j <= p``,
             i.e. W keys including the query's own position (W-1 past tokens); the same in prefill
             and decode (transformers' sliding cache keeps W-1 tokens and appends the new one).
KV sharing   a KV-shared layer computes only q; it attends to the cache of ``layer.kv_source`` (the
             last earlier non-shared layer of the same type) — current tokens included — with its
             own type's mask, so a shared sliding layer sees exactly the same window.
RoPE         ``x*cos + rotate_half(x)*sin`` with ``rotate_half`` pairing dim i with dim i+D/2;
             cos/sin of ``position * inv_freq`` (f32), ``inv_freq`` from ``RopeSpec.inv_freq`` —
             proportional RoPE rotates only pairs ``[0, a)`` (dims ``[0, a)`` and ``[D/2, D/2+a)``,
             ``a = int(partial_rotary_factor * D // 2)``), exponents over the whole D; the rest pass.
head         ``rmsnorm(x, norm) @ E.T`` (tied), then ``tanh(logits / c) * c`` (final_logit_softcapping).
rmsnorm      ``x * (mean(x**2) + eps) ** -0.5 * w`` (w used as is — Gemma 4 has no ``1 + w``).
mlp          ``down(gelu_tanh(gate(h)) * up(h))``; KV-shared layers are double-wide when configured
             (the width comes from ``LayerSpec.intermediate_size``).
moe          (``enable_moe_block``, 26B-A4B) the shared MLP and the routed experts are combined before
             post_feedforward_layernorm: see ``reference/moe.py``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ..decoding import greedy
from ..errors import ConfigError, InputError
from ..gemma4.model import LayerSpec, TextSpec
from ..gemma4.names import text_tensors
from .moe import moe_feed_forward
from .numerics import gelu_tanh, rms_norm

WeightFn = Callable[[str], np.ndarray]
KvQuant = Callable[[np.ndarray], np.ndarray]


class UnsupportedByReference(ConfigError, NotImplementedError):
    """The model uses a feature the NumPy reference does not implement (e.g. an untied LM head)."""


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [T, heads, D]; cos/sin [T, D]."""
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


class _KvCache:
    """K and V of one KV-producing layer: [num_kv_heads, capacity, head_dim], the first ``n`` filled."""

    def __init__(self, heads: int, dim: int, capacity: int):
        self.k = np.zeros((heads, capacity, dim), np.float32)
        self.v = np.zeros((heads, capacity, dim), np.float32)
        self.n = 0

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        t = k.shape[1]
        need = self.n + t
        if need > self.k.shape[1]:
            cap = max(need, 2 * self.k.shape[1])
            for attr in ("k", "v"):
                old = getattr(self, attr)
                new = np.zeros((old.shape[0], cap, old.shape[2]), np.float32)
                new[:, : self.n] = old[:, : self.n]
                setattr(self, attr, new)
        self.k[:, self.n:need] = k
        self.v[:, self.n:need] = v
        self.n = need


class Reference:
    """Gemma 4 text decoder in NumPy (float32) with a KV cache.

    ``weights(name)`` returns the float32 array of a canonical tensor (``layers.3.mlp.gate_proj.weight``,
    see ``gemma4.text_tensors``); it is called when a tensor is first needed. With ``cache_weights``
    (default) each tensor is kept after its first read; with ``cache_weights=False`` it is re-read on
    every use, so at most one layer's weights (plus the embedding) are held at a time.

    ``kv_quant`` (optional) is applied to K and to V as they are written to the cache (after norm and
    RoPE), each call with one array [num_kv_heads, new_tokens, head_dim]; every read of the cache,
    the writing step's own tokens included, sees its output (a fake-quantization hook: int8 KV).

    ``max_cache``: the most positions the cache may hold (preallocated); beyond it ``prefill`` /
    ``decode`` raise ``InputError``. None: grow as needed.
    """

    def __init__(self, text: TextSpec, weights: WeightFn, *, kv_quant: KvQuant | None = None,
                 max_cache: int | None = None, cache_weights: bool = True):
        if not text.tie_word_embeddings:
            raise UnsupportedByReference("untied LM head (tie_word_embeddings=false) is not a Gemma 4 layout")
        if max_cache is not None and max_cache < 1:
            raise InputError(f"max_cache must be >= 1, got {max_cache}")
        self.text = text
        self._weights = weights
        self._kv_quant = kv_quant
        self._max_cache = max_cache
        self._cache_weights = cache_weights
        self._w: dict[str, np.ndarray] = {}
        self._shapes = {t.name: t.shape for t in text_tensors(text)}
        self._rope: dict[tuple, np.ndarray] = {}
        self.reset()

    @classmethod
    def from_checkpoint(cls, src, **kwargs) -> "Reference":
        """A Reference over a checkpoint directory (or an open ``Checkpoint``); kwargs as ``__init__``."""
        from .weights import weights_from_checkpoint

        w = weights_from_checkpoint(src)
        return cls(w.spec.text, w, **kwargs)

    # ---- public API -------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the KV cache (position back to 0). Cached weights are kept."""
        self.pos = 0
        self._cache: dict[int, _KvCache] = {}

    def prefill(self, ids: Sequence[int], *, last_only: bool = False) -> np.ndarray:
        """Run ``ids`` at the next positions (an empty cache: 0..T-1); return logits [T, V]
        (``last_only``: [V] of the last position). Appends to the KV cache, so it may also be
        called again to extend a prompt (chunked prefill)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise InputError("prefill needs at least one token")
        logits = self._forward(ids, last_only)
        return logits[-1] if last_only else logits

    def decode(self, token: int) -> np.ndarray:
        """One token at the next position; logits [V]."""
        return self._forward(np.asarray([int(token)], dtype=np.int64), True)[-1]

    def greedy(self, ids: Sequence[int], n: int) -> list[int]:
        """Reset, prefill ``ids`` and take ``n`` greedy (argmax) tokens; EOS does not stop it."""
        self.reset()
        return greedy(lambda: self.prefill(ids, last_only=True), self.decode, n)

    # ---- internals --------------------------------------------------------------------------
    def _get(self, name: str) -> np.ndarray:
        w = self._w.get(name)
        if w is not None:
            return w
        w = np.asarray(self._weights(name), dtype=np.float32)
        want = self._shapes.get(name)
        if want is None:
            raise InputError(f"the reference asked for an unknown tensor {name!r}")
        if tuple(w.shape) != tuple(want):
            raise InputError(f"weights({name!r}) has shape {list(w.shape)}, the spec says {list(want)}",
                             tensor=name)
        if self._cache_weights:
            self._w[name] = w
        return w

    def _cos_sin(self, layer: LayerSpec, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = (layer.rope, layer.head_dim)
        inv = self._rope.get(key)
        if inv is None:
            inv = self._rope[key] = np.asarray(layer.rope.inv_freq(layer.head_dim), dtype=np.float32)
        freqs = positions.astype(np.float32)[:, None] * inv[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        return np.cos(emb), np.sin(emb)

    def _forward(self, ids: np.ndarray, last_only: bool) -> np.ndarray:
        t = self.text
        T = ids.shape[0]
        p0 = self.pos
        if self._max_cache is not None and p0 + T > self._max_cache:
            raise InputError(f"{p0 + T} positions exceed max_cache={self._max_cache}",
                             fix="reset() or build the Reference with a larger max_cache")
        if ids.min() < 0 or ids.max() >= t.vocab_size:
            raise InputError(f"token id out of range [0, {t.vocab_size})")
        positions = np.arange(p0, p0 + T, dtype=np.int64)
        H = t.hidden_size
        eps = t.rms_norm_eps

        emb = self._get("embed_tokens.weight")
        x = emb[ids] * np.float32(math.sqrt(H))

        ple = None
        if t.has_ple:
            L, P = t.ple_dims
            if ids.max() >= t.vocab_size_per_layer_input:
                raise InputError(f"token id out of the PLE vocabulary [0, {t.vocab_size_per_layer_input})")
            tok = self._get("embed_tokens_per_layer.weight")[ids] * np.float32(math.sqrt(P))
            ctx = (x @ self._get("per_layer_model_projection.weight").T) * np.float32(H ** -0.5)
            ctx = rms_norm(ctx.reshape(T, L, P), self._get("per_layer_projection_norm.weight"), eps)
            ple = (ctx + tok.reshape(T, L, P)) * np.float32(2.0 ** -0.5)

        for layer in t.layers:
            x = self._layer(layer, x, None if ple is None else ple[:, layer.index], positions)

        if last_only:
            x = x[-1:]
        x = rms_norm(x, self._get("norm.weight"), eps)
        logits = x @ emb.T
        cap = t.final_logit_softcapping
        if cap:
            logits = np.tanh(logits / np.float32(cap)) * np.float32(cap)
        self.pos = p0 + T
        return logits

    def _layer(self, layer: LayerSpec, x: np.ndarray, ple: np.ndarray | None,
               positions: np.ndarray) -> np.ndarray:
        eps = self.text.rms_norm_eps
        pre = f"layers.{layer.index}."
        g = self._get
        h = rms_norm(x, g(pre + "input_layernorm.weight"), eps)
        h = self._attention(layer, h, positions)
        x = x + rms_norm(h, g(pre + "post_attention_layernorm.weight"), eps)

        h = rms_norm(x, g(pre + "pre_feedforward_layernorm.weight"), eps)
        h = gelu_tanh(h @ g(pre + "mlp.gate_proj.weight").T) * (h @ g(pre + "mlp.up_proj.weight").T)
        h = h @ g(pre + "mlp.down_proj.weight").T
        if self.text.enable_moe:   # shared MLP + routed experts (reference/moe.py)
            h = moe_feed_forward(g, pre, x, h, self.text.top_k_experts, eps)
        x = x + rms_norm(h, g(pre + "post_feedforward_layernorm.weight"), eps)

        if ple is not None:
            h = gelu_tanh(x @ g(pre + "per_layer_input_gate.weight").T) * ple
            h = h @ g(pre + "per_layer_projection.weight").T
            x = x + rms_norm(h, g(pre + "post_per_layer_input_norm.weight"), eps)
        return x * g(pre + "layer_scalar")

    def _attention(self, layer: LayerSpec, h: np.ndarray, positions: np.ndarray) -> np.ndarray:
        t = self.text
        eps = t.rms_norm_eps
        g = self._get
        pre = f"layers.{layer.index}.self_attn."
        T, D, nh, nkv = h.shape[0], layer.head_dim, t.num_heads, layer.num_kv_heads
        cos, sin = self._cos_sin(layer, positions)

        q = (h @ g(pre + "q_proj.weight").T).reshape(T, nh, D)
        q = _rope(rms_norm(q, g(pre + "q_norm.weight"), eps), cos, sin)

        if not layer.kv_shared:
            k_raw = (h @ g(pre + "k_proj.weight").T).reshape(T, nkv, D)
            v_raw = k_raw if layer.k_eq_v else (h @ g(pre + "v_proj.weight").T).reshape(T, nkv, D)
            k = _rope(rms_norm(k_raw, g(pre + "k_norm.weight"), eps), cos, sin).transpose(1, 0, 2)
            v = rms_norm(v_raw, None, eps).transpose(1, 0, 2)
            if self._kv_quant is not None:
                k = np.asarray(self._kv_quant(k), dtype=np.float32)
                v = np.asarray(self._kv_quant(v), dtype=np.float32)
            cache = self._cache.get(layer.index)
            if cache is None:
                cap = self._max_cache or max(64, 2 * T)
                cache = self._cache[layer.index] = _KvCache(nkv, D, cap)
            if cache.n != positions[0]:
                raise InputError(f"layer {layer.index}: cache holds {cache.n} positions, expected {positions[0]}")
            cache.append(k, v)
        cache = self._cache[layer.kv_source]

        # Visible keys: causal, and for sliding layers the last W positions (the query's own included).
        q_pos = positions[:, None]
        start = 0 if layer.window is None else max(0, int(positions[0]) - layer.window + 1)
        k_pos = np.arange(start, cache.n, dtype=np.int64)[None, :]
        allowed = k_pos <= q_pos
        if layer.window is not None:
            allowed &= k_pos > q_pos - layer.window
        K = cache.k[:, start:cache.n]
        V = cache.v[:, start:cache.n]

        rep = t.kv_groups(layer)
        qh = q.transpose(1, 0, 2).reshape(nkv, rep * T, D)           # head h → kv head h // rep
        scores = (qh @ K.transpose(0, 2, 1)).reshape(nh, T, -1)     # scaling 1.0
        scores = np.where(allowed[None], scores, np.float32(-np.inf))
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out = (probs.reshape(nkv, rep * T, -1) @ V).reshape(nh, T, D)
        out = out.transpose(1, 0, 2).reshape(T, nh * D)
        return out @ g(pre + "o_proj.weight").T

"""The Gemma 4 text decoder as frozen dataclasses: what every later stage reads.

``ModelSpec`` is built from ``config.json`` alone (``gemma4.config``; each per-layer fact derived by
one function of ``gemma4.geometry``); it knows how each layer attends (sliding or full, head
geometry, RoPE, which layer's KV cache it reads, MLP width), which layers own a KV cache and its
per-position shape (``TextSpec.kv_caches``), the per-layer-embedding geometry, and which towers
(vision, audio) the checkpoint carries besides the decoder. The tensors it stores are the name
table's (``gemma4.names.text_tensors``). This module imports nothing else of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

AttentionKind = Literal["sliding", "full"]


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding of one layer type.

    ``proportional`` (full layers): only the first ``partial_rotary_factor * head_dim / 2`` frequency
    pairs rotate, with exponents over the *whole* head_dim; the rest have frequency 0 (identity).
    """

    theta: float
    kind: Literal["default", "proportional"] = "default"
    partial_rotary_factor: float = 1.0
    factor: float = 1.0

    def inv_freq(self, head_dim: int) -> "list[float]":
        """Inverse frequencies, length head_dim // 2 (as transformers 5.23 computes them)."""
        half = head_dim // 2
        if self.kind == "default":
            return [1.0 / (self.theta ** (2 * i / head_dim)) for i in range(half)]
        angles = int(self.partial_rotary_factor * head_dim // 2)
        inv = [1.0 / (self.theta ** (2 * i / head_dim)) / self.factor for i in range(angles)]
        return inv + [0.0] * (half - angles)


@dataclass(frozen=True)
class LayerSpec:
    index: int
    attention: AttentionKind
    head_dim: int
    num_kv_heads: int
    intermediate_size: int        # doubled in KV-shared layers when use_double_wide_mlp
    kv_source: int                # the layer whose K/V this layer attends to (itself unless shared)
    k_eq_v: bool                  # full layer with attention_k_eq_v: V is K's projection (no v_proj)
    rope: RopeSpec
    window: int | None            # sliding window (tokens) or None for full attention

    @property
    def kv_shared(self) -> bool:
        return self.kv_source != self.index


@dataclass(frozen=True)
class CacheSpec:
    """The KV cache one layer owns (mlx-lm's ``make_cache``, without the length): K and V of
    ``kv_heads`` heads of ``head_dim`` per position; ``window`` positions matter (None: all).
    How long, in what dtype and layout the buffers are is the converter's choice
    (``quant.kv_layout``)."""

    layer: int
    attention: AttentionKind
    kv_heads: int
    head_dim: int
    window: int | None


@dataclass(frozen=True)
class TensorSpec:
    """One stored tensor of the text decoder, by canonical name (no checkpoint prefix)."""

    name: str                     # e.g. "layers.3.mlp.gate_proj.weight"
    role: str                     # recipe role: name without ".weight", e.g. "layers.3.mlp.gate_proj"
    shape: tuple[int, ...]
    component: str                # see spec.names.COMPONENTS
    kind: Literal["linear", "embedding", "norm", "scalar", "experts"]
    layer: int | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class TextSpec:
    vocab_size: int
    hidden_size: int
    num_heads: int
    layers: tuple[LayerSpec, ...]
    rms_norm_eps: float
    final_logit_softcapping: float | None
    hidden_activation: str
    tie_word_embeddings: bool
    vocab_size_per_layer_input: int
    hidden_size_per_layer_input: int   # 0: no per-layer embeddings
    num_kv_shared_layers: int
    sliding_window: int
    attention_bias: bool = False
    enable_moe: bool = False
    num_experts: int = 0
    top_k_experts: int = 0
    moe_intermediate_size: int = 0
    bos_token_id: int | None = 2
    eos_token_ids: tuple[int, ...] = (1,)
    pad_token_id: int | None = 0

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def has_ple(self) -> bool:
        return self.hidden_size_per_layer_input > 0

    @property
    def embed_scale(self) -> float:
        return self.hidden_size ** 0.5

    @property
    def ple_dims(self) -> tuple[int, int]:
        """(L, P): per-layer embeddings are [L, P] per token (P = 0: none)."""
        return self.num_layers, self.hidden_size_per_layer_input

    @property
    def kv_layers(self) -> tuple[int, ...]:
        """Layers that produce (and own) a KV cache, in order."""
        return tuple(layer.index for layer in self.layers if not layer.kv_shared)

    @property
    def last_kv_layer(self) -> int:
        """The last layer that writes a KV cache (-1: none); later layers matter only for logits."""
        return max(self.kv_layers, default=-1)

    @property
    def kv_caches(self) -> tuple[CacheSpec, ...]:
        """The KV caches the decoder holds, one per KV-producing layer, in layer order (KV-shared
        layers read their ``kv_source``'s and add none)."""
        return tuple(CacheSpec(ly.index, ly.attention, ly.num_kv_heads, ly.head_dim, ly.window)
                     for ly in self.layers if not ly.kv_shared)

    def q_width(self, layer: LayerSpec) -> int:
        """Width of ``layer``'s queries (q_proj rows, o_proj columns): num_heads × head_dim."""
        return self.num_heads * layer.head_dim

    def kv_groups(self, layer: LayerSpec) -> int:
        """Query heads per KV head in ``layer`` (GQA: query head h reads KV head h // groups)."""
        return self.num_heads // layer.num_kv_heads


@dataclass(frozen=True)
class TowerSpec:
    """A non-text tower (vision or audio) and its projector, kept only to count and strip it."""

    name: Literal["vision", "audio"]
    config: dict = field(hash=False, compare=False)
    tensors: tuple[tuple[str, tuple[int, ...]], ...] | None  # None: shapes unknown from config alone

    @property
    def numel(self) -> int | None:
        if self.tensors is None:
            return None
        return sum(math.prod(shape) for _, shape in self.tensors)


@dataclass(frozen=True)
class ModelSpec:
    model_type: str               # gemma4 | gemma4_text | gemma4_unified
    config_form: Literal["hub", "per_layer_config"]
    text: TextSpec
    vision: TowerSpec | None = None
    audio: TowerSpec | None = None

    @property
    def towers(self) -> tuple[TowerSpec, ...]:
        return tuple(t for t in (self.vision, self.audio) if t is not None)

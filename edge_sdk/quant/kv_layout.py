"""The KV-cache layout: ONE description of the state buffers a converted model carries.

Derived in one place (``kv_layout``) from the caches the model declares (``TextSpec.kv_caches``,
gemma4's: which layers own a cache, their KV heads, head dim and window), the recipe's ``kv_cache``
config, the context C and the prefill chunk length T. Gemma 4 owns what a cache holds per position;
this module owns how the converted model stores it (lengths and rings, which depend on the prefill
chunk; dtype and scales, which depend on the recipe; LiteRT-LM's names and axis orders), which is
why it lives in ``quant/`` and not in ``gemma4/`` (the floor below recipes). The planner counts its ``bytes``; the converter emits
exactly its buffers (names, shapes, dtypes) and records it in ``model.json['kv_cache']``; the
pipeline's planned memory of a converted model reads it back from there (``KvLayout.from_json``).

Buffers (LiteRT-LM's order: ``kv_cache_k_i``, ``kv_cache_v_i`` for each KV-producing layer i;
KV-shared layers read their source layer's buffers and add none):

- K ``[1, KVH, L, D]`` (sequence axis 2), V ``[1, KVH, D, L]`` (sequence axis 3), Google's layout.
- Full-attention layers: ``L = C``, slot j holds position j (DYNAMIC_UPDATE_SLICE at input_pos[0]).
- Sliding layers (window W): a ring of ``L = R = min(C, W + T - 1)`` slots. A prefill chunk of T
  tokens at positions p..p+T-1 must not overwrite keys its own queries still need (query p needs
  keys > p - W, the chunk writes up to p + T - 1), hence ``R >= W + T - 1``. Slot s holds the most
  recent written position ≡ s (mod R); the graph computes every slot's position from input_pos and
  masks causality and the window itself. When ``R == C`` the ring is the full-length cache
  (``ring`` False) and slot j holds position j, as for full layers.

dtype: float32 (kv bits 32), or int8 (kv bits 8) with ONE per-tensor scale per buffer (zero point
0), stored as the tensor's quantization parameter in the model file, not as state. LiteRT-LM
carries only the state buffers (LITERTLM_GEMMA4.md §7), so a recipe's per-(token, head) scales
cannot be emitted: the layout records ``requested`` granularity, ``scale_granularity``
"per_tensor", and ``adaptation`` says so. float16 (kv bits 16) is refused: the engine accepts it
but its CPU output was not faithful.

``bytes`` of a buffer = its elements × its dtype's size: exactly the state the runtime allocates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import InputError, RecipeError
from ..gemma4.model import TextSpec
from .config import KVCacheConfig

ITEMSIZE = {"float32": 4, "int8": 1}
LAYOUT_VERSION = 1


def ring_length(window: int, prefill: int, context: int) -> int:
    """Slots a sliding layer's ring needs: ``min(context, window + prefill - 1)``."""
    return min(context, window + max(prefill, 1) - 1)


@dataclass(frozen=True)
class KvBuffer:
    """One KV state buffer, as emitted."""

    name: str                 # kv_cache_k_<layer> / kv_cache_v_<layer>
    layer: int
    kind: str                 # "k" | "v"
    shape: tuple[int, ...]    # K [1, KVH, L, D], V [1, KVH, D, L]
    dtype: str                # float32 | int8
    sequence_axis: int        # 2 (K) | 3 (V)
    attention: str            # sliding | full
    window: int | None
    ring: bool                # True: slot s holds the latest position ≡ s (mod length)
    scale_granularity: str | None   # "per_tensor" (int8) | None (float)

    @property
    def length(self) -> int:
        return self.shape[self.sequence_axis]

    @property
    def bytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]

    def to_json(self) -> dict:
        return {"name": self.name, "layer": self.layer, "kind": self.kind, "shape": list(self.shape),
                "dtype": self.dtype, "sequence_axis": self.sequence_axis, "length": self.length,
                "attention": self.attention, "window": self.window, "ring": self.ring,
                "scale_granularity": self.scale_granularity, "bytes": self.bytes}

    @classmethod
    def from_json(cls, d: Mapping) -> "KvBuffer":
        shape = tuple(int(x) for x in d["shape"])
        axis = int(d.get("sequence_axis", 2 if d["kind"] == "k" else 3))
        return cls(str(d["name"]), int(d["layer"]), str(d["kind"]), shape, str(d["dtype"]), axis,
                   str(d.get("attention", "full")), d.get("window"),
                   bool(d.get("ring", False)),
                   d.get("scale_granularity", "per_tensor" if d["dtype"] == "int8" else None))


@dataclass(frozen=True)
class KvLayout:
    """Every KV state buffer of a model at one (context, prefill) geometry."""

    context: int
    prefill: int
    dtype: str                          # float32 | int8
    requested_bits: int
    requested_granularity: str | None   # the recipe's ask ("token_head", "tensor", None)
    buffers: tuple[KvBuffer, ...]

    @property
    def bytes(self) -> int:
        return sum(b.bytes for b in self.buffers)

    @property
    def scale_granularity(self) -> str | None:
        return "per_tensor" if self.dtype == "int8" else None

    @property
    def adaptation(self) -> str | None:
        """What differs from the recipe's request (None: emitted as asked)."""
        if self.requested_bits == 8 and self.requested_granularity not in (None, "tensor"):
            return (f"int8 per-{self.requested_granularity} scales requested; emitted per-tensor "
                    "(one scale per buffer): LiteRT-LM carries only the state buffers")
        return None

    @property
    def ring_layers(self) -> tuple[int, ...]:
        return tuple(sorted({b.layer for b in self.buffers if b.ring}))

    def buffer(self, name: str) -> KvBuffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    def by_layer(self) -> tuple[tuple[int, int], ...]:
        """(layer, K + V bytes) for each KV-producing layer, in layer order."""
        out: dict[int, int] = {}
        for b in self.buffers:
            out[b.layer] = out.get(b.layer, 0) + b.bytes
        return tuple(sorted(out.items()))

    def describe(self) -> str:
        rings = {b.length for b in self.buffers if b.ring}
        where = (f"sliding layers: ring of {', '.join(map(str, sorted(rings)))} slots "
                 f"(window + prefill - 1)" if rings else "all caches full-length")
        return where

    def to_json(self) -> dict:
        return {"layout_version": LAYOUT_VERSION, "context": self.context, "prefill": self.prefill,
                "dtype": self.dtype, "scale_granularity": self.scale_granularity,
                "requested": {"bits": self.requested_bits, "granularity": self.requested_granularity},
                "adaptation": self.adaptation, "bytes": self.bytes,
                "buffers": [b.to_json() for b in self.buffers]}

    @classmethod
    def from_json(cls, kv: Mapping, *, context: int | None = None, prefill: int | None = None) -> "KvLayout":
        """From ``model.json['kv_cache']`` (this layout's ``to_json``, or an older model.json whose
        buffers carry at least name, layer, kind, shape, dtype)."""
        bufs = tuple(KvBuffer.from_json(b) for b in kv["buffers"])
        req = kv.get("requested") or {}
        ctx = kv.get("context", context)
        if ctx is None:
            ctx = max(b.length for b in bufs)
        return cls(int(ctx), int(kv.get("prefill", prefill or 1)), str(kv.get("dtype", bufs[0].dtype)),
                   int(req.get("bits", 8 if bufs[0].dtype == "int8" else 32)), req.get("granularity"), bufs)


def model_kv_layout(meta, model_dir) -> KvLayout:
    """The KV layout a converted model carries (``ModelInfo.kv_cache``, read at its context and
    prefill); InputError naming model.json and the fix when the block is not one this edge-sdk
    reads."""
    try:
        return KvLayout.from_json(meta.kv_cache, context=meta.context, prefill=meta.prefill)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise InputError(f"kv_cache is not a KV layout this edge-sdk reads ({type(e).__name__}: {e})",
                         path=Path(model_dir) / "model.json",
                         fix="convert the checkpoint again with `edge-sdk convert`") from None


def kv_layout(text: TextSpec, kv: KVCacheConfig, context: int, prefill: int) -> KvLayout:
    """The layout the converter emits for ``text`` at ``context`` tokens with prefill chunks of
    ``prefill`` (see the module docstring)."""
    if context < 1 or prefill < 1:
        raise RecipeError(f"context ({context}) and prefill ({prefill}) must be positive")
    kv.format.check_runnable()   # float16: refused (the format's reason)
    dtype = kv.format.litert
    gran = "per_tensor" if dtype == "int8" else None
    bufs = []
    for c in text.kv_caches:   # which layers own a cache, its heads, dim and window: gemma4's
        length, ring = context, False
        if c.window is not None:
            length = ring_length(c.window, prefill, context)
            ring = length < context
        for kind, shape, axis in (("k", (1, c.kv_heads, length, c.head_dim), 2),
                                  ("v", (1, c.kv_heads, c.head_dim, length), 3)):
            bufs.append(KvBuffer(f"kv_cache_{kind}_{c.layer}", c.layer, kind, shape, dtype, axis, str(c.attention),
                                 c.window, ring, gran))
    g = None if kv.granularity is None else str(kv.granularity)
    return KvLayout(context, prefill, dtype, kv.bits, g, tuple(bufs))


MIN_SPAN = 128   # the shortest decode_<S> signature


def decode_span_lengths(context: int, count: int) -> tuple[int, ...]:
    """Lengths S of a model's ``decode_<S>`` signatures (decode reading the first S slots of the
    full-length caches): ``count`` of C/8, C/4, C/2 (each >= MIN_SPAN), shortest first, since the
    shortest buys the most decode speed for its memory. E.g. C = 4096, count 1 -> (512,);
    count 3 -> (512, 1024, 2048); C = 512, count 3 -> (128, 256)."""
    if count < 0:
        raise ValueError(f"decode_spans must be >= 0, got {count}")
    return tuple([s for s in (context // 8, context // 4, context // 2) if s >= MIN_SPAN][:count])


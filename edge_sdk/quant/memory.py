"""The memory planner: how much RAM a planned model needs at a context length, before converting.

One vocabulary with the validator (DESIGN.md "Memory accounting"): resident weights (read on every
token, so their pages are all touched), mapped-on-demand sections (PLE table and the embedder's
token table: only looked-up rows become resident), KV cache at the context, activation arena, and
what the runtime itself adds to run this model (``RuntimeProfile``):

- KV copies: LiteRT-LM keeps an input and an output copy of every state buffer; our runner
  binds one buffer as both (in place).
- KV read copies: attention DEQUANTIZEs a layer's whole int8 cache to float32 before its
  BATCH_MATMULs; each signature that runs (prefill and decode) has its own arena holding the
  largest layer's float K and V.
- Quantization metadata: the runtime unpacks every per-channel scale and zero point of every
  subgraph into its heap (float32 + int32 per channel; prefill holds only the layers that feed a
  cache, decode and score hold all).
- Model head: the flatbuffer before the external weights (tensor tables, each weight's
  quantization parameters once as float32 + int64, inline constants). LiteRT-LM keeps its pages; our runner
  releases them after load, as the weights are read from the XNNPACK weight cache.
- Fixed: library code and data paged in by running, interpreter and delegate structures,
  allocator slack: measured, one constant per runtime (``RUNTIMES``).

``peak_bytes`` = all of it, compared with the model share the validator measures (VmHWM minus the
RSS after the runtime library is loaded), cold.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..options import PLAN_RUNTIME
from .kv_layout import KvLayout, kv_layout
from .moe_layout import moe_activation_bytes, touched_expert_bytes
from .plan import QuantPlan

PAGE = 4096


@dataclass(frozen=True)
class RuntimeProfile:
    """What one runtime adds to a model's own bytes (see the module docstring)."""
    name: str
    kv_copies: int            # live copies of each KV state buffer
    keeps_model_head: bool    # the flatbuffer head's pages stay resident
    fixed_bytes: int          # measured constant (library pages, structures, allocator slack)
    measured: str             # where fixed_bytes comes from

    def __post_init__(self):
        if self.kv_copies < 1 or self.fixed_bytes < 0:
            raise ValueError(f"runtime profile {self.name}: kv_copies >= 1 and fixed_bytes >= 0")


# fixed_bytes: the model share left after every modelled term, E2B mobile --text-only at 4096
# tokens, cold, steady state (edge-sdk validate; docs/benchmarks.md), x86-64 2 threads.
RUNTIMES = {
    "litert-lm": RuntimeProfile("litert-lm", kv_copies=2, keeps_model_head=True, fixed_bytes=21_000_000,
                                measured="litert-lm-api 0.18.1, E2B mobile 4K cold steady 955 MB (2026-12-01)"),
    "edge_sdk": RuntimeProfile("edge_sdk", kv_copies=1, keeps_model_head=False, fixed_bytes=52_000_000,
                               measured="ai-edge-litert 2.3.0 CompiledModel+XNNPACK cache, E2B mobile 4K cold "
                                        "steady 936 MB (2026-12-01)"),
}
DEFAULT_RUNTIME = PLAN_RUNTIME   # what an app runs (edge_sdk.options owns the default)
SIGNATURES = 3                  # prefill_<T>, decode, score_<T> in prefill_decode.tflite
HEAD_CONSTANT_BYTES = 1_200_000  # inline constants and tensor tables of the E2B head, beside the quant params


@dataclass(frozen=True)
class MemoryEstimate:
    context: int
    prefill: int
    resident_bytes: int
    mapped_bytes: int
    mapped_touched_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    kv_by_layer: tuple[tuple[int, int], ...]
    distinct_tokens: int
    mapped_touched_worst_bytes: int   # every token of the context distinct
    kv: KvLayout                       # the KV state buffers counted in kv_cache_bytes
    runtime: str = DEFAULT_RUNTIME
    kv_extra_copy_bytes: int = 0       # KV copies beyond the one in kv_cache_bytes
    kv_read_bytes: int = 0             # float32 K+V of the largest layer, per running signature
    quant_metadata_bytes: int = 0      # per-channel scales + zero points in the runtime's heap
    model_head_bytes: int = 0          # flatbuffer head pages kept resident
    runtime_fixed_bytes: int = 0       # measured constant of the runtime

    @property
    def runtime_bytes(self) -> int:
        """What the runtime adds to run the model (all terms but the model's own bytes)."""
        return (self.kv_extra_copy_bytes + self.kv_read_bytes + self.quant_metadata_bytes + self.model_head_bytes
                + self.runtime_fixed_bytes)

    @property
    def model_bytes(self) -> int:
        """The model's own bytes: weights, touched rows, one KV cache, activations."""
        return self.resident_bytes + self.mapped_touched_bytes + self.kv_cache_bytes + self.activation_bytes

    @property
    def peak_bytes(self) -> int:
        return self.model_bytes + self.runtime_bytes

    @property
    def peak_worst_bytes(self) -> int:
        return self.peak_bytes - self.mapped_touched_bytes + self.mapped_touched_worst_bytes


def kv_cache_bytes(plan: QuantPlan, context: int, prefill: int = 32) -> tuple[tuple[int, int], ...]:
    """Per KV-producing layer: bytes of its K + V state buffers at ``context`` tokens with prefill
    chunks of ``prefill``, exactly as the converter emits them (``kv_layout``: sliding layers hold
    a ring of window + prefill - 1 slots, KV-shared layers add nothing, int8 has one per-tensor
    scale per buffer stored in the model, not as state)."""
    return kv_layout(plan.spec.text, plan.kv_cache, context, prefill).by_layer()


def activation_bytes(plan: QuantPlan, context: int, prefill: int) -> int:
    """Arena estimate for a prefill chunk of ``prefill`` tokens (float32 activations).

    The largest simultaneously live set in one layer: the residual stream and its normed copy,
    q and the attention scores over the cache, and the MLP's gate, up and product; plus the
    per-layer-embedding inputs and the decode logits. An estimate (±30 %), not a measurement.
    """
    t = plan.spec.text
    T = prefill
    f = 4
    hidden = 3 * T * t.hidden_size * f
    worst_layer = 0
    for layer in t.layers:
        q = T * t.q_width(layer) * f
        scores = 2 * t.num_heads * T * context * f  # logits + softmax output
        mlp = 3 * T * layer.intermediate_size * f
        worst_layer = max(worst_layer, q + scores, mlp)
    ple = 2 * T * math.prod(t.ple_dims) * f
    logits = t.vocab_size * f
    return hidden + max(worst_layer, moe_activation_bytes(t, T)) + ple + logits


DISTINCT_TOKEN_RATIO = 0.25


def mapped_touched_bytes(plan: QuantPlan, distinct_tokens: int) -> int:
    """Pages of mapped tables touched by looking up ``distinct_tokens`` different tokens.

    Each distinct token touches one row of each mapped table, costing the row's size rounded up
    to whole pages (rows of different tokens rarely share a page in a 262k vocabulary).
    """
    total = 0
    for tp in plan.tensors:
        if not tp.mapped:
            continue
        if len(tp.shape) == 3:   # MoE experts: pages of the experts routed to (quant/moe_layout.py)
            total += touched_expert_bytes(plan.spec.text, tp.nbytes, distinct_tokens)
            continue
        rows = tp.shape[0]
        row_pages = -(-(tp.data_bytes // rows) // PAGE)
        total += min(tp.nbytes, min(distinct_tokens, rows) * row_pages * PAGE)
    return total


def _layer_of(name: str) -> int | None:
    m = re.match(r"layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _quantized(plan: QuantPlan) -> list:
    """Quantized tensors whose per-channel scales are LiteRT quantization parameters (MoE experts keep
    theirs in a float constant of their own: counted in their bytes, not here)."""
    return [t for t in plan.tensors if t.model == "prefill_decode" and t.config is not None
            and t.scheme != "float32" and len(t.shape) != 3]


def unique_quant_channels(plan: QuantPlan) -> int:
    """Per-channel quantization parameters stored in the model file: once per weight (the writer
    shares one table among the subgraphs that use it)."""
    return sum(t.shape[0] for t in _quantized(plan))


def quant_channels(plan: QuantPlan, decode_spans: int = 0) -> int:
    """Per-channel quantization parameters the runtime unpacks, over the signatures of
    prefill_decode: decode, score and each of the ``decode_spans`` decode_<S> signatures hold every
    quantized tensor, prefill only the layers up to the last one that writes a cache (the rest
    reach no output and are not in its graph)."""
    q = _quantized(plan)
    last = plan.spec.text.last_kv_layer
    every = sum(t.shape[0] for t in q)
    prefill = sum(t.shape[0] for t in q if (_layer_of(t.name) if _layer_of(t.name) is not None else 1 << 30) <= last)
    return (SIGNATURES - 1 + decode_spans) * every + prefill


def kv_read_bytes(kv: KvLayout, signatures: int = 2, decode_spans: tuple[int, ...] = ()) -> int:
    """float32 K and V of the layer with the largest cache, once per running signature's arena;
    a decode_<S> signature reads full-length caches up to slot S only."""
    def largest(span: int | None) -> int:
        per_layer: dict[int, int] = {}
        for b in kv.buffers:
            n = math.prod(b.shape)
            if span is not None and not b.ring and span < b.length:
                n = n // b.length * span
            per_layer[b.layer] = per_layer.get(b.layer, 0) + 4 * n
        return max(per_layer.values(), default=0)
    return signatures * largest(None) + sum(largest(s) for s in decode_spans)


def estimate_memory(plan: QuantPlan, context: int, prefill: int = 32, *,
                    distinct_tokens: int | None = None, kv: KvLayout | None = None,
                    runtime: str = DEFAULT_RUNTIME, decode_spans: tuple[int, ...] = ()) -> MemoryEstimate:
    """Peak estimate at ``context`` tokens with prefill chunks of ``prefill``.

    ``distinct_tokens`` (how many different tokens the context holds) sets how many rows of the
    mapped tables become resident; default ``DISTINCT_TOKEN_RATIO * context``. The worst case
    (all distinct) is reported beside it. ``kv``: the KV layout to count (a converted model's, read
    from its model.json); default the one the converter emits at (context, prefill).
    ``decode_spans``: the lengths S of the model's decode_<S> signatures (each costs its unpacked
    quantization parameters and its float KV reads in every runtime that loads the file).
    """
    if distinct_tokens is None:
        distinct_tokens = max(1, int(DISTINCT_TOKEN_RATIO * context))
    if kv is None:
        kv = kv_layout(plan.spec.text, plan.kv_cache, context, prefill)
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    rt = RUNTIMES[runtime]
    channels = quant_channels(plan, len(decode_spans))
    return MemoryEstimate(
        context=context, prefill=prefill,
        resident_bytes=plan.resident_bytes, mapped_bytes=plan.mapped_bytes,
        mapped_touched_bytes=mapped_touched_bytes(plan, distinct_tokens),
        kv_cache_bytes=kv.bytes,
        activation_bytes=activation_bytes(plan, context, prefill),
        kv_by_layer=kv.by_layer(), distinct_tokens=distinct_tokens,
        mapped_touched_worst_bytes=mapped_touched_bytes(plan, context), kv=kv,
        runtime=runtime, kv_extra_copy_bytes=(rt.kv_copies - 1) * kv.bytes, kv_read_bytes=kv_read_bytes(kv, decode_spans=decode_spans),
        quant_metadata_bytes=8 * channels,
        model_head_bytes=(12 * unique_quant_channels(plan) + HEAD_CONSTANT_BYTES) if rt.keeps_model_head else 0,
        runtime_fixed_bytes=rt.fixed_bytes,
    )

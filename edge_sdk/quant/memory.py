"""The memory planner: how much RAM a planned model needs at a context length, before converting.

One vocabulary with the validator (DESIGN.md "Memory accounting"): resident weights (read on every
token, so their pages are all touched), mapped-on-demand sections (PLE table and the embedder's
token table: only looked-up rows become resident), KV cache at the context, activation arena.
``peak_estimate`` = resident + touched mapped rows + KV cache + activations, compared with VmHWM
minus the runner's baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

from .kv_layout import KvLayout, kv_layout
from .plan import QuantPlan

PAGE = 4096


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

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + self.mapped_touched_bytes + self.kv_cache_bytes + self.activation_bytes

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
        q = T * t.num_heads * layer.head_dim * f
        scores = 2 * t.num_heads * T * context * f  # logits + softmax output
        mlp = 3 * T * layer.intermediate_size * f
        worst_layer = max(worst_layer, q + scores, mlp)
    ple = 2 * T * t.num_layers * t.hidden_size_per_layer_input * f
    logits = t.vocab_size * f
    return hidden + worst_layer + ple + logits


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
        rows = tp.shape[0]
        row_pages = -(-(tp.data_bytes // rows) // PAGE)
        total += min(tp.nbytes, min(distinct_tokens, rows) * row_pages * PAGE)
    return total


def estimate_memory(plan: QuantPlan, context: int, prefill: int = 32, *,
                    distinct_tokens: int | None = None, kv: KvLayout | None = None) -> MemoryEstimate:
    """Peak estimate at ``context`` tokens with prefill chunks of ``prefill``.

    ``distinct_tokens`` (how many different tokens the context holds) sets how many rows of the
    mapped tables become resident; default ``DISTINCT_TOKEN_RATIO * context``. The worst case
    (all distinct) is reported beside it. ``kv``: the KV layout to count (a converted model's, read
    from its model.json); default the one the converter emits at (context, prefill).
    """
    if distinct_tokens is None:
        distinct_tokens = max(1, int(DISTINCT_TOKEN_RATIO * context))
    if kv is None:
        kv = kv_layout(plan.spec.text, plan.kv_cache, context, prefill)
    return MemoryEstimate(
        context=context, prefill=prefill,
        resident_bytes=plan.resident_bytes, mapped_bytes=plan.mapped_bytes,
        mapped_touched_bytes=mapped_touched_bytes(plan, distinct_tokens),
        kv_cache_bytes=kv.bytes,
        activation_bytes=activation_bytes(plan, context, prefill),
        kv_by_layer=kv.by_layer(), distinct_tokens=distinct_tokens,
        mapped_touched_worst_bytes=mapped_touched_bytes(plan, context), kv=kv,
    )

"""How the converter lays out a mixture-of-experts block (26B-A4B), as the planner counts it.

The graph (``litert/gemma4_moe.py``) computes each (token, routed slot) pair's expert by GATHERing
that expert's codes out of the [E, out, in] stack, CASTing them to float32 and BATCH_MATMULing.
The float copies are activations: each of the two matmuls (gate_up, down) takes the pairs in
``group_sizes`` groups so that one group's float expert weights stay under ``MOE_GROUP_BYTES``
(real size: decode one group of 8 pairs per matmul, 8·2·704·2816·4 = 127 MB for gate_up; prefill_32
32 groups for gate_up, 16 for down; the fixture: one group). The arena holds one group: so do the
builtin kernels; the XNNPACK delegate keeps every delegated matmul's copy (measured,
``scripts/moe_xnnpack_probe.py``; docs/moe.md), which this estimate does not count.

Pages: GATHER copies only the indexed experts' rows, so a token reads k of the E experts of each
layer (measured: ``scripts/moe_pages.py``). Over ``n`` tokens an expert stack has
``E · (1 - (1 - k/E)^n)`` distinct experts touched in expectation (uniform routing); at 4K
context (1024 distinct tokens by the planner's default) that is all of them: the experts are
mapped, but a long context makes them resident all the same.
"""

from __future__ import annotations

import math

from ..gemma4.model import TextSpec

MOE_GROUP_BYTES = 128 << 20   # float32 expert weights one group of pairs may hold (per matmul)


def expert_float_bytes(text: TextSpec, which: str) -> int:
    """One expert's ``gate_up`` [2I, H] or ``down`` [H, I] matrix as float32."""
    return {"gate_up": 2, "down": 1}[which] * text.moe_intermediate_size * text.hidden_size * 4


def group_sizes(text: TextSpec, tokens: int, which: str) -> list[int]:
    """The (token, slot) pairs of a chunk of ``tokens`` tokens, split into as few groups as keep one
    group's float32 copy of its experts' ``which`` matrices under ``MOE_GROUP_BYTES``, balanced
    (sizes differ by at most one). Real size: decode one group per matmul, prefill_32 (256 pairs)
    32 groups for gate_up (15.9 MB per expert) and 16 for down (7.9 MB)."""
    pairs = tokens * text.top_k_experts
    per_group = max(1, MOE_GROUP_BYTES // expert_float_bytes(text, which))
    m = -(-pairs // per_group)
    return [pairs // m + (1 if i < pairs % m else 0) for i in range(m)]


def moe_activation_bytes(text: TextSpec, tokens: int) -> int:
    """The MoE block's live arena for a chunk: the larger matmul's group of gathered codes (at most
    int8, 1 byte per weight) and float copies, plus the per-pair activations (the token copies, the
    gate_up result and its product, the outputs) and the router's [T, E] scores."""
    if not text.enable_moe:
        return 0
    I, H = text.moe_intermediate_size, text.hidden_size
    group = max(max(group_sizes(text, tokens, m)) * expert_float_bytes(text, m) // 4 * (4 + 1)
                for m in ("gate_up", "down"))
    pairs = tokens * text.top_k_experts
    return group + pairs * (2 * H + 3 * I) * 4 + 2 * tokens * text.num_experts * 4


def touched_fraction(text: TextSpec, tokens: int) -> float:
    """Expected fraction of a layer's experts that ``tokens`` tokens route to (uniform routing)."""
    if tokens <= 0:
        return 0.0
    return 1.0 - (1.0 - text.top_k_experts / text.num_experts) ** tokens


def touched_expert_bytes(text: TextSpec, nbytes: int, tokens: int) -> int:
    """Resident bytes of one mapped expert stack of ``nbytes`` after ``tokens`` tokens."""
    return min(nbytes, math.ceil(nbytes * touched_fraction(text, tokens)))

"""How the converter lays out a mixture-of-experts block (26B-A4B), as the planner counts it.

The graph (``litert/gemma4_moe.py``) computes each (token, routed slot) pair's expert by GATHERing
that expert's codes out of the [E, out, in] stack, CASTing them to float32 and BATCH_MATMULing.
The float copies are activations: pairs are processed in groups of ``group_pairs`` so that one
group's float expert weights stay under ``MOE_GROUP_BYTES`` (real size: one pair per group,
(2·704 + 704)·2816·4 = 23.8 MB; the fixture: all pairs in one group). The arena holds one group.

Pages: GATHER copies only the indexed experts' rows, so a token reads k of the E experts of each
layer (measured: ``scripts/moe_pages.py``). Over ``n`` tokens an expert stack has
``E · (1 - (1 - k/E)^n)`` distinct experts touched in expectation (uniform routing); at 4K
context (1024 distinct tokens by the planner's default) that is all of them: the experts are
mapped, but a long context makes them resident all the same.
"""

from __future__ import annotations

import math

from ..gemma4.model import TextSpec

MOE_GROUP_BYTES = 32 << 20   # float32 expert weights one group of pairs may hold


def expert_float_bytes(text: TextSpec) -> int:
    """One expert's gate_up [2I, H] and down [H, I] as float32."""
    return 3 * text.moe_intermediate_size * text.hidden_size * 4


def group_pairs(text: TextSpec, tokens: int) -> int:
    """(token, slot) pairs per group for a chunk of ``tokens`` tokens."""
    pairs = tokens * text.top_k_experts
    return max(1, min(pairs, MOE_GROUP_BYTES // expert_float_bytes(text)))


def moe_activation_bytes(text: TextSpec, tokens: int) -> int:
    """The MoE block's live arena for a chunk: one group's gathered codes (at most int8, 1 byte
    per weight) and float copies, plus the per-pair outputs and the router's [T, E] scores."""
    if not text.enable_moe:
        return 0
    n = group_pairs(text, tokens)
    per_expert = 3 * text.moe_intermediate_size * text.hidden_size
    pairs = tokens * text.top_k_experts
    return n * per_expert * (4 + 1) + pairs * text.hidden_size * 4 + 2 * tokens * text.num_experts * 4


def touched_fraction(text: TextSpec, tokens: int) -> float:
    """Expected fraction of a layer's experts that ``tokens`` tokens route to (uniform routing)."""
    if tokens <= 0:
        return 0.0
    return 1.0 - (1.0 - text.top_k_experts / text.num_experts) ** tokens


def touched_expert_bytes(text: TextSpec, nbytes: int, tokens: int) -> int:
    """Resident bytes of one mapped expert stack of ``nbytes`` after ``tokens`` tokens."""
    return min(nbytes, math.ceil(nbytes * touched_fraction(text, tokens)))

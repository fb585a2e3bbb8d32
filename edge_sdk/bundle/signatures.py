"""What a converted model's three .tflite files offer LiteRT-LM: signature names, and each
signature's inputs and outputs with shape and dtype, as :func:`edge_sdk.litert.reader.read_tflite`
reads them (mmapped, so a multi-GiB model costs a few pages).

The bundler checks these against what LiteRT-LM needs (LITERTLM_GEMMA4.md §7-8) before packing:

- ``prefill_decode``: a signature named exactly ``decode`` (anything else fails at engine creation)
  and one whose name starts with ``prefill``; ``kv_cache_k_i`` [1, KVH, C, D] / ``kv_cache_v_i``
  [1, KVH, D, C] as both inputs and outputs of both; ``logits`` out of ``decode``;
- ``embedder`` / ``per_layer_embedder``: ``decode_*`` and ``prefill_*_<T>`` signatures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InputError
from ..litert.reader import FileInfo, Signature

_KV = re.compile(r"^kv_cache_([kv])_(\d+)$")


@dataclass(frozen=True)
class KvBuffer:
    """One KV state buffer as LiteRT-LM's executor metadata describes it."""
    name: str
    kind: str               # "k" or "v"
    layer: int
    shape: tuple[int, ...]
    dtype: str
    sequence_axis: int      # 2 for K [1, KVH, C, D], 3 for V [1, KVH, D, C]
    max_length: int
    scale: float | None


def kv_buffers(decode: Signature) -> list[KvBuffer]:
    """The KV caches of a decode signature, ordered k_i, v_i by layer (Google's order)."""
    found = []
    for name, t in decode.inputs.items():
        m = _KV.match(name)
        if not m:
            continue
        kind, layer = m.group(1), int(m.group(2))
        axis = 2 if kind == "k" else 3
        if len(t.shape) != 4:
            raise InputError(f"KV cache '{name}' has shape {list(t.shape)}; LiteRT-LM needs rank 4 "
                             f"(K [1, KVH, C, D], V [1, KVH, D, C])")
        found.append(KvBuffer(name, kind, layer, t.shape, t.dtype, axis, t.shape[axis], t.scale))
    return sorted(found, key=lambda b: (b.layer, b.kind))


def cache_context(decode: Signature) -> int:
    """The context C: the mask's last axis [1, 1, T, C], else the longest KV cache (full-attention
    caches hold C positions; sliding layers' ring buffers may be shorter)."""
    mask = decode.inputs.get("mask")
    if mask is not None and len(mask.shape) == 4:
        return int(mask.shape[-1])
    return max((b.max_length for b in kv_buffers(decode)), default=0)


def check_llm_signatures(pd: FileInfo, emb: FileInfo | None, ple: FileInfo | None) -> list[str]:
    """Problems that would stop LiteRT-LM from running these models (empty list: none found)."""
    problems = []
    decode, prefill = pd.signatures.get("decode"), pd.find("prefill")
    if decode is None:
        problems.append(f"{pd.path.name}: no signature named exactly 'decode' (has {sorted(pd.signatures)}); "
                        "LiteRT-LM fails at engine creation without it")
    if prefill is None:
        problems.append(f"{pd.path.name}: no signature whose name starts with 'prefill'")
    if decode is not None:
        if "logits" not in decode.outputs:
            problems.append(f"{pd.path.name}: 'decode' has no 'logits' output")
        kv = kv_buffers(decode)
        if not kv:
            problems.append(f"{pd.path.name}: 'decode' has no kv_cache_k_i / kv_cache_v_i inputs")
        ctx = cache_context(decode)
        longer = sorted({b.name for b in kv if b.max_length > ctx})
        if longer:   # sliding layers may hold a shorter ring; nothing may exceed the context
            problems.append(f"{pd.path.name}: KV caches {longer} are longer than the context {ctx}")
        for sig in (decode, prefill):
            if sig is None:
                continue
            for b in kv:
                if b.name not in sig.inputs or b.name not in sig.outputs:
                    problems.append(f"{pd.path.name}: '{sig.key}' does not take and return '{b.name}'")
        if "embeddings" in decode.inputs and emb is None:
            problems.append("prefill_decode takes 'embeddings' but there is no embedder model")
        if "per_layer_embeddings" in decode.inputs and ple is None:
            problems.append("prefill_decode takes 'per_layer_embeddings' but there is no per-layer embedder")
    for info, stem in ((emb, "embedder"), (ple, "per_layer_embedder")):
        if info is None:
            continue
        if f"decode_{stem}" not in info.signatures or info.find(f"prefill_{stem}") is None:
            problems.append(f"{info.path.name}: needs signatures 'decode_{stem}' and 'prefill_{stem}_<T>' "
                            f"(has {sorted(info.signatures)})")
    return problems

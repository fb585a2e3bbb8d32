"""The Gemma 4 mixture-of-experts block (26B-A4B) in NumPy, float32, as transformers 5.23 computes it.

In an MoE layer (``enable_moe_block``) the feed-forward half of ``Gemma4TextDecoderLayer`` is::

    r   = x                                                # residual, before any norm
    h1  = rmsnorm(mlp(rmsnorm(r, pre_feedforward_layernorm)), post_feedforward_layernorm_1)
    # router (Gemma4TextRouter) reads the residual, not the normed input:
    z   = rmsnorm(r, no scale) * router.scale * H**-0.5 @ router.proj.T          # [T, E]
    p   = softmax(z); w, idx = topk(p, k); w = w / sum(w); w = w * per_expert_scale[idx]
    e   = rmsnorm(r, pre_feedforward_layernorm_2)
    h2  = sum_k w[:, k] * down_e(gelu_tanh(gate_e(e)) * up_e(e)),  e = idx[:, k]
          (gate_up_proj[e] is [2I, H]: rows [0, I) gate, [I, 2I) up; down_proj[e] is [H, I])
    h2  = rmsnorm(h2, post_feedforward_layernorm_2)
    x   = r + rmsnorm(h1 + h2, post_feedforward_layernorm)

Top-k ties take the lower expert index first (``torch.topk`` on CPU, and ``np.argsort(kind="stable")``
of the negated probabilities here).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .numerics import gelu_tanh, rms_norm


def route(r: np.ndarray, proj: np.ndarray, scale: np.ndarray, per_expert_scale: np.ndarray,
          top_k: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Routing weights [T, k] (renormalised, per-expert scaled) and expert indices [T, k] (int64)."""
    h = rms_norm(r, None, eps) * scale * np.float32(r.shape[-1] ** -0.5)
    z = h @ proj.T
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :top_k]
    w = np.take_along_axis(p, idx, axis=-1)
    w = w / w.sum(axis=-1, keepdims=True)
    return (w * per_expert_scale[idx]).astype(np.float32), idx


def experts(e: np.ndarray, idx: np.ndarray, w: np.ndarray, gate_up: np.ndarray,
            down: np.ndarray) -> np.ndarray:
    """``sum_k w[:, k] * expert_{idx[:, k]}(e)`` for e [T, H]."""
    inter = down.shape[2]
    out = np.zeros_like(e)
    for t in range(e.shape[0]):
        for k in range(idx.shape[1]):
            gu = gate_up[idx[t, k]] @ e[t]
            h = gelu_tanh(gu[:inter]) * gu[inter:]
            out[t] += w[t, k] * (down[idx[t, k]] @ h)
    return out


def moe_feed_forward(g: Callable[[str], np.ndarray], pre: str, r: np.ndarray, mlp_out: np.ndarray,
                     top_k: int, eps: float) -> np.ndarray:
    """The combined (not yet post_feedforward_layernorm-ed) output ``h1 + h2`` of an MoE layer;
    ``mlp_out`` is the shared dense MLP's output, ``r`` the residual stream entering the block."""
    h1 = rms_norm(mlp_out, g(pre + "post_feedforward_layernorm_1.weight"), eps)
    w, idx = route(r, g(pre + "router.proj.weight"), g(pre + "router.scale"),
                   g(pre + "router.per_expert_scale"), top_k, eps)
    e = rms_norm(r, g(pre + "pre_feedforward_layernorm_2.weight"), eps)
    h2 = experts(e, idx, w, g(pre + "experts.gate_up_proj"), g(pre + "experts.down_proj"))
    return h1 + rms_norm(h2, g(pre + "post_feedforward_layernorm_2.weight"), eps)

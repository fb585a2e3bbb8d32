"""Greedy (argmax) decoding, the one loop both runners share: the LiteRT model
(``litert/runtime.py``) and the NumPy reference (``reference/forward.py``) each reset and prefill
in their own way, then hand their logits and their ``decode`` step to :func:`greedy`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def greedy(first_logits: Callable[[], np.ndarray], decode: Callable[[int], np.ndarray], n: int) -> list[int]:
    """``n`` argmax tokens: the first from ``first_logits()`` (the prompt's last position, [V]), each
    next from ``decode(previous token)``. EOS does not stop it; ``n <= 0`` calls nothing and the
    last token is not decoded (``n`` tokens cost one prefill and ``n - 1`` decode steps)."""
    out: list[int] = []
    if n <= 0:
        return out
    logits = first_logits()
    for step in range(n):
        out.append(int(np.argmax(logits)))
        if step + 1 < n:
            logits = decode(out[-1])
    return out

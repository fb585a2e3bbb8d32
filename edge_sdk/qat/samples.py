"""Text the float teacher writes itself, to distil on beside the user's (``--teacher-samples N``).

A small training set lets the student learn the teacher on the training windows faster than it
generalises (on the tiny model: training KL 0.029 against held-out 0.063). LLM-QAT's data-free
answer is to distil on sequences the float model generates: they come from the teacher's own
distribution, and there are as many distinct contexts as one asks for. Here each sample starts
from ``PROMPT_TOKENS`` tokens of a random training window (real context, from the training split
only) and continues with tokens drawn from the teacher's softmax at temperature 1, with a KV cache.

Deterministic: the prompts come from a NumPy generator seeded ``(seed, SALT)`` and the draws from a
``torch.Generator`` seeded from the same pair, so the same seed and thread count give the same
samples (``--resume`` regenerates them bit for bit instead of storing them).
"""

from __future__ import annotations

import numpy as np
import torch

PROMPT_TOKENS = 8
GEN_BATCH = 256
SALT = 0x5A4D   # keeps the samples' generators apart from the batches' (seed, step) ones


@torch.no_grad()
def teacher_samples(model, stream: np.ndarray, n: int, seq_len: int, seed: int, device=None,
                    temperature: float = 1.0) -> np.ndarray:
    """``n`` sequences [n, seq_len] (int64): a training-window prompt, then the teacher's draws."""
    device = device or torch.device("cpu")
    rng = np.random.default_rng([seed, SALT])
    gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(0, 2 ** 62)))
    k = max(1, min(PROMPT_TOKENS, seq_len - 1, len(stream) - 1))
    starts = rng.integers(0, len(stream) - k + 1, size=n)
    out = np.empty((n, seq_len), dtype=np.int64)
    for lo in range(0, n, GEN_BATCH):
        prompt = np.stack([stream[s:s + k] for s in starts[lo:lo + GEN_BATCH]])
        out[lo:lo + len(prompt)] = _continue(model, torch.from_numpy(prompt).to(device), seq_len, gen,
                                             temperature)
    return out


def _continue(model, prompt: torch.Tensor, seq_len: int, gen: torch.Generator, temperature: float) -> np.ndarray:
    """``prompt`` [b, k] continued to ``seq_len`` tokens by sampling, one token per cached forward."""
    ids = prompt
    res = model(input_ids=ids, use_cache=True)
    while ids.shape[1] < seq_len:
        logits = res.logits[:, -1].float().cpu() / temperature
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).to(ids.device)
        ids = torch.cat([ids, nxt], 1)
        if ids.shape[1] < seq_len:
            res = model(input_ids=nxt, past_key_values=res.past_key_values, use_cache=True)
    return ids.cpu().numpy()

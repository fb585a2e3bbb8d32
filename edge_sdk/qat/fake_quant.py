"""Fake-quantizers (torch): the NumPy kernels' formulas, bit for bit, with straight-through gradients.

Affine (``edge_sdk.quant.kernels``; a ``w`` row or block shares one scale ``s``):

    forward   w_hat = clamp(round(w / s), qmin, qmax) * s        float32, round half to even
    backward  dL/dw = g                       where qmin <= w/s <= qmax, else 0   (STE)
              dL/ds = sum(g * (q - w/s))      inside the range, sum(g * q) outside  (LSQ)

``torch.round`` and ``np.rint`` both round half to even and every step is one IEEE float32
operation, so ``w_hat`` equals ``quant.dequantize(quant.quantize(w, cfg, scales=s))`` exactly.

Scales are learnable (LSQ-style): ``scale = base_scale * exp(log_gain)`` with ``base_scale`` the
PTQ scale ``quant.compute_scales(w0)`` (max|w| / qmax; 1 for all-zero rows) and ``log_gain`` a
parameter starting at 0, so QAT starts exactly at the PTQ model and Adam's steps on the scale are
relative (one learning rate suits a 2-bit MLP row and an 8-bit PLE gate). The scale a forward
uses, ``effective_scale()``, is clamped to a positive float32 — for block granularity clamped to
the float16 range and rounded to float16 (LiteRT stores FLOAT16 block scales; the rounding passes
the gradient straight through). ``export_qat`` writes exactly these values.

Dictionary (``edge_sdk.quant.kernels_dict``): groups of ``rows_per_codebook`` rows share a
sorted float32 codebook; ``code(x) = #{j : x > t_j}`` with the kernel's float32 thresholds
``t_j`` (midpoints, ties to the lower entry) and ``w_hat = codebook[code]``. The gradient passes
straight through to ``w`` (identity); codebooks are buffers, not trained: they are fitted with
the NumPy k-means (``DictionaryQuantizer``) when the quantizer is built and refitted on the
current latent weights by ``refresh()`` (``edge_sdk.qat.refresh_codebooks``; the training
script calls it every K steps). Between refreshes they are fixed, and the last forward's
codebooks are the ones exported.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..quant import AffineConfig, DictionaryConfig, DictionaryQuantizer, Granularity, compute_scales
from ..quant.kernels_dict import _thresholds32  # no public "codes for given codebooks" yet

F32_TINY = torch.finfo(torch.float32).tiny
F16_TINY = 2.0 ** -24   # smallest float16 subnormal, as quant.kernels.F16_TINY
F16_MAX = 65504.0


class _AffineFQ(torch.autograd.Function):
    """w [rows, n] (a row, or a block viewed as a row), s [rows, 1] float32."""

    @staticmethod
    def forward(ctx, w, s, qmin: int, qmax: int):
        x = w / s
        q = torch.clamp(torch.round(x), qmin, qmax)
        ctx.save_for_backward(w, s)
        ctx.qrange = (qmin, qmax)
        return q * s

    @staticmethod
    def backward(ctx, g):
        w, s = ctx.saved_tensors
        qmin, qmax = ctx.qrange
        x = w / s
        inside = (x >= qmin) & (x <= qmax)
        q = torch.clamp(torch.round(x), qmin, qmax)
        gw = g.masked_fill(~inside, 0.0) if ctx.needs_input_grad[0] else None
        gs = None
        if ctx.needs_input_grad[1]:
            gs = (g * torch.where(inside, q - x, q)).sum(dim=1, keepdim=True)
        return gw, gs, None, None


class _RoundF16(torch.autograd.Function):
    """float32 → nearest float16 → float32; gradient passes straight through."""

    @staticmethod
    def forward(ctx, s):
        return s.to(torch.float16).to(torch.float32)

    @staticmethod
    def backward(ctx, g):
        return g


class _DictFQ(torch.autograd.Function):
    """w [groups, n], thresholds [groups, K-1], codebooks [groups, K]; STE to w."""

    @staticmethod
    def forward(ctx, w, thresholds, codebooks):
        codes = torch.zeros_like(w, dtype=torch.int64)
        for j in range(thresholds.shape[1]):
            codes += w > thresholds[:, j:j + 1]
        return torch.gather(codebooks, 1, codes)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


def fake_quant_affine(w: torch.Tensor, scale: torch.Tensor, cfg: AffineConfig) -> torch.Tensor:
    """``w_hat`` of a 2-D ``w`` [out, in] for scales [out] (channel) or [out, in/block] (block);
    the scales must already be what the NumPy kernel would use (float16 values for block)."""
    rows, cols = w.shape
    if cfg.granularity is Granularity.CHANNEL:
        return _AffineFQ.apply(w, scale.reshape(rows, 1), cfg.qmin, cfg.qmax)
    nb = cols // cfg.block_size
    wv = w.reshape(rows * nb, cfg.block_size)
    out = _AffineFQ.apply(wv, scale.reshape(rows * nb, 1), cfg.qmin, cfg.qmax)
    return out.reshape(rows, cols)


class AffineQuantizer(nn.Module):
    """Parametrization ``weight -> w_hat`` for one ``AffineConfig`` with learnable scales.

    ``scale = base_scale * exp(log_gain)``: ``base_scale`` (buffer) is the PTQ scale
    ``compute_scales(w0)``, ``log_gain`` (parameter, zeros at init) is what trains. At init
    ``exp(0) = 1`` exactly, so the first forward is exactly the PTQ model. ``bypass`` (False)
    passes the latent weight through unquantized (the monitor's per-section sensitivity).
    """

    bypass = False

    def __init__(self, weight: torch.Tensor, cfg: AffineConfig, learn_scale: bool = True):
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"affine fake-quant needs a 2-D weight, got {tuple(weight.shape)}")
        self.cfg = cfg
        s0 = compute_scales(weight.detach().float().cpu().numpy(), cfg).astype(np.float32)
        self.register_buffer("base_scale", torch.from_numpy(s0).to(weight.device))
        self.log_gain = nn.Parameter(torch.zeros(s0.shape, device=weight.device),
                                     requires_grad=learn_scale)
        self.column_gain = None   # equalize.ColumnGain: forward is Q(w diag(c)) diag(1/c)

    def effective_scale(self) -> torch.Tensor:
        """The float32 scales the forward uses ([out] or [out, in/block]): what gets exported."""
        s = self.base_scale * torch.exp(self.log_gain)
        if self.cfg.granularity is Granularity.BLOCK:
            return _RoundF16.apply(torch.clamp(s, F16_TINY, F16_MAX))
        return torch.clamp(s, min=F32_TINY)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.dtype != torch.float32:
            raise TypeError(f"QAT needs float32 weights (got {weight.dtype}): the grid "
                            "w_hat = code * scale is only exact in float32")
        if self.bypass:
            return weight
        if self.column_gain is not None:
            c = self.column_gain()
            return fake_quant_affine(weight * c, self.effective_scale(), self.cfg) / c
        return fake_quant_affine(weight, self.effective_scale(), self.cfg)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"int{c.bits} {c.granularity.value}" + (f" {c.block_size}" if c.block_size else "")


class DictionaryFakeQuantizer(nn.Module):
    """Parametrization ``weight -> codebook[group, code]`` for one ``DictionaryConfig``."""

    bypass = False

    def __init__(self, weight: torch.Tensor, cfg: DictionaryConfig):
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"dictionary fake-quant needs a 2-D weight, got {tuple(weight.shape)}")
        self.cfg = cfg
        rows, _ = weight.shape
        self.groups = math.ceil(rows / cfg.rows_per_codebook)
        k = cfg.codebook_size
        self.register_buffer("codebooks", torch.zeros(self.groups, k, device=weight.device))
        self.register_buffer("thresholds", torch.zeros(self.groups, k - 1, device=weight.device))
        self.refresh(weight)

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor) -> None:
        """Refit the codebooks with the NumPy k-means on the current latent weight."""
        w = weight.detach().float().cpu().numpy()
        books = DictionaryQuantizer(self.cfg).quantize(w).codebooks
        self.set_codebooks(books)

    @torch.no_grad()
    def set_codebooks(self, books: np.ndarray) -> None:
        books = np.ascontiguousarray(books, dtype=np.float32)
        self.codebooks.copy_(torch.from_numpy(books))
        self.thresholds.copy_(torch.from_numpy(_thresholds32(books)))

    def _grouped(self, w: torch.Tensor):
        """[groups, n] views; a shorter last group is handled separately (returned as tail)."""
        r = self.cfg.rows_per_codebook
        full = w.shape[0] // r
        head = w[:full * r].reshape(full, r * w.shape[1])
        tail = w[full * r:].reshape(1, -1) if full * r < w.shape[0] else None
        return full, head, tail

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.dtype != torch.float32:
            raise TypeError(f"QAT needs float32 weights (got {weight.dtype})")
        if self.bypass:
            return weight
        w = weight
        full, head, tail = self._grouped(w)
        out = _DictFQ.apply(head, self.thresholds[:full], self.codebooks[:full]).reshape(-1, w.shape[1])
        if tail is not None and full == 0:
            return _DictFQ.apply(tail, self.thresholds, self.codebooks).reshape(w.shape)
        if tail is not None:
            t = _DictFQ.apply(tail, self.thresholds[full:], self.codebooks[full:])
            out = torch.cat([out, t.reshape(-1, w.shape[1])])
        return out

    def extra_repr(self) -> str:
        c = self.cfg
        return f"dict {c.index_bits}-bit x{c.codebook_size} / {c.rows_per_codebook} rows"


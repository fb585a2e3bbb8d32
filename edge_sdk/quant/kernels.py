"""Affine (symmetric, zero point 0) quantization kernels. NumPy only.

The fixed formulas (the QAT toolkit replicates them in torch bit for bit; LiteRT dequantizes
the same way):

    codes = clip(rint(float32(w) / float32(s)), qmin, qmax)    # rint = round half to even
    w_hat = float32(codes) * float32(s)                       # float16 block scales upcast first

with ``s`` broadcast per output row (channel) or per (row, block of ``block_size`` inputs).
Code ranges (``qmin``/``qmax``), the LiteRT bit packing and byte sizes are the format's
(``quant.formats``). Fresh (PTQ) scales are ``max|w| / qmax`` per row/block, 1 where a row/block
is all zeros; given (QAT) scales are used as they are, never recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import RecipeError
from .config import AffineConfig, Granularity
from .formats import full_range

F16_TINY = np.float16(2.0 ** -24)
F16_MAX = np.float16(65504.0)


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """Affine codes (unpacked int8, weight shape) + scales ([rows] float32 for channel,
    [rows, cols/block] float16 for block) + max|w - dequantize| (0.0 when w sits on the grid)."""

    codes: np.ndarray
    scales: np.ndarray
    config: AffineConfig
    error: float = 0.0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @cached_property
    def packed(self) -> np.ndarray:
        """The codes as LiteRT stores them (uint8, the format's packing)."""
        return self.config.format.pack(self.codes)


def _as_f32_2d(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise RecipeError(f"affine quantization needs a 2-D [out, in] weight, got shape {w.shape}")
    return w.astype(np.float32, copy=False)


def _check_blocks(shape, cfg: AffineConfig) -> int:
    if cfg.granularity is Granularity.CHANNEL:
        return 0
    if shape[1] % cfg.block_size:
        raise RecipeError(f"input size {shape[1]} is not a multiple of block_size "
                          f"{cfg.block_size}", fix="use a block_size dividing it, or 'channel'")
    return shape[1] // cfg.block_size


def compute_scales(w: np.ndarray, cfg: AffineConfig) -> np.ndarray:
    """PTQ scales ``max|w| / qmax`` per row ([out] float32) or per block ([out, nb] float16)."""
    w = _as_f32_2d(w)
    nb = _check_blocks(w.shape, cfg)
    qmax = np.float32(cfg.qmax)
    if nb == 0:
        amax = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0], np.float32)
        s = amax / qmax
        return np.where(amax > 0, s, np.float32(1.0)).astype(np.float32)
    amax = np.abs(w.reshape(w.shape[0], nb, cfg.block_size)).max(axis=2)
    s = np.clip(amax / qmax, 0, F16_MAX).astype(np.float16)
    s = np.where((s == 0) & (amax > 0), F16_TINY, s)
    return np.where(amax > 0, s, np.float16(1.0)).astype(np.float16)


def _check_scales(scales, shape, cfg: AffineConfig, nb: int) -> np.ndarray:
    s = np.asarray(scales)
    want = (shape[0],) if nb == 0 else (shape[0], nb)
    if nb == 0 and s.shape == (shape[0], 1):
        s = s.reshape(shape[0])
    if s.shape != want:
        what = f"{cfg.bits}-bit " + ("per-channel" if nb == 0 else f"block-{cfg.block_size}")
        raise RecipeError(f"scales have shape {tuple(s.shape)}, expected {want} for {what} weights",
                          fix="use a recipe whose granularity matches the scales the checkpoint carries")
    s32 = s.astype(np.float32)
    if not (np.all(np.isfinite(s32)) and np.all(s32 > 0)):
        raise RecipeError("given scales must be finite and > 0")
    if nb == 0:
        if not np.array_equal(s32.astype(s.dtype), s):
            raise RecipeError("given scales are not representable in float32")
        return s32
    s16 = s32.astype(np.float16)
    if not np.array_equal(s16.astype(np.float32), s32):
        raise RecipeError("given block scales are not exactly representable in float16 "
                          "(LiteRT stores blockwise scales as FLOAT16)",
                          fix="train/export block scales in float16, or use 'channel'")
    return s16


def _expand(scales: np.ndarray, shape, cfg: AffineConfig) -> np.ndarray:
    """Scales as float32, broadcastable over the [out, nb, block] or [out, in] view."""
    s = scales.astype(np.float32)
    return s[:, None] if cfg.granularity is Granularity.CHANNEL else s[:, :, None]


def _view(a: np.ndarray, cfg: AffineConfig) -> np.ndarray:
    if cfg.granularity is Granularity.CHANNEL:
        return a
    return a.reshape(a.shape[0], -1, cfg.block_size)


def quantize(w: np.ndarray, cfg: AffineConfig, scales: np.ndarray | None = None
             ) -> QuantizedTensor:
    """Quantize a [out, in] weight; given ``scales`` are used as-is (QAT), else computed."""
    w = _as_f32_2d(w)
    nb = _check_blocks(w.shape, cfg)
    s = compute_scales(w, cfg) if scales is None else _check_scales(scales, w.shape, cfg, nb)
    qmin, qmax = cfg.qmin, cfg.qmax
    se = _expand(s, w.shape, cfg)
    codes = np.clip(np.rint(_view(w, cfg) / se), qmin, qmax).astype(np.int8).reshape(w.shape)
    qt = QuantizedTensor(codes, s, cfg)
    err = float(np.max(np.abs(w - dequantize(qt)))) if w.size else 0.0
    return QuantizedTensor(codes, s, cfg, err)


def from_codes(codes: np.ndarray, scales: np.ndarray, cfg: AffineConfig, *,
               tensor: str | None = None, path=None) -> QuantizedTensor:
    """Wrap existing codes + scales (e.g. from compressed-tensors) after checking them. Codes
    may span the full two's-complement range (``full_range``), not only ``cfg.qmin..qmax``."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise RecipeError(f"codes must be a 2-D integer array, got {codes.dtype} {codes.shape}",
                          tensor=tensor, path=path)
    lo, hi = full_range(cfg.bits)
    if codes.size and (codes.min() < lo or codes.max() > hi):
        raise RecipeError(f"codes span [{codes.min()}, {codes.max()}], outside the "
                          f"{cfg.bits}-bit range [{lo}, {hi}]", tensor=tensor, path=path,
                          fix="the checkpoint's num_bits does not match its stored codes; "
                              "re-export it")
    nb = _check_blocks(codes.shape, cfg)
    return QuantizedTensor(codes.astype(np.int8), _check_scales(scales, codes.shape, cfg, nb), cfg)


def dequantize(qt: QuantizedTensor) -> np.ndarray:
    """``float32(codes) * float32(scales)`` broadcast per row / block; float32 [out, in]."""
    cfg = qt.config
    c = _view(qt.codes, cfg).astype(np.float32)
    return (c * _expand(qt.scales, qt.shape, cfg)).reshape(qt.shape)

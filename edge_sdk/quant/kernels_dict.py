"""Dictionary (palettized) coding: per group of rows, 1-D k-means codebooks. NumPy only.

The algorithm (exactly; ``tests/test_quant_kernels.py`` holds a slow per-group reference):
group g = rows [g·R, (g+1)·R) flattened to n values x (float32), K = codebook_size.
  xs = sort(x); S = [0, cumsum(float64(xs))]
  init: c_j = xs[((2j+1)·n) // (2K)]                       (quantiles, no RNG)
  repeat ``iterations`` times:
      b_j = (float64(c_j) + float64(c_{j+1})) / 2           (j < K-1)
      hi_j = #{x <= b_j}; clusters are [hi_{j-1}, hi_j) of xs (hi_{-1} = 0, hi_{K-1} = n)
      c_j = float32((S[hi_j] - S[hi_{j-1}]) / count_j) if count_j > 0 else c_j (kept)
      c = sort(c)
  codebook = c (float32, ascending); code(x) = #{j : x > b_j}   (nearest entry, ties → lower)
Vectorised over all groups of a chunk at once (batched binary searches); chunks bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import RecipeError
from .config import DictionaryConfig

CHUNK_VALUES = 1 << 24  # values per chunk: ~64 MiB float32 + 128 MiB float64 prefix sums


@dataclass(frozen=True, eq=False)
class DictionaryTensor:
    """Unsigned codes [rows, cols] (uint8) + codebooks [n_groups, codebook_size] (float32)."""

    codes: np.ndarray
    codebooks: np.ndarray
    config: DictionaryConfig
    error: float = 0.0   # max |w - dequantize|
    rmse: float = 0.0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @cached_property
    def packed(self) -> np.ndarray:
        """Codes packed like LiteRT int4/int2 (low bits first); the bit patterns are the
        unsigned indices (an index >= 8 reads as index-16 if the tensor is typed INT4)."""
        return self.config.format.pack(self.codes)


def _thresholds32(c: np.ndarray) -> np.ndarray:
    """float32 t_j with (x > t_j) == (x > b_j) for every float32 x, b_j the f64 midpoints."""
    b = (c[:, :-1].astype(np.float64) + c[:, 1:].astype(np.float64)) / 2
    t = b.astype(np.float32)
    above = t.astype(np.float64) > b
    return np.where(above, np.nextafter(t, np.float32(-np.inf)), t)


def codebook_thresholds(codebooks: np.ndarray) -> np.ndarray:
    """Per-group float32 decision thresholds [G, K-1] of ascending codebooks [G, K]:
    ``code(x) = #{j : x > t_j}`` is the nearest entry, ties to the lower one."""
    return _thresholds32(np.asarray(codebooks, dtype=np.float32))


def _count_le(xs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Batched searchsorted(side='right'): #{xs[g] <= t[g, j]} for sorted rows xs [G, n]."""
    g, n = xs.shape
    lo = np.zeros(t.shape, np.int64)
    hi = np.full(t.shape, n, np.int64)
    rows = np.arange(g)[:, None]
    for _ in range(max(1, int(n).bit_length())):
        active = lo < hi
        mid = np.minimum((lo + hi) // 2, n - 1)
        le = xs[rows, mid] <= t
        lo = np.where(active & le, mid + 1, lo)
        hi = np.where(active & ~le, mid, hi)
    return lo


def _assign(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """code = #{j : x > t_j} per group; x [G, n], t [G, K-1] ascending."""
    codes = np.zeros(x.shape, np.uint8)
    hit = np.empty(x.shape, bool)
    for j in range(t.shape[1]):
        np.greater(x, t[:, j:j + 1], out=hit)
        codes += hit
    return codes


def kmeans_groups(x: np.ndarray, k: int, iterations: int):
    """1-D k-means on each row of x [G, n] float32 → (codebooks [G, k] float32, codes [G, n]
    uint8, max |x - codebook[code]|, sum of squared errors), the errors from the sorted rows."""
    g, n = x.shape
    xs = np.sort(x, axis=1)
    s = np.empty((g, n + 1), np.float64)
    s[:, 0], s[:, 1:] = 0.0, xs
    np.cumsum(s[:, 1:], axis=1, out=s[:, 1:])
    c = xs[:, (np.arange(k) * 2 + 1) * n // (2 * k)]
    rows = np.arange(g)[:, None]

    def partition(c):
        hi = _count_le(xs, _thresholds32(c))
        bounds = np.concatenate([np.zeros((g, 1), np.int64), hi, np.full((g, 1), n)], axis=1)
        return bounds, np.diff(bounds, axis=1), s[rows, bounds[:, 1:]] - s[rows, bounds[:, :-1]]

    for _ in range(iterations):
        bounds, counts, sums = partition(c)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (sums / counts).astype(np.float32)
        c = np.sort(np.where(counts > 0, mean, c), axis=1)
    bounds, counts, sums = partition(c)
    lo, last = bounds[:, :-1], np.maximum(bounds[:, 1:] - 1, 0)
    dev = np.maximum(c - xs[rows, np.minimum(lo, n - 1)], xs[rows, last] - c)
    max_err = float(np.where(counts > 0, dev, 0).max())
    flat = np.concatenate([np.square(xs, dtype=np.float64).reshape(-1), [0.0]])
    sq = np.add.reduceat(flat, (lo + rows * n).reshape(-1)).reshape(g, k)
    c64 = c.astype(np.float64)
    sse = float(np.where(counts > 0, sq - 2 * c64 * sums + counts * c64 * c64, 0).sum())
    del xs, s, flat
    return c, _assign(x, _thresholds32(c)), max_err, max(sse, 0.0)


class DictionaryQuantizer:
    """Palettize a 2-D table with ``DictionaryConfig`` (see the module docstring)."""

    def __init__(self, config: DictionaryConfig, chunk_values: int = CHUNK_VALUES):
        self.config = config
        self.chunk_values = chunk_values

    def quantize(self, w: np.ndarray, codebooks: np.ndarray | None = None) -> DictionaryTensor:
        """Fit codebooks by k-means, or use GIVEN codebooks [n_groups, codebook_size] (QAT;
        float32, ascending per row) as they are and only assign codes."""
        w = np.asarray(w)
        if w.ndim != 2 or w.size == 0:
            raise RecipeError(f"dictionary coding needs a non-empty 2-D table, got {w.shape}")
        cfg = self.config
        rows, cols = w.shape
        r = min(cfg.rows_per_codebook, rows)
        n_groups = -(-rows // cfg.rows_per_codebook)
        codes = np.empty((rows, cols), np.uint8)
        books = np.empty((n_groups, cfg.codebook_size), np.float32)
        err, sq = 0.0, 0.0
        if codebooks is not None:
            books = self._check_books(codebooks, n_groups)
        per_chunk = max(1, self.chunk_values // (r * cols))
        full = rows // r
        spans = [(g0, min(g0 + per_chunk, full)) for g0 in range(0, full, per_chunk)]
        if full * r < rows:
            spans.append((full, full + 1))  # the last, shorter group
        for g0, g1 in spans:
            r0, r1 = g0 * r, min(g1 * r, rows)
            x = w[r0:r1].astype(np.float32).reshape(g1 - g0, -1)
            if codebooks is None:
                c, q, e, se = kmeans_groups(x, cfg.codebook_size, cfg.iterations)
                books[g0:g1] = c
            else:
                c = books[g0:g1]
                q = _assign(x, _thresholds32(c))
                d = np.take_along_axis(c, q.astype(np.intp), axis=1) - x
                e, se = float(np.abs(d).max()), float(np.square(d, dtype=np.float64).sum())
            codes[r0:r1] = q.reshape(r1 - r0, cols)
            err, sq = max(err, e), sq + se
        return DictionaryTensor(codes, books, cfg, err, float(np.sqrt(sq / w.size)))

    def _check_books(self, codebooks, n_groups: int) -> np.ndarray:
        b = np.asarray(codebooks)
        want = (n_groups, self.config.codebook_size)
        if b.shape != want:
            raise RecipeError(f"codebooks have shape {b.shape}, expected {want}")
        b32 = b.astype(np.float32)
        if not np.array_equal(b32, b) or not np.all(np.isfinite(b32)):
            raise RecipeError("given codebooks must be finite float32 values")
        if np.any(np.diff(b32, axis=1) < 0):
            raise RecipeError("given codebooks are not sorted ascending per group",
                              fix="sort each codebook (codes index the sorted entries)")
        return np.ascontiguousarray(b32)

    @staticmethod
    def dequantize(dt: DictionaryTensor) -> np.ndarray:
        """``codebooks[row // rows_per_codebook, code]`` as float32 [rows, cols]."""
        group = np.arange(dt.shape[0]) // dt.config.rows_per_codebook
        return dt.codebooks[group[:, None], dt.codes]

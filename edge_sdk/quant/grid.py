"""Recover exact QAT scales from weights stored dequantized on their quantization grid.

A QAT checkpoint may store ``w = code × scale`` instead of codes + scales. Per row (channel)
or per block, the largest |w| is ``k·s`` for some code magnitude k; we try k = qmax, then
|qmin|, then the other magnitudes from large to small, take ``s0 = max|w| / k`` and the best
of s0 ± 2 float32 ulps, and accept when every element is an in-range integer multiple of it
within the storage dtype's rounding:  |w - c·s| <= 2·u·|c|·s  (u: 2^-24 float32, 2^-11
float16, 2^-8 bfloat16).

float32 storage: w = fl32(c·s) exactly, the true s is within 2 ulps of s0, so recovery is
exact and ``max_error`` is exactly 0.0 (candidates are ranked by how many elements they
reproduce exactly, so one corrupted element cannot pull the scale off by an ulp).
bfloat16 storage: c·s was rounded to 8 significant bits, so the true float32 scale is not
recoverable; codes are (for 2/4 bits: |c|·2^-8 << 1/2) and the scale is the best fit, leaving
``max_error`` at the bf16 rounding level (~2^-8·|w|). For 8-bit codes in bf16 the tolerance
reaches s/2, so the check cannot tell grid from noise: ``conclusive`` is False.
Rows that fit no grid keep the candidate that fit most of their elements (codes clipped) and
count in ``off_grid_rows``; their misfit elements in ``off_grid_fraction``.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ..errors import CheckpointError
from .config import AffineConfig, Granularity

SAMPLE = 64  # columns checked before a candidate scale is tried on a whole row
_UNIT = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float16): 2.0 ** -11,
         np.dtype(ml_dtypes.bfloat16): 2.0 ** -8, np.dtype(np.float64): 2.0 ** -24}


@dataclass(frozen=True, eq=False)
class GridRecovery:
    scales: np.ndarray          # float32 [out] (channel) or [out, in/block] (block)
    codes: np.ndarray           # int8 [out, in]
    max_error: float            # max |w - codes·scales| (0.0: exact)
    off_grid_fraction: float    # elements not on their row's grid
    off_grid_rows: int          # rows/blocks that fit no grid (fallback scale)
    config: AffineConfig
    storage_dtype: str
    conclusive: bool            # False when the storage dtype cannot resolve the grid

    @property
    def on_grid(self) -> bool:
        return self.off_grid_rows == 0 and self.off_grid_fraction == 0.0

    @property
    def warning(self) -> str | None:
        """A one-line explanation when the result should not be trusted as QAT scales."""
        c = self.config
        what = f"int{c.bits} {c.granularity}" + (f" {c.block_size}" if c.block_size else "")
        if not self.on_grid:
            return (f"weights are not on an {what} grid: {self.off_grid_fraction:.2%} of "
                    f"elements and {self.off_grid_rows} of {self.scales.size} scale groups are "
                    f"off-grid, max re-rounding error {self.max_error:.3g} (not a QAT "
                    "checkpoint for this scheme, or a different scheme)")
        if not self.conclusive:
            return (f"{self.storage_dtype} storage cannot resolve an {what} grid (tolerance "
                    "reaches half a step); supply the scales (sidecar) instead")
        return None

    def summary(self) -> str:
        return self.warning or (f"on grid: {self.scales.size} scales recovered, max "
                                f"re-rounding error {self.max_error:.3g}")


def _unit(dtype) -> float:
    try:
        return _UNIT[np.dtype(dtype)]
    except KeyError:
        raise CheckpointError(f"grid recovery needs float weights, got {dtype}") from None


def _score(x, c, s):
    """(exactly reproduced elements, max |x - c·s|) per row."""
    y = c * s[:, None]
    return (x == y).sum(axis=1), np.abs(x - y).max(axis=1)


def _fit(x, m, k, qmin, qmax, u, refine: bool):
    """Rows x [r, n] with max|x| = m, code magnitude k → (s [r], codes [r, n] float) + _check.
    ``refine``: where s0 = m/k does not reproduce every element exactly, also try s0 ± 1, 2
    float32 ulps; the best has the most exact elements, then the smallest max error."""
    s = (m / np.float32(k)).astype(np.float32)
    c = np.rint(x / s[:, None])
    if refine:
        exact, err = _score(x, c, s)
        todo = np.flatnonzero(exact < x.shape[1])
        xt, ct, lo, hi = x[todo], c[todo], s[todo], s[todo]
        ex, er = exact[todo], err[todo]
        for _ in range(2 if todo.size else 0):
            lo, hi = np.nextafter(lo, np.float32(0)), np.nextafter(hi, np.float32(np.inf))
            for cand in (lo, hi):
                e_x, e_r = _score(xt, ct, cand)
                better = (e_x > ex) | ((e_x == ex) & (e_r < er))
                ex, er = np.where(better, e_x, ex), np.where(better, e_r, er)
                s[todo[better]] = cand[better]
    return (s, c) + _check(x, c, s, qmin, qmax, u)


def _check(x, c, s, qmin, qmax, u):
    """(all on grid [r], on-grid fraction [r], off-grid count [r], max |x - c·s| [r])."""
    d = np.abs(x - c * s[:, None])
    tol = np.float32(2 * u) * np.abs(c) * s[:, None] + np.float32(2.0 ** -149)
    n_good = ((d <= tol) & (c >= qmin) & (c <= qmax)).sum(axis=1)
    n = x.shape[1]
    return n_good == n, n_good / max(n, 1), n - n_good, d.max(axis=1) if n else d.sum(axis=1)


def _fit_misfits(rows, m, off, best_k, qmin, qmax, u, scales, codes, row_err) -> int:
    """Rows on no grid (``off``): each takes its best-fitting grid ``best_k`` with codes clipped to
    the range; fills ``scales``/``codes``/``row_err`` in place and returns how many values stay off."""
    n_off = 0
    for k in np.unique(best_k[off]):
        sub = off[best_k[off] == k]
        s, c, _, _, _, _ = _fit(rows[sub], m[sub], int(k), qmin, qmax, u, refine=True)
        c = np.clip(c, qmin, qmax)
        _, _, bad, e = _check(rows[sub], c, s, qmin, qmax, u)
        scales[sub], codes[sub], row_err[sub], n_off = s, c, e, n_off + int(bad.sum())
    return n_off


def recover_grid_scales(w: np.ndarray, bits: int, granularity: str = "channel",
                        block_size: int | None = None, *, require: bool = False
                        ) -> GridRecovery:
    """Recover per-channel / per-block scales of ``w`` [out, in] (see the module docstring).
    ``require=True`` raises ``CheckpointError`` instead of returning an off-grid result."""
    cfg = AffineConfig(bits=bits, granularity=granularity, block_size=block_size)
    w = np.asarray(w)
    if w.ndim != 2:
        raise CheckpointError(f"grid recovery needs a 2-D weight, got shape {w.shape}")
    u = _unit(w.dtype)
    w32 = w.astype(np.float32)
    out, n_in = w32.shape
    block = cfg.granularity is Granularity.BLOCK
    if block and n_in % block_size:
        raise CheckpointError(f"{n_in} inputs not a multiple of block_size {block_size}")
    rows = w32.reshape(-1, block_size) if block else w32
    r, n = rows.shape
    qmin, qmax = cfg.qmin, cfg.qmax
    m = np.abs(rows).max(axis=1) if n else np.zeros(r, np.float32)
    scales = np.ones(r, np.float32)
    codes = np.zeros((r, n), np.int8)
    row_err = np.zeros(r, np.float32)
    done = m == 0
    best_k, best_frac = np.full(r, qmax), np.full(r, -1.0)  # for the diagnostics of misfits

    def note(idx, k, frac):
        better = frac > best_frac[idx]
        best_k[idx[better]], best_frac[idx[better]] = k, frac[better]

    ks = [qmax, -qmin] + [k for k in range(max(qmax, -qmin), 0, -1) if k not in (qmax, -qmin)]
    for k in dict.fromkeys(ks):
        idx = np.flatnonzero(~done)
        if idx.size == 0:
            break
        if n > SAMPLE:  # cheap rejection on a few columns (tolerance doubled: unrefined scale)
            _, _, ok, frac, _, _ = _fit(rows[idx, :SAMPLE], m[idx], k, qmin, qmax, 2 * u,
                                        refine=False)
            note(idx, k, frac)
            idx = idx[ok]
        if idx.size == 0:
            continue
        s, c, ok, frac, _, e = _fit(rows[idx], m[idx], k, qmin, qmax, u, refine=True)
        note(idx, k, frac)
        idx = idx[ok]
        scales[idx], codes[idx], row_err[idx], done[idx] = s[ok], c[ok], e[ok], True
    off = np.flatnonzero(~done)
    n_off = _fit_misfits(rows, m, off, best_k, qmin, qmax, u, scales, codes, row_err)
    result = GridRecovery(
        scales=scales.reshape(out, -1) if block else scales,
        codes=codes.reshape(out, n_in),
        max_error=float(row_err.max()) if r else 0.0,
        off_grid_fraction=n_off / rows.size if rows.size else 0.0,
        off_grid_rows=int(off.size), config=cfg,
        storage_dtype=str(w.dtype), conclusive=2 * u * max(qmax, -qmin) < 0.25)
    if require and result.warning:
        raise CheckpointError(result.warning, fix="supply QAT scales (compressed-tensors "
                              "weight_scale or a qat_scales.safetensors sidecar)")
    return result

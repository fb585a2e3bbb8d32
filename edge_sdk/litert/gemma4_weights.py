"""Planned tensors as streamed graph constants: ``WeightBank``.

The graph is built first with every size taken from the ``QuantPlan``; tensor data is produced by
the writer's buffer producers, which call the Preparer one tensor at a time (the checkpoint is
never held). One thing must be known before the flatbuffer is written: per-channel scales live
in the flatbuffer's QuantizationParameters. So per-channel tensors are prepared while the graph is
built (only the scales, [rows] float32, and the tensor's record are kept); when their codes are
written, the stored rows are quantized with exactly those scales (``quantize(w, cfg, scales)``,
the codes the Preparer gives for them: its scale recovery is not run twice). Block scales
(float16) and codebooks are buffers of their own and are produced with the codes.

Kinds of weights:
- ``fc(g, name)``: a FULLY_CONNECTED weight: float32, INT8/INT4/INT2 per output channel, or INT4
  blockwise with FLOAT16 scales.
- ``lookup(g, name, ids)``: rows of an embedding table as float32 [T, cols]: GATHER of a float
  table; EMBEDDING_LOOKUP of a per-row scaled INT8/INT4/INT2 table (exact); or a dictionary-coded
  table: GATHER(codes) → CAST → + group offset → GATHER(flattened codebooks), so only the
  looked-up rows (and their codebooks) are touched.
- ``vector(g, name)``: a float tensor (norm weights, layer scalars).

Big tensors (over ``gemma4_rows.BLOCK_F32_BYTES`` as float32, e.g. real-size embedding tables)
are prepared and written in blocks of rows (``RowSlicer``), so conversion memory stays bounded;
the bytes are the same as preparing them whole. A side buffer (codebooks, block scales) of such a
tensor reuses the blocks its codes' pass computed when the codes are written first.

Every constant is named by its canonical tensor name, so a reader finds each planned tensor's
bytes in the file. ``records`` collects, per tensor, the scale source and re-rounding error.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import InputError, RecipeError
from ..gemma4.names import tensor_of
from ..quant.apply import Prepared
from ..quant.config import DictionaryConfig
from ..quant.formats import format_of, full_range
from ..quant.kernels import QuantizedTensor, quantize
from ..quant.plan import QuantPlan, TensorPlan
from .dtypes import Quantization, check_code_range, tensor_nbytes, to_bytes
from .gemma4_rows import RowSlicer
from .graph import GraphBuilder, Tensor
from .writer import BufferRef

PrepareFn = Callable[[TensorPlan], Prepared]


class WeightBank:
    """Registers planned tensors as lazy constants of graphs (see the module docstring).

    ``on_data(name, nbytes)`` is called each time a tensor's main data buffer is produced
    (progress reporting). ``rows`` (a ``gemma4_rows.RowSlicer``) lets big tensors be prepared and
    written in blocks of rows; without it every tensor is prepared whole."""

    def __init__(self, plan: QuantPlan, prepare: PrepareFn,
                 on_data: Callable[[str, int], None] | None = None, rows: RowSlicer | None = None):
        self.plan = plan
        self.tensors = plan.by_name()
        self._prepare = prepare
        self._rows = rows
        self._last: tuple[str, Prepared] | None = None
        self._scales: dict[str, np.ndarray] = {}
        self._consts: dict[tuple[int, str], Tensor] = {}
        self._sides: dict[str, list[tuple[str, Callable]]] = {}   # tensor -> side buffers
        self._side_cache: dict[str, dict[int, bytes]] = {}        # side buffer -> block bytes
        self._low: dict[str, bool] = {}                           # holds code -2^(bits-1)
        self.records: dict[str, dict] = {}
        self.requires_xnnpack: dict[str, str] = {}                # tensor -> why builtin is wrong
        self.on_data = on_data

    # ---- preparing ------------------------------------------------------------------
    def plan_of(self, name: str) -> TensorPlan:
        tp = self.tensors.get(name)
        if tp is None:
            raise InputError(f"the plan has no tensor {name!r}")
        return tp

    def blocks(self, name: str) -> list[tuple[int, int]] | None:
        return None if self._rows is None else self._rows.blocks(self.plan_of(name))

    def prepared(self, name: str) -> Prepared:
        """The whole prepared tensor (the last one is kept: codes and scales/codebooks are
        buffers produced one after the other)."""
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        self._last = None
        p = self._prepare(self.plan_of(name))
        self._last = (name, p)
        self._check_scales(name, p, 0)
        enc = self.records.get(name, {}).get("encoding")   # chosen in the graph pass
        self.records[name] = {"scale_source": p.scale_source, "error": float(p.error),
                              **({"note": p.note} if p.note else {}),
                              **({"encoding": enc} if enc else {})}
        return p

    def _block(self, name: str, r0: int, r1: int) -> Prepared:
        """Rows [r0, r1) prepared; also fills the tensor's side buffers' block caches."""
        p = self._rows.prepare_rows(self.plan_of(name), r0, r1)
        self._check_scales(name, p, r0)
        rec = self.records.get(name) if r0 else None
        if rec is None:
            self.records[name] = {"scale_source": p.scale_source, "error": float(p.error)}
        else:
            rec["error"] = max(rec["error"], float(p.error))
            if p.scale_source not in rec["scale_source"].split("+"):
                rec["scale_source"] += "+" + p.scale_source
        if p.note and "note" not in self.records[name]:
            self.records[name]["note"] = f"{p.note} [rows {r0}..{r1 - 1}, the first noted block]"
        for cname, fn in self._sides.get(name, ()):
            self._side_cache.setdefault(cname, {})[r0] = fn(p)
        return p

    def _check_scales(self, name: str, p: Prepared, r0: int) -> None:
        v = p.value
        if isinstance(v, QuantizedTensor) and name in self._scales:
            want = self._scales[name][r0:r0 + v.scales.shape[0]]
            if not np.array_equal(want, v.scales):
                raise InputError("scales changed between the graph pass and the data pass "
                                 "(non-deterministic preparation)", tensor=name)

    def _channel_scales(self, name: str) -> np.ndarray:
        """Per-channel scales, from the Preparer (whole or in row blocks), before the graph is
        written; the tensor's record (scale source, re-rounding error) comes from this pass."""
        if name not in self._scales:
            twin = tensor_of(name)   # the tied head: the embedding's tensor
            if twin != name and twin in self._scales and self.plan_of(twin).config == self.plan_of(name).config:
                self._scales[name], self.records[name] = self._scales[twin], dict(self.records[twin])
                self._low[name] = self._low.get(twin, False)
                return self._scales[name]
            blocks = self.blocks(name)
            parts = ([self.prepared(name).value] if blocks is None else
                     [self._block(name, r0, r1).value for r0, r1 in blocks])
            if not all(isinstance(v, QuantizedTensor) for v in parts):
                raise InputError("expected an affine quantized tensor", tensor=name)
            self._scales[name] = np.concatenate([np.asarray(v.scales, np.float32) for v in parts])
            lo = full_range(self.plan_of(name).config.bits)[0]
            self._low[name] = any(bool((v.codes == lo).any()) for v in parts)
            self._last = None  # drop the codes until the data pass
        return self._scales[name]

    def _channel_codes(self, g: GraphBuilder, name: str, tp: TensorPlan, cfg, dt: str,
                       full: bool = False) -> BufferRef:
        """The codes buffer of a per-channel tensor. With a row slicer, the data pass quantizes the
        stored rows with the scales the first pass took (``quantize(w, cfg, scales)``: the codes
        the Preparer gives for those scales), instead of recovering the scales a second time.
        ``full``: codes may hold -2^(bits-1) (an encoding chosen for it, ``_full_range_fc``)."""
        def check(c):
            if not full:
                check_code_range(c, cfg.bits, tensor=name)
        if self._rows is None or not self._rows.can_slice(tp):
            return self._buffer(g, name, name, tp.shape, dt, lambda p: p.value.codes, main=True, check=check)
        blocks = self.blocks(name) or [(0, tp.shape[0])]

        def produce():
            scales = self._scales[name]
            for r0, r1 in blocks:
                codes = quantize(self._rows.read_rows(tp, r0, r1), cfg, scales=scales[r0:r1]).codes
                check(codes)
                yield to_bytes(codes, dt)
            if self.on_data is not None:
                self.on_data(name, tp.data_bytes)
        return g.writer.add_buffer(tensor_nbytes(tp.shape, dt), name=name, producer=produce)

    def _buffer(self, g: GraphBuilder, name: str, cname: str, shape, dtype: str,
                fn: Callable[[Prepared], np.ndarray], *, main: bool,
                check: Callable[[np.ndarray], None] | None = None) -> BufferRef:
        """Register the buffer of constant ``cname`` (``fn`` maps the prepared tensor, or one
        block of its rows, to the array stored). Side buffers of a tensor prepared in blocks
        reuse what the main buffer's pass computed when it ran first."""
        shape, blocks = tuple(shape), self.blocks(name)
        if blocks is not None and not main:
            self._sides.setdefault(name, []).append((cname, lambda p: to_bytes(np.asarray(fn(p)), dtype)))

        def whole():
            arr = np.asarray(fn(self.prepared(name)))
            if arr.shape != shape:
                raise InputError(f"produced shape {list(arr.shape)}, planned {list(shape)}", tensor=cname)
            if check is not None:
                check(arr)
            if main and self.on_data is not None:
                self.on_data(name, self.plan_of(name).data_bytes)
            return to_bytes(arr, dtype)

        def in_blocks():
            cache = self._side_cache.pop(cname, {})
            for r0, r1 in blocks:
                if not main and r0 in cache:
                    yield cache.pop(r0)
                    continue
                arr = np.asarray(fn(self._block(name, r0, r1)))
                self._side_cache.get(cname, {}).pop(r0, None)
                if check is not None:
                    check(arr)
                yield to_bytes(arr, dtype)
            if main and self.on_data is not None:
                self.on_data(name, self.plan_of(name).data_bytes)

        return g.writer.add_buffer(tensor_nbytes(shape, dtype), name=cname,
                                   producer=whole if blocks is None else in_blocks)

    # ---- constants ------------------------------------------------------------------
    def _cached(self, g: GraphBuilder, name: str, make: Callable[[], Tensor]) -> Tensor:
        key = (id(g.writer), name)
        t = self._consts.get(key)
        if t is None:
            t = self._consts[key] = make()
        return g.share(t)

    def vector(self, g: GraphBuilder, name: str) -> Tensor:
        tp = self.plan_of(name)
        if tp.config is not None:
            raise RecipeError(f"'{tp.role}' must stay float here", tensor=name)
        return self._cached(g, name, lambda: self._float(g, name, tp))

    def _float(self, g: GraphBuilder, name: str, tp: TensorPlan) -> Tensor:
        ref = self._buffer(g, name, name, tp.shape, "float32",
                           lambda p: np.asarray(p.value, np.float32), main=True)
        return g.const(name, ref, shape=tp.shape, dtype="float32")

    def fc(self, g: GraphBuilder, name: str) -> Tensor:
        """A FULLY_CONNECTED weight [out, in]."""
        return self._cached(g, name, lambda: self._affine_or_float(g, name, lookup=False))

    def _affine_or_float(self, g: GraphBuilder, name: str, lookup: bool) -> Tensor:
        tp = self.plan_of(name)
        cfg = tp.config
        fmt = format_of(cfg)
        if fmt.layout == "float":
            return self._float(g, name, tp)
        if fmt.lookup_only:
            raise RecipeError(f"'{tp.role}' is dictionary-coded but feeds FULLY_CONNECTED; LiteRT "
                              "has no dictionary-coded FC", tensor=name,
                              fix="give the tied embedding/lm_head an affine config")
        dt = fmt.litert
        if fmt.layout == "channel":
            scale = self._channel_scales(name)
            if self._low[name] and cfg.bits != 2:
                return self._full_range(g, name, tp, cfg, scale, lookup)
            ref = self._channel_codes(g, name, tp, cfg, dt)
            q = Quantization(scale=tuple(scale.tolist()), zero_point=(0,) * scale.size)
            return g.const(name, ref, shape=tp.shape, dtype=dt, quantization=q)
        if lookup:
            raise RecipeError(f"'{tp.role}' is blockwise quantized but is looked up by row; "
                              "EMBEDDING_LOOKUP needs one scale per row", tensor=name,
                              fix="use granularity 'channel' for embedding tables")
        fmt.check_runnable(tensor=name)   # blockwise int8: refused
        rows, cols = tp.shape
        sdt = fmt.scale_dtype
        ref = self._buffer(g, name, name, tp.shape, dt, lambda p: p.value.codes, main=True)
        sref = self._buffer(g, name, f"{name}_scales", (rows, cols // cfg.block_size), sdt,
                            lambda p: p.value.scales.astype(sdt), main=False)
        st = g.const(f"{name}_scales", sref, shape=(rows, cols // cfg.block_size), dtype=sdt)
        q = Quantization(block_scales=st.index, block_size=cfg.block_size)
        return g.const(name, ref, dtype=dt, shape=tp.shape, quantization=q, block_scales=st)

    def _full_range(self, g: GraphBuilder, name: str, tp: TensorPlan, cfg, scale: np.ndarray,
                    lookup: bool) -> Tensor:
        """Per-channel codes holding -8 / -128 (compressed-tensors' default min-max scales), kept
        exactly. LiteRT's builtin FULLY_CONNECTED reads INT4 -8 as +8 and INT8 -128 as +128 (where
        the input is negative); XNNPACK is right. Measured (tests/test_ct_full_range.py):
        - INT4 with BlockwiseQuantization, one block per row (block_size = K, FLOAT16 scales [N, 1])
          is right in both, for K >= 32 and even (K < 32 or odd: all zeros in both). Exact when the
          scales are float16 numbers (bf16/fp16 checkpoints: always, above 2^-24); no extra bytes.
        - else INT4 with K < 32 or odd: the codes widened to INT8 per channel (right in both;
          -8 is an ordinary int8 code), exact, twice the bytes of that (small) tensor.
        - INT8 (no blockwise INT8 in XNNPACK, no zero point in hybrid FC) and INT4 with float32
          scales that float16 cannot hold: per channel over the full range, and the model is
          marked as needing XNNPACK (``requires_xnnpack``)."""
        rows, cols = tp.shape
        s16 = scale.astype(np.float16)
        f16_exact = bool(np.all(np.isfinite(s16)) and np.all(s16 > 0)
                         and np.array_equal(s16.astype(np.float32), scale))
        codes = lambda p: p.value.codes  # noqa: E731
        if lookup:   # EMBEDDING_LOOKUP computes -128 / -8 right in both kernel paths
            ref = self._channel_codes(g, name, tp, cfg, cfg.format.litert, full=True)
            self.records[name]["encoding"] = f"int{cfg.bits} per channel, full range"
            q = Quantization(scale=tuple(scale.tolist()), zero_point=(0,) * scale.size)
            return g.const(name, ref, shape=tp.shape, dtype=cfg.format.litert, quantization=q)
        if cfg.bits == 4 and cols >= 32 and cols % 2 == 0 and f16_exact:
            ref = self._buffer(g, name, name, tp.shape, "int4", codes, main=True)
            st = g.const(f"{name}_scales", s16.reshape(rows, 1), dtype="float16")
            self.records[name]["encoding"] = "int4 blockwise, one block per row (float16 scales)"
            q = Quantization(block_scales=st.index, block_size=cols)
            return g.const(name, ref, dtype="int4", shape=tp.shape, quantization=q, block_scales=st)
        if cfg.bits == 4 and (cols < 32 or cols % 2):
            ref = self._buffer(g, name, name, tp.shape, "int8", codes, main=True)
            dt = "int8"
            self.records[name]["encoding"] = "int4 codes stored as int8 per channel (K < 32 or odd)"
        else:
            dt = cfg.format.litert
            ref = self._channel_codes(g, name, tp, cfg, dt, full=True)
            why = (f"int{cfg.bits} per-channel codes hold {full_range(cfg.bits)[0]}, which LiteRT's "
                   "builtin FULLY_CONNECTED miscomputes (XNNPACK is right)")
            if cfg.bits == 4:
                why += "; its float32 scales are not float16 numbers, so no blockwise form is exact"
            self.requires_xnnpack[name] = why
            self.records[name]["encoding"] = f"int{cfg.bits} per channel, full range (XNNPACK only)"
        q = Quantization(scale=tuple(scale.tolist()), zero_point=(0,) * scale.size)
        return g.const(name, ref, shape=tp.shape, dtype=dt, quantization=q)

    # ---- lookups --------------------------------------------------------------------
    def lookup(self, g: GraphBuilder, name: str, ids: Tensor) -> Tensor:
        """float32 rows [T, cols] of table ``name`` for 1-D int32 ``ids`` [T]."""
        tp = self.plan_of(name)
        cfg = tp.config
        if format_of(cfg).lookup_only:
            return self._dict_lookup(g, name, tp, cfg, ids)
        table = self._cached(g, name, lambda: self._affine_or_float(g, name, lookup=True))
        if cfg is None:
            return g.gather(table, ids, axis=0)
        return g.embedding_lookup(ids, table)

    def _dict_lookup(self, g: GraphBuilder, name: str, tp: TensorPlan, cfg: DictionaryConfig,
                     ids: Tensor) -> Tensor:
        rows, cols = tp.shape
        k, bits, r = cfg.codebook_size, cfg.index_bits, cfg.rows_per_codebook
        groups = -(-rows // r)
        half = 1 << (bits - 1)
        if bits < 8 and half < k < (1 << bits):
            raise RecipeError(f"a {k}-entry codebook with {bits}-bit codes: LiteRT reads INT{bits} "
                              f"codes as signed, so use codebook_size <= {half} or exactly "
                              f"{1 << bits}", tensor=name)
        signed_wrap = bits < 8 and k == 1 << bits   # codes >= half read back as negative

        def books(p: Prepared) -> np.ndarray:
            b = np.asarray(p.value.codebooks, np.float32)
            if signed_wrap:   # entry s + half holds codebook[s mod k] for signed s in [-half, half)
                b = np.concatenate([b[:, half:], b[:, :half]], axis=1)
            return b.reshape(-1)

        def codes(p: Prepared) -> np.ndarray:
            c = np.asarray(p.value.codes)
            return c if bits == 8 else np.where(c >= half, c.astype(np.int16) - (1 << bits),
                                               c).astype(np.int8)

        def make() -> tuple[Tensor, Tensor]:
            dt = cfg.format.litert
            q = Quantization(scale=(1.0,), zero_point=(0,)) if bits == 2 else None
            ref = self._buffer(g, name, name, tp.shape, dt, codes, main=True)
            bname = f"{name}_codebooks"
            bref = self._buffer(g, name, bname, (groups * k,), "float32", books, main=False)
            return (g.const(name, ref, shape=tp.shape, dtype=dt, quantization=q),
                    g.const(bname, bref, shape=(groups * k,), dtype="float32"))

        key, bkey = (id(g.writer), name), (id(g.writer), f"{name}_codebooks")
        if key not in self._consts:
            self._consts[key], self._consts[bkey] = make()
        code_t, book_t = g.share(self._consts[key]), g.share(self._consts[bkey])
        if bits == 2:   # GATHER cannot read INT2; EMBEDDING_LOOKUP with scale 1 yields the codes
            idx = g.cast(g.embedding_lookup(ids, code_t), "int32")
        else:
            rows_t = g.gather(code_t, ids, axis=0)
            idx = g.cast(g.cast(rows_t, "float32") if bits == 4 else rows_t, "int32")
        if signed_wrap:
            idx = g.add(idx, np.int32(half))
        if groups > 1:
            grp = g.mul(g.div(ids, np.int32(r)), np.int32(k)) if r > 1 else g.mul(ids, np.int32(k))
            idx = g.add(idx, g.reshape(grp, [ids.shape[0], 1]))
        return g.gather(book_t, idx, axis=0)

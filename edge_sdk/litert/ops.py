"""Op helpers for :class:`~edge_sdk.litert.graph.GraphBuilder`, with output-shape inference.

Only what the Gemma 4 decoder and the tests need. Every helper returns the output
:class:`~edge_sdk.litert.graph.Tensor`; ``name=`` names the output tensor (else an automatic,
deterministic name). Binary ops accept a Python scalar / NumPy array for either operand
(it becomes a constant of the other operand's dtype) and broadcast NumPy-style.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from ..errors import InputError
from .dtypes import BITS, DTYPES, dtype_name

OP = schema.BuiltinOperator
_FLOATS = ("float32", "float16", "bfloat16")


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise InputError(f"shapes {[list(s) for s in shapes]} do not broadcast") from None


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise InputError(f"axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def _whole_byte_slices(params, axis: int, op: str) -> None:
    """GATHER / EMBEDDING_LOOKUP on sub-byte tensors address slices in whole bytes."""
    bits = BITS[params.dtype] * int(np.prod(params.shape[axis + 1:], dtype=np.int64))
    if BITS[params.dtype] < 8 and (bits % 8 or axis != 0):
        raise InputError(f"{op} on {params.dtype} {list(params.shape)} needs axis 0 and rows "
                         f"of whole bytes (LiteRT gives wrong rows otherwise)",
                         tensor=params.name)


def _is_tensor(v: Any) -> bool:
    return hasattr(v, "subgraph") and hasattr(v, "index") and hasattr(v, "dtype")


class OpsMixin:
    """Mixed into GraphBuilder, which provides ``_op``, ``const``, ``const_i32``, ``_check``."""

    # ---- helpers -------------------------------------------------------------------
    def _t(self, v: Any, like: Any) -> Any:
        """``v`` itself if it is a tensor, else a constant of ``like``'s dtype."""
        if _is_tensor(v):
            return v
        return self.const(None, np.asarray(v, dtype=like.dtype))

    def _binary(self, builtin: int, a: Any, b: Any, options: Any, name: str | None,
                hint: str, out_dtype: str | None = None):
        a = a if _is_tensor(a) else self._t(a, b)
        b = self._t(b, a)
        if a.dtype != b.dtype:
            raise InputError(f"{hint}: dtypes differ ({a.dtype} vs {b.dtype})")
        return self._op(builtin, [a, b], broadcast_shapes(a.shape, b.shape),
                        out_dtype or a.dtype, options, name=name, hint=hint)

    def _unary(self, builtin: int, x, options: Any = None, name: str | None = None,
               hint: str = "t", dtype: str | None = None):
        return self._op(builtin, [x], x.shape, dtype or x.dtype, options, name=name, hint=hint)

    # ---- matmul --------------------------------------------------------------------
    def fully_connected(self, x, w, bias=None, *, keep_num_dims: bool = True,
                        asymmetric_quantize_inputs: bool = False, name: str | None = None):
        """y = x @ w.T (+ bias); w is [N, K] (float, or int8/int4/int2 weight-only quantized:
        float in, float out)."""
        if w.rank != 2 or x.shape[-1] != w.shape[1]:
            raise InputError(f"fully_connected: x{list(x.shape)} @ w{list(w.shape)}.T")
        if bias is not None and bias.shape != (w.shape[0],):
            raise InputError(f"fully_connected: bias {list(bias.shape)} != [{w.shape[0]}]")
        lead = x.shape[:-1]
        shape = lead + (w.shape[0],) if keep_num_dims else (int(np.prod(lead)), w.shape[0])
        opts = schema.FullyConnectedOptionsT(
            keepNumDims=keep_num_dims, asymmetricQuantizeInputs=asymmetric_quantize_inputs)
        return self._op(OP.FULLY_CONNECTED, [x, w, bias], shape,
                        x.dtype if x.dtype in _FLOATS else "float32", opts,
                        name=name, hint="fc")

    def batch_matmul(self, a, b, *, adj_x: bool = False, adj_y: bool = False,
                     name: str | None = None):
        """a [..., M, K] @ b [..., K, N], batch dims broadcast (adj_* transpose the last two)."""
        if a.rank < 2 or b.rank < 2:
            raise InputError("batch_matmul needs rank >= 2 operands")
        m, ka = (a.shape[-1], a.shape[-2]) if adj_x else a.shape[-2:]
        kb, n = (b.shape[-1], b.shape[-2]) if adj_y else b.shape[-2:]
        if ka != kb:
            raise InputError(f"batch_matmul: {list(a.shape)} x {list(b.shape)} (K {ka} != {kb})")
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
        return self._op(OP.BATCH_MATMUL, [a, b], batch + (m, n), a.dtype,
                        schema.BatchMatMulOptionsT(adjX=adj_x, adjY=adj_y),
                        name=name, hint="bmm")

    # ---- elementwise ---------------------------------------------------------------
    def add(self, a, b, name=None):
        return self._binary(OP.ADD, a, b, schema.AddOptionsT(), name, "add")

    def mul(self, a, b, name=None):
        return self._binary(OP.MUL, a, b, schema.MulOptionsT(), name, "mul")

    def sub(self, a, b, name=None):
        return self._binary(OP.SUB, a, b, schema.SubOptionsT(), name, "sub")

    def div(self, a, b, name=None):
        return self._binary(OP.DIV, a, b, schema.DivOptionsT(), name, "div")

    def maximum(self, a, b, name=None):
        return self._binary(OP.MAXIMUM, a, b, None, name, "max")

    def minimum(self, a, b, name=None):
        return self._binary(OP.MINIMUM, a, b, None, name, "min")

    def pow(self, a, b, name=None):
        return self._binary(OP.POW, a, b, None, name, "pow")

    def less(self, a, b, name=None):
        return self._binary(OP.LESS, a, b, None, name, "less", "bool")

    def greater(self, a, b, name=None):
        return self._binary(OP.GREATER, a, b, None, name, "greater", "bool")

    def greater_equal(self, a, b, name=None):
        return self._binary(OP.GREATER_EQUAL, a, b, None, name, "greater_equal", "bool")

    def logical_and(self, a, b, name=None):
        return self._binary(OP.LOGICAL_AND, a, b, None, name, "and", "bool")

    def floor_mod(self, a, b, name=None):
        """a mod b with the divisor's sign (Python's %), e.g. int32 ring-buffer slots."""
        return self._binary(OP.FLOOR_MOD, a, b, None, name, "floor_mod")

    def select_v2(self, cond, x, y, name=None, quantization=None):
        """where(cond, x, y) with three-way broadcasting. ``quantization``: the output's (x and y
        must share it: the kernel copies elements, e.g. an int8 cache)."""
        x = x if _is_tensor(x) else self._t(x, y)
        y = self._t(y, x)
        if cond.dtype != "bool" or x.dtype != y.dtype:
            raise InputError("select_v2 needs a bool condition and equal value dtypes")
        return self._op(OP.SELECT_V2, [cond, x, y],
                        broadcast_shapes(cond.shape, x.shape, y.shape), x.dtype,
                        name=name, hint="select", quantization=quantization)

    def rsqrt(self, x, name=None):
        return self._unary(OP.RSQRT, x, name=name, hint="rsqrt")

    def tanh(self, x, name=None):
        return self._unary(OP.TANH, x, name=name, hint="tanh")

    def cos(self, x, name=None):
        return self._unary(OP.COS, x, name=name, hint="cos")

    def sin(self, x, name=None):
        return self._unary(OP.SIN, x, name=name, hint="sin")

    def square(self, x, name=None):
        return self._unary(OP.SQUARE, x, name=name, hint="square")

    def abs(self, x, name=None):
        return self._unary(OP.ABS, x, name=name, hint="abs")

    def round(self, x, name=None):
        """Round half to even (as np.round)."""
        return self._unary(OP.ROUND, x, name=name, hint="round")

    def gelu(self, x, approximate: bool = True, name=None):
        return self._unary(OP.GELU, x, schema.GeluOptionsT(approximate=approximate),
                           name=name, hint="gelu")

    def softmax(self, x, beta: float = 1.0, name=None):
        """Softmax over the last axis."""
        return self._unary(OP.SOFTMAX, x, schema.SoftmaxOptionsT(beta=beta),
                           name=name, hint="softmax")

    def cast(self, x, dtype: str, name=None):
        """Convert element type. INT4 input converts only to float32 (the kernel refuses
        INT4 -> int8/int16/int32)."""
        dt = dtype_name(dtype)
        if x.dtype == "int4" and dt != "float32":
            raise InputError(f"CAST int4 -> {dt} is not supported by LiteRT",
                             fix="cast int4 -> float32 -> int32")
        opts = schema.CastOptionsT(inDataType=DTYPES[x.dtype], outDataType=DTYPES[dt])
        return self._unary(OP.CAST, x, opts, name=name, hint="cast", dtype=dt)

    def quantize(self, x, dtype: str, quantization, name=None):
        """float -> int8/int16 with the given (per-tensor or per-axis) quantization."""
        return self._op(OP.QUANTIZE, [x], x.shape, dtype, name=name, hint="quantize",
                        quantization=quantization)

    def dequantize(self, x, name=None):
        """int8/int4/float16 (with quantization) -> float32."""
        return self._op(OP.DEQUANTIZE, [x], x.shape, "float32", name=name, hint="dequantize")

    # ---- reductions ----------------------------------------------------------------
    def _reduce(self, builtin: int, x, axes, keep_dims: bool, name, hint):
        axes = sorted({_axis(a, x.rank) for a in np.atleast_1d(axes).tolist()})
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keep_dims else \
            [d for i, d in enumerate(x.shape) if i not in axes]
        return self._op(builtin, [x, self.const_i32(axes)], shape, x.dtype,
                        schema.ReducerOptionsT(keepDims=keep_dims), name=name, hint=hint)

    def mean(self, x, axes, keep_dims: bool = True, name=None):
        return self._reduce(OP.MEAN, x, axes, keep_dims, name, "mean")

    def reduce_max(self, x, axes, keep_dims: bool = True, name=None):
        return self._reduce(OP.REDUCE_MAX, x, axes, keep_dims, name, "max")

    def sum(self, x, axes, keep_dims: bool = True, name=None):
        return self._reduce(OP.SUM, x, axes, keep_dims, name, "sum")

    # ---- shape ---------------------------------------------------------------------
    def reshape(self, x, shape: Sequence[int], name=None):
        shape = [int(d) for d in shape]
        n = int(np.prod(x.shape, dtype=np.int64))
        if shape.count(-1) > 1:
            raise InputError(f"reshape: more than one -1 in {shape}")
        if -1 in shape:
            rest = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
            shape[shape.index(-1)] = n // rest if rest else 0
        if int(np.prod(shape, dtype=np.int64)) != n:
            raise InputError(f"reshape: {list(x.shape)} -> {shape}")
        # A reshape of a reshape reads the first one's input (the middle one, if nothing else
        # reads it, is dropped at finish); a reshape back to that input's shape is no op at all.
        src = self._views.get(x.index, x)
        if name is None and tuple(shape) in (src.shape, x.shape):
            return src if tuple(shape) == src.shape else x
        out = self._op(OP.RESHAPE, [src, self.const_i32(shape)], shape, x.dtype,
                       name=name, hint="reshape")
        self._views[out.index] = src
        return out

    def transpose(self, x, perm: Sequence[int], name=None):
        perm = [_axis(p, x.rank) for p in perm]
        if sorted(perm) != list(range(x.rank)):
            raise InputError(f"transpose: {perm} is not a permutation of rank {x.rank}")
        moved = [p for p in perm if x.shape[p] != 1]
        if moved == sorted(moved):   # only size-1 axes move: the same bytes, a reshape
            return self.reshape(x, [x.shape[p] for p in perm], name=name)
        return self._op(OP.TRANSPOSE, [x, self.const_i32(perm)],
                        [x.shape[p] for p in perm], x.dtype, name=name, hint="transpose")

    def concatenation(self, tensors: Sequence[Any], axis: int, name=None):
        ax = _axis(axis, tensors[0].rank)
        base = list(tensors[0].shape)
        for t in tensors[1:]:
            if t.rank != len(base) or any(t.shape[i] != base[i] for i in range(t.rank)
                                          if i != ax) or t.dtype != tensors[0].dtype:
                raise InputError(f"concatenation on axis {ax}: {[list(t.shape) for t in tensors]}")
        base[ax] = sum(t.shape[ax] for t in tensors)
        return self._op(OP.CONCATENATION, list(tensors), base, tensors[0].dtype,
                        schema.ConcatenationOptionsT(axis=ax), name=name, hint="concat")

    def pack(self, tensors: Sequence[Any], axis: int = 0, name=None):
        shape = list(tensors[0].shape)
        ax = _axis(axis, len(shape) + 1)
        shape.insert(ax, len(tensors))
        return self._op(OP.PACK, list(tensors), shape, tensors[0].dtype,
                        schema.PackOptionsT(valuesCount=len(tensors), axis=ax),
                        name=name, hint="pack")

    def slice(self, x, begin: Sequence[int], size: Sequence[int], name=None):
        """x[b0:b0+s0, ...]; a size of -1 means "to the end"."""
        if len(begin) != x.rank or len(size) != x.rank:
            raise InputError(f"slice: begin/size must have rank {x.rank}")
        out = [d - b if s == -1 else s for d, b, s in zip(x.shape, begin, size)]
        if any(b < 0 or o < 0 or b + o > d for d, b, o in zip(x.shape, begin, out)):
            raise InputError(f"slice {list(begin)}+{out} out of {list(x.shape)}")
        q = x.quantization   # a per-tensor scale holds for any slice of the tensor (the int8 KV cache)
        q = q if q is not None and len(q.scale) == 1 else None
        return self._op(OP.SLICE, [x, self.const_i32(begin), self.const_i32(size)], out,
                        x.dtype, name=name, hint="slice", quantization=q)

    def strided_slice(self, x, begin: Sequence[int], end: Sequence[int],
                      strides: Sequence[int] | None = None, *, begin_mask: int = 0,
                      end_mask: int = 0, shrink_axis_mask: int = 0, name=None):
        """Python-slice semantics per axis (masks as in TFLite; no ellipsis / new axes)."""
        strides = list(strides) if strides is not None else [1] * x.rank
        if not len(begin) == len(end) == len(strides) == x.rank:
            raise InputError(f"strided_slice: begin/end/strides must have rank {x.rank}")
        out = []
        for i, d in enumerate(x.shape):
            if shrink_axis_mask >> i & 1:
                continue
            b = None if begin_mask >> i & 1 else begin[i]
            e = None if end_mask >> i & 1 else end[i]
            out.append(len(range(*slice(b, e, strides[i]).indices(d))))
        opts = schema.StridedSliceOptionsT(beginMask=begin_mask, endMask=end_mask,
                                           shrinkAxisMask=shrink_axis_mask)
        return self._op(OP.STRIDED_SLICE, [x, self.const_i32(begin), self.const_i32(end),
                                           self.const_i32(strides)], out, x.dtype, opts,
                        name=name, hint="strided_slice")

    def gather(self, params, indices, axis: int = 0, batch_dims: int = 0, name=None,
               quantization=None):
        """params.shape[:axis] + indices.shape[batch_dims:] + params.shape[axis+1:].
        ``quantization``: the output's (pass the params' to keep an int8 tensor quantized)."""
        ax = _axis(axis, params.rank)
        if indices.dtype not in ("int32", "int64", "int16"):
            raise InputError(f"gather: indices must be int16/32/64, not {indices.dtype}")
        if params.dtype == "int2":
            raise InputError("GATHER does not support INT2 params",
                             fix="use embedding_lookup on a quantized INT2 table")
        _whole_byte_slices(params, ax, "gather")
        shape = params.shape[:ax] + indices.shape[batch_dims:] + params.shape[ax + 1:]
        return self._op(OP.GATHER, [params, indices], shape, params.dtype,
                        schema.GatherOptionsT(axis=ax, batchDims=batch_dims),
                        name=name, hint="gather", quantization=quantization)

    def embedding_lookup(self, ids, table, *, dtype: str | None = None, name=None):
        """table[ids] for 1-D int32 ids; a quantized (int8/uint8/int4) table yields float32
        rows (row-wise dequantization by the kernel) unless ``dtype`` says otherwise."""
        if ids.rank != 1 or ids.dtype != "int32":
            raise InputError("embedding_lookup needs 1-D int32 ids (reshape first)")
        _whole_byte_slices(table, 0, "embedding_lookup")
        out = dtype or ("float32" if table.quantization is not None else table.dtype)
        return self._op(OP.EMBEDDING_LOOKUP, [ids, table], ids.shape + table.shape[1:], out,
                        name=name, hint="embedding")

    def codebook_lookup(self, codes, ids, codebook, name=None):
        """Dictionary-coded rows: codebook[codes[ids] + offset] as float, where ``codes`` is an
        [V, D] int4 / int8 / uint8 constant, ``codebook`` a 1-D float table of 2^bits entries
        and offset 2^(bits-1) for signed codes. Only the looked-up rows are read.
        GATHER(codes) -> CAST (int4 goes via float32) -> [ADD offset] -> GATHER(codebook)."""
        bits = BITS[codes.dtype]
        if codes.dtype not in ("int4", "int8", "uint8") or codebook.shape != (1 << bits,):
            raise InputError(f"codebook_lookup needs int4/int8/uint8 codes and a [{1 << bits}] "
                             f"codebook, got {codes.dtype} and {list(codebook.shape)}")
        rows = self.gather(codes, ids, axis=0)
        idx = self.cast(self.cast(rows, "float32"), "int32") if codes.dtype == "int4" \
            else self.cast(rows, "int32")
        if codes.dtype != "uint8":
            idx = self.add(idx, np.int32(1 << (bits - 1)))
        return self.gather(codebook, idx, axis=0, name=name)

    def dynamic_update_slice(self, operand, update, start, name=None):
        """operand with ``update`` written at ``start`` (int32 tensor [rank] or ints); the output
        keeps the operand's quantization (an int8 cache)."""
        if update.rank != operand.rank or update.dtype != operand.dtype:
            raise InputError("dynamic_update_slice: update must match operand rank and dtype")
        if not _is_tensor(start):
            start = self.const_i32(list(start))
        if start.shape != (operand.rank,):
            raise InputError(f"dynamic_update_slice: start must be [{operand.rank}]")
        return self._op(OP.DYNAMIC_UPDATE_SLICE, [operand, update, start], operand.shape,
                        operand.dtype, name=name, hint="dus",
                        quantization=operand.quantization)   # quantized state stays quantized

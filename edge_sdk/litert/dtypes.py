"""LiteRT tensor types (names → schema enum), byte sizes and quantization parameters.

The sub-byte packing, the code ranges the kernels compute right and the byte formula are the
format registry's (``quant.formats``); this module maps them onto the LiteRT schema. Facts
measured against ai-edge-litert 2.3.0 (see tests/test_litert_writer.py):

- Sub-byte layout (``quant.formats.pack``): the whole flattened tensor packed contiguously, low
  bits first. Rows are not padded: FULLY_CONNECTED reads odd K correctly, but GATHER /
  EMBEDDING_LOOKUP need whole-byte rows.
- Weight-only FULLY_CONNECTED with per-channel INT8 / INT4 weights: the builtin (non-XNNPACK)
  hybrid kernels give wrong output for every output channel that contains the most negative code
  (-128 / -8). XNNPACK is right. So the per-channel formats' ranges are symmetric for 8 and 4
  bits; INT2 [-2, 1] is fine in both kernel paths (``check_code_range``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from ..errors import InputError
from ..quant.formats import affine_format, full_range, pack, packed_nbytes

_T = schema.TensorType
DTYPES: dict[str, int] = {
    "float32": _T.FLOAT32, "float16": _T.FLOAT16, "bfloat16": _T.BFLOAT16,
    "int64": _T.INT64, "int32": _T.INT32, "int16": _T.INT16, "int8": _T.INT8,
    "int4": _T.INT4, "int2": _T.INT2, "uint8": _T.UINT8, "bool": _T.BOOL,
}
BITS: dict[str, int] = {"float32": 32, "float16": 16, "bfloat16": 16, "int64": 64, "int32": 32,
                        "int16": 16, "int8": 8, "int4": 4, "int2": 2, "uint8": 8, "bool": 8}


def dtype_name(dtype: Any) -> str:
    """Canonical dtype name ('float32', 'int4', ...) from a name or a numpy dtype."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in DTYPES:
        raise InputError(f"unsupported LiteRT tensor dtype {dtype!r}",
                         fix=f"use one of {sorted(DTYPES)}")
    return name


def tensor_nbytes(shape: Sequence[int], dtype: Any) -> int:
    """Bytes of a dense tensor; sub-byte types are packed over the flattened tensor."""
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    return packed_nbytes(n, BITS[dtype_name(dtype)])


def to_bytes(value: Any, dtype: Any) -> bytes:
    """The raw LiteRT buffer bytes of ``value`` stored as ``dtype`` (int4/int2: packed codes)."""
    dt = dtype_name(dtype)
    if dt in ("int4", "int2"):
        codes, (lo, hi) = np.asarray(value), full_range(BITS[dt])
        if codes.size and (codes.min() < lo or codes.max() > hi):
            raise InputError(f"{dt} codes out of range [{lo}, {hi}]")
        return pack(codes.astype(np.int16), BITS[dt]).tobytes()
    if dt == "bfloat16":
        import ml_dtypes
        return np.ascontiguousarray(value, dtype=ml_dtypes.bfloat16).tobytes()
    return np.ascontiguousarray(value, dtype=np.dtype(dt)).tobytes()


def dequantize_reference(codes: np.ndarray, scale: np.ndarray, axis: int = 0) -> np.ndarray:
    """codes * scale broadcast along ``axis`` (the NumPy meaning of a per-channel weight)."""
    shape = [1] * np.ndim(codes)
    shape[axis] = -1
    return np.asarray(codes, np.float32) * np.asarray(scale, np.float32).reshape(shape)


def check_code_range(codes: np.ndarray, bits: int, *, tensor: str | None = None) -> None:
    """Refuse codes outside the per-channel format's range (the builtin FC kernels miscompute
    -128 / -8)."""
    fmt = affine_format(bits, "channel")
    lo, hi = fmt.qmin, fmt.qmax
    codes = np.asarray(codes)
    if codes.size and (codes.min() < lo or codes.max() > hi):
        raise InputError(
            f"int{bits} weight codes span [{codes.min()}, {codes.max()}]; LiteRT's builtin "
            f"FULLY_CONNECTED kernels are only correct for [{lo}, {hi}]", tensor=tensor,
            fix="quantize symmetrically, or pass allow_full_range=True for XNNPACK-only models")


@dataclass(frozen=True)
class Quantization:
    """Per-tensor / per-channel: ``scale`` (+ ``zero_point``, default 0) along
    ``quantized_dimension``. Blockwise: ``block_scales`` is the index of a FLOAT16 tensor of
    the same subgraph holding [rows, cols / block_size] scales."""
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    quantized_dimension: int = 0
    block_scales: int | None = None
    block_zero_points: int = 0
    block_size: int = 0

    def to_schema(self) -> schema.QuantizationParametersT:
        q = schema.QuantizationParametersT(quantizedDimension=self.quantized_dimension)
        if self.block_scales is not None:
            q.detailsType = schema.QuantizationDetails.BlockwiseQuantization
            q.details = schema.BlockwiseQuantizationT(
                scales=self.block_scales, zeroPoints=self.block_zero_points,
                blockSize=self.block_size)
        if len(self.scale):
            q.scale = np.asarray(self.scale, dtype=np.float32)
            zp = self.zero_point if len(self.zero_point) else np.zeros(len(self.scale))
            q.zeroPoint = np.asarray(zp, dtype=np.int64)
        return q

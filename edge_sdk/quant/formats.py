"""The one registry of storage formats: each format a tensor or KV cache can be stored in, described once.

Every entry answers, for the planner, the weight writer, the kernels and the QAT toolkit alike:

- ``qmin``/``qmax``: the codes the converter emits (int8 and per-channel int4 use the narrow,
  symmetric range: LiteRT's builtin FULLY_CONNECTED miscomputes a channel holding -128 / -8, XNNPACK
  is right; blockwise int4 runs right over the full [-8, 7]; int2 [-2, 1]; dictionary indices are
  unsigned [0, 2^bits - 1]; the int8 KV cache is TFLite QUANTIZE's [-128, 127]);
- ``bits`` and the packing (``pack``/``unpack`` below, the only implementation);
- ``nbytes(shape, cfg)``: (data, overhead) bytes as LiteRT stores the tensor, the one formula the
  plan reports and the writer's buffers match (tests/test_formats.py);
- ``litert``: the LiteRT tensor type name of the stored codes (``litert.dtypes`` maps names to the
  schema enum; this floor does not import LiteRT);
- ``refusal``: why LiteRT cannot run the format (``None``: it can), raised by ``check_runnable``
  in one wording wherever the format is met.

Configs (``quant.config``) name their entry (``format_key``); ``format_of(cfg)`` finds it (``None``:
float32). As llama.cpp's gguf-py registers each quant type once with one size table, adding a
format is one entry in ``FORMATS`` (a subclass per ``layout``: where scales or codebooks sit).

Packing (LiteRT ``tflite::tensor_utils::PackInt8IntoDenseInt`` / ``UnpackPackedIntToInt8``,
``tflite/kernels/internal/portable_tensor_utils.cc``): the whole flattened tensor, row-major,
contiguously (rows are NOT padded); int4 two per byte with element 2k in bits 0-3 of byte k, int2
four per byte with element 4k in bits 0-1; two's complement (unsigned indices: their bit patterns);
only the final byte is zero-padded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import RecipeError

PACK_BITS = (8, 4, 2)


# ---------------------------------------------------------------- packing (the one implementation)

def packed_nbytes(count: int, bits: int) -> int:
    """Bytes of ``count`` values of ``bits`` bits packed contiguously (the last byte zero-padded)."""
    return (count * bits + 7) // 8


def full_range(bits: int) -> tuple[int, int]:
    """Every code a ``bits``-bit two's-complement integer holds: int8 [-128, 127], int4 [-8, 7],
    int2 [-2, 1]. Given codes (compressed-tensors min-max scales put a row's largest negative
    weight on -128 / -8) may use all of it; ``litert.gemma4_weights`` picks an encoding LiteRT runs."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes (two's complement, or unsigned indices) into uint8, LiteRT layout."""
    if bits not in PACK_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes")
    flat = np.ascontiguousarray(codes).reshape(-1).astype(np.uint8)  # wraps two's complement
    if bits == 8:
        return flat
    per = 8 // bits
    pad = (-flat.size) % per
    if pad:
        flat = np.concatenate([flat, np.zeros(pad, np.uint8)])
    lanes = (flat & np.uint8((1 << bits) - 1)).reshape(-1, per)
    out = lanes[:, 0].copy()
    for i in range(1, per):
        out |= lanes[:, i] << np.uint8(i * bits)
    return out


def unpack(packed: np.ndarray, bits: int, count: int, signed: bool = True) -> np.ndarray:
    """Inverse of ``pack``: ``count`` codes as int8 (``signed``) or uint8 (unsigned indices)."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size != packed_nbytes(count, bits):
        raise ValueError(f"{packed.size} bytes cannot hold exactly {count} {bits}-bit codes "
                         f"(need {packed_nbytes(count, bits)})")
    if bits == 8:
        return packed.view(np.int8).copy() if signed else packed.copy()
    per, mask = 8 // bits, np.uint8((1 << bits) - 1)
    lanes = np.stack([(packed >> np.uint8(i * bits)) & mask for i in range(per)], axis=1)
    u = lanes.reshape(-1)[:count]
    if not signed:
        return u.copy()
    half = np.int8(1 << (bits - 1))
    return (u.astype(np.int8) ^ half) - half


# ---------------------------------------------------------------- the formats

@dataclass(frozen=True)
class Format:
    """One storage format (see the module docstring). ``layout`` (per subclass) says how scales or
    codebooks sit beside the codes; ``refused_as_config``: no config may even name it (nothing in
    edge_sdk can use it), else the refusal is raised where LiteRT would get it."""

    layout: ClassVar[str]
    default_source: ClassVar[str] = "ptq"   # the plan's scale source when the checkpoint carries none
    lookup_only: ClassVar[bool] = False     # only GATHER can read it (no FULLY_CONNECTED)

    key: str
    bits: int
    litert: str | None            # LiteRT tensor type name of the stored codes / data
    qmin: int = 0
    qmax: int = 0
    refusal: str | None = None
    fix: str | None = None
    refused_as_config: bool = False

    @property
    def signed(self) -> bool:
        return self.qmin < 0

    def numel(self, shape) -> int:
        return math.prod(shape)

    def data_bytes(self, shape) -> int:
        return packed_nbytes(self.numel(shape), self.bits)

    def overhead_bytes(self, shape, cfg) -> int:
        """Scales, zero points or codebooks stored beside the codes."""
        return 0

    def nbytes(self, shape, cfg=None) -> tuple[int, int]:
        """(data bytes, overhead bytes) of a tensor of ``shape`` as LiteRT stores it."""
        shape = tuple(shape)
        return self.data_bytes(shape), self.overhead_bytes(shape, cfg)

    def scheme(self, cfg=None) -> str:
        """The plan's short name of ``cfg`` under this format (``int4/b32``, ``dict4x16/r64``)."""
        return self.key

    def row_group(self, cfg) -> int:
        """Rows that share side data (a codebook): a tensor is prepared in blocks of a multiple."""
        return 1

    def pack(self, codes: np.ndarray) -> np.ndarray:
        return pack(codes, self.bits)

    def unpack(self, packed: np.ndarray, count: int) -> np.ndarray:
        return unpack(packed, self.bits, count, signed=self.signed)

    def check_runnable(self, *, tensor: str | None = None) -> None:
        """Raise the format's one refusal (``RecipeError``) when LiteRT cannot run it."""
        if self.refusal is not None:
            raise RecipeError(self.refusal, tensor=tensor, fix=self.fix)


@dataclass(frozen=True)
class FloatFormat(Format):
    layout: ClassVar[str] = "float"
    default_source: ClassVar[str] = "none"


@dataclass(frozen=True)
class ChannelFormat(Format):
    """Affine, one float32 scale per output row (axis 0), zero point 0: LiteRT's per-channel
    QuantizationParameters, a float32 scale and an int64 zero point per row."""
    layout: ClassVar[str] = "channel"
    scale_dtype: ClassVar[str] = "float32"

    def overhead_bytes(self, shape, cfg) -> int:
        return (shape[0] if shape else 1) * (4 + 8)


@dataclass(frozen=True)
class BlockFormat(Format):
    """Affine, one float16 scale per ``block_size`` inputs of a row: LiteRT's
    BlockwiseQuantization, scales a FLOAT16 tensor [rows, cols / block_size]."""
    layout: ClassVar[str] = "block"
    scale_dtype: ClassVar[str] = "float16"

    def overhead_bytes(self, shape, cfg) -> int:
        rows = shape[0] if shape else 1
        cols = self.numel(shape) // rows
        if cols % cfg.block_size:
            raise RecipeError(f"{cols} inputs per row is not a multiple of block_size {cfg.block_size}")
        return rows * (cols // cfg.block_size) * 2

    def scheme(self, cfg=None) -> str:
        return f"int{self.bits}/b{cfg.block_size}"


@dataclass(frozen=True)
class DictionaryFormat(Format):
    """Unsigned ``bits``-bit indices into float32 codebooks, one of ``codebook_size`` entries per
    ``rows_per_codebook`` rows; looked up by GATHER (there is no dictionary-coded FC)."""
    layout: ClassVar[str] = "dictionary"
    default_source: ClassVar[str] = "kmeans"
    lookup_only: ClassVar[bool] = True

    def overhead_bytes(self, shape, cfg) -> int:
        rows = shape[0] if shape else 1
        return -(-rows // cfg.rows_per_codebook) * cfg.codebook_size * 4

    def scheme(self, cfg=None) -> str:
        return f"dict{self.bits}x{cfg.codebook_size}/r{cfg.rows_per_codebook}"

    def row_group(self, cfg) -> int:
        return cfg.rows_per_codebook


@dataclass(frozen=True)
class KvFormat(Format):
    """A KV cache state buffer's element type (int8: one per-tensor float32 scale per buffer, a
    quantization parameter of the model, not state)."""
    layout: ClassVar[str] = "kv"
    default_source: ClassVar[str] = "none"


_BLOCK_ZEROS = ("LiteRT's builtin FULLY_CONNECTED kernels silently return all zeros for {T} blockwise "
                "weights and XNNPACK refuses them")
FORMATS: dict[str, Format] = {f.key: f for f in (
    FloatFormat("float32", 32, "float32"),
    ChannelFormat("int8", 8, "int8", -127, 127),
    ChannelFormat("int4", 4, "int4", -7, 7),
    ChannelFormat("int2", 2, "int2", -2, 1),
    BlockFormat("int8/block", 8, None, -127, 127,
                refusal="blockwise int8 weights are refused: " + _BLOCK_ZEROS.format(T="INT8"),
                fix="use granularity='channel' for 8-bit, or 4-bit blockwise"),
    BlockFormat("int4/block", 4, "int4", -8, 7),
    BlockFormat("int2/block", 2, None, -2, 1, refused_as_config=True,
                refusal="int2 with granularity 'block' is refused: " + _BLOCK_ZEROS.format(T="INT2"),
                fix="use granularity='channel' for 2-bit"),
    DictionaryFormat("dict2", 2, "int2", 0, 3),
    DictionaryFormat("dict4", 4, "int4", 0, 15),
    DictionaryFormat("dict8", 8, "uint8", 0, 255),
    KvFormat("kv_float32", 32, "float32"),
    KvFormat("kv_float16", 16, None,
             refusal="a float16 KV cache is not emitted: LiteRT-LM's CPU engine accepts it but its output "
                     "was not faithful (LITERTLM_GEMMA4.md §7)", fix="use kv_cache bits 32 or 8 in the recipe"),
    KvFormat("kv_int8", 8, "int8", -128, 127),
)}
FLOAT32 = FORMATS["float32"]
AFFINE_BITS = tuple(f.bits for f in FORMATS.values() if isinstance(f, ChannelFormat))
DICT_INDEX_BITS = tuple(sorted(f.bits for f in FORMATS.values() if isinstance(f, DictionaryFormat)))


def format_of(cfg: Any) -> Format:
    """The format a config names (``cfg.format_key``); ``None`` (a float tensor): float32."""
    return FLOAT32 if cfg is None else FORMATS[cfg.format_key]


def affine_format(bits: int, granularity: str = "channel") -> Format:
    """The affine format of ``bits`` bits with scales per "channel" or per "block"."""
    key = f"int{bits}" + ("/block" if str(granularity) == "block" else "")
    if key not in FORMATS:
        raise RecipeError(f"no {bits}-bit {granularity} weight format",
                          fix=f"use bits {', '.join(map(str, AFFINE_BITS))}")
    return FORMATS[key]


def qrange(bits: int, granularity: str = "channel") -> tuple[int, int]:
    """(qmin, qmax) of the affine format: 8 → (-127, 127), 4 → (-7, 7) per channel / (-8, 7) per
    block, 2 → (-2, 1)."""
    f = affine_format(bits, granularity)
    return f.qmin, f.qmax

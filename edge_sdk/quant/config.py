"""Quantization configs: frozen, validated on construction, refusing what LiteRT cannot run.

Strings given for enum fields are converted to the enum (``Granularity("block")``), so a config
built from code and one loaded from JSON compare equal; a bad value raises ``RecipeError``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum

from ..errors import RecipeError


class Granularity(StrEnum):
    """Where affine scales live: one per output channel (row), or one per block of a row."""

    CHANNEL = "channel"
    BLOCK = "block"


class ScaleDType(StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"


class KVGranularity(StrEnum):
    """int8 KV cache scales: one per tensor, or one per (token, head) vector."""

    TENSOR = "tensor"
    TOKEN_HEAD = "token_head"


AFFINE_BITS = (8, 4, 2)
BLOCK_SIZES = (32, 64, 128, 256)
DICT_INDEX_BITS = (2, 4, 8)
KV_BITS = (8, 16, 32)


def _enum(cls, value, what: str):
    try:
        return cls(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in cls)
        raise RecipeError(f"{what} {value!r} is not one of {valid}",
                          fix=f"use one of {valid}") from None


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecipeError(f"{what} must be an integer, got {value!r}")
    return value


def _bool(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise RecipeError(f"{what} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class AffineConfig:
    """Symmetric linear quantization ``w ≈ code * scale`` (zero point 0).

    bits: 8, 4 or 2. Code ranges: int8 [-127, 127] (TFLite's symmetric int8), int4 [-7, 7] per
      channel and [-8, 7] per block, int2 [-2, 1] (see ``qmin``).
    granularity: "channel" (a scale per output row, axis 0) or "block" (a scale per
      ``block_size`` consecutive inputs of a row; ``block_size`` in 32/64/128/256).
    scale_dtype: "float32" for channel; "float16" for block (LiteRT's BlockwiseQuantization
      stores FLOAT16 scales), defaulted accordingly when not given.
    Refused: int2 blockwise (LiteRT's builtin kernels return all zeros for it, silently, and
    XNNPACK rejects it); asymmetric (LiteRT's FULLY_CONNECTED needs weight zero point 0).
    """

    bits: int
    granularity: Granularity = Granularity.CHANNEL
    block_size: int | None = None
    symmetric: bool = True
    scale_dtype: ScaleDType | None = None

    def __post_init__(self):
        bits = _int(self.bits, "bits")
        if bits not in AFFINE_BITS:
            raise RecipeError(f"affine bits {bits} not supported",
                              fix="use bits 8, 4 or 2 (or a dictionary config)")
        gran = _enum(Granularity, self.granularity, "granularity")
        object.__setattr__(self, "granularity", gran)
        if gran is Granularity.BLOCK:
            if self.block_size is None:
                raise RecipeError("granularity 'block' needs block_size",
                                  fix=f"set block_size to one of {BLOCK_SIZES}")
            if _int(self.block_size, "block_size") not in BLOCK_SIZES:
                raise RecipeError(f"block_size {self.block_size} not supported",
                                  fix=f"use one of {BLOCK_SIZES}")
            if bits == 2:
                raise RecipeError(
                    "int2 with granularity 'block' is refused: LiteRT's builtin FULLY_CONNECTED "
                    "kernels silently return all zeros for INT2 blockwise weights and XNNPACK "
                    "refuses them", fix="use granularity='channel' for 2-bit")
        elif self.block_size is not None:
            raise RecipeError(f"block_size {self.block_size} given with granularity 'channel'",
                              fix="drop block_size, or use granularity='block'")
        if not _bool(self.symmetric, "symmetric"):
            raise RecipeError("asymmetric weights are not supported: LiteRT's FULLY_CONNECTED "
                              "needs weight zero point 0", fix="use symmetric=true")
        default = ScaleDType.FLOAT16 if gran is Granularity.BLOCK else ScaleDType.FLOAT32
        sd = default if self.scale_dtype is None else _enum(ScaleDType, self.scale_dtype,
                                                            "scale_dtype")
        if gran is Granularity.BLOCK and sd is not ScaleDType.FLOAT16:
            raise RecipeError("blockwise scales are float16 in LiteRT (BlockwiseQuantization)",
                              fix="use scale_dtype='float16' or leave it out")
        object.__setattr__(self, "scale_dtype", sd)

    @property
    def qmin(self) -> int:
        """Narrow (symmetric) range for int8 and per-channel int4: LiteRT's builtin
        FULLY_CONNECTED gives wrong output for any channel holding -128 / -8 (XNNPACK is right);
        blockwise int4 runs correctly over the full range; int2 uses [-2, 1]."""
        if self.bits == 8:
            return -127
        if self.bits == 4 and self.granularity is Granularity.CHANNEL:
            return -7
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1


@dataclass(frozen=True)
class DictionaryConfig:
    """Dictionary (palettized) coding: ``w ≈ codebook[group(row), code]``.

    Rows are split into groups of ``rows_per_codebook`` consecutive rows; each group gets its
    own float32 codebook of ``codebook_size`` entries (sorted ascending) found by 1-D k-means
    over all of the group's values, and every element stores an unsigned ``index_bits`` code.

    index_bits: 2, 4 or 8.  codebook_size: 2 .. 2**index_bits.  rows_per_codebook: >= 1.
    iterations: Lloyd iterations (fixed count, deterministic; quantile init, no RNG). On sorted
      values an iteration costs O(codebook_size · log n) per group, so 100 is cheap; it
      reaches the Lloyd-Max optimum on Gaussian data (quantile init converges slowly: 10
      iterations leave ~15 % more error).
    mapped: the table stays memory-mapped; only looked-up rows become resident.

    Example — 4-bit codes, 16-entry codebooks, one codebook per 64 rows, on the E2B
    per-layer-embedding table 262144×8960: codes 262144·8960/2 B = 1.174 GB; codebooks
    262144/64 = 4096 × 16 × 4 B = 256 KiB (0.02 % on top).
    """

    index_bits: int = 4
    codebook_size: int = 16
    rows_per_codebook: int = 64
    iterations: int = 100
    mapped: bool = True

    def __post_init__(self):
        if _int(self.index_bits, "index_bits") not in DICT_INDEX_BITS:
            raise RecipeError(f"dictionary index_bits {self.index_bits} not supported",
                              fix=f"use one of {DICT_INDEX_BITS}")
        k = _int(self.codebook_size, "codebook_size")
        if not 2 <= k <= (1 << self.index_bits):
            raise RecipeError(f"codebook_size {k} does not fit {self.index_bits}-bit codes",
                              fix=f"use 2..{1 << self.index_bits}")
        if _int(self.rows_per_codebook, "rows_per_codebook") < 1:
            raise RecipeError("rows_per_codebook must be >= 1")
        if not 1 <= _int(self.iterations, "iterations") <= 1000:
            raise RecipeError(f"iterations {self.iterations} out of range", fix="use 1..1000")
        _bool(self.mapped, "mapped")


@dataclass(frozen=True)
class KVCacheConfig:
    """KV cache storage. bits 32 / 16: float32 / float16 (no granularity);
    bits 8: int8 with scales per "tensor" or per "token_head" (quantize on write)."""

    bits: int = 32
    granularity: KVGranularity | None = None

    def __post_init__(self):
        if _int(self.bits, "kv bits") not in KV_BITS:
            raise RecipeError(f"KV cache bits {self.bits} not supported",
                              fix="use 8 (int8), 16 (float16) or 32 (float32)")
        if self.bits == 8:
            if self.granularity is None:
                raise RecipeError("an int8 KV cache needs a granularity",
                                  fix="set granularity to 'token_head' or 'tensor'")
            object.__setattr__(self, "granularity",
                               _enum(KVGranularity, self.granularity, "kv granularity"))
        elif self.granularity is not None:
            raise RecipeError(f"a float{self.bits} KV cache has no granularity",
                              fix="drop granularity, or use bits=8")

    @property
    def is_float(self) -> bool:
        return self.bits != 8


QuantConfig = AffineConfig | DictionaryConfig

CONFIG_TYPES: dict[str, type] = {
    "affine": AffineConfig, "dictionary": DictionaryConfig, "kv_cache": KVCacheConfig}


def config_keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))

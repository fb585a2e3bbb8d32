"""Quantization configs: frozen, validated on construction, refusing what LiteRT cannot run.

Strings given for enum fields are converted to the enum (``Granularity("block")``), so a config
built from code and one loaded from JSON compare equal; a bad value raises ``RecipeError``.
Each config names its storage format (``format_key``, ``format``): code ranges, bytes, packing,
the LiteRT type and what LiteRT refuses live in ``quant.formats``, once. ``config_to_dict`` /
``config_from_dict`` are the one JSON form of a config (tags ``CONFIG_TYPES``), used by recipes
and plan rows alike.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from enum import Enum, StrEnum

from ..errors import RecipeError
from .formats import AFFINE_BITS, DICT_INDEX_BITS, FORMATS, Format, affine_format


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


BLOCK_SIZES = (32, 64, 128, 256)
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

    bits: 8, 4 or 2. Code ranges (``qmin``/``qmax``): the format's (``quant.formats``).
    granularity: "channel" (a scale per output row, axis 0) or "block" (a scale per
      ``block_size`` consecutive inputs of a row; ``block_size`` in 32/64/128/256).
    scale_dtype: "float32" for channel; "float16" for block (LiteRT's BlockwiseQuantization
      stores FLOAT16 scales), defaulted accordingly when not given.
    Refused: int2 blockwise (its format's ``refusal``: nothing can use it); asymmetric (LiteRT's
    FULLY_CONNECTED needs weight zero point 0). int8 blockwise is a valid config (kernels, QAT)
    that the LiteRT writer refuses (its format's ``refusal``).
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
            fmt = affine_format(bits, gran)
            if fmt.refused_as_config:
                fmt.check_runnable()
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
    def format_key(self) -> str:
        return f"int{self.bits}" + ("/block" if self.granularity is Granularity.BLOCK else "")

    @property
    def format(self) -> Format:
        return FORMATS[self.format_key]

    @property
    def qmin(self) -> int:
        return self.format.qmin

    @property
    def qmax(self) -> int:
        return self.format.qmax


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

    @property
    def format_key(self) -> str:
        return f"dict{self.index_bits}"

    @property
    def format(self) -> Format:
        return FORMATS[self.format_key]


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

    @property
    def format_key(self) -> str:
        return "kv_int8" if self.bits == 8 else f"kv_float{self.bits}"

    @property
    def format(self) -> Format:
        return FORMATS[self.format_key]


QuantConfig = AffineConfig | DictionaryConfig

CONFIG_TYPES: dict[str, type] = {
    "affine": AffineConfig, "dictionary": DictionaryConfig, "kv_cache": KVCacheConfig}
WEIGHT_TAGS = ("affine", "dictionary")


def config_keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def config_to_dict(cfg) -> dict | None:
    """``{"type": tag, field: value, ...}`` in field order (enums as their values); None for None."""
    if cfg is None:
        return None
    out = {"type": next(t for t, c in CONFIG_TYPES.items() if type(cfg) is c)}
    for k in config_keys(type(cfg)):
        v = getattr(cfg, k)
        out[k] = v.value if isinstance(v, Enum) else v
    return out


def check_keys(obj, valid: tuple[str, ...], where: str, src):
    if not isinstance(obj, dict):
        raise RecipeError(f"{where} must be a JSON object, got {type(obj).__name__}", path=src)
    for k in obj:
        if k not in valid:
            raise RecipeError(f"unknown key '{k}' in {where}", path=src,
                              fix=f"valid keys: {', '.join(valid)}")


def config_from_dict(obj, where: str = "config", src=None, allowed: tuple[str, ...] = WEIGHT_TAGS):
    """Inverse of ``config_to_dict`` for the tags in ``allowed``; an unknown tag, key or value is
    one ``RecipeError`` naming ``where`` and the valid choices."""
    if obj is None and "kv_cache" not in allowed:
        return None
    if not isinstance(obj, dict):
        raise RecipeError(f"{where} must be a JSON object, got {type(obj).__name__}", path=src)
    tag = obj.get("type")
    if tag not in allowed:
        raise RecipeError(f"unknown config type {tag!r} in {where}", path=src,
                          fix=f"valid types: {', '.join(allowed)}")
    cls = CONFIG_TYPES[tag]
    check_keys(obj, ("type",) + config_keys(cls), where, src)
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in obj]
    if missing:
        raise RecipeError(f"{where}: missing key '{missing[0]}'", path=src,
                          fix=f"valid keys: {', '.join(config_keys(cls))}")
    try:
        return cls(**{k: v for k, v in obj.items() if k != "type"})
    except RecipeError as e:
        raise RecipeError(f"{where}: {e.detail}", path=src, fix=e.fix) from None

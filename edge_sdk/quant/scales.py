"""Precomputed scales, read exactly and never recalibrated: compressed-tensors checkpoints and
our QAT sidecar. (Scales recovered from weights already on a grid: ``grid.py``.)

compressed-tensors "pack-quantized" layout (vllm-project/compressed-tensors,
``compressors/quantized_compressors/pack_quantized.py`` ``pack_to_int32``): codes are stored
offset-binary (``code + 2**(bits-1)``, not two's complement), packed along the input axis of
each row into int32 words, element i of a row at bits ``[i·bits, (i+1)·bits)`` of the row's
words (low bits first); each row is padded to whole words. Asymmetric zero points are packed
the same way along the output axis (``packed_dim=0``). "int-quantized" stores int8 codes as
``weight``. Dequantization is ``(code - zero_point) · scale``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from os import PathLike
from typing import Callable, Mapping

import numpy as np

from ..errors import CheckpointError, EdgeSdkError, RecipeError
from .config import AffineConfig
from .kernels import QuantizedTensor, from_codes
from .recipe import Recipe, recipe_from_json, recipe_to_json

CT_FORMATS = ("pack-quantized", "int-quantized")
CT_STRATEGIES = ("channel", "group", "tensor")


# ---------------------------------------------------------------- compressed-tensors config

@dataclass(frozen=True)
class CTScheme:
    """One config group's weight args."""

    name: str
    targets: tuple[str, ...]
    num_bits: int
    strategy: str
    group_size: int | None
    symmetric: bool
    format: str


@dataclass(frozen=True)
class CTConfig:
    schemes: tuple[CTScheme, ...]
    ignore: tuple[str, ...] = ()

    def scheme_for(self, module: str) -> CTScheme | None:
        """The scheme quantizing ``module`` (first matching group), ``None`` if ignored/none."""
        if any(_ct_match(module, t) for t in self.ignore):
            return None
        return next((s for s in self.schemes if any(_ct_match(module, t) for t in s.targets)),
                    None)


def _ct_match(module: str, target: str) -> bool:
    """compressed-tensors target: 're:<regex>' (re.match), an exact module name, or a class
    name such as 'Linear' (we see only tensors, so a class name matches every module)."""
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    if target == module:
        return True
    return target[:1].isupper() and "." not in target


def parse_ct_config(qc: Mapping, source: str | PathLike | None = None) -> CTConfig:
    """Parse ``config.json``'s ``quantization_config`` (weight-only int schemes only)."""
    def bad(msg, fix=None):
        return CheckpointError(f"quantization_config: {msg}", path=source, fix=fix)

    if qc.get("quant_method") != "compressed-tensors":
        raise bad(f"quant_method {qc.get('quant_method')!r} is not 'compressed-tensors'")
    top_format = qc.get("format")
    schemes = []
    for name, group in (qc.get("config_groups") or {}).items():
        if group.get("input_activations") or group.get("output_activations"):
            raise bad(f"group {name!r} quantizes activations; only weight-only is supported")
        w = group.get("weights")
        if not w:
            continue
        fmt = group.get("format") or top_format
        if fmt not in CT_FORMATS:
            raise bad(f"group {name!r} format {fmt!r} not supported",
                      fix=f"use one of {', '.join(CT_FORMATS)}")
        if w.get("type", "int") != "int":
            raise bad(f"group {name!r} weight type {w.get('type')!r} is not 'int'")
        bits, strategy = w.get("num_bits"), w.get("strategy")
        if bits not in (2, 4, 8):
            raise bad(f"group {name!r} num_bits {bits!r} not supported", fix="use 2, 4 or 8")
        if strategy not in CT_STRATEGIES:
            raise bad(f"group {name!r} strategy {strategy!r} not supported",
                      fix=f"use one of {', '.join(CT_STRATEGIES)}")
        gs = w.get("group_size") if strategy == "group" else None
        if strategy == "group" and not (isinstance(gs, int) and gs > 0):
            raise bad(f"group {name!r} strategy 'group' needs a positive group_size")
        targets = tuple(group.get("targets") or ())
        schemes.append(CTScheme(name, targets, bits, strategy, gs,
                                bool(w.get("symmetric", True)), fmt))
    return CTConfig(tuple(schemes), tuple(qc.get("ignore") or ()))


# ---------------------------------------------------------------- int32 packing

def ct_pack_int32(codes: np.ndarray, bits: int, packed_dim: int = 1) -> np.ndarray:
    """compressed-tensors ``pack_to_int32``: signed codes [rows, cols] → int32 words."""
    c = np.asarray(codes, dtype=np.int64)
    if packed_dim == 0:
        return ct_pack_int32(c.T, bits).T.copy()
    per = 32 // bits
    u = (c + (1 << (bits - 1))).astype(np.uint32)
    pad = (-u.shape[1]) % per
    u = np.pad(u, ((0, 0), (0, pad))).reshape(u.shape[0], -1, per)
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    return np.bitwise_or.reduce(u << shifts, axis=2).view(np.int32)


def ct_unpack_int32(packed: np.ndarray, bits: int, shape, packed_dim: int = 1) -> np.ndarray:
    """Inverse of ``ct_pack_int32``: int32 words → int8 codes of ``shape`` (padding dropped)."""
    if bits not in (2, 4, 8):
        raise CheckpointError(f"cannot unpack {bits}-bit compressed-tensors codes")
    p = np.ascontiguousarray(packed).astype(np.int32, copy=False)
    rows, cols = (int(x) for x in shape)
    if packed_dim == 0:
        return ct_unpack_int32(p.T, bits, (cols, rows)).T.copy()
    per = 32 // bits
    if p.ndim != 2 or p.shape[0] != rows or p.shape[1] != -(-cols // per):
        raise CheckpointError(f"packed weight shape {p.shape} does not hold {rows}×{cols} "
                              f"{bits}-bit codes (expected ({rows}, {-(-cols // per)}))")
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    u = (p.view(np.uint32)[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
    u = u.reshape(rows, -1)[:, :cols]
    return (u.astype(np.int16) - (1 << (bits - 1))).astype(np.int8)


# ---------------------------------------------------------------- reading one module

@dataclass(frozen=True, eq=False)
class CTWeight:
    """A module's exact codes [out, in] (int8), scales ([out] or [out, in/group], float32) and
    zero points (same shape as scales, int8; ``None`` when symmetric / all zero)."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    scheme: CTScheme
    module: str = ""
    path: str | None = None     # the checkpoint (for messages)

    def affine_config(self) -> AffineConfig:
        s = self.scheme
        if s.strategy == "group":
            return AffineConfig(bits=s.num_bits, granularity="block", block_size=s.group_size)
        return AffineConfig(bits=s.num_bits, granularity="channel")

    def to_quantized(self) -> QuantizedTensor:
        """As our ``QuantizedTensor``: codes and scales exactly as stored, over the full
        two's-complement range (-8 / -128 included); refuses non-zero zero points."""
        s = self.scheme
        if self.zero_points is not None:
            raise RecipeError(
                f"asymmetric weights (config group {s.name!r}: symmetric false, non-zero "
                "weight zero points): LiteRT's FULLY_CONNECTED has no weight zero point",
                path=self.path, tensor=f"{self.module}.weight_zero_point",
                fix=f"re-quantize with symmetric: true in the {s.name!r} weights args "
                    "(llm-compressor's W4A16 / W8A16 schemes are symmetric)")
        try:
            return from_codes(self.codes, self.scales, self.affine_config(),
                              tensor=self.module, path=self.path)
        except RecipeError as e:
            if e.tensor:
                raise
            raise RecipeError(e.detail, path=self.path,
                              tensor=f"{self.module}.weight_scale", fix=e.fix) from None


def read_ct_weight(get: Callable[[str], np.ndarray | None] | Mapping[str, np.ndarray],
                   module: str, scheme: CTScheme, path: str | PathLike | None = None) -> CTWeight:
    """Read ``<module>.weight_packed|weight``, ``weight_scale``, ``weight_zero_point``,
    ``weight_shape`` through ``get(name)`` (missing → None) or a mapping; exact, no rounding."""
    fetch = get.get if isinstance(get, Mapping) else get

    def need(suffix):
        a = fetch(f"{module}.{suffix}")
        if a is None:
            raise CheckpointError(f"missing {suffix} for a {scheme.format} module",
                                  tensor=f"{module}.{suffix}")
        return np.asarray(a)

    if fetch(f"{module}.weight_g_idx") is not None:
        raise CheckpointError("activation-ordered groups (weight_g_idx) are not supported",
                              tensor=f"{module}.weight_g_idx",
                              fix="export without actorder='group'")
    if scheme.format == "pack-quantized":
        shape = tuple(int(x) for x in need("weight_shape").reshape(-1))
        codes = ct_unpack_int32(need("weight_packed"), scheme.num_bits, shape)
    else:
        codes = need("weight")
        if codes.dtype != np.int8 or codes.ndim != 2:
            raise CheckpointError(f"int-quantized weight must be 2-D int8, got {codes.dtype}",
                                  tensor=f"{module}.weight")
    rows, cols = codes.shape
    if scheme.strategy == "group":
        if cols % scheme.group_size:
            raise CheckpointError(f"{cols} inputs not a multiple of group_size "
                                  f"{scheme.group_size}", tensor=module)
        want = (rows, cols // scheme.group_size)
    else:
        want = (rows,)
    scale = need("weight_scale").astype(np.float32)
    scales = (np.broadcast_to(scale.reshape(-1), want) if scheme.strategy == "tensor"
              else scale.reshape(want) if scale.size == int(np.prod(want)) else None)
    if scales is None:
        raise CheckpointError(f"weight_scale shape {scale.shape} does not fit {want}",
                              tensor=f"{module}.weight_scale")
    zp = fetch(f"{module}.weight_zero_point")
    if zp is not None:
        zp = np.asarray(zp)
        if zp.dtype == np.int32 and scheme.format == "pack-quantized" and not scheme.symmetric \
                and scheme.strategy != "tensor":
            zp = ct_unpack_int32(zp, scheme.num_bits, (want[0], (want + (1,))[1]), packed_dim=0)
        zp = np.broadcast_to(zp.astype(np.int8).reshape(-1) if scheme.strategy == "tensor"
                             else zp.astype(np.int8).reshape(want), want)
        zp = None if not zp.any() else np.ascontiguousarray(zp)
    return CTWeight(codes, np.ascontiguousarray(scales, dtype=np.float32), zp, scheme, module,
                    None if path is None else str(path))


# ---------------------------------------------------------------- our QAT sidecar

SIDECAR_NAME = "qat_scales.safetensors"
SIDECAR_FORMAT = "edge_sdk.qat_scales"
SIDECAR_VERSION = "1"


@dataclass(frozen=True, eq=False)
class QatSidecar:
    """``scales[role]``: float32 ([out] per channel, [out, in/block] per block), and the
    recipe the QAT run trained for."""

    scales: dict[str, np.ndarray]
    recipe: Recipe


def write_qat_sidecar(path: str | PathLike, scales: Mapping[str, np.ndarray],
                      recipe: Recipe) -> None:
    """Write ``<role>.scale`` float32 tensors + {"format","version","recipe"} metadata."""
    from safetensors.numpy import save_file
    tensors = {}
    for role, s in scales.items():
        s = np.asarray(s)
        if s.dtype != np.float32:
            raise RecipeError(f"QAT scale for '{role}' must be float32, got {s.dtype}")
        tensors[f"{role}.scale"] = np.ascontiguousarray(s)
    save_file(tensors, str(path), metadata={
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "recipe": recipe_to_json(recipe)})


def read_qat_sidecar(path: str | PathLike) -> QatSidecar:
    """Read a sidecar written by ``write_qat_sidecar``; anything else raises CheckpointError."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != SIDECAR_FORMAT or meta.get("version") != SIDECAR_VERSION:
                raise CheckpointError(
                    f"not an edge_sdk QAT sidecar (format {meta.get('format')!r}, version "
                    f"{meta.get('version')!r})", path=path,
                    fix=f"expected format {SIDECAR_FORMAT!r} version {SIDECAR_VERSION!r}")
            scales = {}
            for key in f.keys():
                if not key.endswith(".scale"):
                    raise CheckpointError("sidecar tensor names must end in '.scale'",
                                          path=path, tensor=key)
                a = f.get_tensor(key)
                if a.dtype != np.float32:
                    raise CheckpointError(f"scale dtype {a.dtype}, expected float32",
                                          path=path, tensor=key)
                scales[key[:-len(".scale")]] = a
    except EdgeSdkError:
        raise
    except Exception as e:  # safetensors' SafetensorError, OSError
        raise CheckpointError(f"cannot read QAT sidecar: {e}", path=path) from None
    return QatSidecar(scales, recipe_from_json(meta["recipe"], source=f"{path} (metadata)"))

"""Apply a ``QuantPlan`` to a checkpoint, one tensor at a time (what the converter streams).

Scales are taken, in this order, from: compressed-tensors parts in the checkpoint, the QAT
sidecar, or recovered exactly from weights stored on their QAT grid. Only when none applies are
they computed from max|w| (post-training), and the result says so. The re-rounding error
``max|w - dequantize(q)|`` is reported per tensor; it is 0 for a true QAT checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint
from ..errors import CheckpointError
from ..gemma4 import Binding
from ..gemma4.names import role_of, tensor_of
from .config import AffineConfig, DictionaryConfig
from .grid import recover_grid_scales
from .kernels import QuantizedTensor, dequantize, quantize
from .kernels_dict import DictionaryQuantizer, DictionaryTensor
from .plan import QuantPlan, TensorPlan
from .codebooks import CODEBOOKS_NAME, read_qat_codebooks
from .scales import SIDECAR_NAME, parse_ct_config, read_ct_weight, read_qat_sidecar


@dataclass(frozen=True, eq=False)
class Prepared:
    """One tensor ready for the writer: float32 data, affine codes + scales, or codes + codebooks."""

    plan: TensorPlan
    value: np.ndarray | QuantizedTensor | DictionaryTensor
    scale_source: str
    error: float
    note: str = ""

    def dequantized(self) -> np.ndarray:
        v = self.value
        if isinstance(v, QuantizedTensor):   # MoE experts are quantized as [E·out, in]
            return dequantize(v).reshape(self.plan.shape)
        if isinstance(v, DictionaryTensor):
            return DictionaryQuantizer.dequantize(v)
        return v


class Preparer:
    """Reads and quantizes the planned tensors of one checkpoint, one at a time."""

    def __init__(self, ckpt: Checkpoint, binding: Binding, plan: QuantPlan):
        self.ckpt, self.binding, self.plan = ckpt, binding, plan
        sidecar = Path(ckpt.path) / SIDECAR_NAME
        self.sidecar = read_qat_sidecar(sidecar).scales if sidecar.is_file() else {}
        books = Path(ckpt.path) / CODEBOOKS_NAME
        self.codebooks = read_qat_codebooks(books) if books.is_file() else {}
        qc = ckpt.config.get("quantization_config") or (ckpt.config.get("text_config") or {}).get(
            "quantization_config")
        self.ct = parse_ct_config(qc, source=Path(ckpt.path) / "config.json") if qc else None

    def read_f32(self, canonical: str) -> np.ndarray:
        if canonical in self.binding.quantized:  # compressed-tensors: dequantize exactly
            return dequantize(self._ct_weight(canonical).to_quantized())
        return self.ckpt.read_f32(self.binding.text[canonical])

    def _ct_weight(self, canonical: str):
        module = self.binding.text[canonical]  # the stored module name, e.g. model.layers.0.mlp.up_proj
        scheme = self.ct.scheme_for(module) if self.ct is not None else None
        if scheme is None:
            raise CheckpointError("compressed-tensors parts but no quantization_config scheme for them",
                                  path=self.ckpt.path, tensor=module)
        return read_ct_weight(lambda n: self.ckpt.read(n) if n in self.ckpt.tensors else None, module, scheme,
                              path=self.ckpt.path)

    def prepare(self, tp: TensorPlan) -> Prepared:
        canonical = tensor_of(tp.name)
        cfg = tp.config
        if cfg is None:
            return Prepared(tp, np.ascontiguousarray(self.read_f32(canonical), np.float32), "none", 0.0)
        handler = {"dictionary": self._dictionary, "channel": self._affine, "block": self._affine}
        return handler[cfg.format.layout](tp, canonical, cfg)

    def _dictionary(self, tp: TensorPlan, canonical: str, cfg: DictionaryConfig) -> Prepared:
        """Trained QAT codebooks are used as they are; else k-means."""
        given = self.codebooks.get(tp.role)
        dt = DictionaryQuantizer(cfg).quantize(self.read_f32(canonical), codebooks=given)
        return Prepared(tp, dt, "kmeans" if given is None else "qat_codebooks", float(dt.error))

    def _affine(self, tp: TensorPlan, canonical: str, cfg: AffineConfig) -> Prepared:
        if canonical in self.binding.quantized:
            ct = self._ct_weight(canonical)
            qt = ct.to_quantized()
            if qt.config != cfg:
                raise CheckpointError(
                    f"checkpoint holds {qt.config.bits}-bit {qt.config.granularity} codes but the recipe asks "
                    f"for {cfg.bits}-bit {cfg.granularity}; precomputed scales are never recalibrated",
                    path=self.ckpt.path, tensor=self.binding.text[canonical],
                    fix="use a recipe matching the checkpoint's quantization_config")
            return Prepared(tp, qt, "compressed_tensors", 0.0)
        w = self.ckpt.read(self.binding.text[canonical])
        if w.ndim == 3:   # MoE experts [E, out, in]: one scale per expert and output row
            w = w.reshape(-1, w.shape[-1])
        role = role_of(canonical)   # the tied head uses the embedding's scales
        if role in self.sidecar:
            given = np.asarray(self.sidecar[role])
            per_channel = given.ndim == 1 or (given.ndim == 2 and given.shape[1] == 1)
            if per_channel != (cfg.block_size is None):
                asked = f"{cfg.bits}-bit " + ("per-channel" if cfg.block_size is None else f"block-{cfg.block_size}")
                raise CheckpointError(
                    f"the checkpoint's QAT scales for {role} are {'per-channel' if per_channel else 'blockwise'} "
                    f"but the recipe asks for {asked} weights; precomputed scales are never recalibrated",
                    path=self.ckpt.path, tensor=self.binding.text[canonical],
                    fix="use the recipe the checkpoint was trained for (e.g. --recipe mobile)")
            qt = quantize(w.astype(np.float32), cfg, scales=self.sidecar[role])
            return Prepared(tp, qt, "qat_sidecar", qt.error)
        rec = recover_grid_scales(w, cfg.bits, cfg.granularity, cfg.block_size)
        if rec.on_grid and rec.conclusive:
            qt = quantize(w.astype(np.float32), cfg, scales=rec.scales.astype(
                np.float16 if cfg.scale_dtype == "float16" else np.float32))
            return Prepared(tp, qt, "grid", qt.error)
        qt = quantize(w.astype(np.float32), cfg)
        return Prepared(tp, qt, "ptq", qt.error, note=rec.warning or "")

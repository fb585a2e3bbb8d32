"""Prepare a big tensor in blocks of rows, so that converting a real-size model stays within a bounded
amount of memory (E2B's per-layer-embedding table is 262144 × 8960: 9.4 GB as float32).

``RowSlicer(preparer).prepare_rows(tp, r0, r1)`` runs the ordinary ``Preparer.prepare`` on rows
[r0, r1) only: the stored tensor is read through a row-sliced ``TensorInfo`` (the same file and
bytes, offset by whole rows), and sidecar scales are sliced alike. Every scheme the converter
emits works row-locally, so the blocks give exactly what the whole tensor gives:
per-channel scales are per row; dictionary codebooks are per group of ``rows_per_codebook`` rows
(blocks are aligned to groups); float rows are rows. Block scales are per row too. Tensors held as
compressed-tensors parts are not sliced (``can_slice`` is False): they are prepared whole.
"""

from __future__ import annotations

import copy
import math
from collections import ChainMap
from dataclasses import replace

import numpy as np

from ..checkpoint import Checkpoint
from ..gemma4.names import role_of, tensor_of
from ..quant.apply import Prepared, Preparer
from ..quant.formats import format_of
from ..quant.plan import TensorPlan

BLOCK_F32_BYTES = 64 << 20   # rows per block: about this much float32


class RowSlicer:
    def __init__(self, preparer: Preparer, block_f32_bytes: int | None = None):
        self.prep = preparer
        self.block_bytes = BLOCK_F32_BYTES if block_f32_bytes is None else block_f32_bytes

    def can_slice(self, tp: TensorPlan) -> bool:
        canonical = tensor_of(tp.name)
        return (len(tp.shape) == 2 and canonical not in self.prep.binding.quantized
                and canonical in self.prep.binding.text)

    def can_slice_experts(self, tp: TensorPlan) -> bool:
        """An MoE expert stack [E, out, in] read one expert (one "row" of axis 0) at a time."""
        canonical = tensor_of(tp.name)
        return (len(tp.shape) == 3 and canonical not in self.prep.binding.quantized
                and canonical in self.prep.binding.text)

    def blocks(self, tp: TensorPlan) -> list[tuple[int, int]] | None:
        """Row ranges to prepare one at a time; None: small enough to prepare whole."""
        rows, cols = tp.shape[0], math.prod(tp.shape[1:])
        if rows * cols * 4 <= self.block_bytes or not self.can_slice(tp):
            return None
        align = math.lcm(8, format_of(tp.config).row_group(tp.config))   # whole bytes of codes, whole codebooks
        per = max(align, self.block_bytes // (4 * cols) // align * align)
        if per >= rows:
            return None
        return [(r0, min(r0 + per, rows)) for r0 in range(0, rows, per)]

    def _sliced(self, tp: TensorPlan, r0: int, r1: int) -> tuple[Checkpoint, str]:
        prep = self.prep
        stored = prep.binding.text[tensor_of(tp.name)]
        info = prep.ckpt.tensors[stored]
        row_bytes = info.nbytes // info.shape[0]
        sliced = replace(info, shape=(r1 - r0,) + tuple(info.shape[1:]),
                         offset=info.offset + r0 * row_bytes, nbytes=(r1 - r0) * row_bytes)
        return Checkpoint(prep.ckpt.path, prep.ckpt.config, ChainMap({stored: sliced}, prep.ckpt.tensors)), stored

    def read_rows(self, tp: TensorPlan, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of the stored tensor as float32 (as the Preparer reads it)."""
        ckpt, stored = self._sliced(tp, r0, r1)
        return ckpt.read(stored).astype(np.float32)

    def prepare_rows(self, tp: TensorPlan, r0: int, r1: int) -> Prepared:
        prep = self.prep
        part = copy.copy(prep)
        part.ckpt, _ = self._sliced(tp, r0, r1)
        role = role_of(tensor_of(tp.name))   # the tied head uses the embedding's scales
        if role in prep.sidecar:
            part.sidecar = {**prep.sidecar, role: np.asarray(prep.sidecar[role])[r0:r1]}
        return part.prepare(replace(tp, shape=(r1 - r0,) + tuple(tp.shape[1:])))

"""A model source: a checkpoint bound to its ``ModelSpec``, and where its scales come from.

What the planner consumes (``make_plan(src.spec, recipe, binding=src.binding, ...)``) and what
``inspect`` reports; ``pipeline`` and ``inspect`` both open a path through ``open_source``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import has_weight_files, open_checkpoint
from ..errors import InputError
from ..gemma4 import Binding, Inventory, ModelSpec, bind, inventory_from_spec, spec_from_config, spec_from_path
from .codebooks import CODEBOOKS_NAME, read_qat_codebooks
from .scales import SIDECAR_NAME, parse_ct_config, read_qat_sidecar


@dataclass(frozen=True)
class Source:
    """A model source: a checkpoint directory (weights bound) or a bare config (counts only)."""

    path: Path
    spec: ModelSpec
    inventory: Inventory
    binding: Binding | None
    scale_sources: dict[str, str]


def has_weights(path: Path) -> bool:
    """A checkpoint directory (weights, an index or pickles), not a bare config."""
    return has_weight_files(path)


def open_source(path: str | Path) -> Source:
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or directory", path=p)
    if not has_weights(p):
        spec = spec_from_path(p)
        return Source(p, spec, inventory_from_spec(spec), None, {})
    ckpt = open_checkpoint(p)
    spec = spec_from_config(ckpt.config, source=p / "config.json")
    binding = bind(spec, ckpt.tensors, source=p)
    return Source(p, spec, binding.inventory, binding, detect_scale_sources(p, ckpt.config, binding))


def detect_scale_sources(path: Path, config: dict, binding: Binding) -> dict[str, str]:
    """Roles whose scales the checkpoint carries: QAT sidecar or compressed-tensors."""
    out: dict[str, str] = {}
    sidecar = path / SIDECAR_NAME
    if sidecar.is_file():
        for role in read_qat_sidecar(sidecar).scales:
            out[role] = "qat_sidecar"
    books = path / CODEBOOKS_NAME
    if books.is_file():
        for role in read_qat_codebooks(books):
            out[role] = "qat_codebooks"
    qc = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
    if qc:
        parse_ct_config(qc, source=path / "config.json")
        for canonical in binding.quantized:
            out[canonical[: -len(".weight")]] = "compressed_tensors"
    return out

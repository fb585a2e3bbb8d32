"""``make_plan(spec, recipe)`` → ``QuantPlan``: every text tensor's scheme, scale source and exact bytes.

Bytes are what the LiteRT files will hold for the tensor: packed codes, plus per-channel float32
scales and int64 zero points (LiteRT's QuantizationParameters), float16 block scales, or float32
codebooks. The plan follows Google's LiteRT-LM split: the embedder model holds ``embed_tokens``
(memory-mapped: only looked-up rows become resident) and the prefill/decode model holds the tied
LM head (``lm_head``, the same codes and scales, resident).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

from ..errors import InputError, RecipeError
from ..gemma4 import ModelSpec, TensorSpec
from ..gemma4.names import LM_HEAD, TIED_TO, text_tensors, tied_roles
from .config import AffineConfig, DictionaryConfig, Granularity, KVCacheConfig, config_from_dict, config_to_dict
from .formats import format_of, packed_nbytes
from .recipe import Recipe, resolve, resolve_shared

SCALE_SOURCES = {
    "none": "float tensor: no scales",
    "ptq": "computed at conversion from max|w| (post-training; no QAT scales found)",
    "qat_sidecar": "from the QAT scale sidecar (qat_scales.safetensors)",
    "compressed_tensors": "from the checkpoint's compressed-tensors weight_scale",
    "grid": "recovered exactly from weights stored on the QAT grid",
    "kmeans": "codebooks fitted by deterministic k-means at conversion",
    "qat_codebooks": "trained codebooks from the QAT codebook sidecar (qat_codebooks.safetensors)",
}


@dataclass(frozen=True)
class TensorPlan:
    name: str                 # canonical tensor name ("lm_head" for the tied head's copy)
    role: str
    component: str
    shape: tuple[int, ...]
    scheme: str               # float32 | int8 | int4 | int2 | int4/b32 | dict4x16/r64
    config: AffineConfig | DictionaryConfig | None
    scale_source: str         # key of SCALE_SOURCES
    mapped: bool              # memory-mapped on demand (only touched rows resident)
    data_bytes: int           # codes (or float data)
    overhead_bytes: int       # scales, zero points, codebooks
    model: str                # which LiteRT model holds it: prefill_decode | embedder | per_layer_embedder

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.data_bytes + self.overhead_bytes

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / self.numel

    def to_json(self) -> dict:
        d = asdict(self)
        d["config"] = config_to_dict(self.config)   # the recipe's form: one tag scheme
        d["shape"] = list(self.shape)
        d["bits_per_weight"] = round(self.bits_per_weight, 4)
        return d

    @classmethod
    def from_json(cls, d: Mapping, *, source=None) -> "TensorPlan":
        """Inverse of ``to_json`` (``bits_per_weight`` is derived, and the keys plan.json's writer
        adds beside these are ignored). A row that lacks a key or holds a wrong type is one
        ``InputError`` naming ``source`` and the tensor."""
        name = d.get("name") if isinstance(d, Mapping) else None
        missing = [k for k in _ROW_KEYS if not isinstance(d, Mapping) or k not in d]
        if missing:
            raise InputError(f"plan row lacks {missing[0]!r}: written by an older edge-sdk", path=source,
                             tensor=name, fix="convert the checkpoint again with `edge-sdk convert`")
        try:
            return cls(name=str(d["name"]), role=str(d["role"]), component=str(d["component"]),
                       shape=tuple(int(x) for x in d["shape"]), scheme=str(d["scheme"]),
                       config=config_from_dict(d["config"], where=f"tensor {name} config", src=source),
                       scale_source=str(d["scale_source"]), mapped=bool(d["mapped"]),
                       data_bytes=int(d["data_bytes"]), overhead_bytes=int(d["overhead_bytes"]),
                       model=str(d["model"]))
        except (TypeError, ValueError) as e:
            raise InputError(f"plan row holds a wrong type ({e})", path=source, tensor=name,
                             fix="convert the checkpoint again with `edge-sdk convert`") from None


_ROW_KEYS = ("name", "role", "component", "shape", "scheme", "config", "scale_source", "mapped",
             "data_bytes", "overhead_bytes", "model")


@dataclass(frozen=True)
class QuantPlan:
    recipe: Recipe
    spec: ModelSpec
    tensors: tuple[TensorPlan, ...]

    @property
    def kv_cache(self) -> KVCacheConfig:
        return self.recipe.kv_cache

    def by_name(self) -> dict[str, TensorPlan]:
        return {t.name: t for t in self.tensors}

    def ledger(self) -> dict[str, dict]:
        """Per component: params, bytes, bits per weight (overhead included), resident/mapped."""
        out: dict[str, dict] = {}
        for t in self.tensors:
            row = out.setdefault(t.component, {"params": 0, "bytes": 0, "resident_bytes": 0, "mapped_bytes": 0})
            row["params"] += t.numel
            row["bytes"] += t.nbytes
            row["mapped_bytes" if t.mapped else "resident_bytes"] += t.nbytes
        for row in out.values():
            row["bits_per_weight"] = round(8 * row["bytes"] / row["params"], 4) if row["params"] else 0.0
        return out

    @property
    def resident_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if not t.mapped)

    @property
    def mapped_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.mapped)


def plan_from_rows(spec: ModelSpec, recipe: Recipe, rows, *, source=None) -> QuantPlan:
    """A converted model's plan from what it recorded: the rows of its plan.json (one
    ``TensorPlan.to_json`` per written tensor), the spec its recorded source config gives, and its
    recipe. The memory figures of a converted model come from these, not from re-planning its
    source checkpoint (which may have moved)."""
    return QuantPlan(recipe, spec, tuple(TensorPlan.from_json(r, source=source) for r in rows))


def scheme_name(cfg) -> str:
    return format_of(cfg).scheme(cfg)


def tensor_bytes(shape: tuple[int, ...], cfg) -> tuple[int, int]:
    """(data bytes, overhead bytes) of one tensor under ``cfg`` as LiteRT stores it (the format's
    one formula, ``quant.formats``)."""
    return format_of(cfg).nbytes(shape, cfg)


def expert_bytes(shape: tuple[int, ...], cfg) -> tuple[int, int]:
    """(data, overhead) bytes of an MoE expert stack [E, out, in] as the graph stores it
    (``litert/gemma4_moe.py``): packed codes, and one float32 scale per expert and output row in a
    constant of its own [E, out] (GATHERed with the routed experts; no LiteRT quantization
    parameters, no zero points)."""
    numel = math.prod(shape)
    if cfg is None:
        return numel * 4, 0
    return packed_nbytes(numel, cfg.bits), shape[0] * shape[1] * 4


def _check_kind(t: TensorSpec, cfg) -> None:
    if cfg is None:
        return
    if t.kind in ("norm", "scalar"):
        raise RecipeError(f"recipe quantizes '{t.role}', a {t.kind}; norms and scalars stay float",
                          tensor=t.name, fix="add a rule mapping it to null, or narrow the pattern")
    if t.kind == "experts" and (format_of(cfg).lookup_only or cfg.granularity is not Granularity.CHANNEL
                                or cfg.bits == 2):
        raise RecipeError(f"'{t.role}' (MoE experts) takes int8 or int4 per-channel configs: the graph GATHERs "
                          "the routed experts' codes and CASTs them (LiteRT has no GATHER of INT2, and block "
                          "scales are not carried)", tensor=t.name,
                          fix="use {\"type\": \"affine\", \"bits\": 4, \"granularity\": \"channel\"}")
    if format_of(cfg).lookup_only and t.kind != "embedding":
        raise RecipeError(f"dictionary coding is for embedding tables (GATHER); '{t.role}' is a {t.kind}",
                          tensor=t.name, fix="use an affine config for linear layers")


def make_plan(spec: ModelSpec, recipe: Recipe, *,
              scale_sources: Mapping[str, str] | None = None) -> QuantPlan:
    """Resolve ``recipe`` for every text tensor of ``spec``.

    ``scale_sources`` maps roles to a key of ``SCALE_SOURCES`` where the checkpoint carries
    precomputed scales; other quantized tensors are planned as ``ptq`` (affine) or ``kmeans``.
    """
    scale_sources = dict(scale_sources or {})
    text = spec.text
    plans = []
    for t in text_tensors(text):
        roles = tied_roles(text, t.role)
        cfg = resolve_shared(recipe, roles) if len(roles) > 1 else resolve(recipe, t.role)
        _check_kind(t, cfg)
        fmt = format_of(cfg)
        data, over = expert_bytes(t.shape, cfg) if t.kind == "experts" else fmt.nbytes(t.shape, cfg)
        src = "none" if cfg is None else scale_sources.get(t.role, fmt.default_source)
        if t.role == "embed_tokens":
            model, mapped = "embedder", True
        elif t.role == "embed_tokens_per_layer":
            model, mapped = "per_layer_embedder", True
        elif t.kind == "experts":   # GATHERed by routed expert: only those pages are read (docs/moe.md)
            model, mapped = "prefill_decode", True
        else:
            model, mapped = "prefill_decode", False
        plans.append(TensorPlan(t.name, t.role, t.component, t.shape, fmt.scheme(cfg), cfg, src,
                                mapped, data, over, model))
        if t.name == TIED_TO:  # the tied LM head: same codes, resident in prefill_decode
            plans.append(TensorPlan(LM_HEAD, LM_HEAD, LM_HEAD, t.shape, fmt.scheme(cfg), cfg, src,
                                    False, data, over, "prefill_decode"))
    return QuantPlan(recipe=recipe, spec=spec, tensors=tuple(plans))

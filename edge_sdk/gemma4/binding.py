"""Bind a ``ModelSpec`` to a checkpoint's tensors, and strip modalities — in one place.

``bind`` checks that the checkpoint holds exactly the text tensors the config implies (shapes
included), maps canonical names to checkpoint names, and sorts everything else into towers
(vision, audio) or quietly-dropped leftovers (k/v of KV-shared layers, a tied ``lm_head``).
``strip_report`` says what ``--text-only`` removes, per component. ``inventory_from_spec`` does the
same accounting from the config alone (no weights needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Protocol

from ..errors import ConfigError
from .model import ModelSpec
from .names import classify, detect_prefix, text_tensors


class StoredTensor(Protocol):
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


@dataclass(frozen=True)
class Count:
    params: int = 0
    bytes: int = 0

    def __add__(self, other: "Count") -> "Count":
        return Count(self.params + other.params, self.bytes + other.bytes)


@dataclass(frozen=True)
class Inventory:
    """Per-component parameters and bytes of a checkpoint (or of a config, estimated)."""

    by_component: dict[str, Count]
    removed_by_text_only: dict[str, Count]
    dtype: str
    from_weights: bool

    @property
    def total(self) -> Count:
        return sum(self.by_component.values(), Count())

    @property
    def kept(self) -> Count:
        return self.total + Count(-self.removed.params, -self.removed.bytes)

    @property
    def removed(self) -> Count:
        return sum(self.removed_by_text_only.values(), Count())


@dataclass(frozen=True)
class Binding:
    """Canonical text-tensor name → checkpoint tensor name, plus what else the checkpoint holds."""

    spec: ModelSpec
    prefix: str
    text: dict[str, str]                     # canonical → stored name
    towers: dict[str, tuple[str, ...]]       # "vision"/"audio" → stored names
    unused: tuple[str, ...]                  # dropped quietly (shared-layer k/v, tied lm_head)
    inventory: Inventory = field(compare=False)
    quantized: dict[str, tuple[str, ...]] = field(default_factory=dict)  # canonical → compressed-tensors parts


_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def bind(spec: ModelSpec, stored: Mapping[str, StoredTensor], *, source=None) -> Binding:
    expected = {t.name: t for t in text_tensors(spec.text)}
    names = set(stored)
    prefix = detect_prefix(names)
    text: dict[str, str] = {}
    towers: dict[str, list[str]] = {"vision": [], "audio": []}
    unused: list[str] = []
    unknown: list[str] = []
    by_comp: dict[str, Count] = {}
    removed: dict[str, Count] = {}
    dtypes: dict[str, int] = {}
    quantized: dict[str, list[str]] = {}
    for name in sorted(names):
        info = stored[name]
        m = classify(name, frozenset(expected), prefix)
        cnt = Count(math.prod(info.shape), info.nbytes)
        ct = _ct_base(name, prefix, expected) if m.section == "unknown" else None
        if ct is not None:  # compressed-tensors parts of a quantized weight: shapes checked on read
            base, canonical = ct
            quantized.setdefault(canonical, []).append(name)
            text.setdefault(canonical, base)
            comp = expected[canonical].component
            params = expected[canonical].numel if name.endswith(".weight_packed") else 0
            by_comp[comp] = by_comp.get(comp, Count()) + Count(params, cnt.bytes)
            continue
        if m.section == "text":
            exp = expected[m.canonical]
            if tuple(info.shape) != exp.shape:
                raise ConfigError(
                    f"config.json implies shape {list(exp.shape)} but the weights hold {list(info.shape)}",
                    path=source, tensor=name,
                    fix="use the config.json that was saved with these weights")
            text[m.canonical] = name
            by_comp[exp.component] = by_comp.get(exp.component, Count()) + cnt
            dtypes[info.dtype] = dtypes.get(info.dtype, 0) + cnt.params
        elif m.section in towers:
            towers[m.section].append(name)
            by_comp[m.section] = by_comp.get(m.section, Count()) + cnt
            removed[m.section] = removed.get(m.section, Count()) + cnt
        elif m.section == "unused":
            unused.append(name)
            removed["unused"] = removed.get("unused", Count()) + cnt
            by_comp["unused"] = by_comp.get("unused", Count()) + cnt
        else:
            unknown.append(name)
    _check_bound(spec, prefix, expected, text, towers, unknown, quantized, stored, source)
    main_dtype = max(dtypes, key=dtypes.get) if dtypes else "BF16"
    inv = Inventory(by_component=by_comp, removed_by_text_only=removed, dtype=main_dtype, from_weights=True)
    return Binding(spec, prefix, text, {k: tuple(v) for k, v in towers.items()}, tuple(unused), inv,
                   {k: tuple(sorted(v)) for k, v in quantized.items()})


def _check_bound(spec: ModelSpec, prefix: str, expected, text: dict, towers: dict, unknown: list,
                 quantized: dict, stored: Mapping[str, StoredTensor], source) -> None:
    """What ``bind`` refuses once every stored name is classified: names the table does not know,
    tensors the config implies but the weights lack, towers that differ from their config, and
    compressed-tensors modules without their codes."""
    if unknown:
        more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise ConfigError(
            f"{len(unknown)} tensor(s) the Gemma 4 name table does not know, e.g. {unknown[:3]}{more}; "
            f"text prefix detected: {prefix!r}", path=source, tensor=unknown[0],
            fix="check that config.json matches these weights (model_type, layer count, PLE, MoE)")
    missing = sorted(set(expected) - set(text))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ConfigError(f"config.json implies {len(missing)} tensor(s) the weights lack, e.g. "
                          f"{[prefix + m for m in missing[:3]]}{more}", path=source, tensor=prefix + missing[0],
                          fix="use the config.json that was saved with these weights")
    for tower in spec.towers:
        _check_tower(tower, towers[tower.name], stored, source)
    for canonical, parts in quantized.items():
        if not any(p.endswith((".weight_packed", ".weight")) for p in parts):
            raise ConfigError("compressed-tensors module without weight_packed", path=source,
                              tensor=prefix + canonical)


def _check_tower(tower, names: list[str], stored: Mapping[str, StoredTensor], source) -> None:
    """The stored vision/audio tensors are exactly those the tower's config implies, with its shapes
    (nothing to check when the config alone cannot say: ``tower.tensors is None``)."""
    if tower.tensors is None:
        return
    expected = dict(tower.tensors)
    fix = "use the config.json that was saved with these weights"
    for name in names:
        shape = tuple(stored[name].shape)
        if name not in expected:
            raise ConfigError(f"config.json's {tower.name}_config implies no such {tower.name} tensor "
                              f"(layer count or options differ)", path=source, tensor=name, fix=fix)
        if shape != tuple(expected[name]):
            raise ConfigError(f"config.json's {tower.name}_config implies shape {list(expected[name])} but "
                              f"the weights hold {list(shape)}", path=source, tensor=name, fix=fix)
    missing = [n for n in expected if n not in set(names)]
    if missing and names:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"config.json's {tower.name}_config implies {len(missing)} {tower.name} tensor(s) "
                          f"the weights lack{more}", path=source, tensor=missing[0], fix=fix)


_CT_SUFFIXES = (".weight_packed", ".weight_scale", ".weight_zero_point", ".weight_shape", ".weight_g_idx")


def _ct_base(name: str, prefix: str, expected) -> tuple[str, str] | None:
    """``<prefix><module>.weight_packed`` etc. → (module name as stored, canonical weight name)."""
    if not name.startswith(prefix):
        return None
    for suffix in _CT_SUFFIXES:
        if name.endswith(suffix):
            canonical = name[len(prefix):-len(suffix)] + ".weight"
            if canonical in expected:
                return name[:-len(suffix)], canonical
    return None


def inventory_from_spec(spec: ModelSpec, dtype: str = "BF16") -> Inventory:
    """Counts from config.json alone: every element transformers would store, at ``dtype``."""
    nb = _DTYPE_BYTES[dtype]
    by_comp: dict[str, Count] = {}
    for t in text_tensors(spec.text):
        by_comp[t.component] = by_comp.get(t.component, Count()) + Count(t.numel, t.numel * nb)
    removed: dict[str, Count] = {}
    for tower in spec.towers:
        if tower.numel is None:
            continue
        c = Count(tower.numel, tower.numel * nb)
        by_comp[tower.name] = c
        removed[tower.name] = c
    return Inventory(by_component=by_comp, removed_by_text_only=removed, dtype=dtype, from_weights=False)

"""Gemma 4's layer geometry, derived from a text config: one function per fact, as transformers 5.23
derives it (``configuration_gemma4.py`` ``Gemma4TextConfig.__post_init__`` / ``kv_sharing_modes``,
``modeling_gemma4.py`` ``Gemma4TextAttention`` / ``Gemma4TextMLP``).

``c`` is the text config with transformers' defaults filled in (``config._text_spec`` merges them).
The facts, per layer ``i``:

- ``layer_types``: "sliding_attention" / "full_attention" for every layer; absent, every 6th layer is
  full (5:1); the last layer is forced to full either way.
- ``layer_kind``: "sliding" / "full" (the ``LayerSpec.attention`` vocabulary).
- ``first_kv_shared_layer``: the last ``num_kv_shared_layers`` layers compute only q.
- ``kv_source_layer``: whose K/V a layer attends to: itself, or for a KV-shared layer the last
  earlier non-shared layer of its own type (transformers' "store" layer of that type).
- ``per_layer_config``: the full-attention overrides, from the hub form (``global_head_dim``,
  ``num_global_key_value_heads`` when ``attention_k_eq_v``) or transformers' re-saved
  ``per_layer_config`` (keyed by layer index or layer type).
- ``head_dim`` / ``kv_heads``: the config's, unless overridden for the layer.
- ``mlp_width``: ``intermediate_size``, doubled in KV-shared layers with ``use_double_wide_mlp``.
- ``window``: ``sliding_window`` on sliding layers, None on full ones.
- ``k_eq_v``: full layers of an ``attention_k_eq_v`` model have no v_proj (V is K's projection).
- ``ropes``: the RoPE of each layer type.

``layers`` puts them together as ``LayerSpec``s. Every reader (planner, graph builder, reference)
reads the ``LayerSpec`` / ``TextSpec`` these functions fill in; ``tests/test_gemma4_geometry.py``
pins each against transformers' own config and modules for the committed configs.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..checkpoint.strict_json import short
from ..errors import ConfigError
from .model import AttentionKind, LayerSpec, RopeSpec

SLIDING, FULL = "sliding_attention", "full_attention"
LAYER_KINDS: dict[str, AttentionKind] = {SLIDING: "sliding", FULL: "full"}
SLIDING_PATTERN = 6   # transformers' default layer_types: every 6th layer full (5:1)
DEFAULT_ROPE = {
    SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
    FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}
DEFAULT_GLOBAL_HEAD_DIM = 512   # Gemma4TextConfig: kwargs.pop("global_head_dim", 512)

Overrides = dict[int, dict[str, Any]]


def layer_types(c: Mapping, source=None) -> tuple[str, ...]:
    """Every layer's type, as ``Gemma4TextConfig.layer_types`` after ``__post_init__``."""
    n = c["num_hidden_layers"]
    types = c.get("layer_types")
    if types is None:
        types = [SLIDING if (i + 1) % SLIDING_PATTERN else FULL for i in range(n)]
    types = list(types)
    if len(types) != n:
        raise ConfigError(f"layer_types has {len(types)} entries but num_hidden_layers is {n}", path=source)
    bad = sorted(set(types) - set(LAYER_KINDS))
    if bad:
        raise ConfigError(f"unknown layer type(s) {bad}; expected {sorted(LAYER_KINDS)}", path=source)
    types[-1] = FULL  # transformers forces the last layer to full attention
    return tuple(types)


def layer_kind(types: tuple[str, ...], i: int) -> AttentionKind:
    return LAYER_KINDS[types[i]]


def first_kv_shared_layer(c: Mapping, source=None) -> int:
    """The first layer that reads another layer's K/V (``num_hidden_layers`` when none does)."""
    n = c["num_hidden_layers"]
    shared = c.get("num_kv_shared_layers") or 0
    if isinstance(shared, bool) or not isinstance(shared, int) or shared < 0:
        raise ConfigError(f"'num_kv_shared_layers' must be an integer >= 0, got {short(shared)}", path=source)
    if shared >= n:
        raise ConfigError(f"num_kv_shared_layers={shared} leaves no layer to produce a KV cache", path=source)
    return n - shared


def kv_source_layer(types: tuple[str, ...], first_shared: int, i: int, source=None) -> int:
    """The layer whose K/V layer ``i`` attends to: itself, or the last non-shared layer of its type."""
    if i < first_shared:
        return i
    producers = types[:first_shared]
    if types[i] not in producers:
        raise ConfigError(f"KV-shared layer {i} ({types[i]}) has no earlier layer of its type "
                          "to read a KV cache from", path=source)
    return first_shared - 1 - producers[::-1].index(types[i])


def per_layer_config(raw: Mapping, c: Mapping, types: tuple[str, ...], source=None) -> tuple[str, Overrides]:
    """(config form, {layer: {"head_dim"?, "num_key_value_heads"?}}): transformers' ``per_layer_config``,
    read as saved ("per_layer_config") or made from the hub form's ``global_*`` keys ("hub")."""
    n = len(types)
    if raw.get("per_layer_config") is None:
        full = {"head_dim": c.get("global_head_dim") or DEFAULT_GLOBAL_HEAD_DIM}
        if c.get("attention_k_eq_v") and c.get("num_global_key_value_heads") is not None:
            full["num_key_value_heads"] = c["num_global_key_value_heads"]
        return "hub", {i: dict(full) for i, lt in enumerate(types) if lt == FULL}
    plc = raw["per_layer_config"]
    if not isinstance(plc, dict):
        raise ConfigError("per_layer_config must be an object keyed by layer index", path=source)
    overrides: Overrides = {}
    for key, val in plc.items():
        if key in LAYER_KINDS:
            idxs = [i for i, lt in enumerate(types) if lt == key]
        else:
            try:
                idxs = [int(key)]
            except ValueError:
                raise ConfigError(f"per_layer_config key {short(key)} is neither a layer index nor a layer type",
                                  path=source) from None
        for i in idxs:
            if not 0 <= i < n:
                raise ConfigError(f"per_layer_config names layer {i}; the model has {n}", path=source)
            overrides.setdefault(i, {}).update({k: v for k, v in (val or {}).items() if v is not None})
    return "per_layer_config", overrides


def head_dim(c: Mapping, overrides: Overrides, i: int) -> int:
    return int(overrides.get(i, {}).get("head_dim", c["head_dim"]))


def kv_heads(c: Mapping, overrides: Overrides, i: int) -> int:
    return int(overrides.get(i, {}).get("num_key_value_heads", c["num_key_value_heads"]))


def mlp_width(c: Mapping, first_shared: int, i: int) -> int:
    """``Gemma4TextMLP.intermediate_size``: doubled in KV-shared layers with ``use_double_wide_mlp``."""
    double = bool(c.get("use_double_wide_mlp")) and i >= first_shared
    return c["intermediate_size"] * (2 if double else 1)


def window(c: Mapping, types: tuple[str, ...], i: int) -> int | None:
    return c["sliding_window"] if layer_kind(types, i) == "sliding" else None


def k_eq_v(c: Mapping, types: tuple[str, ...], i: int) -> bool:
    return bool(c.get("attention_k_eq_v", False)) and layer_kind(types, i) == "full"


def ropes(c: Mapping, types: tuple[str, ...], source=None) -> dict[str, RopeSpec]:
    """The RoPE of each layer type present (``rope_parameters``, else transformers' defaults)."""
    params = c.get("rope_parameters") or DEFAULT_ROPE
    out = {}
    for lt in sorted(set(types)):
        rp = params.get(lt)
        if not isinstance(rp, dict) or "rope_theta" not in rp:
            raise ConfigError(f"rope_parameters['{lt}'] missing or without rope_theta", path=source)
        kind = rp.get("rope_type") or "default"
        if kind not in ("default", "proportional"):
            raise ConfigError(f"rope_type {short(kind)} for {lt} not supported (default, proportional)",
                              path=source)
        prf, factor = rp.get("partial_rotary_factor"), rp.get("factor")
        out[lt] = RopeSpec(theta=float(rp["rope_theta"]), kind=kind,
                           partial_rotary_factor=1.0 if prf is None else float(prf),
                           factor=1.0 if factor is None else float(factor))
    return out


def layers(raw: Mapping, c: Mapping, source=None) -> tuple[str, tuple[LayerSpec, ...]]:
    """(config form, every layer's ``LayerSpec``) from the raw text config and its defaulted view ``c``."""
    types = layer_types(c, source)
    rope = ropes(c, types, source)
    form, overrides = per_layer_config(raw, c, types, source)
    first_shared = first_kv_shared_layer(c, source)
    sources = [kv_source_layer(types, first_shared, i, source) for i in range(len(types))]
    out = tuple(LayerSpec(
        index=i, attention=layer_kind(types, i), head_dim=head_dim(c, overrides, i),
        num_kv_heads=kv_heads(c, overrides, i), intermediate_size=mlp_width(c, first_shared, i),
        kv_source=sources[i], k_eq_v=k_eq_v(c, types, i), rope=rope[types[i]], window=window(c, types, i),
    ) for i in range(len(types)))
    for layer in out:
        if c["num_attention_heads"] % layer.num_kv_heads:
            raise ConfigError(f"layer {layer.index}: num_attention_heads={c['num_attention_heads']} is not a "
                              f"multiple of its {layer.num_kv_heads} KV heads", path=source)
    return form, out

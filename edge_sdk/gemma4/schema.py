"""config.json as data: the one place that owns the types and ranges of every key we read.

``validate_config(cfg, source)`` runs once, before anything reads a value (``spec_from_config``
calls it first): every key that ``spec.config``, ``spec.towers``, ``quant.scales.parse_ct_config`` or
the pipeline reads is checked for its JSON type and range, so later code can use ``int()``, ``.get()``,
division and ``range()`` without guarding. A bad value is one ``ConfigError`` line naming the file
and the key (``text_config.rope_parameters.full_attention.rope_theta``).

Ranges bound every size by what a checkpoint can hold before anything is allocated or iterated:
no Gemma 4 tower has more than 60 layers, a hidden size above 5,376 or a vocabulary above 262,144;
the caps below leave orders of magnitude of room and still keep a loop over layers or a list of
tensor shapes small. Keys we do not read are not checked (configs carry many).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..checkpoint.strict_json import short
from ..errors import ConfigError

MAX_LAYERS = 1024            # decoder or tower layers (Gemma 4: ≤ 60)
MAX_DIM = 1 << 20            # hidden / intermediate / head sizes (Gemma 4: ≤ 21,504)
MAX_VOCAB = 1 << 24          # vocabulary sizes (Gemma 4: 262,144)
MAX_HEADS = 1 << 12          # attention / KV heads (Gemma 4: ≤ 32)
MAX_EXPERTS = 1 << 14        # MoE experts (Gemma 4: 128)
MAX_TOKENS = 1 << 24         # sliding window, position table (Gemma 4: ≤ 10,240)
MAX_KERNEL = 1 << 12         # patch / pooling / conv kernel sizes
MAX_TOKEN_ID = (1 << 31) - 1
MAX_ITEMS = 4096             # lists and maps of names (targets, ignore, eos ids, config groups)

_FIX = "restore config.json from the model's original directory (or fix that key)"


# ---------------------------------------------------------------- rules

@dataclass(frozen=True)
class Int:
    lo: int
    hi: int
    null: bool = True          # null: the key takes its default (as if absent)

    def check(self, v: Any) -> str | None:
        if v is None and self.null:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer in [{self.lo}, {self.hi}]"
        if not self.lo <= v <= self.hi:
            return f"must be an integer in [{self.lo}, {self.hi}]"
        return None


@dataclass(frozen=True)
class Float:
    lo: float                  # exclusive when lo_open
    hi: float
    lo_open: bool = True
    null: bool = True

    def check(self, v: Any) -> str | None:
        if v is None and self.null:
            return None
        lo = "(" if self.lo_open else "["
        want = f"must be a finite number in {lo}{self.lo:g}, {self.hi:g}]"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return want
        try:
            x = float(v)
        except OverflowError:
            return want
        if not math.isfinite(x) or x > self.hi or x < self.lo or (self.lo_open and x == self.lo):
            return want
        return None


@dataclass(frozen=True)
class Bool:
    null: bool = True

    def check(self, v: Any) -> str | None:
        if (v is None and self.null) or isinstance(v, bool):
            return None
        return "must be true or false"


@dataclass(frozen=True)
class Str:
    null: bool = True
    max_len: int = 256

    def check(self, v: Any) -> str | None:
        if v is None and self.null:
            return None
        if not isinstance(v, str) or len(v) > self.max_len:
            return f"must be a string (at most {self.max_len} characters)"
        return None


@dataclass(frozen=True)
class Any_:
    def check(self, v: Any) -> str | None:
        return None


@dataclass(frozen=True)
class Either:
    """One of several rules (e.g. an id or a list of ids)."""

    rules: tuple
    what: str


@dataclass(frozen=True)
class List:
    item: Any
    max_len: int = MAX_ITEMS
    min_len: int = 0
    null: bool = True


@dataclass(frozen=True)
class Map:
    """An object whose values all follow ``value`` (keys are free-form strings)."""

    value: Any
    max_len: int = MAX_ITEMS
    null: bool = True


@dataclass(frozen=True)
class Obj:
    """An object with known keys (others are not ours to check)."""

    fields: dict
    null: bool = True


# ---------------------------------------------------------------- the schema

_ROPE = Obj({
    "rope_type": Str(),
    "rope_theta": Float(0.0, 1e30, null=False),
    "partial_rotary_factor": Float(0.0, 1.0),
    "factor": Float(0.0, 1e6),
})

_CT_WEIGHTS = Obj({
    "num_bits": Int(1, 64), "type": Str(), "strategy": Str(), "symmetric": Bool(),
    "group_size": Int(1, 1 << 31), "dynamic": Any_(),
})

QUANTIZATION = Obj({
    "quant_method": Str(), "format": Str(),
    "config_groups": Map(Obj({"targets": List(Str(null=False)), "weights": _CT_WEIGHTS, "format": Str(),
                              "input_activations": Any_(), "output_activations": Any_()}, null=False)),
    "ignore": List(Str(null=False)),
})

_PER_LAYER = Obj({"head_dim": Int(1, MAX_DIM), "num_key_value_heads": Int(1, MAX_HEADS)})

TEXT = Obj({
    "model_type": Str(),
    "vocab_size": Int(1, MAX_VOCAB, null=False),
    "hidden_size": Int(1, MAX_DIM, null=False),
    "intermediate_size": Int(1, MAX_DIM, null=False),
    "num_hidden_layers": Int(1, MAX_LAYERS, null=False),
    "num_attention_heads": Int(1, MAX_HEADS, null=False),
    "num_key_value_heads": Int(1, MAX_HEADS, null=False),
    "head_dim": Int(1, MAX_DIM, null=False),
    "sliding_window": Int(1, MAX_TOKENS, null=False),
    "global_head_dim": Int(1, MAX_DIM),
    "num_global_key_value_heads": Int(1, MAX_HEADS),
    "num_kv_shared_layers": Int(0, MAX_LAYERS),
    "hidden_size_per_layer_input": Int(0, MAX_DIM),
    "vocab_size_per_layer_input": Int(0, MAX_VOCAB),
    "num_experts": Int(0, MAX_EXPERTS),
    "top_k_experts": Int(0, MAX_EXPERTS),
    "moe_intermediate_size": Int(0, MAX_DIM),
    "rms_norm_eps": Float(0.0, 1.0),
    "final_logit_softcapping": Float(0.0, 1e6),
    "hidden_activation": Str(),
    "use_bidirectional_attention": Str(),
    "attention_k_eq_v": Bool(), "use_double_wide_mlp": Bool(), "enable_moe_block": Bool(),
    "tie_word_embeddings": Bool(), "attention_bias": Bool(),
    "bos_token_id": Int(0, MAX_TOKEN_ID), "pad_token_id": Int(0, MAX_TOKEN_ID),
    "eos_token_id": Either((Int(0, MAX_TOKEN_ID), List(Int(0, MAX_TOKEN_ID, null=False))),
                           "an integer token id, a list of them, or null"),
    "layer_types": List(Str(null=False), max_len=MAX_LAYERS),
    "rope_parameters": Obj({"sliding_attention": _ROPE, "full_attention": _ROPE}),
    "per_layer_config": Map(_PER_LAYER, max_len=MAX_LAYERS + 2),
    "quantization_config": QUANTIZATION,
})

VISION = Obj({
    "hidden_size": Int(1, MAX_DIM), "intermediate_size": Int(1, MAX_DIM),
    "num_hidden_layers": Int(0, MAX_LAYERS), "num_attention_heads": Int(1, MAX_HEADS),
    "num_key_value_heads": Int(1, MAX_HEADS), "head_dim": Int(1, MAX_DIM),
    "patch_size": Int(1, MAX_KERNEL), "position_embedding_size": Int(1, MAX_TOKENS),
    "pooling_kernel_size": Int(1, MAX_KERNEL), "output_proj_dims": Int(1, MAX_DIM),
    "use_clipped_linears": Bool(), "standardize": Bool(),
})

AUDIO = Obj({
    "hidden_size": Int(1, MAX_DIM), "num_hidden_layers": Int(0, MAX_LAYERS),
    "num_attention_heads": Int(1, MAX_HEADS),
    "subsampling_conv_channels": List(Int(1, MAX_DIM, null=False), max_len=16, min_len=2),
    "conv_kernel_size": Int(1, MAX_KERNEL), "output_proj_dims": Int(1, MAX_DIM),
    "use_clipped_linears": Bool(),
})

TOP = Obj({
    "model_type": Str(null=False),
    "architectures": List(Str(null=False), max_len=64),
    "text_config": TEXT,
    "vision_config": VISION,
    "audio_config": AUDIO,
    "quantization_config": QUANTIZATION,
    "eos_token_id": TEXT.fields["eos_token_id"],
    "tie_word_embeddings": Bool(),
})


# ---------------------------------------------------------------- checking

def _key(path: str, key: str) -> str:
    k = key if key.isidentifier() or key.isdigit() else short(key, 40)
    return f"{path}.{k}" if path else k


def _fail(path: str, why: str, value: Any, source) -> ConfigError:
    return ConfigError(f"'{path}' {why}, got {short(value)}", path=source, fix=_FIX)


def _check(rule: Any, value: Any, path: str, source) -> None:
    if isinstance(rule, Either):
        for r in rule.rules:
            try:
                _check(r, value, path, source)
                return
            except ConfigError:
                pass
        raise _fail(path, f"must be {rule.what}", value, source)
    if isinstance(rule, (Obj, Map, List)):
        if value is None and rule.null:
            return
        if isinstance(rule, List):
            if not isinstance(value, list):
                raise _fail(path, "must be a list", value, source)
            if not rule.min_len <= len(value) <= rule.max_len:
                raise _fail(path, f"must hold {rule.min_len} to {rule.max_len} items", value, source)
            for i, item in enumerate(value):
                _check(rule.item, item, f"{path}[{i}]", source)
            return
        if not isinstance(value, dict):
            raise _fail(path, "must be an object", value, source)
        if isinstance(rule, Map):
            if len(value) > rule.max_len:
                raise _fail(path, f"must hold at most {rule.max_len} entries", value, source)
            for k, v in value.items():
                _check(rule.value, v, _key(path, k), source)
            return
        for k, sub in rule.fields.items():
            if k in value:
                _check(sub, value[k], _key(path, k), source)
        return
    why = rule.check(value)
    if why:
        raise _fail(path, why, value, source)


def validate_config(cfg: Any, source=None) -> None:
    """Check every key we read in a parsed config.json (top level, ``text_config``, ``vision_config``,
    ``audio_config``, ``quantization_config``, ``rope_parameters``, ``layer_types``,
    ``per_layer_config``); ``ConfigError`` naming the key otherwise. A flat text config
    (``gemma4_text``) carries the text keys at the top level."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"must hold a JSON object, got {short(cfg)}", path=source, fix=_FIX)
    _check(TOP, cfg, "", source)
    if "text_config" not in cfg or cfg.get("model_type") in ("gemma4_text", "gemma4_unified_text"):
        _check(TEXT, cfg, "", source)
    _check_together(cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg,
                    "text_config." if isinstance(cfg.get("text_config"), dict) else "", source)


def _check_together(t: dict, at: str, source) -> None:
    """Ranges that depend on two keys."""
    layers = t.get("num_hidden_layers")
    types = t.get("layer_types")
    if isinstance(types, list) and isinstance(layers, int) and len(types) != layers:
        raise ConfigError(f"{at}layer_types has {len(types)} entries but {at}num_hidden_layers is {layers}",
                          path=source, fix=_FIX)
    shared = t.get("num_kv_shared_layers")
    if isinstance(shared, int) and isinstance(layers, int) and shared >= layers:
        raise ConfigError(f"{at}num_kv_shared_layers={shared} leaves no layer of the {layers} to produce a "
                          "KV cache", path=source, fix=_FIX)
    top_k, experts = t.get("top_k_experts"), t.get("num_experts")
    if isinstance(top_k, int) and isinstance(experts, int) and experts and top_k > experts:
        raise ConfigError(f"{at}top_k_experts={top_k} exceeds {at}num_experts={experts}",
                          path=source, fix=_FIX)

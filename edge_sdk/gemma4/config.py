"""``config.json`` → ``ModelSpec``.

Accepts what Google publishes (``model_type: gemma4``, nested ``text_config`` with ``global_head_dim`` /
``num_global_key_value_heads``), what transformers re-saves (``per_layer_config`` keyed by layer index),
flat text configs (``gemma4_text``) and ``gemma4_unified``. Absent keys take transformers 5.23's
defaults, held here as data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint.directory import check_links, load_json
from ..checkpoint.strict_json import short
from ..errors import ConfigError
from .model import LayerSpec, ModelSpec, RopeSpec, TextSpec, TowerSpec
from .schema import validate_config

SUPPORTED = {
    # model_type: (text lives in, text defaults key)
    "gemma4": ("text_config", "gemma4_text"),
    "gemma4_unified": ("text_config", "gemma4_unified_text"),
    "gemma4_text": (None, "gemma4_text"),
    "gemma4_unified_text": (None, "gemma4_unified_text"),
}

# transformers 5.23 Gemma4TextConfig / Gemma4UnifiedTextConfig class defaults.
_TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma4_text": dict(
        vocab_size=262_144, hidden_size=2304, intermediate_size=9216, num_hidden_layers=30,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
        attention_bias=False, sliding_window=512, final_logit_softcapping=None,
        use_bidirectional_attention=None, vocab_size_per_layer_input=262_144,
        hidden_size_per_layer_input=256, attention_k_eq_v=False, num_kv_shared_layers=0,
        enable_moe_block=False, use_double_wide_mlp=False, num_experts=None, top_k_experts=None,
        moe_intermediate_size=None, global_head_dim=512, num_global_key_value_heads=None,
    ),
}
_TEXT_DEFAULTS["gemma4_unified_text"] = {
    **_TEXT_DEFAULTS["gemma4_text"], "sliding_window": 1024, "use_bidirectional_attention": "vision",
    "hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0,
}

_DEFAULT_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}
_LAYER_KIND = {"sliding_attention": "sliding", "full_attention": "full"}


def load_config(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        check_links(p)
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError("config.json not found", path=p,
                          fix="point at a Hugging Face checkpoint directory or a config.json file")
    cfg = load_json(p, ConfigError, fix="restore config.json from the model's original directory")
    if not isinstance(cfg, dict):
        raise ConfigError("config.json must hold a JSON object", path=p)
    return cfg


def spec_from_config(cfg: dict, *, source: str | Path | None = None) -> ModelSpec:
    validate_config(cfg, source)   # types and ranges of every key read below (gemma4/schema.py)
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED:
        arch = cfg.get("architectures")
        raise ConfigError(
            f"unknown architecture model_type={short(model_type)} (architectures="
            f"{'[' + ', '.join(short(a) for a in arch[:4]) + ']' if isinstance(arch, list) else short(arch)}); "
            f"supported: {', '.join(sorted(SUPPORTED))}", path=source)
    nest, defaults_key = SUPPORTED[model_type]
    if nest is not None:
        text_cfg = cfg.get(nest)
        if not isinstance(text_cfg, dict):
            raise ConfigError(f"model_type {short(model_type)} needs a '{nest}' object", path=source)
    else:
        text_cfg = cfg
    text, form = _text_spec(text_cfg, _TEXT_DEFAULTS[defaults_key], source)
    vision = audio = None
    if nest is not None:
        vision = _tower("vision", cfg.get("vision_config"), text.hidden_size, model_type)
        audio = _tower("audio", cfg.get("audio_config"), text.hidden_size, model_type)
    return ModelSpec(model_type=model_type, config_form=form, text=text, vision=vision, audio=audio)


def spec_from_path(path: str | Path) -> ModelSpec:
    p = Path(path)
    return spec_from_config(load_config(p), source=p / "config.json" if p.is_dir() else p)


def _tower(name: str, tcfg: Any, text_hidden: int, model_type: str) -> TowerSpec | None:
    if tcfg is None:  # transformers: a missing/null tower builds none; {} builds a default one
        return None
    tensors = None
    if model_type == "gemma4":
        from . import towers  # shapes from config alone (towers.py mirrors modeling_gemma4)

        fn = towers.vision_tensors if name == "vision" else towers.audio_tensors
        tensors = tuple((n, tuple(s)) for n, s in fn(tcfg, text_hidden))
    return TowerSpec(name=name, config=dict(tcfg), tensors=tensors)


def _req_int(c: dict, key: str, source, minimum: int = 0) -> int:
    v = c[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"'{key}' must be an integer >= {minimum}, got {short(v)}", path=source)
    return v


def _text_spec(raw: dict, defaults: dict, source) -> tuple[TextSpec, str]:
    c = {**defaults, **{k: v for k, v in raw.items() if v is not None or k not in defaults}}
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "sliding_window"):
        _req_int(c, key, source, minimum=1)
    n_layers = c["num_hidden_layers"]
    if c.get("use_bidirectional_attention") == "all":
        raise ConfigError("use_bidirectional_attention='all' is an encoder setup, not a causal decoder",
                          path=source)
    if c["hidden_activation"] not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ConfigError(f"hidden_activation {short(c['hidden_activation'])} not supported "
                          "(Gemma 4 uses gelu_pytorch_tanh)", path=source)

    layer_types = c.get("layer_types")
    if layer_types is None:
        layer_types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n_layers)]
    layer_types = list(layer_types)
    if len(layer_types) != n_layers:
        raise ConfigError(f"layer_types has {len(layer_types)} entries but num_hidden_layers is {n_layers}",
                          path=source)
    bad = sorted(set(layer_types) - set(_LAYER_KIND))
    if bad:
        raise ConfigError(f"unknown layer type(s) {bad}; expected {sorted(_LAYER_KIND)}", path=source)
    layer_types[-1] = "full_attention"  # transformers forces the last layer to full attention

    rope_params = c.get("rope_parameters") or _DEFAULT_ROPE
    ropes = {}
    for lt in set(layer_types):
        rp = rope_params.get(lt)
        if not isinstance(rp, dict) or "rope_theta" not in rp:
            raise ConfigError(f"rope_parameters['{lt}'] missing or without rope_theta", path=source)
        kind = rp.get("rope_type") or "default"
        if kind not in ("default", "proportional"):
            raise ConfigError(f"rope_type {short(kind)} for {lt} not supported (default, proportional)",
                              path=source)
        prf, factor = rp.get("partial_rotary_factor"), rp.get("factor")
        ropes[lt] = RopeSpec(theta=float(rp["rope_theta"]), kind=kind,
                             partial_rotary_factor=1.0 if prf is None else float(prf),
                             factor=1.0 if factor is None else float(factor))

    # Full-attention geometry: hub form (global_*) or transformers' per_layer_config.
    k_eq_v = bool(c.get("attention_k_eq_v", False))
    overrides: dict[int, dict] = {}
    if "per_layer_config" in raw and raw["per_layer_config"] is not None:
        form = "per_layer_config"
        plc = raw["per_layer_config"]
        if not isinstance(plc, dict):
            raise ConfigError("per_layer_config must be an object keyed by layer index", path=source)
        for key, val in plc.items():
            if key in _LAYER_KIND:
                idxs = [i for i, lt in enumerate(layer_types) if lt == key]
            else:
                try:
                    idxs = [int(key)]
                except ValueError:
                    raise ConfigError(f"per_layer_config key {short(key)} is neither a layer index nor a layer type",
                                      path=source) from None
            for i in idxs:
                if not 0 <= i < n_layers:
                    raise ConfigError(f"per_layer_config names layer {i}; the model has {n_layers}", path=source)
                overrides.setdefault(i, {}).update({k: v for k, v in (val or {}).items() if v is not None})
    else:
        form = "hub"
        full = {"head_dim": c.get("global_head_dim") or 512}
        if k_eq_v and c.get("num_global_key_value_heads") is not None:
            full["num_key_value_heads"] = c["num_global_key_value_heads"]
        overrides = {i: dict(full) for i, lt in enumerate(layer_types) if lt == "full_attention"}

    n_shared = _req_int(c, "num_kv_shared_layers", source) if c.get("num_kv_shared_layers") else 0
    if n_shared >= n_layers:
        raise ConfigError(f"num_kv_shared_layers={n_shared} leaves no layer to produce a KV cache", path=source)
    first_shared = n_layers - n_shared
    kv_source = list(range(n_layers))
    last_of = {lt: j for j, lt in enumerate(layer_types[:first_shared])}   # last producer per type
    for i in range(first_shared, n_layers):
        if layer_types[i] not in last_of:
            raise ConfigError(f"KV-shared layer {i} ({layer_types[i]}) has no earlier layer of its type "
                              "to read a KV cache from", path=source)
        kv_source[i] = last_of[layer_types[i]]

    double = bool(c.get("use_double_wide_mlp"))
    layers = []
    for i, lt in enumerate(layer_types):
        o = overrides.get(i, {})
        kind = _LAYER_KIND[lt]
        layers.append(LayerSpec(
            index=i, attention=kind,
            head_dim=int(o.get("head_dim", c["head_dim"])),
            num_kv_heads=int(o.get("num_key_value_heads", c["num_key_value_heads"])),
            intermediate_size=c["intermediate_size"] * (2 if double and i >= first_shared else 1),
            kv_source=kv_source[i],
            k_eq_v=k_eq_v and kind == "full",
            rope=ropes[lt],
            window=c["sliding_window"] if kind == "sliding" else None,
        ))
    for layer in layers:
        if c["num_attention_heads"] % layer.num_kv_heads:
            raise ConfigError(f"layer {layer.index}: num_attention_heads={c['num_attention_heads']} is not a "
                              f"multiple of its {layer.num_kv_heads} KV heads", path=source)

    moe = bool(c.get("enable_moe_block"))
    if moe:
        for key in ("num_experts", "top_k_experts", "moe_intermediate_size"):
            if not c.get(key):
                raise ConfigError(f"enable_moe_block is set but '{key}' is missing", path=source)
    eos = c.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    ple = int(c.get("hidden_size_per_layer_input") or 0)
    text = TextSpec(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_heads=c["num_attention_heads"],
        layers=tuple(layers), rms_norm_eps=float(c["rms_norm_eps"]),
        final_logit_softcapping=c.get("final_logit_softcapping"),
        hidden_activation=c["hidden_activation"], tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
        vocab_size_per_layer_input=int(c.get("vocab_size_per_layer_input") or 0) if ple else 0,
        hidden_size_per_layer_input=ple, num_kv_shared_layers=n_shared, sliding_window=c["sliding_window"],
        attention_bias=bool(c.get("attention_bias")), enable_moe=moe,
        num_experts=int(c.get("num_experts") or 0), top_k_experts=int(c.get("top_k_experts") or 0),
        moe_intermediate_size=int(c.get("moe_intermediate_size") or 0),
        bos_token_id=c.get("bos_token_id"), eos_token_ids=eos_ids, pad_token_id=c.get("pad_token_id"),
    )
    if text.attention_bias:
        raise ConfigError("attention_bias=true is not supported (no Gemma 4 checkpoint uses it)", path=source)
    return text, form

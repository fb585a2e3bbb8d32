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
from . import geometry
from .model import ModelSpec, TextSpec, TowerSpec
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
    if c.get("use_bidirectional_attention") == "all":
        raise ConfigError("use_bidirectional_attention='all' is an encoder setup, not a causal decoder",
                          path=source)
    if c["hidden_activation"] not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ConfigError(f"hidden_activation {short(c['hidden_activation'])} not supported "
                          "(Gemma 4 uses gelu_pytorch_tanh)", path=source)

    form, layers = geometry.layers(raw, c, source)   # one function per fact (gemma4/geometry.py)

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
        layers=layers, rms_norm_eps=float(c["rms_norm_eps"]),
        final_logit_softcapping=c.get("final_logit_softcapping"),
        hidden_activation=c["hidden_activation"], tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
        vocab_size_per_layer_input=int(c.get("vocab_size_per_layer_input") or 0) if ple else 0,
        hidden_size_per_layer_input=ple, num_kv_shared_layers=sum(layer.kv_shared for layer in layers),
        sliding_window=c["sliding_window"],
        attention_bias=bool(c.get("attention_bias")), enable_moe=moe,
        num_experts=int(c.get("num_experts") or 0), top_k_experts=int(c.get("top_k_experts") or 0),
        moe_intermediate_size=int(c.get("moe_intermediate_size") or 0),
        bos_token_id=c.get("bos_token_id"), eos_token_ids=eos_ids, pad_token_id=c.get("pad_token_id"),
    )
    if text.attention_bias:
        raise ConfigError("attention_bias=true is not supported (no Gemma 4 checkpoint uses it)", path=source)
    return text, form

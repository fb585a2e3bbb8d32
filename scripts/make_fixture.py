#!/usr/bin/env python
"""Build a small random Gemma 4 checkpoint with transformers ``save_pretrained`` (safetensors).

Two variants, both seeded and deterministic:

- ``multimodal`` (default): ``Gemma4ForConditionalGeneration`` (E2B/E4B-style text decoder) with
  8 layers (sliding, sliding, full, sliding, full | shared: sliding, sliding, full), 3 KV-shared
  last layers (layers 5, 6 read layer 3's cache, layer 7 reads layer 4's), double-wide MLP in the
  shared layers, per-layer embeddings (16 per layer), sliding window 8, head_dim 16 / global 32 with
  proportional partial RoPE (0.25) on full layers, final logit softcap 30, vocab 512, hidden 64,
  plus tiny vision and audio towers (so modality stripping has something to strip).
- ``moe``: a 26B-A4B-style text-only ``Gemma4ForCausalLM`` (``enable_moe_block``): 6 layers in the
  real 5:1 sliding:full pattern, ``attention_k_eq_v`` with 1 global vs 2 sliding KV heads, 8 experts of width 32,
  top-2 routing, a shared dense MLP of 96 beside them (hidden 128); router scales and per-expert scales drawn so
  routing is neither uniform nor saturated (router logits std ~1).
- ``kv_eq``: a dense text-only ``Gemma4ForCausalLM`` (``gemma4_text``, 12B/31B-style) with
  ``attention_k_eq_v`` on full layers and 1 global KV head vs 2 sliding KV heads; no KV sharing, no
  PLE, no double-wide MLP.

transformers initialises norms to ones and ``layer_scalar`` to one; every float tensor of the text
decoder is re-drawn here (norm weights U(0.8, 1.2), ``layer_scalar`` U(0.5, 1.5), linears
N(0, 1/fan_in), embeddings N(0, 0.1), PLE table N(0, 0.25), final norm U(2.5, 3.5)) so each feature
changes the logits and the logits are not degenerate: std ~2.4, max ~10 (inside the softcap's curved
range), top-1/top-2 gaps >= 4e-3, and greedy decoding wanders over many tokens instead of repeating
one large-norm token (which a wide embedding, std 0.5, does). Towers keep their seeded init.

``config_form="hub"`` rewrites config.json the way Google publishes it (``global_head_dim``,
``num_global_key_value_heads`` instead of ``per_layer_config``); ``prefix`` renames the text-decoder
tensors to another checkpoint prefix (``model.language_model.`` / ``model.`` / ``""``); towers keep
their names. transformers can only load the variants whose prefix matches the model class.

    python scripts/make_fixture.py OUT_DIR [--variant multimodal|kv_eq] [--seed 0]
        [--config-form per_layer_config|hub] [--prefix model.] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

VARIANTS = ("multimodal", "kv_eq", "moe")
CONFIG_FORMS = ("per_layer_config", "hub")
PREFIXES = ("model.language_model.", "model.", "")
_NATIVE_PREFIX = {"multimodal": "model.language_model.", "kv_eq": "model.", "moe": "model."}

_MULTIMODAL_TEXT = dict(
    vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=8,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
    sliding_window=8,
    layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                 "full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    num_kv_shared_layers=3, use_double_wide_mlp=True,
    hidden_size_per_layer_input=16, vocab_size_per_layer_input=512,
    final_logit_softcapping=30.0, attention_k_eq_v=False,
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                           "rope_theta": 1_000_000.0},
    },
)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, head_dim=16, patch_size=4, position_embedding_size=64,
               pooling_kernel_size=2)
_AUDIO = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, subsampling_conv_channels=[8, 4],
              output_proj_dims=32, conv_kernel_size=3)
_KV_EQ_TEXT = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
    num_global_key_value_heads=1, attention_k_eq_v=True, sliding_window=8,
    layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                 "sliding_attention", "full_attention"],
    num_kv_shared_layers=0, use_double_wide_mlp=False, hidden_size_per_layer_input=0,
    vocab_size_per_layer_input=0, final_logit_softcapping=30.0,
)

# 26B-A4B ratios at hidden 128: dense MLP 0.75·H, experts 0.25·H each, 8 of them, top-2 (every
# input width a multiple of 32, so the int4 preset's 32-blocks apply).
_MOE_TEXT = dict(
    vocab_size=512, hidden_size=128, intermediate_size=96, num_hidden_layers=6,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
    num_global_key_value_heads=1, attention_k_eq_v=True, sliding_window=8,
    layer_types=["sliding_attention"] * 5 + ["full_attention"],
    num_kv_shared_layers=0, use_double_wide_mlp=False, hidden_size_per_layer_input=0,
    vocab_size_per_layer_input=0, final_logit_softcapping=30.0,
    enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=32,
)


def _build_model(variant: str):
    from transformers import Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig

    if variant == "multimodal":
        cfg = Gemma4Config(text_config=dict(_MULTIMODAL_TEXT), vision_config=dict(_VISION),
                           audio_config=dict(_AUDIO))
        return Gemma4ForConditionalGeneration(cfg)
    cfg = Gemma4TextConfig(**(_MOE_TEXT if variant == "moe" else _KV_EQ_TEXT))
    return Gemma4ForCausalLM(cfg)


def _perturb_text(model, seed: int) -> None:
    """Re-draw every float tensor of the text decoder (see module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    text = model.model.language_model if hasattr(model.model, "language_model") else model.model
    tensors = dict(text.named_parameters())
    tensors.update({n: b for n, b in text.named_buffers()
                    if n.endswith("layer_scalar")})  # persistent buffer; others (rope, scale) are derived

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float32)

    def normal(shape, std):
        return std * torch.randn(shape, generator=gen, dtype=torch.float32)

    with torch.no_grad():
        for name in sorted(tensors):
            t = tensors[name]
            if not t.is_floating_point():
                continue
            if name.endswith("layer_scalar"):
                new = uniform(t.shape, 0.5, 1.5)
            elif name == "norm.weight":
                new = uniform(t.shape, 1.2, 1.8)
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                new = uniform(t.shape, 0.5, 0.8)
            elif name.endswith("norm.weight") or name.endswith(("norm_1.weight", "norm_2.weight")):
                new = uniform(t.shape, 0.8, 1.2)
            elif name.endswith("router.scale"):
                new = uniform(t.shape, 0.8, 1.2)
            elif name.endswith("router.per_expert_scale"):
                new = uniform(t.shape, 0.5, 1.5)
            elif name.endswith("router.proj.weight"):   # logits std ~1: routing neither uniform nor saturated
                new = normal(t.shape, 1.0)
            elif t.dim() == 3:   # experts [E, out, in]
                new = normal(t.shape, 1.0 / math.sqrt(t.shape[2]))
            elif name == "embed_tokens.weight":
                new = normal(t.shape, 0.1)
            elif name == "embed_tokens_per_layer.weight":
                new = normal(t.shape, 0.25)
            elif t.dim() == 2:
                new = normal(t.shape, 1.0 / math.sqrt(t.shape[1]))
            else:
                raise RuntimeError(f"make_fixture: no perturbation rule for text tensor {name} {tuple(t.shape)}")
            t.copy_(new)


def _to_hub_form(config: dict) -> dict:
    """per_layer_config → global_head_dim / num_global_key_value_heads (what Google publishes)."""
    text = config["text_config"] if "text_config" in config else config
    plc = text.pop("per_layer_config", None) or {}
    full = [i for i, lt in enumerate(text["layer_types"]) if lt == "full_attention"]
    overrides = {int(k): v for k, v in plc.items()}
    if sorted(overrides) != full or any(overrides[i] != overrides[full[0]] for i in full):
        raise ValueError(f"per_layer_config {plc} is not expressible in hub form (full layers {full})")
    o = overrides[full[0]]
    text["global_head_dim"] = o.get("head_dim", text["head_dim"])
    if "num_key_value_heads" in o:
        if not text.get("attention_k_eq_v"):
            raise ValueError("hub form only overrides full-layer KV heads when attention_k_eq_v is set")
        text["num_global_key_value_heads"] = o["num_key_value_heads"]
    else:
        text["num_global_key_value_heads"] = None
    return config


def _rename_prefix(st_path: Path, old: str, new: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from edge_sdk.gemma4.names import TOWER_PREFIXES

    towers = tuple(p for ps in TOWER_PREFIXES.values() for p in ps)
    out = {}
    with safe_open(str(st_path), framework="pt") as f:
        meta = f.metadata()
        for name in f.keys():
            t = f.get_tensor(name)
            if name.startswith(towers) or not name.startswith(old):
                out[name] = t
            else:
                out[new + name[len(old):]] = t
    save_file(out, str(st_path), metadata=meta or {"format": "pt"})


def make_fixture(out_dir, variant: str = "multimodal", seed: int = 0, *,
                 config_form: str = "per_layer_config", prefix: str | None = None,
                 dtype: str = "float32") -> Path:
    """Write a seeded random Gemma 4 checkpoint to ``out_dir`` (created); return its path.

    Same ``variant`` and ``seed`` give the same weights whatever ``config_form`` / ``prefix`` /
    ``dtype`` say (bf16 weights are the float32 ones rounded).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if config_form not in CONFIG_FORMS:
        raise ValueError(f"config_form must be one of {CONFIG_FORMS}, got {config_form!r}")
    if prefix is not None and prefix not in PREFIXES:
        raise ValueError(f"prefix must be one of {PREFIXES}, got {prefix!r}")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = _build_model(variant)
    _perturb_text(model, seed)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(out)

    if config_form == "hub":
        cfg_path = out / "config.json"
        cfg = _to_hub_form(json.loads(cfg_path.read_text()))
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    native = _NATIVE_PREFIX[variant]
    if prefix is not None and prefix != native:
        files = sorted(out.glob("*.safetensors"))
        if len(files) != 1:
            raise RuntimeError(f"expected one safetensors file in {out}, found {len(files)}")
        _rename_prefix(files[0], native, prefix)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--variant", choices=VARIANTS, default="multimodal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config-form", choices=CONFIG_FORMS, default="per_layer_config")
    ap.add_argument("--prefix", choices=[p or "none" for p in PREFIXES], default=None,
                    help="rename the text tensors to this prefix ('none' = no prefix)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    a = ap.parse_args(argv)
    prefix = None if a.prefix is None else ("" if a.prefix == "none" else a.prefix)
    path = make_fixture(a.out_dir, a.variant, a.seed, config_form=a.config_form, prefix=prefix, dtype=a.dtype)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

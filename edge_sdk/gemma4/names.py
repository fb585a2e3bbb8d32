"""Tensor names as data (llama.cpp ``tensor_mapping.py`` style).

Every row of ``TEXT_TENSORS`` says what a canonical text-decoder tensor is called, which component
it belongs to, its shape as a function of the spec, when it exists, and where that comes from in
transformers 5.23 ``models/gemma4/modeling_gemma4.py``. Checkpoint names are the canonical name
under one of ``TEXT_PREFIXES``; towers live under ``TOWER_PREFIXES``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .model import LayerSpec, TensorSpec, TextSpec

# Where the text decoder lives, by model class (first match wins; order matters).
TEXT_PREFIXES = (
    "model.language_model.",   # Gemma4ForConditionalGeneration (what Google publishes)
    "model.",                  # Gemma4ForCausalLM
    "",                        # Gemma4TextModel / bare exports
)

# Everything that is not the text decoder, by component (stripped by --text-only).
TOWER_PREFIXES = {
    "vision": ("model.vision_tower.", "model.embed_vision."),
    "audio": ("model.audio_tower.", "model.embed_audio."),
}

COMPONENTS = {
    "embed_tokens": "token embeddings (also the tied LM head)",
    "ple_table": "per-layer embedding table (embed_tokens_per_layer)",
    "ple_model": "per-layer embedding projection from the hidden state",
    "attention": "decoder attention q/k/v/o and q/k norms",
    "mlp": "decoder MLP gate/up/down",
    "moe": "decoder mixture-of-experts (router + experts)",
    "ple_gates": "decoder per-layer-input gates and projections",
    "norms": "decoder norms and layer scalars",
    "vision": "vision tower and projector",
    "audio": "audio tower and projector",
}

Shape = Callable[[TextSpec, LayerSpec], tuple]
When = Callable[[TextSpec, LayerSpec], bool]


@dataclass(frozen=True)
class NameRow:
    name: str          # canonical name; "{i}" is the layer index
    component: str
    kind: str
    shape: Shape
    when: When
    source: str        # where transformers builds it


def _always(t, l):
    return True


def _own_kv(t, l):
    return not l.kv_shared


def _own_v(t, l):
    return not l.kv_shared and not l.k_eq_v


def _ple(t, l):
    return t.has_ple


def _moe(t, l):
    return t.enable_moe


def _q(t, l):
    return t.q_width(l)


LAYER_ROWS = (
    NameRow("layers.{i}.self_attn.q_proj.weight", "attention", "linear",
            lambda t, l: (_q(t, l), t.hidden_size), _always, "Gemma4TextAttention.q_proj"),
    NameRow("layers.{i}.self_attn.q_norm.weight", "attention", "norm",
            lambda t, l: (l.head_dim,), _always, "Gemma4TextAttention.q_norm"),
    NameRow("layers.{i}.self_attn.k_proj.weight", "attention", "linear",
            lambda t, l: (l.num_kv_heads * l.head_dim, t.hidden_size), _own_kv,
            "Gemma4TextAttention.k_proj (absent in KV-shared layers)"),
    NameRow("layers.{i}.self_attn.k_norm.weight", "attention", "norm",
            lambda t, l: (l.head_dim,), _own_kv, "Gemma4TextAttention.k_norm (v_norm has no weight)"),
    NameRow("layers.{i}.self_attn.v_proj.weight", "attention", "linear",
            lambda t, l: (l.num_kv_heads * l.head_dim, t.hidden_size), _own_v,
            "Gemma4TextAttention.v_proj (absent where attention_k_eq_v on full layers)"),
    NameRow("layers.{i}.self_attn.o_proj.weight", "attention", "linear",
            lambda t, l: (t.hidden_size, _q(t, l)), _always, "Gemma4TextAttention.o_proj"),
    NameRow("layers.{i}.mlp.gate_proj.weight", "mlp", "linear",
            lambda t, l: (l.intermediate_size, t.hidden_size), _always, "Gemma4TextMLP.gate_proj"),
    NameRow("layers.{i}.mlp.up_proj.weight", "mlp", "linear",
            lambda t, l: (l.intermediate_size, t.hidden_size), _always, "Gemma4TextMLP.up_proj"),
    NameRow("layers.{i}.mlp.down_proj.weight", "mlp", "linear",
            lambda t, l: (t.hidden_size, l.intermediate_size), _always, "Gemma4TextMLP.down_proj"),
    *(NameRow(f"layers.{{i}}.{n}.weight", "norms", "norm", lambda t, l: (t.hidden_size,), _always,
              f"Gemma4TextDecoderLayer.{n}")
      for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                "post_feedforward_layernorm")),
    NameRow("layers.{i}.layer_scalar", "norms", "scalar", lambda t, l: (1,), _always,
            "Gemma4TextDecoderLayer.layer_scalar (persistent buffer)"),
    NameRow("layers.{i}.per_layer_input_gate.weight", "ple_gates", "linear",
            lambda t, l: (t.hidden_size_per_layer_input, t.hidden_size), _ple,
            "Gemma4TextDecoderLayer.per_layer_input_gate"),
    NameRow("layers.{i}.per_layer_projection.weight", "ple_gates", "linear",
            lambda t, l: (t.hidden_size, t.hidden_size_per_layer_input), _ple,
            "Gemma4TextDecoderLayer.per_layer_projection"),
    NameRow("layers.{i}.post_per_layer_input_norm.weight", "ple_gates", "norm",
            lambda t, l: (t.hidden_size,), _ple, "Gemma4TextDecoderLayer.post_per_layer_input_norm"),
    NameRow("layers.{i}.router.proj.weight", "moe", "linear",
            lambda t, l: (t.num_experts, t.hidden_size), _moe, "Gemma4TextRouter.proj"),
    NameRow("layers.{i}.router.scale", "moe", "norm", lambda t, l: (t.hidden_size,), _moe,
            "Gemma4TextRouter.scale"),
    NameRow("layers.{i}.router.per_expert_scale", "moe", "scalar", lambda t, l: (t.num_experts,), _moe,
            "Gemma4TextRouter.per_expert_scale"),
    NameRow("layers.{i}.experts.gate_up_proj", "moe", "experts",
            lambda t, l: (t.num_experts, 2 * t.moe_intermediate_size, t.hidden_size), _moe,
            "Gemma4TextExperts.gate_up_proj"),
    NameRow("layers.{i}.experts.down_proj", "moe", "experts",
            lambda t, l: (t.num_experts, t.hidden_size, t.moe_intermediate_size), _moe,
            "Gemma4TextExperts.down_proj"),
    *(NameRow(f"layers.{{i}}.{n}.weight", "moe", "norm", lambda t, l: (t.hidden_size,), _moe,
              f"Gemma4TextDecoderLayer.{n}")
      for n in ("post_feedforward_layernorm_1", "post_feedforward_layernorm_2",
                "pre_feedforward_layernorm_2")),
)

MODEL_ROWS = (
    NameRow("embed_tokens.weight", "embed_tokens", "embedding",
            lambda t, l: (t.vocab_size, t.hidden_size), _always, "Gemma4TextModel.embed_tokens"),
    NameRow("embed_tokens_per_layer.weight", "ple_table", "embedding",
            lambda t, l: (t.vocab_size_per_layer_input, t.num_layers * t.hidden_size_per_layer_input),
            _ple, "Gemma4TextModel.embed_tokens_per_layer"),
    NameRow("per_layer_model_projection.weight", "ple_model", "linear",
            lambda t, l: (t.num_layers * t.hidden_size_per_layer_input, t.hidden_size), _ple,
            "Gemma4TextModel.per_layer_model_projection"),
    NameRow("per_layer_projection_norm.weight", "ple_model", "norm",
            lambda t, l: (t.hidden_size_per_layer_input,), _ple, "Gemma4TextModel.per_layer_projection_norm"),
    NameRow("norm.weight", "norms", "norm", lambda t, l: (t.hidden_size,), _always, "Gemma4TextModel.norm"),
)

# The LM head: the plan's and the recipe's name for it. Gemma 4 ties it (tie_word_embeddings; no
# checkpoint stores it): the graph multiplies by a copy of ``TIED_TO`` (``tensor_of(LM_HEAD)``).
LM_HEAD = "lm_head"
TIED_TO = "embed_tokens.weight"

# Stored by some exports but not needed: dropped quietly (they are recomputed or tied).
OPTIONAL_TEXT = (
    f"{LM_HEAD}.weight",  # tied to embed_tokens (tie_word_embeddings) — checked equal by the converter
)
_SHARED_KV_UNUSED = re.compile(r"layers\.(\d+)\.self_attn\.(k_proj|v_proj|k_norm|v_norm)\.weight")


def role_of(name: str) -> str:
    """A tensor's recipe role: its canonical name without ``.weight`` (the tied head: ``lm_head``)."""
    return name[: -len(".weight")] if name.endswith(".weight") else name


def tensor_of(name: str) -> str:
    """The stored canonical tensor behind a planned name: the tied head reads ``embed_tokens.weight``."""
    return TIED_TO if name == LM_HEAD else name


def tied_roles(text: TextSpec, role: str) -> tuple[str, ...]:
    """The recipe roles one stored tensor serves: the embedding also as the tied head."""
    return (role, LM_HEAD) if role == role_of(TIED_TO) and text.tie_word_embeddings else (role,)


def recipe_roles(num_layers: int, *, moe: bool = False) -> tuple[str, ...]:
    """Every role the name table can give a decoder of ``num_layers`` layers (whatever its config:
    optional rows included), plus the tied head; the mixture-of-experts rows only with ``moe``."""
    keep = (lambda r: moe or r.component != "moe")
    glob = tuple(role_of(r.name) for r in MODEL_ROWS if keep(r)) + (LM_HEAD,)
    per = tuple(role_of(r.name) for r in LAYER_ROWS if keep(r))
    return glob + tuple(r.format(i=i) for i in range(num_layers) for r in per)


def text_tensors(text: TextSpec) -> tuple[TensorSpec, ...]:
    """Every tensor the text decoder stores, in name-table order (model rows, then each layer's)."""
    out = []
    first = text.layers[0] if text.layers else None
    for row in MODEL_ROWS:
        if row.when(text, first):
            out.append(TensorSpec(row.name, role_of(row.name), tuple(row.shape(text, first)),
                                  row.component, row.kind))
    for layer in text.layers:
        for row in LAYER_ROWS:
            if row.when(text, layer):
                name = row.name.format(i=layer.index)
                out.append(TensorSpec(name, role_of(name), tuple(row.shape(text, layer)),
                                      row.component, row.kind, layer.index))
    return tuple(out)


@dataclass(frozen=True)
class NameMatch:
    section: str              # "text" | "vision" | "audio" | "unused" | "unknown"
    canonical: str | None     # canonical text name (section "text"/"unused") else None


def classify(name: str, text_names: frozenset[str], prefix: str) -> NameMatch:
    """Where a checkpoint tensor belongs, given the text prefix this checkpoint uses."""
    for tower, prefixes in TOWER_PREFIXES.items():
        if name.startswith(prefixes):
            return NameMatch(tower, None)
    if name in OPTIONAL_TEXT or (name.endswith(OPTIONAL_TEXT[0]) and name.count(".") <= 1):
        return NameMatch("unused", OPTIONAL_TEXT[0])
    if name.startswith(prefix):
        canonical = name[len(prefix):]
        if canonical in text_names:
            return NameMatch("text", canonical)
        if _SHARED_KV_UNUSED.fullmatch(canonical):
            return NameMatch("unused", canonical)  # k/v of KV-shared layers: never read
    return NameMatch("unknown", None)


def detect_prefix(names: list[str] | set[str]) -> str:
    """The text prefix a checkpoint uses, judged by where ``embed_tokens.weight`` sits."""
    for prefix in TEXT_PREFIXES:
        if f"{prefix}embed_tokens.weight" in names:
            return prefix
    for prefix in TEXT_PREFIXES:
        if any(n.startswith(prefix + "layers.") for n in names):
            return prefix
    return TEXT_PREFIXES[0]

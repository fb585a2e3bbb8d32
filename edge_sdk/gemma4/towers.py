"""Vision and audio tower tensor shapes, from the config dict alone (no torch, no transformers).

Mirrors transformers 5.23 ``models/gemma4/modeling_gemma4.py`` (``Gemma4VisionModel``, ``Gemma4AudioModel``,
``Gemma4MultimodalEmbedder``, ``Gemma4ClippableLinear``) and the defaults of ``configuration_gemma4.py``.
Every *stored* tensor is listed: parameters and persistent buffers, i.e. exactly the keys of the module's
``state_dict()``, in the same order.  Non-persistent buffers (rotary ``inv_freq``, audio ``inv_timescales`` and
``softcap``) are not stored and not listed.

Facts the shapes rest on (checked against a meta-device ``Gemma4ForConditionalGeneration`` in tests/test_towers.py):

- ``use_clipped_linears`` wraps every tower linear (vision q/k/v/o + gate/up/down; audio q/k/v/post,
  ffw_layer_1/2, linear_start/end) as ``<name>.linear.weight`` and adds four *persistent* scalar buffers
  ``input_min``/``input_max``/``output_min``/``output_max`` (shape ``()``).  Without clipping the name still
  carries ``.linear.`` but there are no buffers.  Default: vision False, audio True.
- Vision ``standardize`` adds persistent buffers ``std_bias``/``std_scale`` of shape ``(hidden,)``.
- Vision q_norm/k_norm have weights of ``head_dim``; v_norm has none.  The position table is one parameter
  ``(2, position_embedding_size, hidden)``; the patch projection is ``(hidden, 3 * patch_size**2)``, no bias.
- Audio attention uses ``head_dim = hidden // heads`` and projects to ``heads * head_dim`` (which is < hidden when
  hidden is not a multiple of heads); ``post`` is ``hidden -> hidden``.  The subsampling input projection takes
  ``(channels[0] // 4) * channels[1]`` features (the code's formula, whatever the mel size).  Its LayerNorms
  have a weight and no bias.  ``output_proj`` has a bias.
- ``embed_vision`` / ``embed_audio``: one ``embedding_projection.weight`` of ``(text_hidden, mm_hidden)``, where
  ``mm_hidden`` is the tower's ``output_proj_dims`` if the config has that key, else its ``hidden_size``; the
  pre-projection RMSNorm has no scale, so no tensor.
"""

from __future__ import annotations

from typing import Any

# transformers 5.23 configuration_gemma4.py defaults (Gemma4VisionConfig / Gemma4AudioConfig), as data.
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 16,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "head_dim": 64,
    "patch_size": 16,
    "position_embedding_size": 10 * 1024,
    "pooling_kernel_size": 3,
    "use_clipped_linears": False,
    "standardize": False,
    "attention_bias": False,  # the code ignores it: vision linears never have a bias
}

AUDIO_DEFAULTS: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "subsampling_conv_channels": [128, 32],
    "conv_kernel_size": 5,
    "use_clipped_linears": True,
    "output_proj_dims": 1536,
}

VISION_PREFIX = "model.vision_tower."
VISION_EMBED_PREFIX = "model.embed_vision."
AUDIO_PREFIX = "model.audio_tower."
AUDIO_EMBED_PREFIX = "model.embed_audio."

_CLIP_BUFFERS = ("input_min", "input_max", "output_min", "output_max")

Tensors = list[tuple[str, tuple[int, ...]]]


def _get(cfg: dict, defaults: dict, key: str) -> Any:
    v = cfg.get(key)
    return defaults[key] if v is None else v


def _clippable(out: Tensors, name: str, out_f: int, in_f: int, clipped: bool) -> None:
    if clipped:  # the module's own buffers precede its child's weight in state_dict order
        out.extend((f"{name}.{b}", ()) for b in _CLIP_BUFFERS)
    out.append((f"{name}.linear.weight", (out_f, in_f)))


def _embedder(prefix: str, tower_cfg: dict, mm_hidden: int, text_hidden: int) -> Tensors:
    # Gemma4MultimodalEmbedder: getattr(config, "output_proj_dims", config.hidden_size)
    dims = tower_cfg["output_proj_dims"] if tower_cfg.get("output_proj_dims") is not None else mm_hidden
    return [(f"{prefix}embedding_projection.weight", (int(text_hidden), int(dims)))]


def vision_tensors(vision_cfg: dict, text_hidden: int) -> Tensors:
    """(name, shape) of every stored tensor under ``model.vision_tower.`` and ``model.embed_vision.``."""
    c = vision_cfg or {}
    g = lambda k: _get(c, VISION_DEFAULTS, k)  # noqa: E731
    h, inter, heads, kv, hd = g("hidden_size"), g("intermediate_size"), g("num_attention_heads"), \
        g("num_key_value_heads"), g("head_dim")
    clipped, p = bool(g("use_clipped_linears")), VISION_PREFIX
    out: Tensors = []
    if g("standardize"):  # Gemma4VisionModel's own buffers precede its children in state_dict order
        out += [(f"{p}std_bias", (h,)), (f"{p}std_scale", (h,))]
    out.append((f"{p}patch_embedder.position_embedding_table", (2, g("position_embedding_size"), h)))
    out.append((f"{p}patch_embedder.input_proj.weight", (h, 3 * g("patch_size") ** 2)))
    for i in range(g("num_hidden_layers")):
        lp = f"{p}encoder.layers.{i}."
        _clippable(out, f"{lp}self_attn.q_proj", heads * hd, h, clipped)
        _clippable(out, f"{lp}self_attn.k_proj", kv * hd, h, clipped)
        _clippable(out, f"{lp}self_attn.v_proj", kv * hd, h, clipped)
        _clippable(out, f"{lp}self_attn.o_proj", h, heads * hd, clipped)
        out += [(f"{lp}self_attn.q_norm.weight", (hd,)), (f"{lp}self_attn.k_norm.weight", (hd,))]
        _clippable(out, f"{lp}mlp.gate_proj", inter, h, clipped)
        _clippable(out, f"{lp}mlp.up_proj", inter, h, clipped)
        _clippable(out, f"{lp}mlp.down_proj", h, inter, clipped)
        out += [(f"{lp}{n}.weight", (h,)) for n in (
            "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")]
    return out + _embedder(VISION_EMBED_PREFIX, c, h, text_hidden)


def audio_tensors(audio_cfg: dict, text_hidden: int) -> Tensors:
    """(name, shape) of every stored tensor under ``model.audio_tower.`` and ``model.embed_audio.``."""
    c = audio_cfg or {}
    g = lambda k: _get(c, AUDIO_DEFAULTS, k)  # noqa: E731
    h, heads, k = g("hidden_size"), g("num_attention_heads"), g("conv_kernel_size")
    c0, c1 = (int(x) for x in g("subsampling_conv_channels")[:2])
    out_dims, clipped, p = g("output_proj_dims"), bool(g("use_clipped_linears")), AUDIO_PREFIX
    hd = h // heads
    sp = f"{p}subsample_conv_projection."
    out: Tensors = [
        (f"{sp}layer0.conv.weight", (c0, 1, 3, 3)), (f"{sp}layer0.norm.weight", (c0,)),
        (f"{sp}layer1.conv.weight", (c1, c0, 3, 3)), (f"{sp}layer1.norm.weight", (c1,)),
        (f"{sp}input_proj_linear.weight", (h, (c0 // 4) * c1)),
    ]
    for i in range(g("num_hidden_layers")):
        lp = f"{p}layers.{i}."
        for ff in ("feed_forward1", "feed_forward2"):
            _clippable(out, f"{lp}{ff}.ffw_layer_1", 4 * h, h, clipped)
            _clippable(out, f"{lp}{ff}.ffw_layer_2", h, 4 * h, clipped)
            out += [(f"{lp}{ff}.pre_layer_norm.weight", (h,)), (f"{lp}{ff}.post_layer_norm.weight", (h,))]
        # Gemma4AudioAttention: own parameter (per_dim_scale) first, then children in definition order
        out.append((f"{lp}self_attn.per_dim_scale", (hd,)))
        for n in ("q_proj", "k_proj", "v_proj"):
            _clippable(out, f"{lp}self_attn.{n}", heads * hd, h, clipped)
        _clippable(out, f"{lp}self_attn.post", h, h, clipped)
        out.append((f"{lp}self_attn.relative_k_proj.weight", (heads * hd, h)))
        _clippable(out, f"{lp}lconv1d.linear_start", 2 * h, h, clipped)
        _clippable(out, f"{lp}lconv1d.linear_end", h, h, clipped)
        out += [
            (f"{lp}lconv1d.depthwise_conv1d.weight", (h, 1, k)),
            (f"{lp}lconv1d.pre_layer_norm.weight", (h,)), (f"{lp}lconv1d.conv_norm.weight", (h,)),
            (f"{lp}norm_pre_attn.weight", (h,)), (f"{lp}norm_post_attn.weight", (h,)), (f"{lp}norm_out.weight", (h,)),
        ]
    out += [(f"{p}output_proj.weight", (out_dims, h)), (f"{p}output_proj.bias", (out_dims,))]
    return out + _embedder(AUDIO_EMBED_PREFIX, c, out_dims, text_hidden)


def numel(tensors: Tensors) -> int:
    """Total element count of a tensor list (scalars count 1)."""
    total = 0
    for _, shape in tensors:
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total


def multimodal_tensors(config: dict) -> dict[str, Tensors]:
    """Tower tensors of a top-level ``gemma4`` config dict: {"vision": [...], "audio": [...]} (absent → omitted)."""
    text_hidden = int((config.get("text_config") or {}).get("hidden_size") or 2304)  # 2304: Gemma4TextConfig default
    out: dict[str, Tensors] = {}
    if config.get("vision_config") is not None:
        out["vision"] = vision_tensors(config["vision_config"], text_hidden)
    if config.get("audio_config") is not None:
        out["audio"] = audio_tensors(config["audio_config"], text_hidden)
    return out

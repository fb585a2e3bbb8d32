"""Gemma 4 geometry (edge_sdk.gemma4.geometry, read through ModelSpec) pinned against transformers 5.23's own
``Gemma4TextConfig`` and the modules it builds (``Gemma4TextAttention``, ``Gemma4TextMLP``, the rotary
embedding): layer types, KV sharing, head dims, KV heads, k_eq_v, windows, MLP widths, RoPE, PLE and the
tied head, for the committed E2B/E4B/12B/26B-A4B/31B configs and for small configs that vary each knob."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.errors import ConfigError
from edge_sdk.gemma4 import LM_HEAD, geometry, spec_from_config, tensor_of, text_tensors
from edge_sdk.gemma4.names import recipe_roles, role_of, tied_roles
from edge_sdk.quant.config import KVCacheConfig
from edge_sdk.quant.kv_layout import kv_layout

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "models" / "configs").glob("gemma-4-*.json"))


def _transformers():
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    tr.utils.logging.set_verbosity_error()
    from transformers.models.gemma4 import modeling_gemma4 as m

    return torch, tr, m


def _text_config(config: dict):
    _, tr, _ = _transformers()
    if config.get("model_type") == "gemma4":
        return tr.Gemma4Config.from_dict(config).text_config
    return tr.Gemma4TextConfig(**{k: v for k, v in config.items() if k != "model_type"})


def _assert_geometry_matches(config: dict) -> None:
    """Every per-layer fact of our spec equals what transformers derives from the same config."""
    torch, _, m = _transformers()
    tc = _text_config(config)
    text = spec_from_config(config).text
    n = tc.num_hidden_layers
    assert text.num_layers == n
    assert [ly.attention for ly in text.layers] == [geometry.LAYER_KINDS[t] for t in tc.layer_types]

    modes = tc.kv_sharing_modes   # None: own cache, "store": own cache others read, "reuse": reads one
    stores = {tc.layer_types[i]: i for i in range(n) if modes[i] == "store"}
    for i, ly in enumerate(text.layers):
        assert ly.kv_shared == (modes[i] == "reuse"), i
        assert ly.kv_source == (stores[tc.layer_types[i]] if modes[i] == "reuse" else i), i
        assert ly.head_dim == tc.per_layer_config[i].head_dim, i
        assert ly.num_kv_heads == tc.per_layer_config[i].num_key_value_heads, i
    assert text.num_kv_shared_layers == tc.num_kv_shared_layers
    assert text.kv_layers == tuple(i for i in range(n) if modes[i] != "reuse")
    assert text.last_kv_layer == max(text.kv_layers)
    assert [c.layer for c in text.kv_caches] == list(text.kv_layers)

    with torch.device("meta"):
        for i, ly in enumerate(text.layers):
            attn, mlp = m.Gemma4TextAttention(tc, i), m.Gemma4TextMLP(tc, i)
            assert (ly.head_dim, ly.window, ly.k_eq_v) == (attn.head_dim, attn.sliding_window,
                                                          attn.use_alternative_attention), i
            assert text.kv_groups(ly) == attn.num_key_value_groups, i
            assert attn.is_kv_shared_layer == ly.kv_shared, i
            assert attn.q_proj.out_features == text.q_width(ly) == attn.o_proj.in_features, i
            if not ly.kv_shared:
                assert attn.k_proj.out_features == ly.num_kv_heads * ly.head_dim, i
                assert (attn.v_proj is None) == ly.k_eq_v, i
            assert ly.intermediate_size == mlp.intermediate_size == mlp.up_proj.out_features, i

    rotary = m.Gemma4TextRotaryEmbedding(tc)
    for ly in text.layers:
        want = getattr(rotary, f"{tc.layer_types[ly.index]}_inv_freq").float().numpy()
        np.testing.assert_allclose(ly.rope.inv_freq(ly.head_dim), want, rtol=1e-6, err_msg=str(ly.index))

    assert text.ple_dims == (n, tc.hidden_size_per_layer_input or 0)
    assert text.tie_word_embeddings == tc.tie_word_embeddings


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_committed_configs_match_transformers(path):
    assert len(CONFIGS) == 5
    _assert_geometry_matches(json.loads(path.read_text()))


def _small(**over) -> dict:
    base = dict(model_type="gemma4_text", hidden_size=32, intermediate_size=64, num_hidden_layers=7,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=64,
                vocab_size_per_layer_input=64, hidden_size_per_layer_input=4, sliding_window=8)
    return {**base, **over}


SMALL = {
    "default-pattern": _small(),
    "shared-double-wide": _small(num_hidden_layers=8, num_kv_shared_layers=2, use_double_wide_mlp=True,
                                 global_head_dim=32),
    "last-forced-full": _small(layer_types=["sliding_attention"] * 7),
    "k-eq-v-global-heads": _small(attention_k_eq_v=True, num_global_key_value_heads=1, global_head_dim=8,
                                  hidden_size_per_layer_input=0),
    "global-heads-without-k-eq-v": _small(num_global_key_value_heads=1),
    "mixed-types-shared": _small(layer_types=["full_attention", "sliding_attention", "sliding_attention",
                                              "full_attention", "sliding_attention", "full_attention",
                                              "sliding_attention"], num_kv_shared_layers=4),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_configs_match_transformers(name):
    _assert_geometry_matches(SMALL[name])


def test_per_layer_config_form_matches_transformers():
    """transformers' re-save (per_layer_config, no global_*) gives the same geometry as the hub form."""
    _, tr, _ = _transformers()
    hub = SMALL["k-eq-v-global-heads"]
    resaved = json.loads(tr.Gemma4TextConfig(**{k: v for k, v in hub.items() if k != "model_type"}).to_json_string())
    assert "per_layer_config" in resaved and "global_head_dim" not in resaved
    _assert_geometry_matches(hub)
    assert spec_from_config(resaved).text == spec_from_config(hub).text


def test_a_shared_type_without_producer_is_refused_as_transformers_refuses_it():
    cfg = _small(layer_types=["sliding_attention"] * 7, num_kv_shared_layers=1)   # last layer forced full
    with pytest.raises(ValueError, match="layer types producing a cache"):
        _text_config(cfg).kv_sharing_modes
    with pytest.raises(ConfigError, match="KV-shared layer 6 \\(full_attention\\) has no earlier layer"):
        spec_from_config(cfg)


def test_kv_source_layer_is_the_last_producer_of_its_type():
    types = ("sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention")
    assert [geometry.kv_source_layer(types, 3, i) for i in range(5)] == [0, 1, 2, 2, 1]
    assert [geometry.kv_source_layer(types, 5, i) for i in range(5)] == [0, 1, 2, 3, 4]


def test_kv_layout_reads_the_caches_gemma4_declares():
    """quant.kv_layout sizes exactly the caches of TextSpec.kv_caches (heads, head dim, window)."""
    text = spec_from_config(json.loads((ROOT / "models/configs/gemma-4-e2b.json").read_text())).text
    kv = kv_layout(text, KVCacheConfig(32), context=4096, prefill=32)
    for c in text.kv_caches:
        k, v = kv.buffer(f"kv_cache_k_{c.layer}"), kv.buffer(f"kv_cache_v_{c.layer}")
        assert (k.shape[1], k.shape[3], v.shape[2], k.window) == (c.kv_heads, c.head_dim, c.head_dim, c.window)
        assert k.ring == (c.window is not None)
    assert {b.layer for b in kv.buffers} == set(text.kv_layers)


def test_tied_head_and_roles():
    text = spec_from_config(SMALL["shared-double-wide"]).text
    assert tensor_of(LM_HEAD) == "embed_tokens.weight" and tensor_of("norm.weight") == "norm.weight"
    assert role_of(tensor_of(LM_HEAD)) == "embed_tokens"
    assert tied_roles(text, "embed_tokens") == ("embed_tokens", LM_HEAD)
    assert tied_roles(text, "norm") == ("norm",)
    # every stored tensor's role is a recipe role, and so is the tied head
    roles = set(recipe_roles(text.num_layers))
    assert {t.role for t in text_tensors(text)} | {LM_HEAD} <= roles
    assert not any(".experts." in r or ".router." in r for r in roles)
    assert any(".experts." in r for r in recipe_roles(1, moe=True))

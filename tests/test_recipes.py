"""Recipes, configs and presets: validation, resolution order, shared tensors, versioned JSON."""

from __future__ import annotations

import json

import pytest

from edge_sdk.errors import RecipeError
from edge_sdk.quant.config import (AffineConfig, DictionaryConfig, Granularity, KVCacheConfig,
                                   KVGranularity, ScaleDType)
from edge_sdk.quant.presets import PRESETS, RECIPES_DIR, load_recipe
from edge_sdk.quant.recipe import (Recipe, Rule, canonical_roles, recipe_from_json,
                                   recipe_to_json, resolve, resolve_shared)

INT4 = AffineConfig(bits=4)
INT8 = AffineConfig(bits=8)


# ---------------------------------------------------------------- configs

def test_int2_blockwise_is_refused_with_the_reason():
    with pytest.raises(RecipeError) as e:
        AffineConfig(bits=2, granularity="block", block_size=32)
    msg = str(e.value)
    assert "all zeros" in msg and "XNNPACK" in msg and "granularity='channel' for 2-bit" in msg


def test_affine_config_validation_and_enum_coercion():
    assert AffineConfig(4, "channel") == AffineConfig(4, Granularity.CHANNEL)
    b = AffineConfig(4, "block", 32)
    assert b.granularity is Granularity.BLOCK and b.scale_dtype is ScaleDType.FLOAT16
    assert AffineConfig(8).scale_dtype is ScaleDType.FLOAT32
    assert (AffineConfig(8).qmin, AffineConfig(8).qmax) == (-127, 127)
    assert (AffineConfig(2).qmin, AffineConfig(2).qmax) == (-2, 1)
    bad = [dict(bits=3), dict(bits=True), dict(bits=4, granularity="row"),
           dict(bits=4, granularity="block"), dict(bits=4, granularity="block", block_size=48),
           dict(bits=4, block_size=32), dict(bits=4, symmetric=False),
           dict(bits=4, granularity="block", block_size=32, scale_dtype="float32"),
           dict(bits=8, scale_dtype="bfloat16")]
    for kw in bad:
        with pytest.raises(RecipeError):
            AffineConfig(**kw)


def test_dictionary_and_kv_config_validation():
    d = DictionaryConfig(index_bits=4, codebook_size=12, rows_per_codebook=1)
    assert d.mapped
    for kw in [dict(index_bits=3), dict(index_bits=4, codebook_size=17),
               dict(codebook_size=1), dict(rows_per_codebook=0), dict(iterations=0),
               dict(mapped="yes")]:
        with pytest.raises(RecipeError):
            DictionaryConfig(**kw)
    assert KVCacheConfig(8, "token_head").granularity is KVGranularity.TOKEN_HEAD
    assert KVCacheConfig(32).is_float and not KVCacheConfig(8, "tensor").is_float
    for kw in [dict(bits=8), dict(bits=4), dict(bits=16, granularity="tensor"),
               dict(bits=8, granularity="head")]:
        with pytest.raises(RecipeError):
            KVCacheConfig(**kw)


# ---------------------------------------------------------------- resolution

def test_last_matching_rule_wins_and_none_keeps_float():
    r = Recipe("t", (Rule(r"layers\.\d+\.mlp\..*", INT8),
                     Rule(r"layers\.\d+\.mlp\.down_proj", INT4),
                     Rule(r"layers\.0\.mlp\.down_proj", None)), KVCacheConfig())
    assert resolve(r, "layers.5.mlp.up_proj") == INT8
    assert resolve(r, "layers.5.mlp.down_proj") == INT4
    assert resolve(r, "layers.0.mlp.down_proj") is None
    assert resolve(r, "embed_tokens") is None                 # no match: float
    assert resolve(r, "xlayers.5.mlp.up_proj") is None        # full match only


def test_shared_tensor_conflict_names_both_roles():
    r = Recipe("t", (Rule("embed_tokens", INT4), Rule("lm_head", INT8)))
    with pytest.raises(RecipeError) as e:
        resolve_shared(r, ["embed_tokens", "lm_head"])
    msg = str(e.value)
    assert "embed_tokens" in msg and "lm_head" in msg and "bits=4" in msg and "bits=8" in msg
    with pytest.raises(RecipeError):  # float vs quantized is a conflict too
        resolve_shared(Recipe("t", (Rule("embed_tokens", INT4),)), ["embed_tokens", "lm_head"])
    assert resolve_shared(Recipe("t", (Rule("embed_tokens|lm_head", INT4),)),
                          ["embed_tokens", "lm_head"]) == INT4


def test_mobile_preset_resolves_as_designed():
    m = PRESETS["mobile"]
    ch = Granularity.CHANNEL
    for i in (0, 34):
        for p in ("gate_proj", "up_proj", "down_proj"):
            c = resolve(m, f"layers.{i}.mlp.{p}")
            assert (c.bits, c.granularity) == (2, ch)
        for p in "qkvo":
            c = resolve(m, f"layers.{i}.self_attn.{p}_proj")
            assert (c.bits, c.granularity) == (4, ch)
        for p in ("per_layer_input_gate", "per_layer_projection"):
            assert resolve(m, f"layers.{i}.{p}") == AffineConfig(8)
        for p in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm", "post_per_layer_input_norm", "self_attn.q_norm",
                  "self_attn.k_norm", "layer_scalar"):
            assert resolve(m, f"layers.{i}.{p}") is None
    assert resolve(m, "per_layer_model_projection") == AffineConfig(8)
    assert resolve_shared(m, ["embed_tokens", "lm_head"]) == AffineConfig(4, "channel")
    d = resolve(m, "embed_tokens_per_layer")
    assert isinstance(d, DictionaryConfig) and (d.index_bits, d.codebook_size) == (4, 16)
    assert d.mapped
    assert resolve(m, "norm") is None and resolve(m, "per_layer_projection_norm") is None
    assert m.kv_cache == KVCacheConfig(8, "token_head")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_cover_roles_consistently(name):
    r = PRESETS[name]
    roles = canonical_roles(4)
    resolve_shared(r, ["embed_tokens", "lm_head"])
    for role in roles:
        c = resolve(r, role)
        if role.endswith(("norm", "layer_scalar", "norm_1", "norm_2")) or ".router." in role:
            assert c is None, role   # norms, scalars and the MoE router stay float
        elif ".experts." in role and name != "float":
            assert isinstance(c, AffineConfig) and c.granularity is Granularity.CHANNEL and c.bits >= 4, role
        elif name != "float" and role != "embed_tokens_per_layer":
            assert isinstance(c, AffineConfig), role
        if isinstance(c, AffineConfig):
            assert not (c.bits == 2 and c.granularity is Granularity.BLOCK)


def test_canonical_roles():
    roles = canonical_roles(35)
    assert len(roles) == len(set(roles)) == 6 + 35 * 25   # 17 dense + 8 MoE roles per layer
    assert "layers.34.self_attn.k_norm" in roles and "lm_head" in roles


# ---------------------------------------------------------------- JSON

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_bit_identically(name):
    p = PRESETS[name]
    text = recipe_to_json(p)
    back = recipe_from_json(text)
    assert back == p
    assert recipe_to_json(back) == text
    obj = json.loads(text)
    assert obj["format"] == "edge_sdk.recipe" and obj["version"] == 1
    assert obj["kv_cache"]["type"] == "kv_cache"
    assert all(r["config"] is None or r["config"]["type"] in ("affine", "dictionary")
               for r in obj["rules"])


def test_shipped_mobile_json_equals_the_preset():
    path = RECIPES_DIR / "mobile.json"
    assert path.read_text() == recipe_to_json(PRESETS["mobile"])
    assert load_recipe(path) == PRESETS["mobile"]
    assert load_recipe("mobile") is PRESETS["mobile"]


def _mobile_obj():
    return json.loads(recipe_to_json(PRESETS["mobile"]))


def _err(obj, source="r.json") -> str:
    with pytest.raises(RecipeError) as e:
        recipe_from_json(json.dumps(obj), source=source)
    return str(e.value)


def test_typo_in_a_rule_names_the_key_and_lists_valid_ones():
    obj = _mobile_obj()
    obj["rules"][2]["config"]["bitz"] = obj["rules"][2]["config"].pop("bits")
    msg = _err(obj)
    assert msg.startswith("r.json: ")
    assert "unknown key 'bitz' in rule 3" in msg
    assert "valid keys: type, bits, granularity, block_size, symmetric, scale_dtype" in msg


@pytest.mark.parametrize("mutate, needle", [
    (lambda o: o["rules"][0]["config"].update(type="afine"), "unknown config type 'afine'"),
    (lambda o: o.update(version=2), "version 2 not supported"),
    (lambda o: o.update(format="other"), "not a recipe"),
    (lambda o: o.update(rulez=[]), "unknown key 'rulez' in recipe"),
    (lambda o: o["rules"][0].update(patern="x"), "unknown key 'patern' in rule 1"),
    (lambda o: o["kv_cache"].update(bitz=8), "unknown key 'bitz' in kv_cache"),
    (lambda o: o["kv_cache"].update(type="affine"), "unknown config type 'affine' in kv_cache"),
    (lambda o: o["rules"][0]["config"].pop("bits"), "missing key 'bits'"),
    (lambda o: o["rules"][0]["config"].update(bits=3), "rule 1"),
    (lambda o: o["rules"][0]["config"].update(bits="4"), "must be an integer"),
    (lambda o: o["rules"][0].update(pattern="layers.*mlp.gate_prj"), "matches no tensor role"),
    (lambda o: o["rules"][0].update(pattern="("), "not a valid regex"),
    (lambda o: o["rules"][0]["config"].update(granularity="block", block_size=32),
     "granularity='channel' for 2-bit"),
    (lambda o: o["rules"][4]["config"].update(codebook_size=32), "does not fit 4-bit codes"),
])
def test_bad_recipe_json_is_refused_clearly(mutate, needle):
    obj = _mobile_obj()
    mutate(obj)
    assert needle in _err(obj)


def test_not_json_and_unknown_names():
    with pytest.raises(RecipeError, match="not valid JSON"):
        recipe_from_json("{", source="x.json")
    with pytest.raises(RecipeError, match="no preset or recipe file"):
        load_recipe("mobil")


def test_recipe_file_path_and_json_null_keeps_float(tmp_path):
    obj = {"format": "edge_sdk.recipe", "version": 1, "name": "mine",
           "kv_cache": {"type": "kv_cache", "bits": 16},
           "rules": [{"pattern": r"layers\.\d+\.mlp\..*_proj",
                      "config": {"type": "affine", "bits": 4, "granularity": "block",
                                 "block_size": 64}},
                     {"pattern": r"layers\.0\.mlp\.down_proj", "config": None}]}
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(obj))
    r = load_recipe(str(p))
    assert resolve(r, "layers.1.mlp.down_proj") == AffineConfig(4, "block", 64)
    assert resolve(r, "layers.0.mlp.down_proj") is None
    assert r.kv_cache == KVCacheConfig(16)

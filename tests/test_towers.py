"""Tower shapes from config alone (edge_sdk.gemma4.towers) against transformers 5.23 on the meta device,
and the element counts of the committed Gemma 4 configs (models/configs/*.json).

Where the E2B numbers come from: 5,104,298,467 / 4,628,569,379 are what transformers 5.23 stores for the real
google/gemma-4-E2B config. Our hub-form models/configs/gemma-4-e2b.json gives them exactly, first try, once the
count is taken the way a checkpoint stores it:
  * ``state_dict()`` has ``lm_head.weight`` (tied to ``model.language_model.embed_tokens.weight``, 402,653,184
    elements): it is not in the files, so it is left out (with it: 5,506,951,651);
  * persistent buffers count: 35 ``layer_scalar`` (one per decoder layer) + 448 vision and 480 audio clipped-linear
    scalars (``input_min/max``, ``output_min/max``) = 963, which is why unique parameters alone give 5,104,297,504;
  * ``standardize`` must be false for the E2B/E4B vision tower (true would add 2 x 768 ``std_bias/std_scale``).

Other sizes (parameters, no lm_head): E4B 7,941,100,832 (7.94B), 26B-A4B 25,805,933,872 (25.8B),
31B 31,273,086,512 (31.27B) match DESIGN.md. The 12B is published as ``gemma4_unified`` (encoder-free towers that
transformers 5.23's gemma4 classes cannot build); our gemma4-form 12B config carries the published text_config and
no towers: 11,907,350,272 parameters, ~50M short of 11.96B (the unified patch/audio embedders).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from edge_sdk.gemma4 import towers

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "models" / "configs"
VISION_PREFIXES = ("model.vision_tower.", "model.embed_vision.")
AUDIO_PREFIXES = ("model.audio_tower.", "model.embed_audio.")

# Stored elements (state_dict without the tied lm_head), from transformers 5.23 on the meta device.
EXPECTED = {
    "gemma-4-e2b": dict(stored=5_104_298_467, text=4_628_569_379, vision=168_544_704, audio=307_184_384,
                        ple=2_348_810_240, embed=402_653_184, params=5_104_297_504),
    "gemma-4-e4b": dict(stored=7_941_101_802, text=7_463_013_418, vision=169_331_136, audio=308_757_248,
                        ple=2_818_572_288, embed=671_088_640, params=7_941_100_832),
    "gemma-4-12b": dict(stored=11_907_350_320, text=11_907_350_320, vision=0, audio=0,
                        ple=0, embed=1_006_632_960, params=11_907_350_272),
    "gemma-4-26b-a4b": dict(stored=25_805_936_206, text=25_233_141_790, vision=572_794_416, audio=0,
                            ple=0, embed=738_197_504, params=25_805_933_872),
    "gemma-4-31b": dict(stored=31_273_088_876, text=30_697_345_340, vision=575_743_536, audio=0,
                        ple=0, embed=1_409_286_144, params=31_273_086_512),
}


def _load(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _meta_model(config: dict):
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    tr.utils.logging.set_verbosity_error()
    cfg = tr.Gemma4Config.from_dict(config)
    with torch.device("meta"):
        return tr.Gemma4ForConditionalGeneration(cfg)


def _shapes(state: dict, prefixes: tuple[str, ...]) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in state.items() if k.startswith(prefixes)]


def _ours(config: dict) -> tuple[list, list]:
    th = config["text_config"]["hidden_size"]
    v = towers.vision_tensors(config["vision_config"], th) if config.get("vision_config") is not None else []
    a = towers.audio_tensors(config["audio_config"], th) if config.get("audio_config") is not None else []
    return v, a


def _assert_towers_match(config: dict, model) -> None:
    state = model.state_dict()
    vision, audio = _ours(config)
    # same names, same shapes, same order as state_dict()
    assert vision == _shapes(state, VISION_PREFIXES)
    assert audio == _shapes(state, AUDIO_PREFIXES)
    assert towers.multimodal_tensors(config) == {k: v for k, v in (("vision", vision), ("audio", audio))
                                                 if config.get(f"{k}_config") is not None}


def test_towers_module_needs_no_torch():
    code = ("import sys, edge_sdk.gemma4.towers as t; "
            "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_config_counts(name):
    config = _load(name)
    assert config["model_type"] == "gemma4"
    assert config["architectures"] == ["Gemma4ForConditionalGeneration"]
    model = _meta_model(config)
    state = model.state_dict()
    lm = model.model.language_model
    # tied head: the state_dict carries lm_head.weight, the checkpoint files do not
    assert model.lm_head.weight is lm.embed_tokens.weight
    n = {k: v.numel() for k, v in state.items()}
    stored = sum(n.values()) - n.pop("lm_head.weight")
    vision = sum(v for k, v in n.items() if k.startswith(VISION_PREFIXES))
    audio = sum(v for k, v in n.items() if k.startswith(AUDIO_PREFIXES))
    exp = EXPECTED[name]
    assert stored == exp["stored"]
    assert stored - vision - audio == exp["text"]
    assert (vision, audio) == (exp["vision"], exp["audio"])
    assert n.get("model.language_model.embed_tokens_per_layer.weight", 0) == exp["ple"]
    assert n["model.language_model.embed_tokens.weight"] == exp["embed"]
    assert sum(p.numel() for p in model.parameters()) == exp["params"]  # unique: lm_head counted once
    # towers from config alone agree with transformers, element for element
    vt, at = _ours(config)
    assert (towers.numel(vt), towers.numel(at)) == (exp["vision"], exp["audio"])
    _assert_towers_match(config, model)


def test_e2b_shape_facts():
    """The E2B facts DESIGN.md leans on, read off the transformers model built from our config."""
    config = _load("gemma-4-e2b")
    state = _meta_model(config).state_dict()
    t = "model.language_model."
    assert tuple(state[t + "embed_tokens_per_layer.weight"].shape) == (262144, 35 * 256)
    assert tuple(state[t + "layers.4.self_attn.k_proj.weight"].shape) == (512, 1536)   # full: head_dim 512, 1 KV
    assert tuple(state[t + "layers.0.self_attn.k_proj.weight"].shape) == (256, 1536)   # sliding: 256
    assert t + "layers.15.self_attn.k_proj.weight" not in state                        # KV-shared: no k/v/k_norm
    assert t + "layers.15.self_attn.k_norm.weight" not in state
    assert tuple(state[t + "layers.15.mlp.gate_proj.weight"].shape) == (12288, 1536)   # double-wide MLP
    assert tuple(state[t + "layers.14.mlp.gate_proj.weight"].shape) == (6144, 1536)
    assert tuple(state[t + "layers.0.layer_scalar"].shape) == (1,)                     # persistent buffer


def _tiny_text() -> dict:
    return {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 48, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 16, "global_head_dim": 32, "vocab_size": 64,
            "vocab_size_per_layer_input": 64, "hidden_size_per_layer_input": 8,
            "layer_types": ["sliding_attention", "full_attention"]}


def _random_towers(seed: int) -> tuple[dict, dict]:
    r = random.Random(seed)
    heads = r.choice([1, 2, 3, 4])
    vision = {"hidden_size": r.choice([24, 40, 48]), "intermediate_size": r.choice([20, 56, 64]),
              "num_hidden_layers": r.randint(1, 3), "num_attention_heads": heads,
              "num_key_value_heads": r.choice([k for k in (1, 2, 3, 4) if heads % k == 0]),
              "head_dim": r.choice([4, 8, 12]), "patch_size": r.choice([2, 4, 5]),
              "position_embedding_size": r.choice([7, 16, 33]), "pooling_kernel_size": 2,
              "use_clipped_linears": r.random() < 0.5, "standardize": r.random() < 0.5}
    a_heads = r.choice([1, 2, 3])
    audio = {"hidden_size": r.choice([16, 20, 30]), "num_hidden_layers": r.randint(1, 3),
             "num_attention_heads": a_heads, "subsampling_conv_channels": [r.choice([4, 8, 12]), r.choice([2, 6])],
             "conv_kernel_size": r.choice([3, 5]), "output_proj_dims": r.choice([12, 24]),
             "use_clipped_linears": r.random() < 0.5}
    return vision, audio


SMALL = [
    # hand-picked: every switch both ways, hidden not a multiple of heads, head_dim != hidden / heads
    ({"hidden_size": 48, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "head_dim": 8, "patch_size": 4, "position_embedding_size": 16,
      "use_clipped_linears": True, "standardize": True},
     {"hidden_size": 20, "num_hidden_layers": 2, "num_attention_heads": 3, "subsampling_conv_channels": [8, 4],
      "conv_kernel_size": 3, "output_proj_dims": 24, "use_clipped_linears": True}),
    ({"hidden_size": 24, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
      "num_key_value_heads": 2, "head_dim": 12, "patch_size": 2, "position_embedding_size": 9,
      "use_clipped_linears": False, "standardize": False},
     {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "subsampling_conv_channels": [6, 2],
      "conv_kernel_size": 5, "output_proj_dims": 16, "use_clipped_linears": False}),
    # every key absent: the defaults held in towers.VISION_DEFAULTS / AUDIO_DEFAULTS (768x16 / 1024x12 towers)
    ({}, {}),
    *(_random_towers(seed) for seed in (1, 2, 3)),
]


@pytest.mark.parametrize("vision,audio", SMALL)
def test_small_towers_match_transformers(vision, audio):
    config = {"model_type": "gemma4", "text_config": _tiny_text(), "vision_config": vision, "audio_config": audio}
    _assert_towers_match(config, _meta_model(config))


def test_vision_only_and_no_towers():
    vision, _ = SMALL[0]
    for config in ({"model_type": "gemma4", "text_config": _tiny_text(), "vision_config": vision},
                   {"model_type": "gemma4", "text_config": _tiny_text()}):
        _assert_towers_match(config, _meta_model(config))


def test_defaults_are_transformers_defaults():
    tr = pytest.importorskip("transformers")
    v, a = tr.Gemma4VisionConfig(), tr.Gemma4AudioConfig()
    for key, value in towers.VISION_DEFAULTS.items():
        assert getattr(v, key) == value, key
    for key, value in towers.AUDIO_DEFAULTS.items():
        assert getattr(a, key) == value, key

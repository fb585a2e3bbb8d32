"""ModelSpec from config.json, the name table, binding to weights, stripping, and `edge-sdk inspect`."""

import json
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.checkpoint import write_safetensors
from edge_sdk.cli import main
from edge_sdk.errors import ConfigError
from edge_sdk.gemma4 import spec_from_config, text_tensors

ROOT = Path(__file__).resolve().parents[1]
E2B = ROOT / "models" / "configs" / "gemma-4-e2b.json"

TINY_TEXT = dict(
    model_type="gemma4_text", hidden_size=32, intermediate_size=64, num_hidden_layers=6,
    num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=32,
    layer_types=["sliding_attention", "sliding_attention", "full_attention",
                 "sliding_attention", "sliding_attention", "full_attention"],
    num_kv_shared_layers=2, vocab_size=128, vocab_size_per_layer_input=128,
    hidden_size_per_layer_input=8, sliding_window=8, use_double_wide_mlp=True,
    final_logit_softcapping=30.0,
)


def _write_ckpt(d: Path, cfg: dict, prefix="model.", mutate=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    spec = spec_from_config(cfg)
    rng = np.random.default_rng(0)
    tensors = [(prefix + t.name, rng.standard_normal(t.shape).astype(np.float32)) for t in text_tensors(spec.text)]
    if mutate:
        tensors = mutate(tensors)
    write_safetensors(d / "model.safetensors", tensors)
    return d


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_e2b_counts_from_config_alone(capsys):
    code, out, err = run_cli(capsys, "inspect", E2B, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["from_weights"] is False
    assert r["total"]["params"] == 5_104_298_467
    assert r["text_only_keeps"]["params"] == 4_628_569_379
    comp = r["components"]
    assert round(comp["ple_table"]["params"] / 1e9, 2) == 2.35
    assert round(comp["embed_tokens"]["params"] / 1e9, 2) == 0.40
    towers = comp["vision"]["params"] + comp["audio"]["params"]
    assert 0.47e9 <= towers < 0.48e9  # 475,729,088: the "0.47 B" is this figure truncated
    assert towers == r["total"]["params"] - r["text_only_keeps"]["params"]
    code, out, _ = run_cli(capsys, "inspect", E2B)
    assert code == 0 and "5.10 B" in out and "--text-only removes vision" in out


def test_e2b_layer_geometry():
    spec = spec_from_config(json.loads(E2B.read_text()))
    t = spec.text
    assert t.num_layers == 35 and t.num_kv_shared_layers == 20
    full = [lyr.index for lyr in t.layers if lyr.attention == "full"]
    assert full == [4, 9, 14, 19, 24, 29, 34]
    assert {lyr.head_dim for lyr in t.layers if lyr.attention == "full"} == {512}
    # KV-shared layers read the last non-shared layer of their own type, and have double-wide MLPs
    assert t.layers[15].kv_source == 13 and t.layers[34].kv_source == 14
    assert t.layers[15].intermediate_size == 2 * t.layers[0].intermediate_size
    assert t.kv_layers == tuple(range(15))


def test_both_config_forms_give_the_same_spec():
    pytest.importorskip("transformers")
    from transformers import Gemma4TextConfig

    kwargs = {k: v for k, v in TINY_TEXT.items() if k != "model_type"}
    resaved = json.loads(Gemma4TextConfig(**kwargs).to_json_string())
    assert "per_layer_config" in resaved and "global_head_dim" not in resaved
    a, b = spec_from_config(TINY_TEXT), spec_from_config(resaved)
    assert a.config_form == "hub" and b.config_form == "per_layer_config"
    assert a.text == b.text


def test_default_layer_types_every_sixth_full_and_last_full():
    cfg = {k: v for k, v in TINY_TEXT.items() if k not in ("layer_types", "num_kv_shared_layers")}
    cfg["num_hidden_layers"] = 8
    kinds = [lyr.attention for lyr in spec_from_config(cfg).text.layers]
    assert kinds == ["sliding"] * 5 + ["full", "sliding", "full"]


@pytest.mark.parametrize("prefix", ["model.language_model.", "model.", ""])
def test_inspect_checkpoint_all_prefixes(tmp_path, capsys, prefix):
    d = _write_ckpt(tmp_path / "ck", TINY_TEXT, prefix=prefix)
    code, out, err = run_cli(capsys, "inspect", d, "--json")
    assert code == 0, err
    r = json.loads(out)
    spec = spec_from_config(TINY_TEXT)
    assert r["from_weights"] and r["text_prefix"] == prefix
    assert r["total"]["params"] == sum(t.numel for t in text_tensors(spec.text))
    assert r["dtype"] == "F32"


def test_unused_shared_kv_tensors_are_dropped_quietly(tmp_path, capsys):
    def add_unused(ts):
        return ts + [("model.layers.5.self_attn.k_proj.weight", np.zeros((32, 32), np.float32))]

    d = _write_ckpt(tmp_path / "ck", TINY_TEXT, mutate=add_unused)
    code, out, err = run_cli(capsys, "inspect", d, "--json")
    assert code == 0, err
    assert json.loads(out)["text_only_removes"]["unused"]["params"] == 32 * 32


def test_config_that_disagrees_with_weights(tmp_path, capsys):
    def wrong_shape(ts):
        return [(n, np.zeros((64, 31), np.float32) if n.endswith("layers.1.mlp.gate_proj.weight") else a)
                for n, a in ts]

    d = _write_ckpt(tmp_path / "ck", TINY_TEXT, mutate=wrong_shape)
    code, _, err = run_cli(capsys, "inspect", d)
    assert code == 2
    assert "model.layers.1.mlp.gate_proj.weight" in err and "[64, 32]" in err and "[64, 31]" in err
    assert "Traceback" not in err


def test_missing_and_unknown_tensors(tmp_path, capsys):
    d = _write_ckpt(tmp_path / "missing", TINY_TEXT,
                    mutate=lambda ts: [t for t in ts if "layers.2.self_attn.o_proj" not in t[0]])
    code, _, err = run_cli(capsys, "inspect", d)
    assert code == 2 and "layers.2.self_attn.o_proj.weight" in err and "lack" in err
    d = _write_ckpt(tmp_path / "unknown", TINY_TEXT,
                    mutate=lambda ts: ts + [("model.layers.0.mystery.weight", np.zeros(3, np.float32))])
    code, _, err = run_cli(capsys, "inspect", d)
    assert code == 2 and "model.layers.0.mystery.weight" in err


def test_unknown_architecture_lists_supported(tmp_path, capsys):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    code, _, err = run_cli(capsys, "inspect", p)
    assert code == 2
    assert "llama" in err and "gemma4" in err and "gemma4_text" in err and str(p) in err


@pytest.mark.parametrize("bad, msg", [
    (dict(layer_types=["sliding_attention"] * 3), "layer_types has 3 entries"),
    (dict(num_kv_shared_layers=6), "leaves no layer"),
    (dict(rope_parameters={"sliding_attention": {"rope_type": "yarn", "rope_theta": 1.0},
                           "full_attention": {"rope_theta": 1.0}}), "yarn"),
    (dict(hidden_size="32"), "hidden_size"),
])
def test_bad_configs(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        spec_from_config({**TINY_TEXT, **bad})


def test_usage_errors_exit_2(capsys, tmp_path):
    assert run_cli(capsys, "inspect")[0] == 2
    code, _, err = run_cli(capsys, "inspect", tmp_path / "nope")
    assert code == 2 and "nope" in err

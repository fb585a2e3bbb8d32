"""make_plan and the memory planner (`edge-sdk plan`)."""

import json
from pathlib import Path

import pytest

from edge_sdk.cli import main
from edge_sdk.errors import RecipeError
from edge_sdk.quant.config import AffineConfig, DictionaryConfig, KVCacheConfig
from edge_sdk.quant.memory import estimate_memory
from edge_sdk.quant.plan import make_plan, tensor_bytes
from edge_sdk.quant.presets import PRESETS
from edge_sdk.quant.recipe import Recipe, Rule
from edge_sdk.gemma4 import spec_from_path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "models" / "configs"
E2B = CONFIGS / "gemma-4-e2b.json"


def run_json(capsys, *argv):
    code = main([str(a) for a in argv] + ["--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_e2b_mobile_text_only_fits_1gb_with_the_runtime_counted(capsys):
    """The model's own bytes fit Google's 0.84 GB; the runtime's additions (KV copies, float KV
    reads, quantization metadata, model head pages, a measured fixed part) take it over: the plan
    says so rather than promising what no runtime measures (docs/benchmarks.md)."""
    code, r, err = run_json(capsys, "plan", E2B, "--recipe", "mobile", "--text-only", "--context", "4096",
                            "--budget", "1GB")
    assert code == 0, err
    assert r["params"]["total"] == 5_104_298_467
    assert r["params"]["kept"] == 4_628_569_379
    b = r["bytes"]
    model = b["resident"] + b["mapped_touched"] + b["kv_cache"] + b["activations"]
    assert model <= 0.84e9 < b["peak_estimate"] <= 1e9
    assert b["peak_estimate"] == model + b["runtime"] == model + sum(b["runtime_terms"].values())
    t = b["runtime_terms"]
    assert r["runtime"] == "litert-lm" and t["kv_extra_copies"] == b["kv_cache"]   # input + output copies
    assert t["model_head"] > 0 and t["quant_metadata"] > 0 and t["kv_read"] > 0 and t["fixed"] > 0
    ple = [t for t in r["tensors"] if t["role"] == "embed_tokens_per_layer"][0]
    assert ple["mapped"] and ple["scheme"] == "dict4x16/r64"
    assert b["mapped"] >= ple["data_bytes"] + ple["overhead_bytes"]
    assert r["budget"] == {"limit": 1_000_000_000, "fits": True}
    code, r, _ = run_json(capsys, "plan", E2B, "--recipe", "mobile", "--text-only", "--context", "4096",
                          "--budget", "0.84GB")
    assert code == 1 and r["budget"]["fits"] is False


def test_runtime_terms_follow_the_runtime_and_the_context():
    """Our runner keeps one KV copy and releases the model head; float KV reads grow with the
    context (the largest full-attention layer's cache, dequantized, per running signature)."""
    spec = spec_from_path(E2B)
    plan = make_plan(spec, PRESETS["mobile"])
    lm, ours = (estimate_memory(plan, 4096, runtime=rt) for rt in ("litert-lm", "edge_sdk"))
    assert ours.kv_extra_copy_bytes == 0 and ours.model_head_bytes == 0
    assert lm.kv_extra_copy_bytes == lm.kv_cache_bytes and lm.model_head_bytes > 0
    assert lm.model_bytes == ours.model_bytes
    full = max(ly.head_dim for ly in spec.text.layers)
    for ctx in (512, 4096, 32768):
        m = estimate_memory(plan, ctx, runtime="edge_sdk")
        assert m.kv_read_bytes == 2 * 2 * ctx * full * 4   # 2 signatures x (K + V) x float32, 1 KV head
    with pytest.raises(ValueError, match="runtime"):
        estimate_memory(plan, 4096, runtime="tflite")


def test_over_budget_exits_1(capsys):
    code, r, _ = run_json(capsys, "plan", E2B, "--recipe", "int4", "--text-only", "--budget", "1GB")
    assert code == 1 and r["budget"]["fits"] is False


def test_every_size_and_preset_plans():
    for cfg in sorted(CONFIGS.glob("*.json")):
        spec = spec_from_path(cfg)
        if spec.text.enable_moe:  # experts: int4 per expert and output row in mobile (tests/test_moe.py)
            experts = [t for t in make_plan(spec, PRESETS["mobile"]).tensors if t.role.endswith("_proj")
                       and ".experts." in t.role]
            assert experts and all(t.scheme == "int4" and t.mapped for t in experts)
        sizes = {name: make_plan(spec, r).resident_bytes for name, r in PRESETS.items()}
        assert sizes["float"] > sizes["int8"] > sizes["int4"] > sizes["mobile"]


def test_exact_bytes_per_scheme():
    assert tensor_bytes((6, 10), None) == (240, 0)
    assert tensor_bytes((6, 10), AffineConfig(bits=8)) == (60, 6 * 12)
    assert tensor_bytes((6, 10), AffineConfig(bits=4)) == (30, 6 * 12)
    assert tensor_bytes((6, 10), AffineConfig(bits=2)) == (15, 6 * 12)
    assert tensor_bytes((4, 64), AffineConfig(bits=4, granularity="block", block_size=32)) == (128, 4 * 2 * 2)
    dc = DictionaryConfig(index_bits=4, codebook_size=16, rows_per_codebook=3)
    assert tensor_bytes((7, 10), dc) == (35, 3 * 16 * 4)


def test_kv_cache_sliding_window_and_sharing():
    spec = spec_from_path(E2B)
    plan = make_plan(spec, PRESETS["mobile"])
    mem = estimate_memory(plan, 4096)
    layers = dict(mem.kv_by_layer)
    assert sorted(layers) == list(range(15))  # KV-shared layers 15..34 add nothing
    # what the converter emits (edge_sdk.quant.kv_layout): int8 with one per-tensor scale per buffer
    # (a quantization parameter in the model, not state; the recipe's per-(token, head) scales cannot
    # be carried by LiteRT-LM). Sliding layers (window 512, 1 KV head, head_dim 256): a ring of
    # window + prefill - 1 = 543 slots at prefill 32.
    assert mem.prefill == 32 and layers[0] == 2 * 543 * 256
    assert layers[4] == 2 * 4096 * 512                  # full layer, head_dim 512
    assert estimate_memory(plan, 256).kv_by_layer[0][1] == 2 * 256 * 256   # the ring would not be shorter
    assert estimate_memory(plan, 4096, 128).kv_by_layer[0][1] == 2 * (512 + 127) * 256


def test_int2_blockwise_is_refused_with_reason():
    with pytest.raises(RecipeError, match="zeros"):
        Recipe("bad", (Rule(r"layers\.\d+\.mlp\..*", AffineConfig(bits=2, granularity="block", block_size=32)),),
               KVCacheConfig())


def test_norms_cannot_be_quantized():
    spec = spec_from_path(E2B)
    with pytest.raises(RecipeError, match="norm"):
        make_plan(spec, Recipe("bad", (Rule(r".*", AffineConfig(bits=8)),)))


def test_recipe_file_typo_is_exit_2(tmp_path, capsys):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"format": "edge_sdk.recipe", "version": 1, "name": "x",
                             "kv_cache": {"type": "kv_cache", "bits": 32},
                             "rules": [{"pattern": ".*proj", "config": {"type": "affine", "bitz": 4}}]}))
    code = main(["plan", str(E2B), "--recipe", str(p)])
    err = capsys.readouterr().err
    assert code == 2 and "bitz" in err

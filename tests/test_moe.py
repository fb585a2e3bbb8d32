"""26B-A4B mixture of experts on a transformers-made fixture (``make_fixture.py --variant moe``: 6 layers,
5:1 sliding:full, 8 experts, top-2, shared dense MLP): the NumPy reference and the LiteRT graph (real
ai-edge-litert interpreter) against transformers float32, the quantized experts against the reference
over the same codes, plan bytes against written bytes, and the full-size plan against Google's figure.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.cli import main
from edge_sdk.litert.reader import read_tflite
from edge_sdk.litert.runtime import LiteRTModel

from test_convert import MAX_KLD, MIN_TOP1, _kl_top1, _reference_for

CONFIGS = Path(__file__).resolve().parents[1] / "models" / "configs"
GEO = ["--context", "64", "--prefill", "8"]
PROMPT = [2, 435, 327, 263, 140, 159, 23, 41, 11, 92, 416, 333, 467, 259, 311, 497, 374, 324, 279, 287, 478]
STEPS = 12
EXPERTS_ONLY = {"format": "edge_sdk.recipe", "version": 1, "name": "experts-int4", "kv_cache": {"type": "kv_cache", "bits": 32},
                "rules": [{"pattern": r"layers\.\d+\.experts\.(gate_up|down)_proj",
                           "config": {"type": "affine", "bits": 4, "granularity": "channel"}}]}


@pytest.fixture(scope="module")
def hf_truth(moe_ckpt, load_hf):
    """transformers float32: logits of the prompt then of each greedy step, and the greedy tokens."""
    import torch

    model = load_hf(moe_ckpt)
    with torch.no_grad():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=STEPS, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
        prompt_logits = model(torch.tensor([PROMPT])).logits[0].numpy()
    toks = out.sequences[0, len(PROMPT):].tolist()
    steps = np.stack([x[0].numpy() for x in out.logits])   # logits that chose each token
    return prompt_logits, steps, toks


@pytest.fixture(scope="module")
def converted(moe_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_converted")
    (root / "experts-int4.json").write_text(json.dumps(EXPERTS_ONLY))
    done: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in done:
            dest = root / recipe
            arg = str(root / "experts-int4.json") if recipe == "experts-int4" else recipe
            assert main(["convert", str(moe_ckpt), "-o", str(dest), *GEO, "--recipe", arg]) == 0
            done[recipe] = dest
        return done[recipe]

    return get


def _run(m, steps_of):
    """Prompt logits, then decode logits along the given tokens' path."""
    first = m.prefill(PROMPT)
    return first, np.stack([m.decode(t) for t in steps_of[:-1]])


def test_reference_matches_transformers(moe_ckpt, hf_truth):
    from edge_sdk.reference import Reference, weights_from_checkpoint

    prompt_logits, steps, toks = hf_truth
    w = weights_from_checkpoint(moe_ckpt)
    ref = Reference(w.spec.text, w)
    assert np.abs(ref.prefill(PROMPT) - prompt_logits).max() < 1e-3
    got = np.stack([ref.decode(t) for t in toks[:-1]])
    assert np.abs(got - steps[1:]).max() < 1e-3
    assert ref.greedy(PROMPT, STEPS) == toks
    # The experts matter: routing to one expert instead of two moves the logits far past the tolerance.
    top1 = Reference(dataclasses.replace(w.spec.text, top_k_experts=1), w)
    assert np.abs(top1.prefill(PROMPT) - prompt_logits).max() > 0.05


@pytest.mark.parametrize("backend", ["builtin", "xnnpack"])
def test_float_conversion_matches_transformers(backend, converted, hf_truth):
    prompt_logits, steps, toks = hf_truth
    m = LiteRTModel(converted("float"), backend=backend)
    first, dec = _run(m, toks)
    print(f"\nmoe float {backend}: max |dlogit| prompt {np.abs(first - prompt_logits).max():.2e}, "
          f"decode {np.abs(dec - steps[1:]).max():.2e}")
    assert np.abs(first - prompt_logits).max() < 1e-3 and np.abs(dec - steps[1:]).max() < 1e-3
    assert m.greedy(PROMPT, STEPS) == toks


def test_graph_routes_with_topk_and_gathers_experts(converted):
    """TOPK_V2 routes; the expert stacks are read by GATHER only (what keeps unrouted experts' pages
    untouched), as external, memory-mapped buffers."""
    from ai_edge_litert import schema_py_generated as schema

    path = converted("experts-int4") / "prefill_decode.tflite"
    buf = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    consts = {t.name: t for t in read_tflite(path).constants}
    for sg in model.subgraphs:
        tname = [t.name.decode() for t in sg.tensors]
        ops = [(names[model.operatorCodes[op.opcodeIndex].builtinCode], op) for op in sg.operators]
        assert any(n == "TOPK_V2" for n, _ in ops)
        readers = {n for n, op in ops for i in op.inputs
                   if i >= 0 and tname[i].endswith(("experts.gate_up_proj", "experts.down_proj"))}
        assert readers == {"GATHER"}
    stacks = [c for n, c in consts.items() if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(stacks) == 12 and all(c.external for c in stacks)


def test_quantized_experts_are_exact_against_reference(moe_ckpt, converted):
    """int4 per-channel experts (rest float): GATHER → CAST → BATCH_MATMUL → × scales is exact, so
    LiteRT equals the NumPy reference over the same dequantized codes to float rounding."""
    out = converted("experts-int4")
    ref = _reference_for(moe_ckpt, out)[0]
    want = ref.prefill(PROMPT)
    for backend in ("builtin", "xnnpack"):
        got = LiteRTModel(out, backend=backend).prefill(PROMPT)
        assert np.abs(got - want).max() < 1e-3, backend


def test_grouped_pairs_equal_one_group(moe_ckpt, converted, tmp_path, monkeypatch):
    """With the float-copy bound cut so gate_up takes one pair per group and down three (unequal
    groups in prefill: 16 pairs → [3, 3, 3, 3, 2, 2]), the graph SPLIT_Vs the pairs, GATHERs per
    group and CONCATENATEs, and its logits equal the one-group conversion's (prefill and decode)."""
    import edge_sdk.quant.moe_layout as layout
    from ai_edge_litert import schema_py_generated as schema

    monkeypatch.setattr(layout, "MOE_GROUP_BYTES", 3 * 32 * 128 * 4)   # 3 down experts, 1.5 gate_up
    (tmp_path / "experts-int4.json").write_text(json.dumps(EXPERTS_ONLY))
    grouped = tmp_path / "grouped"
    assert main(["convert", str(moe_ckpt), "-o", str(grouped), *GEO, "--recipe",
                 str(tmp_path / "experts-int4.json")]) == 0
    buf = (grouped / "prefill_decode.tflite").read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    split_sizes = [len(op.outputs) for sg in model.subgraphs for op in sg.operators
                   if names[model.operatorCodes[op.opcodeIndex].builtinCode] == "SPLIT_V"]
    assert 16 in split_sizes and 6 in split_sizes   # prefill: gate_up 16 groups, down 6 groups
    one = LiteRTModel(converted("experts-int4"), backend="builtin")
    many = LiteRTModel(grouped, backend="builtin")
    assert np.abs(many.prefill(PROMPT) - one.prefill(PROMPT)).max() < 1e-5
    for t in PROMPT[:4]:
        assert np.abs(many.decode(t) - one.decode(t)).max() < 1e-5


def test_group_sizes_at_full_size():
    """26B-A4B: decode is one group per matmul; prefill_32's 256 pairs go in 32 gate_up groups and 16
    down groups; every group's float32 experts stay under the bound."""
    from edge_sdk.gemma4 import spec_from_path
    from edge_sdk.quant.moe_layout import MOE_GROUP_BYTES, expert_float_bytes, group_sizes

    text = spec_from_path(CONFIGS / "gemma-4-26b-a4b.json").text
    assert group_sizes(text, 1, "gate_up") == [8] and group_sizes(text, 1, "down") == [8]
    for which, groups in (("gate_up", 32), ("down", 16)):
        sizes = group_sizes(text, 32, which)
        assert len(sizes) == groups and sum(sizes) == 256
        assert max(sizes) * expert_float_bytes(text, which) <= MOE_GROUP_BYTES


def test_int4_preset_kld(moe_ckpt, converted, hf_truth):
    """The int4 preset (experts int4 per channel, dense linears int4/b32, int8 KV): against the NumPy
    reference over the same codes (graph correctness) and against transformers float32 (what
    quantization costs; reported, not gated: random weights have no quantization-friendly structure)."""
    out = converted("int4")
    plan = json.loads((out / "plan.json").read_text())
    experts = [t for t in plan["tensors"] if ".experts." in t["name"]]
    assert experts and all(t["scheme"] == "int4" and t["mapped"] for t in experts)
    prompt_logits = hf_truth[0]
    ref = _reference_for(moe_ckpt, out)[0]
    want = ref.prefill(PROMPT)
    got = LiteRTModel(out, backend="xnnpack").prefill(PROMPT)
    kld, kld_max, top1 = _kl_top1(want, got)
    kld_f, kld_fmax, top1_f = _kl_top1(prompt_logits, got)
    print(f"\nmoe int4 xnnpack: vs quantized reference KLD {kld:.2e} (max {kld_max:.2e}) top-1 {top1:.3f}; "
          f"vs transformers float32 KLD {kld_f:.3e} (max {kld_fmax:.3e}) top-1 {top1_f:.3f}")
    assert kld < MAX_KLD and top1 >= MIN_TOP1


@pytest.mark.parametrize("recipe", ["int4", "experts-int4"])
def test_expert_bytes_equal_plan(recipe, moe_ckpt, converted):
    """Each expert stack: codes buffer == planned data bytes, == the Preparer's packed codes; its
    float32 scales [E, out] == the planned overhead."""
    out = converted(recipe)
    plan = json.loads((out / "plan.json").read_text())
    consts = {t.name: t for t in read_tflite(out / "prefill_decode.tflite").constants}
    prep, plan_obj = _reference_for(moe_ckpt, out)[2:]
    by_name = plan_obj.by_name()
    for t in (t for t in plan["tensors"] if ".experts." in t["name"]):
        c = consts[t["name"]]
        assert c.nbytes == t["data_bytes"] and consts[t["name"] + "_scales"].nbytes == t["overhead_bytes"]
        assert t["overhead_bytes"] == 4 * t["shape"][0] * t["shape"][1]
        with open(out / "prefill_decode.tflite", "rb") as f:
            f.seek(c.offset)
            assert f.read(c.nbytes) == prep.prepare(by_name[t["name"]]).value.packed.tobytes(), t["name"]


def test_full_size_plan_fits_googles_q4_0():
    """26B-A4B int4 (experts int4 per channel): planned peak at 4K <= Google's 14.4 GB (Q4_0)."""
    from edge_sdk.gemma4 import spec_from_path
    from edge_sdk.quant.memory import estimate_memory
    from edge_sdk.quant.plan import make_plan
    from edge_sdk.quant.presets import PRESETS

    spec = spec_from_path(CONFIGS / "gemma-4-26b-a4b.json")
    for name in ("int8", "int4", "mobile"):
        experts = [t for t in make_plan(spec, PRESETS[name]).tensors if t.component == "moe" and len(t.shape) == 3]
        assert len(experts) == 60 and all(t.config is not None for t in experts), name
    peak = estimate_memory(make_plan(spec, PRESETS["int4"]), 4096).peak_bytes
    assert 12e9 < peak <= 14.4e9


def test_expert_recipe_refusals():
    from edge_sdk.errors import RecipeError
    from edge_sdk.gemma4 import spec_from_path
    from edge_sdk.quant.config import AffineConfig
    from edge_sdk.quant.plan import make_plan
    from edge_sdk.quant.presets import EXPERTS
    from edge_sdk.quant.recipe import Recipe, Rule

    spec = spec_from_path(CONFIGS / "gemma-4-26b-a4b.json")
    for cfg in (AffineConfig(bits=4, granularity="block", block_size=32), AffineConfig(bits=2)):
        with pytest.raises(RecipeError, match="MoE experts"):
            make_plan(spec, Recipe("x", (Rule(EXPERTS, cfg),)))

"""One owner for the KV-cache layout (``edge_sdk.quant.kv_layout``): the planner counts, the converter
emits and ``pipeline.planned_memory`` reads back the same buffers; sliding layers carry ring buffers
of ``min(C, W + T - 1)`` slots, and the model still computes what transformers computes when the
context runs far past the window (several prefill chunks, decode past the ring, chunks that wrap).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.errors import RecipeError
from edge_sdk.litert.reader import read_tflite
from edge_sdk.litert.runtime import LiteRTModel
from edge_sdk.pipeline import convert, plan_model, planned_memory
from edge_sdk.quant.config import KVCacheConfig
from edge_sdk.quant.kv_layout import KvLayout, kv_layout, ring_length
from edge_sdk.quant.memory import estimate_memory
from edge_sdk.quant.plan import make_plan
from edge_sdk.quant.presets import PRESETS
from edge_sdk.gemma4 import spec_from_path

E2B = Path(__file__).resolve().parents[1] / "models" / "configs" / "gemma-4-e2b.json"
ITEM = {"float32": 4, "int8": 1}


def test_ring_length_and_e2b_layout():
    assert ring_length(512, 32, 4096) == 543 and ring_length(512, 32, 256) == 256
    text = spec_from_path(E2B).text
    lay = kv_layout(text, KVCacheConfig(8, "token_head"), 4096, 32)
    assert [b.name for b in lay.buffers][:4] == ["kv_cache_k_0", "kv_cache_v_0", "kv_cache_k_1", "kv_cache_v_1"]
    assert {b.layer for b in lay.buffers} == set(range(15))        # KV-shared layers 15..34: none
    k0, v4 = lay.buffer("kv_cache_k_0"), lay.buffer("kv_cache_v_4")
    assert (k0.shape, k0.ring, k0.window, k0.dtype) == ((1, 1, 543, 256), True, 512, "int8")
    assert (v4.shape, v4.ring, v4.sequence_axis) == ((1, 1, 512, 4096), False, 3)
    assert lay.bytes == sum(math.prod(b.shape) for b in lay.buffers) == 12 * 2 * 543 * 256 + 3 * 2 * 4096 * 512
    assert "per-tensor" in lay.adaptation and lay.scale_granularity == "per_tensor"
    assert KvLayout.from_json(json.loads(json.dumps(lay.to_json()))) == lay
    short = kv_layout(text, KVCacheConfig(32), 256, 32)             # ring not shorter: full-length
    assert not short.ring_layers and short.buffer("kv_cache_k_0").shape == (1, 1, 256, 256)
    assert short.adaptation is None and short.dtype == "float32"
    with pytest.raises(RecipeError, match="float16"):
        kv_layout(text, KVCacheConfig(16), 4096, 32)


def test_planner_counts_the_layout_and_says_what_is_emitted():
    plan = make_plan(spec_from_path(E2B), PRESETS["mobile"])
    for ctx in (512, 4096, 32768):
        mem = estimate_memory(plan, ctx, 32)
        assert mem.kv_cache_bytes == mem.kv.bytes == sum(b for _, b in mem.kv_by_layer)
    rep = plan_model(E2B, recipe="mobile", text_only=True, context=4096)
    text = rep.to_text()
    assert "int8/per-tensor" in text and "ring of 543 slots" in text and "note: int8 per-token_head" in text
    assert rep.to_json()["kv_cache"]["layout"]["adaptation"].startswith("int8 per-token_head")


@pytest.fixture(scope="module")
def converted(multimodal_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("kv_layout")
    done = {}

    def get(recipe: str, context: int = 64, prefill: int = 8) -> Path:
        key = (recipe, context, prefill)
        if key not in done:
            done[key] = root / f"{recipe}-{context}-{prefill}"
            convert(multimodal_ckpt, done[key], recipe=recipe, text_only=True, context=context, prefill=prefill)
        return done[key]
    return get


@pytest.mark.parametrize("recipe,context,prefill", [("mobile", 64, 8), ("float", 64, 8), ("mobile", 64, 32),
                                                    ("mobile", 16, 8)])
def test_planned_kv_bytes_equal_the_emitted_buffers(recipe, context, prefill, multimodal_ckpt, converted):
    """The planner's KV bytes == the bytes of the state buffers in the .tflite signatures, exactly;
    model.json's layout and planned_memory agree."""
    out = converted(recipe, context, prefill)
    info = read_tflite(out / "prefill_decode.tflite")
    meta = json.loads((out / "model.json").read_text())
    sizes = {}
    for sig in info.signatures.values():      # prefill_<T>, decode, score_<T>: the same state buffers
        got = {n: ITEM[t.dtype] * math.prod(t.shape) for n, t in sig.inputs.items() if n.startswith("kv_cache_")}
        assert got == {n: ITEM[t.dtype] * math.prod(t.shape) for n, t in sig.outputs.items()
                       if n.startswith("kv_cache_")}
        sizes = sizes or got
        assert got == sizes
    src = spec_from_path(multimodal_ckpt)
    plan = make_plan(src, PRESETS[recipe])
    mem = estimate_memory(plan, context, prefill)
    emitted = sum(sizes.values())
    assert mem.kv_cache_bytes == emitted == meta["kv_cache"]["bytes"]
    assert {b["name"]: b["bytes"] for b in meta["kv_cache"]["buffers"]} == sizes
    assert planned_memory(out, context, None)["kv_cache_bytes"] == emitted
    ring = {b["length"] for b in meta["kv_cache"]["buffers"] if b["ring"]}
    assert ring == ({min(context, 8 + prefill - 1)} - {context})      # sliding window 8
    if recipe == "mobile":
        assert meta["kv_cache"]["adaptation"] and "per-tensor" in meta["kv_cache"]["adaptation"]


def _hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("backend", ["builtin", "xnnpack"])
def test_ring_matches_transformers_far_past_the_window(backend, multimodal_ckpt, converted, load_hf):
    """Float recipe, context 64, prefill 8, window 8: rings of 15 slots. A 45-token prompt (6 chunks,
    the last one padded), then greedy decode to position 63: every position's logits (prompt and
    decode) equal transformers' on the same sequence; the same with chunks starting at odd
    positions (a prefill of 5 first, so the 8-token chunks wrap around the ring's end)."""
    pytest.importorskip("torch")
    out = converted("float", 64, 8)
    rng = np.random.default_rng(7)
    prompt = [2] + rng.integers(7, 512, 44).tolist()
    m = LiteRTModel(out, backend=backend)
    rows = [m.prefill(prompt)]
    seq = list(prompt)
    while len(seq) < 64:
        seq.append(int(rows[-1][-1].argmax()))
        if len(seq) < 64:
            rows.append(m.decode(seq[-1])[None])
    got = np.concatenate(rows)
    want = _hf_logits(load_hf(multimodal_ckpt), seq[:-1])
    diff = float(np.abs(got - want).max())
    print(f"\nring float {backend}: {got.shape[0]} positions, max |diff| vs transformers {diff:.3g}")
    assert got.shape == want.shape == (63, 512) and diff < 1e-3
    assert (got.argmax(-1)[len(prompt) - 1:] == np.asarray(seq[len(prompt):])).all()

    m.reset()
    odd = np.concatenate([m.prefill(seq[:5]), m.prefill(seq[5:50]), m.prefill(seq[50:63])])
    assert float(np.abs(odd - want).max()) < 1e-3

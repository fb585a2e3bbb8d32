"""edge_sdk.reference (NumPy Gemma 4 decoder) against transformers 5.23, float32, eager attention.

Fixtures (tests/conftest.py): a multimodal E2B-style checkpoint (PLE, KV sharing over a sliding and a
full layer, double-wide MLP, window 8, partial RoPE, softcap) and a dense k_eq_v checkpoint.
Prompts are longer than the sliding window; decoding runs 16 steps past it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_sdk.errors import ConfigError, InputError
from edge_sdk.reference import Reference, UnsupportedByReference, weights_from_checkpoint
from edge_sdk.gemma4 import spec_from_path, text_tensors

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TOL = 1e-4
STEPS = 16
PROMPTS = {
    "multimodal": [435, 327, 263, 140, 159, 23, 41, 11, 92, 416, 333, 467, 259, 311, 497, 374, 324, 279,
                   287, 478, 144, 418, 344, 4],
    "kv_eq": [243, 263, 387, 486, 20, 76, 421, 485, 129, 161, 445, 218, 142, 424, 133, 211, 330, 282, 46,
              17, 443, 386, 429, 276, 419, 170, 233, 404, 66, 157, 66, 233],
}
VARIANTS = ("multimodal", "kv_eq")
NATIVE = {"multimodal": "model.language_model.", "kv_eq": "model."}


def _hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


def _hf_greedy(model, ids, n):
    """Manual greedy loop through transformers' KV cache: (tokens, logits per step [n, V])."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        cache = out.past_key_values
        logits = [out.logits[0, -1].numpy()]
        toks = [int(logits[-1].argmax())]
        for _ in range(n - 1):
            out = model(input_ids=torch.tensor([[toks[-1]]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits[0, -1].numpy())
            toks.append(int(logits[-1].argmax()))
    return toks, np.stack(logits)


def _hf_generate(model, ids, n):
    import copy

    gc = copy.deepcopy(model.generation_config)
    gc.do_sample = False
    gc.max_new_tokens = n
    gc.eos_token_id = None          # the reference's greedy does not stop at EOS
    gc.pad_token_id = 0
    gc.output_logits = True
    gc.return_dict_in_generate = True
    with torch.no_grad():
        g = model.generate(torch.tensor([ids]), generation_config=gc)
    return g.sequences[0, len(ids):].tolist(), np.stack([step[0].numpy() for step in g.logits])


@pytest.fixture(scope="module")
def ckpts(multimodal_ckpt, kv_eq_ckpt):
    return {"multimodal": multimodal_ckpt, "kv_eq": kv_eq_ckpt}


# ---- the fixtures exercise what they claim ---------------------------------------------------------

def test_fixtures_exercise_every_feature(ckpts):
    mm = spec_from_path(ckpts["multimodal"]).text
    layers = mm.layers
    window = mm.sliding_window
    assert window < len(PROMPTS["multimodal"]) and window < len(PROMPTS["kv_eq"])
    assert sum(layer.attention == "full" and not layer.kv_shared for layer in layers) >= 2
    shared = [layer for layer in layers if layer.kv_shared]
    assert len(shared) >= 2 and {layer.attention for layer in shared} == {"sliding", "full"}
    assert all(layer.intermediate_size == 2 * layers[0].intermediate_size for layer in shared)
    assert mm.has_ple and mm.final_logit_softcapping == 30.0
    full = [layer for layer in layers if layer.attention == "full"]
    assert full[0].head_dim != layers[0].head_dim
    assert full[0].rope.kind == "proportional" and full[0].rope.partial_rotary_factor < 1
    assert {"vision", "audio"} <= {t.name for t in spec_from_path(ckpts["multimodal"]).towers}

    kv = spec_from_path(ckpts["kv_eq"]).text
    assert kv.num_kv_shared_layers == 0 and not kv.has_ple
    kfull = [layer for layer in kv.layers if layer.attention == "full"]
    assert kfull and all(layer.k_eq_v for layer in kfull)
    assert kfull[0].num_kv_heads != kv.layers[0].num_kv_heads
    assert not any(t.name.endswith("v_proj.weight") and t.layer in {l.index for l in kfull}
                   for t in text_tensors(kv))

    # every float tensor was perturbed away from transformers' constant init
    w = weights_from_checkpoint(ckpts["multimodal"])
    for name in w.binding.text:
        arr = w(name)
        if name.endswith("layer_scalar"):
            assert arr[0] != 1.0 and 0.5 <= arr[0] <= 1.5, name
        else:
            assert np.ptp(arr) > 0, f"{name} is constant"


# ---- prefill --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_matches_transformers(variant, ckpts, load_hf):
    ids = PROMPTS[variant]
    want = _hf_logits(load_hf(ckpts[variant]), ids)
    got = Reference.from_checkpoint(ckpts[variant]).prefill(ids)
    assert got.shape == want.shape == (len(ids), 512)
    assert got.dtype == np.float32
    diff = float(np.abs(got - want).max())
    print(f"\n{variant}: prefill max abs diff {diff:.3g} over {len(ids)} positions (logit std {want.std():.2f})")
    assert diff < TOL


# ---- decode through the KV cache -----------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_matches_transformers(variant, ckpts, load_hf):
    ids = PROMPTS[variant]
    model = load_hf(ckpts[variant])
    hf_toks, hf_logits = _hf_greedy(model, ids, STEPS)
    gen_toks, gen_logits = _hf_generate(model, ids, STEPS)
    assert gen_toks == hf_toks

    ref = Reference.from_checkpoint(ckpts[variant])
    toks = ref.greedy(ids, STEPS)
    assert toks == hf_toks
    assert len(set(toks)) >= 3, "greedy decoding collapsed; the fixture no longer exercises the cache"

    ref.reset()
    steps = [ref.prefill(ids, last_only=True)]
    for tok in toks[:-1]:
        steps.append(ref.decode(tok))
    steps = np.stack(steps)
    assert ref.pos == len(ids) + STEPS - 1
    diffs = np.abs(steps - hf_logits).max(axis=-1)
    gdiff = float(np.abs(steps - gen_logits).max())
    print(f"\n{variant}: decode per-step max abs diff {diffs.max():.3g} (vs generate {gdiff:.3g}); tokens {toks}")
    assert diffs.max() < TOL and gdiff < TOL


# ---- config forms and prefixes --------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_config_forms_agree(variant, ckpts, gemma4_fixture, load_hf):
    plc, hub = ckpts[variant], gemma4_fixture(variant, config_form="hub")
    s_plc, s_hub = spec_from_path(plc), spec_from_path(hub)
    assert (s_plc.config_form, s_hub.config_form) == ("per_layer_config", "hub")
    assert s_plc.text == s_hub.text
    ids = PROMPTS[variant]
    a = Reference.from_checkpoint(plc).prefill(ids)
    b = Reference.from_checkpoint(hub).prefill(ids)
    assert np.array_equal(a, b)
    # transformers reads the hub form to the same model
    hf_diff = float(np.abs(_hf_logits(load_hf(hub), ids) - b).max())
    assert hf_diff < TOL


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prefix", ["model.language_model.", "model.", ""])
def test_prefixes_agree(variant, prefix, ckpts, gemma4_fixture):
    path = gemma4_fixture(variant, prefix=prefix) if prefix != NATIVE[variant] else ckpts[variant]
    w = weights_from_checkpoint(path)
    assert w.binding.prefix == prefix
    assert all(stored == prefix + canonical for canonical, stored in w.binding.text.items())
    ids = PROMPTS[variant]
    got = Reference(w.spec.text, w).prefill(ids)
    want = Reference.from_checkpoint(ckpts[variant]).prefill(ids)
    assert np.array_equal(got, want)


def test_bf16_checkpoint(gemma4_fixture, load_hf):
    """bf16 weights are read as float32; transformers loaded in float32 from the same file agrees."""
    path = gemma4_fixture("multimodal", dtype="bfloat16")
    w = weights_from_checkpoint(path)
    assert w.binding.inventory.dtype == "BF16"
    ids = PROMPTS["multimodal"]
    diff = float(np.abs(Reference(w.spec.text, w).prefill(ids) - _hf_logits(load_hf(path), ids)).max())
    assert diff < TOL


# ---- masks: the sliding window is exactly W keys (own position included), shared layers too ------

@pytest.mark.parametrize("variant", VARIANTS)
def test_window_off_by_one_is_caught(variant, ckpts, load_hf):
    ids = PROMPTS[variant]
    want = _hf_logits(load_hf(ckpts[variant]), ids)
    w = weights_from_checkpoint(ckpts[variant])
    text = w.spec.text

    def with_layers(fn):
        return dataclasses.replace(text, layers=tuple(fn(layer) for layer in text.layers))

    for dw in (-1, 1):
        t = with_layers(lambda l: dataclasses.replace(l, window=l.window + dw) if l.window else l)
        assert np.abs(Reference(t, w).prefill(ids) - want).max() > 1e-2
    if text.num_kv_shared_layers:
        t = with_layers(lambda l: dataclasses.replace(l, window=None) if l.kv_shared and l.window else l)
        assert np.abs(Reference(t, w).prefill(ids) - want).max() > 1e-2


# ---- API behaviour --------------------------------------------------------------------------------

def test_streaming_weights_and_chunked_prefill(multimodal_ckpt):
    w = weights_from_checkpoint(multimodal_ckpt)
    reads: list[str] = []

    def counting(name):
        reads.append(name)
        return w(name)

    ids = PROMPTS["multimodal"]
    cached = Reference(w.spec.text, w)
    want = cached.prefill(ids)
    streamed = Reference(w.spec.text, counting, cache_weights=False)
    assert np.array_equal(streamed.prefill(ids), want)
    assert sorted(reads) == sorted(w.binding.text)   # every tensor once per forward, nothing kept
    reads.clear()
    streamed.decode(5)
    assert sorted(reads) == sorted(w.binding.text)   # re-read on the next step

    chunked = Reference(w.spec.text, w)
    a = chunked.prefill(ids[:10])
    b = chunked.prefill(ids[10:])
    np.testing.assert_allclose(np.concatenate([a, b]), want, atol=1e-5, rtol=0)


def test_kv_quant_hook(multimodal_ckpt):
    w = weights_from_checkpoint(multimodal_ckpt)
    text = w.spec.text
    ids = PROMPTS["multimodal"]
    want = Reference(text, w).prefill(ids)
    shapes = []

    def identity(x):
        shapes.append(x.shape)
        return x

    assert np.array_equal(Reference(text, w, kv_quant=identity).prefill(ids), want)
    own = [l for l in text.layers if not l.kv_shared]
    assert shapes == [s for l in own for s in [(l.num_kv_heads, len(ids), l.head_dim)] * 2]

    def int8(x):  # per-token, per-head symmetric int8
        scale = np.abs(x).max(axis=-1, keepdims=True) / 127.0
        return np.round(x / np.where(scale == 0, 1, scale)).clip(-127, 127) * scale

    got = Reference(text, w, kv_quant=int8).prefill(ids)
    diff = np.abs(got - want).max()
    assert 0 < diff < 0.5


def test_max_cache_and_errors(multimodal_ckpt):
    ref = Reference.from_checkpoint(multimodal_ckpt, max_cache=26)
    ids = PROMPTS["multimodal"]
    ref.prefill(ids)
    ref.decode(1)
    ref.decode(2)
    with pytest.raises(InputError, match="max_cache"):
        ref.decode(3)
    ref.reset()
    ref.prefill(ids)
    with pytest.raises(InputError, match="range"):
        ref.decode(512)
    with pytest.raises(InputError):
        ref.prefill([])


def test_untied_head_is_refused(kv_eq_ckpt):
    w = weights_from_checkpoint(kv_eq_ckpt)
    untied = dataclasses.replace(w.spec.text, tie_word_embeddings=False)
    with pytest.raises(UnsupportedByReference, match="untied") as e:
        Reference(untied, w)
    assert isinstance(e.value, NotImplementedError) and isinstance(e.value, ConfigError)

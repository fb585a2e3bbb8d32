"""compressed-tensors checkpoints with their default min-max scales (codes -8 / -128 in nearly every
module) convert exactly, and run right in every kernel path that the model allows (issue 12).

Runtime facts first (single FULLY_CONNECTED models in ai-edge-litert 2.3), then checkpoints written
by the real ``compressed-tensors`` library (``tests/ct_fixture.py``) over the tiny ``kv_eq`` Gemma 4
fixture in bfloat16: int4 / int8 / int2 per channel, int4 group 32, and asymmetric (refused).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_sdk.cli import main
from edge_sdk.errors import InputError
from edge_sdk.litert.dtypes import dequantize_reference
from edge_sdk.litert.graph import GraphBuilder
from edge_sdk.litert.writer import LiteRTWriter

from test_litert_writer import PATHS, codes_in, fc_model, relerr, run


# ---- kernel facts -----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [4, 8])
def test_builtin_fc_flips_the_most_negative_code(tmp_path, bits):
    """Unit inputs read the weights back. Builtin hybrid FC: INT8 -128 reads as +128 where the
    input is negative (a sign-flip overflow; only those elements are off); INT4 -8 reads as +8 for
    either input sign and drags one more element of the same row to +8. XNNPACK reads both right.
    (Per-tensor scales and asymmetric input quantization are wrong too: not a zero-point or
    per-channel matter.)"""
    k, lo = 32, -(1 << (bits - 1))
    codes = codes_in(np.random.default_rng(bits), lo + 1, -lo - 1, (4, k))
    codes[1, 5] = codes[3, 0] = lo
    p = fc_model(tmp_path / "w.tflite", lambda g: g.quantized_weight(
        "w", codes, np.ones(4, np.float32), bits, allow_full_range=True), k, rows=1)

    def read_back(mode, sign):
        cols = [run(p, "main", {"x": sign * np.eye(k, dtype=np.float32)[None, j:j + 1]}, mode)["y"][0, 0]
                for j in range(k)]
        return np.rint(sign * np.stack(cols, axis=1)).astype(int)

    got = read_back("interp-builtin", -1)
    assert got[1, 5] == got[3, 0] == -lo
    assert set(np.argwhere(got != codes)[:, 0].tolist()) == {1, 3}      # only the rows holding it
    assert np.array_equal(read_back("interp-xnnpack", -1), codes)
    assert np.array_equal(read_back("interp-builtin", 1), codes) == (bits == 8)


@pytest.mark.parametrize("k", [32, 64, 1536])
def test_int4_one_block_per_row_is_right_in_every_path(tmp_path, k):
    """The encoding taken for int4 per-channel codes holding -8: BlockwiseQuantization with
    block_size = K and the channel scales as FLOAT16 [N, 1]: exact, right in all four paths."""
    rng = np.random.default_rng(k)
    codes = codes_in(rng, -8, 7, (24, k))
    codes[:, 3] = -8
    s16 = rng.uniform(0.001, 0.05, 24).astype(np.float16)
    x = rng.standard_normal((1, 5, k)).astype(np.float32)
    p = fc_model(tmp_path / "b.tflite", lambda g: g.blockwise_weight("w", codes, s16[:, None], k), k, rows=5)
    ref = x @ dequantize_reference(codes, s16.astype(np.float32)).T
    for mode in PATHS:
        assert relerr(run(p, "main", {"x": x}, mode)["y"], ref) < 2e-2, mode


def test_int4_blocks_under_32_are_silently_zero(tmp_path):
    """Why K < 32 (or odd K) widens to int8 instead: such blocks return all zeros in every path."""
    codes = codes_in(np.random.default_rng(0), -8, 7, (8, 16))
    p = fc_model(tmp_path / "z.tflite", lambda g: g.blockwise_weight(
        "w", codes, np.ones((8, 1), np.float16), 16), 16, rows=1)
    x = np.random.default_rng(1).standard_normal((1, 1, 16)).astype(np.float32)
    assert not np.any(run(p, "main", {"x": x}, "interp-xnnpack")["y"])


# ---- checkpoints written by compressed-tensors -----------------------------------------------

SCHEMES = {"int4ch": dict(bits=4), "int8ch": dict(bits=8), "int4g32": dict(bits=4, strategy="group", group_size=32),
           "int2ch": dict(bits=2), "asym": dict(bits=4, symmetric=False)}


@pytest.fixture(scope="module")
def ct(gemma4_fixture, tmp_path_factory):
    """``ct(name)`` → (checkpoint, recipe path): built once per module with the real library."""
    pytest.importorskip("compressed_tensors")
    from ct_fixture import make_ct_checkpoint
    from edge_sdk.quant.presets import EMBED, FLOAT_KEEP, INT2_CH, INT4_B32, INT4_CH, INT8_CH, KV_INT8, LINEAR
    from edge_sdk.quant.recipe import Recipe, Rule, recipe_to_json

    src = gemma4_fixture("kv_eq", dtype="bfloat16")
    root = tmp_path_factory.mktemp("ct")
    cfgs = {"int4ch": INT4_CH, "int8ch": INT8_CH, "int4g32": INT4_B32, "int2ch": INT2_CH, "asym": INT4_CH}
    built = {}

    def get(name):
        if name not in built:
            d = make_ct_checkpoint(src, root / name, **SCHEMES[name])
            r = root / f"{name}.recipe.json"
            r.write_text(recipe_to_json(Recipe(f"ct-{name}", (Rule(LINEAR, cfgs[name]), Rule(EMBED, INT8_CH),
                                                              Rule(FLOAT_KEEP, None)), KV_INT8)))
            built[name] = (d, r)
        return built[name]
    return get


def _convert(ct, name, tmp_path):
    ckpt, recipe = ct(name)
    out = tmp_path / f"out-{name}"
    rc = main(["convert", str(ckpt), "-o", str(out), "--recipe", str(recipe), "--context", "64", "--prefill", "8"])
    return rc, ckpt, out


def _library_dequantized(ckpt):
    """Every quantized module's weight as compressed-tensors itself decompresses it (bf16)."""
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from safetensors.torch import load_file

    qc = json.loads((ckpt / "config.json").read_text())["quantization_config"]
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**qc["config_groups"]["group_0"]["weights"]))
    comp = BaseCompressor.load_from_registry(qc["format"])
    sd = load_file(str(ckpt / "model.safetensors"))
    out = {}
    for key in sd:
        if key.endswith(".weight_scale"):
            m = key[: -len(".weight_scale")]
            local = {k[len(m) + 1:]: v for k, v in sd.items() if k.startswith(m + ".")}
            out[m] = comp.decompress(local, scheme)["weight"].to(torch.float32).numpy()
    return out


@pytest.mark.parametrize("name", ["int4ch", "int8ch", "int4g32", "int2ch"])
def test_ct_checkpoint_converts_exactly(ct, name, tmp_path):
    rc, ckpt, out = _convert(ct, name, tmp_path)
    assert rc == 0
    conv = json.loads((out / "conversion.json").read_text())
    plan = {t["name"]: t for t in json.loads((out / "plan.json").read_text())["tensors"]}
    ct_tensors = [n for n, s in conv["scale_sources"].items() if s == "compressed_tensors"]
    assert len(ct_tensors) == 40                                     # every Linear of the decoder
    assert all(conv["rerounding_error"][n] == 0.0 for n in ct_tensors)
    # the weights we pack are exactly what the library dequantizes (its bf16 rounding of c·s)
    from edge_sdk.checkpoint import open_checkpoint
    from edge_sdk.pipeline import open_source
    from edge_sdk.quant.apply import Preparer
    from edge_sdk.quant.plan import make_plan
    from edge_sdk.quant.recipe import recipe_from_json
    import ml_dtypes
    src = open_source(ckpt)
    qplan = make_plan(src.spec, recipe_from_json(json.dumps(conv["recipe"])), scale_sources=src.scale_sources)
    prep = Preparer(open_checkpoint(ckpt), src.binding, qplan)
    lib = _library_dequantized(ckpt)
    lowest = 0
    for n in ct_tensors:
        p = prep.prepare(qplan.by_name()[n])
        mine = p.dequantized()
        assert np.array_equal(mine.astype(ml_dtypes.bfloat16).astype(np.float32), lib[src.binding.text[n]]), n
        lowest += int((p.value.codes == -(1 << (p.value.config.bits - 1))).any())
    assert lowest >= 30       # the min-max scales put -8 / -128 / -2 in (nearly) every module
    meta = json.loads((out / "model.json").read_text())
    if name == "int4ch":
        assert {plan[n].get("encoding") for n in ct_tensors} <= {
            "int4 blockwise, one block per row (float16 scales)", None}
    assert bool(meta["requires_xnnpack"]) == (name == "int8ch")


@pytest.mark.parametrize("name,backend", [("int4ch", "builtin"), ("int4ch", "xnnpack"), ("int8ch", "xnnpack"),
                                          ("int4g32", "builtin"), ("int2ch", "builtin")])
def test_ct_model_matches_reference(ct, name, backend, tmp_path):
    """LiteRT's logits vs the NumPy reference over the dequantized weights (same int8 KV)."""
    from test_convert import MAX_KLD, MIN_TOP1, PROMPTS, _compare_to_reference
    rc, ckpt, out = _convert(ct, name, tmp_path)
    assert rc == 0
    kld, top1, _ = _compare_to_reference(ckpt, out, PROMPTS["kv_eq"], backend, f"ct {name}")
    assert kld < MAX_KLD and top1 >= MIN_TOP1


def test_int8_full_range_model_refuses_builtin(ct, tmp_path, capfd):
    from edge_sdk.litert.runtime import LiteRTModel
    rc, _, out = _convert(ct, "int8ch", tmp_path)
    assert rc == 0
    need = json.loads((out / "model.json").read_text())["requires_xnnpack"]
    assert "layers.0.mlp.down_proj.weight" in need["tensors"] and "XNNPACK" in need["reason"]
    with pytest.raises(InputError, match=r"model\.json.*builtin.*fix: run it with --backend xnnpack"):
        LiteRTModel(out, backend="builtin")
    capfd.readouterr()
    assert main(["run", str(out), "--backend", "builtin", "-n", "2", "--ids", "2,243"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.json" in err[0] and "--backend xnnpack" in err[0]


def test_asymmetric_is_refused_naming_file_tensor_and_fix(ct, tmp_path, capfd):
    capfd.readouterr()
    rc, ckpt, _ = _convert(ct, "asym", tmp_path)
    assert rc == 2
    err = capfd.readouterr().err.strip().splitlines()[-1]
    assert str(ckpt) in err and "weight_zero_point'" in err and "symmetric: true" in err

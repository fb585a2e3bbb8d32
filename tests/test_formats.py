"""The format registry (``edge_sdk.quant.formats``): each format's code range and packing checked
bit for bit against a direct reference (as gguf-py's tests check its quant types), its byte formula
against what the writer puts in real LiteRT files, and the one JSON tag scheme of configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.cli import main
from edge_sdk.errors import RecipeError
from edge_sdk.gemma4 import spec_from_path
from edge_sdk.litert.graph import GraphBuilder
from edge_sdk.litert.reader import read_tflite
from edge_sdk.litert.writer import LiteRTWriter
from edge_sdk.quant.config import (AffineConfig, DictionaryConfig, KVCacheConfig, config_from_dict,
                                   config_to_dict)
from edge_sdk.quant.formats import FORMATS, format_of, packed_nbytes
from edge_sdk.quant.kernels import quantize
from edge_sdk.quant.plan import make_plan
from edge_sdk.quant.presets import ATTN, EMBED, FLOAT_KEEP, MLP, PLE_LINEAR, PLE_TABLE
from edge_sdk.quant.recipe import Recipe, Rule, recipe_from_json, recipe_to_json

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-gemma4" / "float"

# The reference: what each format's codes are, written out by hand from the LiteRT facts
# (docs/design.md; quant/formats.py): (qmin, qmax, bits, LiteRT type of the codes).
REFERENCE = {
    "float32": (0, 0, 32, "float32"),
    "int8": (-127, 127, 8, "int8"), "int4": (-7, 7, 4, "int4"), "int2": (-2, 1, 2, "int2"),
    "int8/block": (-127, 127, 8, None), "int4/block": (-8, 7, 4, "int4"), "int2/block": (-2, 1, 2, None),
    "dict2": (0, 3, 2, "int2"), "dict4": (0, 15, 4, "int4"), "dict8": (0, 255, 8, "uint8"),
    "kv_float32": (0, 0, 32, "float32"), "kv_float16": (0, 0, 16, None), "kv_int8": (-128, 127, 8, "int8"),
}
CODED = [k for k, f in FORMATS.items() if f.bits <= 8]


def ref_pack(codes: np.ndarray, bits: int) -> bytes:
    """Element i in bits (i·bits mod 8) .. of byte i·bits // 8, two's complement, one at a time."""
    out = bytearray(packed_nbytes(codes.size, bits))
    for i, c in enumerate(codes.reshape(-1).tolist()):
        out[i * bits // 8] |= (int(c) & ((1 << bits) - 1)) << (i * bits % 8)
    return bytes(out)


def test_every_format_is_the_reference():
    assert set(FORMATS) == set(REFERENCE)
    for key, (lo, hi, bits, litert) in REFERENCE.items():
        f = FORMATS[key]
        assert (f.qmin, f.qmax, f.bits, f.litert) == (lo, hi, bits, litert), key
        assert (f.litert is None) == (f.refusal is not None), key   # what LiteRT cannot hold says why


@pytest.mark.parametrize("key", CODED)
@pytest.mark.parametrize("count", [1, 7, 33, 256])
def test_packing_round_trip_bit_exact(key, count):
    f = FORMATS[key]
    rng = np.random.default_rng(count)
    every = np.arange(f.qmin, f.qmax + 1)              # each code at least once (when it fits)
    codes = np.concatenate([every, rng.integers(f.qmin, f.qmax + 1, count)])[:max(count, 1)]
    codes = codes.astype(np.int8 if f.signed else np.uint8)
    packed = f.pack(codes)
    assert packed.dtype == np.uint8 and packed.tobytes() == ref_pack(codes, f.bits)
    assert packed.size == packed_nbytes(codes.size, f.bits)
    back = f.unpack(packed, codes.size)
    assert back.dtype == codes.dtype and np.array_equal(back, codes)


CONFIGS = [AffineConfig(8), AffineConfig(4), AffineConfig(2), AffineConfig(8, "block", 32),
           AffineConfig(4, "block", 32)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.format_key)
def test_quantize_emits_the_format_range(cfg):
    """PTQ codes stay in the format's range and reach both of its ends over enough rows."""
    w = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    w[:, 0] = -np.abs(w).max(axis=1)                   # every row's extreme negative
    qt = quantize(w, cfg)
    assert (cfg.qmin, cfg.qmax) == (cfg.format.qmin, cfg.format.qmax)
    assert qt.codes.min() >= cfg.qmin and qt.codes.max() <= cfg.qmax
    assert qt.codes.min() == -cfg.qmax                 # the symmetric max|w| / qmax grid
    assert qt.packed.tobytes() == ref_pack(qt.codes, cfg.bits)


def test_refusals_are_one_message(tmp_path):
    """The refused formats raise their registry message wherever they are met."""
    msg = FORMATS["int2/block"].refusal
    with pytest.raises(RecipeError) as config:
        AffineConfig(2, "block", 32)
    g = GraphBuilder(LiteRTWriter(tmp_path / "never-written.tflite"), "m")
    with pytest.raises(RecipeError) as graph:
        g.blockwise_weight("w", np.zeros((2, 32), np.int8), np.ones((2, 1), np.float16), 32, bits=2)
    assert config.value.detail == graph.value.detail == msg
    with pytest.raises(RecipeError) as i8:
        g.blockwise_weight("w", np.zeros((2, 32), np.int8), np.ones((2, 1), np.float16), 32, bits=8)
    assert i8.value.detail == FORMATS["int8/block"].refusal
    from edge_sdk.quant.kv_layout import kv_layout
    with pytest.raises(RecipeError) as kv:
        kv_layout(spec_from_path(TINY).text, KVCacheConfig(bits=16), 64, 8)
    assert kv.value.detail == FORMATS["kv_float16"].refusal


def _recipe(name: str, mlp, attn, ple_linear, embed, ple_table) -> Recipe:
    return Recipe(name, (Rule(MLP, mlp), Rule(ATTN, attn), Rule(PLE_LINEAR, ple_linear), Rule(EMBED, embed),
                         Rule(PLE_TABLE, ple_table), Rule(FLOAT_KEEP, None)), KVCacheConfig(bits=8, granularity="tensor"))


# Every runnable weight format on a real tensor of the tiny model.
RECIPES = [
    _recipe("a", AffineConfig(2), AffineConfig(4, "block", 32), AffineConfig(8), AffineConfig(4),
            DictionaryConfig(index_bits=2, codebook_size=4, rows_per_codebook=64, iterations=5)),
    _recipe("b", AffineConfig(4, "block", 64), AffineConfig(8), AffineConfig(4), AffineConfig(8),
            DictionaryConfig(index_bits=8, codebook_size=200, rows_per_codebook=256, iterations=5)),
    _recipe("c", None, AffineConfig(2), AffineConfig(2), AffineConfig(4),
            DictionaryConfig(index_bits=4, codebook_size=16, rows_per_codebook=3, iterations=5)),
]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_bytes_of_a_shape_are_the_bytes_written(recipe, tmp_path):
    """``format.nbytes(shape, cfg)`` (what the plan reports) is exactly what the writer puts in the
    files: the codes buffer, the FLOAT16 block scales / float32 codebooks buffer, or one float32
    scale + int64 zero point per channel in the quantization parameters."""
    rfile = tmp_path / "r.json"
    rfile.write_text(recipe_to_json(recipe))
    out = tmp_path / "m"
    assert main(["convert", str(TINY), "-o", str(out), "--recipe", str(rfile), "--text-only"]) == 0
    files = {p.name: {t.name: t for t in read_tflite(p).constants} for p in out.glob("*.tflite")}
    seen = set()
    for tp in make_plan(spec_from_path(TINY), recipe).tensors:
        fmt = format_of(tp.config)
        data, over = fmt.nbytes(tp.shape, tp.config)
        consts = files[f"{tp.model}.tflite"]
        c = consts[tp.name]
        if tp.config is not None and c.dtype != fmt.litert:   # a full-range encoding (codes hold -8)
            continue
        seen.add(fmt.key)
        assert (c.nbytes, c.dtype) == (data, fmt.litert), tp.name
        side = consts.get(f"{tp.name}_scales") or consts.get(f"{tp.name}_codebooks")
        if fmt.layout == "channel":
            assert side is None and c.quantization == f"per-channel(axis 0, {tp.shape[0]} scales)"
            assert over == 12 * tp.shape[0]
        else:
            assert (side.nbytes if side is not None else 0) == over, tp.name
    assert {format_of(r.config).key for r in recipe.rules} <= seen


def test_json_one_tag_scheme_and_unknown_tag(tmp_path, capsys):
    for cfg in CONFIGS + [DictionaryConfig(), KVCacheConfig(bits=8, granularity="token_head")]:
        d = config_to_dict(cfg)
        assert d["type"] in ("affine", "dictionary", "kv_cache")
        allowed = ("kv_cache",) if isinstance(cfg, KVCacheConfig) else ("affine", "dictionary")
        assert config_from_dict(json.loads(json.dumps(d)), allowed=allowed) == cfg
    obj = json.loads(recipe_to_json(RECIPES[0]))
    obj["rules"][0]["config"]["type"] = "int2"
    with pytest.raises(RecipeError) as e:
        recipe_from_json(json.dumps(obj))
    assert e.value.detail == "unknown config type 'int2' in rule 1 ('" + MLP + "')"
    assert e.value.fix == "valid types: affine, dictionary"
    p = tmp_path / "r.json"
    p.write_text(json.dumps(obj))
    assert main(["plan", str(TINY), "--recipe", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown config type 'int2'" in err[0] and "valid types" in err[0]

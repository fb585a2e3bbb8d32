"""Kernels against slow straightforward references: packing, affine, dictionary k-means,
compressed-tensors unpacking, QAT sidecar, grid recovery."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from edge_sdk.errors import CheckpointError, RecipeError
from edge_sdk.gemma4 import spec_from_path
from edge_sdk.quant.config import AffineConfig, DictionaryConfig
from edge_sdk.quant.grid import recover_grid_scales
from edge_sdk.quant.formats import pack, qrange, unpack
from edge_sdk.quant.kernels import compute_scales, dequantize, from_codes, quantize
from edge_sdk.quant.kernels_dict import DictionaryQuantizer
from edge_sdk.quant.plan import make_plan, tensor_bytes
from edge_sdk.quant.presets import PRESETS
from edge_sdk.quant.scales import (ct_pack_int32, ct_unpack_int32, parse_ct_config,
                                   read_ct_weight, read_qat_sidecar, write_qat_sidecar)

RNG = np.random.default_rng(1234)
E2B = Path(__file__).resolve().parents[1] / "models" / "configs" / "gemma-4-e2b.json"


# ---------------------------------------------------------------- packing (LiteRT layout)

def ref_pack(codes, bits):
    """tflite::tensor_utils::PackInt8IntoDenseInt, transcribed literally."""
    src = [int(c) for c in np.asarray(codes).reshape(-1)]
    n, per, mask = len(src), 8 // bits, (1 << bits) - 1
    out = []
    for i in range(n // per):
        v = 0
        for j in range(per):
            v |= (src[per * i + j] & mask) << (j * bits)
        out.append(v & 0xFF)
    if n % per:
        v = 0
        for j, c in enumerate(src[n - n % per:]):
            v |= (c & mask) << (j * bits)
        out.append(v)
    return np.array(out, np.uint8)


def test_pack_hand_written_bytes():
    assert pack(np.array([1, -2, 3, -8], np.int8), 4).tolist() == [0xE1, 0x83]
    assert pack(np.array([1, -2, 3], np.int8), 4).tolist() == [0xE1, 0x03]   # tail padded
    assert pack(np.array([1, -2, -1, 0, -1], np.int8), 2).tolist() == [0x39, 0x03]
    assert pack(np.array([-127, 127, -1], np.int8), 8).tolist() == [0x81, 0x7F, 0xFF]
    # rows are not padded: a 3×3 int4 tensor is 9 contiguous nibbles = 5 bytes
    assert pack(np.arange(9, dtype=np.int8).reshape(3, 3) - 4, 4).tolist() == \
        [0xDC, 0xFE, 0x10, 0x32, 0x04]


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("count", [1, 2, 3, 5, 257])
def test_pack_matches_litert_reference_and_unpacks(bits, count):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = RNG.integers(lo, hi + 1, count).astype(np.int8)
    p = pack(codes, bits)
    assert np.array_equal(p, ref_pack(codes, bits))
    assert np.array_equal(unpack(p, bits, count), codes)
    u = RNG.integers(0, 1 << bits, count).astype(np.uint8)
    assert np.array_equal(unpack(pack(u, bits), bits, count, signed=False), u)
    with pytest.raises(ValueError):
        unpack(np.concatenate([p, [0]]).astype(np.uint8), bits, count)


# ---------------------------------------------------------------- affine

def ref_quantize(w, cfg, scales=None):
    """Per-element Python loops, float32 arithmetic throughout."""
    w = np.asarray(w, np.float32)
    rows, cols = w.shape
    qmin, qmax = cfg.qmin, cfg.qmax
    bs = cfg.block_size or cols
    nb = cols // bs
    s = np.zeros((rows, nb), np.float32)
    codes = np.zeros(w.shape, np.int8)
    deq = np.zeros(w.shape, np.float32)
    for r in range(rows):
        for b in range(nb):
            blk = w[r, b * bs:(b + 1) * bs]
            if scales is not None:
                sc = np.float32(np.asarray(scales).reshape(rows, nb)[r, b])
            else:
                m = np.float32(max(abs(float(x)) for x in blk))
                sc = np.float32(m / np.float32(qmax)) if m > 0 else np.float32(1)
                if cfg.block_size:
                    sc = np.float32(np.float16(sc))
            s[r, b] = sc
            for j in range(bs):
                c = min(max(np.rint(np.float32(blk[j] / sc)), qmin), qmax)
                codes[r, b * bs + j] = c
                deq[r, b * bs + j] = np.float32(c) * sc
    return codes, s, deq


CONFIGS = [AffineConfig(8), AffineConfig(4), AffineConfig(2), AffineConfig(8, "block", 32),
           AffineConfig(4, "block", 64)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_affine_bit_exact_against_reference(cfg):
    w = (RNG.standard_normal((5, 128)) * 0.05).astype(np.float32)
    w[2] = 0.0  # all-zero row: scale 1, codes 0
    qt = quantize(w, cfg)
    codes, s, deq = ref_quantize(w, cfg)
    assert qt.codes.dtype == np.int8 and np.array_equal(qt.codes, codes)
    assert qt.scales.dtype == (np.float16 if cfg.block_size else np.float32)
    assert np.array_equal(qt.scales.astype(np.float32).reshape(s.shape), s)
    assert np.array_equal(dequantize(qt), deq)
    assert qt.error == float(np.abs(w - deq).max())
    assert np.all(qt.scales.astype(np.float32).reshape(5, -1)[2] == 1) and not qt.codes[2].any()
    assert np.array_equal(unpack(qt.packed, cfg.bits, w.size).reshape(w.shape), qt.codes)
    if cfg.granularity == "channel":
        assert np.array_equal(dequantize(qt), qt.codes.astype(np.float32) * qt.scales[:, None])


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_given_scales_are_used_bit_for_bit(cfg):
    rows, cols = 4, 64
    nb = cols // (cfg.block_size or cols)
    s = RNG.uniform(0.001, 0.01, (rows, nb)).astype(np.float32)
    if cfg.block_size:
        s = s.astype(np.float16).astype(np.float32)
    s_in = s.reshape(rows) if nb == 1 and not cfg.block_size else s
    w = (RNG.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    qt = quantize(w, cfg, scales=s_in)
    assert np.array_equal(qt.scales.astype(np.float32), s_in)
    codes, _, deq = ref_quantize(w, cfg, scales=s)
    assert np.array_equal(qt.codes, codes) and np.array_equal(dequantize(qt), deq)
    on_grid = dequantize(qt)  # exactly representable: re-quantizing must give error 0.0
    again = quantize(on_grid, cfg, scales=s_in)
    assert again.error == 0.0 and np.array_equal(again.codes, qt.codes)


def test_given_scales_checked_never_altered():
    w = np.ones((2, 32), np.float32)
    with pytest.raises(RecipeError, match="float16"):
        quantize(w, AffineConfig(4, "block", 32), scales=np.full((2, 1), 0.1, np.float32))
    with pytest.raises(RecipeError, match="> 0"):
        quantize(w, AffineConfig(4), scales=np.array([0.1, 0.0], np.float32))
    with pytest.raises(RecipeError, match="shape"):
        quantize(w, AffineConfig(4), scales=np.ones(3, np.float32))
    with pytest.raises(RecipeError, match="float32"):
        quantize(w, AffineConfig(4), scales=np.array([0.1, 0.2], np.float64))
    with pytest.raises(RecipeError, match="multiple of block_size"):
        quantize(np.ones((2, 48), np.float32), AffineConfig(4, "block", 32))
    # clipping: int8 symmetric never emits -128
    qt = quantize(np.array([[-1.0, 1.0]], np.float32), AffineConfig(8),
                  scales=np.array([1e-3], np.float32))
    assert qt.codes.tolist() == [[-127, 127]]
    assert compute_scales(np.zeros((2, 32)), AffineConfig(4, "block", 32)).tolist() == [[1], [1]]


def test_from_codes_checks_range():
    qt = from_codes(np.array([[-2, 1]], np.int8), np.array([0.5], np.float32), AffineConfig(2))
    assert dequantize(qt).tolist() == [[-1.0, 0.5]] and qt.error == 0.0
    with pytest.raises(RecipeError, match="outside"):
        from_codes(np.array([[2, 1]]), np.array([0.5], np.float32), AffineConfig(2))


def test_torch_replicates_the_formula_bit_for_bit():
    torch = pytest.importorskip("torch")
    w = (RNG.standard_normal((16, 96)) * 0.05).astype(np.float32)
    for cfg in (AffineConfig(4), AffineConfig(2)):
        qt = quantize(w, cfg)
        s = torch.from_numpy(qt.scales)[:, None]
        c = torch.clamp(torch.round(torch.from_numpy(w) / s), cfg.qmin, cfg.qmax)
        assert np.array_equal(c.to(torch.int8).numpy(), qt.codes)
        assert np.array_equal((c * s).numpy(), dequantize(qt))


# ---------------------------------------------------------------- dictionary

def ref_kmeans_group(x, k, iterations):
    """The module docstring's algorithm, one group at a time, with np.searchsorted."""
    x = np.asarray(x, np.float32).reshape(-1)
    n = x.size
    xs = np.sort(x)
    s = np.concatenate([[0.0], np.cumsum(xs.astype(np.float64))])
    c = np.array([xs[((2 * j + 1) * n) // (2 * k)] for j in range(k)], np.float32)
    for _ in range(iterations):
        b = (c[:-1].astype(np.float64) + c[1:].astype(np.float64)) / 2
        hi = [0] + [int(np.searchsorted(xs.astype(np.float64), v, side="right")) for v in b] + [n]
        new = c.copy()
        for j in range(k):
            if hi[j + 1] > hi[j]:
                new[j] = np.float32((s[hi[j + 1]] - s[hi[j]]) / (hi[j + 1] - hi[j]))
        c = np.sort(new)
    b = (c[:-1].astype(np.float64) + c[1:].astype(np.float64)) / 2
    codes = (x.astype(np.float64)[:, None] > b[None, :]).sum(axis=1).astype(np.uint8)
    return c, codes


@pytest.mark.parametrize("k, rows_per_codebook, chunk", [(16, 4, 1 << 24), (12, 3, 100),
                                                         (4, 1, 1 << 24), (256, 8, 700)])
def test_dictionary_bit_exact_against_reference(k, rows_per_codebook, chunk):
    bits = 8 if k > 16 else (4 if k > 4 else 2)
    cfg = DictionaryConfig(bits, k, rows_per_codebook, iterations=6)
    w = (RNG.standard_normal((22, 40)) * 0.03).astype(np.float32)   # 22 rows: a short group
    w[:2] = np.round(w[:2] * 100) / 100                               # ties and duplicates
    dt = DictionaryQuantizer(cfg, chunk_values=chunk).quantize(w)
    assert dt.codebooks.shape == (-(-22 // rows_per_codebook), k)
    for g in range(dt.codebooks.shape[0]):
        rows = slice(g * rows_per_codebook, (g + 1) * rows_per_codebook)
        c, codes = ref_kmeans_group(w[rows], k, 6)
        assert np.array_equal(dt.codebooks[g], c), g
        assert np.array_equal(dt.codes[rows].reshape(-1), codes), g
        assert np.all(np.diff(dt.codebooks[g]) >= 0)
    deq = DictionaryQuantizer.dequantize(dt)
    assert dt.error == float(np.abs(w - deq).max())
    assert dt.rmse == pytest.approx(float(np.sqrt(np.mean((w - deq).astype(np.float64) ** 2))),
                                    rel=1e-6)
    assert np.array_equal(unpack(dt.packed, bits, w.size, signed=False).reshape(w.shape), dt.codes)


def test_dictionary_is_deterministic_and_handles_empty_clusters():
    w = (RNG.standard_normal((64, 300))).astype(np.float32)
    cfg = DictionaryConfig(4, 16, 16)
    a = DictionaryQuantizer(cfg).quantize(w)
    b = DictionaryQuantizer(cfg, chunk_values=5000).quantize(w.copy())
    assert a.packed.tobytes() == b.packed.tobytes()
    assert a.codebooks.tobytes() == b.codebooks.tobytes()
    few = np.tile(np.array([0.0, 1.0, -2.5], np.float32), (8, 10))   # 3 values, 16 entries
    d = DictionaryQuantizer(cfg).quantize(few)
    assert np.all(np.isfinite(d.codebooks)) and d.error == 0.0


def test_dictionary_given_codebooks_are_used_as_is():
    w = (RNG.standard_normal((40, 50)) * 0.1).astype(np.float32)
    cfg = DictionaryConfig(4, 16, 16)
    fitted = DictionaryQuantizer(cfg).quantize(w)
    again = DictionaryQuantizer(cfg, chunk_values=900).quantize(w, codebooks=fitted.codebooks)
    assert np.array_equal(again.codes, fitted.codes)
    assert again.codebooks.tobytes() == fitted.codebooks.tobytes()
    assert again.error == fitted.error and again.rmse == pytest.approx(fitted.rmse, rel=1e-9)
    books = np.tile(np.linspace(-0.3, 0.3, 16, dtype=np.float32), (3, 1))
    q = DictionaryQuantizer(cfg).quantize(w, codebooks=books)
    nearest = np.abs(w[..., None] - books[0]).argmin(axis=-1)      # first minimum: ties lower
    assert np.array_equal(q.codes, nearest)
    with pytest.raises(RecipeError, match="sorted"):
        DictionaryQuantizer(cfg).quantize(w, codebooks=books[:, ::-1])
    with pytest.raises(RecipeError, match="shape"):
        DictionaryQuantizer(cfg).quantize(w, codebooks=books[:2])


def test_dictionary_beats_uniform_on_a_gaussian_table():
    w = (RNG.standard_normal((256, 512)) * 0.02).astype(np.float32)
    d = DictionaryQuantizer(DictionaryConfig(4, 16, 64)).quantize(w)
    u = quantize(w, AffineConfig(4))
    u_rmse = float(np.sqrt(np.mean((w - dequantize(u)).astype(np.float64) ** 2)))
    assert d.rmse < 0.8 * u_rmse            # Lloyd-Max 16 levels: 0.0975σ; uniform: ~0.13σ
    assert d.rmse < 0.1 * 0.02


def test_mobile_ple_dictionary_overhead_is_small():
    """The planner's bytes for E2B's PLE table under ``mobile`` (make_plan on the committed E2B config)
    equal a count made here from the config alone (4-bit codes, one 16-entry float32 codebook per 64
    rows), the codebooks cost under 0.1 % of the codes, and the kernels store exactly the bytes the
    planner counts (a slice of the same layout with a short last group)."""
    text = json.loads(E2B.read_text())["text_config"]
    rows = text["vocab_size_per_layer_input"]
    cols = text["num_hidden_layers"] * text["hidden_size_per_layer_input"]
    plan = make_plan(spec_from_path(E2B), PRESETS["mobile"])
    ple = next(t for t in plan.tensors if t.role == "embed_tokens_per_layer")
    assert ple.shape == (rows, cols) and ple.mapped and isinstance(ple.config, DictionaryConfig)
    assert ple.data_bytes == rows * cols // 2 == 1_174_405_120
    assert ple.overhead_bytes == -(-rows // 64) * 16 * 4 == 256 * 1024
    assert ple.overhead_bytes / ple.data_bytes < 1e-3
    w = (RNG.standard_normal((130, 64)) * 0.02).astype(np.float32)     # groups of 64, 64, 2 rows
    dt = DictionaryQuantizer(ple.config).quantize(w)
    assert (dt.packed.nbytes, dt.codebooks.nbytes) == tensor_bytes(w.shape, ple.config) == (130 * 32, 3 * 16 * 4)


# ---------------------------------------------------------------- compressed-tensors

def ref_ct_pack(codes, bits):
    """compressed-tensors pack_to_int32 (packed_dim=1): offset-binary, low bits first, each
    row padded to whole int32 words."""
    per = 32 // bits
    out = []
    for row in np.asarray(codes):
        vals = [int(v) + (1 << (bits - 1)) for v in row]
        vals += [0] * ((-len(vals)) % per)
        words = []
        for i in range(0, len(vals), per):
            word = 0
            for j, v in enumerate(vals[i:i + per]):
                word |= v << (j * bits)
            words.append(word - (1 << 32) if word >= 1 << 31 else word)
        out.append(words)
    return np.array(out, np.int32)


@pytest.mark.parametrize("bits, cols", [(4, 64), (4, 13), (8, 10), (2, 33)])
def test_ct_unpack_exact_against_reference_packer(bits, cols):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = RNG.integers(lo, hi + 1, (5, cols)).astype(np.int8)
    packed = ref_ct_pack(codes, bits)
    assert np.array_equal(ct_pack_int32(codes, bits), packed)
    assert np.array_equal(ct_unpack_int32(packed, bits, codes.shape), codes)
    assert np.array_equal(ct_unpack_int32(ct_pack_int32(codes.T, bits).T, bits, codes.shape,
                                          packed_dim=0), codes)
    with pytest.raises(CheckpointError):
        ct_unpack_int32(packed[:, :-1], bits, codes.shape)


QC = {"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {
          "mlp": {"targets": ["re:.*mlp\\.(gate|up|down)_proj$"],
                  "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                              "strategy": "group", "group_size": 32}},
          "rest": {"targets": ["Linear"],
                   "weights": {"num_bits": 8, "type": "int", "symmetric": True,
                               "strategy": "channel"}}},
      "ignore": ["lm_head", "re:.*vision.*"]}


def test_ct_config_and_module_read_exact():
    cfg = parse_ct_config(QC)
    assert cfg.scheme_for("model.layers.0.mlp.up_proj").name == "mlp"
    assert cfg.scheme_for("model.layers.0.self_attn.q_proj").name == "rest"
    assert cfg.scheme_for("lm_head") is None and cfg.scheme_for("model.vision.x") is None
    codes = RNG.integers(-8, 8, (6, 64)).astype(np.int8)
    scale = RNG.uniform(1e-3, 1e-2, (6, 2)).astype(ml_dtypes.bfloat16)
    name = "model.layers.0.mlp.up_proj"
    t = {f"{name}.weight_packed": ref_ct_pack(codes, 4), f"{name}.weight_scale": scale,
         f"{name}.weight_shape": np.array([6, 64]),
         f"{name}.weight_zero_point": np.zeros((6, 2), np.int8)}
    ctw = read_ct_weight(t, name, cfg.scheme_for(name))
    assert np.array_equal(ctw.codes, codes) and ctw.zero_points is None
    assert np.array_equal(ctw.scales, scale.astype(np.float32))
    qt = ctw.to_quantized()
    assert qt.config == AffineConfig(4, "block", 32) and qt.scales.dtype == np.float16
    expect = (codes.reshape(6, 2, 32) * scale.astype(np.float32)[:, :, None]).reshape(6, 64)
    assert np.array_equal(dequantize(qt), expect.astype(np.float32))
    # int-quantized per channel, asymmetric zero points packed along the output axis
    qc = dict(QC, format="int-quantized")
    sch = parse_ct_config(qc).scheme_for("q")
    c8 = RNG.integers(-127, 128, (5, 16)).astype(np.int8)
    assert np.array_equal(read_ct_weight({"q.weight": c8, "q.weight_scale": np.ones((5, 1))},
                                         "q", sch).codes, c8)
    asym = parse_ct_config({**QC, "config_groups": {"g": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "strategy": "channel", "symmetric": False}}}}).scheme_for("a")
    zp = np.array([[0], [1], [-3], [7], [0]], np.int8)
    ta = {"a.weight_packed": ref_ct_pack(codes[:5, :8], 4), "a.weight_shape": np.array([5, 8]),
          "a.weight_scale": np.ones((5, 1), np.float32),
          "a.weight_zero_point": ct_pack_int32(zp.T, 4).T.copy()}
    w = read_ct_weight(ta, "a", asym)
    assert np.array_equal(w.zero_points, zp.reshape(5))
    with pytest.raises(RecipeError, match="zero points"):
        w.to_quantized()
    with pytest.raises(CheckpointError, match="g_idx"):
        read_ct_weight({**t, f"{name}.weight_g_idx": np.zeros(64)}, name, cfg.scheme_for(name))
    with pytest.raises(CheckpointError, match="activations"):
        parse_ct_config({**QC, "config_groups": {"g": {"input_activations": {"num_bits": 8}}}})


# ---------------------------------------------------------------- QAT sidecar

def test_qat_sidecar_round_trip(tmp_path):
    scales = {"layers.0.mlp.down_proj": RNG.uniform(0.01, 0.1, 8).astype(np.float32),
              "layers.0.self_attn.q_proj": RNG.uniform(0.01, 0.1, (8, 2)).astype(np.float32)}
    path = tmp_path / "qat_scales.safetensors"
    write_qat_sidecar(path, scales, PRESETS["mobile"])
    sc = read_qat_sidecar(path)
    assert sc.recipe == PRESETS["mobile"] and sc.scales.keys() == scales.keys()
    for k, v in scales.items():
        assert sc.scales[k].tobytes() == v.tobytes()
    from safetensors.numpy import save_file
    save_file({"x.scale": np.ones(2, np.float32)}, str(tmp_path / "bad.safetensors"),
              metadata={"format": "other"})
    with pytest.raises(CheckpointError, match="not an edge_sdk QAT sidecar"):
        read_qat_sidecar(tmp_path / "bad.safetensors")
    with pytest.raises(RecipeError, match="float32"):
        write_qat_sidecar(path, {"a": np.ones(2)}, PRESETS["float"])


# ---------------------------------------------------------------- grid recovery

def _grid(bits, rows, cols, block=None, max_code=None):
    qmin, qmax = qrange(bits)
    hi = qmax if max_code is None else max_code
    codes = RNG.integers(max(qmin, -hi - 1), hi + 1, (rows, cols)).astype(np.int8)
    nb = cols // (block or cols)
    s = RNG.uniform(1e-3, 3e-2, (rows, nb)).astype(np.float32)
    w = (codes.reshape(rows, nb, -1).astype(np.float32) * s[:, :, None]).reshape(rows, cols)
    return codes, s, w


@pytest.mark.parametrize("bits, block, max_code", [(2, None, None), (4, None, None),
                                                   (8, None, None), (4, 32, None),
                                                   (4, None, 3), (8, None, 50)])
def test_grid_recovery_is_exact_in_float32(bits, block, max_code):
    codes, s, w = _grid(bits, 24, 128, block, max_code)
    w[3] = 0.0
    g = recover_grid_scales(w, bits, "block" if block else "channel", block)
    assert g.on_grid and g.conclusive and g.warning is None
    assert g.max_error == 0.0
    sc = g.scales.reshape(24, -1)
    deq = (g.codes.reshape(24, sc.shape[1], -1).astype(np.float32) * sc[:, :, None])
    assert np.array_equal(deq.reshape(w.shape), w)
    if max_code is None:
        keep = np.arange(24) != 3
        assert np.array_equal(g.codes[keep], codes[keep])


def test_grid_recovery_in_bfloat16():
    codes, s, w = _grid(4, 16, 256)
    g = recover_grid_scales(w.astype(ml_dtypes.bfloat16), 4)
    assert g.on_grid and g.conclusive and np.array_equal(g.codes, codes)
    assert 0 < g.max_error <= 2.0 ** -8 * float(np.abs(w).max()) * 2
    assert np.allclose(g.scales, s.reshape(-1), rtol=2.0 ** -7)
    _, _, w8 = _grid(8, 4, 256)
    g8 = recover_grid_scales(w8.astype(ml_dtypes.bfloat16), 8)
    assert not g8.conclusive and "cannot resolve" in g8.warning


def test_grid_recovery_reports_off_grid_weights():
    w = (RNG.standard_normal((12, 256)) * 0.02).astype(np.float32)
    g = recover_grid_scales(w, 4)
    assert not g.on_grid and g.off_grid_rows == 12 and g.off_grid_fraction > 0.5
    assert g.max_error > 0 and "not on an int4 channel grid" in g.warning
    assert "% of elements" in g.summary()
    _, _, ok = _grid(4, 12, 256)
    j = int(np.argsort(np.abs(ok[5]))[ok.shape[1] // 2])  # not the row's max: that would move the scale
    ok[5, j] += 1e-4                                  # one nudged element
    g1 = recover_grid_scales(ok, 4)
    assert g1.off_grid_rows == 1 and 0 < g1.off_grid_fraction < 0.01
    with pytest.raises(CheckpointError, match="not on an int4"):
        recover_grid_scales(w, 4, require=True)

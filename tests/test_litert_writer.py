"""edge_sdk.litert writer + graph builder, proven in the real LiteRT runtime (ai-edge-litert 2.3).

Every model runs in four CPU paths: Interpreter with its default XNNPACK delegate,
Interpreter with builtin kernels only (BUILTIN_WITHOUT_DEFAULT_DELEGATES), and the
CompiledModel API with CpuKernelMode.XNNPACK and CpuKernelMode.BUILTIN.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.compiled_model import CompiledModel, CpuKernelMode, CpuOptions, Options
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from edge_sdk.errors import EdgeSdkError, InputError, RecipeError
from edge_sdk.litert.dtypes import Quantization, dequantize_reference
from edge_sdk.quant.formats import pack, unpack
from edge_sdk.litert.graph import GraphBuilder
from edge_sdk.litert.writer import LiteRTWriter, WriterState, WriterStateError

PATHS = ["interp-xnnpack", "interp-builtin", "compiled-xnnpack", "compiled-builtin"]


def run(path, sig, feeds, mode, cache=""):
    """Run signature ``sig`` of the model at ``path`` in one of PATHS; outputs by name."""
    path = str(path)
    if mode.startswith("interp"):
        kind = (OpResolverType.AUTO if mode == "interp-xnnpack"
                else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it = Interpreter(model_path=path, experimental_op_resolver_type=kind)
        return it.get_signature_runner(sig)(**feeds)
    kernel = CpuKernelMode.XNNPACK if mode == "compiled-xnnpack" else CpuKernelMode.BUILTIN
    cm = CompiledModel.from_file(path, options=Options(cpu_options=CpuOptions(
        kernel_mode=kernel, xnnpack_weight_cache_path=cache)))
    ins = {}
    for k, v in feeds.items():
        ins[k] = cm.create_input_buffer_by_name(sig, k)
        ins[k].write(np.ascontiguousarray(v))
    details = cm.get_output_tensor_details(sig)
    outs = {k: cm.create_output_buffer_by_name(sig, k) for k in details}
    cm.run_by_name(sig, ins, outs)
    return {k: outs[k].read(int(np.prod(d["shape"])), np.dtype(d["dtype"])).reshape(d["shape"])
            for k, d in details.items()}


def relerr(y, ref):
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def fc_model(path, weight_fn, k, rows=4, **writer_kw):
    """x[1, rows, k] -> FULLY_CONNECTED(weight_fn(g)) -> y, signature 'main'."""
    w = LiteRTWriter(path, fsync=False, **writer_kw)
    g = GraphBuilder(w, "main")
    x = g.input("x", [1, rows, k], "float32")
    g.output("y", g.fully_connected(x, weight_fn(g)))
    g.finish("main")
    w.finish()
    return path


def codes_in(rng, lo, hi, shape):
    return rng.integers(lo, hi + 1, shape).astype(np.int8)


def read_model(path):
    with open(path, "rb") as f:
        data = f.read()
    return data, schema.Model.GetRootAs(data, 0)


# ---- float and weight-only quantized FULLY_CONNECTED -------------------------------------

@pytest.mark.parametrize("mode", PATHS)
def test_float_fc_equals_numpy(tmp_path, mode):
    rng = np.random.default_rng(0)
    wt = rng.standard_normal((48, 64)).astype(np.float32)
    x = rng.standard_normal((1, 4, 64)).astype(np.float32)
    p = fc_model(tmp_path / "fc.tflite", lambda g: g.const("w", wt), 64)
    np.testing.assert_allclose(run(p, "main", {"x": x}, mode)["y"], x @ wt.T,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_weight_only_fc_per_channel(tmp_path, bits):
    """Float in, INT8/INT4/INT2 per-channel codes (zero point 0, axis 0), float out. The
    kernels quantize activations to int8 on the fly ("hybrid"), hence ~0.5% error."""
    rng = np.random.default_rng(bits)
    codes = codes_in(rng, *{8: (-127, 127), 4: (-7, 7), 2: (-2, 1)}[bits], (48, 64))
    scale = rng.uniform(0.01, 0.1, 48).astype(np.float32)
    x = rng.standard_normal((1, 4, 64)).astype(np.float32)
    p = fc_model(tmp_path / "q.tflite", lambda g: g.quantized_weight("w", codes, scale, bits), 64)
    ref = x @ dequantize_reference(codes, scale).T
    for mode in PATHS:
        assert relerr(run(p, "main", {"x": x}, mode)["y"], ref) < 2e-2, mode


@pytest.mark.parametrize("bits", [8, 4])
def test_builtin_fc_miscomputes_most_negative_code(tmp_path, bits):
    """Runtime fact: builtin hybrid FC is wrong in every output channel that contains -128
    (INT8) / -8 (INT4); XNNPACK is right. Hence the symmetric default range."""
    rng = np.random.default_rng(10 + bits)
    lo = -(1 << (bits - 1))
    codes = codes_in(rng, lo, -lo - 1, (48, 64))
    scale = rng.uniform(0.01, 0.1, 48).astype(np.float32)
    with pytest.raises(InputError, match="builtin"):
        GraphBuilder(LiteRTWriter(tmp_path / "r.tflite"), "m").quantized_weight(
            "w", codes, scale, bits)
    p = fc_model(tmp_path / "q.tflite", lambda g: g.quantized_weight(
        "w", codes, scale, bits, allow_full_range=True), 64)
    x = rng.standard_normal((1, 4, 64)).astype(np.float32)
    ref = x @ dequantize_reference(codes, scale).T
    assert relerr(run(p, "main", {"x": x}, "interp-xnnpack")["y"], ref) < 2e-2
    assert relerr(run(p, "main", {"x": x}, "interp-builtin")["y"], ref) > 0.1


@pytest.mark.parametrize("bits", [4, 2])
def test_subbyte_layout_is_flat_low_bits_first(tmp_path, bits):
    """The right packing gives the right answer; high-bits-first gives garbage. K=33 is odd,
    so rows are not byte-aligned: FC reads the flattened tensor packed contiguously."""
    rng = np.random.default_rng(20 + bits)
    n, k = 5, 33
    codes = codes_in(rng, -(1 << (bits - 1)) + (bits > 2), (1 << (bits - 1)) - 1, (n, k))
    scale = rng.uniform(0.01, 0.1, n).astype(np.float32)
    low = pack(codes, bits)
    assert np.array_equal(unpack(low, bits, codes.size), codes.reshape(-1))
    per = 8 // bits
    nib = np.array([(low >> (j * bits)) & ((1 << bits) - 1) for j in range(per)]).T
    high = np.zeros_like(low)
    for j in range(per):
        high |= (nib[:, j] << ((per - 1 - j) * bits)).astype(np.uint8)
    x = rng.standard_normal((1, 4, k)).astype(np.float32)
    ref = x @ dequantize_reference(codes, scale).T
    q = Quantization(scale=tuple(scale.tolist()), zero_point=(0,) * n)
    for name, packed in (("low", low), ("high", high)):
        def weight(g, packed=packed):
            ref_ = g.writer.add_buffer(data=packed, name="w")
            return g.const("w", ref_, shape=[n, k], dtype=f"int{bits}", quantization=q)
        p = fc_model(tmp_path / f"{name}.tflite", weight, k)
        for mode in ("interp-xnnpack", "interp-builtin"):
            err = relerr(run(p, "main", {"x": x}, mode)["y"], ref)
            assert (err < 2e-2) if name == "low" else (err > 0.2), (name, mode, err)


def test_blockwise_int4_fc_and_refusals(tmp_path):
    rng = np.random.default_rng(3)
    codes = codes_in(rng, -8, 7, (48, 64))          # blockwise INT4 takes the full range
    scales = rng.uniform(0.01, 0.1, (48, 2)).astype(np.float16)
    x = rng.standard_normal((1, 4, 64)).astype(np.float32)
    p = fc_model(tmp_path / "b.tflite", lambda g: g.blockwise_weight("w", codes, scales, 32), 64)
    ref = x @ (codes * np.repeat(scales.astype(np.float32), 32, axis=1)).T
    for mode in PATHS:
        assert relerr(run(p, "main", {"x": x}, mode)["y"], ref) < 2e-2, mode
    g = GraphBuilder(LiteRTWriter(tmp_path / "r.tflite"), "m")
    for bits in (2, 8):
        with pytest.raises(RecipeError):
            g.blockwise_weight("w", codes, scales, 32, bits=bits)


def test_int2_blockwise_is_silently_zero_in_builtin(tmp_path):
    """Runtime fact behind the refusal above (built by hand, bypassing blockwise_weight)."""
    rng = np.random.default_rng(4)
    codes = codes_in(rng, -2, 1, (16, 64))

    def weight(g):
        st = g.const("s", rng.uniform(0.5, 1, (16, 2)).astype(np.float16))
        return g.const("w", codes, dtype="int2",
                       quantization=Quantization(block_scales=st.index, block_size=32))
    p = fc_model(tmp_path / "b2.tflite", weight, 64)
    x = rng.standard_normal((1, 4, 64)).astype(np.float32)
    assert not np.any(run(p, "main", {"x": x}, "interp-builtin")["y"])
    with pytest.raises((RuntimeError, ValueError)):
        run(p, "main", {"x": x}, "interp-xnnpack")


# ---- lookups -----------------------------------------------------------------------------

@pytest.mark.parametrize("dt", ["int4", "int8", "uint8"])
def test_codebook_lookup(tmp_path, dt):
    """GATHER(codes, ids) -> CAST (int4 via float32) -> ADD offset -> GATHER(codebook)."""
    rng = np.random.default_rng(5)
    bits = 4 if dt == "int4" else 8
    lo = 0 if dt == "uint8" else -(1 << (bits - 1))
    codes = rng.integers(lo, lo + (1 << bits), (64, 32))
    book = rng.standard_normal(1 << bits).astype(np.float32)
    w = LiteRTWriter(tmp_path / "cb.tflite", fsync=False)
    g = GraphBuilder(w, "embed")
    ids = g.input("ids", [1, 5], "int32")
    out = g.codebook_lookup(g.const("codes", codes, dtype=dt), ids, g.const("book", book))
    assert out.shape == (1, 5, 32) and out.dtype == "float32"
    g.output("emb", out)
    g.finish("embed")
    w.finish()
    x = np.array([[3, 0, 63, 17, 3]], np.int32)
    for mode in PATHS:
        np.testing.assert_array_equal(run(w.path, "embed", {"ids": x}, mode)["emb"],
                                      book[codes[x] - lo], err_msg=mode)


def test_lookup_refusals(tmp_path):
    g = GraphBuilder(LiteRTWriter(tmp_path / "r.tflite"), "m")
    ids = g.input("ids", [3], "int32")
    with pytest.raises(InputError, match="INT2"):
        g.gather(g.const("c2", np.zeros((4, 8)), dtype="int2"), ids)
    with pytest.raises(InputError, match="whole bytes"):   # LiteRT returns wrong rows
        g.gather(g.const("c4", np.zeros((4, 33)), dtype="int4"), ids)
    with pytest.raises(InputError, match="float32"):
        g.cast(g.const("c5", np.zeros((4, 8)), dtype="int4"), "int32")


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_embedding_lookup_quantized_table(tmp_path, bits):
    """EMBEDDING_LOOKUP dequantizes per-row scaled INT8/INT4/INT2 tables (full code range)."""
    rng = np.random.default_rng(6)
    lo = -(1 << (bits - 1))
    codes = codes_in(rng, lo, -lo - 1, (64, 32))
    scale = rng.uniform(0.01, 0.1, 64).astype(np.float32)
    w = LiteRTWriter(tmp_path / "el.tflite", fsync=False)
    g = GraphBuilder(w, "m")
    ids = g.input("ids", [5], "int32")
    g.output("emb", g.embedding_lookup(ids, g.quantized_weight(
        "table", codes, scale, bits, allow_full_range=True)))
    g.finish("m")
    w.finish()
    x = np.array([3, 0, 63, 17, 3], np.int32)
    for mode in PATHS:
        np.testing.assert_allclose(run(w.path, "m", {"ids": x}, mode)["emb"],
                                   dequantize_reference(codes, scale)[x], rtol=1e-6, err_msg=mode)


# ---- external buffers, memory, > 2 GiB layout --------------------------------------------

def _ext_model(path, wt, **kw):
    return fc_model(path, lambda g: g.const("w", wt), wt.shape[1], **kw)


def test_external_buffers_match_inline(tmp_path):
    rng = np.random.default_rng(7)
    wt = rng.standard_normal((96, 128)).astype(np.float32)        # 48 KiB -> external
    x = rng.standard_normal((1, 4, 128)).astype(np.float32)
    inline = _ext_model(tmp_path / "inline.tflite", wt, inline_limit=1 << 30)
    ext = _ext_model(tmp_path / "ext.tflite", wt)
    data, model = read_model(ext)
    assert model.Version() == 3 and model.Buffers(0).DataLength() == 0
    assert model.Buffers(0).Offset() == 0 and model.Buffers(0).Size() == 0
    outside = [model.Buffers(i) for i in range(model.BuffersLength())
               if model.Buffers(i).Offset() > 1]
    assert len(outside) == 1
    b = outside[0]
    assert b.Offset() % 16384 == 0 and b.Size() == wt.nbytes and b.DataLength() == 0
    assert data[b.Offset():b.Offset() + b.Size()] == wt.tobytes()
    assert len(data) == b.Offset() + b.Size()
    _, m_in = read_model(inline)
    assert all(m_in.Buffers(i).Offset() == 0 for i in range(m_in.BuffersLength()))
    for mode in PATHS:
        y_in = run(inline, "main", {"x": x}, mode)["y"]
        y_ext = run(ext, "main", {"x": x}, mode)["y"]
        np.testing.assert_array_equal(y_in, y_ext, err_msg=mode)
        np.testing.assert_allclose(y_ext, x @ wt.T, rtol=1e-4, atol=1e-4, err_msg=mode)


def test_external_table_stays_file_backed(tmp_path):
    """A GATHER of 4 rows from a 64 MiB external INT8 table must not copy the table into
    anonymous memory (mmapped, only touched pages count), in the builtin and CompiledModel paths."""
    v, d = 32768, 2048
    w = LiteRTWriter(tmp_path / "table.tflite", fsync=False)
    g = GraphBuilder(w, "m")

    def chunks():  # streamed 4096 rows at a time; row r holds (r % 251) - 125
        for r0 in range(0, v, 4096):
            yield np.repeat(((np.arange(r0, r0 + 4096) % 251) - 125).astype(np.int8)[:, None],
                            d, axis=1)
    table = g.const("table", w.add_buffer(v * d, producer=chunks, name="table"),
                    shape=[v, d], dtype="int8")
    ids = g.input("ids", [4], "int32")
    g.output("rows", g.cast(g.gather(table, ids), "float32"))
    g.finish("m")
    w.finish()
    script = textwrap.dedent("""
        import sys, numpy as np
        sys.path.insert(0, %r)
        from test_litert_writer import run
        def anon():
            return next(int(l.split()[1]) for l in open("/proc/self/status")
                        if l.startswith("RssAnon")) * 1024
        ids = np.array([0, 1, 30000, 32767], np.int32)
        for mode in ("interp-builtin", "compiled-xnnpack"):
            before = anon()
            rows = run(%r, "m", {"ids": ids}, mode)["rows"]
            assert np.array_equal(rows[:, 0], (ids %% 251) - 125), mode
            print(mode, anon() - before)
    """) % (os.path.dirname(__file__), str(w.path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in out.stdout.strip().splitlines():
        mode, grew = line.split()
        assert int(grew) < 16 * 2**20, (mode, int(grew))


def test_offsets_beyond_4gib_need_no_big_flatbuffer(tmp_path):
    """Lay out a 5 GiB model without writing its data: offsets are uint64 and the
    flatbuffer stays tiny (nothing hits flatbuffers' 2 GiB limit)."""
    w = LiteRTWriter(tmp_path / "huge.tflite", fsync=False)
    g = GraphBuilder(w, "m")
    big = w.add_buffer(5 * 2**30, producer=lambda: b"", name="big")
    small = w.add_buffer(2**20, producer=lambda: b"", name="small")
    table = g.const("big", big, shape=[5 * 2**20, 1024], dtype="int8")
    g.const("small", small, shape=[2**20], dtype="int8")
    ids = g.input("ids", [1], "int32")
    g.output("y", g.gather(table, ids))
    g.finish("m")
    w.write_header()
    assert w.flatbuffer_size < 4096
    assert w.buffer_offset(big) == 16384
    assert w.buffer_offset(small) == 16384 + 5 * 2**30 and w.buffer_offset(small) % 16384 == 0
    assert w.file_size == w.buffer_offset(small) + 2**20
    (tmp,) = glob.glob(str(tmp_path / ".huge.tflite.*.tmp"))
    with open(tmp, "rb") as f:
        _, model = read_model_bytes(f.read())
    assert model.Buffers(big.index).Offset() == 16384
    assert model.Buffers(small.index).Offset() == w.buffer_offset(small)
    w.abort()
    assert os.listdir(tmp_path) == []


def read_model_bytes(data):
    return data, schema.Model.GetRootAs(data, 0)


# ---- signatures sharing weights ----------------------------------------------------------

def _prefill_decode(path, wt_codes, scale, cache_len=8):
    """prefill_4 (T=4) and decode (T=1): y = FC(x, W); kv_cache[:, pos:pos+T] = y. W is INT4,
    per-channel (``scale`` [N]) or blockwise (``scale`` [N, K/32] float16)."""
    n, k = wt_codes.shape
    w = LiteRTWriter(path, fsync=False, description="edge_sdk test")
    w.add_metadata("min_runtime_version", "2.17.0")
    shared = None
    for key, t in (("prefill_4", 4), ("decode", 1)):
        g = GraphBuilder(w, key)
        x = g.input("embeddings", [1, t, k], "float32", tensor_name=f"{key}_embeddings")
        pos = g.input("input_pos", [t], "int32", tensor_name=f"{key}_input_pos")
        cache = g.input("kv_cache", [1, cache_len, n], "float32", tensor_name=f"{key}_kv_cache")
        if shared is None:
            shared = (g.quantized_weight("w", wt_codes, scale, 4) if scale.ndim == 1 else
                      g.blockwise_weight("w", wt_codes, scale, 32))
        y = g.fully_connected(x, g.share(shared))
        start = g.concatenation([g.const_i32([0]), g.slice(pos, [0], [1]), g.const_i32([0])], 0)
        g.output("kv_cache", g.dynamic_update_slice(cache, y, start,
                                                    name=f"{key}_kv_cache_output"))
        if key == "decode":
            g.output("logits", g.reshape(y, [1, 1, n], name="decode_logits_output"))
        g.finish(key)
    return w.finish()


@pytest.mark.parametrize("blockwise", [False, True])
def test_two_signatures_share_one_weight_buffer(tmp_path, blockwise):
    rng = np.random.default_rng(8)
    codes = codes_in(rng, -7, 7, (32, 128))            # 2 KiB of INT4 -> inline
    scale = rng.uniform(0.01, 0.1, (32, 4) if blockwise else 32).astype(
        np.float16 if blockwise else np.float32)
    p = _prefill_decode(tmp_path / "pd.tflite", codes, scale)
    _, model = read_model(p)
    assert model.SignatureDefsLength() == 2 and model.Description() == b"edge_sdk test"
    sigs = {model.SignatureDefs(i).SignatureKey().decode(): model.SignatureDefs(i).SubgraphIndex()
            for i in range(2)}
    assert sigs == {"prefill_4": 0, "decode": 1}
    bufs, scale_bufs = [], []
    for s in range(2):
        sg = model.Subgraphs(s)
        (t,) = [sg.Tensors(i) for i in range(sg.TensorsLength()) if sg.Tensors(i).Name() == b"w"]
        bufs.append(t.Buffer())
        if blockwise:   # each subgraph's weight names its own scales tensor (same buffer)
            details = t.Quantization().DetailsType()
            assert details == schema.QuantizationDetails.BlockwiseQuantization
            bq = schema.BlockwiseQuantization()
            bq.Init(t.Quantization().Details().Bytes, t.Quantization().Details().Pos)
            assert bq.BlockSize() == 32
            scale_bufs.append(sg.Tensors(bq.Scales()).Buffer())
    assert bufs[0] == bufs[1] > 0
    if blockwise:
        assert scale_bufs[0] == scale_bufs[1] > 0
    meta = {model.Metadata(i).Name(): model.Metadata(i).Buffer()
            for i in range(model.MetadataLength())}
    mrv = model.Buffers(meta[b"min_runtime_version"]).DataAsNumpy().tobytes()
    assert mrv.rstrip(b"\0") == b"2.17.0" and len(mrv) == 16

    wf = (codes * np.repeat(scale.astype(np.float32), 32, axis=1) if blockwise
          else dequantize_reference(codes, scale))
    cache = rng.standard_normal((1, 8, 32)).astype(np.float32)
    xp = rng.standard_normal((1, 4, 128)).astype(np.float32)
    xd = rng.standard_normal((1, 1, 128)).astype(np.float32)
    it = Interpreter(model_path=str(p))
    assert it.get_signature_list() == {
        "prefill_4": {"inputs": ["embeddings", "input_pos", "kv_cache"], "outputs": ["kv_cache"]},
        "decode": {"inputs": ["embeddings", "input_pos", "kv_cache"],
                   "outputs": ["kv_cache", "logits"]}}
    for mode in PATHS:
        c1 = run(p, "prefill_4", {"embeddings": xp, "input_pos": np.arange(2, 6, dtype=np.int32),
                                  "kv_cache": cache}, mode)["kv_cache"]
        ref = cache.copy()
        ref[0, 2:6] = xp[0] @ wf.T
        assert relerr(c1, ref) < 2e-2 and np.array_equal(c1[0, :2], cache[0, :2]), mode
        out = run(p, "decode", {"embeddings": xd, "input_pos": np.array([6], np.int32),
                                "kv_cache": c1}, mode)
        ref[0, 6] = xd[0, 0] @ wf.T
        assert relerr(out["kv_cache"], ref) < 2e-2, mode
        assert out["logits"].shape == (1, 1, 32)
        assert relerr(out["logits"][0, 0], xd[0, 0] @ wf.T) < 2e-2, mode


# ---- op coverage -------------------------------------------------------------------------

def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_ops_match_numpy(tmp_path):
    rng = np.random.default_rng(9)
    xv = rng.standard_normal((2, 3, 8)).astype(np.float32)
    pv = np.array([0, 1, 2], np.int32)
    gamma = rng.standard_normal(8).astype(np.float32)
    w = LiteRTWriter(tmp_path / "ops.tflite", fsync=False)
    g = GraphBuilder(w, "ops")
    x = g.input("x", [2, 3, 8], "float32")
    pos = g.input("pos", [3], "int32")
    ref = {}

    def out(name, t, value):
        assert t.shape == value.shape, (name, t.shape, value.shape)
        g.output(name, t)
        ref[name] = value

    ms = xv ** 2
    inv = g.rsqrt(g.add(g.mean(g.square(x), -1), 1e-6))
    rms = g.mul(g.mul(x, inv), g.add(g.const("g", gamma), 1.0))
    rms_ref = xv / np.sqrt(ms.mean(-1, keepdims=True) + 1e-6) * (gamma + 1)
    out("rms", rms, rms_ref)
    out("softcap", g.mul(g.tanh(g.div(x, 30.0)), 30.0), np.tanh(xv / 30) * 30)
    out("gelu", g.gelu(x), _gelu_tanh(xv))
    out("trig", g.sub(g.cos(x), g.sin(x)), np.cos(xv) - np.sin(xv))
    e = np.exp(xv - xv.max(-1, keepdims=True))
    out("softmax", g.softmax(x), e / e.sum(-1, keepdims=True))
    out("bmm", g.batch_matmul(x, x, adj_y=True), xv @ xv.transpose(0, 2, 1))
    out("transpose", g.transpose(x, [0, 2, 1]), xv.transpose(0, 2, 1))
    out("reshape", g.reshape(x, [6, -1]), xv.reshape(6, 8))
    out("concat", g.concatenation([x, x], -1), np.concatenate([xv, xv], -1))
    out("pack", g.pack([x, x], 0), np.stack([xv, xv]))
    out("slice", g.slice(x, [0, 1, 0], [-1, 2, 4]), xv[:, 1:3, :4])
    out("strided", g.strided_slice(x, [0, 0, 1], [2, 3, 8], [1, 1, 2]), xv[:, :, 1::2])
    p3 = g.reshape(pos, [1, 3, 1])
    keep = g.logical_and(g.greater_equal(p3, np.int32(1)), g.less(p3, np.int32(2)))
    pv3 = pv.reshape(1, 3, 1)
    out("select", g.select_v2(keep, x, 0.0), np.where((pv3 >= 1) & (pv3 < 2), xv, 0.0))
    out("greater", g.cast(g.greater(x, 0.0), "float32"), (xv > 0).astype(np.float32))
    out("clamp", g.minimum(g.maximum(x, -0.5), 0.5), np.clip(xv, -0.5, 0.5))
    out("pow", g.pow(g.add(g.square(x), 1.0), 0.5), np.sqrt(xv ** 2 + 1))
    out("sum", g.sum(x, [1], keep_dims=False), xv.sum(1))
    q = Quantization(scale=(0.05,), zero_point=(0,))
    out("qdq", g.dequantize(g.quantize(x, "int8", q)),
        np.clip(np.round(xv / 0.05), -128, 127) * 0.05)
    out("gather", g.gather(x, g.const_i32([2, 0]), axis=1), xv[:, [2, 0]])
    out("posf", g.cast(pos, "float32"), pv.astype(np.float32))
    # int8 per-token KV-cache quantization done in-graph: s = max|x| / 127, q = round(x / s)
    sc = g.div(g.reduce_max(g.abs(x), -1), 127.0)
    q8 = g.cast(g.round(g.div(x, sc)), "int8")
    s_ref = np.abs(xv).max(-1, keepdims=True) / 127
    out("kv_int8", g.mul(g.cast(q8, "float32"), sc), np.round(xv / s_ref) * s_ref)
    g.finish("ops")
    w.finish()
    for mode in PATHS:
        got = run(w.path, "ops", {"x": xv, "pos": pv}, mode)
        assert set(got) == set(ref)
        for k, v in ref.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-4, err_msg=f"{mode} {k}")


def test_shape_inference_errors(tmp_path):
    g = GraphBuilder(LiteRTWriter(tmp_path / "s.tflite"), "m")
    x = g.input("x", [2, 3, 8], "float32")
    with pytest.raises(InputError):
        g.add(x, g.input("y", [2, 4, 8], "float32"))
    with pytest.raises(InputError):
        g.fully_connected(x, g.const("w", np.zeros((4, 7), np.float32)))
    with pytest.raises(InputError):
        g.reshape(x, [5, -1])
    other = GraphBuilder(g.writer, "other")
    with pytest.raises(InputError, match="share"):
        other.rsqrt(x)
    assert g.fully_connected(x, g.const("w2", np.zeros((4, 8), np.float32)),
                             keep_num_dims=False).shape == (6, 4)


# ---- writer guarantees -------------------------------------------------------------------

def test_same_inputs_same_bytes(tmp_path):
    rng = np.random.default_rng(11)
    codes, scale = codes_in(rng, -7, 7, (64, 512)), rng.uniform(0.01, 0.1, 64).astype(np.float32)
    a = _prefill_decode(tmp_path / "a.tflite", codes, scale)   # 16 KiB of INT4 -> external
    b = _prefill_decode(tmp_path / "b.tflite", codes, scale)
    data, model = read_model(a)
    assert any(model.Buffers(i).Offset() > 1 for i in range(model.BuffersLength()))
    assert data == open(b, "rb").read()


def _two_buffer_writer(path, second):
    """x -> FC(w0), FC(w1): two 64 KiB external INT8 weights; w1's bytes come from ``second``."""
    w = LiteRTWriter(path, fsync=False)
    g = GraphBuilder(w, "m")
    x = g.input("x", [1, 4096], "float32")
    q = Quantization(scale=(0.1,) * 16, zero_point=(0,) * 16)
    for i, prod in enumerate((lambda: np.ones(2**16, np.int8), second)):
        t = g.const(f"w{i}", w.add_buffer(2**16, producer=prod, name=f"w{i}"),
                    shape=[16, 4096], dtype="int8", quantization=q)
        g.output(f"y{i}", g.fully_connected(x, t))
    g.finish("m")
    return w


def test_failed_producer_leaves_nothing(tmp_path):
    def boom():
        raise RuntimeError("disk on fire")
    w = _two_buffer_writer(tmp_path / "m.tflite", boom)
    w.write_header()
    assert len(os.listdir(tmp_path)) == 1           # the temp file
    with pytest.raises(RuntimeError, match="disk on fire"):
        w.write_data()
    assert os.listdir(tmp_path) == [] and w.state is WriterState.CLOSED
    w = _two_buffer_writer(tmp_path / "m.tflite", lambda: b"\0" * 100)   # wrong size
    with pytest.raises(InputError, match="100 bytes"):
        w.finish()
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError):
        with _two_buffer_writer(tmp_path / "m.tflite", boom) as w:
            w.finish()
    assert os.listdir(tmp_path) == []


def test_state_machine_refusals(tmp_path):
    w = _two_buffer_writer(tmp_path / "m.tflite", lambda: np.zeros(2**16, np.int8))
    assert w.state is WriterState.GRAPH
    with pytest.raises(WriterStateError):
        w.write_data()                                 # data before the flatbuffer
    with pytest.raises(WriterStateError):
        w.buffer_offset(w._bufs[1].ref)
    w.write_header()
    assert w.state is WriterState.HEADER_WRITTEN
    with pytest.raises(WriterStateError):
        w.add_subgraph("late")                         # graph is frozen after the header
    with pytest.raises(WriterStateError):
        w.add_buffer(data=b"x")
    with pytest.raises(WriterStateError):
        w.close()                                      # data missing
    refs = [b.ref for b in w._bufs if b.ref.external]
    w.write_buffer(refs[1], np.zeros(2**16, np.int8))  # any order
    with pytest.raises(WriterStateError, match="already written"):
        w.write_buffer(refs[1], np.zeros(2**16, np.int8))
    w.write_buffer(refs[0], [np.zeros(2**15, np.int8)] * 2)   # chunked
    assert w.state is WriterState.DATA_WRITTEN
    assert w.close() == str(tmp_path / "m.tflite")
    with pytest.raises(WriterStateError):
        w.close()                                      # closing twice
    assert os.listdir(tmp_path) == ["m.tflite"]
    assert isinstance(WriterStateError("x"), EdgeSdkError)
    with pytest.raises(WriterStateError, match="without close"):
        with _two_buffer_writer(tmp_path / "n.tflite", lambda: b"") as w2:
            w2.write_header()
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_compiled_model_xnnpack_weight_cache(tmp_path):
    """CpuOptions.xnnpack_weight_cache_path is a FILE path (a directory fails). The cache is
    written on first use and reused after; it is NOT invalidated when the model's weights
    change, so the path must be unique per model content."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 4, 256)).astype(np.float32)
    cache = str(tmp_path / "w.xnncache")
    wa, wb = (rng.standard_normal((64, 256)).astype(np.float32) for _ in range(2))
    pa = _ext_model(tmp_path / "a.tflite", wa)
    pb = _ext_model(tmp_path / "b.tflite", wb)
    for _ in range(2):
        ya = run(pa, "main", {"x": x}, "compiled-xnnpack", cache=cache)["y"]
        np.testing.assert_allclose(ya, x @ wa.T, rtol=1e-4, atol=1e-4)
        assert os.path.getsize(cache) > wa.nbytes
    stale = run(pb, "main", {"x": x}, "compiled-xnnpack", cache=cache)["y"]
    assert not np.allclose(stale, x @ wb.T, atol=1e-2)
    fresh = run(pb, "main", {"x": x}, "compiled-xnnpack", cache=cache + ".b")["y"]
    np.testing.assert_allclose(fresh, x @ wb.T, rtol=1e-4, atol=1e-4)


def test_lazy_weights_are_streamed_and_checked(tmp_path):
    """Callable weights are produced during write_data (nothing held before) and checked
    then: a bad code aborts the write and leaves no file."""
    rng = np.random.default_rng(13)
    codes = codes_in(rng, -7, 7, (128, 256))              # 16 KiB of INT4 -> external
    scale = rng.uniform(0.01, 0.1, 128).astype(np.float32)
    calls = []

    def lazy(bad=False):
        def fn():
            calls.append(bad)
            c = codes.copy()
            c[0, 0] = -8 if bad else c[0, 0]
            return c
        return fn
    x = rng.standard_normal((1, 4, 256)).astype(np.float32)
    p = fc_model(tmp_path / "lazy.tflite", lambda g: g.quantized_weight(
        "w", lazy(), scale, 4, shape=(128, 256)), 256)
    assert calls == [False]
    ref = x @ dequantize_reference(codes, scale).T
    assert relerr(run(p, "main", {"x": x}, "interp-builtin")["y"], ref) < 2e-2
    with pytest.raises(InputError, match="builtin"):
        fc_model(tmp_path / "bad.tflite", lambda g: g.quantized_weight(
            "w", lazy(bad=True), scale, 4, shape=(128, 256)), 256)
    assert sorted(os.listdir(tmp_path)) == ["lazy.tflite"]

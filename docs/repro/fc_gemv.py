#!/usr/bin/env python
"""The smallest reproduction of where our decode step stays below memory bandwidth (issue 13).

One FULLY_CONNECTED op, float32 activations [1, K] x per-output-channel int2 / int4 / int8 weights
[N, K] (dynamic-range: LiteRT quantizes the activations per call), run alone on LiteRT's XNNPACK
delegate, the weights evicted from the last-level cache before each invoke (as in a decode step,
which streams ~0.8 GB of weights per token). Prints microseconds per invoke and the weight bytes
read per second, beside what one core copies with NumPy. Needs only ai-edge-litert (2.3) and numpy:

    python fc_gemv.py [--threads 2] [--reps 30]

The shapes are Gemma 4 E2B's MLP (1536 -> 12288, 12288 -> 1536) and attention projection
(1536 -> 2048). The tflite files are written beside the script's --out directory for LiteRT's own
``benchmark_model --graph=FILE --num_threads=2`` where that binary exists.
"""
import argparse
import os
import statistics
import time

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as S
from ai_edge_litert.interpreter import Interpreter

TYPES = {2: S.TensorType.INT2, 4: S.TensorType.INT4, 8: S.TensorType.INT8}


def pack(codes: np.ndarray, bits: int) -> bytes:
    """Signed codes, low bits first (int4: 2 per byte, int2: 4 per byte), as LiteRT reads them."""
    u = (codes.astype(np.int16) & ((1 << bits) - 1)).astype(np.uint8).reshape(-1)
    per = 8 // bits
    out = np.zeros(u.size // per, np.uint8)
    for i in range(per):
        out |= u[i::per] << (i * bits)
    return out.tobytes()


def fc_model(n: int, k: int, bits: int) -> bytes:
    rng = np.random.default_rng(0)
    lim = (1 << (bits - 1)) - 1
    codes = rng.integers(-lim, lim + 1, size=(n, k))
    m = S.ModelT()
    m.version = 3
    oc = S.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = S.BuiltinOperator.FULLY_CONNECTED
    oc.version = 1
    m.operatorCodes = [oc]
    bufs = [S.BufferT(), S.BufferT()]
    bufs[1].data = np.frombuffer(pack(codes, bits) if bits < 8 else codes.astype(np.int8).tobytes(), np.uint8)
    ts = []
    for name, shape, typ, buf in ((b"x", [1, k], S.TensorType.FLOAT32, 0), (b"w", [n, k], TYPES[bits], 1),
                                  (b"y", [1, n], S.TensorType.FLOAT32, 0)):
        t = S.TensorT()
        t.name, t.shape, t.type, t.buffer = name, np.asarray(shape, np.int32), typ, buf
        ts.append(t)
    q = S.QuantizationParametersT()
    q.scale = np.full(n, 0.01, np.float32)
    q.zeroPoint = np.zeros(n, np.int64)
    q.quantizedDimension = 0
    ts[1].quantization = q
    op = S.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, np.asarray([0, 1, -1], np.int32), np.asarray([2], np.int32)
    op.builtinOptionsType = S.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = S.FullyConnectedOptionsT()
    sg = S.SubGraphT()
    sg.tensors, sg.operators = ts, [op]
    sg.inputs, sg.outputs = np.asarray([0], np.int32), np.asarray([2], np.int32)
    m.subgraphs, m.buffers = [sg], bufs
    b = flatbuffers.Builder(n * k + (1 << 20))
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def time_it(content: bytes, threads: int, reps: int, flush: np.ndarray) -> float:
    it = Interpreter(model_content=content, num_threads=threads)
    it.allocate_tensors()
    x = np.random.default_rng(1).standard_normal(it.get_input_details()[0]["shape"]).astype(np.float32)
    idx = it.get_input_details()[0]["index"]
    it.set_tensor(idx, x)
    it.invoke()
    ts = []
    for _ in range(reps):
        flush += 1.0                      # evict the weights from the last-level cache
        it.set_tensor(idx, x)
        t0 = time.perf_counter()
        it.invoke()
        ts.append(time.perf_counter() - t0)
    return min(ts), statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=None, help="also write the one-op .tflite files here")
    a = ap.parse_args()
    flush = np.zeros(16 << 20, np.float32)   # 64 MiB
    src = np.ones(256 << 20, np.uint8)
    dst = np.zeros_like(src)
    np.copyto(dst, src)                      # pages faulted in before the clock starts
    best = float("inf")
    for _ in range(4):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    copy_gbs = 2 * src.nbytes / best / 1e9   # read + write, fastest of 4
    print(f"numpy copy, one core: {copy_gbs:.1f} GB/s (read + write); load average {os.getloadavg()[0]:.1f}")
    print(f"{'FULLY_CONNECTED':<34} {'weights MB':>10} {'us (min)':>9} {'us (med)':>9} {'GB/s (min)':>10}")
    for n, k in ((12288, 1536), (1536, 12288), (2048, 1536)):
        for bits in (2, 4, 8):
            content = fc_model(n, k, bits)
            if a.out:
                os.makedirs(a.out, exist_ok=True)
                with open(os.path.join(a.out, f"fc_int{bits}_{n}x{k}.tflite"), "wb") as f:
                    f.write(content)
            wbytes = n * k * bits / 8
            t, tm = time_it(content, a.threads, a.reps, flush)
            print(f"{f'[1,{k}] x int{bits} [{n},{k}]':<34} {wbytes / 1e6:>10.2f} {t * 1e6:>9.0f} {tm * 1e6:>9.0f} "
                  f"{wbytes / t / 1e9:>10.1f}")


if __name__ == "__main__":
    main()

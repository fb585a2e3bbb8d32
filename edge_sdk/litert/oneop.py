"""One operator of a .tflite cut out as its own model, with its real weights; timing one invoke.

What a per-op profile needs where the LiteRT wheel has no per-op profiler in Python (the
Interpreter's ``experimental_*`` flags keep tensors or force delegate profiling, but nothing reads a
profile back; ``benchmark_model`` is not shipped). ``OneOpModels(path)`` reads a model with the
flatbuffers object API (weights stored after the flatbuffer are read from the mmapped file);
``describe`` keys an op by what decides its cost (kind, input shapes, dtypes, constness,
quantization, options); ``build`` writes the one-op model; ``time_invoke`` times it on the
Interpreter with the XNNPACK delegate (what XNNPACK does not take runs on the builtin kernel, as in
the whole graph), the last-level cache flushed before each invoke and the op's inputs written after
the flush (weights cold as in a decode step that streams them, activations hot as the op before
left them); the fastest invoke counts (a 2-thread invoke that loses a core on a shared machine
waits milliseconds for it, which says nothing about the op).
"""

from __future__ import annotations

import copy
import mmap
import statistics
import time

import numpy as np
from ai_edge_litert import schema_py_generated as S

OPS = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
TYPES = {v: k for k, v in vars(S.TensorType).items() if not k.startswith("_")}


def _quant_kind(t) -> str:
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return ""
    if q.details is not None:
        return "blockwise"
    return "per-channel" if len(q.scale) > 1 else "per-tensor"


def _opts_key(op) -> str:
    o = op.builtinOptions
    if o is None:
        return ""
    return repr(sorted((k, v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(o).items()))


class OneOpModels:
    """Cut single ops out of a .tflite file."""

    def __init__(self, path: str):
        self._f = open(path, "rb")
        self.mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        self.model = S.ModelT.InitFromPackedBuf(self.mm, 0)

    def subgraph(self, signature: str) -> int:
        return next(s.subgraphIndex for s in self.model.signatureDefs if s.signatureKey.decode() == signature)

    def const_bytes(self, t) -> np.ndarray | None:
        b = self.model.buffers[t.buffer] if t.buffer else None
        if b is None:
            return None
        if b.offset and b.offset > 1:
            return np.frombuffer(self.mm, np.uint8, count=b.size, offset=b.offset).copy()
        if b.data is not None and len(b.data):
            return np.asarray(b.data, np.uint8)
        return None

    def describe(self, sgi: int, op) -> tuple[str, tuple]:
        """(kind, key): ops with one key cost the same."""
        sg = self.model.subgraphs[sgi]
        code = self.model.operatorCodes[op.opcodeIndex]
        kind = OPS.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode))
        ins = []
        for t in op.inputs:
            if t < 0:
                ins.append(None)
                continue
            T = sg.tensors[t]
            b = self.model.buffers[T.buffer] if T.buffer else None
            const = bool(b is not None and ((b.offset and b.offset > 1) or (b.data is not None and len(b.data))))
            ins.append((tuple(int(x) for x in T.shape), TYPES[T.type], const, _quant_kind(T)))
        outs = [(tuple(int(x) for x in sg.tensors[t].shape), TYPES[sg.tensors[t].type]) for t in op.outputs]
        return kind, (kind, tuple(ins), tuple(outs), _opts_key(op), code.version)

    def build(self, sgi: int, op) -> bytes:
        """The op alone: its constants (blockwise scales included) copied, the rest model inputs."""
        import flatbuffers
        sg = self.model.subgraphs[sgi]
        tensors, buffers, remap, inputs = [], [S.BufferT()], {}, []

        def add(t: int) -> int:
            if t in remap:
                return remap[t]
            T = copy.copy(sg.tensors[t])
            data = self.const_bytes(T)
            q = T.quantization
            if q is not None and q.details is not None and hasattr(q.details, "scales"):
                q = copy.copy(q)
                q.details = copy.copy(q.details)
                q.details.scales = add(q.details.scales)
                T.quantization = q
            if data is not None:
                buffers.append(S.BufferT())
                buffers[-1].data = data
                T.buffer = len(buffers) - 1
            else:
                T.buffer = 0
            T.isVariable = False
            tensors.append(T)
            remap[t] = len(tensors) - 1
            if data is None and t not in op.outputs:
                inputs.append(remap[t])
            return remap[t]

        new_in = [add(int(t)) if t >= 0 else -1 for t in op.inputs]
        new_out = [add(int(t)) for t in op.outputs]
        o = copy.copy(op)
        o.inputs, o.outputs, o.opcodeIndex = np.asarray(new_in, np.int32), np.asarray(new_out, np.int32), 0
        o.intermediates = None
        m = S.ModelT()
        m.version = 3
        m.operatorCodes = [self.model.operatorCodes[op.opcodeIndex]]
        m.subgraphs = [S.SubGraphT()]
        m.subgraphs[0].tensors, m.subgraphs[0].operators = tensors, [o]
        m.subgraphs[0].inputs, m.subgraphs[0].outputs = np.asarray(inputs, np.int32), np.asarray(new_out, np.int32)
        m.buffers = buffers
        m.description = b"edge_sdk one-op profile"
        total = sum(len(b.data) for b in buffers if b.data is not None)
        bld = flatbuffers.Builder(total + (1 << 20))
        bld.Finish(m.Pack(bld), file_identifier=b"TFL3")
        return bytes(bld.Output())


def time_invoke(content: bytes, threads: int, reps: int, flush: np.ndarray) -> tuple[float, float]:
    """(fastest, median) invoke seconds of a model, its inputs random (see the module docstring)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    it = Interpreter(model_content=content, num_threads=threads, experimental_op_resolver_type=OpResolverType.AUTO)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    feeds = []
    for d in it.get_input_details():
        dt, shape = np.dtype(d["dtype"]), tuple(d["shape"])
        if dt.kind == "f":
            v = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            v = np.ones(shape, dt)
        elif dt.kind in "iu" and d.get("quantization", (0.0, 0))[0]:
            v = rng.integers(-100, 100, size=shape).astype(dt)
        else:
            v = np.zeros(shape, dt)
        feeds.append((d["index"], v))
        it.set_tensor(d["index"], v)
    it.invoke()
    it.invoke()
    ts = []
    for _ in range(reps):
        flush += 1.0
        for index, v in feeds:
            it.set_tensor(index, v)
        t0 = time.perf_counter()
        it.invoke()
        ts.append(time.perf_counter() - t0)
    del it
    return min(ts), statistics.median(ts)


def empty_model() -> bytes:
    """A one-element ADD: what an invoke costs with nothing in it (subtracted from each op)."""
    import flatbuffers
    m = S.ModelT()
    m.version = 3
    oc = S.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = S.BuiltinOperator.ADD
    oc.version = 1
    m.operatorCodes = [oc]
    sg = S.SubGraphT()
    ts = []
    for name in (b"a", b"b", b"c"):
        t = S.TensorT()
        t.shape, t.type, t.buffer, t.name = np.asarray([1], np.int32), S.TensorType.FLOAT32, 0, name
        ts.append(t)
    op = S.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, np.asarray([0, 1], np.int32), np.asarray([2], np.int32)
    sg.tensors, sg.operators = ts, [op]
    sg.inputs, sg.outputs = np.asarray([0, 1], np.int32), np.asarray([2], np.int32)
    m.subgraphs, m.buffers = [sg], [S.BufferT()]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())

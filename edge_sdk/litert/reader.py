"""Read a .tflite file's flatbuffer without touching external buffer data: its signatures (each
input and output with shape, dtype and per-tensor scale), metadata, op histogram per subgraph and
constant tensors; and describe a converted model directory for ``edge-sdk inspect``.

The one .tflite reader: ``inspect`` and the bundler (``bundle/signatures.py``, which checks the
signatures against what LiteRT-LM needs) both read through :func:`read_tflite`. The file is
memory-mapped and walked with the schema's table accessors; buffers stored after the flatbuffer
(``Buffer.offset``/``size``) are only described, never read, so a multi-GiB model costs a few pages.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ai_edge_litert import schema_py_generated as schema

from ..artefacts import ModelInfo
from ..errors import InputError
from ..quant.kv_layout import model_kv_layout
from ..units import fmt_bytes

_TYPE_NAMES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


@dataclass(frozen=True)
class TfliteTensor:
    """One tensor of a .tflite subgraph: a signature's input or output, or a constant."""
    name: str
    dtype: str
    shape: tuple[int, ...]
    quantization: str = ""    # "" | "per-tensor" | "per-channel(axis 0, N scales)" | "blockwise(...)"
    scale: float | None = None    # the per-tensor quantization scale (int8 KV caches), else None
    nbytes: int = 0           # bytes of its buffer (0 for activations)
    external: bool = False    # its data lies after the flatbuffer
    buffer: int = 0
    offset: int = -1          # absolute file offset of an external buffer's data (-1: inline)

    def to_json(self) -> dict:
        """A constant as ``inspect --json`` lists it."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes,
                "external": self.external, "quantization": self.quantization, "buffer": self.buffer,
                "offset": self.offset}


@dataclass(frozen=True)
class Signature:
    key: str
    subgraph: int
    inputs: dict[str, TfliteTensor]
    outputs: dict[str, TfliteTensor]

    def to_json(self) -> dict:
        def io(ts):
            return {n: [t.dtype, list(t.shape)] for n, t in ts.items()}
        return {"subgraph": self.subgraph, "inputs": io(self.inputs), "outputs": io(self.outputs)}


@dataclass
class FileInfo:
    path: Path
    file_bytes: int
    flatbuffer_bytes: int
    description: str
    metadata: dict[str, str]
    signatures: dict[str, Signature]       # key → its inputs and outputs (file order)
    ops: dict[str, dict[str, int]]         # subgraph name → op histogram
    constants: list[TfliteTensor] = field(default_factory=list)   # one per buffer (shared ones once)

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.constants)

    def find(self, prefix: str) -> Signature | None:
        """The first signature whose key starts with ``prefix`` (file order)."""
        return next((s for k, s in self.signatures.items() if k.startswith(prefix)), None)

    def to_json(self) -> dict:
        return {"path": str(self.path), "file_bytes": self.file_bytes, "flatbuffer_bytes": self.flatbuffer_bytes,
                "description": self.description, "metadata": self.metadata,
                "signatures": {k: s.to_json() for k, s in self.signatures.items()}, "ops": self.ops,
                "weight_bytes": self.weight_bytes, "constants": [t.to_json() for t in self.constants]}


def _str(b: bytes | None, default: str = "") -> str:
    return b.decode() if b is not None else default


def _quant(q: schema.QuantizationParameters | None) -> tuple[str, float | None]:
    """(description, per-tensor scale or None) of a tensor's quantization parameters."""
    if q is None:
        return "", None
    n = q.ScaleLength()
    scale = float(q.Scale(0)) if n == 1 else None
    if q.DetailsType() == schema.QuantizationDetails.BlockwiseQuantization:
        bq = schema.BlockwiseQuantization()
        bq.Init(q.Details().Bytes, q.Details().Pos)
        return f"blockwise(block {bq.BlockSize()}, float16 scales)", scale
    if n == 0:
        return "", None
    return ("per-tensor" if n == 1 else f"per-channel(axis {q.QuantizedDimension()}, {n} scales)"), scale


def _tensor(sub: schema.SubGraph, index: int, name: str | None = None) -> TfliteTensor:
    t = sub.Tensors(index)
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    quant, scale = _quant(t.Quantization())
    return TfliteTensor(_str(t.Name()) if name is None else name, _TYPE_NAMES.get(t.Type(), "?"), shape,
                        quant, scale, buffer=int(t.Buffer()))


def _signatures(model: schema.Model) -> dict[str, Signature]:
    sigs = {}
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        sub = model.Subgraphs(sd.SubgraphIndex())
        ins = {(n := _str(m.Name())): _tensor(sub, m.TensorIndex(), n)
               for m in (sd.Inputs(j) for j in range(sd.InputsLength()))}
        outs = {(n := _str(m.Name())): _tensor(sub, m.TensorIndex(), n)
                for m in (sd.Outputs(j) for j in range(sd.OutputsLength()))}
        key = _str(sd.SignatureKey())
        sigs[key] = Signature(key, sd.SubgraphIndex(), ins, outs)
    return sigs


def _ops_and_constants(model: schema.Model) -> tuple[dict[str, dict[str, int]], list[TfliteTensor]]:
    """Each subgraph's op histogram (most used first), and one constant per non-empty buffer."""
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    ops, consts, seen = {}, [], set()
    for i in range(model.SubgraphsLength()):
        sg = model.Subgraphs(i)
        hist = Counter(_OP_NAMES.get(max(codes[op.OpcodeIndex()].BuiltinCode(),
                                         codes[op.OpcodeIndex()].DeprecatedBuiltinCode()), "?")
                       for op in (sg.Operators(j) for j in range(sg.OperatorsLength())))
        ops[_str(sg.Name(), f"subgraph_{i}")] = dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))
        for j in range(sg.TensorsLength()):
            bi = sg.Tensors(j).Buffer()
            if bi == 0 or bi in seen:
                continue
            b = model.Buffers(bi)
            ext = b.Offset() > 1
            n = b.Size() if ext else b.DataLength()
            if n == 0:
                continue
            seen.add(bi)
            t = _tensor(sg, j)
            consts.append(TfliteTensor(t.name, t.dtype, t.shape, t.quantization, t.scale, int(n), ext, int(bi),
                                       int(b.Offset()) if ext else -1))
    return ops, consts


def read_tflite(path: str | Path) -> FileInfo:
    """Signatures, metadata, op histograms and constants of one .tflite file; a file that is not a
    readable LiteRT flatbuffer is an :class:`InputError` naming it."""
    p = Path(path)
    try:
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[4:8] != b"TFL3":
                raise InputError("not a LiteRT flatbuffer (no TFL3 identifier)", path=p)
            model = schema.Model.GetRootAs(mm, 0)
            size = len(mm)
            ext_offsets = [o for o in (model.Buffers(i).Offset() for i in range(model.BuffersLength())) if o > 1]
            meta = {}
            for i in range(model.MetadataLength()):
                md = model.Metadata(i)
                buf = model.Buffers(md.Buffer())
                raw = buf.DataAsNumpy().tobytes() if buf.DataLength() else b""
                meta[_str(md.Name())] = raw.rstrip(b"\0").decode("utf-8", "replace")
            sigs = _signatures(model)
            ops, consts = _ops_and_constants(model)
            desc = _str(model.Description())
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path=p) from None
    except (IndexError, ValueError, TypeError, struct.error) as e:
        raise InputError(f"truncated or malformed LiteRT flatbuffer ({type(e).__name__})", path=p,
                         fix="re-run `edge-sdk convert`") from None
    return FileInfo(p, size, min(ext_offsets) if ext_offsets else size, desc, meta, sigs, ops, consts)


@dataclass
class ConvertedReport:
    path: str
    model: ModelInfo
    files: dict[str, FileInfo]

    def to_json(self) -> dict:
        return {"path": self.path, "model": self.model.to_json(),
                "files": {k: v.to_json() for k, v in self.files.items()}}

    def to_text(self, max_tensors: int = 40) -> str:
        m = self.model
        kv = model_kv_layout(m, self.path)
        lines = [f"{self.path}  (converted model: recipe {m.recipe}, context {m.context}, "
                 f"prefill {m.prefill}, KV cache {kv.dtype}"
                 + (" per-tensor scales" if kv.dtype == "int8" else "") + ")"]
        for key, fi in self.files.items():
            lines.append(f"  [{key}] {Path(fi.path).name}: {fmt_bytes(fi.file_bytes)} "
                         f"(flatbuffer {fmt_bytes(fi.flatbuffer_bytes)}, weights {fmt_bytes(fi.weight_bytes)}); "
                         f"metadata {fi.metadata}")
            for sig, s in fi.signatures.items():
                ins = ", ".join(f"{n} {t.dtype}{list(t.shape)}" for n, t in s.inputs.items())
                outs = ", ".join(f"{n} {t.dtype}{list(t.shape)}" for n, t in s.outputs.items())
                nops = sum(fi.ops[list(fi.ops)[s.subgraph]].values())
                lines.append(f"    signature {sig} (subgraph {s.subgraph}, {nops} ops)")
                lines.append(f"      in:  {ins}")
                lines.append(f"      out: {outs}")
            consts = sorted(fi.constants, key=lambda t: -t.nbytes)
            lines.append(f"    {len(consts)} constant tensors (largest first):")
            for t in consts[:max_tensors]:
                where = "external" if t.external else "inline"
                lines.append(f"      {t.name:<52} {t.dtype:<8} {str(list(t.shape)):<16} {t.nbytes:>12,} B  "
                             f"{where:<8} {t.quantization}")
            if len(consts) > max_tensors:
                lines.append(f"      ... {len(consts) - max_tensors} more (--json lists all)")
        return "\n".join(lines)


def inspect_converted(path: str | Path) -> ConvertedReport:
    d = Path(path)
    model = ModelInfo.read(d)
    files = {k: read_tflite(d / v["file"]) for k, v in model.files.items()}
    return ConvertedReport(str(d), model, files)

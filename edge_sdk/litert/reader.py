"""Read a .tflite file's flatbuffer (schema object API) without touching external buffer data,
and describe a converted model directory for ``edge-sdk inspect``.

The file is memory-mapped and unpacked with ``ModelT.InitFromPackedBuf``; buffers stored after
the flatbuffer (``Buffer.offset``/``size``) are only described, never read, so a multi-GiB model
costs a few pages.
"""

from __future__ import annotations

import mmap
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


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int]
    nbytes: int               # bytes of its buffer (0 for activations)
    external: bool
    quantization: str         # "" | "per-tensor" | "per-channel(axis 0, N scales)" | "blockwise(32)"
    buffer: int
    offset: int = -1          # absolute file offset of an external buffer's data (-1: inline)


@dataclass
class FileInfo:
    path: str
    file_bytes: int
    flatbuffer_bytes: int
    description: str
    metadata: dict[str, str]
    signatures: dict[str, dict]            # key → {"subgraph", "inputs": {name: [dtype, shape]}, "outputs"}
    ops: dict[str, dict[str, int]]         # subgraph name → op histogram
    constants: list[TensorInfo] = field(default_factory=list)   # one per buffer (shared ones once)

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.constants)

    def to_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "constants"}
        d["weight_bytes"] = self.weight_bytes
        d["constants"] = [t.__dict__ for t in self.constants]
        return d


def _quant(t: schema.TensorT) -> str:
    q = t.quantization
    if q is None:
        return ""
    if q.detailsType == schema.QuantizationDetails.BlockwiseQuantization:
        return f"blockwise(block {q.details.blockSize}, float16 scales)"
    n = 0 if q.scale is None else len(q.scale)
    if n == 0:
        return ""
    return "per-tensor" if n == 1 else f"per-channel(axis {q.quantizedDimension}, {n} scales)"


def read_tflite(path: str | Path) -> FileInfo:
    p = Path(path)
    try:
        with open(p, "rb") as f:   # the mapping lives as long as the unpacked arrays view it
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if mm[4:8] != b"TFL3":
            raise InputError("not a TFLite flatbuffer (no TFL3 identifier)", path=p)
        m = schema.ModelT.InitFromPackedBuf(mm, 0)
        size = len(mm)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read: {e}", path=p) from None
    ext_offsets = [b.offset for b in m.buffers if b.offset > 1]
    fb_bytes = min(ext_offsets) if ext_offsets else size
    meta = {}
    for md in m.metadata or []:
        data = m.buffers[md.buffer].data
        raw = bytes(data) if data is not None else b""
        meta[md.name.decode() if isinstance(md.name, bytes) else md.name] = raw.rstrip(b"\0").decode(
            "utf-8", "replace")
    sigs = {}
    for sd in m.signatureDefs or []:
        sg = m.subgraphs[sd.subgraphIndex]

        def io(maps, sg=sg):
            return {(x.name.decode() if isinstance(x.name, bytes) else x.name):
                    [_TYPE_NAMES.get(sg.tensors[x.tensorIndex].type, "?"),
                     [int(d) for d in sg.tensors[x.tensorIndex].shape]] for x in maps or []}
        key = sd.signatureKey.decode() if isinstance(sd.signatureKey, bytes) else sd.signatureKey
        sigs[key] = {"subgraph": sd.subgraphIndex, "inputs": io(sd.inputs), "outputs": io(sd.outputs)}
    ops, consts, seen = {}, [], set()
    for i, sg in enumerate(m.subgraphs):
        name = sg.name.decode() if isinstance(sg.name, bytes) else (sg.name or f"subgraph_{i}")
        hist = Counter(_OP_NAMES.get(max(m.operatorCodes[op.opcodeIndex].builtinCode,
                                         m.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode), "?")
                       for op in sg.operators or [])
        ops[name] = dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))
        for t in sg.tensors or []:
            if t.buffer == 0 or t.buffer in seen:
                continue
            b = m.buffers[t.buffer]
            ext = b.offset > 1
            n = b.size if ext else (0 if b.data is None else len(b.data))
            if n == 0:
                continue
            seen.add(t.buffer)
            tname = t.name.decode() if isinstance(t.name, bytes) else t.name
            consts.append(TensorInfo(tname, _TYPE_NAMES.get(t.type, "?"), [int(d) for d in t.shape],
                                     int(n), ext, _quant(t), int(t.buffer), int(b.offset) if ext else -1))
    desc = m.description.decode() if isinstance(m.description, bytes) else (m.description or "")
    return FileInfo(str(p), size, fb_bytes, desc, meta, sigs, ops, consts)


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
                ins = ", ".join(f"{n} {d}{sh}" for n, (d, sh) in s["inputs"].items())
                outs = ", ".join(f"{n} {d}{sh}" for n, (d, sh) in s["outputs"].items())
                nops = sum(fi.ops[list(fi.ops)[s["subgraph"]]].values())
                lines.append(f"    signature {sig} (subgraph {s['subgraph']}, {nops} ops)")
                lines.append(f"      in:  {ins}")
                lines.append(f"      out: {outs}")
            consts = sorted(fi.constants, key=lambda t: -t.nbytes)
            lines.append(f"    {len(consts)} constant tensors (largest first):")
            for t in consts[:max_tensors]:
                where = "external" if t.external else "inline"
                lines.append(f"      {t.name:<52} {t.dtype:<8} {str(t.shape):<16} {t.nbytes:>12,} B  "
                             f"{where:<8} {t.quantization}")
            if len(consts) > max_tensors:
                lines.append(f"      ... {len(consts) - max_tensors} more (--json lists all)")
        return "\n".join(lines)


def inspect_converted(path: str | Path) -> ConvertedReport:
    d = Path(path)
    model = ModelInfo.read(d)
    files = {k: read_tflite(d / v["file"]) for k, v in model.files.items()}
    return ConvertedReport(str(d), model, files)

"""LiteRT (.tflite) model writer: an explicit state machine that streams weights to disk.

File layout (all offsets absolute from the start of the file)::

    [flatbuffer: Model, identifier "TFL3"; small buffers inline, 16-byte aligned]
    [zero padding up to a multiple of ``alignment`` (16 KiB)]
    [external buffer 1][padding][external buffer 2] ...   each starts 16 KiB-aligned

External buffers are referenced by ``Buffer.offset``/``Buffer.size`` (LiteRT treats
``offset > 1`` as "data lives outside the flatbuffer"). The flatbuffer itself only holds
graph metadata, so models far beyond flatbuffers' 2 GiB limit can be written; the
runtime skips its flatbuffer verifier for files >= 2 GiB and reads the data in place
(memory-mapped).

States::

    EMPTY --add_*--> GRAPH --write_header--> HEADER_WRITTEN --write_data /
    write_buffer (each external buffer exactly once)--> DATA_WRITTEN --close--> CLOSED
    any state --abort / exception inside the writer--> CLOSED (temp file removed)

Buffers are registered up front with their byte size and a producer (a callable that
returns the bytes, or an iterator of byte chunks); the flatbuffer is packed with the
final offsets, then each producer is called once, in registration order, and the
number of bytes it produced is checked. Nothing but one buffer (or one chunk) is ever
held in memory. Output goes to a temp file in the destination directory that is
``os.replace``d onto the destination by :meth:`LiteRTWriter.close`.
Same calls -> same bytes (no timestamps; registration order everywhere).
"""

from __future__ import annotations

import enum
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from ..errors import EdgeSdkError, InputError

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
DEFAULT_ALIGNMENT = 16 * 1024
# Buffers smaller than one alignment granule stay inline: outside, padding would cost more
# than the data (norm weights, shape vectors, codebooks...).
DEFAULT_INLINE_LIMIT = 16 * 1024
INLINE_DATA_ALIGNMENT = 16
_PLACEHOLDER_OFFSET = 1 << 40   # any value > 1: uint64 fields have a fixed packed size

BytesLike = Union[bytes, bytearray, memoryview, np.ndarray]
Producer = Callable[[], Union[BytesLike, Iterable[BytesLike]]]

_T = schema.TensorType
DTYPES: dict[str, int] = {
    "float32": _T.FLOAT32, "float16": _T.FLOAT16, "bfloat16": _T.BFLOAT16,
    "int64": _T.INT64, "int32": _T.INT32, "int16": _T.INT16, "int8": _T.INT8,
    "int4": _T.INT4, "int2": _T.INT2, "uint8": _T.UINT8, "bool": _T.BOOL,
}
BITS: dict[str, int] = {"float32": 32, "float16": 16, "bfloat16": 16, "int64": 64, "int32": 32,
                        "int16": 16, "int8": 8, "int4": 4, "int2": 2, "uint8": 8, "bool": 8}


def dtype_name(dtype: Any) -> str:
    """Canonical dtype name ('float32', 'int4', ...) from a name or a numpy dtype."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in DTYPES:
        raise InputError(f"unsupported LiteRT tensor dtype {dtype!r}",
                         fix=f"use one of {sorted(DTYPES)}")
    return name


def tensor_nbytes(shape: Sequence[int], dtype: str) -> int:
    """Bytes a dense tensor takes; sub-byte types are packed over the flattened tensor."""
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    return (n * BITS[dtype_name(dtype)] + 7) // 8


class WriterState(enum.Enum):
    EMPTY = "empty"
    GRAPH = "graph"
    HEADER_WRITTEN = "header_written"
    DATA_WRITTEN = "data_written"
    CLOSED = "closed"


class WriterStateError(EdgeSdkError):
    """A writer method was called in a state that does not allow it (a caller bug)."""


@dataclass(frozen=True)
class BufferRef:
    """Handle of a registered buffer; ``offset`` is known only after write_header."""
    index: int
    nbytes: int
    external: bool
    name: str = ""


@dataclass(frozen=True)
class Quantization:
    """Tensor quantization. Per-tensor/per-channel: scale (+ zero_point, default 0) on
    ``quantized_dimension``. Blockwise: ``block_scales`` = index of a FLOAT16 tensor in the
    same subgraph holding [rows, cols / block_size] scales (zero points in ``block_zero_points``)."""
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    quantized_dimension: int = 0
    block_scales: int | None = None
    block_zero_points: int = 0
    block_size: int = 0

    def to_schema(self) -> schema.QuantizationParametersT:
        q = schema.QuantizationParametersT()
        if self.block_scales is not None:
            q.detailsType = schema.QuantizationDetails.BlockwiseQuantization
            q.details = schema.BlockwiseQuantizationT(
                scales=self.block_scales, zeroPoints=self.block_zero_points,
                blockSize=self.block_size)
        if self.scale:
            q.scale = np.asarray(self.scale, dtype=np.float32)
            zp = self.zero_point or (0,) * len(self.scale)
            q.zeroPoint = np.asarray(zp, dtype=np.int64)
        q.quantizedDimension = self.quantized_dimension
        return q


class _AlignedBufferT(schema.BufferT):
    """BufferT whose inline data vector starts INLINE_DATA_ALIGNMENT-aligned in the file."""

    def Pack(self, builder):  # noqa: N802 (flatbuffers naming)
        data = None
        if self.data is not None:
            raw = bytes(self.data)
            builder.StartVector(1, len(raw), INLINE_DATA_ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            builder.vectorNumElems = len(raw)
            data = builder.EndVector()
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        schema.BufferAddOffset(builder, self.offset)
        schema.BufferAddSize(builder, self.size)
        return schema.BufferEnd(builder)


@dataclass
class _Buf:
    ref: BufferRef
    data: bytes | None = None         # inline buffers (or small ones with data given)
    producer: Producer | None = None
    offset: int = 0
    written: bool = False


def _as_bytes_view(chunk: BytesLike) -> memoryview:
    if isinstance(chunk, np.ndarray):
        chunk = np.ascontiguousarray(chunk)
        return memoryview(chunk.reshape(-1).view(np.uint8))
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return memoryview(chunk).cast("B")
    raise InputError(f"buffer producer returned {type(chunk).__name__}",
                     fix="return bytes, a numpy array or an iterator of them")


class LiteRTWriter:
    """Builds one LiteRT model file. See the module docstring for states and layout."""

    def __init__(self, path: str | os.PathLike, *, description: str = "edge_sdk",
                 alignment: int = DEFAULT_ALIGNMENT, inline_limit: int = DEFAULT_INLINE_LIMIT,
                 fsync: bool = True):
        if alignment < 16 or alignment & (alignment - 1):
            raise InputError(f"alignment {alignment} is not a power of two >= 16")
        self.path = os.fspath(path)
        self.description = description
        self.alignment = alignment
        self.inline_limit = inline_limit
        self.fsync = fsync
        self.state = WriterState.EMPTY
        self._bufs: list[_Buf] = [_Buf(BufferRef(0, 0, False, "<sentinel>"), data=None)]
        self._keys: dict[str, BufferRef] = {}
        self._subgraphs: list[schema.SubGraphT] = []
        self._opcodes: dict[tuple, int] = {}
        self._opcode_list: list[schema.OperatorCodeT] = []
        self._signatures: list[schema.SignatureDefT] = []
        self._metadata: list[tuple[str, int]] = []
        self._tmp: str | None = None
        self._file = None
        self.flatbuffer_size = 0
        self.file_size = 0

    # ---- state machine -------------------------------------------------------------
    def _require(self, *states: WriterState, action: str) -> None:
        if self.state not in states:
            allowed = " or ".join(s.value for s in states)
            raise WriterStateError(f"cannot {action} in state '{self.state.value}' "
                                   f"(allowed in: {allowed})", path=self.path)

    def _building(self, action: str) -> None:
        self._require(WriterState.EMPTY, WriterState.GRAPH, action=action)
        self.state = WriterState.GRAPH

    # ---- buffers -------------------------------------------------------------------
    def add_buffer(self, nbytes: int | None = None, *, data: BytesLike | None = None,
                   producer: Producer | None = None, key: str | None = None,
                   external: bool | None = None, name: str = "") -> BufferRef:
        """Register a constant buffer: ``data`` now, or ``nbytes`` + ``producer`` (called once,
        at write_data). ``key`` (e.g. a content hash) dedups: the same key returns the same
        buffer. ``external`` forces the placement; default: external iff nbytes >= inline_limit."""
        self._building("add a buffer")
        if key is not None and key in self._keys:
            ref = self._keys[key]
            if nbytes is not None and nbytes != ref.nbytes:
                raise InputError(f"buffer key {key!r} registered with {ref.nbytes} bytes, "
                                 f"now {nbytes}", tensor=name or None)
            return ref
        if (data is None) == (producer is None):
            raise InputError("give exactly one of data= or producer=", tensor=name or None)
        raw = None
        if data is not None:
            raw = _as_bytes_view(data).tobytes()
            if nbytes is not None and nbytes != len(raw):
                raise InputError(f"buffer data has {len(raw)} bytes, expected {nbytes}",
                                 tensor=name or None)
            nbytes = len(raw)
        if nbytes is None or nbytes < 0:
            raise InputError("a producer buffer needs nbytes >= 0", tensor=name or None)
        is_ext = (nbytes >= self.inline_limit) if external is None else bool(external)
        if is_ext and nbytes == 0:
            raise InputError("an external buffer cannot be empty", tensor=name or None)
        ref = BufferRef(len(self._bufs), nbytes, is_ext, name)
        self._bufs.append(_Buf(ref, data=raw, producer=None if raw is not None else producer))
        if key is not None:
            self._keys[key] = ref
        return ref

    def buffer_offset(self, ref: BufferRef) -> int:
        """Absolute file offset of an external buffer (after write_header)."""
        self._require(WriterState.HEADER_WRITTEN, WriterState.DATA_WRITTEN,
                      WriterState.CLOSED, action="ask for a buffer offset")
        return self._bufs[ref.index].offset

    # ---- graph ---------------------------------------------------------------------
    def add_subgraph(self, name: str = "") -> int:
        self._building("add a subgraph")
        self._subgraphs.append(schema.SubGraphT(tensors=[], inputs=[], outputs=[],
                                                operators=[], name=name or None))
        return len(self._subgraphs) - 1

    def _subgraph(self, index: int) -> schema.SubGraphT:
        if not 0 <= index < len(self._subgraphs):
            raise InputError(f"no subgraph {index}")
        return self._subgraphs[index]

    def add_tensor(self, subgraph: int, name: str, shape: Sequence[int], dtype: Any, *,
                   buffer: BufferRef | None = None, quantization: Quantization | None = None,
                   is_variable: bool = False, shape_signature: Sequence[int] | None = None) -> int:
        """Add a tensor to ``subgraph``; constants point at a registered ``buffer``."""
        self._building("add a tensor")
        sg = self._subgraph(subgraph)
        dt = dtype_name(dtype)
        if buffer is not None:
            if buffer.index >= len(self._bufs) or self._bufs[buffer.index].ref != buffer:
                raise InputError("unknown buffer reference", tensor=name)
            if buffer.index and buffer.nbytes != tensor_nbytes(shape, dt):
                raise InputError(f"buffer holds {buffer.nbytes} bytes, a {dt}{list(shape)} "
                                 f"tensor needs {tensor_nbytes(shape, dt)}", tensor=name)
        t = schema.TensorT()
        t.shape = np.asarray(list(shape), dtype=np.int32)
        t.type = DTYPES[dt]
        t.buffer = 0 if buffer is None else buffer.index
        t.name = name
        t.isVariable = is_variable
        t.hasRank = True
        if shape_signature is not None:
            t.shapeSignature = np.asarray(list(shape_signature), dtype=np.int32)
        if quantization is not None:
            t.quantization = quantization.to_schema()
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    def _opcode(self, builtin: int, version: int, custom: str | None) -> int:
        k = (builtin, version, custom)
        if k not in self._opcodes:
            self._opcodes[k] = len(self._opcode_list)
            self._opcode_list.append(schema.OperatorCodeT(
                deprecatedBuiltinCode=min(builtin, 127), customCode=custom,
                version=version, builtinCode=builtin))
        return self._opcodes[k]

    def add_operator(self, subgraph: int, builtin: int, inputs: Sequence[int],
                     outputs: Sequence[int], options: Any = None, *, version: int = 1,
                     custom_code: str | None = None) -> int:
        """Append an operator; ``options`` is a schema ``*OptionsT`` object or None
        (its union type is derived from the class name). Use -1 for an omitted input."""
        self._building("add an operator")
        sg = self._subgraph(subgraph)
        n = len(sg.tensors)
        for i in list(inputs) + list(outputs):
            if not -1 <= i < n:
                raise InputError(f"operator refers to tensor {i}, subgraph {subgraph} has {n}")
        op = schema.OperatorT(opcodeIndex=self._opcode(builtin, version, custom_code),
                              inputs=np.asarray(list(inputs), dtype=np.int32),
                              outputs=np.asarray(list(outputs), dtype=np.int32))
        if options is not None:
            kind = type(options).__name__[:-1]  # 'FullyConnectedOptionsT' -> '...Options'
            op.builtinOptionsType = getattr(schema.BuiltinOptions, kind)
            op.builtinOptions = options
        sg.operators.append(op)
        return len(sg.operators) - 1

    def set_io(self, subgraph: int, inputs: Sequence[int], outputs: Sequence[int]) -> None:
        self._building("set subgraph inputs/outputs")
        sg = self._subgraph(subgraph)
        sg.inputs = np.asarray(list(inputs), dtype=np.int32)
        sg.outputs = np.asarray(list(outputs), dtype=np.int32)

    def add_signature(self, key: str, subgraph: int, inputs: Mapping[str, int],
                      outputs: Mapping[str, int]) -> None:
        """Named entry point; names are sorted alphabetically (as Google's converter does)."""
        self._building("add a signature")
        self._subgraph(subgraph)
        if any(s.signatureKey == key for s in self._signatures):
            raise InputError(f"signature {key!r} defined twice")
        self._signatures.append(schema.SignatureDefT(
            inputs=[schema.TensorMapT(name=k, tensorIndex=inputs[k]) for k in sorted(inputs)],
            outputs=[schema.TensorMapT(name=k, tensorIndex=outputs[k]) for k in sorted(outputs)],
            signatureKey=key, subgraphIndex=subgraph))

    def add_metadata(self, name: str, value: bytes | str) -> None:
        """Model metadata entry (inline buffer). 'min_runtime_version' is NUL-padded to 16
        bytes: the runtime reads it as a NUL-terminated string."""
        raw = value.encode() if isinstance(value, str) else bytes(value)
        if name == "min_runtime_version":
            raw = raw + b"\0" * max(1, 16 - len(raw))
        ref = self.add_buffer(data=raw, external=False, name=f"metadata:{name}")
        self._metadata.append((name, ref.index))

    # ---- header --------------------------------------------------------------------
    def _pack(self) -> bytes:
        model = schema.ModelT()
        model.version = SCHEMA_VERSION
        model.description = self.description
        model.operatorCodes = self._opcode_list
        model.subgraphs = self._subgraphs
        bufs = []
        for b in self._bufs:
            fb = _AlignedBufferT()
            if b.ref.external:
                fb.offset, fb.size = b.offset, b.ref.nbytes
            else:
                fb.data = b.data
            bufs.append(fb)
        model.buffers = bufs
        model.metadata = [schema.MetadataT(name=n, buffer=i) for n, i in self._metadata] or None
        model.signatureDefs = self._signatures or None
        builder = flatbuffers.Builder(1 << 16)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())

    def _align(self, n: int) -> int:
        return (n + self.alignment - 1) // self.alignment * self.alignment

    def write_header(self) -> None:
        """Resolve small producer buffers, lay out offsets, pack and write the flatbuffer."""
        self._building("write the header")
        if not self._subgraphs:
            raise InputError("a model needs at least one subgraph", path=self.path)
        try:
            for b in self._bufs[1:]:
                if not b.ref.external and b.data is None:
                    b.data = self._produce_all(b)
            for b in self._bufs:
                b.offset = _PLACEHOLDER_OFFSET if b.ref.external else 0
            size = len(self._pack())
            pos = self._align(size)
            for b in self._bufs:
                if b.ref.external:
                    b.offset, pos = pos, self._align(pos + b.ref.nbytes)
            header = self._pack()
            if len(header) != size:   # cannot happen: offsets are fixed-width fields
                raise WriterStateError("flatbuffer size changed after laying out offsets")
            directory = os.path.dirname(os.path.abspath(self.path))
            fd, self._tmp = tempfile.mkstemp(dir=directory, suffix=".tmp",
                                             prefix="." + os.path.basename(self.path) + ".")
            self._file = os.fdopen(fd, "wb")
            self._file.write(header)
        except BaseException:
            self.abort()
            raise
        self.flatbuffer_size = size
        ext = [b for b in self._bufs if b.ref.external]
        self.file_size = (ext[-1].offset + ext[-1].ref.nbytes) if ext else size
        for b in self._bufs:
            b.written = not b.ref.external
        self.state = WriterState.HEADER_WRITTEN if ext else WriterState.DATA_WRITTEN

    # ---- data ----------------------------------------------------------------------
    def _produce_all(self, b: _Buf) -> bytes:
        out = b"".join(bytes(v) for v in self._chunks(b))
        if len(out) != b.ref.nbytes:
            raise InputError(f"producer gave {len(out)} bytes, registered {b.ref.nbytes}",
                             tensor=b.ref.name or f"buffer {b.ref.index}")
        return out

    @staticmethod
    def _chunks(b: _Buf) -> Iterable[memoryview]:
        if b.data is not None:
            yield memoryview(b.data)
            return
        got = b.producer()
        if isinstance(got, (bytes, bytearray, memoryview, np.ndarray)):
            yield _as_bytes_view(got)
        else:
            for chunk in got:
                yield _as_bytes_view(chunk)

    def _write_one(self, b: _Buf, chunks: Iterable[memoryview]) -> None:
        f = self._file
        f.seek(0, os.SEEK_END)
        if f.tell() > b.offset:
            f.seek(b.offset)
        else:
            f.write(b"\0" * (b.offset - f.tell()))
        n = 0
        for view in chunks:
            n += view.nbytes
            if n > b.ref.nbytes:
                break
            f.write(view)
        if n != b.ref.nbytes:
            raise InputError(f"producer gave {'more than ' if n > b.ref.nbytes else ''}{n} "
                             f"bytes, registered {b.ref.nbytes}",
                             tensor=b.ref.name or f"buffer {b.ref.index}")
        b.written = True

    def write_buffer(self, ref: BufferRef, data: BytesLike | Iterable[BytesLike]) -> None:
        """Write one external buffer's bytes now (instead of its producer)."""
        self._require(WriterState.HEADER_WRITTEN, action="write buffer data")
        b = self._bufs[ref.index] if 0 < ref.index < len(self._bufs) else None
        if b is None or b.ref != ref or not ref.external:
            raise InputError(f"buffer {ref.index} is not an external buffer of this writer",
                             path=self.path)
        if b.written:
            raise WriterStateError(f"buffer {ref.index} ({ref.name}) was already written",
                                   path=self.path)
        try:
            single = isinstance(data, (bytes, bytearray, memoryview, np.ndarray))
            self._write_one(b, [_as_bytes_view(data)] if single
                            else (_as_bytes_view(c) for c in data))
        except BaseException:
            self.abort()
            raise
        if all(x.written for x in self._bufs):
            self.state = WriterState.DATA_WRITTEN

    def write_data(self) -> None:
        """Call every remaining external buffer's producer, in registration order."""
        self._require(WriterState.HEADER_WRITTEN, action="write data")
        try:
            for b in self._bufs:
                if b.written:
                    continue
                self._write_one(b, self._chunks(b))
        except BaseException:
            self.abort()
            raise
        self.state = WriterState.DATA_WRITTEN

    # ---- end -----------------------------------------------------------------------
    def close(self) -> str:
        """Flush, and atomically move the finished file onto ``path``. Returns the path."""
        self._require(WriterState.DATA_WRITTEN, action="close")
        try:
            f = self._file
            f.seek(0, os.SEEK_END)
            if f.tell() != self.file_size:
                raise WriterStateError(f"file has {f.tell()} bytes, expected {self.file_size}")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
            f.close()
            self._file = None
            os.replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self.abort()
            raise
        self.state = WriterState.CLOSED
        return self.path

    def abort(self) -> None:
        """Drop the temp file; the destination is never touched. Safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None
        self.state = WriterState.CLOSED

    def finish(self) -> str:
        """write_header + write_data + close."""
        self.write_header()
        if self.state is WriterState.HEADER_WRITTEN:
            self.write_data()
        return self.close()

    def __enter__(self) -> "LiteRTWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self.state is not WriterState.CLOSED:
            self.abort()
            raise WriterStateError("writer left without close(); output discarded",
                                   path=self.path)

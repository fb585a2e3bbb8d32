"""LiteRT (.tflite) model writer: an explicit state machine that streams weights to disk.

Layout: [flatbuffer "TFL3": graph + small buffers inline, 16-byte aligned][pad][external
buffer][pad]..., each external buffer 16 KiB-aligned and referenced by absolute
``Buffer.offset``/``size`` (the runtime reads offset > 1 in place from the mmapped file). The
flatbuffer holds only metadata, so > 2 GiB models work (the runtime skips its verifier then).

States: EMPTY --add_*--> GRAPH --write_header--> HEADER_WRITTEN --write_data / write_buffer
(each external buffer once)--> DATA_WRITTEN --close--> CLOSED; ``abort`` or an exception
inside the writer --> CLOSED with the temp file removed and the destination untouched.
Buffers are registered with their size and a producer (callable returning bytes / an array /
an iterator of chunks) up front; after the header, producers run one at a time in order and
each produced size is checked. Output is a temp file in the destination directory,
``os.replace``d by :meth:`LiteRTWriter.close`. Same calls -> same bytes.
"""

from __future__ import annotations

import contextlib
import enum
import os
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from ..errors import EdgeSdkError, InputError
from .dtypes import DTYPES, Quantization, dtype_name, tensor_nbytes

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
DEFAULT_ALIGNMENT = 16 * 1024
# Smaller buffers stay inline: outside, padding would cost more than the data (norms, shapes).
DEFAULT_INLINE_LIMIT = 16 * 1024
INLINE_DATA_ALIGNMENT = 16
_PLACEHOLDER_OFFSET = 1 << 40   # any value > 1: uint64 fields have a fixed packed size

BytesLike = Union[bytes, bytearray, memoryview, np.ndarray]
Producer = Callable[[], Union[BytesLike, Iterable[BytesLike]]]

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
    """Handle of a registered buffer (index into Model.buffers)."""
    index: int
    nbytes: int
    external: bool
    name: str = ""


class _AlignedBufferT(schema.BufferT):
    """BufferT whose inline data vector starts INLINE_DATA_ALIGNMENT-aligned in the file."""

    def Pack(self, builder):  # noqa: N802 (flatbuffers naming)
        data = None
        if self.data is not None:
            n = len(self.data)
            builder.StartVector(1, n, INLINE_DATA_ALIGNMENT)
            builder.head -= n
            builder.Bytes[builder.head:builder.head + n] = self.data
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
    data: bytes | None = None
    producer: Producer | None = None
    offset: int = 0
    written: bool = False


_BYTES = (bytes, bytearray, memoryview, np.ndarray)


def _view(chunk: BytesLike) -> memoryview:
    if isinstance(chunk, np.ndarray):
        return memoryview(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8))
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return memoryview(chunk).cast("B")
    raise InputError(f"buffer producer returned {type(chunk).__name__}",
                     fix="return bytes, a numpy array or an iterator of them")


class _SharedQuantizationT(schema.QuantizationParametersT):
    """A QuantizationParametersT packed once per builder: later Pack calls return the first
    offset (a flatbuffer table may be referenced from several parents)."""

    @classmethod
    def of(cls, q: schema.QuantizationParametersT) -> "_SharedQuantizationT":
        t = cls()
        t.__dict__.update(q.__dict__)
        return t

    _builder = None
    _offset = 0

    def Pack(self, builder):  # noqa: N802 - the flatbuffers object API's name
        if self._builder is not builder:   # identity, held strongly: never a recycled id
            self._offset = super().Pack(builder)
            self._builder = builder
        return self._offset


class LiteRTWriter:
    """Builds one LiteRT model file. See the module docstring for states and layout."""

    def __init__(self, path: str | os.PathLike, *, description: str = "edge_sdk",
                 alignment: int = DEFAULT_ALIGNMENT, inline_limit: int = DEFAULT_INLINE_LIMIT,
                 fsync: bool = True):
        if alignment < 16 or alignment & (alignment - 1):
            raise InputError(f"alignment {alignment} is not a power of two >= 16")
        self.path, self.description = os.fspath(path), description
        self.alignment, self.inline_limit, self.fsync = alignment, inline_limit, fsync
        self.state = WriterState.EMPTY
        self._bufs: list[_Buf] = [_Buf(BufferRef(0, 0, False, "<sentinel>"))]
        self._keys: dict[str, BufferRef] = {}
        self._subgraphs: list[schema.SubGraphT] = []
        self._opcodes: dict[tuple, int] = {}
        self._signatures: list[schema.SignatureDefT] = []
        self._metadata: list[tuple[str, int]] = []  # (name, buffer index)
        self._tmp, self._file = None, None  # temp path and its open file, after write_header
        self.flatbuffer_size = self.file_size = 0

    # ---- state machine -------------------------------------------------------------
    def _require(self, *states: WriterState, action: str) -> None:
        if self.state not in states:
            allowed = " or ".join(s.value for s in states)
            raise WriterStateError(f"cannot {action} in state '{self.state.value}' "
                                   f"(allowed in: {allowed})", path=self.path)

    @contextlib.contextmanager
    def _aborting_on_error(self):
        try:
            yield
        except BaseException:
            self.abort()
            raise

    def _building(self, action: str) -> None:
        self._require(WriterState.EMPTY, WriterState.GRAPH, action=action)
        self.state = WriterState.GRAPH

    # ---- buffers -------------------------------------------------------------------
    def add_buffer(self, nbytes: int | None = None, *, data: BytesLike | None = None,
                   producer: Producer | None = None, key: str | None = None,
                   external: bool | None = None, name: str = "") -> BufferRef:
        """Register a constant buffer: ``data`` now, or ``nbytes`` + ``producer`` (called once,
        by write_data). An already seen ``key`` (e.g. a content hash) returns the same buffer.
        ``external`` forces placement; default: external iff nbytes >= inline_limit."""
        self._building("add a buffer")
        tensor = name or None
        if key is not None and key in self._keys:
            ref = self._keys[key]
            if nbytes is not None and nbytes != ref.nbytes:
                raise InputError(f"buffer key {key!r} has {ref.nbytes} bytes, not {nbytes}",
                                 tensor=tensor)
            return ref
        if (data is None) == (producer is None):
            raise InputError("give exactly one of data= or producer=", tensor=tensor)
        raw = None if data is None else _view(data).tobytes()
        if raw is not None and nbytes not in (None, len(raw)):
            raise InputError(f"buffer data has {len(raw)} bytes, not {nbytes}", tensor=tensor)
        nbytes = len(raw) if raw is not None else nbytes
        if nbytes is None or nbytes < 0:
            raise InputError("a producer buffer needs nbytes >= 0", tensor=tensor)
        ext = (nbytes >= self.inline_limit) if external is None else bool(external)
        if ext and nbytes == 0:
            raise InputError("an external buffer cannot be empty", tensor=tensor)
        ref = BufferRef(len(self._bufs), nbytes, ext, name)
        self._bufs.append(_Buf(ref, data=raw, producer=producer))
        if key is not None:
            self._keys[key] = ref
        return ref

    def buffer_offset(self, ref: BufferRef) -> int:
        """Absolute file offset of an external buffer (known after write_header)."""
        self._require(*list(WriterState)[2:], action="ask for a buffer offset")
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
                   is_variable: bool = False) -> int:
        """Add a tensor to ``subgraph``; constants point at a registered ``buffer``."""
        self._building("add a tensor")
        sg = self._subgraph(subgraph)
        dt = dtype_name(dtype)
        if buffer is not None:
            if not 0 <= buffer.index < len(self._bufs) or self._bufs[buffer.index].ref != buffer:
                raise InputError("unknown buffer reference", tensor=name)
            need = tensor_nbytes(shape, dt)
            if buffer.index and buffer.nbytes != need:
                raise InputError(f"buffer holds {buffer.nbytes} bytes, a {dt}{list(shape)} "
                                 f"tensor needs {need}", tensor=name)
        sg.tensors.append(schema.TensorT(
            shape=np.asarray(list(shape), dtype=np.int32), type=DTYPES[dt],
            buffer=0 if buffer is None else buffer.index, name=name, isVariable=is_variable,
            hasRank=True, quantization=None if quantization is None else self._shared_quant(quantization)))
        return len(sg.tensors) - 1

    def _shared_quant(self, q: Quantization) -> schema.QuantizationParametersT:
        """One flatbuffer table per distinct quantization, shared by every tensor that has it
        (the same weight in the prefill, decode and score subgraphs): the per-channel scales and
        zero points are written once instead of once per subgraph. On E2B that is ~22 MB less
        model head, pages the runtime reads at load and LiteRT-LM keeps resident."""
        cache = self.__dict__.setdefault("_quant_tables", {})
        t = cache.get(q)
        if t is None:
            t = cache[q] = _SharedQuantizationT.of(q.to_schema())
        return t

    def add_operator(self, subgraph: int, builtin: int, inputs: Sequence[int],
                     outputs: Sequence[int], options: Any = None, *, version: int = 1,
                     custom_code: str | None = None) -> int:
        """Append an operator; ``options`` is a schema ``*OptionsT`` object or None (its
        union type follows from the class name). -1 marks an omitted optional input."""
        self._building("add an operator")
        sg = self._subgraph(subgraph)
        for i in list(inputs) + list(outputs):
            if not -1 <= i < len(sg.tensors):
                raise InputError(f"operator refers to tensor {i}; subgraph {subgraph} has "
                                 f"{len(sg.tensors)}")
        code = self._opcodes.setdefault((builtin, version, custom_code), len(self._opcodes))
        op = schema.OperatorT(opcodeIndex=code, inputs=np.asarray(list(inputs), np.int32),
                              outputs=np.asarray(list(outputs), np.int32))
        if options is not None:
            op.builtinOptionsType = getattr(schema.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        sg.operators.append(op)
        return len(sg.operators) - 1

    def set_io(self, subgraph: int, inputs: Sequence[int], outputs: Sequence[int]) -> None:
        self._building("set subgraph inputs/outputs")
        sg = self._subgraph(subgraph)
        sg.inputs, sg.outputs = (np.asarray(list(v), np.int32) for v in (inputs, outputs))

    def add_signature(self, key: str, subgraph: int, inputs: Mapping[str, int],
                      outputs: Mapping[str, int]) -> None:
        """Named entry point; I/O names are sorted alphabetically (as Google's converter does)."""
        self._building("add a signature")
        self._subgraph(subgraph)
        if any(s.signatureKey == key for s in self._signatures):
            raise InputError(f"signature {key!r} defined twice")
        self._signatures.append(schema.SignatureDefT(
            inputs=[schema.TensorMapT(name=k, tensorIndex=inputs[k]) for k in sorted(inputs)],
            outputs=[schema.TensorMapT(name=k, tensorIndex=outputs[k]) for k in sorted(outputs)],
            signatureKey=key, subgraphIndex=subgraph))

    def add_metadata(self, name: str, value: bytes | str) -> None:
        """Metadata entry (inline); 'min_runtime_version' is NUL-padded to 16 bytes (C string)."""
        raw = value.encode() if isinstance(value, str) else bytes(value)
        if name == "min_runtime_version":
            raw += b"\0" * max(1, 16 - len(raw))
        ref = self.add_buffer(data=raw, external=False, name=f"metadata:{name}")
        self._metadata.append((name, ref.index))

    # ---- header & data ---------------------------------------------------------------
    def _pack(self) -> bytes:
        bufs = [_AlignedBufferT(offset=b.offset, size=b.ref.nbytes) if b.ref.external
                else _AlignedBufferT(data=b.data) for b in self._bufs]
        codes = [schema.OperatorCodeT(deprecatedBuiltinCode=min(op, 127), customCode=custom,
                                      version=version, builtinCode=op)
                 for (op, version, custom) in self._opcodes]
        model = schema.ModelT(
            version=SCHEMA_VERSION, operatorCodes=codes, subgraphs=self._subgraphs,
            description=self.description, buffers=bufs,
            metadata=[schema.MetadataT(name=n, buffer=i) for n, i in self._metadata] or None,
            signatureDefs=self._signatures or None)
        builder = flatbuffers.Builder(1 << 16)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())

    def write_header(self) -> None:
        """Run inline producers, lay out offsets, pack and write the flatbuffer."""
        self._building("write the header")
        if not self._subgraphs:
            raise InputError("a model needs at least one subgraph", path=self.path)
        with self._aborting_on_error():
            for b in self._bufs[1:]:
                if not b.ref.external and b.data is None:
                    b.data = b"".join(bytes(v) for v in self._chunks(b))
                    self._check_size(b, len(b.data))
                b.offset = _PLACEHOLDER_OFFSET if b.ref.external else 0
            size = len(self._pack())
            a = self.alignment
            pos = -(-size // a) * a
            for b in self._bufs:
                if b.ref.external:
                    b.offset, pos = pos, -(-(pos + b.ref.nbytes) // a) * a
            header = self._pack()
            if len(header) != size:  # cannot happen: offsets are fixed-width fields
                raise WriterStateError("flatbuffer size changed after laying out offsets")
            base = os.path.basename(self.path)
            self._tmp = os.path.join(os.path.dirname(os.path.abspath(self.path)),
                                     f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            # 0o666 & ~umask, like any new file (mkstemp would force 0600)
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            self._file = os.fdopen(fd, "wb")
            self._file.write(header)
            self._file.flush()
        ext = [b for b in self._bufs if b.ref.external]
        self.flatbuffer_size = size
        self.file_size = (ext[-1].offset + ext[-1].ref.nbytes) if ext else size
        for b in self._bufs:
            b.written = not b.ref.external
        self.state = WriterState.HEADER_WRITTEN if ext else WriterState.DATA_WRITTEN

    @staticmethod
    def _check_size(b: _Buf, n: int) -> None:
        if n != b.ref.nbytes:
            raise InputError(f"producer gave {'more than ' if n > b.ref.nbytes else ''}{n} "
                             f"bytes, registered {b.ref.nbytes}",
                             tensor=b.ref.name or f"buffer {b.ref.index}")

    @staticmethod
    def _chunks(b: _Buf) -> Iterable[memoryview]:
        got = b.data if b.data is not None else b.producer()
        return map(_view, [got] if isinstance(got, _BYTES) else got)

    def _write_one(self, b: _Buf, chunks: Iterable[memoryview]) -> None:
        f = self._file
        f.seek(b.offset)  # seeking past EOF leaves a hole that reads as zeros
        n = 0
        for view in chunks:
            n += view.nbytes
            if n > b.ref.nbytes:
                break
            f.write(view)
        self._check_size(b, n)
        b.written = True

    def write_buffer(self, ref: BufferRef, data: BytesLike | Iterable[BytesLike]) -> None:
        """Write one external buffer's bytes now (instead of calling its producer)."""
        self._require(WriterState.HEADER_WRITTEN, action="write buffer data")
        b = self._bufs[ref.index] if 0 < ref.index < len(self._bufs) else None
        if b is None or b.ref != ref or not ref.external:
            raise InputError(f"buffer {ref.index} is not an external buffer of this writer",
                             path=self.path)
        if b.written:
            raise WriterStateError(f"buffer {ref.index} ({ref.name}) was already written",
                                   path=self.path)
        with self._aborting_on_error():
            self._write_one(b, (_view(c) for c in ([data] if isinstance(data, _BYTES) else data)))
        if all(x.written for x in self._bufs):
            self.state = WriterState.DATA_WRITTEN

    def write_data(self) -> None:
        """Write every remaining external buffer (data or producer), in registration order."""
        self._require(WriterState.HEADER_WRITTEN, action="write data")
        with self._aborting_on_error():
            for b in self._bufs:
                if not b.written:
                    self._write_one(b, self._chunks(b))
        self.state = WriterState.DATA_WRITTEN

    def close(self) -> str:
        """Flush and atomically move the finished file onto ``path``; returns the path."""
        self._require(WriterState.DATA_WRITTEN, action="close")
        with self._aborting_on_error():
            f = self._file
            if f.seek(0, os.SEEK_END) != self.file_size:
                raise WriterStateError(f"file has {f.tell()} bytes, expected {self.file_size}")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
            f.close()
            self._file = None
            os.replace(self._tmp, self.path)
            self._tmp = None
        self.state = WriterState.CLOSED
        return self.path

    def abort(self) -> None:
        """Drop the temp file; the destination is never touched. Idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
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
        if exc_type is not None or self.state is not WriterState.CLOSED:
            self.abort()
            if exc_type is None:
                raise WriterStateError("writer left without close(); output discarded",
                                       path=self.path)

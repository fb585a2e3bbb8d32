"""The ``.litertlm`` container (format 1.7.0, LITERTLM_GEMMA4.md §2), written with
``litert_lm_builder`` and read back without it.

- :func:`plan_layout` predicts every section's begin/end offset before anything is written (the
  header flatbuffer's packed size decides where the first 16 KiB block starts), so the manifest
  that rides in the header can name the offsets; :func:`write_container` builds, then checks the
  file against the prediction and fails loudly on any difference.
- Determinism: the builder stamps a random ``uuid`` and the wall-clock ``creation_timestamp`` into
  the system metadata on every build and offers no way to set them. We overwrite both after the
  build with a uuid derived from the content and a fixed timestamp of the same length (so the header
  size and every offset stay as built). Everything else the builder writes is already a function of
  its inputs (zlib at the default level, proto bytes we serialize ourselves).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import flatbuffers
from litert_lm_builder import litertlm_builder as lb
from litert_lm_builder import litertlm_core as core
from litert_lm_builder import litertlm_header_schema_py_generated as schema

from ..errors import InputError

BLOCK = core.BLOCK_SIZE
VERSION = f"{core.LITERTLM_MAJOR_VERSION}.{core.LITERTLM_MINOR_VERSION}.{core.LITERTLM_PATCH_VERSION}"
FIXED_TIMESTAMP = "1980-01-01T00:00:00.000000+00:00"   # builder's isoformat() length (32)
_UUID_LEN = 36
_TYPE_NAME = {v: k for k, v in vars(schema.AnySectionDataType).items() if not k.startswith("_")}
_DATA_TYPE = {"llm_metadata": schema.AnySectionDataType.LlmMetadataProto,
              "executor_metadata": schema.AnySectionDataType.ExecutorMetadataProto,
              "hf_tokenizer": schema.AnySectionDataType.HF_Tokenizer_Zlib,
              "tflite": schema.AnySectionDataType.TFLiteModel}


def type_name(kind: str) -> str:
    """The container's name for a section kind ("TFLiteModel", "HF_Tokenizer_Zlib", …)."""
    return _TYPE_NAME[_DATA_TYPE[kind]]


@dataclass(frozen=True)
class SectionSource:
    """A section whose bytes are exactly the bytes of ``path``."""
    kind: str                  # llm_metadata | executor_metadata | hf_tokenizer | tflite
    path: Path
    model_type: str | None = None    # "tf_lite_prefill_decode", … (tflite only)

    @property
    def items(self) -> list[lb.Metadata]:
        if self.model_type is None:
            return []
        return [lb.Metadata("model_type", self.model_type, lb.DType.STRING)]

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class SectionInfo:
    """A section as it lies in a .litertlm file."""
    index: int
    data_type: str
    begin: int
    end: int
    items: dict

    @property
    def model_type(self) -> str | None:
        return self.items.get("model_type")


def _string_entries(entries: dict[str, str]) -> list[lb.Metadata]:
    return [lb.Metadata(k, v, lb.DType.STRING) for k, v in entries.items()]


def _header_size(system: list[lb.Metadata], sections: list[SectionSource]) -> int:
    """Packed size of the header flatbuffer, built the way the builder builds it."""
    sm = schema.SystemMetadataT(entries=[m.to_key_value_pair() for m in system])
    objs = [schema.SectionObjectT(items=[m.to_key_value_pair() for m in s.items], dataType=_DATA_TYPE[s.kind],
                                  beginOffset=1, endOffset=1) for s in sections]
    meta = schema.LiteRTLMMetaDataT(systemMetadata=sm, sectionMetadata=schema.SectionMetadataT(objects=objs))
    b = flatbuffers.Builder(BLOCK)
    b.Finish(meta.Pack(b))
    return b.Offset()


def _round(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def full_system_metadata(entries: dict[str, str]) -> list[lb.Metadata]:
    """User entries then the two the builder appends (uuid, creation_timestamp), sized as built."""
    return _string_entries({**entries, "uuid": "0" * _UUID_LEN, "creation_timestamp": FIXED_TIMESTAMP})


def plan_layout(entries: dict[str, str], sections: list[SectionSource]) -> list[tuple[int, int]]:
    """[(begin, end)] of every section for this system metadata."""
    offset = _round(core.HEADER_BEGIN_BYTE_OFFSET + _header_size(full_system_metadata(entries), sections))
    out = []
    for s in sections:
        out.append((offset, offset + s.size))
        offset = _round(offset + s.size)
    return out


def _add(builder: lb.LitertLmFileBuilder, s: SectionSource) -> None:
    p = str(s.path)
    if s.kind == "llm_metadata":
        builder.add_llm_metadata(p)
    elif s.kind == "executor_metadata":
        builder.add_executor_metadata(p)
    elif s.kind == "hf_tokenizer":
        builder.add_hf_tokenizer(p)     # a .zlib path: written verbatim (we compressed it)
    else:
        builder.add_tflite_model(p, lb.TfLiteModelType(s.model_type))


def write_container(stream: BinaryIO, entries: dict[str, str], sections: list[SectionSource], *,
                    uuid: str) -> list[SectionInfo]:
    """Build into ``stream`` (a real file: the builder seeks), then make uuid/timestamp fixed."""
    builder = lb.LitertLmFileBuilder()
    for m in _string_entries(entries):
        builder.add_system_metadata(m)
    for s in sections:
        _add(builder, s)
    builder.build(stream)
    stream.flush()
    _stamp_header(stream, uuid)
    return read_sections_from(stream)


def _stamp_header(stream: BinaryIO, uuid: str) -> None:
    """Overwrite the builder's random uuid and wall-clock timestamp in place with same-length
    strings (the flatbuffer layout, header size and every offset stay as built). The generated
    object API cannot unpack this header (its VData union creator is misnamed), so the strings are
    located by value: each must occur exactly once in the header."""
    stream.seek(core.HEADER_END_LOCATION_BYTE_OFFSET)
    end = struct.unpack("<Q", stream.read(8))[0]
    _, system, _ = read_header_from(stream)
    stream.seek(core.HEADER_BEGIN_BYTE_OFFSET)
    header = bytearray(stream.read(end - core.HEADER_BEGIN_BYTE_OFFSET))
    stamps = {"uuid": uuid, "creation_timestamp": FIXED_TIMESTAMP}
    for key, new in stamps.items():
        current = system.get(key)
        if not isinstance(current, str):
            raise RuntimeError(f"the builder wrote no {key!r} string")
        if key == "creation_timestamp" and len(current) != len(new):
            new = new[:19] + "+00:00"          # isoformat() drops zero microseconds
        old_b, new_b = current.encode(), new.encode()
        if len(old_b) != len(new_b) or header.count(old_b) != 1:
            raise RuntimeError(f"cannot fix header entry {key!r} in place ({current!r})")
        i = header.index(old_b)
        header[i:i + len(old_b)] = new_b
    stream.seek(core.HEADER_BEGIN_BYTE_OFFSET)
    stream.write(bytes(header))
    stream.flush()


_VALUE_TABLES = {getattr(schema.VData, n): getattr(schema, n) for n in
                 ("UInt8", "Int8", "UInt16", "Int16", "UInt32", "Int32", "UInt64", "Int64", "Float32",
                  "Double", "Bool", "StringValue")}


def _kv_value(kv: schema.KeyValuePair):
    cls = _VALUE_TABLES.get(kv.ValueType())
    table = kv.Value()
    if cls is None or table is None:
        return None
    v = cls()
    v.Init(table.Bytes, table.Pos)
    return v.Value()


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


def read_header_from(f: BinaryIO) -> tuple[str, dict, list[SectionInfo]]:
    """(version, system metadata, sections) of an open .litertlm file."""
    f.seek(0)
    head = f.read(core.HEADER_BEGIN_BYTE_OFFSET)
    if len(head) < core.HEADER_BEGIN_BYTE_OFFSET or head[:8] != core.HEADER_MAGIC_BYTES:
        raise InputError("not a .litertlm file (no LITERTLM magic)", path=getattr(f, "name", None))
    major, minor, patch = struct.unpack("<III", head[8:20])
    end = struct.unpack("<Q", head[24:32])[0]
    buf = f.read(end - core.HEADER_BEGIN_BYTE_OFFSET)
    meta = schema.LiteRTLMMetaData.GetRootAs(buf, 0)
    system = {}
    sm = meta.SystemMetadata()
    for i in range(sm.EntriesLength() if sm else 0):
        kv = sm.Entries(i)
        system[_decode(kv.Key())] = _decode(_kv_value(kv))
    sections = []
    secs = meta.SectionMetadata()
    for i in range(secs.ObjectsLength() if secs else 0):
        o = secs.Objects(i)
        items = {_decode(o.Items(j).Key()): _decode(_kv_value(o.Items(j))) for j in range(o.ItemsLength())}
        sections.append(SectionInfo(i, _TYPE_NAME.get(o.DataType(), str(o.DataType())), o.BeginOffset(),
                                    o.EndOffset(), items))
    return f"{major}.{minor}.{patch}", system, sections


def read_sections_from(f: BinaryIO) -> list[SectionInfo]:
    return read_header_from(f)[2]


def read_header(path: str | Path) -> tuple[str, dict, list[SectionInfo]]:
    with open(path, "rb") as f:
        return read_header_from(f)


def publish_mode(path: str | Path) -> None:
    """Give a mkstemp file (0600) the mode a plain ``open(..., "w")`` would have (0666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)

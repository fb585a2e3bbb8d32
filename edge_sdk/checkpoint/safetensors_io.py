"""One safetensors file: parse and validate its header, read one tensor at a time.

Layout (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
then the data section; offsets are relative to the start of the data section.

Only the header is read up front. ``read_tensor`` reads exactly one tensor's bytes with a seek and
a ``readinto`` into a fresh array, so reading one tensor never touches another.

Lenient where harmless: gaps between tensors and trailing bytes after the last one are accepted
(the reference reader refuses them); nothing else is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from ..errors import CheckpointError
from .strict_json import bad_name, loads, short

#: safetensors dtype string → NumPy dtype (little-endian, as stored).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}

#: The reference implementation refuses headers above 100 MB; so do we (before reading them).
MAX_HEADER_BYTES = 100_000_000
#: NumPy's limit on dimensions; no real tensor comes near it.
MAX_DIMS = 64
#: Every dimension, and the element count of the nonzero dimensions × item size, stays below this
#: (NumPy computes sizes in signed 64-bit even for an empty array).
MAX_EXTENT = 2 ** 62

_FIX_REEXPORT = "re-export the checkpoint (e.g. transformers save_pretrained(..., safe_serialization=True))"
_FIX_RECOPY = "the file is incomplete or damaged: download or copy it again"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives. ``offset`` is the absolute byte offset of its data in ``file``."""

    name: str
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int

    @property
    def numpy_dtype(self) -> np.dtype:
        """The NumPy dtype ``read`` returns (``ml_dtypes.bfloat16`` for BF16)."""
        return DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_header_json(file: Path) -> tuple[dict, int, int]:
    """Return (header object, header length N, file size) after the framing checks."""
    try:
        size = os.stat(file).st_size
    except FileNotFoundError:
        raise CheckpointError("safetensors file does not exist", path=file,
                              fix="check the path, or copy the missing file") from None
    if not file.is_file():
        raise CheckpointError("is not a regular file", path=file, fix="point at a .safetensors file")
    if size < 8:
        raise CheckpointError(f"truncated: {size} bytes, shorter than the 8-byte header length",
                              path=file, fix=_FIX_RECOPY)
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise CheckpointError(
                f"header length {n} is larger than the file ({size} bytes): truncated or not safetensors",
                path=file, fix=_FIX_RECOPY)
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit",
                                  path=file, fix=_FIX_REEXPORT)
        raw = f.read(n)
    try:
        header = loads(raw)
    except ValueError as e:
        raise CheckpointError(f"header is not valid JSON ({e})", path=file, fix=_FIX_REEXPORT) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"header is JSON {type(header).__name__}, not an object",
                              path=file, fix=_FIX_REEXPORT)
    return header, n, size


def _check_metadata(file: Path, meta: object) -> None:
    if meta is None:    # the safetensors library accepts "__metadata__": null
        return
    if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError("__metadata__ must be an object of string → string", path=file,
                              fix=_FIX_REEXPORT)


def _parse_entry(file: Path, name: str, entry: object, data_start: int, data_len: int) -> TensorInfo:
    def bad(msg: str, fix: str = _FIX_REEXPORT) -> CheckpointError:
        return CheckpointError(msg, path=file, tensor=name, fix=fix)

    if not isinstance(entry, dict):
        raise bad(f"header entry is {type(entry).__name__}, not an object")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise bad(f"header entry lacks {', '.join(missing)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise bad(f"unknown dtype {dtype!r} (supported: {', '.join(DTYPES)})",
                  fix="store the tensor in one of the supported dtypes")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad(f"shape {short(shape)} is not a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise bad(f"shape has {len(shape)} dimensions, more than {MAX_DIMS}")
    extent = DTYPES[dtype].itemsize
    for d in shape:
        if d >= MAX_EXTENT:
            raise bad(f"shape has a dimension of {short(d)}, not below 2**62")
        extent *= d or 1
        if extent >= MAX_EXTENT:
            raise bad(f"shape {_shape_text(shape)} is too large to address (over 2**62 bytes "
                      "counting its nonzero dimensions)")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)):
        raise bad(f"data_offsets {short(offsets)} is not a pair of integers")
    begin, end = offsets
    if begin < 0 or end < begin or begin > data_len:
        raise bad(f"data_offsets [{short(begin)}, {short(end)}] lie outside the data section [0, {data_len}]")
    if end > data_len:
        raise bad(f"data ends at byte {short(end)} of the data section but the file holds only {data_len} "
                  f"data bytes: truncated data", fix=_FIX_RECOPY)
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if expected != end - begin:
        raise bad(f"shape {_shape_text(shape)} × {dtype} is {expected} bytes but data_offsets "
                  f"[{begin}, {end}] span {end - begin}")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), file=file,
                      offset=data_start + begin, nbytes=end - begin)


def _shape_text(shape: list[int]) -> str:
    if len(shape) <= 8:
        return str(list(shape))
    return f"[{', '.join(map(str, shape[:4]))}, ... ({len(shape)} dims)]"


def read_safetensors_header(file: str | os.PathLike) -> dict[str, TensorInfo]:
    """Validate one safetensors file from its header alone; return its tensors by name (sorted).

    Raises ``CheckpointError`` (naming the file, and the tensor where there is one) for: a file
    shorter than 8 bytes, a header length beyond the file, a header that is not strict JSON
    (``strict_json.loads``) or not an object, a malformed ``__metadata__`` (null is accepted, as the
    safetensors library does), a tensor name with control characters, an unknown dtype, a bad shape
    (more than 64 dimensions, a dimension or a nonzero extent of 2**62 or more), offsets outside the data section or
    overlapping another tensor, data that runs past the end of the file, and shape × dtype ≠ bytes.
    """
    file = Path(file)
    header, n, size = _read_header_json(file)
    data_start, data_len = 8 + n, size - 8 - n
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            _check_metadata(file, entry)
            continue
        why = bad_name(name)
        if why:
            raise CheckpointError(f"tensor name {short(name)} {why}", path=file, fix=_FIX_REEXPORT)
        infos[name] = _parse_entry(file, name, entry, data_start, data_len)
    previous: TensorInfo | None = None
    for info in sorted(infos.values(), key=lambda t: (t.offset, t.nbytes)):
        if info.nbytes == 0:
            continue
        if previous is not None and info.offset < previous.offset + previous.nbytes:
            raise CheckpointError(
                f"data [{info.offset - data_start}, {info.offset - data_start + info.nbytes}] overlaps "
                f"tensor '{previous.name}' [{previous.offset - data_start}, "
                f"{previous.offset - data_start + previous.nbytes}]",
                path=file, tensor=info.name, fix=_FIX_REEXPORT)
        previous = info
    return dict(sorted(infos.items()))


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Read one tensor's bytes into a new, writable array of its stored dtype and shape."""
    out = np.empty(info.shape, dtype=info.numpy_dtype)
    view = out.reshape(-1).view(np.uint8)
    with open(info.file, "rb") as f:
        f.seek(info.offset)
        got = f.readinto(view) if info.nbytes else 0
    if got != info.nbytes:
        raise CheckpointError(f"read {got} of {info.nbytes} bytes at offset {info.offset}: the file "
                              "shrank after it was opened", path=info.file, tensor=info.name,
                              fix=_FIX_RECOPY)
    return out


def to_f32(info: TensorInfo, array: np.ndarray) -> np.ndarray:
    """Convert ``array`` (read from ``info``) to float32.

    Floating dtypes and integers of up to 16 bits convert; wider integers (e.g. packed int4 in
    int32 words) are refused, since float32 cannot hold them exactly and the result is meaningless.
    """
    if not np.can_cast(array.dtype, np.float32, "safe") and array.dtype.kind in "iu":
        raise CheckpointError(
            f"is {info.dtype}, which float32 cannot hold exactly (packed or index data?)",
            path=info.file, tensor=info.name, fix="read() it in its stored dtype and decode it")
    return array.astype(np.float32, copy=False)

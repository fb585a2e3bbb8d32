"""A small streaming safetensors writer for fixtures, tests and scripts.

The header needs every tensor's name, dtype and shape before the first data byte, so values are
either NumPy arrays or ``LazyTensor``s: a declared dtype and shape plus a callable that produces the
bytes only when that tensor is written (one array, or an iterable of row-block chunks). With
``LazyTensor`` values a file of any size is written with memory bounded by the largest chunk.

Output: header JSON with sorted keys and no spaces, padded with spaces so the data starts at a
multiple of 8; data ordered by (dtype size descending, name) so every tensor is aligned to its
dtype. Same inputs → same bytes. Written to a temporary file in the target directory and moved into
place with ``os.replace``, so readers never see a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .safetensors_io import DTYPES

_NAME_OF: dict[np.dtype, str] = {dt: name for name, dt in DTYPES.items()}


@dataclass(frozen=True)
class LazyTensor:
    """A tensor whose data is produced at write time.

    ``produce()`` returns one array, or an iterable of arrays (e.g. a generator of row blocks), of
    exactly ``dtype``; their bytes, concatenated in C order, must total ``shape`` × dtype size.
    """

    dtype: str | np.dtype | type  # safetensors string ("BF16") or a NumPy dtype (ml_dtypes.bfloat16)
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray | Iterable[np.ndarray]]


def _dtype_name(dtype: object, path: Path, name: str) -> str:
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is not None and dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    if dt is None or dt not in _NAME_OF:
        raise CheckpointError(f"dtype {dtype!r} cannot be stored in safetensors", path=path, tensor=name,
                              fix=f"use one of {', '.join(DTYPES)}")
    return _NAME_OF[dt]


def _plan(path: Path, tensors: Iterable[tuple[str, object]]) -> list[tuple[str, str, tuple, object]]:
    """(name, dtype string, shape, value) for each tensor, in data order."""
    plan, seen = [], set()
    for name, value in tensors:
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise CheckpointError(f"tensor name {name!r} is not allowed", path=path,
                                  fix="use a non-empty string other than '__metadata__'")
        if name in seen:
            raise CheckpointError("tensor name given twice", path=path, tensor=name, fix="rename one")
        seen.add(name)
        if isinstance(value, LazyTensor):
            shape = tuple(int(d) for d in value.shape)
            plan.append((name, _dtype_name(value.dtype, path, name), shape, value))
        elif isinstance(value, np.ndarray):
            plan.append((name, _dtype_name(value.dtype, path, name), value.shape, value))
        else:
            raise CheckpointError(f"value is {type(value).__name__}, not a NumPy array or LazyTensor",
                                  path=path, tensor=name, fix="pass np.ndarray or LazyTensor values")
    plan.sort(key=lambda p: (-DTYPES[p[1]].itemsize, p[0]))
    return plan


def _header_bytes(plan: list, metadata: Mapping[str, str] | None, path: Path) -> bytes:
    header: dict[str, object] = {}
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise CheckpointError("metadata must map strings to strings", path=path,
                                  fix="convert metadata values to str")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape, _ in plan:
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def _chunks(value: object) -> Iterable[np.ndarray]:
    if isinstance(value, np.ndarray):
        return (value,)
    produced = value.produce()
    return (produced,) if isinstance(produced, np.ndarray) else produced


def _write_data(f, path: Path, name: str, dtype: str, shape: tuple[int, ...], value: object) -> None:
    want = DTYPES[dtype]
    expected = math.prod(shape) * want.itemsize
    written = 0
    for chunk in _chunks(value):
        chunk = np.asarray(chunk)
        if chunk.dtype.byteorder == ">":
            chunk = chunk.astype(chunk.dtype.newbyteorder("<"))
        if chunk.dtype != want:
            raise CheckpointError(f"produced dtype {chunk.dtype}, declared {dtype}", path=path, tensor=name,
                                  fix="cast the chunks to the declared dtype")
        data = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
        written += data.size
        if written > expected:
            raise CheckpointError(f"produced more than the declared {expected} bytes for shape {shape}",
                                  path=path, tensor=name, fix="make the chunks match the declared shape")
        f.write(memoryview(data))
    if written != expected:
        raise CheckpointError(f"produced {written} bytes, declared shape {shape} needs {expected}",
                              path=path, tensor=name, fix="make the chunks match the declared shape")


def write_safetensors(path: str | os.PathLike,
                      tensors: Iterable[tuple[str, np.ndarray | LazyTensor]],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``(name, array_or_LazyTensor)`` pairs to a safetensors file atomically; return its path.

    The pairs are collected first (the header needs every shape), so arrays given directly are all
    held until written; give ``LazyTensor`` values to keep memory bounded for large files.
    """
    path = Path(path)
    plan = _plan(path, tensors)
    header = _header_bytes(plan, metadata, path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a checkpoint file is ordinary data
        with os.fdopen(fd, "wb") as f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for name, dtype, shape, value in plan:
                _write_data(f, path, name, dtype, shape, value)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

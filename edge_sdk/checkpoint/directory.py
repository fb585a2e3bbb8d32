"""A Hugging Face checkpoint directory: config.json + safetensors weights (one file or index + shards).

``open_checkpoint`` validates everything it can from headers alone (no tensor data is read) and
returns a ``Checkpoint`` that reads tensors lazily, one at a time.

Pickle-based weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ...) are refused by file name: they
are never opened, so nothing in them can run.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ..errors import CheckpointError, ConfigError
from .safetensors_io import TensorInfo, read_safetensors_header, read_tensor, to_f32
from .strict_json import bad_name, loads, short

CONFIG_NAME = "config.json"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

_FIX_CONVERT = ("convert the weights to safetensors where you trust the file, e.g. transformers "
                "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True); "
                "edge_sdk never unpickles weights")


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A validated checkpoint directory. Tensor data is read only by ``read`` / ``read_f32``."""

    path: Path
    config: dict  # parsed config.json
    tensors: Mapping[str, TensorInfo]  # every tensor across shards, sorted by name

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            close = difflib.get_close_matches(name, list(self.tensors), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "list Checkpoint.tensors for the names"
            raise CheckpointError("no such tensor in the checkpoint", path=self.path, tensor=name,
                                  fix=hint)
        return self.tensors[name]

    def read(self, name: str) -> np.ndarray:
        """The tensor in its stored dtype (BF16 as ``ml_dtypes.bfloat16``); reads only its bytes."""
        return read_tensor(self._info(name))

    def read_f32(self, name: str) -> np.ndarray:
        """The tensor as float32 (floating dtypes and ≤16-bit integers; wider integers are refused)."""
        info = self._info(name)
        return to_f32(info, read_tensor(info))

    def total_bytes(self) -> int:
        """Sum of all tensors' stored bytes."""
        return sum(t.nbytes for t in self.tensors.values())

    def files(self) -> list[Path]:
        """The safetensors files that hold the tensors, sorted (e.g. for hashing)."""
        return sorted({t.file for t in self.tensors.values()})


def check_links(directory: Path) -> None:
    """Refuse a symbolic link in ``directory`` whose target resolves outside it: nothing we read
    may come from elsewhere. The one exception is the Hugging Face hub cache, whose
    ``snapshots/<rev>/`` files link into ``../../blobs/`` of the same repository."""
    root = os.path.realpath(directory)
    allowed = [root + os.sep]
    if directory.resolve().parent.name == "snapshots":
        allowed.append(os.path.realpath(directory.resolve().parent.parent / "blobs") + os.sep)
    try:
        entries = [e for e in os.scandir(directory) if e.is_symlink()]
    except OSError as e:
        raise CheckpointError(f"cannot be listed ({e.strerror})", path=directory,
                              fix="check the directory's permissions") from None
    for entry in sorted(entries, key=lambda e: e.name):
        real = os.path.realpath(entry.path)
        if not (real + os.sep).startswith(tuple(allowed)):
            raise CheckpointError(
                f"{short(entry.name)} is a symbolic link to {short(real, 200)}, outside the checkpoint "
                "directory; refused", path=directory,
                fix="copy the file itself into the directory (e.g. cp -L)")


def load_json(path: Path, error=CheckpointError, fix: str | None = None) -> object:
    """One JSON file, parsed strictly (``strict_json.loads``); ``error`` naming the file otherwise."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"cannot be read ({e.strerror})", path=path, fix=fix) from None
    try:
        return loads(data)
    except ValueError as e:
        raise error(f"is not valid JSON ({e})", path=path, fix=fix) from None


def _load_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ConfigError("config.json is missing", path=path,
                          fix="copy config.json from the model's original directory")
    config = load_json(path, ConfigError, fix="restore config.json from the model's original directory")
    if not isinstance(config, dict):
        raise ConfigError(f"holds a JSON {type(config).__name__}, not an object", path=path,
                          fix="restore config.json from the model's original directory")
    return config


def _load_index(index: Path) -> dict[str, str]:
    """The index's weight_map (tensor → shard file name), checked for shape and safe file names."""
    fix = "re-save the checkpoint so the index matches its shards"
    data = load_json(index, CheckpointError, fix=fix)
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        raise CheckpointError("has no 'weight_map' object", path=index, fix=fix)
    weight_map = data["weight_map"]
    for name, shard in weight_map.items():
        why = bad_name(name)
        if why:
            raise CheckpointError(f"weight_map key {short(name)} {why}", path=index, fix=fix)
        why = bad_name(shard)
        if why or shard != Path(shard).name or shard in (".", ".."):
            raise CheckpointError(f"weight_map names shard {short(shard)}, not a file name in this directory",
                                  path=index, tensor=name, fix=fix)
    if not weight_map:
        raise CheckpointError("weight_map is empty", path=index, fix=fix)
    return weight_map


def _sharded_tensors(directory: Path, index: Path) -> dict[str, TensorInfo]:
    weight_map = _load_index(index)
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    tensors: dict[str, TensorInfo] = {}
    for shard in sorted(by_shard):
        file = directory / shard
        if not file.is_file():
            missing = [s for s in sorted(by_shard) if not (directory / s).is_file()]
            also = f" ({len(missing)} of {len(by_shard)} shards are missing)" if len(missing) > 1 else ""
            raise CheckpointError(f"shard {shard} named in {INDEX_NAME} is missing{also}", path=file,
                                  tensor=sorted(by_shard[shard])[0],
                                  fix="copy every shard named in the index into the directory")
        header = read_safetensors_header(file)
        for name in sorted(by_shard[shard]):
            if name not in header:
                raise CheckpointError(f"{INDEX_NAME} puts this tensor in {shard}, which does not hold it",
                                      path=file, tensor=name,
                                      fix="re-save the checkpoint so the index matches its shards")
        for name, info in header.items():
            if name in tensors:
                raise CheckpointError(f"tensor is stored twice, also in {tensors[name].file.name}",
                                      path=file, tensor=name, fix="re-save the checkpoint")
            tensors[name] = info
    return tensors


def has_weight_files(directory: str | os.PathLike) -> bool:
    """``directory`` claims to hold weights: ``model.safetensors``, the index (even when the shards it
    names are missing), any other ``*.safetensors``, or pickle weights. Such a directory is a
    checkpoint and ``open_checkpoint`` must accept it (or say what is wrong); only a directory with
    none of these may be read as a bare config."""
    d = Path(directory)
    if not d.is_dir():
        return False
    try:
        names = [e.name for e in os.scandir(d)]
    except OSError:
        return True     # unreadable: let open_checkpoint say so
    return any(n == INDEX_NAME or n.endswith(".safetensors") or n.endswith(PICKLE_SUFFIXES) for n in names)


def _weight_tensors(directory: Path) -> dict[str, TensorInfo]:
    """Find the weights the way transformers does: model.safetensors, else the index + shards."""
    single, index = directory / SINGLE_NAME, directory / INDEX_NAME
    if single.is_file():
        return read_safetensors_header(single)
    if index.is_file():
        return _sharded_tensors(directory, index)
    names = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    stray = [n for n in names if n.endswith(".safetensors")]
    if stray:
        raise CheckpointError(
            f"has {', '.join(short(n) for n in stray)} but neither {SINGLE_NAME} nor {INDEX_NAME}", path=directory,
            fix=f"rename a single file to {SINGLE_NAME}, or add the {INDEX_NAME} that came with the shards")
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise CheckpointError(f"holds only pickle weights ({', '.join(short(n) for n in pickles)}), which are refused",
                              path=directory, fix=_FIX_CONVERT)
    raise CheckpointError(f"holds no weights: neither {SINGLE_NAME} nor {INDEX_NAME}", path=directory,
                          fix="point at a Hugging Face model directory with safetensors weights")


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open and validate a checkpoint directory from its headers; no tensor data is read.

    Raises ``CheckpointError`` for a missing directory, pickle-only or absent weights, a bad index,
    a missing shard, a tensor the index puts in the wrong shard, or any header problem (see
    ``read_safetensors_header``); ``ConfigError`` for a missing or malformed config.json.
    """
    directory = Path(path)
    if not directory.exists():
        raise CheckpointError("does not exist", path=directory, fix="check the checkpoint path")
    if not directory.is_dir():
        if directory.name.endswith(PICKLE_SUFFIXES):
            raise CheckpointError("is a pickle weights file, which is refused", path=directory,
                                  fix=_FIX_CONVERT)
        raise CheckpointError("is a file, not a checkpoint directory", path=directory,
                              fix="point at the directory holding config.json and the safetensors files")
    check_links(directory)
    tensors = _weight_tensors(directory)
    config = _load_config(directory)
    return Checkpoint(path=directory, config=config,
                      tensors=MappingProxyType(dict(sorted(tensors.items()))))

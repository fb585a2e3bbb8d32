"""Floor 2: read Hugging Face safetensors checkpoints lazily and strictly.

- ``open_checkpoint(dir) -> Checkpoint``: validates config.json, the index and every shard's header
  up front (headers only); ``Checkpoint.read(name)`` / ``read_f32(name)`` then read one tensor at a
  time. Pickle weights (``*.bin`` etc.) are refused without being opened.
- ``read_safetensors_header(file) -> {name: TensorInfo}``: validates one file.
- ``write_safetensors(path, [(name, array | LazyTensor), ...], metadata=None)``: deterministic,
  atomic, streaming writer for fixtures and scripts.

Every JSON file (config.json, the index, each header) is parsed strictly (``strict_json``: no
NaN/Infinity, duplicate keys, lone surrogates, nesting beyond 64); names with control characters are
refused; a symbolic link in the directory that resolves outside it is refused (``check_links``).

Every problem raises ``edge_sdk.errors.CheckpointError`` (``ConfigError`` for config.json) naming the
file, the tensor where there is one, and a fix.
"""

from .directory import Checkpoint, has_weight_files, open_checkpoint
from .safetensors_io import DTYPES, TensorInfo, read_safetensors_header
from .writer import LazyTensor, write_safetensors

__all__ = [
    "DTYPES",
    "Checkpoint",
    "LazyTensor",
    "TensorInfo",
    "has_weight_files",
    "open_checkpoint",
    "read_safetensors_header",
    "write_safetensors",
]

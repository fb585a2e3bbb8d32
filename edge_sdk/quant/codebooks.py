"""The QAT codebook sidecar (NumPy + safetensors only, no torch).

``qat_codebooks.safetensors`` beside ``qat_scales.safetensors``: one float32 tensor
``<role>.codebooks`` [groups, codebook_size] (ascending rows) per dictionary-coded role, metadata
``{"format": "edge_sdk.qat_codebooks", "version": "1"}``. The stored weights of such a role are
exactly ``codebooks[row // rows_per_codebook, code]``; a converter reads the codebooks from here
instead of refitting k-means (which need not reproduce them).
"""

from __future__ import annotations

from os import PathLike
from typing import Mapping

import numpy as np

from ..errors import CheckpointError, EdgeSdkError
from .config import DictionaryConfig
from .kernels_dict import _assign, _thresholds32

CODEBOOKS_NAME = "qat_codebooks.safetensors"
CODEBOOKS_FORMAT = "edge_sdk.qat_codebooks"
CODEBOOKS_VERSION = "1"


def write_qat_codebooks(path: str | PathLike, codebooks: Mapping[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file
    tensors = {}
    for role, c in codebooks.items():
        c = np.asarray(c)
        if c.dtype != np.float32 or c.ndim != 2:
            raise CheckpointError(f"codebooks for '{role}' must be 2-D float32, got {c.dtype} {c.shape}")
        tensors[f"{role}.codebooks"] = np.ascontiguousarray(c)
    save_file(tensors, str(path), metadata={"format": CODEBOOKS_FORMAT, "version": CODEBOOKS_VERSION})


def read_qat_codebooks(path: str | PathLike) -> dict[str, np.ndarray]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CODEBOOKS_FORMAT or meta.get("version") != CODEBOOKS_VERSION:
                raise CheckpointError(f"not an edge_sdk QAT codebook file (format {meta.get('format')!r})",
                                      path=path)
            out = {}
            for key in f.keys():
                if not key.endswith(".codebooks"):
                    raise CheckpointError("codebook tensor names must end in '.codebooks'",
                                          path=path, tensor=key)
                a = f.get_tensor(key)
                if a.dtype != np.float32 or a.ndim != 2:
                    raise CheckpointError(f"codebooks must be 2-D float32, got {a.dtype} {a.shape}",
                                          path=path, tensor=key)
                out[key[:-len(".codebooks")]] = a
    except EdgeSdkError:
        raise
    except Exception as e:
        raise CheckpointError(f"cannot read QAT codebooks: {e}", path=path) from None
    return out


def dictionary_codes(w: np.ndarray, codebooks: np.ndarray, cfg: DictionaryConfig) -> np.ndarray:
    """NumPy codes [rows, cols] (uint8) of ``w`` under GIVEN codebooks [groups, K], by the
    dictionary kernel's own assignment (``quant.kernels_dict``: nearest entry, ties → lower)."""
    w = np.asarray(w, dtype=np.float32)
    r = cfg.rows_per_codebook
    books = np.ascontiguousarray(codebooks, dtype=np.float32)
    out = np.empty(w.shape, np.uint8)
    for g in range(books.shape[0]):
        x = w[g * r:(g + 1) * r].reshape(1, -1)
        out[g * r:(g + 1) * r] = _assign(x, _thresholds32(books[g:g + 1])).reshape(-1, w.shape[1])
    return out

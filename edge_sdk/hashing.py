"""The sha256 of a file, or of a byte range of it, streamed (a multi-GB model is never read whole).

The one owner: conversion records (``litert/export.py``), the bundler and its verifier
(``bundle/``), and the device transfer (``validate/``) all hash through :func:`sha256_file`.
"""

from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 22


def sha256_file(path: str | os.PathLike, begin: int = 0, end: int | None = None) -> str:
    """Hex sha256 of bytes [begin, end) of a file (``end`` None: to the end), read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(begin)
        left = (end if end is not None else os.fstat(f.fileno()).st_size) - begin
        while left > 0:
            chunk = f.read(min(left, CHUNK))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()

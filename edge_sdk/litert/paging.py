"""Steer and observe how the kernel pages a model's files: evict them from the page cache, see how
much of a file is cached, and advise this process's mappings of them.

Standard library only (ctypes on libc, Linux ``/proc``), so it travels beside ``runtime.py`` to a
device without edge_sdk.

- ``evict(paths)``: ``posix_fadvise(POSIX_FADV_DONTNEED)`` on each file (after ``fdatasync``, so
  dirty pages are written and can go): the next run reads them from storage, as the first launch
  after an install does. No root needed. ``cached_bytes(path)`` (``mincore``) says what is left.
- ``malloc_trim()``: hand the C heap's free pages back to the kernel (glibc; a no-op elsewhere),
  e.g. the buffers a runtime freed after packing weights at load.
- ``advise(paths, "random")``: ``madvise(MADV_RANDOM)`` on this process's mappings of those files,
  so a looked-up row faults in its own pages only (no read-around of up to 128 KiB per fault);
  ``advise(paths, "dontneed")`` drops their pages from this process's RSS (read-only mappings only:
  the pages come back from the file when touched again).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

MADV = {"normal": 0, "random": 1, "sequential": 2, "willneed": 3, "dontneed": 4}
_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_long]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return _libc


# ---- page cache ---------------------------------------------------------------------------
def cached_bytes(path: str) -> int:
    """Bytes of ``path`` in the page cache now: ``mincore`` over a fresh read-only mapping (a
    mapping that is never touched faults nothing in)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    page = mmap.PAGESIZE
    c = _c()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = c.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap failed on {path}")
        try:
            n = (size + page - 1) // page
            vec = (ctypes.c_ubyte * n)()
            if c.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore failed on {path}")
            return (bytes(vec).count(1) + _odd(vec)) * page
        finally:
            c.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def _odd(vec) -> int:
    """Pages whose mincore byte has bit 0 set along with other (reserved) bits."""
    return sum(1 for v in bytes(vec) if v & 1 and v != 1)


def evict(paths) -> dict[str, dict[str, int]]:
    """Drop each file's pages from the page cache; {path: {size, cached_before, cached_after}}."""
    out = {}
    for p in paths:
        p = os.fspath(p)
        if not os.path.isfile(p):
            continue
        before = cached_bytes(p)
        fd = os.open(p, os.O_RDONLY)
        try:
            try:
                os.fdatasync(fd)
            except OSError:
                pass
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        out[p] = {"size": os.path.getsize(p), "cached_before": before, "cached_after": cached_bytes(p)}
    return out


# ---- mappings -------------------------------------------------------------------------------
def maps(pid: str = "self"):
    """(start, end, perms, offset, path) of every mapping."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5].strip() if len(parts) > 5 else ""
            yield start, end, parts[1], int(parts[2], 16), path


def advise(paths, how: str, *, offset_ranges: dict[str, list[tuple[int, int]]] | None = None) -> int:
    """``madvise(how)`` on this process's mappings of ``paths`` (optionally only the file byte
    ranges in ``offset_ranges[path]``); the bytes advised. ``dontneed`` only touches read-only
    mappings (dropping a written private page would lose data)."""
    flag = MADV[how]
    want = {os.path.realpath(os.fspath(p)) for p in paths}
    page = mmap.PAGESIZE
    total = 0
    for start, end, perms, off, path in list(maps()):
        if not path or os.path.realpath(path) not in want:
            continue
        if how == "dontneed" and "w" in perms:
            continue
        spans = [(start, end)]
        ranges = (offset_ranges or {}).get(path) or (offset_ranges or {}).get(os.path.realpath(path))
        if ranges:
            spans = []
            for lo, hi in ranges:   # file offsets -> addresses within this mapping
                a, b = max(lo, off), min(hi, off + end - start)
                if a < b:
                    a0 = start + (a - off)
                    a0 -= a0 % page
                    spans.append((a0, start + (b - off)))
        for a, b in spans:
            if _c().madvise(ctypes.c_void_p(a), b - a, flag) == 0:
                total += b - a
    return total


def malloc_trim() -> bool:
    """glibc ``malloc_trim(0)``: return free heap pages to the kernel. False where there is none
    (musl, Bionic) or nothing was released."""
    try:
        return bool(_c().malloc_trim(0))
    except AttributeError:
        return False

"""Byte sizes and their spelling. GB = 10**9 bytes, GiB = 2**30; we always say which."""

from __future__ import annotations

import re

from .errors import InputError

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 10**3, "m": 10**6, "g": 10**9,
}

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float) -> int:
    """'1GB' → 10**9, '512MiB' → 536870912, '0.84 GB' → 840000000, 1024 → 1024."""
    if isinstance(text, (int, float)):
        return int(text)
    m = _SIZE_RE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"cannot read size {text!r}",
                         fix="write e.g. 1GB (10^9 bytes), 900MiB (2^20 bytes) or 123456 (bytes)")
    return int(round(float(m.group(1)) * _UNITS[m.group(2).lower()]))


def fmt_bytes(n: float, unit: str = "auto") -> str:
    """Human size in decimal units (GB = 10^9) unless ``unit`` names a binary one."""
    n = float(n)
    if unit == "auto":
        for u, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if abs(n) >= f:
                return f"{n / f:.2f} {u}"
        return f"{int(n)} B"
    f = _UNITS[unit.lower()]
    return f"{n / f:.2f} {unit}"


def fmt_count(n: float) -> str:
    """5104298467 → '5.10 B', 401000000 → '401.00 M'."""
    for u, f in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.2f} {u}"
    return str(int(n))


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment

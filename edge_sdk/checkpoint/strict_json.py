"""Strict JSON for every file we read from a checkpoint (config.json, the index, safetensors headers).

``json.loads`` alone accepts what RFC 8259 does not (``NaN``, ``Infinity``, ``-Infinity``), keeps the
last of duplicate keys silently, returns lone surrogates (``"\\ud800"``) as strings that cannot be
written back as UTF-8, turns ``1e999`` into infinity, and recurses once per nesting level (a
document nested ~1,000 deep raises ``RecursionError``). ``loads`` refuses all of these with a
one-line ``ValueError``; callers wrap it in their own error type naming the file.

``bad_name`` says why a name (tensor, shard, key) cannot be used in a one-line message: control
characters (newlines, NUL, escape sequences), line/paragraph separators, lone surrogates.
"""

from __future__ import annotations

import json
import math
import re

#: Deepest nesting accepted. config.json nests 4 deep, an index 2, a safetensors header 3.
MAX_DEPTH = 64

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]}{'...' if len(text) > 20 else ''} overflows a float")
    return value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {short(key)}")
        out[key] = value
    return out


def _check_depth(text: str) -> None:
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError(f"nested more than {MAX_DEPTH} deep")
        else:
            depth -= 1


def _check_strings(value: object) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                raise ValueError(f"string {short(v)} holds a lone surrogate (not UTF-8)")
        elif isinstance(v, dict):
            for k, x in v.items():
                if _SURROGATE.search(k):
                    raise ValueError(f"key {short(k)} holds a lone surrogate (not UTF-8)")
                stack.append(x)
        elif isinstance(v, list):
            stack.extend(v)


def loads(data: str | bytes) -> object:
    """Parse one JSON document strictly (see the module docstring); ``ValueError`` on anything else."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"not UTF-8 (byte {e.start})") from None
    else:
        text = data
    if text.startswith("\ufeff"):
        raise ValueError("starts with a byte-order mark")
    _check_depth(text)
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                           object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} deep") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    _check_strings(value)
    return value


def short(value: object, limit: int = 60) -> str:
    """A one-line, bounded rendering of a JSON value for an error message (never fails: huge
    integers are described, not converted to decimal)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        if value.bit_length() > 64:
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        r = ascii(value)
        return r if len(r) <= limit else r[:limit - 4] + "...'"
    if isinstance(value, dict):
        return f"an object of {len(value)} key(s)"
    if isinstance(value, (list, tuple)):
        if len(value) <= 4 and all(isinstance(x, (int, float, bool)) or x is None for x in value):
            return "[" + ", ".join(short(x) for x in value) + "]"
        return f"a list of {len(value)} item(s)"
    return type(value).__name__


def bad_name(name: object) -> str | None:
    """Why ``name`` cannot name a tensor or file in a one-line message, or None when it can."""
    if not isinstance(name, str):
        return f"is a JSON {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    m = _UNPRINTABLE.search(name)
    if m:
        return f"holds the control character {ascii(m.group())}"
    return None

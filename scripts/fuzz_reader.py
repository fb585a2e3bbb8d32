#!/usr/bin/env python
"""Fuzz the checkpoint reader: seeded mutations of small Gemma 4 checkpoints, fed through
``inspect`` and through reading every tensor, in this process, one case at a time.

Seeds are built here without torch (shapes from ``edge_sdk.gemma4``, data from a seeded RNG):

- ``mm``: ``gemma4`` multimodal (hub form, PLE, KV sharing, vision + audio towers), two shards
  + ``model.safetensors.index.json``, text under ``model.language_model.``;
- ``text``: ``gemma4_text`` with ``attention_k_eq_v``, one ``model.safetensors`` (prefix
  ``model.``), a compressed-tensors ``quantization_config``, ``per_layer_config`` form.

Each case applies 1–3 mutations (config.json, index.json, the header JSON, tensor entries, the
header length, truncation, ``__metadata__``, symlinks; parsed and raw-text edits) and records
whether the result is valid, invalid, or unknown (the oracle is the mutation's own claim). The
outcome of a case is one of:

- ``crash``: an exception that is not ``EdgeSdkError`` (grouped by the innermost ``edge_sdk``
  frame: "distinct places");
- ``hang``: over the per-case time limit (``--limit``, SIGALRM; memory is capped with RLIMIT_AS so
  a runaway allocation ends as MemoryError = crash);
- ``invalid accepted``: a mutation known to make the checkpoint invalid, yet ``inspect`` and every
  read succeeded;
- ``outside read``: a file opened (audit hook) whose real path lies outside the case's checkpoint
  directory and outside the Python installation / this package;
- ``multi-line``: an ``EdgeSdkError`` whose message spans more than one line;
- ``valid refused``: informative only (a mutation claimed valid, e.g. ``"__metadata__": null``).

    python scripts/fuzz_reader.py [--cases 10000] [--seed 0] [--start 0] [--limit 2]
        [--json OUT.json] [--keep DIR] [--quiet]

Exit status 0 when crashes, hangs, invalid accepted, outside reads and multi-line are all 0, else 1.
Case i is reproducible alone: ``--start i --cases 1 --keep DIR`` leaves its directory in DIR.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edge_sdk.errors import EdgeSdkError  # noqa: E402

INDEX = "model.safetensors.index.json"

# ---------------------------------------------------------------- seeds

_MM_TEXT = dict(
    model_type="gemma4_text", vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=4,
    num_attention_heads=2, num_key_value_heads=1, head_dim=8, global_head_dim=16, sliding_window=8,
    layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    num_kv_shared_layers=2, use_double_wide_mlp=True, hidden_size_per_layer_input=4,
    vocab_size_per_layer_input=64, final_logit_softcapping=30.0, attention_k_eq_v=False,
    num_global_key_value_heads=None, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
    tie_word_embeddings=True, eos_token_id=1, bos_token_id=2, pad_token_id=0,
    num_experts=None, top_k_experts=None, moe_intermediate_size=None, enable_moe_block=False,
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6},
    },
)
_MM = dict(
    model_type="gemma4", architectures=["Gemma4ForConditionalGeneration"], text_config=_MM_TEXT,
    vision_config=dict(model_type="gemma4_vision", hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, head_dim=4, patch_size=2,
                       position_embedding_size=8, pooling_kernel_size=2, use_clipped_linears=False,
                       standardize=False),
    audio_config=dict(model_type="gemma4_audio", hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                      subsampling_conv_channels=[8, 4], conv_kernel_size=3, output_proj_dims=8,
                      use_clipped_linears=True),
    eos_token_id=[1, 106], tie_word_embeddings=True,
)
_TEXT = dict(
    model_type="gemma4_text", architectures=["Gemma4ForCausalLM"], vocab_size=64, hidden_size=16,
    intermediate_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    sliding_window=8, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    num_kv_shared_layers=0, attention_k_eq_v=True, hidden_size_per_layer_input=0,
    vocab_size_per_layer_input=0, final_logit_softcapping=None, rms_norm_eps=1e-6,
    per_layer_config={"2": {"head_dim": 16, "num_key_value_heads": 1}},
    quantization_config={
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "strategy": "channel", "symmetric": True, "group_size": None}}},
        "ignore": ["lm_head"],
    },
)


@dataclass
class Seed:
    name: str
    config: dict
    files: dict[str, bytes]        # file name → bytes (config.json rendered from ``config``)
    shards: tuple[str, ...]


def _tensors(cfg: dict, prefix: str) -> list[tuple[str, np.ndarray]]:
    from edge_sdk.gemma4 import spec_from_config, text_tensors

    spec = spec_from_config(cfg)
    rng = np.random.default_rng(0)
    out = [(prefix + t.name, rng.standard_normal(t.shape).astype(np.float32)) for t in text_tensors(spec.text)]
    for tower in spec.towers:
        out += [(n, rng.standard_normal(s).astype(np.float32)) for n, s in tower.tensors]
    return out


def _write(path: Path, tensors) -> bytes:
    from edge_sdk.checkpoint import write_safetensors

    write_safetensors(path, tensors)
    return path.read_bytes()


def build_seeds(work: Path) -> list[Seed]:
    seeds = []
    tens = _tensors(_MM, "model.language_model.")
    half = len(tens) // 2
    shards = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    files = {shards[0]: _write(work / shards[0], tens[:half]), shards[1]: _write(work / shards[1], tens[half:])}
    wm = {n: shards[0] for n, _ in tens[:half]} | {n: shards[1] for n, _ in tens[half:]}
    files[INDEX] = json.dumps({"metadata": {"total_size": 0}, "weight_map": wm}, indent=2).encode()
    seeds.append(Seed("mm", json.loads(json.dumps(_MM)), files, shards))
    tens = _tensors(_TEXT, "model.")
    seeds.append(Seed("text", json.loads(json.dumps(_TEXT)),
                      {"model.safetensors": _write(work / "model.safetensors", tens)}, ("model.safetensors",)))
    return seeds


# ---------------------------------------------------------------- a case

@dataclass
class Case:
    seed: Seed
    config: object                       # parsed config (re-rendered unless config_raw is set)
    config_raw: bytes | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)   # name → symlink target
    removed: set[str] = field(default_factory=set)
    raw: set[str] = field(default_factory=set)   # files edited as text: structured edits would undo that
    notes: list[str] = field(default_factory=list)
    claims: dict = field(default_factory=dict)   # key (a config key, or the note) → validity
    originals: dict = field(default_factory=dict)  # config key → the seed's value (before any edit)

    def claim(self, what: str, validity: str, key: str | None = None) -> None:
        """A later claim on the same config key replaces the earlier one (set, then deleted)."""
        self.notes.append(what)
        self.claims[key or f"#{len(self.notes)}"] = validity

    @property
    def validity(self) -> str:              # valid < unknown < invalid
        rank = {"valid": 0, "unknown": 1, "invalid": 2}
        return max(self.claims.values(), key=rank.get, default="valid")

    def config_bytes(self) -> bytes:
        if self.config_raw is not None:
            return self.config_raw
        return json.dumps(self.config).encode()


# values: (value, is it a plausible JSON value at all)
_NAN, _INF = float("nan"), float("inf")


def _deep(depth: int) -> object:
    v: object = 1
    for _ in range(depth):
        v = [v]
    return v


def _pool(rng: random.Random) -> object:
    return rng.choice([
        5, 0, -1, 1, 2, 3, 7, 2 ** 31, 2 ** 63, 2 ** 64 + 1, 10 ** 9, 10 ** 30, None, _NAN, _INF, -_INF,
        0.5, 1.5, -0.0, 1e-300, 1e308, "x", "", "gemma4", [], [1], [1, 2, 3], {}, {"a": 1}, True, False,
        [5] * 1000, "line\nbreak", "\x00",
    ])


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _finite_pos(v):
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v) and v > 0


# key → oracle(value, original) -> "valid" | "invalid" | "unknown"
def _same_or_invalid(v, orig):
    return "valid" if (type(v) is type(orig) and v == orig) else "invalid"


def _int_or_invalid(v, orig):
    if v == orig and type(v) is type(orig):
        return "valid"
    return "unknown" if _is_int(v) and v >= 0 else "invalid"


def _bool_or_invalid(v, orig):
    if v is None:
        return "unknown"                   # null: the default
    if isinstance(v, bool):
        return "valid" if v == orig else "unknown"
    return "invalid"


def _pos_float(v, orig):
    if v is None:
        return "unknown"                   # null: the default
    if isinstance(v, float) and v == orig:
        return "valid"
    return "unknown" if _finite_pos(v) else "invalid"


def _unknown(v, orig):
    return "unknown"


_TEXT_KEYS = {
    "vocab_size": _same_or_invalid, "hidden_size": _same_or_invalid, "intermediate_size": _same_or_invalid,
    "num_hidden_layers": _same_or_invalid, "num_attention_heads": _same_or_invalid,
    "num_key_value_heads": _same_or_invalid, "head_dim": _same_or_invalid, "global_head_dim": _same_or_invalid,
    "num_global_key_value_heads": _unknown, "sliding_window": _int_or_invalid,
    "num_kv_shared_layers": _same_or_invalid, "hidden_size_per_layer_input": _same_or_invalid,
    "vocab_size_per_layer_input": _same_or_invalid, "attention_k_eq_v": _unknown,
    "use_double_wide_mlp": _unknown, "enable_moe_block": _unknown, "tie_word_embeddings": _bool_or_invalid,
    "rms_norm_eps": _pos_float, "final_logit_softcapping": _unknown, "eos_token_id": _unknown,
    "bos_token_id": _unknown, "pad_token_id": _unknown, "hidden_activation": _unknown,
    "layer_types": _unknown, "rope_parameters": _unknown, "per_layer_config": _unknown,
    "num_experts": _unknown, "top_k_experts": _unknown, "moe_intermediate_size": _unknown,
    "attention_bias": _bool_or_invalid, "use_bidirectional_attention": _unknown,
    "quantization_config": _unknown,
}
_VISION_KEYS = {k: _same_or_invalid for k in (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "patch_size", "position_embedding_size")} | {
    "pooling_kernel_size": _int_or_invalid, "use_clipped_linears": _same_or_invalid,
    "standardize": _same_or_invalid, "output_proj_dims": _unknown}
_AUDIO_KEYS = {k: _same_or_invalid for k in (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "subsampling_conv_channels", "conv_kernel_size",
    "output_proj_dims", "use_clipped_linears")}
_ROPE_KEYS = {"rope_theta": _pos_float, "partial_rotary_factor": _unknown, "factor": _unknown,
              "rope_type": _unknown}
_QC_KEYS = {"quant_method": _unknown, "format": _unknown, "config_groups": _unknown, "ignore": _unknown}
_QW_KEYS = {"num_bits": _unknown, "type": _unknown, "strategy": _unknown, "symmetric": _unknown,
            "group_size": _unknown}


def _text_of(cfg: dict) -> dict | None:
    t = cfg.get("text_config") if cfg.get("model_type") == "gemma4" else cfg
    return t if isinstance(t, dict) else None


def _sections(cfg: dict) -> list[tuple[str, dict, dict]]:
    out = []
    text = _text_of(cfg)
    if text is not None:
        out.append(("text", text, _TEXT_KEYS))
        rp = text.get("rope_parameters")
        if isinstance(rp, dict):
            out += [(f"rope.{k}", v, _ROPE_KEYS) for k, v in rp.items() if isinstance(v, dict)]
        plc = text.get("per_layer_config")
        if isinstance(plc, dict):
            out += [(f"plc.{k}", v, {"head_dim": _same_or_invalid, "num_key_value_heads": _same_or_invalid})
                    for k, v in plc.items() if isinstance(v, dict)]
        qc = text.get("quantization_config")
        if isinstance(qc, dict):
            out.append(("qc", qc, _QC_KEYS))
            groups = qc.get("config_groups")
            if isinstance(groups, dict):
                for g in groups.values():
                    if isinstance(g, dict):
                        out.append(("qc.group", g, {"targets": _unknown, "weights": _unknown,
                                                    "input_activations": _unknown, "format": _unknown}))
                        if isinstance(g.get("weights"), dict):
                            out.append(("qc.weights", g["weights"], _QW_KEYS))
    for key, table in (("vision_config", _VISION_KEYS), ("audio_config", _AUDIO_KEYS)):
        if isinstance(cfg.get(key), dict):
            out.append((key, cfg[key], table))
    return out


# ---------------------------------------------------------------- mutations: config.json

def m_cfg_set(rng, case: Case):
    secs = _sections(case.config) if isinstance(case.config, dict) and case.config_raw is None else []
    if not secs:
        return
    name, sec, table = rng.choice(secs)
    key = rng.choice(list(table) + list(sec)) if sec else rng.choice(list(table))
    value = _pool(rng)
    orig = case.originals.setdefault(f"{id(sec)}.{key}", sec.get(key, "<absent>"))
    oracle = table.get(key, _unknown)
    verdict = oracle(value, orig) if orig != "<absent>" else "unknown"
    if isinstance(value, float) and not math.isfinite(value):
        verdict = "invalid"                # NaN/Infinity are not JSON
    if value is None and verdict == "invalid" and name in ("vision_config", "audio_config", "text"):
        verdict = "unknown" if name != "text" else verdict
    sec[key] = value
    case.claim(f"config {name}.{key}={value!r:.40}", verdict, key=f"{id(sec)}.{key}")


def m_cfg_replace_section(rng, case: Case):
    if not isinstance(case.config, dict) or case.config_raw is not None:
        return
    text = _text_of(case.config)
    key = rng.choice(["text_config", "vision_config", "audio_config", "quantization_config", "rope_parameters",
                      "layer_types", "per_layer_config", "eos_token_id"])
    target = case.config if key in ("text_config", "vision_config", "audio_config") else text
    if target is None or (key in ("text_config", "vision_config", "audio_config")
                          and case.config.get("model_type") != "gemma4"):
        return
    value = rng.choice([5, "x", [], {}, None, True, 1.5, [1, "a"], {"a": 5}, [[]], ["full_attention"] * 9,
                        {"sliding_attention": 5}, {"full_attention": {"rope_theta": 0}}])
    verdict = "invalid"
    if value is None or key == "eos_token_id":
        verdict = "unknown"
    if key in ("quantization_config", "rope_parameters", "per_layer_config", "layer_types") and value in ({}, []):
        verdict = "unknown"                # empty: as if absent
    if key in ("vision_config", "audio_config") and value == {}:
        verdict = "invalid"                # a default tower: the tiny weights disagree
    if key == "per_layer_config" and key not in target and value == {}:
        verdict = "unknown"
    target[key] = value
    case.claim(f"config {key}={value!r:.40}", verdict)


def m_cfg_delete(rng, case: Case):
    secs = _sections(case.config) if isinstance(case.config, dict) and case.config_raw is None else []
    if not secs:
        return
    name, sec, _ = rng.choice(secs)
    if sec:
        key = rng.choice(list(sec))
        del sec[key]
        case.claim(f"config del {name}.{key}", "unknown", key=f"{id(sec)}.{key}")


def m_cfg_absurd(rng, case: Case):
    if not isinstance(case.config, dict) or case.config_raw is not None:
        return
    text = _text_of(case.config)
    if text is None:
        return
    kind = rng.randrange(6)
    ckey = None
    if kind == 0:
        ckey = f"{id(text)}.num_hidden_layers"
        case.originals.setdefault(ckey, text.get("num_hidden_layers", "<absent>"))
        text["num_hidden_layers"] = rng.choice([2 ** 63, 10 ** 9, 10 ** 6])
        text.pop("layer_types", None)
        what = "num_hidden_layers absurd, no layer_types"
    elif kind == 1 and case.config.get("model_type") == "gemma4":
        tower = rng.choice(["vision_config", "audio_config"])
        case.config[tower] = dict(case.config.get(tower) or {}, num_hidden_layers=rng.choice([10 ** 9, 2 ** 62]))
        what = f"{tower}.num_hidden_layers absurd"
    elif kind == 2:
        text["attention_k_eq_v"] = True
        text["num_global_key_value_heads"] = 0
        what = "k_eq_v with 0 global KV heads"
    elif kind == 3:
        rp = text.get("rope_parameters")
        lt = rng.choice(["sliding_attention", "full_attention"])
        text["rope_parameters"] = dict(rp) if isinstance(rp, dict) else {}
        text["rope_parameters"][lt] = {"rope_type": "default", "rope_theta": rng.choice([0, -1.0, _NAN, _INF])}
        ckey = f"{id(text['rope_parameters'][lt])}.rope_theta"
        what = f"rope_theta bad for {lt}"
    elif kind == 4:
        ckey = f"{id(text)}.rms_norm_eps"
        case.originals.setdefault(ckey, text.get("rms_norm_eps", "<absent>"))
        text["rms_norm_eps"] = rng.choice([-_INF, _NAN, -1.0, 0.0])
        what = "rms_norm_eps bad"
    else:
        key = rng.choice(["head_dim", "global_head_dim"])
        ckey = f"{id(text)}.{key}"
        case.originals.setdefault(ckey, text.get(key, "<absent>"))
        text[key] = rng.choice([None, _NAN, 0, -8, 2 ** 40] if key == "head_dim" else [_NAN, 0, -8, 2 ** 40])
        what = f"{key}={text[key]!r}"
    case.claim(f"config {what}", "invalid", key=ckey)


# ---------------------------------------------------------------- raw JSON text edits (any JSON file)

_NUM = re.compile(rb"(?<=[:\[,\s])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?=[,\]\}\s])")
_STR = re.compile(rb'"(?:[^"\\]|\\.)*"')


def raw_edit(rng, data: bytes) -> tuple[bytes, str, str]:
    """One raw edit of JSON text → (new bytes, what, validity)."""
    kind = rng.randrange(9)
    if kind == 0:       # duplicate key: repeat the first key of a random object
        starts = [m.start() for m in re.finditer(rb'\{\s*"', data)]
        if starts:
            p = rng.choice(starts)
            m = _STR.search(data, p)
            dup = m.group(0) + b": 0, "
            return data[:p + 1] + dup + data[p + 1:], "duplicate key", "invalid"
    if kind == 1:       # NaN / Infinity literal
        nums = list(_NUM.finditer(data))
        if nums:
            m = rng.choice(nums)
            lit = rng.choice([b"NaN", b"Infinity", b"-Infinity"])
            return data[:m.start()] + lit + data[m.end():], f"{lit.decode()} literal", "invalid"
    if kind == 2:       # lone surrogate in a string (key or value)
        strs = list(_STR.finditer(data))
        if strs:
            m = rng.choice(strs)
            sur = rng.choice([b"\\ud800", b"\\udfff", b"\\udc00x"])
            return data[:m.end() - 1] + sur + data[m.end() - 1:], "lone surrogate", "invalid"
    if kind == 3:       # deep nesting instead of a number
        nums = list(_NUM.finditer(data))
        if nums:
            m = rng.choice(nums)
            d = rng.choice([200, 1000, 5000, 100_000])
            return data[:m.start()] + b"[" * d + b"1" + b"]" * d + data[m.end():], f"nested {d} deep", "invalid"
    if kind == 4:       # truncation
        if len(data) > 2:
            cut = rng.randrange(1, len(data) - 1)
            return data[:cut], f"JSON truncated at {cut}", "invalid"
    if kind == 5:       # a number with thousands of digits
        nums = list(_NUM.finditer(data))
        if nums:
            m = rng.choice(nums)
            digits = rng.choice([400, 5000, 50_000])
            return (data[:m.start()] + b"9" * digits + data[m.end():], f"{digits}-digit number",
                    "unknown" if digits < 4300 else "invalid")
    if kind == 6:       # control character (escaped) in a string value (a key renamed would hide an edit)
        strs = [m for m in _STR.finditer(data) if not data[m.end():m.end() + 2].lstrip().startswith(b":")]
        if strs:
            m = rng.choice(strs)
            ctl = rng.choice([b"\\n", b"\\r", b"\\u0000", b"\\u001b[2J", b"\\t"])
            return data[:m.end() - 1] + ctl + data[m.end() - 1:], "control char in a string", "unknown"
    if kind == 7:       # invalid UTF-8
        p = rng.randrange(len(data) + 1)
        return data[:p] + b"\xff\xfe" + data[p:], "invalid UTF-8", "invalid"
    # top-level of another type
    return rng.choice([b"[]", b"5", b"null", b'"x"', b""]), "top level not an object", "invalid"


def m_cfg_raw(rng, case: Case):
    data, what, validity = raw_edit(rng, case.config_bytes())
    case.config_raw = data
    case.claim(f"config.json {what}", validity)


# ---------------------------------------------------------------- index.json

def _index(case: Case) -> dict | None:
    raw = case.files.get(INDEX)
    if raw is None or INDEX in case.raw:
        return None
    try:
        d = json.loads(raw)
    except ValueError:
        return None
    return d if isinstance(d, dict) and isinstance(d.get("weight_map"), dict) and d["weight_map"] else None


def m_index(rng, case: Case):
    idx = _index(case)
    if idx is None:
        return
    wm = idx["weight_map"]
    kind = rng.randrange(7)
    name = rng.choice(sorted(wm))
    shard0 = case.seed.shards[0]
    if kind == 0:
        wm[name] = rng.choice([f"../outside/{shard0}", f"{OUTSIDE}/{shard0}", "", ".", "..", "sub/x.safetensors",
                               "x\ny.safetensors", "nonexistent.safetensors", 5, None, ["a"], {}])
        what, validity = f"index shard for {name!r:.30} = {wm[name]!r}", "invalid"
    elif kind == 1:
        other = [s for s in case.seed.shards if s != wm[name]]
        wm[name] = other[0]
        what, validity = "index names the other shard", "invalid"
    elif kind == 2:
        wm[name + rng.choice(["\n", "\x00", "x", "\u2028", "\ud800"])] = wm.pop(name)
        what, validity = "index renames a tensor", "invalid"
    elif kind == 3:
        del wm[name]
        what, validity = "index drops a tensor", "unknown"
    elif kind == 4:
        idx["weight_map"] = rng.choice([5, [], "x", None, {}])
        what, validity = f"weight_map={idx['weight_map']!r}", "invalid"
    elif kind == 5:
        idx["metadata"] = _pool(rng)
        what, validity = "index metadata changed", "unknown"
    else:
        raw, what, validity = raw_edit(rng, json.dumps(idx).encode())
        case.files[INDEX] = raw
        case.raw.add(INDEX)
        case.claim(f"index {what}", validity)
        return
    try:
        case.files[INDEX] = json.dumps(idx).encode()
    except ValueError:
        return
    case.claim(what, validity)


# ---------------------------------------------------------------- safetensors files

def _split(data: bytes) -> tuple[dict, bytes] | None:
    if len(data) < 8:
        return None
    n = struct.unpack("<Q", data[:8])[0]
    try:
        h = json.loads(data[8:8 + n])
    except ValueError:
        return None
    return (h, data[8 + n:]) if isinstance(h, dict) else None


def _join(header_bytes: bytes, body: bytes) -> bytes:
    return struct.pack("<Q", len(header_bytes)) + header_bytes + body


def _shard(rng, case: Case, structured: bool = True) -> str | None:
    names = [s for s in case.seed.shards if s in case.files and not (structured and s in case.raw)]
    return rng.choice(names) if names else None


def m_entry(rng, case: Case):
    shard = _shard(rng, case)
    parts = _split(case.files[shard]) if shard else None
    if parts is None:
        return
    h, body = parts
    names = [k for k in h if k != "__metadata__"]
    if not names:
        return
    name = rng.choice(names)
    e = h[name]
    if not isinstance(e, dict):
        return
    kind = rng.randrange(6)
    validity = "invalid"
    if kind == 0:
        shape = list(e["shape"])
        new = rng.choice([
            shape[::-1], shape + [1], [1] + shape, [math.prod(shape)], [10 ** 18] * 240, [1] * 65, [0] * 65,
            [0, 2 ** 63], [0, 2 ** 64], [0, 10 ** 5000 // 10 ** 4990], [-1], [1.5], "x", None, [True], [],
            [2 ** 31] * 3, [0] + shape, [0, 2 ** 62, 2 ** 62],
        ])
        if json.dumps(new) == json.dumps(shape):
            validity = "valid"
        e["shape"] = new
        what = f"shape of {name!r:.40} = {str(new)[:40]}"
    elif kind == 1:
        new = rng.choice(["F16", "BF16", "I32", "U32", "F64", "I64", "F8_E4M3", "Q4", "", 5, None, "f32"])
        same_size = new in ("I32", "U32") and e["dtype"] == "F32"
        validity = "unknown" if same_size else "invalid"
        e["dtype"] = new
        what = f"dtype of {name!r:.40} = {new!r}"
    elif kind == 2:
        b, en = e["data_offsets"]
        new = rng.choice([[b + 4, en + 4], [b - 4, en - 4], [en, b], [b, en + 4], [b, 2 ** 64], [-1, en],
                          [b], [b, en, 0], [1.0 * b, en], [str(b), en], None, [0, 0], [b, 10 ** 30]])
        validity = "valid" if json.dumps(new) == json.dumps([b, en]) else "invalid"
        e["data_offsets"] = new
        what = f"offsets of {name!r:.40} = {new!r}"
    elif kind == 3:
        h[name] = rng.choice([5, None, [], "x", {}, {"dtype": "F32"}, {"shape": [1], "data_offsets": [0, 4]}])
        what = f"entry {name!r:.40} = {h[name]!r}"
    elif kind == 4:
        new_name = name + rng.choice(["\n", "\r\nX", "\x00", "\x1b[31m", "\u2028", "x", "\ud800", "/../x"])
        h[new_name] = h.pop(name)
        what = f"rename {name!r:.40}"
    else:
        del h[name]
        what = f"drop {name!r:.40}"
    try:
        case.files[shard] = _join(json.dumps(h).encode("utf-8", "surrogatepass"), body)
    except (ValueError, UnicodeEncodeError):
        return
    case.claim(f"{shard}: {what}", validity)


def m_metadata(rng, case: Case):
    shard = _shard(rng, case)
    parts = _split(case.files[shard]) if shard else None
    if parts is None:
        return
    h, body = parts
    value, validity = rng.choice([(None, "valid"), ({}, "valid"), ({"format": "pt"}, "valid"), (5, "invalid"),
                                  ({"a": 1}, "invalid"), ([], "invalid"), ({"a": None}, "invalid"),
                                  ("x", "invalid"), ({"k\nv": "x"}, "unknown")])
    h["__metadata__"] = value
    case.files[shard] = _join(json.dumps(h).encode(), body)
    case.claim(f"{shard}: __metadata__={value!r}", validity, key=f"{shard}.__metadata__")


def m_header_raw(rng, case: Case):
    shard = _shard(rng, case, structured=False)
    if not shard:
        return
    data = case.files[shard]
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    raw, what, validity = raw_edit(rng, data[8:8 + n])
    if what == "control char in a string":
        validity = "unknown"
    case.files[shard] = _join(raw, data[8 + n:])
    case.raw.add(shard)
    case.claim(f"{shard}: header {what}", validity)


def m_header_len(rng, case: Case):
    shard = _shard(rng, case, structured=False)
    if not shard:
        return
    data = case.files[shard]
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    new = rng.choice([0, 1, n - 1, n + 1, n - 8, n + 8, len(data), len(data) - 8, 2 ** 64 - 1, 2 ** 63, 2 ** 32,
                      100_000_001])
    new = max(0, min(new, 2 ** 64 - 1))
    validity = "valid" if new == n else ("invalid" if new > len(data) - 8 or new < 2 else "unknown")
    case.files[shard] = struct.pack("<Q", new) + data[8:]
    case.claim(f"{shard}: header length {n} -> {new}", validity)


def m_truncate(rng, case: Case):
    shard = _shard(rng, case, structured=False)
    if not shard:
        return
    data = case.files[shard]
    cut = rng.choice([0, 4, 7, 8, 9, rng.randrange(len(data)), len(data) - 1, len(data) - 4])
    case.files[shard] = data[:max(0, cut)]
    # cutting only bytes appended earlier leaves a whole file
    case.claim(f"{shard}: truncated to {cut}", "invalid" if cut < len(case.seed.files[shard]) else "unknown",
               key=f"{shard}.tail")


def m_append(rng, case: Case):
    shard = _shard(rng, case, structured=False)
    if shard:
        case.files[shard] += b"\0" * rng.choice([1, 7, 4096])
        # after a truncation the zeros may stand in for the lost data: a valid file of other values
        case.claim(f"{shard}: trailing bytes", "unknown" if f"{shard}.tail" in case.claims else "valid",
                   key=f"{shard}.tail")


# ---------------------------------------------------------------- symlinks

OUTSIDE = Path("/nonexistent")          # set in main: a directory beside the case directories


def m_symlink(rng, case: Case):
    names = ["config.json"] + [s for s in case.seed.shards] + ([INDEX] if INDEX in case.files else [])
    name = rng.choice(names)
    if name in case.links:
        return
    kind = rng.randrange(6)
    if kind in (0, 1):      # to an identical copy outside (absolute or relative path)
        target = OUTSIDE / f"{case.seed.name}-{name}"
        case.links[name] = str(target) if kind == 0 else f"../outside/{target.name}"
        case.claim(f"{name} -> outside copy", "invalid")
    elif kind == 2:         # to an identical copy inside the directory: fine
        case.links[name] = f"blob-{name}"      # write_case writes the blob with the final bytes
        case.claim(f"{name} -> inside copy", "valid")
    elif kind == 3:
        case.links[name] = name
        case.claim(f"{name} -> itself (loop)", "invalid")
    elif kind == 4:
        case.links[name] = "missing-target"
        case.claim(f"{name} -> dangling", "invalid")
    else:                   # a directory link to outside with an innocuous name
        case.links["tokenizer.json"] = str(OUTSIDE / f"{case.seed.name}-config.json")
        case.claim("tokenizer.json -> outside", "invalid")
    case.removed.add(name)


MUTATORS = [
    (m_cfg_set, 14), (m_cfg_replace_section, 5), (m_cfg_delete, 4), (m_cfg_absurd, 5), (m_cfg_raw, 8),
    (m_index, 8), (m_entry, 14), (m_metadata, 4), (m_header_raw, 8), (m_header_len, 4), (m_truncate, 4),
    (m_append, 1), (m_symlink, 6),
]


def make_case(seeds: list[Seed], seed: int, i: int) -> Case:
    rng = random.Random(seed * 1_000_003 + i)
    s = rng.choice(seeds)
    case = Case(seed=s, config=json.loads(json.dumps(s.config)), files=dict(s.files))
    fns, weights = zip(*MUTATORS)
    for fn in rng.choices(fns, weights, k=rng.choice([1, 1, 1, 2, 2, 3])):
        try:
            fn(rng, case)
        except (ValueError, RecursionError):  # the mutation itself could not be rendered
            pass
    return case


def write_case(case: Case, d: Path) -> None:
    if d.exists() or d.is_symlink():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    files = dict(case.files, **{"config.json": case.config_bytes()})
    for name, data in files.items():
        if name not in case.removed:
            (d / name).write_bytes(data)
        if case.links.get(name) == f"blob-{name}":
            (d / f"blob-{name}").write_bytes(data)
    for name, target in case.links.items():
        if (d / name).exists():
            (d / name).unlink()
        os.symlink(target, d / name)


# ---------------------------------------------------------------- running one case

class Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise Hang()


class OpenWatch:
    """Audit hook: files opened while ``active``, whose real path is outside ``allowed`` roots."""

    def __init__(self):
        self.active = False
        self.case_dir = ""
        self.seen: list[str] = []
        self.allowed = tuple(sorted({os.path.realpath(p) + os.sep for p in (
            sys.prefix, sys.base_prefix, sys.exec_prefix, ROOT / "edge_sdk", "/usr", "/etc", "/dev", "/proc",
            "/sys", "/lib", "/lib64")}))
        sys.addaudithook(self)

    def __call__(self, event, args):
        if not self.active or event != "open":
            return
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        self.active = False             # realpath itself must not recurse into the hook
        try:
            real = os.path.realpath(os.fsdecode(path))
            if not (real + os.sep).startswith(self.case_dir) and not real.startswith(self.allowed):
                self.seen.append(real)
        finally:
            self.active = True


def _place(tb) -> str:
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if f"{os.sep}edge_sdk{os.sep}" in f.filename]
    f = (ours or frames)[-1]
    rel = os.path.relpath(f.filename, ROOT) if f.filename.startswith(str(ROOT)) else f.filename
    return f"{rel}:{f.lineno} ({f.name})"


def target(d: Path) -> None:
    from edge_sdk.checkpoint import open_checkpoint
    from edge_sdk.inspect import inspect_checkpoint

    inspect_checkpoint(d)
    ckpt = open_checkpoint(d)
    for name in ckpt.tensors:
        ckpt.read(name)


def run_case(d: Path, watch: OpenWatch, limit: float) -> tuple[str, str, str]:
    """→ (outcome, place, message): outcome ok | refused | multiline | crash | hang."""
    watch.seen = []
    watch.case_dir = os.path.realpath(d) + os.sep
    signal.setitimer(signal.ITIMER_REAL, limit)
    watch.active = True
    try:
        target(d)
        return "ok", "", ""
    except Hang:
        watch.active = False
        return "hang", "", ""
    except EdgeSdkError as e:
        watch.active = False
        msg = str(e)
        return ("multiline" if "\n" in msg or "\r" in msg else "refused"), "", msg[:300]
    except BaseException as e:  # noqa: BLE001 - that is the point
        watch.active = False            # the traceback reads our own sources
        if isinstance(e, KeyboardInterrupt):
            raise
        return "crash", _place(e.__traceback__), f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        watch.active = False
        signal.setitimer(signal.ITIMER_REAL, 0)


# ---------------------------------------------------------------- main

def fuzz(cases: int, seed: int = 0, start: int = 0, limit: float = 2.0, keep: Path | None = None,
         quiet: bool = False, work: Path | None = None) -> dict:
    global OUTSIDE
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="fuzz_reader-")) if own else work
    try:
        seeds = build_seeds(Path(tempfile.mkdtemp(dir=work)))
        OUTSIDE = work / "outside"
        OUTSIDE.mkdir(exist_ok=True)
        for s in seeds:
            (OUTSIDE / f"{s.name}-config.json").write_text(json.dumps(s.config))
            for name, data in s.files.items():
                (OUTSIDE / f"{s.name}-{name}").write_bytes(data)
        watch = OpenWatch()
        signal.signal(signal.SIGALRM, _alarm)
        counts = {k: 0 for k in ("ok", "refused", "crash", "hang", "invalid_accepted", "outside_read",
                                 "multiline", "valid_refused")}
        places: dict[str, dict] = {}
        samples: dict[str, list] = {k: [] for k in ("hang", "invalid_accepted", "outside_read", "multiline",
                                                    "valid_refused")}
        t0 = time.monotonic()
        case_dir = work / "ckpt"
        for i in range(start, start + cases):
            case = make_case(seeds, seed, i)
            write_case(case, case_dir)
            outcome, place, msg = run_case(case_dir, watch, limit)
            counts["refused" if outcome == "multiline" else outcome] += 1
            record = {"case": i, "seed": case.seed.name, "mutations": case.notes, "validity": case.validity,
                      "message": msg}
            if outcome == "crash":
                p = places.setdefault(place, {"count": 0, "example": record})
                p["count"] += 1
            elif outcome in ("hang", "multiline"):
                samples[outcome].append(record)
            if outcome == "multiline":
                counts["multiline"] += 1
            if outcome == "ok" and case.validity == "invalid":
                counts["invalid_accepted"] += 1
                samples["invalid_accepted"].append(record)
            if outcome in ("refused", "multiline") and case.validity == "valid":
                counts["valid_refused"] += 1
                samples["valid_refused"].append(record)
            if watch.seen:
                counts["outside_read"] += 1
                samples["outside_read"].append(dict(record, opened=sorted(set(watch.seen))[:3]))
            if keep is not None:
                dest = keep / f"case-{i}"
                if dest.exists():
                    shutil.rmtree(dest)
                shutil.copytree(case_dir, dest, symlinks=True)
            if not quiet and (i - start + 1) % 1000 == 0:
                print(f"  {i - start + 1} cases, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        seconds = time.monotonic() - t0
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return {"seed": seed, "start": start, "cases": cases, "seconds": round(seconds, 1), "limit_s": limit,
            "counts": counts, "distinct_crash_places": len(places),
            "crash_places": dict(sorted(places.items(), key=lambda kv: -kv[1]["count"])),
            "samples": {k: v[:40] for k, v in samples.items()}}


def table(r: dict) -> str:
    c = r["counts"]
    lines = [f"fuzz_reader: seed {r['seed']}, cases {r['start']}..{r['start'] + r['cases'] - 1} "
             f"({r['cases']}) in {r['seconds']} s, limit {r['limit_s']} s/case",
             f"  {'outcome':<20}{'cases':>8}"]
    for k in ("ok", "refused", "crash", "hang", "invalid_accepted", "outside_read", "multiline", "valid_refused"):
        lines.append(f"  {k:<20}{c[k]:>8}")
    lines.append(f"  distinct crash places {r['distinct_crash_places']}")
    for place, p in list(r["crash_places"].items())[:60]:
        ex = p["example"]
        lines.append(f"    {p['count']:>5}  {place}  {ex['message'][:100]!r}  case {ex['case']}: {ex['mutations']}"[:300])
    for k in ("hang", "invalid_accepted", "outside_read", "multiline", "valid_refused"):
        for s in r["samples"][k][:8]:
            lines.append(f"  {k}: case {s['case']} ({s['seed']}) {s['mutations']} {s.get('opened', '')} "
                         f"{s['message'][:120]!r}"[:300])
    return "\n".join(lines)


def failed(r: dict) -> bool:
    c = r["counts"]
    return any(c[k] for k in ("crash", "hang", "invalid_accepted", "outside_read", "multiline"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--limit", type=float, default=2.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--memory", type=float, default=4.0, help="address-space cap, GiB (RLIMIT_AS)")
    ap.add_argument("--json", type=Path, help="write the full report here")
    ap.add_argument("--keep", type=Path, help="copy every case directory here (use with a small --cases)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.memory > 0:
        cap = int(a.memory * 2 ** 30)
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    if a.keep:
        a.keep.mkdir(parents=True, exist_ok=True)
    r = fuzz(a.cases, a.seed, a.start, a.limit, a.keep, a.quiet)
    print(table(r))
    if a.json:
        a.json.write_text(json.dumps(r, indent=1, default=str))
    return 1 if failed(r) else 0


if __name__ == "__main__":
    sys.exit(main())

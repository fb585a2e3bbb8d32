#!/usr/bin/env python
"""Write a synthetic QAT checkpoint with the exact names, shapes and hub-form config of a Gemma 4
config (e.g. ``models/configs/gemma-4-e2b.json``): what a real-size conversion and validation need
when no hub is reachable.

    python scripts/make_synthetic_checkpoint.py CONFIG OUT_DIR [--seed 0] [--shard-size 2GB]

- Names: text tensors from ``text_tensors(spec.text)`` under ``model.language_model.``; towers from
  ``edge_sdk.gemma4.towers`` (``vision_tensors`` / ``audio_tensors``) under their own prefixes.
- Values on the ``mobile`` recipe's QAT grid, stored bfloat16: ``code × scale`` with integer codes
  in the recipe's range for the role (int2 [-2, 1] MLP; int4 [-7, 7] attention and embed_tokens;
  int8 [-127, 127] PLE gates/projections) and a per-output-channel scale that is a power of two,
  so code × scale is exact in bf16 (|code| ≤ 127 needs 7 significant bits; bf16 has 8). Scales
  are drawn around 1/(code rms · sqrt(fan_in)) so activations keep unit scale. The PLE table
  (dictionary-coded in ``mobile``: 16 entries per 64 rows) holds 16 levels per 64-row group,
  ``(k - 7.5) × 2^-e``, so its k-means codebooks are exact too. Norms U(0.8, 1.2) (final norm
  and q/k norms likewise), ``layer_scalar`` 1. Towers: N(0, 0.02) (dropped by ``--text-only``).
- Sharded like the hub (``model-0000i-of-0000n.safetensors`` of about ``--shard-size`` + an index);
  each tensor is a ``LazyTensor`` produced in row blocks of ~32 MB, so memory stays bounded
  whatever the model size. Deterministic: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import sys
import time
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np

from edge_sdk.checkpoint import LazyTensor, write_safetensors
from edge_sdk.quant.config import AffineConfig, DictionaryConfig
from edge_sdk.quant.presets import load_recipe
from edge_sdk.quant.recipe import resolve, resolve_shared
from edge_sdk.gemma4 import spec_from_config, text_tensors
from edge_sdk.gemma4.names import tied_roles
from edge_sdk.gemma4.towers import audio_tensors, vision_tensors
from edge_sdk.units import parse_size

TEXT_PREFIX = "model.language_model."
BLOCK_BYTES = 32 * 2**20
BF16 = np.dtype(ml_dtypes.bfloat16)


def _rng(seed: int, name: str, block: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), block])


def _row_blocks(shape: tuple[int, ...]):
    rows = shape[0] if shape else 1
    row_elems = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, BLOCK_BYTES // (4 * row_elems))
    for b, r0 in enumerate(range(0, rows, step)):
        yield b, r0, min(rows, r0 + step), row_elems


def affine_grid(name: str, shape: tuple[int, ...], cfg: AffineConfig, seed: int):
    """Row blocks of bf16 ``code × 2^-e[row]``; codes uniform in [qmin, qmax]."""
    qmin, qmax = cfg.qmin, cfg.qmax
    codes = np.arange(qmin, qmax + 1, dtype=np.float64)
    rms = math.sqrt(float(np.mean(codes ** 2)))
    fan_in = shape[1]
    center = math.log2(1.0 / (rms * math.sqrt(fan_in)))

    def produce():
        for b, r0, r1, n in _row_blocks(shape):
            rng = _rng(seed, name, b)
            c = rng.integers(qmin, qmax + 1, size=(r1 - r0, n), dtype=np.int8)
            e = np.round(center + rng.uniform(-0.5, 0.5, size=(r1 - r0, 1)))
            yield (c.astype(np.float32) * np.exp2(e).astype(np.float32)).astype(BF16)
    return produce


def dictionary_grid(name: str, shape: tuple[int, ...], cfg: DictionaryConfig, seed: int):
    """16 (``codebook_size``) levels ``(k - (n-1)/2) × 2^-e[group]`` per group of rows."""
    n_levels, rpc = cfg.codebook_size, cfg.rows_per_codebook

    def produce():
        rows, row_elems = shape[0], math.prod(shape[1:])
        step = max(rpc, (BLOCK_BYTES // (4 * row_elems)) // rpc * rpc)
        for b, r0 in enumerate(range(0, rows, step)):
            r1 = min(rows, r0 + step)
            rng = _rng(seed, name, b)
            k = rng.integers(0, n_levels, size=(r1 - r0, row_elems), dtype=np.int8).astype(np.float32)
            groups = -(-(r1 - r0) // rpc)
            e = np.repeat(rng.integers(-6, -3, size=(groups, 1)), rpc, axis=0)[: r1 - r0]
            yield ((k - (n_levels - 1) / 2) * np.exp2(e).astype(np.float32)).astype(BF16)
    return produce


def float_values(name: str, shape: tuple[int, ...], seed: int, kind: str):
    def produce():
        for b, r0, r1, n in _row_blocks(shape):
            rng = _rng(seed, name, b)
            size = (r1 - r0, n) if shape else ()
            if kind == "scalar":
                v = np.ones(size, np.float32)
            elif kind == "norm":
                v = rng.uniform(0.8, 1.2, size=size).astype(np.float32)
            else:
                v = (0.02 * rng.standard_normal(size)).astype(np.float32)
            yield v.astype(BF16).reshape(-1)
    return produce


def synthetic_text_tensors(spec, seed: int):
    recipe = load_recipe("mobile")
    out = []
    for t in text_tensors(spec.text):
        roles = tied_roles(spec.text, t.role)
        cfg = resolve_shared(recipe, roles) if len(roles) > 1 else resolve(recipe, t.role)
        if isinstance(cfg, AffineConfig):
            produce = affine_grid(t.name, t.shape, cfg, seed)
        elif isinstance(cfg, DictionaryConfig):
            produce = dictionary_grid(t.name, t.shape, cfg, seed)
        else:
            produce = float_values(t.name, t.shape, seed, "scalar" if t.kind == "scalar" else "norm")
        out.append((TEXT_PREFIX + t.name, LazyTensor(BF16, t.shape, produce)))
    return out


def tower_tensors(config: dict, seed: int):
    text_hidden = int(config["text_config"]["hidden_size"])
    named = []
    if config.get("vision_config") is not None:
        named += vision_tensors(config["vision_config"], text_hidden)
    if config.get("audio_config") is not None:
        named += audio_tensors(config["audio_config"], text_hidden)
    out = []
    for name, shape in named:
        kind = "scalar" if not shape else "norm" if name.endswith("norm.weight") else "other"
        out.append((name, LazyTensor(BF16, tuple(shape), float_values(name, tuple(shape), seed, kind))))
    return out


def shard(tensors, shard_bytes: int) -> list[list]:
    shards, cur, size = [], [], 0
    for name, lt in tensors:
        nbytes = math.prod(lt.shape) * 2
        if cur and size + nbytes > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, lt))
        size += nbytes
    if cur:
        shards.append(cur)
    return shards


def make_checkpoint(config_path: str | Path, out_dir: str | Path, *, seed: int = 0,
                    shard_size: str | int = "2GB", log=print) -> dict:
    config = json.loads(Path(config_path).read_text())
    spec = spec_from_config(config, source=config_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = synthetic_text_tensors(spec, seed) + (tower_tensors(config, seed) if "text_config" in config else [])
    shards = shard(tensors, parse_size(shard_size))
    n = len(shards)
    weight_map, total = {}, 0
    t0 = time.perf_counter()
    for i, group in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        write_safetensors(out / fname, group, metadata={"format": "pt"})
        for name, lt in group:
            weight_map[name] = fname
            total += math.prod(lt.shape) * 2
        log(f"  {fname}: {len(group)} tensors, {(out / fname).stat().st_size / 1e9:.2f} GB "
            f"({time.perf_counter() - t0:.0f} s)")
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    shutil.copyfile(config_path, out / "config.json")
    return {"out_dir": str(out), "tensors": len(weight_map), "shards": n, "bytes": total,
            "params": total // 2, "text_params": sum(t.numel for t in text_tensors(spec.text)),
            "seconds": time.perf_counter() - t0,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", help="config.json (hub form), e.g. models/configs/gemma-4-e2b.json")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-size", default="2GB")
    args = ap.parse_args(argv)
    summary = make_checkpoint(args.config, args.out_dir, seed=args.seed, shard_size=args.shard_size,
                              log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared fixtures: small random Gemma 4 checkpoints, built once per session into a temp dir.

- ``multimodal_ckpt``: ``Gemma4ForConditionalGeneration`` (PLE, KV sharing, double-wide MLP, sliding
  window 8, towers) — see ``scripts/make_fixture.py``.
- ``kv_eq_ckpt``: dense ``Gemma4ForCausalLM`` with ``attention_k_eq_v`` (12B/31B-style).
- ``moe_ckpt``: ``Gemma4ForCausalLM`` with the mixture-of-experts block (26B-A4B-style).
- ``multimodal_hub_ckpt`` / ``kv_eq_hub_ckpt``: the same weights with a hub-form config.json.
- ``gemma4_fixture(variant, config_form=..., prefix=..., dtype=...)``: any other variant (e.g. another
  tensor prefix, bf16), built on first request and cached for the session.
- ``load_hf(path)``: the checkpoint in transformers, float32, eager attention, eval mode (cached).

Nothing here imports torch or transformers until a fixture that needs them is used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_make_fixture():
    spec = importlib.util.spec_from_file_location("make_fixture", ROOT / "scripts" / "make_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def gemma4_fixture(tmp_path_factory):
    """Factory: ``gemma4_fixture("multimodal", config_form="hub", prefix="model.", dtype="float32")``
    → path of a checkpoint directory (built once per distinct argument set)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    mf = _load_make_fixture()
    root = tmp_path_factory.mktemp("gemma4_fixtures")
    built: dict[tuple, Path] = {}

    def make(variant: str = "multimodal", *, config_form: str = "per_layer_config",
             prefix: str | None = None, dtype: str = "float32", seed: int = 0) -> Path:
        key = (variant, config_form, prefix, dtype, seed)
        if key not in built:
            name = "-".join([variant, config_form, "native" if prefix is None else (prefix or "bare"), dtype,
                             str(seed)]).replace(".", "_")
            built[key] = mf.make_fixture(root / name, variant, seed, config_form=config_form, prefix=prefix,
                                         dtype=dtype)
        return built[key]

    return make


@pytest.fixture(scope="session")
def multimodal_ckpt(gemma4_fixture) -> Path:
    return gemma4_fixture("multimodal")


@pytest.fixture(scope="session")
def kv_eq_ckpt(gemma4_fixture) -> Path:
    return gemma4_fixture("kv_eq")


@pytest.fixture(scope="session")
def moe_ckpt(gemma4_fixture) -> Path:
    return gemma4_fixture("moe")


@pytest.fixture(scope="session")
def multimodal_hub_ckpt(gemma4_fixture) -> Path:
    return gemma4_fixture("multimodal", config_form="hub")


@pytest.fixture(scope="session")
def kv_eq_hub_ckpt(gemma4_fixture) -> Path:
    return gemma4_fixture("kv_eq", config_form="hub")


def load_hf_model(path):
    """A fixture checkpoint in transformers: float32, eager attention, eval mode."""
    import json

    import torch
    from transformers import Gemma4ForCausalLM, Gemma4ForConditionalGeneration

    model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
    cls = Gemma4ForConditionalGeneration if model_type == "gemma4" else Gemma4ForCausalLM
    model = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


@pytest.fixture(scope="session")
def load_hf():
    """``load_hf(path)`` → the transformers model (cached per path for the session)."""
    pytest.importorskip("transformers")
    cache: dict[str, object] = {}

    def load(path):
        key = str(path)
        if key not in cache:
            cache[key] = load_hf_model(path)
        return cache[key]

    return load

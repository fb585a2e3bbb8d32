"""Every Gemma 4 size's layout, narrowed: what ``edge-sdk plan`` plans from the config alone is what
``convert`` writes, to the byte, tensor by tensor (issue 17).

Each size's hub config keeps its structure (layer types, KV sharing, PLE, k = v attention, the
global head dim, tied embeddings) with every width shrunk; 12B and 31B keep their last 12 layer
types. The checkpoint is ``scripts/make_synthetic_checkpoint.py``'s; the comparison is
``scripts/bench_convert_rss.py``'s ``plan_vs_written`` (what the full-size runs report)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from edge_sdk.pipeline import convert, plan_model

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def narrow_config(size: str, path: Path) -> dict:
    """The size's hub config with every width shrunk and the towers dropped."""
    cfg = json.loads((ROOT / "models" / "configs" / f"gemma-4-{size}.json").read_text())
    text = cfg["text_config"]
    if not text.get("num_kv_shared_layers"):
        text["layer_types"] = text["layer_types"][-12:]
        text["num_hidden_layers"] = 12
    text.update(vocab_size=512, vocab_size_per_layer_input=512, hidden_size=64, intermediate_size=128,
                num_attention_heads=4, num_key_value_heads=2, head_dim=32, global_head_dim=64, sliding_window=16)
    if text.get("num_global_key_value_heads"):
        text["num_global_key_value_heads"] = 1
    if text.get("hidden_size_per_layer_input"):
        text["hidden_size_per_layer_input"] = 32   # int4 blocks of 32 inputs
    cfg["vision_config"] = cfg["audio_config"] = None
    path.write_text(json.dumps(cfg))
    return cfg


@pytest.mark.parametrize("size,recipe", [("e2b", "mobile"), ("e4b", "mobile"), ("e4b", "int4"),
                                         ("12b", "int4"), ("31b", "int4"), ("31b", "mobile")])
def test_plan_is_what_convert_writes(size, recipe, tmp_path):
    narrow_config(size, tmp_path / "config.json")
    _script("make_synthetic_checkpoint").make_checkpoint(tmp_path / "config.json", tmp_path / "ck", log=lambda m: None)
    out = tmp_path / "out"
    convert(tmp_path / "ck", out, recipe=recipe, text_only=True, context=64, progress=False)
    check = _script("bench_convert_rss").plan_vs_written(out)
    assert check["n_mismatches"] == 0, check["mismatches"]
    assert check["planned_bytes"] == check["written_bytes"] > 0
    planned = {t.name: (t.data_bytes, t.overhead_bytes) for t in plan_model(tmp_path / "config.json", recipe=recipe,
                                                                            text_only=True).plan.tensors}
    written = {t["name"]: (t["data_bytes"], t["overhead_bytes"])
               for t in json.loads((out / "plan.json").read_text())["tensors"]}
    assert planned == written   # `edge-sdk plan CONFIG` (no weights) == the plan convert wrote


def test_convert_rss_child_measures_a_conversion(tmp_path):
    """The measuring child of ``scripts/bench_convert_rss.py`` on the tiny checkpoint: it converts,
    stamps each written tensor with time and RSS, records the converter's own peak RSS, and the plan
    matches what it wrote (the full-size runs read exactly these fields; a rename in the conversion
    record once broke the 12B run after 23 minutes)."""
    import subprocess
    import sys

    out, result = tmp_path / "out", tmp_path / "child.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_convert_rss.py"), "--child",
                        str(ROOT / "models" / "tiny-gemma4" / "float"), str(out), "int4", "512", str(result)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(result.read_text())
    assert res["conversion_peak_rss_bytes"] > 10_000_000
    assert res["events"] and res["sampler"]["peak"]["rss"] > 0
    check = _script("bench_convert_rss").plan_vs_written(out)
    assert check["n_mismatches"] == 0 and check["planned_bytes"] == check["written_bytes"] > 0

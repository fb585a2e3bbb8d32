"""model.json / conversion.json / plan.json are versioned types (edge_sdk.artefacts): what the
converter writes reads back to the same dict, key for key and in order; older or foreign files are
refused in one line that names the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_sdk.artefacts import ConversionRecord, ModelInfo, PlanRecord
from edge_sdk.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
TYPES = (ModelInfo, ConversionRecord, PlanRecord)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from edge_sdk.pipeline import convert

    out = tmp_path_factory.mktemp("artefacts") / "m"
    convert(ROOT / "models" / "tiny-gemma4" / "qat", out, recipe="mobile", text_only=True, progress=False)
    return out


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.FILE)
def test_what_the_converter_writes_round_trips(converted, cls):
    text = (converted / cls.FILE).read_text()
    obj = cls.read(converted)
    assert list(obj.to_json()) == list(json.loads(text))                 # same keys, same order
    assert json.dumps(obj.to_json(), indent=2) + "\n" == text            # the very bytes
    assert cls.from_json(obj.to_json()) == obj


def test_typed_fields(converted):
    m, c, p = (cls.read(converted) for cls in TYPES)
    assert (m.context, m.prefill, m.recipe, m.text_only) == (512, 32, "mobile", True)
    assert isinstance(m.eos_token_id, tuple) and m.first_eos == m.eos_token_id[0]
    assert c.source_path == (ROOT / "models" / "tiny-gemma4" / "qat").resolve() and c.recipe_name == "mobile"
    assert set(c.outputs) == {v["file"] for v in m.files.values()}
    assert p.data_bytes == sum(t["data_bytes"] for t in p.tensors)


def _one_line(e: InputError) -> str:
    text = str(e)
    assert "\n" not in text, text
    return text


def test_older_model_json_missing_a_key_names_the_fix(converted, tmp_path):
    doc = json.loads((converted / "model.json").read_text())
    del doc["context"]
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(InputError) as e:
        ModelInfo.read(tmp_path)
    assert "lacks 'context'" in _one_line(e.value) and "edge-sdk convert" in _one_line(e.value)


def test_older_model_json_without_later_keys_still_reads(converted, tmp_path):
    """Keys added after version 1 first shipped (requires_xnnpack, tokenizer, logits, mask) default."""
    doc = json.loads((converted / "model.json").read_text())
    for k in ("requires_xnnpack", "tokenizer", "logits", "mask"):
        doc.pop(k)
    (tmp_path / "model.json").write_text(json.dumps(doc))
    m = ModelInfo.read(tmp_path)
    assert m.requires_xnnpack is None and m.context == 512


@pytest.mark.parametrize("change, says", [
    ({"format": "something.else"}, "not an edge-sdk model.json"),
    ({"version": 99}, "newer than this edge-sdk reads"),
])
def test_foreign_or_newer_files_are_refused(converted, tmp_path, change, says):
    doc = {**json.loads((converted / "model.json").read_text()), **change}
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(InputError) as e:
        ModelInfo.read(tmp_path)
    assert says in _one_line(e.value)


def test_missing_file_is_not_a_model_directory(tmp_path):
    with pytest.raises(InputError, match="not a converted model directory"):
        ModelInfo.read(tmp_path)
    assert ConversionRecord.read_optional(tmp_path) is None


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.FILE)
def test_every_file_of_a_newer_version_is_refused_in_one_line(converted, tmp_path, cls):
    doc = {**json.loads((converted / cls.FILE).read_text()), "version": cls.VERSION + 1}
    (tmp_path / cls.FILE).write_text(json.dumps(doc))
    with pytest.raises(InputError) as e:
        cls.read(tmp_path)
    line = _one_line(e.value)
    assert f"version {cls.VERSION + 1} is newer" in line and cls.FILE in line and "upgrade edge-sdk" in line


def test_tensor_rows_round_trip_through_tensor_plan(converted):
    """Every plan.json row reads back as the TensorPlan it was written from (same to_json keys)."""
    from edge_sdk.quant.plan import TensorPlan

    for row in PlanRecord.read(converted).tensors:
        tp = TensorPlan.from_json(row)
        assert tp.to_json() == {k: row[k] for k in tp.to_json()}


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_planned_memory_comes_from_the_model_not_its_source(tmp_path):
    """Convert from a copy of the tiny checkpoint, delete the copy: the planned figures still come
    out, identical to the planner's on the source (plan_model), from plan.json + model.json +
    conversion.json alone."""
    import shutil

    from edge_sdk.pipeline import convert, plan_model, planned_memory

    src = _copy_model(ROOT / "models" / "tiny-gemma4" / "float", tmp_path / "src")
    out = tmp_path / "m"
    convert(src, out, recipe="int4", text_only=True, progress=False)
    want = plan_model(src, recipe="int4", context=512, prefill=32).memory
    shutil.rmtree(src)
    got = planned_memory(out, 512, None)
    keys = ("resident_bytes", "mapped_bytes", "mapped_touched_bytes", "kv_cache_bytes", "activation_bytes",
            "kv_read_bytes", "quant_metadata_bytes", "model_head_bytes", "runtime_bytes", "peak_bytes")
    assert {k: got[k] for k in keys} == {k: getattr(want, k) for k in keys}
    assert got["quant_metadata_bytes"] > 0 and got["recipe"] == "int4"


def test_plan_json_of_version_1_reads_but_names_the_fix_where_a_plan_is_needed(converted, tmp_path):
    """An older plan.json (version 1: no source_config) still reads (its rows and bytes); asking for
    its memory figures is one line naming plan.json, what it lacks and the fix; validate and bundle
    show the plan as absent with that reason."""
    from edge_sdk.pipeline import planned_memory, planned_or_absent

    mdir = _copy_model(converted, tmp_path / "old")
    doc = json.loads((mdir / "plan.json").read_text())
    doc["version"] = 1
    del doc["source_config"]
    (mdir / "plan.json").write_text(json.dumps(doc))
    rec = PlanRecord.read(mdir)
    assert rec.source_config is None and rec.data_bytes == PlanRecord.read(converted).data_bytes
    with pytest.raises(InputError) as e:
        planned_memory(mdir, 512, None)
    line = _one_line(e.value)
    assert "plan.json" in line and "lacks 'source_config'" in line and "edge-sdk convert" in line
    assert planned_or_absent(mdir, 512, None) == {"absent": line}


def test_a_plan_row_missing_a_key_names_the_tensor_and_the_fix(converted, tmp_path):
    from edge_sdk.pipeline import planned_memory

    mdir = _copy_model(converted, tmp_path / "bad")
    doc = json.loads((mdir / "plan.json").read_text())
    name = doc["tensors"][3]["name"]
    del doc["tensors"][3]["data_bytes"]
    (mdir / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(InputError) as e:
        planned_memory(mdir, 512, None)
    line = _one_line(e.value)
    assert "lacks 'data_bytes'" in line and name in line and "plan.json" in line


def test_device_side_readers_read_only_model_info_fields():
    """litert/runtime.py and validate/runner.py run on a device without edge_sdk and read model.json
    with the stdlib (docs/design.md): every top-level key they read is a ModelInfo field, so the
    type stays the one description of the file."""
    import dataclasses
    import re

    fields = {f.name for f in dataclasses.fields(ModelInfo)}
    seen = set()
    for rel in ("edge_sdk/litert/runtime.py", "edge_sdk/validate/runner.py"):
        src = (ROOT / rel).read_text()
        seen |= set(re.findall(r'\b(?:m|meta)(?:\[|\.get\()"(\w+)"', src))
    assert {"context", "prefill", "vocab_size", "files", "kv_cache"} <= seen
    assert seen <= fields, sorted(seen - fields)

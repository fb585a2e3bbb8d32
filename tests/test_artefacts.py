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

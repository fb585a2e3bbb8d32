"""Fuzzed checkpoints (issue 12): what the fuzzer found, each as a test on real files in tmp_path,
and a 500-case slice of ``scripts/fuzz_reader.py`` that must report 0 crashes / hangs / invalid files
accepted / reads outside the checkpoint / multi-line messages.

Checkpoints are the fuzzer's own seeds (torch-free, written with ``write_safetensors``): ``mm`` is a
``gemma4`` multimodal checkpoint (hub form, two shards + index, vision and audio towers), ``text`` a
``gemma4_text`` one (``per_layer_config`` form, ``attention_k_eq_v``, a compressed-tensors
``quantization_config``, one ``model.safetensors``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from edge_sdk.checkpoint import open_checkpoint, read_safetensors_header
from edge_sdk.cli import main
from edge_sdk.errors import CheckpointError, ConfigError
from edge_sdk.gemma4 import spec_from_config

ROOT = Path(__file__).resolve().parents[1]
INDEX = "model.safetensors.index.json"


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_reader", ROOT / "scripts" / "fuzz_reader.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_reader", mod)       # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return {s.name: s for s in _fuzz_module().build_seeds(tmp_path_factory.mktemp("seeds"))}


def write(d: Path, seed, config: object = None, *, config_text: str | bytes | None = None,
          files: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, data in {**seed.files, **(files or {})}.items():
        (d / name).write_bytes(data)
    if config_text is None:
        config_text = json.dumps(seed.config if config is None else config)
    (d / "config.json").write_bytes(config_text.encode() if isinstance(config_text, str) else config_text)
    return d


def inspect_fails(capsys, d: Path, *needles: str) -> str:
    """``edge-sdk inspect d`` exits 2 with one line (no traceback) holding every needle."""
    code = main(["inspect", str(d)])
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def header_of(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def with_header(header: dict | bytes, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def test_seeds_are_valid(seeds, tmp_path, capsys):
    for name, seed in seeds.items():
        d = write(tmp_path / name, seed)
        assert main(["inspect", str(d)]) == 0, capsys.readouterr().err
        ckpt = open_checkpoint(d)
        assert all(ckpt.read(n).size >= 0 for n in ckpt.tensors)
    capsys.readouterr()


# ---------------------------------------------------------------- config.json: the schema

def _text(cfg: dict) -> dict:
    return cfg["text_config"] if "text_config" in cfg else cfg


def _set(path: str, value):
    def edit(cfg):
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
    return edit


def _k_eq_v_zero(cfg):
    _text(cfg).update(attention_k_eq_v=True, num_global_key_value_heads=0)


def _layers_no_types(cfg):
    _text(cfg)["num_hidden_layers"] = 2 ** 63
    _text(cfg).pop("layer_types")


# (seed, edit, key named in the message) — each of these crashed, hung, or was accepted before
SCHEMA_CASES = {
    "text_config 5": ("mm", _set("text_config", 5), "text_config"),
    "layer_types 5": ("mm", _set("text_config.layer_types", 5), "text_config.layer_types"),
    "rope_parameters 5": ("mm", _set("text_config.rope_parameters", 5), "text_config.rope_parameters"),
    "rope_parameters list": ("text", _set("rope_parameters", ["full_attention"]), "rope_parameters"),
    "head_dim null": ("mm", _set("text_config.head_dim", None), "text_config.head_dim"),
    "per_layer head_dim str": ("text", _set("per_layer_config.2.head_dim", "gemma4"), "per_layer_config.2.head_dim"),
    "per_layer kv null→int(None)": ("text", _set("per_layer_config.2", {"num_key_value_heads": "x"}),
                                    "per_layer_config.2.num_key_value_heads"),
    "global_head_dim 2**40": ("mm", _set("text_config.global_head_dim", 2 ** 40), "text_config.global_head_dim"),
    "k_eq_v, 0 global kv heads": ("text", _k_eq_v_zero, "num_global_key_value_heads"),
    "audio_config 5": ("mm", _set("audio_config", 5), "audio_config"),
    "vision_config float": ("mm", _set("vision_config", 1.5), "vision_config"),
    "audio channels 7": ("mm", _set("audio_config.subsampling_conv_channels", 7),
                         "audio_config.subsampling_conv_channels"),
    "quantization_config 5": ("text", _set("quantization_config", 5), "quantization_config"),
    "config_groups str": ("text", _set("quantization_config.config_groups", "x"), "quantization_config.config_groups"),
    "weights 1": ("text", _set("quantization_config.config_groups.group_0.weights", 1),
                  "quantization_config.config_groups.group_0.weights"),
    "targets 5": ("text", _set("quantization_config.config_groups.group_0.targets", 5),
                  "quantization_config.config_groups.group_0.targets"),
    "ignore int": ("text", _set("quantization_config.ignore", 2 ** 63), "quantization_config.ignore"),
    "num_hidden_layers 2**63, no layer_types": ("text", _layers_no_types, "num_hidden_layers"),
    "vision 10**9 layers": ("mm", _set("vision_config.num_hidden_layers", 10 ** 9), "vision_config.num_hidden_layers"),
    "audio 10**9 layers": ("mm", _set("audio_config.num_hidden_layers", 10 ** 9), "audio_config.num_hidden_layers"),
    "rope_theta 0": ("mm", _set("text_config.rope_parameters.full_attention.rope_theta", 0),
                     "text_config.rope_parameters.full_attention.rope_theta"),
    "rope_theta null": ("mm", _set("text_config.rope_parameters.sliding_attention.rope_theta", None),
                        "text_config.rope_parameters.sliding_attention.rope_theta"),
    "partial_rotary_factor object": ("mm", _set("text_config.rope_parameters.full_attention.partial_rotary_factor",
                                                {"a": 1}), "partial_rotary_factor"),
    "rms_norm_eps -1": ("text", _set("rms_norm_eps", -1.0), "rms_norm_eps"),
    "rms_norm_eps empty string": ("text", _set("rms_norm_eps", ""), "rms_norm_eps"),
    "num_experts list": ("text", _set("num_experts", [1, 2, 3]), "num_experts"),
    "hidden_size_per_layer_input 1e308": ("mm", _set("text_config.hidden_size_per_layer_input", 1e308),
                                          "text_config.hidden_size_per_layer_input"),
    "model_type list": ("text", _set("model_type", ["gemma4"]), "model_type"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_config_value_of_wrong_type_or_range_is_one_line_naming_the_key(seeds, tmp_path, capsys, case):
    seed_name, edit, key = SCHEMA_CASES[case]
    seed = seeds[seed_name]
    cfg = json.loads(json.dumps(seed.config))
    edit(cfg)
    d = write(tmp_path / "ckpt", seed, cfg)
    inspect_fails(capsys, d, str(d / "config.json"), key)
    with pytest.raises(ConfigError):           # the library raises the same, without weights too
        spec_from_config(cfg, source="config.json")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("key", ["global_head_dim", "rms_norm_eps", "rope_theta"])
def test_non_finite_numbers_in_config_are_refused(seeds, tmp_path, capsys, literal, key):
    """global_head_dim NaN, rope_theta NaN, rms_norm_eps -Infinity converted with exit 0 before."""
    seed = seeds["mm"]
    cfg = json.loads(json.dumps(seed.config))
    target = cfg["text_config"]["rope_parameters"]["full_attention"] if key == "rope_theta" else cfg["text_config"]
    target[key] = "@@"
    d = write(tmp_path / "ckpt", seed, config_text=json.dumps(cfg).replace('"@@"', literal))
    inspect_fails(capsys, d, str(d / "config.json"))


def test_spec_from_python_dict_with_nan_and_huge_int_names_the_key():
    cfg = {"model_type": "gemma4_text", "rms_norm_eps": float("-inf")}
    with pytest.raises(ConfigError, match="'rms_norm_eps' must be a finite number"):
        spec_from_config(cfg)
    with pytest.raises(ConfigError, match="'vocab_size' .* an integer of about 5001 digits"):
        spec_from_config({"model_type": "gemma4_text", "vocab_size": 10 ** 5000})


def test_rope_theta_zero_refused_by_convert_too(seeds, tmp_path, capsys):
    """rope_theta 0 passed inspect and crashed convert (ZeroDivisionError)."""
    seed = seeds["text"]
    cfg = json.loads(json.dumps(seed.config))
    cfg["rope_parameters"] = {"sliding_attention": {"rope_theta": 0}, "full_attention": {"rope_theta": 1e6}}
    d = write(tmp_path / "ckpt", seed, cfg)
    code = main(["convert", str(d), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "rope_parameters.sliding_attention.rope_theta" in err, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- strict JSON: config, index, header

RAW = {
    "duplicate key": lambda t: t.replace("{", '{"model_type": "gemma4", ', 1),
    "lone surrogate": lambda t: t.replace('"gemma4', '"gemma4\\ud800', 1),
    "nested 5000 deep": lambda t: t[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}",
    "nested 100 deep": lambda t: t[:-1] + ', "x": ' + "[" * 100 + "]" * 100 + "}",
    "5000-digit number": lambda t: t[:-1] + ', "x": ' + "9" * 5000 + "}",
    "byte-order mark": lambda t: "\ufeff" + t,
}


@pytest.mark.parametrize("what", list(RAW))
def test_config_json_is_parsed_strictly(seeds, tmp_path, capsys, what):
    seed = seeds["mm"]
    d = write(tmp_path / "ckpt", seed, config_text=RAW[what](json.dumps(seed.config)))
    inspect_fails(capsys, d, str(d / "config.json"), "not valid JSON")


INDEX_RAW = {
    "duplicate key": lambda t: t.replace("{", '{"weight_map": {}, ', 1),
    "lone surrogate": lambda t: t.replace('"model-00001', '"\\ud800model-00001', 1),
    "nested 5000 deep": RAW["nested 5000 deep"],
    "NaN": lambda t: t.replace('"total_size": 0', '"total_size": NaN'),
    "truncated": lambda t: t[: len(t) // 2],
}


@pytest.mark.parametrize("what", list(INDEX_RAW))
def test_index_json_is_parsed_strictly(seeds, tmp_path, capsys, what):
    seed = seeds["mm"]
    text = seed.files[INDEX].decode().strip()
    new = INDEX_RAW[what](text)
    assert new != text
    d = write(tmp_path / "ckpt", seed, files={INDEX: new.encode()})
    inspect_fails(capsys, d, str(d / INDEX), "not valid JSON")


@pytest.mark.parametrize("what", ["duplicate key", "lone surrogate", "nested 5000 deep", "NaN", "1e999",
                                  "5000-digit number"])
def test_safetensors_header_is_parsed_strictly(seeds, tmp_path, what):
    data = seeds["text"].files["model.safetensors"]
    n = struct.unpack("<Q", data[:8])[0]
    text, body = data[8:8 + n].decode().rstrip(), data[8 + n:]
    edits = {
        "duplicate key": lambda t: t.replace("{", '{"model.norm.weight": 0, ', 1),
        "lone surrogate": lambda t: t.replace('"model.norm.weight"', '"model.norm.weight\\udc00"'),
        "nested 5000 deep": lambda t: t[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}",
        "NaN": lambda t: t.replace('"data_offsets":[0,', '"data_offsets":[NaN,', 1),
        "1e999": lambda t: t.replace('"data_offsets":[0,', '"data_offsets":[1e999,', 1),
        "5000-digit number": lambda t: t.replace('"data_offsets":[0,', '"data_offsets":[' + "9" * 5000 + ",", 1),
    }
    new = edits[what](text)
    assert new != text
    f = tmp_path / "model.safetensors"
    f.write_bytes(with_header(new.encode(), body))
    with pytest.raises(CheckpointError) as e:
        read_safetensors_header(f)
    assert "\n" not in str(e.value) and str(f) in str(e.value)


def test_metadata_null_is_accepted_like_the_safetensors_library(seeds, tmp_path, capsys):
    seed = seeds["text"]
    header, body = header_of(seed.files["model.safetensors"])
    header["__metadata__"] = None
    d = write(tmp_path / "ckpt", seed, files={"model.safetensors": with_header(header, body)})
    with safe_open(str(d / "model.safetensors"), "np") as f:       # the reference reader takes it
        assert f.metadata() is None and len(list(f.keys())) == len(header) - 1
    assert main(["inspect", str(d)]) == 0, capsys.readouterr().err
    header["__metadata__"] = {"a": 1}
    (d / "model.safetensors").write_bytes(with_header(header, body))
    inspect_fails(capsys, d, "__metadata__")


# ---------------------------------------------------------------- shapes

@pytest.mark.parametrize("shape,needle", [
    ([10 ** 18] * 240, "dimensions, more than 64"),
    ([10 ** 18] * 3, "too large to address"),
    ([1] * 65, "more than 64"),
    ([0] * 65, "more than 64"),
    ([0, 2 ** 63], r"not below 2\*\*62"),
    ([0, 2 ** 62, 2 ** 62], r"not below 2\*\*62"),
    ([0, 2 ** 40, 2 ** 40], "too large to address"),
])
def test_absurd_shapes_are_one_line_refusals(tmp_path, shape, needle):
    """[10**18]*240 crashed while building the message (int-to-str limit); zero-size shapes with a
    dimension >= 2**63, or more than 64 dimensions, passed and crashed NumPy on read."""
    f = tmp_path / "x.safetensors"
    f.write_bytes(with_header({"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}, b""))
    with pytest.raises(CheckpointError, match=needle) as e:
        read_safetensors_header(f)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_zero_size_tensor_with_ordinary_dims_still_reads(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_bytes(with_header({"t": {"dtype": "F32", "shape": [0, 4096], "data_offsets": [0, 0]}}, b""))
    info = read_safetensors_header(f)["t"]
    assert info.shape == (0, 4096)


# ---------------------------------------------------------------- names: one line

@pytest.mark.parametrize("suffix", ["\n", "\r\nX", "\x00", "\x1b[31m", "\u2028"])
def test_tensor_name_with_control_character_is_one_line(seeds, tmp_path, capsys, suffix):
    seed = seeds["text"]
    header, body = header_of(seed.files["model.safetensors"])
    header["model.norm.weight" + suffix] = header.pop("model.norm.weight")
    d = write(tmp_path / "ckpt", seed, files={"model.safetensors": with_header(header, body)})
    inspect_fails(capsys, d, "control character")


@pytest.mark.parametrize("where", ["key", "shard"])
def test_index_names_with_newlines_are_one_line(seeds, tmp_path, capsys, where):
    seed = seeds["mm"]
    idx = json.loads(seed.files[INDEX])
    name = sorted(idx["weight_map"])[0]
    if where == "key":
        idx["weight_map"][name + "\n"] = idx["weight_map"].pop(name)
    else:
        idx["weight_map"][name] = "x\ny.safetensors"
    d = write(tmp_path / "ckpt", seed, files={INDEX: json.dumps(idx).encode()})
    inspect_fails(capsys, d, str(d / INDEX))


# ---------------------------------------------------------------- vision / audio shapes

@pytest.mark.parametrize("tower,key,value", [
    ("vision_config", "head_dim", 2 ** 16), ("vision_config", "head_dim", 8), ("vision_config", "num_hidden_layers", 2),
    ("audio_config", "hidden_size", 16), ("audio_config", "num_hidden_layers", 0),
    ("vision_config", "standardize", True),
])
def test_tower_tensors_must_match_the_config(seeds, tmp_path, capsys, tower, key, value):
    seed = seeds["mm"]
    cfg = json.loads(json.dumps(seed.config))
    cfg[tower][key] = value
    d = write(tmp_path / "ckpt", seed, cfg)
    inspect_fails(capsys, d, tower, "model." + tower.split("_")[0])


# ---------------------------------------------------------------- symlinks

@pytest.mark.parametrize("name", ["config.json", "model-00001-of-00002.safetensors", INDEX, "tokenizer.json"])
@pytest.mark.parametrize("relative", [False, True])
def test_symlink_leaving_the_checkpoint_is_refused(seeds, tmp_path, capsys, name, relative):
    seed = seeds["mm"]
    d = write(tmp_path / "ckpt", seed)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / name).write_bytes((d / name).read_bytes() if (d / name).exists() else b"{}")
    if (d / name).exists():
        (d / name).unlink()
    os.symlink(f"../outside/{name}" if relative else str(outside / name), d / name)
    inspect_fails(capsys, d, "symbolic link", "outside the checkpoint directory")


def test_symlinks_inside_the_checkpoint_and_the_hub_cache_layout_are_fine(seeds, tmp_path, capsys):
    seed = seeds["text"]
    d = write(tmp_path / "ckpt", seed)
    (d / "blob").write_bytes((d / "model.safetensors").read_bytes())
    (d / "model.safetensors").unlink()
    os.symlink("blob", d / "model.safetensors")
    assert main(["inspect", str(d)]) == 0, capsys.readouterr().err
    # huggingface_hub cache: models--x/snapshots/<rev>/<file> -> ../../blobs/<sha>
    repo = tmp_path / "models--google--x"
    snap = write(repo / "snapshots" / "abc", seed)
    (repo / "blobs").mkdir()
    for f in list(snap.iterdir()):
        (repo / "blobs" / f"sha-{f.name}").write_bytes(f.read_bytes())
        f.unlink()
        os.symlink(f"../../blobs/sha-{f.name}", f)
    assert main(["inspect", str(snap)]) == 0, capsys.readouterr().err
    capsys.readouterr()


# ---------------------------------------------------------------- the fuzzer itself

def test_fuzz_reader_500_cases_report_nothing(tmp_path):
    """The CI slice: 500 seeded cases, 0 crashes / hangs / invalid accepted / outside reads."""
    out = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_reader.py"), "--cases", "500", "--seed", "1",
                        "--json", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    c = report["counts"]
    assert (c["crash"], c["hang"], c["invalid_accepted"], c["outside_read"], c["multiline"]) == (0, 0, 0, 0, 0), \
        r.stdout[-4000:]
    assert r.returncode == 0 and report["cases"] == 500
    assert c["refused"] > 250 and c["ok"] > 20          # the mutations do reach both outcomes

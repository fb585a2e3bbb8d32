"""edge_sdk.checkpoint: strict header validation, lazy reads, pickle refusal, the streaming writer."""

from __future__ import annotations

import builtins
import io
import json
import pathlib
import pickle
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from edge_sdk.checkpoint import (
    Checkpoint, LazyTensor, TensorInfo, open_checkpoint, read_safetensors_header, write_safetensors,
)
from edge_sdk.errors import CheckpointError, ConfigError

CONFIG = {"model_type": "gemma4_text", "hidden_size": 8}


# ---------------------------------------------------------------- helpers

def raw_safetensors(path: pathlib.Path, header: object, data: bytes = b"", *,
                    header_bytes: bytes | None = None, length: int | None = None) -> pathlib.Path:
    """Write a safetensors file by hand (possibly malformed)."""
    hb = header_bytes if header_bytes is not None else json.dumps(header).encode()
    n = len(hb) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + hb + data)
    return path


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def model_dir(tmp_path: pathlib.Path, tensors: dict[str, np.ndarray],
              config: object = CONFIG) -> pathlib.Path:
    d = tmp_path / "model"
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    write_safetensors(d / "model.safetensors", tensors.items())
    return d


def sharded_dir(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    shards = {
        "model-00001-of-00002.safetensors": {
            "model.embed_tokens.weight": rng.standard_normal((16, 8)).astype(ml_dtypes.bfloat16),
            "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((8, 8)).astype(np.float16)},
        "model-00002-of-00002.safetensors": {
            "model.layers.0.mlp.down_proj.weight": rng.standard_normal((8, 4)).astype(np.float32),
            "model.norm.weight": np.ones(8, np.float32)},
    }
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CONFIG))
    weight_map = {}
    for shard, tensors in shards.items():
        write_safetensors(d / shard, tensors.items())
        weight_map.update({name: shard for name in tensors})
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return d, {k: v for t in shards.values() for k, v in t.items()}


def expect(exc_type, fn, path, tensor=None) -> str:
    with pytest.raises(exc_type) as ei:
        fn()
    msg = str(ei.value)
    assert str(path) in msg, msg
    if tensor is not None:
        assert f"'{tensor}'" in msg, msg
    assert "fix:" in msg, msg
    return msg


# ---------------------------------------------------------------- one file: malformed headers

def test_file_shorter_than_8_bytes(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"\x01\x02\x03")
    assert "truncated" in expect(CheckpointError, lambda: read_safetensors_header(f), f)


def test_header_length_larger_than_file(tmp_path):
    f = raw_safetensors(tmp_path / "x.safetensors", {}, length=10_000)
    assert "larger than the file" in expect(CheckpointError, lambda: read_safetensors_header(f), f)


def test_header_not_json(tmp_path):
    f = raw_safetensors(tmp_path / "x.safetensors", None, header_bytes=b"{not json" + b" " * 7)
    assert "not valid JSON" in expect(CheckpointError, lambda: read_safetensors_header(f), f)


def test_header_not_an_object(tmp_path):
    f = raw_safetensors(tmp_path / "x.safetensors", [1, 2, 3])
    assert "not an object" in expect(CheckpointError, lambda: read_safetensors_header(f), f)


def test_header_duplicate_key(tmp_path):
    one = b'{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
    hb = b'{"a":' + one + b',"a":' + one + b'}'
    f = raw_safetensors(tmp_path / "x.safetensors", None, b"\0", header_bytes=hb)
    assert "duplicate key" in expect(CheckpointError, lambda: read_safetensors_header(f), f)


def test_offsets_outside_data_section(tmp_path):
    f = raw_safetensors(tmp_path / "x.safetensors", {"w": entry("F32", [1], 64, 68)}, b"\0" * 8)
    assert "outside the data section" in expect(CheckpointError, lambda: read_safetensors_header(f), f, "w")
    g = raw_safetensors(tmp_path / "y.safetensors", {"w": entry("F32", [1], -4, 0)}, b"\0" * 8)
    expect(CheckpointError, lambda: read_safetensors_header(g), g, "w")


def test_overlapping_tensors(tmp_path):
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}
    f = raw_safetensors(tmp_path / "x.safetensors", header, b"\0" * 12)
    msg = expect(CheckpointError, lambda: read_safetensors_header(f), f, "b")
    assert "overlaps tensor 'a'" in msg


def test_truncated_data(tmp_path):
    f = write_safetensors(tmp_path / "x.safetensors", [("a", np.zeros(4, np.float32)),
                                                         ("b", np.zeros(4, np.float32))])
    f.write_bytes(f.read_bytes()[:-4])
    assert "truncated data" in expect(CheckpointError, lambda: read_safetensors_header(f), f, "b")


def test_shape_times_dtype_differs_from_byte_length(tmp_path):
    f = raw_safetensors(tmp_path / "x.safetensors", {"w": entry("BF16", [3, 2], 0, 8)}, b"\0" * 8)
    msg = expect(CheckpointError, lambda: read_safetensors_header(f), f, "w")
    assert "12 bytes" in msg and "span 8" in msg


def test_unknown_dtype(tmp_path):
    f = raw_safetensors(tmp_path / "x.safetensors", {"w": entry("F12", [1], 0, 2)}, b"\0" * 2)
    assert "unknown dtype 'F12'" in expect(CheckpointError, lambda: read_safetensors_header(f), f, "w")


def test_malformed_entry_fields(tmp_path):
    f = raw_safetensors(tmp_path / "x.safetensors", {"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4)
    assert "lacks data_offsets" in expect(CheckpointError, lambda: read_safetensors_header(f), f, "w")
    g = raw_safetensors(tmp_path / "y.safetensors", {"w": entry("F32", [-1], 0, 4)}, b"\0" * 4)
    assert "non-negative" in expect(CheckpointError, lambda: read_safetensors_header(g), g, "w")


def test_metadata_allowed_and_checked(tmp_path):
    f = write_safetensors(tmp_path / "x.safetensors", [("w", np.arange(3, dtype=np.int32))],
                          metadata={"format": "pt"})
    assert list(read_safetensors_header(f)) == ["w"]
    g = raw_safetensors(tmp_path / "y.safetensors", {"__metadata__": {"format": 1}})
    assert "__metadata__" in expect(CheckpointError, lambda: read_safetensors_header(g), g)


def test_header_agrees_with_safe_open(tmp_path):
    f = tmp_path / "ref.safetensors"
    save_file({"b": torch.zeros(3, 5, dtype=torch.bfloat16), "a": torch.ones(2, dtype=torch.float32),
               "s": torch.tensor(7, dtype=torch.int64)}, str(f))
    infos = read_safetensors_header(f)
    assert list(infos) == ["a", "b", "s"]
    with safe_open(str(f), framework="pt") as so:
        for name, info in infos.items():
            assert isinstance(info, TensorInfo) and info.file == f
            assert list(info.shape) == list(so.get_slice(name).get_shape())
    assert (infos["b"].dtype, infos["b"].nbytes) == ("BF16", 30)
    assert infos["s"].shape == ()


# ---------------------------------------------------------------- directories

def test_sharded_directory_with_index(tmp_path):
    d, expected = sharded_dir(tmp_path)
    ckpt = open_checkpoint(d)
    assert isinstance(ckpt, Checkpoint) and ckpt.config == CONFIG and ckpt.path == d
    assert list(ckpt.tensors) == sorted(expected)
    assert [p.name for p in ckpt.files()] == ["model-00001-of-00002.safetensors",
                                             "model-00002-of-00002.safetensors"]
    assert ckpt.total_bytes() == sum(a.nbytes for a in expected.values())
    for name, want in expected.items():
        got = ckpt.read(name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
        np.testing.assert_array_equal(ckpt.read_f32(name), want.astype(np.float32))


def test_missing_shard(tmp_path):
    d, _ = sharded_dir(tmp_path)
    gone = d / "model-00002-of-00002.safetensors"
    gone.unlink()
    msg = expect(CheckpointError, lambda: open_checkpoint(d), gone, "model.layers.0.mlp.down_proj.weight")
    assert "missing" in msg


def test_index_names_tensor_not_in_its_shard(tmp_path):
    d, _ = sharded_dir(tmp_path)
    index = d / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"
    data["weight_map"]["model.ghost.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    expect(CheckpointError, lambda: open_checkpoint(d), d / "model-00001-of-00002.safetensors",
           "model.ghost.weight")


def test_index_shard_name_must_stay_in_directory(tmp_path):
    d, _ = sharded_dir(tmp_path)
    index = d / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../elsewhere.safetensors"}}))
    expect(CheckpointError, lambda: open_checkpoint(d), index, "w")
    index.write_text("{oops")
    expect(CheckpointError, lambda: open_checkpoint(d), index)


def test_config_missing(tmp_path):
    d = model_dir(tmp_path, {"w": np.zeros(2, np.float32)}, config=None)
    expect(ConfigError, lambda: open_checkpoint(d), d / "config.json")


def test_config_not_json(tmp_path):
    d = model_dir(tmp_path, {"w": np.zeros(2, np.float32)})
    (d / "config.json").write_text("{'single': 'quotes'}")
    assert "not valid JSON" in expect(ConfigError, lambda: open_checkpoint(d), d / "config.json")
    (d / "config.json").write_text("[]")
    expect(ConfigError, lambda: open_checkpoint(d), d / "config.json")


class _TouchOnUnpickle:
    """Unpickling this creates ``marker``: proof that a pickle ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_only_directory_is_refused_unopened(tmp_path, monkeypatch):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(probe)))
    assert probe.exists(), "the payload must be live, or the test proves nothing"

    marker = tmp_path / "MARKER"
    d = tmp_path / "pt_model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CONFIG))
    bins = [d / "pytorch_model.bin", d / "extra.pt", d / "w.pth", d / "last.ckpt"]
    for b in bins:
        b.write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))

    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    msg = expect(CheckpointError, lambda: open_checkpoint(d), d)
    monkeypatch.undo()
    assert "pytorch_model.bin" in msg and "safetensors" in msg
    assert not marker.exists()
    assert not [p for p in opened if p.endswith((".bin", ".pt", ".pth", ".ckpt"))], opened
    expect(CheckpointError, lambda: open_checkpoint(bins[0]), bins[0])
    assert not marker.exists()


def test_directory_without_weights(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CONFIG))
    assert "no weights" in expect(CheckpointError, lambda: open_checkpoint(d), d)
    write_safetensors(d / "model-00001-of-00002.safetensors", [("w", np.zeros(1, np.float32))])
    assert "model.safetensors.index.json" in expect(CheckpointError, lambda: open_checkpoint(d), d)
    expect(CheckpointError, lambda: open_checkpoint(tmp_path / "nope"), tmp_path / "nope")


def test_unknown_tensor_name_suggests(tmp_path):
    d = model_dir(tmp_path, {"model.norm.weight": np.ones(2, np.float32)})
    msg = expect(CheckpointError, lambda: open_checkpoint(d).read("model.norm.weights"), d,
                 "model.norm.weights")
    assert "did you mean 'model.norm.weight'" in msg


# ---------------------------------------------------------------- reading

def test_round_trip_against_safetensors_save_file(tmp_path):
    d = tmp_path / "ref"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CONFIG))
    g = torch.Generator().manual_seed(0)
    ref = {
        "bf16": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "f16": torch.randn(3, 4, generator=g).to(torch.float16),
        "f32": torch.randn(6, generator=g),
        "i8": torch.randint(-128, 127, (9,), dtype=torch.int8, generator=g),
        "u8": torch.randint(0, 255, (2, 3), dtype=torch.uint8, generator=g),
        "packed": torch.randint(-2**31, 2**31 - 1, (4, 2), dtype=torch.int32, generator=g),
        "i64": torch.tensor([2**40, -3]),
        "scalar": torch.tensor(1.5),
    }
    save_file(ref, str(d / "model.safetensors"), metadata={"format": "pt"})
    ckpt = open_checkpoint(d)
    want_dtype = {"bf16": "BF16", "f16": "F16", "f32": "F32", "i8": "I8", "u8": "U8", "packed": "I32",
                  "i64": "I64", "scalar": "F32"}
    assert {n: t.dtype for n, t in ckpt.tensors.items()} == want_dtype
    for name, t in ref.items():
        got = ckpt.read(name)
        assert got.shape == tuple(t.shape)
        if t.dtype == torch.bfloat16:
            assert got.dtype == np.dtype(ml_dtypes.bfloat16)
            np.testing.assert_array_equal(got.view(np.int16), t.view(torch.int16).numpy())
        else:
            np.testing.assert_array_equal(got, t.numpy())
        if name not in ("packed", "i64"):
            np.testing.assert_array_equal(ckpt.read_f32(name), t.float().numpy())
            assert ckpt.read_f32(name).dtype == np.float32
    expect(CheckpointError, lambda: ckpt.read_f32("packed"), d / "model.safetensors", "packed")


def test_reads_are_lazy(tmp_path):
    big = LazyTensor("F32", (1024, 1024), lambda: (np.full((64, 1024), i, np.float32) for i in range(16)))
    d = tmp_path / "lazy"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CONFIG))
    f = write_safetensors(d / "model.safetensors", [("big", big), ("small", np.arange(4, dtype=np.float32))])
    # corrupt the big tensor's bytes: reading the small one must not care
    info = read_safetensors_header(f)["big"]
    with open(f, "r+b") as fh:
        fh.seek(info.offset)
        fh.write(b"\xff" * 4096)
    tracemalloc.start()
    try:
        ckpt = open_checkpoint(d)
        small = ckpt.read("small")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(small, np.arange(4, dtype=np.float32))
    assert peak < 256 * 1024, peak  # the file is 4 MiB
    assert ckpt.read("big")[-1, -1] == 15.0


# ---------------------------------------------------------------- writer

def test_writer_output_loads_in_safetensors(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"bf": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
              "h": rng.standard_normal(7).astype(np.float16),
              "f": rng.standard_normal((2, 2)).astype(np.float32),
              "q": rng.integers(-8, 8, (5,), dtype=np.int8),
              "i": np.arange(3, dtype=np.int32),
              "flag": np.array([True, False])}
    f = write_safetensors(tmp_path / "w.safetensors", arrays.items(), metadata={"format": "pt"})
    with safe_open(str(f), framework="pt") as so:
        assert so.metadata() == {"format": "pt"}
        assert sorted(so.keys()) == sorted(arrays)
        bf = so.get_tensor("bf")
        assert bf.dtype == torch.bfloat16
        np.testing.assert_array_equal(bf.view(torch.int16).numpy(), arrays["bf"].view(np.int16))
        for name in ("h", "f", "q", "i", "flag"):
            np.testing.assert_array_equal(so.get_tensor(name).numpy(), arrays[name])
    for name, info in read_safetensors_header(f).items():
        assert info.offset % arrays[name].dtype.itemsize == 0  # every tensor aligned to its dtype
    assert (8 + int.from_bytes(f.read_bytes()[:8], "little")) % 8 == 0


def test_writer_is_deterministic_atomic_and_streams(tmp_path):
    rows = LazyTensor(ml_dtypes.bfloat16, (4, 3),
                      lambda: (np.full((1, 3), r, ml_dtypes.bfloat16) for r in range(4)))
    items = [("z", np.zeros(2, np.float32)), ("rows", rows)]
    a = write_safetensors(tmp_path / "a.safetensors", items)
    b = write_safetensors(tmp_path / "b.safetensors", reversed(items))
    assert a.read_bytes() == b.read_bytes()
    assert read_safetensors_header(a)["rows"].shape == (4, 3)
    with safe_open(str(a), framework="pt") as so:
        assert so.get_tensor("rows")[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]

    before = a.read_bytes()
    short = LazyTensor("F32", (4,), lambda: np.zeros(3, np.float32))
    expect(CheckpointError, lambda: write_safetensors(a, [("s", short)]), a, "s")
    wrong = LazyTensor("F32", (2,), lambda: np.zeros(2, np.float64))
    expect(CheckpointError, lambda: write_safetensors(a, [("s", wrong)]), a, "s")
    expect(CheckpointError, lambda: write_safetensors(a, [("d", np.zeros(1)), ("d", np.zeros(1))]), a, "d")
    assert a.read_bytes() == before  # failed writes leave the old file alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


@pytest.mark.parametrize("present", [0, 1])
def test_index_naming_a_missing_shard_is_refused_by_inspect_and_convert(multimodal_ckpt, tmp_path, capsys, present):
    """Not "counted from config.json alone": a directory with an index is a checkpoint, and a shard
    it names that is not there is one line, exit 2, naming the shard (all shards gone, or one of two)."""
    from safetensors.numpy import load_file

    from edge_sdk.cli import main

    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_bytes((multimodal_ckpt / "config.json").read_bytes())
    tensors = load_file(str(multimodal_ckpt / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    if present:
        first = "model-00001-of-00002.safetensors"
        write_safetensors(d / first, [(n, tensors[n]) for n in shards[first]])
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: s for s, ns in shards.items() for n in ns}}))
    missing = "model-00002-of-00002.safetensors" if present else "model-00001-of-00002.safetensors"
    for argv in (["inspect", str(d)], ["convert", str(d), "-o", str(tmp_path / "out"), "--text-only"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(d / missing) in err and "missing" in err and "fix:" in err, err
    assert not (tmp_path / "out").exists()

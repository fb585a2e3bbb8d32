"""``edge-sdk bundle``: a converted model → a .litertlm that LiteRT-LM runs.

The model: the tiny QAT Gemma 4 (models/tiny-gemma4/qat, with its tokenizer) when it is there,
else the ``multimodal`` fixture (PLE, KV sharing, sliding + full layers) converted with the mobile
recipe (int2 MLPs, int4 attention, dictionary-coded PLE, int8 KV cache), text-only, with a small
BPE tokenizer trained here. The engine's greedy text must equal our LiteRT runtime's greedy tokens,
detokenized, under the engine's documented output rules (see ``engine_view``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import struct
import subprocess
import sys
import uuid
import zlib
from pathlib import Path

import pytest

pytest.importorskip("litert_lm_builder")

from edge_sdk import cli  # noqa: E402
from edge_sdk.bundle import MANIFEST_KEY, read_manifest  # noqa: E402
from edge_sdk.bundle import container as ct  # noqa: E402
from edge_sdk.bundle.android import place  # noqa: E402
from edge_sdk.pipeline import bundle_model, convert, plan_model, planned_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-gemma4" / "qat"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|turn>{{ m['role'] }}\n{{ m['content'] | trim }}<turn|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|turn>model\n{% endif %}")


def make_tokenizer(out: Path, vocab: int) -> Path:
    """A BPE tokenizer over printable text (no byte tokens: the engine's C API returns NUL-terminated
    text, so a generated NUL byte would truncate it) with Gemma-style specials and chat template."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    texts = [topics[k] for k in sorted(topics)]
    alphabet = sorted(c for c in set("".join(texts)) if c.isprintable())
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS,
                                                       initial_alphabet=alphabet, limit_alphabet=200,
                                                       show_progress=False))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "chat_template": TEMPLATE}))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": [1, 5]}))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory, request):
    """(converted model dir, tokenizer dir or None, source checkpoint, context, prefill)."""
    tmp = tmp_path_factory.mktemp("bundle")
    if (TINY / "config.json").is_file() and (TINY / "tokenizer.json").is_file():
        src, ctx, T, tok = TINY, 128, 32, None
    else:
        src, ctx, T = request.getfixturevalue("multimodal_ckpt"), 64, 8
        tok = make_tokenizer(tmp / "tokenizer", 512)
    convert(src, tmp / "model", recipe="mobile", text_only=True, context=ctx, prefill=T)
    return tmp / "model", tok, src, ctx, T


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    mdir, tok, *_ = model
    out = tmp_path_factory.mktemp("out") / "model.litertlm"
    return bundle_model(mdir, out, tokenizer=tok)


def _tokenizer(model):
    from tokenizers import Tokenizer
    mdir, tok, *_ = model
    return Tokenizer.from_file(str((tok or mdir) / "tokenizer.json"))


def engine_view(ours: list[int], stops: list[list[int]]) -> list[int]:
    """The part of a greedy continuation LiteRT-LM's text shows: up to the first complete stop
    sequence; and a trailing partial stop sequence is held back (the engine waits to see whether
    it completes, e.g. ":" before ":<turn|>\\n", and does not flush it at the token limit)."""
    for j in range(len(ours)):
        if any(q and ours[j:j + len(q)] == q for q in stops):
            return ours[:j]
    hold = max([k for q in stops for k in range(1, len(q)) if k <= len(ours) and ours[-k:] == q[:k]], default=0)
    return ours[:len(ours) - hold]


def engine_matches_runtime(bundle: Path, mdir: Path, hf, prompts: list[str], ctx: int, cache: Path,
                           **engine_kw) -> int:
    """Greedy text from LiteRT-LM == our runtime's greedy tokens, detokenized; returns the longest
    prompt (with BOS) in tokens. ``engine_kw``: more ``litert_lm.Engine`` options."""
    litert_lm = pytest.importorskip("litert_lm")
    from edge_sdk.litert.runtime import LiteRTModel

    ref = LiteRTModel(mdir)
    eng = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU(), max_num_tokens=ctx, cache_dir=str(cache),
                           **engine_kw)
    stops, longest = eng.eos_token_ids, 0
    for p in prompts:
        body = eng.tokenize(p)
        assert body == hf.encode(p, add_special_tokens=False).ids      # same tokenizer, no BOS added
        ids = [eng.bos_token_id] + body                                # the engine prepends BOS itself
        longest = max(longest, len(ids))
        n = min(24, ctx - len(ids))
        ours = ref.greedy(ids, n)
        s = eng.create_session(apply_prompt_template=False, sampler_config=litert_lm.SamplerConfig(top_k=1),
                               max_output_tokens=n)
        s.run_prefill([p])
        text = s.run_decode().texts[0]
        assert text == hf.decode(engine_view(ours, stops), skip_special_tokens=False), (p, ours)
    assert eng.create_conversation().send_message("hello") is not None   # the chat template renders too
    return longest


def _long_prompt(hf, budget: int) -> str:
    """The longest prefix (in words) of a pydoc topic that tokenizes to at most ``budget`` tokens."""
    from pydoc_data.topics import topics
    words, k = topics["with"].split(), 1
    while k < len(words) and len(hf.encode(" ".join(words[:k + 1]), add_special_tokens=False).ids) <= budget:
        k += 1
    return " ".join(words[:k])


def test_engine_greedy_matches_litert_runtime(model, built, tmp_path):
    mdir, _, _, ctx, T = model
    hf = _tokenizer(model)
    rings = {b["length"] for b in json.loads((mdir / "model.json").read_text())["kv_cache"]["buffers"] if b["ring"]}
    prompts = ["The quick brown fox", "a", "def f(x): return x + 1  # called with the argument and the keyword",
               "Python is " + "the language " * (T // 2), _long_prompt(hf, ctx - 12)]
    longest = engine_matches_runtime(built.path, mdir, hf, prompts, ctx, tmp_path)
    assert longest > T          # one prompt ran as prefill_<T> chunks plus leftover tokens
    # sliding layers carry ring buffers shorter than the context, and one prompt wraps them
    assert rings and longest > max(rings) and max(rings) < ctx


def test_engine_ringbuffer_option_changes_nothing(model, built, tmp_path):
    """The rings live in the graph: LiteRT-LM's ``use_ringbuffers_local_attention`` on (or off)
    gives the same greedy text as our runtime, prompts past the ring included."""
    mdir, _, _, ctx, T = model
    hf = _tokenizer(model)
    for flag in (True, False):
        engine_matches_runtime(built.path, mdir, hf, ["The quick brown fox", _long_prompt(hf, ctx - 12)], ctx,
                               tmp_path, use_ringbuffers_local_attention=flag)
    assert built.manifest["model"]["bos_token_id"] == json.loads((mdir / "model.json").read_text())["bos_token_id"]


def test_engine_float_kv_without_per_layer_embeddings(kv_eq_ckpt, tmp_path):
    """k_eq_v full layers, no PLE (two TFLite sections), float32 KV cache (the float recipe)."""
    convert(kv_eq_ckpt, tmp_path / "m", recipe="float", text_only=True, context=64, prefill=8)
    tok = make_tokenizer(tmp_path / "tok", 512)
    rep = bundle_model(tmp_path / "m", tmp_path / "kv.litertlm", tokenizer=tok)
    assert [s["model_type"] for s in rep.manifest["sections"]][3:] == ["tf_lite_prefill_decode", "tf_lite_embedder"]
    assert rep.manifest["model"]["kv_cache"]["dtype"] == "float32" and rep.manifest["adaptations"] == []
    from tokenizers import Tokenizer
    engine_matches_runtime(rep.path, tmp_path / "m", Tokenizer.from_file(str(tok / "tokenizer.json")),
                           ["The quick brown fox", "Python is the language the language of"], 64, tmp_path)


def test_peek_lists_sections_and_manifest(model, built, tmp_path):
    exe = shutil.which("litert-lm-peek")
    cmd = [exe] if exe else [sys.executable, "-c", "from litert_lm_builder.litertlm_peek_main import run; run()"]
    out = subprocess.run(cmd + ["--litertlm_file", str(built.path), "--dump_files_dir", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    for needle in ("LlmMetadataProto", "ExecutorMetadataProto", "HF_Tokenizer_Zlib", "tf_lite_prefill_decode",
                   "tf_lite_embedder", "tf_lite_per_layer_embedder", f"Key: {MANIFEST_KEY}", '"planned_peak_bytes"',
                   "kv_cache_k_0", "TYPE_GLOBAL_VALUE_CACHE"):
        assert needle in out, needle
    toml = (tmp_path / "model.toml").read_text()
    assert toml.count('section_type = "TFLiteModel"') == 3 and 'model_type = "prefill_decode"' in toml
    mdir = model[0]
    for f in tmp_path.glob("*.tflite"):             # dumped sections are the converter's files, byte for byte
        stem = f.stem.split("tf_lite_")[-1]
        assert f.read_bytes() == (mdir / f"{stem}.tflite").read_bytes()


def test_manifest_sections_verified_from_file(model, built):
    from litert_lm_builder import litertlm_peek
    import io

    m = built.manifest
    assert built.manifest_path.read_text() == json.dumps(m, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert read_manifest(built.path) == m == json.loads(built.manifest_path.read_text())
    hdr = litertlm_peek.read_litertlm_header(str(built.path), io.StringIO())   # Google's own reader
    objs = [hdr.SectionMetadata().Objects(i) for i in range(hdr.SectionMetadata().ObjectsLength())]
    assert [(o.BeginOffset(), o.EndOffset()) for o in objs] == [(s["begin"], s["end"]) for s in m["sections"]]
    assert [s["type"] for s in m["sections"]] == ["LlmMetadataProto", "ExecutorMetadataProto", "HF_Tokenizer_Zlib",
                                                  "TFLiteModel", "TFLiteModel", "TFLiteModel"]
    data = built.path.read_bytes()
    assert len(data) == m["bundle"]["bytes"]
    for s in m["sections"]:
        blob = data[s["begin"]:s["end"]]
        assert hashlib.sha256(blob).hexdigest() == s["sha256"] and s["begin"] % ct.BLOCK == 0
        if s["type"] == "TFLiteModel":
            assert blob == (model[0] / s["source"]).read_bytes()
        if s["type"] == "HF_Tokenizer_Zlib":
            size = struct.unpack("<Q", blob[:8])[0]
            tok_json = ((model[1] or model[0]) / "tokenizer.json").read_bytes()
            assert zlib.decompress(blob[8:]) == tok_json and size == len(tok_json)
    conv = json.loads((model[0] / "conversion.json").read_text())["outputs"]
    assert {s["source"]: s["sha256"] for s in m["sections"] if s["type"] == "TFLiteModel"} == conv


def test_manifest_memory_is_the_plan_at_the_model_context(model, built):
    mdir, _, src, ctx, T = model
    planned = planned_memory(mdir, ctx, None)      # the KV layout model.json records
    mem = built.manifest["memory"]
    assert mem["planned_source"] == "planner" and mem["planned_context"] == ctx
    assert mem["planned_peak_bytes"] == planned["peak_bytes"]
    assert built.manifest["plan"]["bytes"]["kv_cache"] == planned["kv_cache_bytes"]
    plan = plan_model(src, recipe="mobile", text_only=True, context=ctx, prefill=T)
    assert mem["planned_peak_bytes"] == plan.memory.peak_bytes     # planner and converter: one KV layout
    assert planned["kv_cache_bytes"] == plan.memory.kv_cache_bytes == \
        json.loads((mdir / "model.json").read_text())["kv_cache"]["bytes"]
    assert mem["validated_budget_bytes"] is None
    assert built.manifest["recipe"] == "mobile" and built.manifest["model"]["kv_cache"]["dtype"] == "int8"
    assert [a["part"] for a in built.manifest["adaptations"]] == ["kv_cache"]    # per-tensor, not per-(token, head)


def test_a_model_without_its_plan_config_bundles_with_the_plan_absent_and_why(model, tmp_path):
    """plan.json of version 1 (before source_config): the bundle is still made, the manifest says
    the plan is absent and why (file, missing key, the fix), and the sections' size stands in."""
    mdir = tmp_path / "old"
    shutil.copytree(model[0], mdir)
    doc = json.loads((mdir / "plan.json").read_text())
    doc["version"] = 1
    del doc["source_config"]
    (mdir / "plan.json").write_text(json.dumps(doc))
    m = bundle_model(mdir, tmp_path / "old.litertlm", tokenizer=model[1]).manifest
    why = m["plan"]["absent"]
    assert "plan.json" in why and "lacks 'source_config'" in why and "edge-sdk convert" in why
    assert m["memory"]["planned_source"] == "bundle_size" and "bytes" not in m["plan"]


def test_validated_budget_from_report_json(model, tmp_path):
    """The bundle carries the budget that validated this directory: its report.json beside the model
    (`validate -o OUT`) or in OUT/report/ (`-o OUT/report`, as the README does); a report of another
    directory is not this model's and is ignored."""
    mdir, tok, *_ = model
    copy = tmp_path / "m"
    shutil.copytree(mdir, copy)
    rep = {"passed": True, "budget": {"limit_bytes": 9 * 10**8}, "model_dir": str(copy.resolve()),
           "memory": {"peak_rss_bytes": 123456789, "model_peak_bytes": 4567}}
    for i, place in enumerate(("report.json", "report/report.json")):
        for old in ("report.json", "report/report.json"):
            (copy / old).unlink(missing_ok=True)
        (copy / place).parent.mkdir(exist_ok=True)
        (copy / place).write_text(json.dumps(rep))
        mem = bundle_model(copy, tmp_path / f"b{i}.litertlm", tokenizer=tok).manifest["memory"]
        assert (mem["validated_budget_bytes"], mem["validated_peak_rss_bytes"], mem["validated_passed"]) == \
            (9 * 10**8, 123456789, True), place
    (copy / "report" / "report.json").write_text(json.dumps(dict(rep, model_dir=str(tmp_path / "other"))))
    mem = bundle_model(copy, tmp_path / "b9.litertlm", tokenizer=tok).manifest["memory"]
    assert mem["validated_budget_bytes"] is None and mem["validated_passed"] is None


def test_llm_and_executor_metadata(model, built, tmp_path):
    from litert_lm_builder.runtime.proto import executor_metadata_pb2, llm_metadata_pb2

    mdir, tok, _, ctx, _ = model
    data, secs = built.path.read_bytes(), built.manifest["sections"]
    llm = llm_metadata_pb2.LlmMetadata.FromString(data[secs[0]["begin"]:secs[0]["end"]])
    exe = executor_metadata_pb2.ExecutorMetadata.FromString(data[secs[1]["begin"]:secs[1]["end"]])
    meta = json.loads((mdir / "model.json").read_text())
    assert list(llm.start_token.token_ids.ids) == [meta["bos_token_id"]]
    ids = {t.token_ids.ids[0] for t in llm.stop_tokens if t.HasField("token_ids")}
    strs = {t.token_str for t in llm.stop_tokens if t.HasField("token_str")}
    assert set(meta["eos_token_id"]) <= ids and "<turn|>\n" in strs and ".<turn|>\n" in strs
    assert llm.max_num_tokens == ctx and llm.llm_model_type.HasField("gemma4")
    assert "<|turn>" in llm.jinja_prompt_template
    bufs = exe.llm_executor_metadata.state_buffers
    assert [b.decode_input_name for b in bufs] == [b["name"] for b in meta["kv_cache"]["buffers"]]
    assert all(b.sequence_axis == (2 if "_k_" in b.prefill_input_name else 3) for b in bufs)
    assert exe.llm_executor_metadata.max_history_size == ctx
    S = executor_metadata_pb2.StateBuffer
    for sb, b in zip(bufs, meta["kv_cache"]["buffers"]):   # rings are LOCAL (else they cap max_num_tokens)
        assert sb.maximum_sequence_length == b["length"] == (b["length"] if b["ring"] else ctx)
        local = (S.TYPE_LOCAL_KEY_CACHE, S.TYPE_LOCAL_VALUE_CACHE)
        assert (sb.type in local) == b["ring"] and sb.minimum_sequence_length == (b["window"] if b["ring"] else 0)
    short = bundle_model(mdir, tmp_path / "short.litertlm", tokenizer=tok, max_tokens=ctx // 2)
    assert short.manifest["model"]["max_num_tokens"] == ctx // 2


def test_deterministic_and_content_addressed(model, built, tmp_path):
    again = bundle_model(model[0], tmp_path / "other-name.litertlm", tokenizer=model[1])
    assert again.path.read_bytes() == built.path.read_bytes()
    import os
    mask = os.umask(0)
    os.umask(mask)
    assert {built.path.stat().st_mode & 0o777, built.manifest_path.stat().st_mode & 0o777} == {0o666 & ~mask}
    _, system, _ = ct.read_header(built.path)
    assert system["creation_timestamp"] == ct.FIXED_TIMESTAMP
    text = built.manifest_path.read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert system["uuid"] == str(uuid.uuid5(uuid.NAMESPACE_URL, "edge-sdk:" + digest))


def test_atomic_write_leaves_nothing_on_failure(model, built, tmp_path, monkeypatch):
    target = tmp_path / "model.litertlm"
    shutil.copy(built.path, target)        # a previous bundle of ours, replaced with overwrite=True
    previous = target.read_bytes()

    def broken(stream, *a, **k):
        stream.write(b"LITERTLM partial")
        raise OSError("disk full")

    monkeypatch.setattr(ct, "write_container", broken)
    with pytest.raises(OSError):
        bundle_model(model[0], target, tokenizer=model[1], overwrite=True)
    assert target.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.litertlm"]


def test_overwrites_only_a_bundle_it_wrote(model, built, tmp_path, capsys):
    """An existing file is replaced only with --overwrite and only when it is our bundle (LITERTLM
    magic + edge_sdk_manifest); the side manifest likewise. Refusals touch nothing."""
    mdir, tok, *_ = model
    argv = ["bundle", str(mdir), *(["--tokenizer", str(tok)] if tok else [])]
    out = tmp_path / "m.litertlm"

    def refused(target, *needles, overwrite=True):
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        rc, res = _cli(argv + ["-o", str(target)] + (["--overwrite"] if overwrite else []), capsys)
        assert rc == 2 and res.err.count("\n") == 1 and "fix:" in res.err, res.err
        assert all(n in res.err for n in needles), res.err
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before

    out.write_bytes(b"my notes")                              # not a bundle at all
    refused(out, str(out), "not a bundle edge-sdk wrote")
    refused(out, str(out), "not a bundle edge-sdk wrote", overwrite=False)
    out.write_bytes(b"LITERTLM" + bytes(64))                  # magic, but a header we cannot read
    refused(out, "not a bundle edge-sdk wrote")
    out.unlink()
    foreign = tmp_path / "google.litertlm"                    # a real .litertlm without our manifest
    _write_foreign_litertlm(foreign, (tok or mdir) / "tokenizer.json")
    refused(foreign, str(foreign), "not a bundle edge-sdk wrote")

    shutil.copy(built.path, out)                              # ours: needs --overwrite
    refused(out, "--overwrite", overwrite=False)
    rc, res = _cli(argv + ["-o", str(out), "--overwrite"], capsys)
    assert rc == 0, res.err
    assert out.read_bytes() == built.path.read_bytes()
    assert (tmp_path / "m.litertlm.manifest.json").read_text() == built.manifest_path.read_text()
    (tmp_path / "m.litertlm.manifest.json").write_text('{"format": "other"}')   # side file not ours
    refused(out, "m.litertlm.manifest.json", "not a bundle manifest edge-sdk wrote")
    (tmp_path / "dir.litertlm").mkdir()
    refused(tmp_path / "dir.litertlm", "is a directory")


def _write_foreign_litertlm(path: Path, tokenizer_json: Path) -> None:
    """A .litertlm as LiteRT-LM's own builder writes it: a tokenizer section, no edge_sdk_manifest."""
    import litert_lm_builder as lb

    builder = lb.LitertLmFileBuilder()
    builder.add_system_metadata(lb.Metadata(key="Authors", value="someone else", dtype=lb.DType.STRING))
    builder.add_hf_tokenizer(str(tokenizer_json))
    with open(path, "wb") as f:
        builder.build(f)
    assert path.read_bytes()[:8] == b"LITERTLM" and MANIFEST_KEY not in ct.read_header(path)[1]


def test_android_refusals_leave_no_bundle(model, built, tmp_path, capsys):
    mdir, tok, *_ = model
    argv = ["bundle", str(mdir), "-o", str(tmp_path / "m.litertlm"), *(["--tokenizer", str(tok)] if tok else [])]
    rc, res = _cli(argv + ["--android", str(tmp_path / "nope")], capsys)
    assert rc == 2 and "not an android_demo directory" in res.err and "nope" in res.err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    demo = tmp_path / "android_demo"
    (demo / "app" / "src" / "main" / "assets").mkdir(parents=True)
    shutil.copy(ROOT / "android_demo" / "app" / "build.gradle.kts", demo / "app" / "build.gradle.kts")
    theirs = demo / "app" / "src" / "main" / "assets" / "model.litertlm"
    theirs.write_bytes(b"someone's model")
    rc, res = _cli(argv + ["--android", str(demo)], capsys)
    assert rc == 2 and str(theirs) in res.err and theirs.read_bytes() == b"someone's model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["android_demo"]
    theirs.unlink()
    rc, res = _cli(argv + ["--android", str(demo)], capsys)
    assert rc == 0 and theirs.read_bytes() == built.path.read_bytes()


def _cli(argv, capsys):
    rc = cli.main(argv)
    return rc, capsys.readouterr()


def test_cli_bundle_and_bad_input(model, tmp_path, capsys):
    mdir, tok, *_ = model
    tok_args = ["--tokenizer", str(tok)] if tok else []
    rc, out = _cli(["bundle", str(mdir), "-o", str(tmp_path / "x.litertlm"), "--json", *tok_args], capsys)
    assert rc == 0 and json.loads(out.out)["sections"][3]["model_type"] == "tf_lite_prefill_decode"

    rc, out = _cli(["bundle", str(tmp_path / "missing"), "-o", str(tmp_path / "y.litertlm")], capsys)
    assert rc == 2 and "no such model directory" in out.err and "Traceback" not in out.err
    bare = tmp_path / "bare"
    shutil.copytree(mdir, bare)
    (bare / "tokenizer.json").unlink(missing_ok=True)
    rc, out = _cli(["bundle", str(bare), "-o", str(tmp_path / "y.litertlm")], capsys)
    assert rc == 2 and "no tokenizer.json" in out.err and "--tokenizer" in out.err
    rc, out = _cli(["bundle", str(mdir), "-o", str(tmp_path / "y.bin"), *tok_args], capsys)
    assert rc == 2 and ".litertlm" in out.err
    rc, out = _cli(["bundle", str(mdir), "-o", str(tmp_path / "y.litertlm"), "--max-tokens", "100000", *tok_args],
                   capsys)
    assert rc == 2 and "KV cache length" in out.err
    big = make_tokenizer(tmp_path / "bigtok", 2 * json.loads((mdir / "model.json").read_text())["vocab_size"])
    rc, out = _cli(["bundle", str(mdir), "-o", str(tmp_path / "y.litertlm"), "--tokenizer", str(big)], capsys)
    assert rc == 2 and "logits have" in out.err
    (bare / "embedder.tflite").unlink()
    rc, out = _cli(["bundle", str(bare), "-o", str(tmp_path / "y.litertlm"), *tok_args], capsys)
    assert rc == 2 and "embedder.tflite not found" in out.err
    assert not list(tmp_path.glob("y.*"))


def test_android_placement(built, tmp_path):
    demo = tmp_path / "android_demo"
    (demo / "app").mkdir(parents=True)
    shutil.copy(ROOT / "android_demo" / "app" / "build.gradle.kts", demo / "app" / "build.gradle.kts")
    res = place(built.path, built.manifest_path, demo)
    assets = demo / "app" / "src" / "main" / "assets"
    assert res["mode"] == "asset" and (assets / "model.litertlm").read_bytes() == built.path.read_bytes()
    assert (assets / "model.litertlm.manifest.json").read_text() == built.manifest_path.read_text()
    res = place(built.path, built.manifest_path, demo, limit=1000)      # "large": adb push instead
    assert res["mode"] == "adb" and not (assets / "model.litertlm").exists()
    assert any("adb push" in c and "/sdcard/Android/data/dev.edgesdk.demo/files/model.litertlm" in c
               for c in res["commands"])


def test_apk_packaging_keeps_bundle_intact_and_aligned(built, tmp_path):
    spec = importlib.util.spec_from_file_location("apk_check", ROOT / "scripts" / "apk_check.py")
    apk_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(apk_check)
    missing = apk_check.missing_tools()
    if missing:
        pytest.skip(f"Android packaging tools not installed: {', '.join(missing)} "
                    "(apt-get install aapt apksigner zipalign; keytool from a JDK)")
    res = apk_check.check_apk(built.path, tmp_path, align=16384)
    assert res["passed"], res["checks"]
    assert res["checks"]["asset aligned"]["offset"] % 16384 == 0
    assert res["checks"]["sections sha256"]["sections"] == 6

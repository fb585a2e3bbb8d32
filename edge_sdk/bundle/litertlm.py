"""``bundle``: a converted model directory → one ``.litertlm`` that LiteRT-LM runs, plus
``<bundle>.manifest.json``.

Sections, in Google's order (LITERTLM_GEMMA4.md §2, §8): LlmMetadataProto, ExecutorMetadataProto,
HF_Tokenizer_Zlib (``tokenizer.json``), TFLiteModel ``tf_lite_prefill_decode``, ``tf_lite_embedder``,
``tf_lite_per_layer_embedder`` (when the model has per-layer embeddings). The TFLite files go in
byte for byte (the converter already writes what the engine runs: §7). Our manifest
(:mod:`.manifest`) rides in the system metadata under ``edge_sdk_manifest``.

Written atomically: a temp file in the destination directory, checked (offsets as planned, every
section's sha256 re-read from the file), then renamed; the side manifest likewise. Same inputs →
same bytes (see :mod:`.container` for the uuid and timestamp the builder would randomize).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid as uuidlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..artefacts import ConversionRecord, ModelInfo, PlanRecord
from ..errors import InputError
from ..hashing import sha256_file
from ..litert.reader import read_tflite
from ..outputs import check_replaceable_bundle
from ..quant.kv_layout import KvLayout, model_kv_layout
from ..units import fmt_bytes
from . import container as ct
from .manifest import (MANIFEST_KEY, MANIFEST_VERSION, conversion_block, dumps, manifest_path_for, memory_block,
                       plan_summary, read_manifest, validation_report, versions)
from .android import check_android_dir, place
from .metadata import executor_metadata, find_tokenizer, llm_metadata
from .signatures import cache_context, check_llm_signatures, kv_buffers

MODEL_FILES = (("prefill_decode", "tf_lite_prefill_decode", True),
               ("embedder", "tf_lite_embedder", True),
               ("per_layer_embedder", "tf_lite_per_layer_embedder", False))


@dataclass(frozen=True)
class BundleReport:
    path: Path
    manifest_path: Path
    bytes: int
    manifest: dict
    android: dict | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"path": str(self.path), "manifest_path": str(self.manifest_path), "bytes": self.bytes,
                "sections": self.manifest["sections"], "memory": self.manifest["memory"],
                "android": self.android, "warnings": list(self.warnings)}

    def to_text(self) -> str:
        m = self.manifest
        lines = [f"{self.path}: {fmt_bytes(self.bytes)}, {len(m['sections'])} sections "
                 f"(litertlm {ct.VERSION}), context {m['model']['context']}, "
                 f"KV cache {m['model']['kv_cache']['dtype']}"]
        for s in m["sections"]:
            what = s["model_type"] or s["type"]
            lines.append(f"  [{s['index']}] {what:<28}{fmt_bytes(s['bytes']):>11}  sha256 {s['sha256'][:16]}…")
        mem = m["memory"]
        budget = mem["validated_budget_bytes"]
        lines.append(f"  planned peak {fmt_bytes(mem['planned_peak_bytes'])} ({mem['planned_source']}); "
                     f"validated budget {fmt_bytes(budget) if budget else 'none'}")
        lines.append(f"  manifest: {self.manifest_path}")
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.android:
            lines.append(f"  android: {self.android['message']}")
        return "\n".join(lines)


def _model_file(model_dir: Path, meta: ModelInfo, stem: str) -> Path:
    entry = meta.files.get(stem)
    return model_dir / (entry["file"] if entry else f"{stem}.tflite")


def _prefill_lengths(keys) -> list[int]:
    out = []
    for k in keys:
        m = re.fullmatch(r"prefill_(\d+)", k)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def _stage(dirpath: Path, name: str, data: bytes) -> Path:
    p = dirpath / name
    p.write_bytes(data)
    return p


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        ct.publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def bundle(model_dir: str | Path, out_file: str | Path, *, tokenizer: str | Path | None = None,
           max_tokens: int | None = None, android: str | Path | None = None,
           planned: dict | None = None, verify: bool = True, overwrite: bool = False) -> BundleReport:
    """Pack ``model_dir`` (``edge-sdk convert`` output) into ``out_file`` (.litertlm).

    ``tokenizer``: a tokenizer.json (or its directory) when the model directory has none;
    ``max_tokens``: LiteRT-LM's ``max_num_tokens`` (default and maximum: the model's KV cache
    length); ``android``: an ``android_demo`` directory to place the bundle in (see
    :mod:`.android`); ``planned``: the planner's figures at the model's context
    (``pipeline.bundle_model`` passes ``planned_or_absent(...)``; None or {"absent": reason}: no plan);
    ``overwrite``: replace an existing ``out_file`` (and its side manifest), only when edge-sdk wrote
    it (:func:`edge_sdk.outputs.check_replaceable_bundle`); without it an existing file is refused."""
    mdir, out = Path(model_dir), Path(out_file)
    _check_destination(mdir, out, android, overwrite)
    meta = ModelInfo.read(mdir)
    conv = ConversionRecord.read_optional(mdir)
    infos = _read_graphs(mdir, meta)
    m = _model_facts(mdir, infos["prefill_decode"], tokenizer, max_tokens)
    llm_msg, facts = llm_metadata(m.tok, meta, m.max_num)
    if not facts.chat_template:
        m.warnings.append("no chat template: apps must prompt with apply_prompt_template off")
    kv = model_kv_layout(meta, mdir)
    windows = {b.name: b.window for b in kv.buffers if b.ring and b.window}
    exe_msg = executor_metadata(m.kv, m.context, windows)

    with tempfile.TemporaryDirectory(prefix=".edge_sdk_bundle.", dir=out.parent) as stage:
        sources, hashes = _sections(Path(stage), mdir, m.tok, llm_msg, exe_msg, infos,
                                    dict(conv.outputs) if conv else {})
        sections = [s for s, _ in sources]
        manifest = {
            "format": MANIFEST_KEY, "version": MANIFEST_VERSION, "created_by": versions(),
            "bundle": {"bytes": 0, "container": f"litertlm {ct.VERSION}"},
            "model": _model_block(m, facts, meta, infos["prefill_decode"]),
            "recipe": conv.recipe_name if conv else meta.recipe,
            "conversion": conversion_block(conv),
            "plan": plan_summary(PlanRecord.read_optional(mdir), planned),
            "memory": memory_block(planned, validation_report(mdir), m.context,
                                   sum(s.size for s in sections if s.kind == "tflite")),
            "adaptations": kv_adaptations(kv),
            "warnings": m.warnings,
        }
        _lay_out(manifest, sources, hashes)
        text = dumps(manifest)
        _write_container(out, text, sections, manifest, verify)
    mpath = manifest_path_for(out)
    _atomic_write_text(mpath, text)
    placed = None
    if android is not None:
        placed = place(out, mpath, Path(android))
    return BundleReport(out, mpath, out.stat().st_size, manifest, placed, tuple(m.warnings))


def _check_destination(mdir: Path, out: Path, android: str | Path | None, overwrite: bool) -> None:
    """Refuse, before anything is read or written: no model directory, a wrong name, a missing
    output directory, a file we may not replace, an unusable android_demo directory."""
    if not mdir.is_dir():
        raise InputError("no such model directory", path=mdir, fix="pass the OUT_DIR written by `edge-sdk convert`")
    if out.suffix != ".litertlm":
        raise InputError("the bundle file name must end in .litertlm", path=out)
    if not out.parent.is_dir():
        raise InputError("output directory does not exist", path=out.parent)
    check_replaceable_bundle(out, manifest_path_for(out), overwrite=overwrite, read_manifest=read_manifest)
    if android is not None:
        check_android_dir(Path(android))     # before anything is written


def _read_graphs(mdir: Path, meta: ModelInfo) -> dict:
    """The model files LiteRT-LM will call, read (a per-layer embedder the graph does not use is
    left out); InputError when one is missing or its signatures are not what the engine calls."""
    infos = {}
    for stem, _, required in MODEL_FILES:
        p = _model_file(mdir, meta, stem)
        if p.is_file():
            infos[stem] = read_tflite(p)
        elif required:
            raise InputError(f"{p.name} not found: not a converted model directory (need prefill_decode.tflite "
                             "and embedder.tflite)", path=mdir, fix="run `edge-sdk convert` with --text-only")
    problems = check_llm_signatures(infos["prefill_decode"], infos.get("embedder"), infos.get("per_layer_embedder"))
    if problems:
        raise InputError("LiteRT-LM cannot run this model: " + "; ".join(problems), path=mdir)
    if "per_layer_embeddings" not in infos["prefill_decode"].signatures["decode"].inputs:
        infos.pop("per_layer_embedder", None)       # unused by the graph: the engine would not call it
    return infos


@dataclass
class _Facts:
    """What the graph and the tokenizer say, checked against each other."""

    tok: object
    kv: list
    context: int
    max_num: int
    vocab: int
    warnings: list[str]


def _model_facts(mdir: Path, pd, tokenizer, max_tokens: int | None) -> _Facts:
    """KV buffers, context, ``max_num_tokens``, vocabulary and tokenizer (InputError for a
    ``max_tokens`` out of range, a tokenizer larger than the logits, a KV dtype the engine
    runs unfaithfully)."""
    decode = pd.signatures["decode"]
    kv = kv_buffers(decode)
    context = cache_context(decode)
    max_num = context if max_tokens is None else int(max_tokens)
    if not 1 <= max_num <= context:
        raise InputError(f"--max-tokens {max_num} must be between 1 and the model's KV cache length {context}",
                         path=mdir / "model.json")
    tok = find_tokenizer(mdir, tokenizer)
    vocab = decode.outputs["logits"].shape[-1]
    warnings = []
    if tok.vocab_size > vocab:
        raise InputError(f"the tokenizer has {tok.vocab_size} tokens but the model's logits have {vocab}",
                         path=tok.tokenizer_json, fix="pass the model's own tokenizer with --tokenizer")
    if tok.vocab_size < vocab:
        warnings.append(f"tokenizer has {tok.vocab_size} tokens, the model {vocab} (ids ≥ {tok.vocab_size} "
                        "cannot be detokenized)")
    if kv[0].dtype not in ("float32", "int8"):
        raise InputError(f"KV cache dtype {kv[0].dtype}: LiteRT-LM's CPU engine loads it but its output is not "
                         "faithful (LITERTLM_GEMMA4.md §7)", path=mdir / "model.json",
                         fix="re-convert with kv_cache bits 8 (int8, per-tensor scale) or 32")
    return _Facts(tok, kv, context, max_num, vocab, warnings)


def _sections(sdir: Path, mdir: Path, tok, llm_msg, exe_msg, infos: dict,
              recorded: dict) -> tuple[list, list[str]]:
    """The bundle's sections in order as [(SectionSource, source name)] (metadata staged in
    ``sdir``) and their sha256s; a model file whose sha256 differs from conversion.json's is refused."""
    raw_tok = tok.tokenizer_json.read_bytes()
    sources = [
        (ct.SectionSource("llm_metadata", _stage(sdir, "llm_metadata.pb", llm_msg.SerializeToString())),
         "generated"),
        (ct.SectionSource("executor_metadata", _stage(sdir, "executor_metadata.pb", exe_msg.SerializeToString())),
         "generated"),
        (ct.SectionSource("hf_tokenizer", _stage(sdir, "tokenizer.zlib", len(raw_tok).to_bytes(8, "little")
                                                 + zlib.compress(raw_tok))), tok.tokenizer_json.name),
    ]
    for stem, model_type, _ in MODEL_FILES:
        if stem in infos:
            sources.append((ct.SectionSource("tflite", infos[stem].path, model_type), infos[stem].path.name))
    hashes = []
    for src, name in sources:
        h = sha256_file(src.path)
        if name in recorded and recorded[name] != h:
            raise InputError(f"{name} does not match the sha256 conversion.json records (changed since "
                             "conversion?)", path=mdir / name, fix="re-run `edge-sdk convert`")
        hashes.append(h)
    return sources, hashes


def _model_block(m: _Facts, facts, meta: ModelInfo, pd) -> dict:
    """The manifest's ``model``: what LiteRT-LM is told and the KV cache it will hold."""
    kv, context = m.kv, m.context
    return {"llm_model_type": "gemma4", "vocab_size": m.vocab, "context": context,
            "max_num_tokens": m.max_num, "prefill_lengths": _prefill_lengths(pd.signatures),
            "kv_cache": {"dtype": kv[0].dtype, "layers": sorted({b.layer for b in kv}),
                         "buffers": len(kv), "sequence_axes": {"k": 2, "v": 3},
                         "ring_slots": {b.name: b.max_length for b in kv if b.max_length < context} or None,
                         "scales": {b.name: b.scale for b in kv if b.scale is not None} or None},
            "bos_token_id": facts.bos_id, "stop_token_ids": list(facts.stop_ids),
            "stop_strings": list(facts.stop_strings), "has_chat_template": facts.chat_template,
            "text_only": meta.text_only}


def _lay_out(manifest: dict, sources: list, hashes: list[str]) -> None:
    """Set ``manifest['sections']`` and the bundle's size: the offsets live in the header they
    position, so iterate to a fixed point."""
    sections = [s for s, _ in sources]
    layout = None
    for _ in range(4):
        entries = {"Authors": "edge-sdk", MANIFEST_KEY: dumps(manifest)}
        new = ct.plan_layout(entries, sections)
        if new == layout:
            return
        layout = new
        manifest["bundle"]["bytes"] = layout[-1][1]
        manifest["sections"] = [
            {"index": i, "type": ct.type_name(s.kind), "model_type": s.model_type,
             "source": name, "begin": b, "end": e, "bytes": e - b, "sha256": h}
            for i, ((s, name), (b, e), h) in enumerate(zip(sources, layout, hashes))]
    raise RuntimeError("bundle layout did not converge")


def _write_container(out: Path, text: str, sections: list, manifest: dict, verify: bool) -> None:
    """Write the .litertlm beside ``out``, check it against the manifest, then rename it into place
    (nothing is left behind on failure). Its UUID is derived from the manifest: same input, same bytes."""
    bundle_uuid = str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, "edge-sdk:" + hashlib.sha256(text.encode()).hexdigest()))
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w+b") as f:
            written = ct.write_container(f, {"Authors": "edge-sdk", MANIFEST_KEY: text}, sections,
                                         uuid=bundle_uuid)
            f.flush()
            os.fsync(f.fileno())
        _check_written(Path(tmp), written, manifest, verify)
        ct.publish_mode(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def kv_adaptations(kv: KvLayout) -> list[dict]:
    """Where the model departs from its recipe so that LiteRT-LM can run it (the KV layout
    model.json records: the recipe's request beside the buffers' emitted scales)."""
    emitted = kv.buffers[0].scale_granularity if kv.buffers else None
    if kv.requested_granularity and emitted and kv.requested_granularity != emitted:
        return [{"part": "kv_cache", "requested": f"int{kv.requested_bits} per-{kv.requested_granularity} scales",
                 "bundled": f"{kv.dtype} {emitted} scale per cache buffer",
                 "why": "LiteRT-LM carries each KV cache as one state buffer; per-(token, head) scales would "
                        "need extra state buffers the engine does not know"}]
    return []


def _check_written(path: Path, written: list[ct.SectionInfo], manifest: dict, verify: bool) -> None:
    """The file is what the manifest says: offsets, model types, size and (``verify``) sha256s."""
    want = manifest["sections"]
    got = [(s.begin, s.end, s.model_type) for s in written]
    if got != [(s["begin"], s["end"], s["model_type"]) for s in want]:
        raise RuntimeError(f"bundle layout differs from the planned one: {got}")
    if path.stat().st_size != manifest["bundle"]["bytes"]:
        raise RuntimeError("bundle size differs from the planned one")
    if verify:
        for s in want:
            if sha256_file(path, s["begin"], s["end"]) != s["sha256"]:
                raise RuntimeError(f"section {s['index']} bytes differ from their source after writing")

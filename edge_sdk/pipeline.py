"""Composes the stages; the only module that knows all of them (the CLI calls these)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from . import options as O
from . import progress as P
from .artefacts import ConversionRecord, ModelInfo, PlanRecord
from .budget import Budget
from .checkpoint import open_checkpoint
from .errors import InputError, install_fix
from .outputs import check_replaceable_dir, is_nonempty_dir
from .quant.memory import MemoryEstimate, estimate_memory
from .quant.plan import QuantPlan, make_plan
from .quant.presets import load_recipe
from .quant.source import Source, open_source
from .gemma4 import spec_from_config


@dataclass(frozen=True)
class PlanReport:
    source: Source
    plan: QuantPlan
    memory: MemoryEstimate
    text_only: bool
    budget: Budget | None   # checked against the planner's peak estimate

    def to_text(self) -> str:
        from .units import fmt_bytes, fmt_count

        mem, plan = self.memory, self.plan
        lines = [f"{self.source.path}: recipe '{plan.recipe.name}', context {mem.context}, "
                 f"prefill chunk {mem.prefill}{', text-only' if self.text_only else ''}",
                 f"  {'component':<13}{'params':>10}{'bits/w':>8}{'bytes':>11}  where"]
        for comp, row in plan.ledger().items():
            where = "mapped" if row["mapped_bytes"] and not row["resident_bytes"] else "resident"
            if row["mapped_bytes"] and row["resident_bytes"]:   # e.g. moe: the router resident, experts mapped
                where = f"{fmt_bytes(row['mapped_bytes'])} mapped, rest resident"
            lines.append(f"  {comp:<13}{fmt_count(row['params']):>10}{row['bits_per_weight']:>8.2f}"
                         f"{fmt_bytes(row['bytes']):>11}  {where}")
        kv = mem.kv
        kv_name = "float32" if kv.dtype == "float32" else "int8/per-tensor"
        lines += [
            f"  resident weights          {fmt_bytes(mem.resident_bytes):>11}",
            f"  mapped on demand          {fmt_bytes(mem.mapped_bytes):>11}  (only looked-up rows count)",
            f"  mapped rows touched       {fmt_bytes(mem.mapped_touched_bytes):>11}  "
            f"({mem.distinct_tokens} distinct tokens; all {mem.context} distinct: "
            f"{fmt_bytes(mem.mapped_touched_worst_bytes)})",
            f"  KV cache ({kv_name})  {fmt_bytes(mem.kv_cache_bytes):>11}  "
            f"({len(mem.kv_by_layer)} KV layers, {len(kv.buffers)} buffers; {kv.describe()})",
            f"  activation arena          {fmt_bytes(mem.activation_bytes):>11}  (estimate)",
            f"  runtime ({mem.runtime}){'':<{max(0, 15 - len(mem.runtime))}}{fmt_bytes(mem.runtime_bytes):>11}  "
            f"KV copies {fmt_bytes(mem.kv_extra_copy_bytes)}, float KV reads {fmt_bytes(mem.kv_read_bytes)}, "
            f"quant metadata {fmt_bytes(mem.quant_metadata_bytes)}, model head {fmt_bytes(mem.model_head_bytes)}, "
            f"fixed {fmt_bytes(mem.runtime_fixed_bytes)} (measured)",
            f"  peak estimate             {fmt_bytes(mem.peak_bytes):>11}  (worst case {fmt_bytes(mem.peak_worst_bytes)})",
        ]
        if kv.adaptation:
            lines.append(f"  note: {kv.adaptation}")
        if self.budget is not None:
            verdict = "fits" if self.budget.check(mem.peak_bytes).passed else "DOES NOT FIT"
            lines.append(f"  budget                    {fmt_bytes(self.budget.bytes):>11}  {verdict}")
        inv = self.source.inventory
        lines.append(f"  checkpoint params {fmt_count(inv.total.params)}; kept "
                     f"{fmt_count((inv.kept if self.text_only else inv.total).params)}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        inv, mem = self.source.inventory, self.memory
        kept = inv.kept if self.text_only else inv.total
        by_comp = {k: v.params for k, v in inv.by_component.items()}
        return {
            "source": str(self.source.path),
            "recipe": self.plan.recipe.name,
            "text_only": self.text_only,
            "context": mem.context,
            "prefill": mem.prefill,
            "params": {"total": inv.total.params, "kept": kept.params, "by_component": by_comp,
                       "from_weights": inv.from_weights},
            "bytes": {"resident": mem.resident_bytes, "mapped": mem.mapped_bytes,
                      "mapped_touched": mem.mapped_touched_bytes, "kv_cache": mem.kv_cache_bytes,
                      "activations": mem.activation_bytes, "runtime": mem.runtime_bytes,
                      "runtime_terms": {"kv_extra_copies": mem.kv_extra_copy_bytes, "kv_read": mem.kv_read_bytes,
                                        "quant_metadata": mem.quant_metadata_bytes,
                                        "model_head": mem.model_head_bytes, "fixed": mem.runtime_fixed_bytes},
                      "peak_estimate": mem.peak_bytes,
                      "peak_worst_case": mem.peak_worst_bytes},
            "distinct_tokens": mem.distinct_tokens, "runtime": mem.runtime,
            "components": self.plan.ledger(),
            "kv_cache": {"bits": self.plan.kv_cache.bits, "by_layer": dict(mem.kv_by_layer),
                         "layout": mem.kv.to_json()},
            "budget": {"limit": None if self.budget is None else self.budget.bytes,
                       "fits": None if self.budget is None else self.budget.check(mem.peak_bytes).passed},
            "tensors": [t.to_json() for t in self.plan.tensors],
        }


def plan_model(source: str | Path, *, recipe: str | Path = O.RECIPE, text_only: bool = False,
               context: int = O.PLAN_CONTEXT, prefill: int = O.PREFILL, budget: str | int | None = None,
               distinct_tokens: int | None = None, runtime: str = O.PLAN_RUNTIME) -> PlanReport:
    if context < 1 or prefill < 1:
        raise InputError(f"context ({context}) and prefill ({prefill}) must be positive")
    from .quant.kv_layout import decode_span_lengths

    src = open_source(source)
    plan = make_plan(src.spec, load_recipe(recipe), scale_sources=src.scale_sources)
    try:
        mem = estimate_memory(plan, context, prefill, distinct_tokens=distinct_tokens, runtime=runtime,
                              decode_spans=decode_span_lengths(context, O.DECODE_SPANS))
    except ValueError as e:
        raise InputError(str(e), fix="use --runtime litert-lm or edge_sdk") from None
    return PlanReport(src, plan, mem, text_only, Budget.parse(budget))


def converted_plan(model_dir: str | Path):
    """(QuantPlan, KvLayout) of a converted model, from its own files: plan.json's rows and
    ``source_config`` (``quant.plan.plan_from_rows``), conversion.json's recipe, and the KV layout
    model.json records. The source checkpoint need not exist. InputError (one line: the file, what
    it lacks, the fix) when a file is missing or was written by an older edge-sdk."""
    from .quant.kv_layout import model_kv_layout
    from .quant.plan import plan_from_rows
    from .quant.recipe import recipe_from_dict

    mdir = Path(model_dir)
    meta, conv, rec = ModelInfo.read(mdir), ConversionRecord.read(mdir), PlanRecord.read(mdir)
    spec = spec_from_config(rec.require_source_config(mdir), source=mdir / PlanRecord.FILE)
    recipe = recipe_from_dict(conv.recipe, source=mdir / ConversionRecord.FILE)
    return plan_from_rows(spec, recipe, rec.tensors, source=mdir / PlanRecord.FILE), model_kv_layout(meta, mdir)


def planned_memory(model_dir: str | Path, context: int, distinct_tokens: int, runtime: str | None = None) -> dict:
    """The planner's figures for a converted model, from its own files (``converted_plan``: the
    plan.json rows it was written with, the KV cache it carries) with ``distinct_tokens``
    looked-up rows. ``context`` is the evaluated context, recorded beside the model's. The figures
    are for ``runtime`` (default: LiteRT-LM, what an app runs); ``by_runtime`` gives the peak for
    each runtime the planner knows. InputError (one line with the fix) when the files cannot give
    them; ``planned_or_absent`` turns that into a reported absence."""
    from .quant.memory import DEFAULT_RUNTIME, RUNTIMES

    plan, kv = converted_plan(model_dir)
    kv_len, prefill = kv.context, kv.prefill
    sigs = ModelInfo.read(Path(model_dir)).signatures.get("prefill_decode", {})
    spans = tuple(sorted(int(k.split("_", 1)[1]) for k in sigs if k.startswith("decode_")))
    by = {rt: estimate_memory(plan, kv_len, prefill, distinct_tokens=distinct_tokens, kv=kv, runtime=rt,
                              decode_spans=spans) for rt in RUNTIMES}
    m = by[runtime or DEFAULT_RUNTIME]
    return {"context": kv_len, "evaluated_context": context, "prefill": m.prefill, "runtime": m.runtime,
            "distinct_tokens": m.distinct_tokens, "resident_bytes": m.resident_bytes,
            "mapped_bytes": m.mapped_bytes, "mapped_touched_bytes": m.mapped_touched_bytes,
            "kv_cache_bytes": m.kv_cache_bytes, "activation_bytes": m.activation_bytes,
            "kv_extra_copy_bytes": m.kv_extra_copy_bytes, "kv_read_bytes": m.kv_read_bytes,
            "quant_metadata_bytes": m.quant_metadata_bytes, "model_head_bytes": m.model_head_bytes,
            "runtime_fixed_bytes": m.runtime_fixed_bytes, "runtime_bytes": m.runtime_bytes,
            "model_bytes": m.model_bytes, "peak_bytes": m.peak_bytes,
            "by_runtime": {rt: e.peak_bytes for rt, e in by.items()}, "recipe": plan.recipe.name,
            "kv_sliding": "ring" if kv.ring_layers else "full-length"}


def planned_or_absent(model_dir: str | Path, context: int, distinct_tokens: int | None,
                      runtime: str | None = None) -> dict:
    """``planned_memory``, or ``{"absent": reason}`` where the planned figures only sit beside
    measured ones (validate, bundle): the reason (which file, what it lacks, the fix) goes into
    the report instead of failing the run or vanishing."""
    try:
        return planned_memory(model_dir, context, distinct_tokens, runtime)
    except InputError as e:
        return {"absent": str(e)}


RUNTIMES = ("both", "litert-lm", "edge_sdk")


def _engine_bundle(model_dir: Path, bundle: str | Path | None, scratch: Path) -> tuple[Path, list]:
    """The .litertlm that LiteRT-LM measures (``bundle``, or one packed from ``model_dir`` into
    ``scratch``) and its sections as [[begin, end, name], ...]. InputError when none can be had."""
    from .bundle.container import read_header

    if bundle is not None:
        path = Path(bundle)
        if not path.is_file():
            raise InputError("no such bundle", path=path, fix="pass the .litertlm written by `edge-sdk bundle`")
    else:
        path = scratch / "model.litertlm"
        with P.stage("packing a .litertlm for LiteRT-LM"):
            bundle_model(model_dir, path)
    _, _, sections = read_header(path)
    return path, [[x.begin, x.end, x.model_type or x.data_type] for x in sections]


def bundle_context(path: str | Path) -> int:
    """LiteRT-LM's ``max_num_tokens`` recorded in a .litertlm's LlmMetadata."""
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    from .bundle.container import read_header
    _, _, sections = read_header(path)
    meta = next((x for x in sections if x.data_type == "LlmMetadataProto"), None)
    if meta is None:
        raise InputError("the bundle has no LlmMetadata section", path=path)
    with open(path, "rb") as f:
        f.seek(meta.begin)
        msg = llm_metadata_pb2.LlmMetadata.FromString(f.read(meta.end - meta.begin))
    if msg.max_num_tokens <= 0:
        raise InputError("the bundle's LlmMetadata has no max_num_tokens", path=path, fix="pass --context N")
    return int(msg.max_num_tokens)


def validate_model(model_dir: str | Path, *, reference: str | Path | None = None, text: str | Path | None = None,
                   tokens: str | Path | None = None, budget: str | int | None = None, context: int | None = None,
                   report: str | Path | None = None, threads: int | None = O.THREADS, backend: str = O.BACKEND,
                   api: str = O.VALIDATE_API, max_kld: float = O.MAX_KLD, min_top1: float = O.MIN_TOP1,
                   quality: bool = True, max_tokens: int | None = None, runs: int = O.SPEED_RUNS,
                   decode_tokens: int = O.DECODE_TOKENS, strict_backend: bool = False, device: str | None = None,
                   runner_binary: str | Path | None = None, runtime: str = O.VALIDATE_RUNTIME,
                   bundle: str | Path | None = None, warm: bool = not O.COLD, first_run: bool = O.FIRST_RUN,
                   keep_logits: bool = False, profile: bool = False):
    """Run a converted model (or a ``.litertlm``) and judge memory, speed and quality
    (``edge_sdk.validate.validator.validate``, its options as keyword arguments: the CLI's flags);
    returns its ``ValidationReport``.

    Memory is measured cold (the files evicted from the page cache; ``warm`` skips it), on the
    first run (weight cache built) and the steady state (``first_run=False``: steady only), in
    LiteRT-LM's engine (``runtime`` "both" or "litert-lm": the ``bundle`` given, or one packed
    from ``model_dir`` for the measurement) and in our runner ("both" or "edge_sdk"; quality
    always comes from our runner's logits). A ``.litertlm`` alone is measured in LiteRT-LM only.
    The logits (``logits.npy``, ``reference_logits.npy``) stay in ``report`` only with ``keep_logits``.
    With ``device`` (serial or "auto") our runner runs on an adb device
    (``device.remote.DeviceRunner``) instead."""
    from .validate.validator import ValidateOptions, validate_bundle

    if runtime not in RUNTIMES:
        raise InputError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    src = Path(model_dir)
    if src.suffix == ".litertlm":
        if not src.is_file():
            raise InputError("no such bundle", path=src)
        return validate_bundle(src, context=context or bundle_context(src), budget=budget, report=report,
                               threads=threads, decode_tokens=decode_tokens, cold=not warm, first_run=first_run,
                               sections=_engine_bundle(src, src, src.parent)[1])
    opts = ValidateOptions(reference=reference, text=text, tokens=tokens, context=context, max_tokens=max_tokens,
                           quality=quality, backend=backend, api=api, threads=threads, runs=runs,
                           decode_tokens=decode_tokens, cold=not warm, first_run=first_run, budget=budget,
                           max_kld=max_kld, min_top1=min_top1, strict_backend=strict_backend,
                           keep_logits=keep_logits, profile=profile)
    return _validate_converted(src, opts, report=report, device=device, runner_binary=runner_binary,
                               runtime=runtime, bundle=bundle)


def _validate_converted(src: Path, opts, *, report, device: str | None, runner_binary, runtime: str, bundle):
    """``validate_model`` for a converted model directory: on the host (with a bundle packed for
    LiteRT-LM when ``runtime`` asks for it) or an adb ``device``."""
    import tempfile

    from .validate.validator import validate

    executor, target = None, "host"
    if device is not None:
        from .device.adb import AdbSession
        from .validate.remote import device_runner

        session = AdbSession()
        target = session.pick_device(device)
        executor = device_runner(session, target, runner_binary=runner_binary)
    with tempfile.TemporaryDirectory(prefix="edge-sdk-bundle-") as scratch:
        engine, sections, notes = None, None, []
        if executor is None and runtime in ("both", "litert-lm"):
            try:
                engine, sections = _engine_bundle(src, bundle, Path(scratch))
            except (InputError, ImportError) as e:
                if runtime == "litert-lm" or bundle is not None:
                    raise
                notes.append(f"LiteRT-LM not measured: no bundle could be packed for it ({e}); pass --bundle "
                             "FILE.litertlm (edge-sdk bundle) to measure the runtime the app uses")
        return validate(src, opts, report=report, target=target, executor=executor, bundle=engine,
                        plan_memory=lambda ctx, distinct: planned_or_absent(src, ctx, distinct),
                        bundle_sections=sections, ours=runtime != "litert-lm" or opts.quality, notes=tuple(notes))


def validate_all_devices(model_dir: str | Path, *, report: str | Path, **kwargs) -> list[dict]:
    """``validate_model`` on every connected adb device at once (one thread each), one report per
    device under ``report/<serial>/``; writes ``report/summary.json`` and returns its rows."""
    import json
    import threading

    from .errors import DeviceError, EdgeSdkError
    from .device.adb import AdbSession
    from .device.remote import sanitize

    serials = [d.serial for d in AdbSession().list_devices() if d.state == "device"]
    if not serials:
        raise DeviceError("no adb device is connected", fix="`adb devices` must list at least one device")
    root = Path(report)
    root.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}

    def one(serial: str) -> None:
        out = root / sanitize(serial)
        try:
            rep = validate_model(model_dir, device=serial, report=out, **kwargs)
            j = rep.to_json()
            q = j.get("quality") or {}
            rows[serial] = {"serial": serial, "verdict": j["verdict"], "report": str(out / "report.json"),
                            "model_peak_bytes": j["memory"].get("model_peak_bytes"),
                            "peak_rss_bytes": j["memory"].get("peak_rss_bytes"),
                            "decode_tokens_per_s": j["speed"].get("decode_tokens_per_s"),
                            "ppl": q.get("ppl"), "kld_mean": q.get("kld_mean"),
                            "top1_agreement": q.get("top1_agreement"), "reasons": list(rep.reasons), "error": None}
        except EdgeSdkError as e:
            rows[serial] = {"serial": serial, "verdict": "error", "report": None, "error": str(e)}

    threads = [threading.Thread(target=one, args=(s,), name=f"validate-{s}") for s in serials]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary = [rows[s] for s in serials]
    (root / "summary.json").write_text(json.dumps({"model_dir": str(model_dir), "devices": summary}, indent=1))
    return summary


def convert(source: str | Path, out_dir: str | Path, *, recipe: str | Path = O.RECIPE, text_only: bool = False,
            context: int = O.CONVERT_CONTEXT, prefill: int = O.PREFILL, score: bool = True, overwrite: bool = False,
            progress: bool | None = None, decode_spans: int = O.DECODE_SPANS):
    """Checkpoint → converted model directory (``edge_sdk.litert.export``); returns its
    ``ConversionResult``. Towers (vision/audio) cannot be converted: ``text_only`` is required
    for a checkpoint that has them."""
    from .litert.export import export_model

    out = Path(out_dir)
    if overwrite and is_nonempty_dir(out):
        check_replaceable_dir(out, sources=[source])   # before the work: only our own output is replaced
    with P.stage("reading the checkpoint and planning") if progress is not False else nullcontext():
        src, plan = _open_and_plan(source, recipe, text_only)
    return export_model(open_checkpoint(src.path), src.spec, src.binding, plan, out_dir, text_only=text_only,
                        context=context, prefill=prefill, score=score, overwrite=overwrite, progress=progress,
                        decode_spans=decode_spans)


def _open_and_plan(source: str | Path, recipe: str | Path, text_only: bool) -> tuple[Source, QuantPlan]:
    src = open_source(source)
    if src.binding is None:
        raise InputError("no weights here: convert needs a checkpoint directory (config.json + *.safetensors)",
                         path=src.path)
    towers = [t.name for t in src.spec.towers] or [k for k, v in src.binding.towers.items() if v]
    if towers and not text_only:
        raise InputError(f"the checkpoint has {' and '.join(towers)} towers, which cannot be converted to LiteRT",
                         path=src.path, fix="pass --text-only to convert the text decoder alone")
    return src, make_plan(src.spec, load_recipe(recipe), scale_sources=src.scale_sources)


def bundle_model(model_dir: str | Path, out_file: str | Path, *, tokenizer: str | Path | None = None,
                 max_tokens: int | None = None, android: str | Path | None = None, overwrite: bool = False):
    """Converted model directory → ``.litertlm`` + ``<bundle>.manifest.json`` (``edge_sdk.bundle``),
    with the planner's peak memory at the model's context from the model's own plan.json (absent,
    with the reason in the manifest, for a model converted before plan.json version 2); returns
    the ``BundleReport``."""
    try:
        from .bundle import bundle
    except ImportError as e:
        raise InputError(f"bundling needs LiteRT-LM's builder ({e.name or e} is not installed)",
                         fix=install_fix("bundle")) from None

    meta, planned = ModelInfo.read_optional(model_dir), None   # no model.json: bundle() says what is wrong
    if meta is not None:
        with P.stage("planned memory from the model's plan.json"):
            planned = planned_or_absent(model_dir, meta.context, None)
    with P.stage(f"writing {Path(out_file).name} (sections, sha256, manifest)"):
        return bundle(model_dir, out_file, tokenizer=tokenizer, max_tokens=max_tokens, android=android,
                      planned=planned, overwrite=overwrite)

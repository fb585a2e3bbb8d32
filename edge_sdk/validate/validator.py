"""Validate a converted model on the host interpreter: memory against the budget, speed, quality.

``validate(model_dir, ...)`` spawns ``edge_sdk.validate.runner`` as a fresh child process (so the
memory figures are that process alone), reads its result and logits, runs the float reference for
the same tokens, and returns a ``ValidationReport`` with the verdict.

Gates (each failure is one line in ``reasons``; any failure → exit 1):
- **budget** on the model's share of peak RSS, ``model_peak_bytes = VmHWM − baseline RSS`` (the
  baseline is the runner's RSS after its imports, before loading: the Python interpreter, NumPy and
  the LiteRT libraries, which the app's own runtime replaces). The whole-process peak is reported
  beside it.
- **sanity**: any non-finite logit, any constant logit row, or every row identical (a model that
  ignores its input, e.g. INT2-blockwise weights that the builtin kernels turn into zeros).
- **quality** (unless ``quality=False``): ``kld_mean <= max_kld`` and ``top1_agreement >= min_top1``.
- **kernels**: XNNPACK requested but the runtime reports builtin kernels (or a fallback) → warning
  by default (the numbers are then not the numbers of the requested path), a failure with
  ``strict_backend``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .. import options as O
from .. import progress as P
from ..artefacts import ConversionRecord, ModelInfo
from ..budget import Budget, check
from ..errors import EdgeSdkError, InputError
from ..litert.export import verify_files
from ..units import fmt_bytes
from . import memory_runs as M
from . import quality as Q
from .report import ValidationReport, scratch_dir

RUNNER_TIMEOUT_S = 3600.0


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise InputError(f"not valid JSON: {e}", path=path) from None


def model_info(model_dir: Path) -> ModelInfo:
    """The model's ``model.json`` (``ModelInfo``: one line with the fix when it is missing or older)."""
    if not Path(model_dir).is_dir():
        raise InputError("no such model directory", path=model_dir,
                         fix="pass the OUT_DIR written by `edge-sdk convert`")
    return ModelInfo.read(model_dir)


def model_meta(model_dir: Path) -> dict:
    """``model_info`` as the dict in the file (for scripts that index it)."""
    return model_info(model_dir).to_json()


def load_token_file(path: str | Path) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise InputError("no such token file", path=p)
    if p.suffix == ".npy":
        return np.load(p).astype(np.int32).reshape(-1)
    data = json.loads(p.read_text())
    data = data.get("ids", data.get("windows")) if isinstance(data, dict) else data
    return np.asarray(data, dtype=np.int32).reshape(-1)


def eval_tokens(model_dir: Path, meta: ModelInfo | dict, *, text, tokens,
                want_text: bool) -> tuple[np.ndarray | None, str]:
    """The token stream to evaluate on, and a description of where it came from."""
    meta = meta if isinstance(meta, ModelInfo) else ModelInfo.from_json(meta, path=Path(model_dir) / "model.json")
    if tokens is not None:
        return load_token_file(tokens), f"token ids from {tokens}"
    tok = Q.load_tokenizer(model_dir)
    if tok is None:
        if want_text:
            raise InputError("the model has no tokenizer.json to tokenize the evaluation text",
                             path=model_dir, fix="pass --tokens IDS.npy, or --no-quality")
        return None, "synthetic"
    bos, eos = meta.bos_token_id, meta.first_eos
    if text is not None:
        p = Path(text)
        if not p.is_file():
            raise InputError("no such text file", path=p)
        return Q.token_stream(tok, [p.read_text()], bos, None), str(p)
    split = Q.find_split(ConversionRecord.read_optional(model_dir))
    where = f"held-out split {split}" if split else "held-out pydoc_data.topics (every tenth topic)"
    return Q.token_stream(tok, Q.heldout_texts(split), bos, eos), where


def synthetic_window(length: int, vocab: int, context: int, seed: int = 0) -> np.ndarray:
    """Random ids drawn from ``context // 4`` distinct tokens (the planner's distinct-token ratio)."""
    rng = np.random.default_rng(seed)
    pool = rng.choice(vocab, size=max(1, min(vocab, context // 4)), replace=False)
    return pool[rng.integers(0, len(pool), size=length)].astype(np.int32)


def run_runner(model_dir: Path, windows: list[np.ndarray], work: Path, *, logits: bool, backend: str,
               api: str, threads: int | None, runs: int, prompt_tokens: int, decode_tokens: int,
               timeout: float = RUNNER_TIMEOUT_S, keep_log: bool = True, executor=None, cold: bool = False,
               cache_dir: Path | None = None, tag: str = "") -> dict:
    """Spawn the runner child process; its result dict (raises EdgeSdkError when it fails).
    With ``executor`` (``remote.DeviceRunner``) the runner runs on an adb device instead.
    ``cold``: the child evicts the model's files (and weight cache) from the page cache first;
    ``cache_dir``: where its XNNPACK weight cache lives; ``tag`` names its result and log files."""
    ids = work / f"ids{tag}.json"
    ids.write_text(json.dumps({"windows": [w.tolist() for w in windows]}))
    if executor is not None:
        opts = ["--backend", backend, "--api", api, "--runs", str(runs), "--prompt-tokens", str(prompt_tokens),
                "--decode-tokens", str(decode_tokens)] + ([] if threads is None else ["--threads", str(threads)])
        return executor(model_dir, ids, work, opts + (["--cold"] if cold else []), logits=logits, timeout=timeout)
    out = work / f"runner_result{tag}.json"
    cmd = [sys.executable, "-m", "edge_sdk.validate.runner", "--model", str(model_dir), "--ids-file", str(ids),
           "--out", str(out), "--backend", backend, "--api", api, "--runs", str(runs),
           "--prompt-tokens", str(prompt_tokens), "--decode-tokens", str(decode_tokens)]
    if cold:
        cmd.append("--cold")
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    if logits:
        cmd += ["--logits", str(work / "logits.npy")]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    log = work / f"runner{tag}.log"
    what = {"_first": "first run, builds the weight cache", "_steady": "steady state", "_only": "memory and speed",
            "": "every position's logits, for quality"}.get(tag, tag.strip("_"))
    return M.spawn(cmd, out, log, label=f"our runner ({what}{', cold' if cold else ''})", timeout=timeout,
                   path=model_dir, failed="the runner failed",
                   fix=f"see {log}" if keep_log else "rerun with --report DIR to keep the runner's log")



def kernel_report(requested: str, api: str, threads: int | None, r: dict) -> tuple[str, dict, list[str]]:
    """(backend that ran, kernels dict, unexpected-fallback messages) from the runner's census of
    each interpreter's primary subgraph (which ops the XNNPACK delegate took) and the runtime's
    ``backend_info``. Expected on builtin kernels under XNNPACK: lookups, casts, cache updates and
    other cheap glue; unexpected: a FULLY_CONNECTED / BATCH_MATMUL left out, or no delegate at all."""
    census = r.get("kernels") or {}
    fallbacks: list[str] = []
    ran = requested
    if census:
        delegated = sum(c.get("delegated_ops", 0) for c in census.values())
        heavy = {f"{m}:{op}": n for m, c in census.items() for op, n in (c.get("heavy_builtin") or {}).items()}
        if requested == "xnnpack":
            if delegated == 0:
                ran = "builtin"
                fallbacks.append("XNNPACK was requested but no op ran in the XNNPACK delegate: every op "
                                 "ran on the builtin kernels")
            elif heavy:
                fallbacks.append("XNNPACK was requested but these heavy ops ran on builtin kernels: "
                                 + ", ".join(f"{k} x{v}" for k, v in sorted(heavy.items())))
        elif delegated:
            ran = "xnnpack"
            fallbacks.append(f"builtin kernels were requested but {delegated} ops ran in the XNNPACK delegate")
    elif api == "interpreter":
        fallbacks.append("no kernel census from the runtime: which kernels ran is not verified")
    return ran, {"requested": requested, "ran": ran, "api": api, "threads": threads, "fallbacks": fallbacks,
                 "census": census, "census_scope": "primary subgraph (prefill) of each .tflite",
                 "backend_info": r.get("backend_info")}, fallbacks


def memory_figures(r: dict) -> dict:
    m = r["memory"]
    base, peak = m["baseline_rss_bytes"], m["peak_rss_bytes"]
    anon, file_ = m.get("rss_anon_at_peak_bytes") or 0, m.get("rss_file_at_peak_bytes") or 0
    return {
        "peak_rss_bytes": peak, "baseline_rss_bytes": base, "model_peak_bytes": peak - base,
        "rss_anon_bytes": anon, "rss_file_bytes": file_,
        "rss_shmem_bytes": m.get("rss_shmem_at_peak_bytes") or 0,
        "model_rss_anon_bytes": anon - (m.get("baseline_rss_anon_bytes") or 0),
        "model_rss_file_bytes": file_ - (m.get("baseline_rss_file_bytes") or 0),
        "model_rss_shmem_bytes": (m.get("rss_shmem_at_peak_bytes") or 0) - (m.get("baseline_rss_shmem_bytes") or 0),
        "ru_maxrss_bytes": m["ru_maxrss_bytes"], "sampled_peak_rss_bytes": m.get("sampled_peak_rss_bytes"),
        "after_load_rss_bytes": m.get("after_load_rss_bytes"), "peak_phase": m.get("peak_phase"),
        "samples": m.get("samples"), "sample_interval_s": m.get("sample_interval_s"),
        "page_size": r.get("page_size"), "units": "bytes (GB = 10^9)",
    }


def speed_figures(r: dict) -> dict:
    t = r.get("speed_run") or r["timing"]
    return {
        "prefill_tokens_per_s": t["prefill_tokens_per_s"]["median"],
        "decode_tokens_per_s": t["decode_tokens_per_s"]["median"],
        "time_to_first_token_s": t["time_to_first_token_s"]["median"],
        "prefill_spread": t["prefill_tokens_per_s"], "decode_spread": t["decode_tokens_per_s"],
        "time_to_first_token_spread": t["time_to_first_token_s"],
        "prompt_tokens": t["prompt_tokens"], "decode_tokens": t["decode_tokens"], "runs": t["runs"],
        "load_s": t["load_s"], "eval_prefill_tokens_per_s": t["eval"]["tokens_per_s"],
        "decode_at_context_tokens_per_s": t["fill_decode"]["tokens_per_s"], "prefill_chunk": t["chunk"],
    }


def sanity_reasons(r: dict) -> list[str]:
    lg = r["logits"]
    rows = lg["shape"][0]
    out = []
    if lg["nonfinite"]:
        out.append(f"{lg['nonfinite']} non-finite logits (NaN/inf): the model's arithmetic overflowed or "
                   "its weights/scales are broken")
    if lg["constant_rows"]:
        out.append(f"{lg['constant_rows']} of {rows} logit rows are constant (every vocabulary entry equal, "
                   f"max |logit| {lg['max_abs']:.3g}): the model produces no signal (e.g. all-zero weights)")
    elif rows > 1 and lg.get("rows_equal_to_first") == rows:
        out.append(f"all {rows} logit rows are identical: the output does not depend on the input")
    return out


@dataclass(frozen=True)
class ValidateOptions:
    """What ``validate`` evaluates, how it runs the model and how it judges it.
    ``pipeline.validate_model`` takes the same names as keyword arguments and the CLI's flags mirror
    them; every default is ``edge_sdk.options``'. ``budget`` may be given as text ('1GB'): it is read
    (``Budget.parse``) when the model has been checked."""

    # what is evaluated
    reference: str | Path | None = None   # the float checkpoint (default: from conversion.json)
    text: str | Path | None = None        # evaluation text (default: the held-out split)
    tokens: str | Path | None = None      # evaluation ids instead of text
    context: int | None = None            # tokens per window / KV fill (default: the model's context)
    max_tokens: int | None = None         # evaluate at most this many tokens
    quality: bool = True                  # compare against the float reference
    # how the model runs
    backend: str = O.BACKEND
    api: str = O.VALIDATE_API
    threads: int | None = O.THREADS
    runs: int = O.SPEED_RUNS
    prompt_tokens: int = O.PROMPT_TOKENS
    decode_tokens: int = O.DECODE_TOKENS
    cold: bool = O.COLD
    first_run: bool = O.FIRST_RUN
    # how it is judged
    budget: Budget | str | int | None = None
    max_kld: float = O.MAX_KLD
    min_top1: float = O.MIN_TOP1
    strict_backend: bool = False
    keep_logits: bool = False
    profile: bool = False   # also break one decode step down (edge_sdk.validate.profile; host only)


def _fill(windows: list[np.ndarray], length: int) -> np.ndarray:
    """``length`` ids from the evaluation windows, repeated as needed (a memory run fills the
    cache to the context with one window)."""
    stream = np.concatenate(windows)
    return np.tile(stream, math.ceil(length / max(1, len(stream))))[:length]


def _checked_model(mdir: Path, backend: str) -> ModelInfo:
    """``model.json``, after the files are verified and the kernels can run this model."""
    meta = model_info(mdir)
    if backend not in ("xnnpack", "builtin"):
        raise InputError(f"backend {backend!r} is not one of xnnpack, builtin")
    verify_files(mdir, meta.files)   # a bit-flipped model is refused here, not measured
    need = meta.requires_xnnpack
    if backend == "builtin" and need:
        tensors = list(need.get("tensors") or [])
        raise InputError(f"this model is right only on XNNPACK kernels: {need.get('reason', 'see model.json')} "
                         f"({len(tensors)} tensors, e.g. {tensors[0] if tensors else '?'})", path=mdir / "model.json",
                         fix="validate with --backend xnnpack (the default)")
    return meta


def _eval_context(mdir: Path, meta: ModelInfo, context: int | None) -> int:
    """The evaluated context: ``context`` or the model's (InputError past the model's)."""
    if context is not None and context < 2:
        raise InputError(f"--context {context}: a window needs at least 2 tokens", fix="use --context >= 2")
    model_ctx = meta.context
    ctx = context or model_ctx or 512
    if model_ctx is not None and ctx > model_ctx:
        raise InputError(f"--context {ctx} exceeds the model's context {model_ctx}", path=mdir / "model.json",
                         fix=f"use --context <= {model_ctx}, or convert with a longer context")
    return ctx


def _reference(mdir: Path, reference: str | Path | None) -> Path:
    """The float checkpoint quality is measured against: ``reference``, else conversion.json's."""
    ref_path = Path(reference) if reference else Q.default_reference(mdir, ConversionRecord.read_optional(mdir))
    if ref_path is None:
        raise InputError("no float reference checkpoint for the quality check", path=mdir,
                         fix="pass --reference CHECKPOINT (the float model), or --no-quality")
    return ref_path


def _windows(mdir: Path, meta: ModelInfo, opts: ValidateOptions, window: int,
             ctx: int) -> tuple[list[np.ndarray], str]:
    """The evaluation windows of ``window`` tokens and where their ids came from."""
    stream, source = eval_tokens(mdir, meta, text=opts.text, tokens=opts.tokens, want_text=opts.quality)
    if opts.quality:
        return Q.make_windows(stream, window, opts.max_tokens), source
    if stream is None:
        return ([synthetic_window(window, meta.vocab_size, ctx)],
                f"synthetic ids ({max(1, ctx // 4)} distinct, seed 0; no tokenizer or text)")
    return [np.tile(stream, math.ceil(window / max(1, len(stream))))[:window]], source


def _measure(mdir: Path, work: Path, windows: list[np.ndarray], window: int, opts: ValidateOptions, *,
             ctx: int, executor, bundle, bundle_sections, ours: bool, keep_log: bool) -> tuple[list, dict | None]:
    """The memory runs (ours: first run and steady state, or the only run; LiteRT-LM's engine)
    and the quality run: ([(MemoryRun, raw result)], the result whose logits are judged)."""
    runs_out: list = []
    common = dict(backend=opts.backend, api=opts.api, threads=opts.threads, prompt_tokens=opts.prompt_tokens,
                  decode_tokens=opts.decode_tokens, keep_log=keep_log)
    mem_window = windows[-1] if len(windows[-1]) == window else _fill(windows, window)
    cached = opts.api == "compiled" and opts.backend == "xnnpack"
    cache_dir = None   # on a device: its own MODEL/.xnnpack_cache beside the pushed model
    if executor is None and cached:
        cache_dir = work / "weight_cache"   # our scratch directory: the first run builds it here
        if opts.first_run and cache_dir.is_dir():
            for f in cache_dir.iterdir():
                f.unlink()
    states = (("first", "steady") if opts.first_run else ("steady",)) if cached else ("only",)
    if cached and not opts.first_run and ours:   # build the weight cache in a run that is not measured
        run_runner(mdir, [mem_window[:2]], work, logits=False, runs=0, tag="_warmup", executor=executor,
                   cache_dir=cache_dir, **dict(common, decode_tokens=1))
    for st in states if ours else ():
        rr = run_runner(mdir, [mem_window], work, logits=False, runs=1 if st == "first" else opts.runs,
                        cold=opts.cold, cache_dir=cache_dir, tag=f"_{st}", executor=executor, **common)
        runs_out.append((M.summarize(rr, "edge_sdk", rr.get("state") if cached else st), rr))
    r = runs_out[-1][1] if runs_out else None
    if opts.quality:   # every position's logits (the score signature): a run of its own, not measured
        r = run_runner(mdir, windows, work, logits=True, runs=1, cache_dir=cache_dir, tag="",
                       executor=executor, **common)
        if runs_out:
            r["speed_run"] = runs_out[-1][1]["timing"]
    if bundle is not None and executor is None:
        runs_out += M.engine_runs(Path(bundle), work, context=ctx, decode_tokens=opts.decode_tokens,
                                  threads=opts.threads, cold=opts.cold, first_run=opts.first_run,
                                  sections=bundle_sections)
    if not runs_out:
        raise InputError("nothing to measure: no runtime was selected", path=mdir)
    return runs_out, r


def gated_memory(runs_out: list) -> tuple[M.MemoryRun, dict, dict]:
    """The run the budget is checked against (the largest model share: the larger of the first
    run and the steady state, in either runtime), its raw result, and the report's memory figures."""
    gated, raw = max(runs_out, key=lambda x: x[0].model_peak_bytes)
    mem = memory_figures(raw)
    mem.update(gated_run=gated.label, runs=[m.to_json() for m, _ in runs_out])
    return gated, raw, mem


def quality_reasons(qual: dict, max_kld: float, min_top1: float) -> list[str]:
    """The quality gates' failure lines."""
    out = []
    if not qual["kld_mean"] <= max_kld:
        out.append(f"KL divergence vs the float reference: mean {qual['kld_mean']:.4f} > {max_kld} allowed "
                   f"(p99 {qual['kld_p99']:.3f}; PPL {qual['ppl']:.3f} vs reference {qual['ppl_reference']:.3f})")
    if not qual["top1_agreement"] >= min_top1:
        out.append(f"top-1 agreement with the float reference {qual['top1_agreement']:.1%} < {min_top1:.0%} required")
    return out


def _kernels(opts: ValidateOptions, r: dict | None, reasons: list[str], warnings: list[str]) -> tuple[str, dict]:
    """(backend that ran, the report's kernels); fallbacks go to ``reasons`` with ``strict_backend``,
    else to ``warnings``."""
    if r is None:
        return "litert-lm", {"requested": "litert-lm CPU", "ran": "litert-lm CPU", "api": "litert-lm",
                             "threads": opts.threads, "fallbacks": []}
    ran, kernels, fallbacks = kernel_report(opts.backend, opts.api, opts.threads, r)
    (reasons if opts.strict_backend else warnings).extend(fallbacks)
    return ran, kernels


def validate(model_dir: str | Path, opts: ValidateOptions = ValidateOptions(), *, report: str | Path | None = None,
             target: str = "host", plan_memory: Callable[[int, int], dict | None] | None = None, executor=None,
             bundle: str | Path | None = None, bundle_sections: list | None = None, ours: bool = True,
             notes: tuple[str, ...] = ()) -> ValidationReport:
    """Run ``model_dir`` in a child process and judge it (``opts``). ``plan_memory(context,
    distinct_tokens)`` (from the pipeline) gives the planner's figures for the report; ``report`` is
    a directory for report.json / report.md / memory.png (and the ids and raw runner results; the
    model's and the reference's logits .npy only with ``keep_logits``: vocab x positions x 4 bytes
    each). ``executor``: a ``DeviceRunner`` (adb); ``bundle``: the .litertlm LiteRT-LM measures;
    ``ours=False``: our runner only for quality."""
    mdir = Path(model_dir)
    meta = _checked_model(mdir, opts.backend)
    budget = Budget.parse(opts.budget)
    ctx = _eval_context(mdir, meta, opts.context)
    opts = replace(opts, decode_tokens=max(0, min(opts.decode_tokens, ctx - 2)))
    if executor is not None and getattr(executor, "kind", "python") == "benchmark_model":
        from .remote import benchmark_validate  # Android: no Python, no logits, no quality
        return benchmark_validate(executor, mdir, budget=budget, report=report, target=target, threads=opts.threads,
                                  backend=opts.backend, runs=opts.runs, context=ctx, plan_memory=plan_memory)
    window = ctx - opts.decode_tokens  # the last window + its decode steps fill the cache to the context
    ref_path = _reference(mdir, opts.reference) if opts.quality else None
    windows, source = _windows(mdir, meta, opts, window, ctx)
    with scratch_dir(report) as work:
        runs_out, r = _measure(mdir, work, windows, window, opts, ctx=ctx, executor=executor, bundle=bundle,
                               bundle_sections=bundle_sections, ours=ours, keep_log=report is not None)
        reasons, warnings = (sanity_reasons(r) if r else []), list(notes)
        ran, kernels = _kernels(opts, r, reasons, warnings)
        gated, gated_raw, mem = gated_memory(runs_out)
        qual = None
        if opts.quality:
            qual = _quality(work, windows, r, ref_path, opts.decode_tokens, report is not None and opts.keep_logits)
            if not opts.keep_logits:
                (work / "logits.npy").unlink(missing_ok=True)
            if not reasons:  # quality numbers of a model with NaN/constant logits say nothing more
                reasons += quality_reasons(qual, opts.max_kld, opts.min_top1)
        mp = mem["model_peak_bytes"]
        checked = check(budget, mp, run=gated.label, whole_process=mem["peak_rss_bytes"],
                        detail=f"{mp} bytes = VmHWM {fmt_bytes(mem['peak_rss_bytes'])} − baseline "
                               f"{fmt_bytes(mem['baseline_rss_bytes'])}")
        distinct = len(set(np.concatenate(windows).tolist()) | set((r or {}).get("generated", [])))
        speed = speed_figures(r) if r else dict(runs_out[-1][0].speed)
        speed["by_run"] = {m.label: m.speed for m, _ in runs_out}
        q = opts.quality
        prof = _profile(mdir, work, opts) if opts.profile and executor is None else None
        rep = ValidationReport.judged(
            checked, reasons, warnings, model_dir=str(mdir.resolve()), target=target, backend=ran, kernels=kernels,
            memory=mem, speed=speed, quality=qual, planned=plan_memory(ctx, distinct) if plan_memory else None,
            gates={"max_kld": opts.max_kld if q else None, "min_top1": opts.min_top1 if q else None,
                   "budget_bytes": checked.limit_bytes, "sanity": "finite, non-constant, input-dependent logits",
                   "strict_backend": opts.strict_backend},
            evaluation={"text": source, "reference": str(ref_path) if ref_path else None, "context": ctx,
                        "model_context": meta.context, "window_tokens": window, "windows": len(windows),
                        "tokens": int(sum(len(w) for w in windows)), "decode_tokens": opts.decode_tokens,
                        "distinct_tokens": distinct, "max_tokens": opts.max_tokens, "cold": opts.cold,
                        "memory_runs": [m.label for m, _ in runs_out], "bundle": str(bundle) if bundle else None,
                        "method": "chunked: non-overlapping windows, each from an empty cache"},
            runner=r or gated_raw, profile=prof)
        if report is not None:
            rep.save(work)
        return rep


def _profile(mdir: Path, work: Path, opts: ValidateOptions) -> dict:
    """``--profile``: edge_sdk.validate.profile in a child of its own, on the weight cache the runs built."""
    out = work / "decode_profile.json"
    cached = opts.api == "compiled" and opts.backend == "xnnpack"
    cmd = [sys.executable, "-m", "edge_sdk.validate.profile", "--model", str(mdir), "--out", str(out),
           "--api", opts.api, "--backend", opts.backend] + (["--threads", str(opts.threads)] if opts.threads else []) \
        + (["--cache-dir", str(work / "weight_cache")] if cached else [])
    return M.spawn(cmd, out, work / "decode_profile.log", label="profiling one decode step", timeout=3600,
                   path=mdir, failed="the decode profile failed", fix="run without --profile")


def validate_bundle(bundle: str | Path, *, context: int, budget: Budget | str | int | None = None,
                    report: str | Path | None = None, threads: int | None = O.THREADS,
                    decode_tokens: int = O.DECODE_TOKENS, cold: bool = O.COLD, first_run: bool = O.FIRST_RUN,
                    sections: list | None = None) -> ValidationReport:
    """A ``.litertlm`` alone (ours or anyone's): memory and speed in LiteRT-LM's engine, first run
    and steady state; no quality (the engine returns no logits)."""
    path = Path(bundle)
    budget = Budget.parse(budget)
    if context < 2:
        raise InputError(f"--context {context} is too small", path=path, fix="use --context >= 2")
    decode_tokens = max(1, min(decode_tokens, context - 1))
    with scratch_dir(report) as work:
        runs_out = M.engine_runs(path, work, context=context, decode_tokens=decode_tokens, threads=threads,
                                 cold=cold, first_run=first_run, sections=sections)
        gated, raw, mem = gated_memory(runs_out)
        checked = check(budget, gated.model_peak_bytes, run=gated.label, whole_process=gated.peak_rss_bytes)
        speed = dict(runs_out[-1][0].speed, by_run={m.label: m.speed for m, _ in runs_out})
        rep = ValidationReport.judged(
            checked, [],
            ["quality not measured: a .litertlm alone gives no logits (validate the converted model "
             "directory for PPL/KLD/top-1)"],
            model_dir=str(path.resolve()), target="host", backend="litert-lm CPU",
            kernels={"requested": "litert-lm CPU", "ran": "litert-lm CPU", "api": "litert-lm", "threads": threads,
                     "fallbacks": []},
            memory=mem, speed=speed, quality=None, planned=None,
            gates={"budget_bytes": checked.limit_bytes, "max_kld": None, "min_top1": None},
            evaluation={"context": context, "decode_tokens": decode_tokens, "cold": cold, "bundle": str(path),
                        "memory_runs": [m.label for m, _ in runs_out],
                        "text": "the engine's benchmark prompt", "method": "LiteRT-LM benchmark mode"},
            runner=raw)
        if report is not None:
            rep.save(work)
        return rep


def _quality(work: Path, windows: list[np.ndarray], r: dict, ref_path: Path, extra: int, keep: bool) -> dict:
    logits = np.load(work / "logits.npy", mmap_mode="r")
    targets, mask = Q.targets_and_mask(windows, extra_rows=extra)
    if logits.shape[0] != len(targets):
        raise EdgeSdkError(f"the runner wrote {logits.shape[0]} logit rows, expected {len(targets)}")
    n = int(sum(len(w) for w in windows))
    with P.stage(f"float reference logits ({n:,} positions, NumPy)"):
        ref = Q.reference_logits(ref_path, windows)
    if ref.shape[1] != logits.shape[1]:
        raise InputError(f"reference vocabulary {ref.shape[1]} differs from the model's {logits.shape[1]}",
                         path=ref_path, fix="pass the float checkpoint this model was converted from")
    if keep:
        np.save(work / "reference_logits.npy", ref)
    if r["logits"]["nonfinite"]:
        model = np.nan_to_num(np.asarray(logits[:n]), nan=0.0, posinf=1e30, neginf=-1e30)
    else:
        model = logits[:n]
    return Q.compare(ref, model, targets[:n], mask[:n], windows=len(windows)).to_json()

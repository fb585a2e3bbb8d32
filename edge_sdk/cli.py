"""The ``edge-sdk`` command. Flags mirror the stage functions' keyword arguments one to one.

Exit codes everywhere: 0 ok, 1 a check that ran and failed, 2 bad input or usage (one line on
stderr naming the file and, where relevant, the tensor; no traceback).

Conventions shared by every verb (``tests/test_cli_ux.py`` holds them):

- Quiet: LiteRT and LiteRT-LM log from native code straight to file descriptor 2 (accelerator
  registry, plugin loading, "Created TensorFlow Lite XNNPACK delegate") and neither honours
  ``TF_CPP_MIN_LOG_LEVEL``; ai-edge-litert does not export the C API's
  ``LiteRtSetMinLoggerSeverity``. So while a verb runs, fd 2 (inherited by child processes) points
  at a scratch file, and Python's ``sys.stderr`` (our messages, progress, the stats line, errors)
  at the real stderr. ``-v`` leaves fd 2 alone. A native crash still reaches the terminal
  (``faulthandler`` writes to the real stderr).
- Progress on stderr for every long step (``edge_sdk.progress``): a live bar on a terminal, one
  line per stage with its elapsed time otherwise.
- ``-o/--output`` is the output of every verb that writes one (convert: OUT_DIR, validate: the
  report directory, bundle: the .litertlm); every flag's help shows its default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from . import __version__, progress
from . import options as O
from .errors import EdgeSdkError

DEFAULT_PLAN_CONTEXT = O.PLAN_CONTEXT        # edge_sdk.options owns every default the flags show
DEFAULT_CONVERT_CONTEXT = O.CONVERT_CONTEXT

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str):
    """Register ``(add_args, run)`` for a subcommand; ``run`` returns the exit code."""

    def deco(fn):
        _COMMANDS[name] = (help, fn)
        return fn

    return deco


def _int_at_least(low: int):
    """argparse type: an integer >= ``low`` (one line, exit 2 otherwise)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"{n} must be at least {low}")
        return n
    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 2
        raise EdgeSdkError(f"{self.prog}: {message}")


class _Help(argparse.HelpFormatter):
    """Every flag's help ends with its default: ``(default: X)``, ``(default: off)`` for a switch;
    a flag whose default is not a plain value says it in words (the help already has 'default')."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if isinstance(action, argparse._StoreFalseAction):
            return f"{text} (default: on)"
        if action.default is not None:
            return f"{text} (default: %(default)s)"
        return text


def _versions() -> str:
    from importlib import metadata

    parts = []
    for dist in ("ai-edge-litert", "litert-lm-api"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return f"edge-sdk {__version__}" + (f" ({', '.join(parts)})" if parts else "")


@contextmanager
def quiet_native_logs(enabled: bool = True, restore: bool = True) -> Iterator[None]:
    """Keep the runtimes' native log lines (written to fd 2) off the terminal while the block runs;
    ``sys.stderr`` keeps writing to the real stderr. See the module docstring. ``restore=False``
    (the ``edge-sdk`` process itself) leaves fd 2 on the scratch file after the block: LiteRT's
    global environment logs again when it is destroyed at exit."""
    if not enabled:
        yield
        return
    import faulthandler
    import tempfile

    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    real_fd = os.dup(2)
    sink = tempfile.TemporaryFile(prefix="edge-sdk-runtime-log-")
    old_stderr = sys.stderr
    real = None
    try:
        is_fd2 = old_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):   # pytest's capsys: not a file descriptor
        is_fd2 = False
    if is_fd2:
        real = os.fdopen(os.dup(real_fd), "w", buffering=1, encoding=getattr(old_stderr, "encoding", None)
                         or "utf-8", errors="backslashreplace")
        sys.stderr = real
    own_fh = real is not None and not faulthandler.is_enabled()   # else whoever enabled it keeps it
    if own_fh:
        faulthandler.enable(file=real)
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        if restore:
            os.dup2(real_fd, 2)
            if own_fh:
                faulthandler.disable()
            os.close(real_fd)
            sys.stderr = old_stderr
            if real is not None:
                real.close()
            sink.close()


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


@command("inspect", "describe a checkpoint directory, a config.json, or a converted model")
def _inspect(sub: argparse.ArgumentParser | None = None, args: argparse.Namespace | None = None) -> int:
    if sub is not None:
        sub.add_argument("path", help="checkpoint directory, config.json, or converted model directory")
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return 0
    import struct

    from .errors import InputError
    from .inspect import inspect_path

    try:
        report = inspect_path(args.path)
    except (struct.error, IndexError, ValueError, TypeError) as e:   # a malformed flatbuffer or JSON
        raise InputError(f"cannot be read: truncated or malformed file ({type(e).__name__})", path=args.path,
                         fix="re-run `edge-sdk convert` (or restore the checkpoint's files)") from None
    if args.json:
        _print_json(report.to_json())
    else:
        print(report.to_text())
    return 0


@command("plan", "plan quantization and memory for a checkpoint or a bare config.json (no weights needed)")
def _plan(sub=None, args=None) -> int:
    if sub is not None:
        sub.add_argument("source", help="checkpoint directory or config.json")
        sub.add_argument("--recipe", default=O.RECIPE, help="preset (float, int8, int4, mobile) or recipe .json")
        sub.add_argument("--text-only", action="store_true", help="drop vision and audio towers")
        sub.add_argument("--context", type=int, default=None,
                         help=f"context length for the KV cache, tokens (default: {DEFAULT_PLAN_CONTEXT}, "
                              f"what a phone app is planned for; convert's default is {DEFAULT_CONVERT_CONTEXT})")
        sub.add_argument("--prefill", type=int, default=O.PREFILL, help="prefill chunk length (activation arena)")
        sub.add_argument("--distinct-tokens", type=int, default=None,
                         help="distinct tokens in the context (mapped rows touched) (default: context/4)")
        sub.add_argument("--budget", default=None,
                         help="memory budget, e.g. 1GB (10^9) or 900MiB (default: none, no fit verdict)")
        sub.add_argument("--runtime", default=O.PLAN_RUNTIME, choices=("litert-lm", "edge_sdk"),
                         help="whose additions to count: LiteRT-LM's engine (what an app runs) or our runner "
                              "(default: %(default)s)")
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return 0
    from .pipeline import plan_model

    context = DEFAULT_PLAN_CONTEXT if args.context is None else args.context
    report = plan_model(args.source, recipe=args.recipe, text_only=args.text_only, context=context,
                        prefill=args.prefill, budget=args.budget, distinct_tokens=args.distinct_tokens,
                        runtime=args.runtime)
    if args.json:
        _print_json(report.to_json())
    else:
        print(report.to_text())
        if args.context is None:
            print(f"  (context {context} is plan's default; --context N plans another, e.g. the "
                  f"{DEFAULT_CONVERT_CONTEXT} convert writes by default)")
    fits = report.to_json()["budget"]["fits"]
    return 1 if fits is False else 0


@command("validate", "run a converted model on the host interpreter: memory vs budget, speed, quality vs float")
def _validate(sub=None, args=None) -> int:
    if sub is not None:
        _validate_args(sub)
        return 0
    from .pipeline import validate_model

    kw = dict(reference=args.reference, text=args.text, tokens=args.tokens,
              budget=args.budget, context=args.context, threads=args.threads,
              backend=args.backend, api=args.api, max_kld=args.max_kld, min_top1=args.min_top1,
              quality=not args.no_quality, max_tokens=args.max_tokens, runs=args.runs,
              decode_tokens=args.decode_tokens, strict_backend=args.strict_backend, runner_binary=args.runner_binary,
              runtime=args.runtime, bundle=args.bundle, warm=args.warm, first_run=args.first_run,
              keep_logits=args.keep_logits, profile=args.profile)
    if args.device == "all":
        return _validate_all_devices(args, kw)
    rep = validate_model(args.model_dir, report=args.report, device=args.device, **kw)
    progress.flush()   # the stage lines before the result
    if args.json:
        _print_json(rep.to_json())
    else:
        print(rep.summary())
        if args.report:
            print(f"report: {args.report}/report.md")
    if not rep.passed:
        print("edge-sdk: validate: FAIL: " + "; ".join(rep.reasons), file=sys.stderr)
    return 0 if rep.passed else 1


def _validate_args(sub: argparse.ArgumentParser) -> None:
    """validate's flags: ``pipeline.validate_model``'s keyword arguments."""
    sub.add_argument("model_dir", help="converted model directory (edge-sdk convert OUT_DIR), or a .litertlm "
                                       "(then memory and speed in LiteRT-LM only)")
    sub.add_argument("--reference", default=None,
                     help="float checkpoint to compare against (default: the float sibling of a "
                          "'qat' source, else the source checkpoint in conversion.json)")
    sub.add_argument("--text", default=None, help="evaluation text file (default: tiny model's held-out split)")
    sub.add_argument("--tokens", default=None,
                     help="evaluation token ids (.npy or .json) instead of text (default: the --text)")
    sub.add_argument("--budget", default=None, help="memory budget for the model's share of peak RSS, "
                                                    "e.g. 1GB (10^9) or 900MiB (default: none, not gated)")
    sub.add_argument("--context", type=_positive_int, default=None,
                     help="tokens per evaluation window / KV fill (default: the model's context)")
    sub.add_argument("--max-tokens", type=_positive_int, default=None,
                     help="evaluate at most this many tokens (default: all of the text)")
    sub.add_argument("-o", "--output", "--report", dest="report", default=None, metavar="DIR",
                     help="directory for report.json, report.md, memory.png and the runs' logs "
                          "(default: none, a temporary directory)")
    sub.add_argument("--keep-logits", action="store_true",
                     help="also keep logits.npy and reference_logits.npy in the report directory "
                          "(positions x vocab x 4 bytes each: 165 MB for the tiny model, GBs for a real one)")
    sub.add_argument("--threads", type=_positive_int, default=O.THREADS,
                     help="CPU threads for the runtime (default: the runtime's default, one thread)")
    sub.add_argument("--backend", default=O.BACKEND, choices=("xnnpack", "builtin"),
                     help="CPU kernels: XNNPACK, or LiteRT's builtin reference kernels")
    sub.add_argument("--api", default=O.VALIDATE_API, choices=("interpreter", "compiled"),
                     help="compiled: CompiledModel with an XNNPACK weight cache (weights ~1x in memory); "
                          "interpreter: the classic Interpreter (per-op kernel census)")
    sub.add_argument("--max-kld", type=float, default=O.MAX_KLD, help="gate on mean KLD")
    sub.add_argument("--min-top1", type=float, default=O.MIN_TOP1, help="gate on top-1 agreement")
    sub.add_argument("--no-quality", action="store_true", help="skip the float reference comparison")
    sub.add_argument("--runs", type=_positive_int, default=O.SPEED_RUNS, help="timed speed runs (median reported)")
    sub.add_argument("--decode-tokens", type=_positive_int, default=O.DECODE_TOKENS, help="greedy decode steps per run")
    sub.add_argument("--strict-backend", action="store_true",
                     help="fail (not warn) when the requested kernels did not run")
    sub.add_argument("--json", action="store_true", help="print report.json instead of a summary")
    sub.add_argument("--device", default=None, metavar="SERIAL|auto|all",
                     help="run on an adb device instead of the host: a serial, 'auto' (the only one), or "
                          "'all' (every connected device at once; one report each under -o DIR) "
                          "(default: none, the host)")
    sub.add_argument("--runner-binary", default=None, metavar="PATH",
                     help="Android devices (no python3): LiteRT's benchmark_model for the device's ABI "
                          "(default: none, the Python runner)")
    sub.add_argument("--runtime", default=O.VALIDATE_RUNTIME, choices=("both", "litert-lm", "edge_sdk"),
                     help="where memory and speed are measured: LiteRT-LM's engine (what an app runs), our "
                          "runner, or both (default); quality always comes from our runner")
    sub.add_argument("--bundle", default=None, metavar="FILE.litertlm",
                     help="the bundle LiteRT-LM measures (default: one packed from MODEL_DIR for the run)")
    sub.add_argument("--warm", action="store_true",
                     help="leave the model's files in the page cache (default: evict them first, as a phone's "
                          "first launch after an install reads them)")
    sub.add_argument("--no-first-run", dest="first_run", action="store_false",
                     help="measure only the steady state (default: also the first run, which builds the "
                          "XNNPACK weight cache; the budget is checked against the larger)")
    sub.add_argument("--profile", action="store_true",
                     help="also break one decode step down in the report: time per op kind and scheme, "
                          "time outside the model (host only; a few minutes for a real model)")


def _validate_all_devices(args: argparse.Namespace, kw: dict) -> int:
    """``validate --device all``: one report per device under -o DIR, a table, the failures."""
    from .pipeline import validate_all_devices

    if not args.report:
        raise EdgeSdkError("--device all needs -o/--output DIR (one report per device under it)")
    rows = validate_all_devices(args.model_dir, report=args.report, **kw)
    _print_device_table(rows)
    print(f"summary: {args.report}/summary.json")
    for r in rows:
        if r["error"] or r["reasons"]:
            print(f"edge-sdk: validate: {r['serial']}: " + (r["error"] or "FAIL: " + "; ".join(r["reasons"])),
                  file=sys.stderr)
    return 2 if any(r["error"] for r in rows) else 1 if any(r["verdict"] != "pass" for r in rows) else 0


def _print_device_table(rows: list[dict]) -> None:
    def f(v, spec):
        return "-" if v is None else format(v, spec)
    print(f"{'device':<24} {'verdict':<8} {'model peak MB':>13} {'decode tok/s':>12} {'PPL':>9} {'KLD':>8} {'top-1':>7}")
    for r in rows:
        mb = None if r.get("model_peak_bytes") is None else r["model_peak_bytes"] / 1e6
        print(f"{r['serial']:<24} {r['verdict']:<8} {f(mb, '13.2f')} {f(r.get('decode_tokens_per_s'), '12.1f')} "
              f"{f(r.get('ppl'), '9.3f')} {f(r.get('kld_mean'), '8.4f')} {f(r.get('top1_agreement'), '7.1%')}")


@command("convert", "convert a checkpoint to LiteRT: embedder, per-layer embedder and prefill/decode .tflite files")
def _convert(sub=None, args=None) -> int:
    if sub is not None:
        sub.add_argument("checkpoint", help="checkpoint directory (config.json + *.safetensors)")
        sub.add_argument("-o", "--output", "--out", dest="out", required=True, metavar="OUT_DIR",
                         help="output directory (created; must be new or empty; required, no default)")
        sub.add_argument("--recipe", default=O.RECIPE, help="preset (float, int8, int4, mobile) or recipe .json")
        sub.add_argument("--text-only", action="store_true",
                         help="convert the text decoder alone (required when the checkpoint has vision/audio towers)")
        sub.add_argument("--context", type=_positive_int, default=None,
                         help=f"KV cache length in tokens (default: {DEFAULT_CONVERT_CONTEXT}; plan's default "
                              f"is {DEFAULT_PLAN_CONTEXT})")
        sub.add_argument("--prefill", type=_positive_int, default=O.PREFILL, help="prefill chunk length T")
        sub.add_argument("--no-score", action="store_true",
                         help="omit the score_<T> signature (logits of every prompt position)")
        sub.add_argument("--decode-spans", type=_nonnegative_int, nargs="?", const=3, default=O.DECODE_SPANS,
                         metavar="N",
                         help="add N decode_<S> signatures (S = C/8, C/4, C/2, shortest first; bare flag: all 3) that "
                              "attend to the first S cache slots: our runner decodes faster at short context; each "
                              "costs ~16 MB of runtime memory at 4K on E2B, in every runtime")
        sub.add_argument("--overwrite", action="store_true",
                         help="replace an existing output directory, only one edge-sdk convert wrote")
        sub.add_argument("--json", action="store_true", help="print model.json")
        return 0
    from .pipeline import convert

    context = DEFAULT_CONVERT_CONTEXT if args.context is None else args.context
    res = convert(args.checkpoint, args.out, recipe=args.recipe, text_only=args.text_only, context=context,
                  prefill=args.prefill, score=not args.no_score, overwrite=args.overwrite,
                  decode_spans=args.decode_spans)
    progress.flush()   # the stage lines before the result
    if args.json:
        _print_json(res.model.to_json())
    else:
        m = res.model   # ModelInfo
        files = ", ".join(f"{v['file']} ({v['bytes']:,} B)" for v in m.files.values())
        note = " (the default; --context N for another)" if args.context is None else ""
        print(f"{args.out}: {files}; recipe {m.recipe}, context {m.context}{note}, "
              f"prefill {m.prefill}, KV cache {m.kv_cache['dtype']}; {res.wall_s:.1f} s")
    return 0


@command("run", "run a converted model in LiteRT: prefill a prompt, then stream greedy decoding to stdout")
def _run(sub=None, args=None) -> int:
    if sub is not None:
        sub.add_argument("model_dir", help="converted model directory (edge-sdk convert -o OUT_DIR)")
        src = sub.add_mutually_exclusive_group(required=True)
        src.add_argument("--prompt", help="prompt text, or - to read it from stdin (needs tokenizer.json in the "
                                          "model directory; the generated text streams to stdout) (default: none)")
        src.add_argument("--ids", help="prompt token ids, comma-separated; prints ids and runs exactly -n steps "
                                       "(default: none)")
        sub.add_argument("--chat", action="store_true",
                         help="wrap the prompt in the checkpoint's chat template (chat_template.jinja) as one "
                              "user turn, with the generation prompt")
        sub.add_argument("-n", "--max-tokens", metavar="N", type=_positive_int, default=O.RUN_MAX_TOKENS,
                         help="generate at most this many tokens (greedy)")
        sub.add_argument("--ignore-eos", action="store_true",
                         help="keep generating past an end-of-sequence token (--prompt stops at one)")
        sub.add_argument("--logits-out", default=None,
                         help="save the prompt's logits, float32 [prompt_len, vocab] .npy (default: not saved)")
        sub.add_argument("--backend", default=O.BACKEND, choices=("xnnpack", "builtin"),
                         help="CPU kernels: XNNPACK, or LiteRT's builtin reference kernels")
        sub.add_argument("--api", default=O.RUN_API, choices=("interpreter", "compiled"),
                         help="LiteRT API: the Interpreter, or CompiledModel (XNNPACK weight cache file)")
        sub.add_argument("--threads", type=_positive_int, default=O.THREADS,
                         help="CPU threads for the runtime (default: the runtime's default, one thread)")
        sub.add_argument("--profile", nargs="?", const="", default=None, metavar="JSON",
                         help="after the run, break one decode step down (per op kind and scheme, time outside "
                              "the model) on stderr; with JSON, also write it there (default: off)")
        return 0
    from .generate import run_model

    res = run_model(args.model_dir, prompt=args.prompt, ids=args.ids, chat=args.chat, max_tokens=args.max_tokens,
                    ignore_eos=args.ignore_eos, logits_out=args.logits_out, backend=args.backend, api=args.api,
                    threads=args.threads, out=sys.stdout)
    if res.broken_pipe:   # `edge-sdk run ... | head`: the reader has gone; stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    print(res.stats_line, file=sys.stderr)
    if args.profile is not None:
        _profile_decode(args)
    return 0


def _profile_decode(args) -> None:
    """``run --profile``: edge_sdk.validate.profile on the model just run, same API, kernels, threads."""
    from .validate.profile import decode_profile, render, write_json

    with progress.stage("profiling one decode step (each op alone, then the whole step)", announce=True):
        res = decode_profile(args.model_dir, api=args.api, backend=args.backend, threads=args.threads)
    print(render(res), file=sys.stderr)
    if args.profile:
        write_json(args.profile, res)


@command("bundle", "pack a converted model into a .litertlm that LiteRT-LM runs, with a manifest beside it")
def _bundle(sub=None, args=None) -> int:
    if sub is not None:
        sub.add_argument("model_dir", help="converted model directory (edge-sdk convert OUT_DIR)")
        sub.add_argument("-o", "--output", required=True, metavar="FILE.litertlm",
                         help="bundle to write (required, no default)")
        sub.add_argument("--tokenizer", default=None,
                         help="tokenizer.json (or its directory) when the model directory has none "
                              "(default: MODEL_DIR/tokenizer.json)")
        sub.add_argument("--max-tokens", type=int, default=None,
                         help="LiteRT-LM max_num_tokens (default and maximum: the model's context)")
        sub.add_argument("--android", default=None, metavar="DIR",
                         help="android_demo directory: copy the bundle into its assets (<= 100 MB) or "
                              "print the adb push commands (default: none)")
        sub.add_argument("--overwrite", action="store_true",
                         help="replace an existing bundle (only one edge-sdk wrote)")
        sub.add_argument("--json", action="store_true", help="print the report as JSON")
        return 0
    from .pipeline import bundle_model

    rep = bundle_model(args.model_dir, args.output, tokenizer=args.tokenizer, max_tokens=args.max_tokens,
                       android=args.android, overwrite=args.overwrite)
    progress.flush()   # the stage lines before the result
    if args.json:
        _print_json(rep.to_json())
    else:
        print(rep.to_text())
    return 0


# ---- qat (issue 18): a thin verb over edge_sdk.qat.train.qat; flags = its keyword arguments
def _percent(text: str) -> float:
    """argparse type: ``5%`` or ``0.05`` → 0.05."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage (e.g. 5%)") from None


@command("qat", "quantization-aware fine-tuning of a Gemma 4 checkpoint on your text, distilled from its float model")
def _qat(sub=None, args=None) -> int:
    if sub is not None:
        sub.add_argument("checkpoint", help="Hugging Face Gemma 4 checkpoint directory (float)")
        sub.add_argument("--data", required=True, help="training text: UTF-8 text or .jsonl with 'text' (required, no default)")
        sub.add_argument("-o", "--output", "--out", dest="out", required=True, metavar="OUT_DIR",
                         help="checkpoint to write (float32 on the grid + scale/codebook sidecars; required, no default)")
        sub.add_argument("--recipe", default="mobile", help="preset (int8, int4, mobile) or recipe .json")
        n = sub.add_mutually_exclusive_group()
        n.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: 600 unless --minutes)")
        n.add_argument("--minutes", type=float, default=None, help="train for about this long instead of --steps (default: off)")
        sub.add_argument("--eval", dest="eval_file", default=None, metavar="FILE",
                         help="held-out text (default: the last 10%% of --data's documents)")
        sub.add_argument("--chat", action="store_true", help="JSONL 'messages' rendered with the checkpoint's "
                         "chat template")
        sub.add_argument("--seed", type=int, default=0, help="seed of batches and initialisation")
        sub.add_argument("--resume", action="store_true", help="continue the run saved in OUT_DIR/.qat_state")
        sub.add_argument("--overwrite", action="store_true", help="replace OUT_DIR when it holds an earlier "
                         "edge-sdk qat run or checkpoint (anything else is never replaced)")
        sub.add_argument("--teacher", action=argparse.BooleanOptionalAction, default=True,
                         help="distil from the float checkpoint (KL on logits); --no-teacher: cross-entropy")
        sub.add_argument("--batch", type=_positive_int, default=16, help="windows per step (all processes)")
        sub.add_argument("--seq-len", type=_positive_int, default=None,
                         help="tokens per window (default: min(512, the model's max positions))")
        sub.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the 2-bit weights and the norms")
        sub.add_argument("--fine-lr", type=float, default=1e-4, help="peak learning rate of the weights on finer "
                         "grids: int4/int8, codebook tables")
        sub.add_argument("--scale-lr", type=float, default=1e-2, help="peak learning rate of the log scale gains")
        sub.add_argument("--refresh-every", type=_positive_int, default=50, help="refit codebooks every N steps")
        sub.add_argument("--eval-every", type=_positive_int, default=None,
                         help="held-out evaluation every N steps (default: steps/10, at most 100)")
        sub.add_argument("--max-ppl-increase", type=_percent, default=0.05,
                         help="stop rule: held-out PPL may exceed float's by this much")
        sub.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's)")
        sub.add_argument("--teacher-samples", type=int, default=0, metavar="N",
                         help="also distil on N sequences the float model writes (half of each batch; default 0: off)")
        sub.add_argument("--anneal-steps", type=_nonnegative_int, default=0, metavar="N",
                         help="N more steps after --steps with the weights snapped onto the grid, at "
                         f"{O.QAT_ANNEAL_LR} x the learning rates (default 0: off)")
        sub.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=False,
                         help="also learn per-input-column gains of q/k/v, gate/up and down, folded into the "
                         "norms and up_proj when written (default: off)")
        sub.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=False,
                         help="under torchrun/accelerate: shard student and teacher over the processes "
                         "(FSDP2) instead of a whole copy each (DDP) (default: off)")
        return 0
    try:
        from .qat.train import qat
    except ImportError as e:
        from .errors import InputError, install_fix
        raise InputError(f"edge-sdk qat needs torch and transformers ({e.name} is missing)",
                         fix=install_fix("qat")) from None
    keys = ("recipe", "steps", "minutes", "eval_file", "chat", "seed", "resume", "teacher", "batch", "seq_len",
            "lr", "fine_lr", "scale_lr", "refresh_every", "eval_every", "max_ppl_increase", "threads", "teacher_samples",
            "anneal_steps", "equalize", "fsdp", "overwrite")
    res = qat(args.checkpoint, args.data, args.out, **{k: getattr(args, k) for k in keys})
    progress.flush()
    return _qat_summary(args.out, res)


def _qat_summary(out, res) -> int:
    """One line on stdout, the sections to widen on stderr; exit 1 when the stop rule's target was missed."""
    if res.report:   # rank 0 of a multi-process run
        r, last = res.report, res.report["evals"][-1]
        print(f"{out}: {r['steps_done']} steps, {r['wall_s']:.0f} s; held-out PPL {last['ppl']:.3f} "
              f"(float {last['ppl_float']:.3f}, {last['ppl_increase']:+.1%}), KLD {last['kld']:.4f}, "
              f"top-1 {last['top1']:.1%}; report {out}/qat_report.md")
        for w in r["verdict"]["widen"]:
            print(f"target missed: widen {w['section']} {w['from']} -> {w['to']} "
                  f"(held-out KLD {w['kld_if_float']:.4f} with it float)", file=sys.stderr)
        return 0 if res.met else 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge-sdk", description="QAT Gemma 4 → LiteRT for phones: convert, validate, ship.",
                     formatter_class=_Help)
    parser.add_argument("--version", action="version", version=_versions(), help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="let LiteRT's and LiteRT-LM's own log lines through to stderr")
    subs = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, fn) in _COMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text, formatter_class=_Help)
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="let LiteRT's and LiteRT-LM's own log lines through to stderr (default: off)")
        fn(sub, None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _, fn = _COMMANDS[args.command]
        with quiet_native_logs(not args.verbose, restore=argv is not None), progress.reporting(args.command):
            return fn(None, args)
    except EdgeSdkError as e:
        print(f"edge-sdk: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:    # the environment: a read-only or missing directory, a full disk
        where = e.filename or ""
        print(f"edge-sdk: error: {where}{': ' if where else ''}{e.strerror or e} (fix: check that the path "
              "exists and is writable, and that the disk has room)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-sdk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

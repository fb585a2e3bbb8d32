"""The ``edge-sdk`` command. Flags mirror the stage functions' keyword arguments one to one.

Exit codes everywhere: 0 ok, 1 a check that ran and failed, 2 bad input or usage (one line on
stderr naming the file and, where relevant, the tensor; no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from .errors import EdgeSdkError

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str):
    """Register ``(add_args, run)`` for a subcommand; ``run`` returns the exit code."""

    def deco(fn):
        _COMMANDS[name] = (help, fn)
        return fn

    return deco


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (one line, exit 2 otherwise)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be at least 1")
    return n


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 2
        raise EdgeSdkError(f"{self.prog}: {message}")


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
        sub.add_argument("--recipe", default="mobile", help="preset (float, int8, int4, mobile) or recipe .json")
        sub.add_argument("--text-only", action="store_true", help="drop vision and audio towers")
        sub.add_argument("--context", type=int, default=4096, help="context length for the KV cache (tokens)")
        sub.add_argument("--prefill", type=int, default=32, help="prefill chunk length (activation arena)")
        sub.add_argument("--distinct-tokens", type=int, default=None,
                         help="distinct tokens in the context (mapped rows touched); default context/4")
        sub.add_argument("--budget", default=None, help="memory budget, e.g. 1GB (10^9) or 900MiB")
        sub.add_argument("--json", action="store_true")
        return 0
    from .pipeline import plan_model

    report = plan_model(args.source, recipe=args.recipe, text_only=args.text_only, context=args.context,
                        prefill=args.prefill, budget=args.budget, distinct_tokens=args.distinct_tokens)
    if args.json:
        _print_json(report.to_json())
    else:
        print(report.to_text())
    fits = report.to_json()["budget"]["fits"]
    return 1 if fits is False else 0


@command("validate", "run a converted model on the host interpreter: memory vs budget, speed, quality vs float")
def _validate(sub=None, args=None) -> int:
    if sub is not None:
        sub.add_argument("model_dir", help="converted model directory (edge-sdk convert OUT_DIR), or a .litertlm "
                                           "(then memory and speed in LiteRT-LM only)")
        sub.add_argument("--reference", default=None,
                         help="float checkpoint to compare against (default: the float sibling of a "
                              "'qat' source, else the source checkpoint in conversion.json)")
        sub.add_argument("--text", default=None, help="evaluation text file (default: tiny model's held-out split)")
        sub.add_argument("--tokens", default=None, help="evaluation token ids (.npy or .json) instead of text")
        sub.add_argument("--budget", default=None, help="memory budget for the model's share of peak RSS, "
                                                        "e.g. 1GB (10^9) or 900MiB")
        sub.add_argument("--context", type=int, default=None,
                         help="tokens per evaluation window / KV fill (default: the model's context)")
        sub.add_argument("--max-tokens", type=int, default=None, help="evaluate at most this many tokens")
        sub.add_argument("--report", default=None, help="directory for report.json, report.md, memory.png")
        sub.add_argument("--threads", type=int, default=None)
        sub.add_argument("--backend", default="xnnpack", choices=("xnnpack", "builtin"))
        sub.add_argument("--api", default="compiled", choices=("interpreter", "compiled"),
                         help="compiled: CompiledModel with an XNNPACK weight cache (weights ~1x in memory; default)")
        sub.add_argument("--max-kld", type=float, default=None, help="gate on mean KLD (default 0.5)")
        sub.add_argument("--min-top1", type=float, default=None, help="gate on top-1 agreement (default 0.6)")
        sub.add_argument("--no-quality", action="store_true", help="skip the float reference comparison")
        sub.add_argument("--runs", type=int, default=5, help="timed speed runs (median reported)")
        sub.add_argument("--decode-tokens", type=int, default=32, help="greedy decode steps per run")
        sub.add_argument("--strict-backend", action="store_true",
                         help="fail (not warn) when the requested kernels did not run")
        sub.add_argument("--json", action="store_true", help="print report.json instead of a summary")
        sub.add_argument("--device", default=None, metavar="SERIAL|auto|all",
                         help="run on an adb device instead of the host: a serial, 'auto' (the only one), or "
                              "'all' (every connected device at once; one report each under --report DIR)")
        sub.add_argument("--runner-binary", default=None, metavar="PATH",
                         help="Android devices (no python3): LiteRT's benchmark_model for the device's ABI")
        sub.add_argument("--runtime", default="both", choices=("both", "litert-lm", "edge_sdk"),
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
        return 0
    from .pipeline import validate_all_devices, validate_model

    kw = dict(reference=args.reference, text=args.text, tokens=args.tokens,
              budget=args.budget, context=args.context, threads=args.threads,
              backend=args.backend, api=args.api, max_kld=args.max_kld, min_top1=args.min_top1,
              quality=not args.no_quality, max_tokens=args.max_tokens, runs=args.runs,
              decode_tokens=args.decode_tokens, strict_backend=args.strict_backend, runner_binary=args.runner_binary,
              runtime=args.runtime, bundle=args.bundle, warm=args.warm, first_run=args.first_run)
    if args.device == "all":
        if not args.report:
            raise EdgeSdkError("--device all needs --report DIR (one report per device under it)")
        rows = validate_all_devices(args.model_dir, report=args.report, **kw)
        _print_device_table(rows)
        print(f"summary: {args.report}/summary.json")
        for r in rows:
            if r["error"] or r["reasons"]:
                print(f"edge-sdk: validate: {r['serial']}: " + (r["error"] or "FAIL: " + "; ".join(r["reasons"])),
                      file=sys.stderr)
        return 2 if any(r["error"] for r in rows) else 1 if any(r["verdict"] != "pass" for r in rows) else 0
    rep = validate_model(args.model_dir, report=args.report, device=args.device, **kw)
    if args.json:
        _print_json(rep.to_json())
    else:
        print(rep.summary())
        if args.report:
            print(f"report: {args.report}/report.md")
    if not rep.passed:
        print("edge-sdk: validate: FAIL: " + "; ".join(rep.reasons), file=sys.stderr)
    return 0 if rep.passed else 1


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
        sub.add_argument("-o", "--out", required=True, help="output directory (created; must be new or empty)")
        sub.add_argument("--recipe", default="mobile", help="preset (float, int8, int4, mobile) or recipe .json")
        sub.add_argument("--text-only", action="store_true",
                         help="convert the text decoder alone (required when the checkpoint has vision/audio towers)")
        sub.add_argument("--context", type=_positive_int, default=512, help="KV cache length in tokens (default 512)")
        sub.add_argument("--prefill", type=_positive_int, default=32, help="prefill chunk length T (default 32)")
        sub.add_argument("--no-score", action="store_true",
                         help="omit the score_<T> signature (logits of every prompt position)")
        sub.add_argument("--overwrite", action="store_true",
                         help="replace an existing output directory, only one edge-sdk convert wrote")
        sub.add_argument("--json", action="store_true", help="print model.json")
        return 0
    from .pipeline import convert

    res = convert(args.checkpoint, args.out, recipe=args.recipe, text_only=args.text_only, context=args.context,
                  prefill=args.prefill, score=not args.no_score, overwrite=args.overwrite)
    if args.json:
        _print_json(res.model)
    else:
        files = ", ".join(f"{v['file']} ({v['bytes']:,} B)" for v in res.model["files"].values())
        print(f"{res.out_dir}: {files}; recipe {res.model['recipe']}, context {res.model['context']}, "
              f"prefill {res.model['prefill']}, KV cache {res.model['kv_cache']['dtype']}; {res.wall_s:.1f} s")
    return 0


@command("run", "run a converted model in LiteRT: prefill a prompt, then greedy decoding")
def _run(sub=None, args=None) -> int:
    if sub is not None:
        sub.add_argument("model_dir", help="converted model directory (edge-sdk convert -o OUT_DIR)")
        src = sub.add_mutually_exclusive_group(required=True)
        src.add_argument("--prompt", help="prompt text (needs tokenizer.json in the model directory)")
        src.add_argument("--ids", help="prompt token ids, comma-separated")
        sub.add_argument("-n", type=_positive_int, default=16, help="greedy decode steps (default 16)")
        sub.add_argument("--logits-out", default=None, help="save the prompt's logits, float32 [prompt_len, vocab] .npy")
        sub.add_argument("--backend", default="xnnpack", choices=("xnnpack", "builtin"))
        sub.add_argument("--api", default="interpreter", choices=("interpreter", "compiled"))
        sub.add_argument("--threads", type=_positive_int, default=None)
        return 0
    from pathlib import Path

    import numpy as np

    from .errors import CheckFailed, InputError
    from .litert.runtime import LiteRTModel, OutputCheckError, check_logits

    mdir = Path(args.model_dir)
    if args.logits_out and not Path(args.logits_out).absolute().parent.is_dir():
        raise InputError("the directory for --logits-out does not exist", path=Path(args.logits_out).parent,
                         fix="create it first, or pass a path in an existing directory")
    if not (mdir / "model.json").is_file():
        raise InputError("not a converted model directory (no model.json)", path=mdir,
                         fix="pass the OUT_DIR written by `edge-sdk convert`")
    tok = None
    if (mdir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(mdir / "tokenizer.json"))
    meta = json.loads((mdir / "model.json").read_text())
    if args.ids is not None:
        try:
            ids = [int(x) for x in args.ids.replace(" ", "").split(",") if x]
        except ValueError:
            raise InputError(f"--ids must be comma-separated integers, got {args.ids!r}") from None
    else:
        if tok is None:
            raise InputError("--prompt needs tokenizer.json in the model directory", path=mdir, fix="pass --ids")
        ids = tok.encode(args.prompt).ids
        bos = meta.get("bos_token_id")
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
    if not ids:
        raise InputError("empty prompt")
    try:
        model = LiteRTModel(mdir, backend=args.backend, api=args.api, threads=args.threads)
        if len(ids) + args.n > model.context:
            raise InputError(f"{len(ids)} prompt tokens + {args.n} steps exceed the context {model.context}")
        if min(ids) < 0 or max(ids) >= model.vocab_size:
            raise InputError(f"token id out of range [0, {model.vocab_size})")
        logits = model.prefill(ids)
        check_logits(logits, "prompt logits")
        out, last = [], logits[-1]
        for step in range(args.n):
            out.append(int(np.argmax(last)))
            if step + 1 < args.n:
                last = model.decode(out[-1])
                check_logits(last, f"decode step {step + 1} logits")
    except OutputCheckError as e:
        raise CheckFailed(f"{e} ({args.backend} kernels)", path=mdir) from None
    except (RuntimeError, ValueError) as e:
        raise CheckFailed(f"LiteRT could not run the model with {args.backend} kernels: "
                          f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}", path=mdir) from None
    if args.logits_out:
        np.save(args.logits_out, np.asarray(logits, np.float32))
    print("prompt ids:    " + ",".join(map(str, ids)))
    print("generated ids: " + ",".join(map(str, out)))
    if tok is not None:
        print("text:          " + json.dumps(tok.decode(out, skip_special_tokens=False)))
    return 0


@command("bundle", "pack a converted model into a .litertlm that LiteRT-LM runs, with a manifest beside it")
def _bundle(sub=None, args=None) -> int:
    if sub is not None:
        sub.add_argument("model_dir", help="converted model directory (edge-sdk convert OUT_DIR)")
        sub.add_argument("-o", "--output", required=True, metavar="FILE.litertlm", help="bundle to write")
        sub.add_argument("--tokenizer", default=None,
                         help="tokenizer.json (or its directory) when the model directory has none")
        sub.add_argument("--max-tokens", type=int, default=None,
                         help="LiteRT-LM max_num_tokens (default and maximum: the model's context)")
        sub.add_argument("--android", default=None, metavar="DIR",
                         help="android_demo directory: copy the bundle into its assets (<= 100 MB) or "
                              "print the adb push commands")
        sub.add_argument("--overwrite", action="store_true",
                         help="replace an existing bundle (only one edge-sdk wrote)")
        sub.add_argument("--json", action="store_true", help="print the report as JSON")
        return 0
    from .pipeline import bundle_model

    rep = bundle_model(args.model_dir, args.output, tokenizer=args.tokenizer, max_tokens=args.max_tokens,
                       android=args.android, overwrite=args.overwrite)
    if args.json:
        _print_json(rep.to_json())
    else:
        print(rep.to_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge-sdk", description="QAT Gemma 4 → LiteRT for phones: convert, validate, ship.")
    subs = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, fn) in _COMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        fn(sub, None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _, fn = _COMMANDS[args.command]
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

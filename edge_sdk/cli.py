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
    from .inspect import inspect_path

    report = inspect_path(args.path)
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
    except KeyboardInterrupt:
        print("edge-sdk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

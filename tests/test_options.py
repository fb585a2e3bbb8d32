"""One default per option (issue 14): the CLI's flags, the pipeline's keyword arguments, the
validator's options and the two files that run alone on a device agree, because edge_sdk.options
owns each value. Where the CLI keeps ``None`` to say "the default" in words (plan/convert
--context), the library's default is the one options names."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from edge_sdk import generate, options as O, pipeline
from edge_sdk.cli import build_parser
from edge_sdk.validate.validator import ValidateOptions

VERBS = {"plan": pipeline.plan_model, "convert": pipeline.convert, "validate": pipeline.validate_model,
         "bundle": pipeline.bundle_model, "run": generate.run_model}
RENAMED: dict = {}   # (verb, flag dest) -> keyword argument, where they differ (none today)
SAID_IN_WORDS = {("plan", "context"): O.PLAN_CONTEXT, ("convert", "context"): O.CONVERT_CONTEXT}


def _subparsers():
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_flag_default_is_the_library_default(verb):
    params = inspect.signature(VERBS[verb]).parameters
    checked = 0
    for a in _subparsers()[verb]._actions:
        name = RENAMED.get((verb, a.dest), a.dest)
        if not a.option_strings or name not in params or params[name].default is inspect.Parameter.empty:
            continue
        want = params[name].default
        got = SAID_IN_WORDS.get((verb, name), a.default) if a.default is None else a.default
        assert got == want, (verb, a.option_strings, got, want)
        checked += 1
    assert checked >= 2, verb   # the mapping above still finds the flags


def test_validate_options_match_validate_model():
    params = inspect.signature(pipeline.validate_model).parameters
    for f in dataclasses.fields(ValidateOptions):
        if f.name in params:
            assert f.default == params[f.name].default, f.name
    assert ValidateOptions().cold is (not params["warm"].default)


def test_the_defaults_that_differ_by_verb_are_the_ones_options_names():
    sub = _subparsers()
    api = {v: next(a.default for a in sub[v]._actions if a.dest == "api") for v in ("run", "validate")}
    assert api == {"run": O.RUN_API, "validate": O.VALIDATE_API}


def test_files_that_run_alone_on_a_device_hold_the_same_defaults():
    """runtime.py and runner.py are pushed to a device without edge_sdk: they cannot import
    options, so their literals are held to it here."""
    pytest.importorskip("ai_edge_litert")
    from edge_sdk.litert.runtime import LiteRTModel
    from edge_sdk.validate import runner

    p = inspect.signature(LiteRTModel).parameters
    assert (p["api"].default, p["backend"].default, p["threads"].default) == (O.RUN_API, O.BACKEND, O.THREADS)
    d = {a.dest: a.default for a in runner.build_parser()._actions}
    assert (d["api"], d["backend"], d["threads"], d["runs"], d["prompt_tokens"], d["decode_tokens"]) == (
        O.RUN_API, O.BACKEND, O.THREADS, O.SPEED_RUNS, O.PROMPT_TOKENS, O.DECODE_TOKENS)

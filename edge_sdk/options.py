"""One default per option: every layer (pipeline signatures, the validator, the CLI's flags and
their ``--help``) reads these, so the default a library caller gets is the one ``edge-sdk`` shows.

Where two verbs differ on purpose, each has its own name and the reason is here. Two files cannot
import this module because they run alone on a device without edge_sdk installed
(``litert/runtime.py``: ``LiteRTModel(api="interpreter", backend="xnnpack")``; ``validate/runner.py``
takes every option from its parent): ``tests/test_options.py`` holds them to these values.
"""

from __future__ import annotations

RECIPE = "mobile"                 # plan, convert: the preset
BACKEND = "xnnpack"               # run, validate: CPU kernels (XNNPACK, or LiteRT's builtin ones)
THREADS = None                    # run, validate: the runtime's default (ai-edge-litert 2.3: one thread)

RUN_API = "interpreter"           # run (and LiteRTModel): the classic Interpreter
VALIDATE_API = "compiled"         # validate: CompiledModel, so memory is what an app sees (weight cache file-backed)

PLAN_CONTEXT = 4096               # plan: the context a phone app is planned for
CONVERT_CONTEXT = 512             # convert: the KV cache the converted model carries
PREFILL = 32                      # plan, convert: the prefill chunk length T (activation arena)
DECODE_SPANS = 0                  # convert: decode_<S> signatures (C/8, C/4, C/2: how many, shortest first)
PLAN_RUNTIME = "litert-lm"        # plan: whose additions to count (LiteRT-LM's engine: what an app runs)
VALIDATE_RUNTIME = "both"         # validate: where memory and speed are measured

RUN_MAX_TOKENS = 16               # run -n: greedy steps
SPEED_RUNS = 5                    # validate --runs: timed speed runs (median reported)
DECODE_TOKENS = 32                # validate --decode-tokens: greedy decode steps per speed run
PROMPT_TOKENS = 128               # validate: prompt length of the speed runs (no flag)
COLD = True                       # validate: evict the model's files first (--warm turns it off)
FIRST_RUN = True                  # validate: also measure the first run (--no-first-run)
QAT_ANNEAL_LR = 0.3               # qat --anneal-steps: the phase's peak learning rates, x --lr / --scale-lr

# Quality gates for the mobile recipe (int2 MLP, int4 attention). llama.cpp on Llama-3-8B: q2_K has
# KLD 0.33-0.45 and top-1 71%; q4_K_M 0.031 / 91.9%. A QAT'd int2/int4 model should not be worse
# than post-training q2_K, so KLD mean <= 0.5 and top-1 >= 0.6 leave margin for a small model's
# flatter distributions, while a broken conversion (scales off by 100x, zeros) lands at KLD >> 1
# and top-1 near chance.
MAX_KLD = 0.5
MIN_TOP1 = 0.6

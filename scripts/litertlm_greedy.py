"""Greedy text from LiteRT-LM's engine (CPU backend) for a few prompts, as JSON on stdout.

    python3 litertlm_greedy.py MODEL.litertlm CACHE_DIR MAX_TOKENS CONTEXT PROMPT [PROMPT ...]

Imports only the standard library and ``litert_lm``, so the same file runs on the x86 host and inside
the arm64 device (scripts/arm64_device.sh), where it is pushed over adb; the two outputs are compared.
"""

import json
import os
import platform
import sys

import litert_lm


def main(argv: list[str]) -> None:
    bundle, cache, n, ctx, prompts = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4:]
    os.makedirs(cache, exist_ok=True)          # the engine needs cache_dir to exist
    eng = litert_lm.Engine(bundle, backend=litert_lm.Backend.CPU(), max_num_tokens=ctx, cache_dir=cache)
    out = []
    for p in prompts:
        s = eng.create_session(apply_prompt_template=False, sampler_config=litert_lm.SamplerConfig(top_k=1),
                               max_output_tokens=n)
        s.run_prefill([p])
        out.append({"prompt": p, "ids": eng.tokenize(p), "text": s.run_decode().texts[0]})
    print(json.dumps({"machine": platform.machine(), "results": out}))


if __name__ == "__main__":
    main(sys.argv[1:])

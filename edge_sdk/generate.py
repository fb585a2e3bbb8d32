"""Run a converted model in LiteRT: prefill a prompt, then stream greedy decoding (``edge-sdk run``).

``run_model(model_dir, prompt=... | ids=..., out=stream)`` checks the model's files, encodes the
prompt (``tokenizer.json`` in the model directory; the checkpoint's chat template with ``chat``),
prefills it, decodes greedily and writes the text to ``out`` as it grows (token ids with ``ids``);
it returns a ``RunResult`` whose ``stats_line`` is what the CLI prints on stderr, the way
``mlx_lm.generate`` and ``llama-cli`` do. Constant or non-finite logits are a ``CheckFailed``.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import options as O
from .artefacts import ModelInfo
from .errors import CheckFailed, InputError, install_fix


@dataclass(frozen=True)
class RunResult:
    """What one ``run_model`` did; ``broken_pipe``: the reader of ``out`` went away (``| head``)."""

    ids: list[int]
    generated: list[int] = field(default_factory=list)
    prompt_s: float = 0.0
    generate_s: float = 0.0
    peak_bytes: int = 0
    broken_pipe: bool = False

    @property
    def stats_line(self) -> str:
        decode_steps = max(0, len(self.generated) - 1)   # the first token comes from the prompt's logits
        gen_rate = f"{decode_steps / self.generate_s:,.1f}" if decode_steps and self.generate_s > 0 else "-"
        return (f"prompt: {len(self.ids)} tok, {len(self.ids) / self.prompt_s:,.1f} tok/s | generation: "
                f"{len(self.generated)} tok, {gen_rate} tok/s | peak memory: {self.peak_bytes / 1e9:.3f} GB")


def chat_prompt(mdir: str | Path, user: str) -> str:
    """``user`` as one user turn in the checkpoint's chat template (transformers' rendering:
    a sandboxed Jinja environment with trim_blocks and lstrip_blocks)."""
    tpl_file, cfg_file = Path(mdir) / "chat_template.jinja", Path(mdir) / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    template = tpl_file.read_text() if tpl_file.is_file() else cfg.get("chat_template")
    if not isinstance(template, str):
        raise InputError("--chat needs the checkpoint's chat template (chat_template.jinja, or chat_template in "
                         "tokenizer_config.json) in the model directory", path=mdir,
                         fix="copy it from the checkpoint, or run without --chat")
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise InputError("--chat needs jinja2", fix=install_fix("bundle")) from None

    def special(name):
        v = cfg.get(name)
        return v.get("content") if isinstance(v, dict) else v

    def raise_exception(msg):
        raise InputError(f"the chat template refused the prompt: {msg}", path=tpl_file)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=[{"role": "user", "content": user}],
                                            add_generation_prompt=True, bos_token=special("bos_token") or "",
                                            eos_token=special("eos_token") or "")


class TextStream:
    """Writes a growing token list's text to ``out`` as it grows: decodes the whole list each step
    and writes what is new, holding back an incomplete UTF-8 sequence (decoded as U+FFFD)."""

    def __init__(self, tok, out):
        self.tok, self.out, self.ids, self.shown = tok, out, [], ""

    def push(self, token: int) -> None:
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        new = text[len(self.shown):] if text.startswith(self.shown) else text[len(self.shown):]
        self.shown = text
        if new:
            self.out.write(new)
            self.out.flush()


def _prompt_ids(mdir: Path, meta: ModelInfo, tok, *, prompt: str | None, ids: str | None, chat: bool) -> list[int]:
    """The prompt's token ids: ``ids`` as given (comma-separated), or ``prompt`` encoded (with
    the chat template for ``chat``; a <bos> prepended when the encoding has none)."""
    if ids is not None:
        try:
            out = [int(x) for x in ids.replace(" ", "").split(",") if x]
        except ValueError:
            raise InputError(f"--ids must be comma-separated integers, got {ids!r}") from None
    else:
        if tok is None:
            raise InputError("--prompt needs tokenizer.json in the model directory", path=mdir, fix="pass --ids")
        if prompt == "-":   # read here, after the checks above: a wrong directory fails before stdin blocks
            import sys
            prompt = sys.stdin.read()
            prompt = prompt[:-1] if prompt.endswith("\n") else prompt
        if chat:
            prompt = chat_prompt(mdir, prompt)
        out = tok.encode(prompt, add_special_tokens=not chat).ids   # the template has its own <bos>
        bos = meta.bos_token_id
        if bos is not None and (not out or out[0] != bos):
            out = [bos] + out
    if not out:
        raise InputError("empty prompt")
    return out


def _open(mdir: Path, *, logits_out, chat: bool, ids):
    """(tokenizer or None, ``ModelInfo``) after the checks that need no runtime."""
    if logits_out and not Path(logits_out).absolute().parent.is_dir():
        raise InputError("the directory for --logits-out does not exist", path=Path(logits_out).parent,
                         fix="create it first, or pass a path in an existing directory")
    if not (mdir / "model.json").is_file():
        raise InputError("not a converted model directory (no model.json)", path=mdir,
                         fix="pass the OUT_DIR written by `edge-sdk convert`")
    if chat and ids is not None:
        raise InputError("--chat applies the chat template to --prompt text; --ids are used as given")
    tok = None
    if (mdir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(mdir / "tokenizer.json"))
    return tok, ModelInfo.read(mdir)


def _greedy(model, ids: list[int], n: int, stops: set, emit, out: TextIO, show_ids: bool):
    """Prefill ``ids``, then up to ``n`` greedy steps (stopping at a token in ``stops``), each new
    token to ``emit``; (prompt logits, prompt seconds, generation seconds)."""
    import numpy as np

    from .litert.runtime import check_logits

    t0 = time.perf_counter()
    logits = model.prefill(ids)
    t_prompt = time.perf_counter() - t0
    check_logits(logits, "prompt logits")
    if show_ids:
        out.write("prompt ids:    " + ",".join(map(str, ids)) + "\n")
    last, t1 = logits[-1], time.perf_counter()
    for step in range(n):
        token = int(np.argmax(last))
        if token in stops:
            break
        emit(token)
        if step + 1 < n:
            last = model.decode(token)
            check_logits(last, f"decode step {step + 1} logits")
    return logits, t_prompt, time.perf_counter() - t1


def run_model(model_dir: str | Path, *, prompt: str | None = None, ids: str | None = None, chat: bool = False,
              max_tokens: int = O.RUN_MAX_TOKENS, ignore_eos: bool = False, logits_out: str | Path | None = None,
              backend: str = O.BACKEND, api: str = O.RUN_API, threads: int | None = O.THREADS,
              out: TextIO | None = None) -> RunResult:
    """Prefill ``prompt`` (text, "-" for stdin; or ``ids``, comma-separated token ids, printed as ids and run for
    exactly ``max_tokens`` steps) and stream greedy decoding to ``out`` (default: stdout).
    ``logits_out``: save the prompt's logits, float32 [prompt_len, vocab] .npy."""
    import sys

    import numpy as np

    from .litert.export import verify_files
    from .litert.runtime import LiteRTModel, OutputCheckError

    mdir, out = Path(model_dir), out if out is not None else sys.stdout
    tok, meta = _open(mdir, logits_out=logits_out, chat=chat, ids=ids)
    prompt_ids = _prompt_ids(mdir, meta, tok, prompt=prompt, ids=ids, chat=chat)
    stops = set() if ids is not None or ignore_eos else set(meta.eos_token_id)
    text = TextStream(tok, out) if ids is None else None
    generated: list[int] = []

    def emit(token: int) -> None:
        generated.append(token)
        if text is not None:
            text.push(token)
        else:
            out.write(("," if len(generated) > 1 else "generated ids: ") + str(token))
            out.flush()

    try:
        verify_files(mdir, meta.files)   # a changed file is refused, not run
        model = LiteRTModel(mdir, backend=backend, api=api, threads=threads)
        if len(prompt_ids) + max_tokens > model.context:
            raise InputError(f"{len(prompt_ids)} prompt tokens + {max_tokens} steps exceed the context "
                             f"{model.context}", fix=f"use -n <= {max(1, model.context - len(prompt_ids))}, or "
                                                     "convert with a longer --context")
        if min(prompt_ids) < 0 or max(prompt_ids) >= model.vocab_size:
            raise InputError(f"token id out of range [0, {model.vocab_size})")
        logits, t_prompt, t_gen = _greedy(model, prompt_ids, max_tokens, stops, emit, out, ids is not None)
    except OutputCheckError as e:
        raise CheckFailed(f"{e} ({backend} kernels)", path=mdir) from None
    except (RuntimeError, ValueError) as e:
        raise CheckFailed(f"LiteRT could not run the model with {backend} kernels: "
                          f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}", path=mdir) from None
    except BrokenPipeError:   # `edge-sdk run ... | head`: the reader has gone; stop quietly
        return RunResult(prompt_ids, generated, broken_pipe=True)
    if logits_out:
        np.save(logits_out, np.asarray(logits, np.float32))
    out.write("\n")
    if ids is not None and tok is not None:
        out.write("text:          " + json.dumps(tok.decode(generated, skip_special_tokens=False)) + "\n")
    out.flush()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: kB
    return RunResult(prompt_ids, generated, t_prompt, t_gen, peak)

"""LiteRT-LM's two metadata protos for a converted Gemma 4, as Google's exporter fills them
(LITERTLM_GEMMA4.md §3-4), built from the model directory's tokenizer files and the prefill_decode
signatures.

- ``LlmMetadata``: start token (BOS, by id), stop tokens (``generation_config.eos_token_id`` and the
  model's EOS ids, plus the end of a model turn rendered from the chat template and its
  punctuation-prefixed copies that guard against tokenizer merges), pad token, ``max_num_tokens``,
  ``llm_model_type.gemma4`` (tool-call / quote markers when the tokenizer names them), the
  ``thought`` channel (when ``soc_token``/``eoc_token`` exist) and the chat template with
  ``{% generation %}`` tags removed and ``.get('x')`` rewritten to ``['x']``.
- ``ExecutorMetadata``: one state buffer per KV cache, k_i then v_i, sequence axes 2 (K) and 3 (V):
  GLOBAL caches of the full length, and LOCAL caches (``minimum_sequence_length`` = the window,
  ``maximum_sequence_length`` = the ring's slots) for sliding layers whose ring buffer is shorter
  than the context (``edge_sdk.quant.kv_layout``; the graph keeps the ring itself). Declared
  GLOBAL, a short ring would cap the engine's ``max_num_tokens`` at its length.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from litert_lm_builder.runtime.proto import executor_metadata_pb2 as exe_pb
from litert_lm_builder.runtime.proto import llm_metadata_pb2 as llm_pb

from ..artefacts import ModelInfo
from ..errors import InputError
from .signatures import KvBuffer

# Prefixes Google's exporter puts before the end-of-turn string (§3): a tokenizer may merge the
# preceding character into the marker's first token, so each variant is its own stop sequence.
_MERGE_GUARDS = (" ", ".", ",", "!", "?", ":", ";", ")", "]", "}", "'", '"', "*")
_MARK_USER, _MARK_MODEL = "\u2063EDGE_SDK_USER\u2063", "\u2063EDGE_SDK_MODEL\u2063"
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
_GET_CALL = re.compile(r"\.get\(\s*(['\"])([^'\"]+)\1\s*\)")


@dataclass(frozen=True)
class TokenizerFiles:
    """The tokenizer of a model directory (or of ``--tokenizer``)."""
    tokenizer_json: Path
    config: dict = field(default_factory=dict)          # tokenizer_config.json
    generation: dict = field(default_factory=dict)      # generation_config.json
    chat_template: str | None = None
    specials: dict[str, int] = field(default_factory=dict)   # added token content -> id
    vocab_size: int = 0


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, ValueError) as e:
        raise InputError(f"cannot parse JSON ({e})", path=p) from None


def find_tokenizer(model_dir: Path, tokenizer: str | Path | None) -> TokenizerFiles:
    """``tokenizer``: a tokenizer.json or a directory holding one; default the model directory.
    Side files (tokenizer_config.json, generation_config.json, chat_template.jinja) are read from
    the tokenizer's directory, then the model directory."""
    if tokenizer is None:
        tj = model_dir / "tokenizer.json"
    else:
        t = Path(tokenizer)
        tj = t / "tokenizer.json" if t.is_dir() else t
    if not tj.is_file():
        where = "the model directory" if tokenizer is None else str(tokenizer)
        raise InputError(f"no tokenizer.json in {where}", path=tj,
                         fix="convert with a tokenizer beside the checkpoint, or pass --tokenizer PATH")
    if tj.suffix != ".json":
        raise InputError("the tokenizer must be a Hugging Face tokenizer.json", path=tj)
    dirs = [tj.parent] + ([model_dir] if model_dir.resolve() != tj.parent.resolve() else [])

    def side(name: str) -> dict:
        return next((d for d in (_read_json(p / name) for p in dirs) if d), {})

    tok = _read_json(tj)
    if "model" not in tok:
        raise InputError("not a Hugging Face tokenizer.json (no 'model')", path=tj)
    cfg, gen = side("tokenizer_config.json"), side("generation_config.json")
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take "default"
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not template:
        jinja = next((p / "chat_template.jinja" for p in dirs if (p / "chat_template.jinja").is_file()), None)
        template = jinja.read_text(encoding="utf-8") if jinja else None
    specials = {t["content"]: int(t["id"]) for t in tok.get("added_tokens", []) if "content" in t}
    vocab = tok["model"].get("vocab") or {}
    size = max([len(vocab) if isinstance(vocab, (dict, list)) else 0] + [i + 1 for i in specials.values()])
    return TokenizerFiles(tj, cfg, gen, template, specials, size)


def clean_template(template: str) -> str:
    """The chat template as LiteRT-LM's Jinja engine takes it (Google's exporter does the same)."""
    return _GET_CALL.sub(r"[\1\2\1]", _GENERATION_TAG.sub("", template))


def end_of_turn(template: str | None, tok: TokenizerFiles) -> str | None:
    """What the chat template writes after a model message's text (e.g. ``"<turn|>\\n"``)."""
    if not template:
        return None
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(ValueError(msg))
    names = {k: _token_text(tok.config.get(k)) for k in ("bos_token", "eos_token", "pad_token")}
    for role in ("model", "assistant"):
        msgs = [{"role": "user", "content": _MARK_USER}, {"role": role, "content": _MARK_MODEL}]
        try:
            text = env.from_string(clean_template(template)).render(
                messages=msgs, add_generation_prompt=False, **{k: v or "" for k, v in names.items()})
        except Exception:  # a template that rejects this conversation: try the other role name
            continue
        if _MARK_MODEL in text:
            tail = text.split(_MARK_MODEL, 1)[1]
            if tail:
                return tail
    return None


def _token_text(v) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _ids(v) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


@dataclass(frozen=True)
class LlmFacts:
    """What went into LlmMetadata, for the manifest."""
    bos_id: int
    stop_ids: tuple[int, ...]
    stop_strings: tuple[str, ...]
    pad_id: int | None
    max_num_tokens: int
    chat_template: bool
    model_type_fields: dict


def special_id(tok: TokenizerFiles, key: str, fallback: int | None = None) -> int | None:
    """Id of ``tokenizer_config[key]`` (``bos_token`` …), else ``fallback``."""
    text = _token_text(tok.config.get(key))
    if text is not None and text in tok.specials:
        return tok.specials[text]
    return fallback


def _named_token(tok: TokenizerFiles, key: str) -> str | None:
    extra = tok.config.get("extra_special_tokens") or {}
    v = _token_text(tok.config.get(key)) or (_token_text(extra.get(key)) if isinstance(extra, dict) else None)
    return v if v else None


def llm_metadata(tok: TokenizerFiles, model: ModelInfo, max_num_tokens: int) -> tuple[llm_pb.LlmMetadata, LlmFacts]:
    bos = model.bos_token_id
    bos = special_id(tok, "bos_token", tok.generation.get("bos_token_id") if bos is None else bos)
    if bos is None:
        raise InputError("no BOS token: model.json, tokenizer_config.json and generation_config.json "
                         "name none", path=tok.tokenizer_json)
    stop_ids = set(_ids(tok.generation.get("eos_token_id"))) | set(model.eos_token_id)
    eos = special_id(tok, "eos_token")
    if not stop_ids and eos is not None:
        stop_ids.add(eos)
    template = tok.chat_template
    eot = end_of_turn(template, tok)
    stop_strings = [eot] + [p + eot for p in _MERGE_GUARDS] if eot else []
    if not stop_ids and not stop_strings:
        raise InputError("no stop token: set eos_token_id in generation_config.json", path=tok.tokenizer_json)
    pad = special_id(tok, "pad_token", tok.generation.get("pad_token_id"))

    msg = llm_pb.LlmMetadata()
    msg.start_token.token_ids.ids.append(int(bos))
    for i in sorted(stop_ids):
        msg.stop_tokens.add().token_ids.ids.append(i)
    for s in stop_strings:
        msg.stop_tokens.add().token_str = s
    if pad is not None:
        msg.pad_token.token_ids.ids.append(int(pad))
    msg.max_num_tokens = int(max_num_tokens)
    g4 = msg.llm_model_type.gemma4
    g4.SetInParent()
    fields = {}
    for key, attr in (("stc_token", "code_fence_start"), ("etc_token", "code_fence_end"),
                      ("escape_token", "open_quote"), ("escape_token", "close_quote"),
                      ("str_token", "function_response_start")):
        val = _named_token(tok, key)
        if val:
            setattr(g4, attr, val)
            fields[attr] = val
    if template:
        msg.jinja_prompt_template = clean_template(template)
    soc, eoc = _named_token(tok, "soc_token"), _named_token(tok, "eoc_token")
    if soc and eoc:
        ch = msg.channels.add()
        ch.channel_name, ch.start, ch.end = "thought", f"{soc}thought\n", eoc
    facts = LlmFacts(int(bos), tuple(sorted(stop_ids)), tuple(stop_strings), pad, int(max_num_tokens),
                     bool(template), fields)
    return msg, facts


def executor_metadata(kv: list[KvBuffer], max_len: int,
                      windows: dict[str, int] | None = None) -> exe_pb.ExecutorMetadata:
    """``windows``: {buffer name: sliding window} of ring buffers (model.json's kv_cache)."""
    msg = exe_pb.ExecutorMetadata()
    ex = msg.llm_executor_metadata
    ex.max_history_size = int(max_len)
    S = exe_pb.StateBuffer
    for b in kv:
        sb = ex.state_buffers.add()
        sb.prefill_input_name = sb.prefill_output_name = b.name
        sb.decode_input_name = sb.decode_output_name = b.name
        local = b.max_length < max_len
        if local:
            sb.type = S.TYPE_LOCAL_KEY_CACHE if b.kind == "k" else S.TYPE_LOCAL_VALUE_CACHE
            sb.minimum_sequence_length = int((windows or {}).get(b.name) or b.max_length)
        else:
            sb.type = S.TYPE_GLOBAL_KEY_CACHE if b.kind == "k" else S.TYPE_GLOBAL_VALUE_CACHE
        sb.sequence_axis = b.sequence_axis
        sb.maximum_sequence_length = b.max_length
    return msg

"""The user's text for ``edge-sdk qat``: read, check, tokenize, cut into training and held-out windows.

A data file is either
- plain UTF-8 text: one document (the whole file), or
- JSON Lines (``.jsonl``, or a file whose first non-blank line is a JSON object): one document per
  line, from its ``text`` field, or with ``chat=True`` from its ``messages`` field (a list of
  ``{"role", "content"}``) rendered with the checkpoint's chat template (a ``text`` field is then
  one user turn).

Each document becomes ``<bos> ids <eos>`` (the tokenizer's own BOS/EOS ids, when it has them) and
the documents are concatenated into one int64 stream. Without an eval file the last
``HOLDOUT_FRACTION`` of the documents (at least one; of the tokens for a single document) is held
out. Held-out windows are non-overlapping ``seq_len`` windows (the shorter tail dropped when there
is at least one full window), as ``edge-sdk validate`` chunks its text.

Bad input is an ``InputError`` naming the file: missing, empty, not UTF-8 text (a binary file),
a JSON line without the field, too few tokens for one window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError

HOLDOUT_FRACTION = 0.1
MIN_TRAIN_TOKENS = 16


@dataclass(frozen=True)
class Corpus:
    train: np.ndarray          # int64 token stream
    heldout: np.ndarray        # int64 [n, seq_len] windows
    documents: int
    source: str


def read_documents(path: str | PathLike, chat: bool = False, tokenizer=None) -> list[str]:
    """The documents of one data file (see module docstring); ``InputError`` for bad input."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such data file", path=p, fix="pass a UTF-8 text or .jsonl file to --data")
    raw = p.read_bytes()
    if b"\0" in raw[:65536]:
        raise InputError("not a text file (it contains NUL bytes)", path=p,
                         fix="pass UTF-8 text or JSON Lines with a 'text' field")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", path=p,
                         fix="pass UTF-8 text or JSON Lines with a 'text' field") from None
    if not text.strip():
        raise InputError("the data file is empty", path=p, fix="give it some of your app's text")
    first = next(line for line in text.splitlines() if line.strip()).lstrip()
    if p.suffix in (".jsonl", ".json") or first.startswith("{"):
        docs = [_record_text(line, p, i + 1, chat, tokenizer) for i, line in enumerate(text.splitlines())
                if line.strip()]
    elif chat:
        raise InputError("--chat needs JSON Lines with a 'messages' (or 'text') field per line", path=p)
    else:
        docs = [text]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise InputError("no text in the data file (every record is blank)", path=p)
    return docs


def _record_text(line: str, path: Path, lineno: int, chat: bool, tokenizer) -> str:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"line {lineno} is not JSON ({e.msg})", path=path,
                         fix="one JSON object per line, or plain text in a .txt file") from None
    if not isinstance(rec, dict):
        raise InputError(f"line {lineno} is not a JSON object", path=path)
    if chat:
        msgs = rec.get("messages")
        if msgs is None and isinstance(rec.get("text"), str):
            msgs = [{"role": "user", "content": rec["text"]}]
        if not isinstance(msgs, list):
            raise InputError(f"line {lineno} has no 'messages' list", path=path)
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise InputError("--chat: the checkpoint's tokenizer has no chat template", path=path,
                             fix="drop --chat, or add chat_template to the checkpoint")
        return tokenizer.apply_chat_template(msgs, tokenize=False)
    value = rec.get("text")
    if not isinstance(value, str):
        raise InputError(f"line {lineno} has no string field 'text'", path=path,
                         fix="each line: {\"text\": \"...\"} (or --chat with 'messages')")
    return value


def token_stream(tokenizer, docs: list[str], chat: bool = False) -> np.ndarray:
    """``<bos> ids <eos>`` per document, concatenated (int64). A chat-rendered document already
    carries the template's BOS, so only EOS is added there when the text starts with it."""
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    out: list[int] = []
    for d in docs:
        ids = list(tokenizer(d, add_special_tokens=False)["input_ids"])
        if bos is not None and not (ids and ids[0] == bos):
            out.append(bos)
        out += ids
        if eos is not None:
            out.append(eos)
    return np.asarray(out, dtype=np.int64)


def windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows [n, seq_len]; a stream shorter than one window is one window."""
    n = len(stream) // seq_len
    if n == 0:
        return stream[None, :]
    return stream[:n * seq_len].reshape(n, seq_len)


def load_corpus(data: str | PathLike, tokenizer, seq_len: int, eval_file: str | PathLike | None = None,
                chat: bool = False) -> Corpus:
    """Training stream and held-out windows for ``qat`` (see module docstring)."""
    docs = read_documents(data, chat, tokenizer)
    if eval_file is not None:
        train_docs, held_docs = docs, read_documents(eval_file, chat, tokenizer)
        train = token_stream(tokenizer, train_docs, chat)
        held = token_stream(tokenizer, held_docs, chat)
    elif len(docs) >= 2:
        k = max(1, round(len(docs) * HOLDOUT_FRACTION))
        train = token_stream(tokenizer, docs[:-k], chat)
        held = token_stream(tokenizer, docs[-k:], chat)
    else:
        s = token_stream(tokenizer, docs, chat)
        cut = len(s) - max(2, int(len(s) * HOLDOUT_FRACTION))
        train, held = s[:cut], s[cut:]
    if len(train) < max(MIN_TRAIN_TOKENS, 2):
        raise InputError(f"only {len(train)} training tokens", path=data,
                         fix="give --data more text (a few thousand tokens at least)")
    if len(held) < 2:
        raise InputError("the held-out split has fewer than 2 tokens", path=eval_file or data,
                         fix="give --eval a held-out text file")
    return Corpus(train=train, heldout=windows(held, min(seq_len, len(held))), documents=len(docs),
                  source=str(data))

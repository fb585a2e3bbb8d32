"""Quality against the float reference, in llama.cpp's vocabulary (so numbers compare).

- **perplexity** ``exp(mean NLL)`` of the actual next token, for the model and for the reference,
  over the same scored positions;
- **KL divergence** per position ``KL(P_ref || P_model) = sum P_ref (log P_ref - log P_model)``
  → mean and 99th percentile (linear interpolation between order statistics);
- **top-1 agreement**: fraction of positions where the two argmaxes are equal.

Text → tokens → windows: the text (``--text FILE``, or the tiny model's held-out documents from
``split.json``: each ``<bos> text <eos>``, concatenated, as in training) is tokenized with the
model's ``tokenizer.json`` and **chunked** into non-overlapping windows of ``context`` tokens, each
evaluated from an empty cache; a window's logits at position t are scored against token t+1 (so
a window of L tokens scores L-1 positions; a tail shorter than 2 tokens is dropped). ``max_tokens``
truncates the stream before chunking.

The reference is the NumPy forward (``edge_sdk.reference``) on the float checkpoint, streaming its
weights (``cache_weights=False``: one layer's float weights at a time), one window at a time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..artefacts import ConversionRecord
from ..errors import InputError

BLOCK = 256  # positions per block when computing softmaxes (bounds float64 temporaries)


@dataclass(frozen=True)
class QualityMetrics:
    ppl: float
    ppl_reference: float
    kld_mean: float
    kld_median: float
    kld_p99: float
    kld_max: float
    top1_agreement: float
    top1_accuracy: float            # model argmax == actual next token
    top1_accuracy_reference: float
    positions: int                  # scored positions
    windows: int

    def to_json(self) -> dict:
        return asdict(self)


def load_tokenizer(model_dir: str | Path):
    """The ``tokenizers.Tokenizer`` of a converted model, or None when it has no tokenizer.json."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError as e:  # pragma: no cover - tokenizers ships with transformers
        raise InputError("reading tokenizer.json needs the 'tokenizers' package",
                         fix="pip install tokenizers") from e
    return Tokenizer.from_file(str(path))


STDLIB_SOURCE = "CPython stdlib source"   # split.json "source" of a split of the stdlib's .py files


def shipped_split(split_json: str | Path, part: str) -> list[str] | None:
    """The texts of ``part`` ("train" or "heldout") from ``data/PART.jsonl`` beside ``split.json``
    (one ``{"name", "text"}`` per document, as ``models/tiny-gemma4/data`` ships them, so the split
    does not depend on this Python's own stdlib), checked against the split's names and sha256;
    None when the model ships no such file."""
    import hashlib
    path = Path(split_json)
    file = path.parent / "data" / f"{part}.jsonl"
    if not file.is_file():
        return None
    split = json.loads(path.read_text())
    try:
        docs = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        names, texts = [d["name"] for d in docs], [d["text"] for d in docs]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"not one {{\"name\", \"text\"}} object per line ({e})", path=file,
                         fix=f"restore it from the repository (git checkout {file})") from e
    h = hashlib.sha256()
    for n, t in zip(names, texts):
        h.update(n.encode() + b"\0" + t.encode() + b"\0")
    if names != split[part] or h.hexdigest() != split.get("sha256", {}).get(part):
        raise InputError(f"its documents are not the {part} split that {path.name} names (names or sha256 differ)",
                         path=file, fix=f"restore it from the repository (git checkout {file})")
    return texts


def heldout_texts(split_json: str | Path | None = None) -> list[str]:
    """The held-out texts a tiny model's ``split.json`` names: those its ``data/heldout.jsonl``
    ships (``shipped_split``; the embedded default ``models/tiny-gemma4``, standard-library source
    files), else read from this Python: standard-library files when its ``source`` is
    ``STDLIB_SOURCE``, topics of ``pydoc_data.topics`` otherwise (``models/tiny-gemma4-prose``);
    without a split.json, the topics rule computed from this Python's topics (names sorted, every
    tenth held out, from the first)."""
    from pydoc_data.topics import topics
    if split_json is None:
        return [topics[n] for i, n in enumerate(sorted(topics)) if i % 10 == 0]
    path = Path(split_json)
    if not path.is_file():
        raise InputError("no held-out split to evaluate on", path=path,
                         fix="pass --text FILE (or train the tiny model: scripts/train_tiny.py)")
    shipped = shipped_split(path, "heldout")
    if shipped is not None:
        return shipped
    split = json.loads(path.read_text())
    if split.get("source") == STDLIB_SOURCE:   # scripts/train_tiny.py --corpus code: stdlib files by path
        import sysconfig
        lib = Path(sysconfig.get_paths()["stdlib"])
        missing = [n for n in split["heldout"] if not (lib / n).is_file()]
        if missing:
            raise InputError(f"held-out files {missing[:3]} are not in this Python's standard library ({lib})",
                             path=path, fix="pass --text FILE")
        return [(lib / n).read_text(encoding="utf-8") for n in split["heldout"]]
    missing = [n for n in split["heldout"] if n not in topics]
    if missing:
        raise InputError(f"held-out topics {missing[:3]} are not in this Python's pydoc_data.topics",
                         path=path, fix="pass --text FILE")
    return [topics[n] for n in split["heldout"]]


def find_split(conversion: ConversionRecord | None) -> Path | None:
    """The ``split.json`` a model was trained with: beside its source checkpoint or one level up
    (``models/tiny-gemma4/{qat,float}`` share ``models/tiny-gemma4/split.json``); None if none."""
    if conversion is None:
        return None
    src = conversion.source_path
    return next((d / "split.json" for d in (src, src.parent) if (d / "split.json").is_file()), None)


def token_stream(tokenizer, texts: Iterable[str], bos: int | None, eos: int | None) -> np.ndarray:
    """Each text as ``<bos> text <eos>`` (ids of the special tokens given), concatenated."""
    out: list[int] = []
    for t in texts:
        ids = tokenizer.encode(t, add_special_tokens=False).ids
        out += ([bos] if bos is not None else []) + list(ids) + ([eos] if eos is not None else [])
    return np.asarray(out, dtype=np.int32)


def make_windows(stream: np.ndarray, context: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Non-overlapping windows of ``context`` tokens (chunked, not truncated; the tail is kept when it
    has at least 2 tokens); ``max_tokens`` truncates the stream first."""
    if context < 2:
        raise InputError(f"context {context} is too short to score a next token", fix="use --context >= 2")
    s = np.asarray(stream, dtype=np.int32)
    if max_tokens is not None:
        s = s[:max_tokens]
    wins = [s[i:i + context] for i in range(0, len(s), context)]
    wins = [w for w in wins if len(w) >= 2]
    if not wins:
        raise InputError(f"the evaluation text has {len(s)} tokens; at least 2 are needed")
    return wins


def targets_and_mask(windows: Sequence[np.ndarray], extra_rows: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For logits rows laid out window after window (plus ``extra_rows`` trailing decode rows):
    the next token of each row and whether the row is scored (not a window's last position)."""
    tgt, mask = [], []
    for w in windows:
        tgt.append(np.concatenate([w[1:], [0]]).astype(np.int64))
        m = np.ones(len(w), bool)
        m[-1] = False
        mask.append(m)
    tgt.append(np.zeros(extra_rows, np.int64))
    mask.append(np.zeros(extra_rows, bool))
    return np.concatenate(tgt), np.concatenate(mask)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def compare(ref_logits: np.ndarray, model_logits: np.ndarray, targets: np.ndarray,
            mask: np.ndarray | None = None, windows: int = 1) -> QualityMetrics:
    """Metrics over the rows where ``mask`` is True (all rows if None). Inputs [N, V]."""
    ref = np.asarray(ref_logits)
    mod = np.asarray(model_logits)
    if ref.shape != mod.shape:
        raise InputError(f"reference logits {ref.shape} and model logits {mod.shape} differ in shape")
    rows = np.arange(ref.shape[0]) if mask is None else np.flatnonzero(mask)
    if rows.size == 0:
        raise InputError("no scored positions")
    nll_m, nll_r, kld, agree, acc_m, acc_r = [], [], [], [], [], []
    for s in range(0, rows.size, BLOCK):
        idx = rows[s:s + BLOCK]
        lr, lm = log_softmax(ref[idx]), log_softmax(mod[idx])
        t = np.asarray(targets)[idx]
        nll_r.append(-lr[np.arange(len(idx)), t])
        nll_m.append(-lm[np.arange(len(idx)), t])
        kld.append(np.maximum((np.exp(lr) * (lr - lm)).sum(axis=-1), 0.0))
        am, ar = mod[idx].argmax(axis=-1), ref[idx].argmax(axis=-1)
        agree.append(am == ar)
        acc_m.append(am == t)
        acc_r.append(ar == t)
    kl = np.concatenate(kld)
    return QualityMetrics(
        ppl=float(np.exp(np.concatenate(nll_m).mean())),
        ppl_reference=float(np.exp(np.concatenate(nll_r).mean())),
        kld_mean=float(kl.mean()), kld_median=float(np.median(kl)),
        kld_p99=float(np.percentile(kl, 99)), kld_max=float(kl.max()),
        top1_agreement=float(np.concatenate(agree).mean()),
        top1_accuracy=float(np.concatenate(acc_m).mean()),
        top1_accuracy_reference=float(np.concatenate(acc_r).mean()),
        positions=int(rows.size), windows=int(windows))


def reference_logits(checkpoint: str | Path, windows: Sequence[np.ndarray]) -> np.ndarray:
    """[sum of window lengths, V] float32 logits of the NumPy reference on ``checkpoint``, each window
    from an empty cache, weights streamed (``cache_weights=False``)."""
    from ..reference import Reference, weights_from_checkpoint

    w = weights_from_checkpoint(checkpoint)
    ref = Reference(w.spec.text, w, cache_weights=False)
    out = []
    for win in windows:
        ref.reset()
        out.append(np.asarray(ref.prefill([int(t) for t in win]), dtype=np.float32))
    return np.concatenate(out, axis=0)


def default_reference(model_dir: str | Path, conversion: ConversionRecord | None) -> Path | None:
    """The float checkpoint to compare against when none is given.

    A model converted from ``.../<name>/qat`` with a sibling ``.../<name>/float`` (the tiny QAT
    model's layout) → that float checkpoint; otherwise the source checkpoint recorded in
    ``conversion.json`` (the float model a PTQ conversion started from); None if neither exists.
    """
    if conversion is None:
        return None
    src = conversion.source_path
    if src.name == "qat" and (src.parent / "float" / "config.json").is_file():
        return src.parent / "float"
    return src if (src / "config.json").is_file() else None

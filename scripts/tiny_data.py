#!/usr/bin/env python
"""Write a tiny model's training and held-out splits as JSON Lines, one document per line.

    python scripts/tiny_data.py OUT_DIR [SPLIT_JSON]    # OUT_DIR/train.jsonl, OUT_DIR/heldout.jsonl

The documents are those ``SPLIT_JSON`` names (default ``models/tiny-gemma4/split.json``: the
embedded default's CPython standard-library source files, read from this Python's stdlib); the files
are what ``edge-sdk qat models/tiny-gemma4/float --data OUT_DIR/train.jsonl --eval
OUT_DIR/heldout.jsonl`` reads. ``models/tiny-gemma4-prose/split.json`` names ``pydoc_data.topics``
topics instead. The sha256 of the texts is checked against split.json (another CPython's differ).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "tiny-gemma4"        # the embedded default: trained on stdlib source
PROSE = ROOT / "models" / "tiny-gemma4-prose"    # trained on pydoc_data.topics: the QAT studies' fixture
SPLIT = DEFAULT / "split.json"


def split_texts(split: dict) -> dict[str, str]:
    """name -> text of every document the split names (topics, or stdlib source files)."""
    names = split["train"] + split["heldout"]
    from edge_sdk.validate.quality import STDLIB_SOURCE
    if split["source"] == STDLIB_SOURCE:
        import sysconfig
        lib = Path(sysconfig.get_paths()["stdlib"])
        return {n: (lib / n).read_text(encoding="utf-8") for n in names}   # as train_tiny.code_texts
    from pydoc_data.topics import topics
    return {n: topics[n] for n in names}


def write_splits(out: Path, split_json: Path = SPLIT) -> dict[str, Path]:
    """OUT/train.jsonl and OUT/heldout.jsonl: the split's documents as the model ships them
    (``data/*.jsonl`` beside split.json, checked: ``quality.shipped_split``), else read from this
    Python (its stdlib files or pydoc topics; another CPython's differ: a warning)."""
    from edge_sdk.validate.quality import shipped_split
    split = json.loads(split_json.read_text())
    shipped = {part: shipped_split(split_json, part) for part in ("train", "heldout")}
    if all(v is not None for v in shipped.values()):
        texts = {n: t for part in shipped for n, t in zip(split[part], shipped[part])}
    else:
        texts = split_texts(split)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part in ("train", "heldout"):
        h = hashlib.sha256()
        for n in split[part]:
            h.update(n.encode() + b"\0" + texts[n].encode() + b"\0")
        if h.hexdigest() != split["sha256"][part]:
            print(f"warning: this Python's {part} texts differ from split.json's "
                  f"(Python {split['python']})", file=sys.stderr)
        paths[part] = out / f"{part}.jsonl"
        paths[part].write_text("".join(json.dumps({"text": texts[n]}) + "\n" for n in split[part]))
    return paths


def tiny_heldout(seq_len: int = 128, fixture: Path = PROSE):
    """The QAT studies' common start: ``(model class, corpus, float model, HeldOut)`` for a tiny
    model's splits (default: the prose fixture, which the committed studies measured) in
    ``seq_len``-token windows, the float model frozen, torch on one thread (deterministic)."""
    import tempfile

    import torch

    from edge_sdk.qat.data import load_corpus
    from edge_sdk.qat.monitor import HeldOut
    from edge_sdk.qat.train import _load_tokenizer

    torch.set_num_threads(1)
    data = write_splits(Path(tempfile.mkdtemp(prefix="tiny_data_")), fixture / "split.json")
    float_dir = fixture / "float"
    cls, tok = _load_tokenizer(float_dir)
    corpus = load_corpus(data["train"], tok, seq_len, data["heldout"])
    float_model = cls.from_pretrained(str(float_dir), dtype=torch.float32).eval()
    float_model.requires_grad_(False)
    return cls, corpus, float_model, HeldOut(corpus.heldout, float_model)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    for part, p in write_splits(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else SPLIT).items():
        print(f"{part}: {p}")

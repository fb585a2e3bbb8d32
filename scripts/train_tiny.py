#!/usr/bin/env python
"""Train a tiny Gemma 4 from scratch (and, without ``--float-only``, QAT-finetune it for ``mobile``).

    python scripts/train_tiny.py --float-only          # models/tiny-gemma4/float, the embedded default
    python scripts/qat_tiny.py                         # its qat/, with edge-sdk qat
    python scripts/train_tiny.py --corpus topics       # models/tiny-gemma4-prose (float/ and an older qat/)

Everything comes from the seed and this CPython's own text: ``--corpus code`` (the default) its
standard-library ``.py`` files of 2,000-40,000 bytes (1.16 M training tokens), ``--corpus topics``
the 79 topics of ``pydoc_data.topics`` (English prose, 119 k training tokens):

1. split: document names sorted; every 10th (index % 10 == 0) is held out → ``split.json``;
2. tokenizer: byte-level BPE trained with ``tokenizers`` on the TRAIN documents only, vocab 2048,
   Gemma-style special tokens ``<pad>``=0 ``<eos>``=1 ``<bos>``=2 ``<unk>``=3 ``<|turn>``=4
   ``<turn|>``=5 (Gemma 4's turn markers), a small chat template; BOS is prepended on encode;
3. model: ``Gemma4ForConditionalGeneration`` (see ``model_config``): 8 layers (6 sliding
   window 32 + 2 full), PLE, the last 2 layers KV-shared with double-wide MLPs, final logit
   softcapping 30, tied embeddings; tiny vision and audio towers, left untrained;
4. float training: AdamW (weight decay 0.5, attention dropout 0.1: a small corpus is memorised
   quickly), random windows of 128 tokens, 1500 (code) or 600 (topics) steps, warmup + cosine;
   saved bfloat16 to ``float/`` (HF layout + tokenizer);
5. QAT (this script's own loop, kept for the prose fixture's history; the committed ``qat/`` of
   both fixtures is ``scripts/qat_tiny.py``'s ``edge-sdk qat`` run): the bfloat16 float weights (as
   float32) under ``edge_sdk.qat.apply_qat(mobile)``:
   learnable per-channel scales starting at the PTQ scales, the PLE table dictionary-coded with
   codebooks refitted every ``--refresh`` steps (not during the last 20 %); loss = KL(float
   teacher || student) per token (self-distillation from the float model: exactly the quantity
   the evaluation reports; ``--qat-ce`` adds next-token cross-entropy); saved float32 on the
   grid to ``qat/`` with the scale and codebook sidecars (``export_qat`` verifies re-rounding
   error 0).

Bit-reproducible for the same seed, torch version and thread count (``--threads``, default 1:
on a 2-core machine shared with other jobs one thread is 3-5x faster than two).
``scripts/eval_tiny.py`` measures float / PTQ / QAT on the prose fixture's held-out topics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "models" / "tiny-gemma4"          # --corpus code: the embedded default
PROSE_OUT = ROOT / "models" / "tiny-gemma4-prose"      # --corpus topics

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>"]
PAD, EOS, BOS, UNK, TURN_OPEN, TURN_CLOSE = range(6)
VOCAB = 2048
CTX = 128
SPLIT_RULE = "topic names of pydoc_data.topics sorted; index % 10 == 0 held out, the rest train"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|turn>{{ m['role'] }}\n{{ m['content'] | trim }}<turn|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|turn>model\n{% endif %}")


# ---------------------------------------------------------------- data

def split_topics() -> dict:
    """The deterministic train / held-out split (names, sizes, sha256 of the texts)."""
    from pydoc_data.topics import topics
    names = sorted(topics)
    held = [n for i, n in enumerate(names) if i % 10 == 0]
    train = [n for i, n in enumerate(names) if i % 10 != 0]

    def digest(ns):
        h = hashlib.sha256()
        for n in ns:
            h.update(n.encode() + b"\0" + topics[n].encode() + b"\0")
        return h.hexdigest()

    return {"source": "pydoc_data.topics (CPython)", "python": sys.version.split()[0],
            "rule": SPLIT_RULE, "train": train, "heldout": held,
            "chars": {"train": sum(len(topics[n]) for n in train),
                      "heldout": sum(len(topics[n]) for n in held)},
            "sha256": {"train": digest(train), "heldout": digest(held)}}


CODE_RULE = ("CPython stdlib .py files of 2,000-{max} bytes (tests, idlelib, lib2to3, turtledemo, encodings, "
             "site-packages, pydoc_data left out), paths sorted; index % 10 == 0 held out, the rest train")


def code_files(max_bytes: int = 8000) -> list[Path]:
    import sysconfig
    lib = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "idlelib", "lib2to3", "turtledemo", "site-packages", "pydoc_data", "encodings")
    return [p for p in sorted(lib.rglob("*.py"))
            if not any(s in p.relative_to(lib).as_posix() for s in skip) and 2000 <= p.stat().st_size <= max_bytes]


def split_code(max_bytes: int = 40000) -> dict:
    """``--corpus code``: the stdlib's Python source as the corpus (the embedded default,
    ``models/tiny-gemma4``). Same dict as ``split_topics``; names are paths relative to the stdlib."""
    import sysconfig
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = code_files(max_bytes)
    names = [p.relative_to(lib).as_posix() for p in files]
    held = [n for i, n in enumerate(names) if i % 10 == 0]
    train = [n for i, n in enumerate(names) if i % 10 != 0]

    def digest(ns):
        h = hashlib.sha256()
        for n in ns:
            h.update(n.encode() + b"\0" + (lib / n).read_bytes() + b"\0")
        return h.hexdigest()

    from edge_sdk.validate.quality import STDLIB_SOURCE
    return {"source": STDLIB_SOURCE, "python": sys.version.split()[0], "rule": CODE_RULE.format(max=f"{max_bytes:,}"),
            "train": train, "heldout": held,
            "chars": {"train": sum(len(t) for t in code_texts(train)),
                      "heldout": sum(len(t) for t in code_texts(held))},
            "sha256": {"train": digest(train), "heldout": digest(held)}}


def code_texts(names) -> list[str]:
    import sysconfig
    lib = Path(sysconfig.get_paths()["stdlib"])
    return [(lib / n).read_text(encoding="utf-8") for n in names]


def topic_texts(names) -> list[str]:
    from pydoc_data.topics import topics
    return [topics[n] for n in names]


def stdlib_docstrings(min_chars: int = 200) -> list[str]:
    """Extra prose for ``--docstrings``: every module, class and function docstring of at least
    ``min_chars`` in this CPython's standard library (parsed with ``ast``, nothing imported; tests,
    IDLE, lib2to3 and pydoc_data left out), in path order. About 1.1 M characters on CPython 3.11."""
    import ast
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(lib.rglob("*.py")):
        rel = path.relative_to(lib).as_posix()
        if any(s in rel for s in ("test", "idlelib", "lib2to3", "turtledemo", "site-packages", "pydoc_data")):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    out.append(doc)
    return out


def without_overlap(texts: list[str], avoid: list[str], n: int = 64) -> list[str]:
    """``texts`` minus any that shares an ``n``-character string with the ``avoid`` texts (the
    held-out topics: nothing of them may leak into training)."""
    shingles = {t[i:i + n] for t in avoid for i in range(0, max(1, len(t) - n), n // 4)}
    return [d for d in texts if not any(d[i:i + n] in shingles for i in range(max(1, len(d) - n + 1)))]


def train_tokenizer(texts: list[str], vocab: int = VOCAB):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    assert [tok.token_to_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=["<|turn>", "<turn|>"],
        chat_template=CHAT_TEMPLATE, model_max_length=512, padding_side="left")


def token_stream(tok, texts: list[str]) -> np.ndarray:
    """Each document as ``<bos> text <eos>``, concatenated (int64)."""
    out = []
    for t in texts:
        out += [BOS] + tok.backend_tokenizer.encode(t, add_special_tokens=False).ids + [EOS]
    return np.asarray(out, dtype=np.int64)


def eval_windows(stream: np.ndarray, ctx: int = CTX) -> np.ndarray:
    """Non-overlapping windows [n, ctx] of the held-out stream (the tail shorter than ctx dropped);
    every position but the first of a window is scored."""
    n = len(stream) // ctx
    return stream[:n * ctx].reshape(n, ctx)


# ---------------------------------------------------------------- model

def model_config(vocab: int = VOCAB):
    from transformers import Gemma4Config
    layer_types = ["sliding_attention"] * 3 + ["full_attention"] + ["sliding_attention"] * 3 + [
        "full_attention"]
    text = dict(
        vocab_size=vocab, vocab_size_per_layer_input=vocab, hidden_size=128,
        intermediate_size=256, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, global_head_dim=64, num_global_key_value_heads=1,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=512, sliding_window=32,
        layer_types=layer_types, final_logit_softcapping=30.0, hidden_size_per_layer_input=32,
        num_kv_shared_layers=2, use_double_wide_mlp=True, tie_word_embeddings=True,
        rope_parameters={
            "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1e6,
                               "rope_type": "proportional"},
            "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}},
        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS, rms_norm_eps=1e-6)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=16, global_head_dim=16, patch_size=4,
                  pooling_kernel_size=2, position_embedding_size=64, max_position_embeddings=256)
    audio = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 subsampling_conv_channels=[8, 4], output_proj_dims=32, conv_kernel_size=3)
    return Gemma4Config(text_config=text, vision_config=vision, audio_config=audio,
                        tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=[EOS, TURN_CLOSE],
                        bos_token_id=BOS)


def generation_config():
    from transformers import GenerationConfig
    return GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, TURN_CLOSE], pad_token_id=PAD,
                            do_sample=False, max_new_tokens=64)


# ---------------------------------------------------------------- training

def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def sample_batch(stream: np.ndarray, rng: np.random.Generator, batch: int, ctx: int = CTX):
    import torch
    starts = rng.integers(0, len(stream) - ctx, size=batch)
    return torch.from_numpy(np.stack([stream[s:s + ctx] for s in starts]))


def heldout_nll(model, windows: np.ndarray, batch: int = 16) -> float:
    """Mean next-token NLL (nats) over every scored position of the held-out windows."""
    import torch
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = torch.from_numpy(windows[i:i + batch])
            logits = model(input_ids=x).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                    x[:, 1:].reshape(-1), reduction="sum")
            tot += nll.item()
            n += x[:, 1:].numel()
    model.train(was)
    return tot / n


def train_float(model, stream, windows, args, log):
    import torch
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    rng = np.random.default_rng(args.seed)
    model.train()
    t0 = time.time()
    for step in range(args.float_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.float_steps, args.lr, args.warmup)
        x = sample_batch(stream, rng, args.batch)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.log_every == 0 or step == args.float_steps - 1:
            msg = f"float step {step:5d} loss {loss.item():.3f} lr {opt.param_groups[0]['lr']:.2e}"
            if step % args.eval_every == 0 or step == args.float_steps - 1:
                msg += f" heldout ppl {math.exp(heldout_nll(model, windows)):.2f}"
            log(f"{msg}  [{time.time() - t0:.0f}s]")


def train_qat(model, teacher, stream, windows, args, log):
    import torch
    import torch.nn.functional as F
    from edge_sdk.qat import qat_parameters, refresh_codebooks

    scales, rest = qat_parameters(model)
    opt = torch.optim.AdamW([{"params": scales, "weight_decay": 0.0, "peak": args.qat_scale_lr},
                             {"params": rest, "weight_decay": 0.0, "peak": args.qat_lr}],
                            betas=(0.9, 0.95))
    rng = np.random.default_rng(args.seed + 1)
    stop_refresh = int(0.8 * args.qat_steps)
    model.train()
    teacher.eval()
    t0 = time.time()
    for step in range(args.qat_steps):
        if step and step % args.refresh == 0 and step < stop_refresh:
            refresh_codebooks(model)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.qat_steps, g["peak"], args.qat_warmup, floor=0.05)
        x = sample_batch(stream, rng, args.batch)
        out = model(input_ids=x, labels=x)
        loss = args.qat_ce * out.loss
        if args.distill > 0:
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(input_ids=x).logits.float(), -1)
            s_logp = F.log_softmax(out.logits.float(), -1)
            kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="none").sum(-1).mean()
            loss = loss + args.distill * kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.log_every == 0 or step == args.qat_steps - 1:
            msg = f"qat   step {step:5d} ce {out.loss.item():.3f} loss {loss.item():.3f}"
            if step % args.eval_every == 0 or step == args.qat_steps - 1:
                msg += f" heldout ppl {math.exp(heldout_nll(model, windows)):.2f}"
            log(f"{msg}  [{time.time() - t0:.0f}s]")


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="default: models/tiny-gemma4 (--corpus code), models/tiny-gemma4-prose (--corpus topics)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--float-steps", type=int, default=None, help="default: 1500 (--corpus code), 600 (topics)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=0.5)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--qat-steps", type=int, default=600)
    ap.add_argument("--qat-lr", type=float, default=3e-4)
    ap.add_argument("--qat-scale-lr", type=float, default=5e-3)
    ap.add_argument("--qat-warmup", type=int, default=50)
    ap.add_argument("--attn-dropout", type=float, default=0.1)
    ap.add_argument("--distill", type=float, default=1.0,
                    help="QAT loss weight of KL(float teacher || student)")
    ap.add_argument("--qat-ce", type=float, default=0.0,
                    help="QAT loss weight of the next-token cross-entropy")
    ap.add_argument("--refresh", type=int, default=50, help="refit PLE codebooks every N QAT steps")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--skip-float", action="store_true",
                    help="reuse an existing float/ checkpoint (QAT only)")
    ap.add_argument("--docstrings", action="store_true",
                    help="train the float model on the train topics + the stdlib's docstrings (4.5x the "
                    "tokens; the tokenizer stays the topics'): not the committed fixture, see docs/qat.md")
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="reuse this checkpoint's tokenizer instead of training one")
    ap.add_argument("--float-only", action="store_true", help="stop after float/ (no QAT)")
    ap.add_argument("--corpus", choices=("topics", "code"), default="code",
                    help="code: stdlib .py source (the embedded default); topics: pydoc_data.topics prose "
                    "(models/tiny-gemma4-prose); data/train.jsonl and data/heldout.jsonl are written to --out")
    ap.add_argument("--code-max-bytes", type=int, default=40000,
                    help="--corpus code: the largest source file taken (40000: 3.70 M characters of training text)")
    args = ap.parse_args(argv)
    code = args.corpus == "code"
    args.out = args.out or (DEFAULT_OUT if code else PROSE_OUT)
    args.float_steps = args.float_steps or (1500 if code else 600)

    import torch
    from transformers import AutoTokenizer, Gemma4ForConditionalGeneration

    from edge_sdk.qat import apply_qat, export_qat
    from edge_sdk.quant import PRESETS

    torch.set_num_threads(args.threads)
    t_start = time.time()

    def log(msg):
        print(msg, flush=True)

    out = args.out
    float_dir, qat_dir = out / "float", out / "qat"
    out.mkdir(parents=True, exist_ok=True)
    split, texts = ((split_code(args.code_max_bytes), code_texts) if args.corpus == "code"
                    else (split_topics(), topic_texts))
    (out / "split.json").write_text(json.dumps(split, indent=2) + "\n")
    if args.corpus != "topics":
        (out / "data").mkdir(exist_ok=True)
        for part in ("train", "heldout"):
            (out / "data" / f"{part}.jsonl").write_text(
                "".join(json.dumps({"text": t}) + "\n" for t in texts(split[part])))
    log(f"split: {len(split['train'])} train documents ({split['chars']['train']} chars), "
        f"{len(split['heldout'])} held out ({split['chars']['heldout']} chars)")

    if args.skip_float or args.tokenizer:
        tok = AutoTokenizer.from_pretrained(str(args.tokenizer or float_dir))
    else:
        tok = train_tokenizer(texts(split["train"]))
    train_texts = texts(split["train"])
    if args.docstrings:
        docs = without_overlap(stdlib_docstrings(), topic_texts(split["heldout"]))
        train_texts += docs
        log(f"+ {len(docs)} stdlib docstrings ({sum(map(len, docs))} chars)")
    train_ids = token_stream(tok, train_texts)
    windows = eval_windows(token_stream(tok, texts(split["heldout"])))
    log(f"tokenizer: vocab {len(tok)}; train {len(train_ids)} tokens, held-out "
        f"{windows.size} tokens in {len(windows)} windows of {CTX}")

    if not args.skip_float:
        torch.manual_seed(args.seed)
        cfg = model_config(len(tok))
        cfg.text_config.attention_dropout = args.attn_dropout
        model = Gemma4ForConditionalGeneration(cfg).float()
        model.generation_config = generation_config()
        n_text = sum(p.numel() for n, p in model.named_parameters() if "language_model" in n)
        n_all = sum(p.numel() for p in model.parameters())
        log(f"model: {n_text} text-decoder parameters, {n_all} in all")
        train_float(model, train_ids, windows, args, log)
        model.to(torch.bfloat16).save_pretrained(str(float_dir))
        tok.save_pretrained(str(float_dir))
        log(f"float checkpoint (bfloat16) → {float_dir}  [{time.time() - t_start:.0f}s]")
        del model
    if args.float_only:
        return 0

    # QAT from the stored bf16 weights, so that PTQ and QAT start from the very same numbers.
    teacher = Gemma4ForConditionalGeneration.from_pretrained(str(float_dir), dtype=torch.float32)
    student = Gemma4ForConditionalGeneration.from_pretrained(str(float_dir), dtype=torch.float32)
    for p in teacher.parameters():
        p.requires_grad_(False)
    log(f"float (bf16 stored) held-out ppl {math.exp(heldout_nll(teacher, windows)):.2f}")
    apply_qat(student, PRESETS["mobile"])
    log(f"PTQ start (mobile, max-abs scales) held-out ppl {math.exp(heldout_nll(student, windows)):.2f}")
    train_qat(student, teacher, train_ids, windows, args, log)
    student.eval()
    student.generation_config = generation_config()
    export_qat(student, qat_dir, tokenizer=tok, overwrite=True)   # replaces only an earlier QAT checkpoint
    log(f"QAT checkpoint (float32 on the mobile grid, re-rounding error 0) → {qat_dir}")
    for d in (float_dir, qat_dir):
        size = sum(f.stat().st_size for f in d.iterdir())
        log(f"  {d.name}/: {size / 1e6:.2f} MB")
    log(f"wall time {time.time() - t_start:.0f} s ({(time.time() - t_start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``qat(checkpoint, data, out, ...)``: QAT fine-tuning of a Hugging Face Gemma 4 checkpoint on the
user's text — what ``edge-sdk qat`` runs. The keyword arguments are the command's flags.

The run:
1. load the checkpoint twice in float32: the student gets ``apply_qat(recipe)`` (learned LSQ-style
   scales from the PTQ scales, dictionary codebooks from k-means), the float model is frozen: the
   distillation teacher (``teacher=True``: loss = KL(P_float || P_qat) per token, the quantity
   ``edge-sdk validate`` reports) and the monitor's reference; ``teacher=False`` trains on the
   next-token cross-entropy alone;
2. each step draws ``batch`` windows of ``seq_len`` tokens from the training stream with a NumPy
   generator seeded by ``(seed, step)`` — no generator state to carry, so ``resume`` continues the
   exact sequence; data-parallel ranks take rows ``rank::world`` of the same global batch. With
   ``teacher_samples`` N, half of each batch is drawn from N sequences the float model wrote from
   short training prompts (``samples``: more distinct contexts than the user's text has). Dropout
   is off (the student runs in eval mode: the grid, not noise, is what it must learn to absorb);
3. AdamW, no weight decay, three learning rates (``apply.qat_parameter_groups``): ``fine_lr`` for
   the latent weights on fine grids (int4/int8, dictionary tables: PTQ leaves them close and their
   steps are small), ``lr`` for the rest (2-bit latent weights, norms, scalars), ``scale_lr`` for the
   scale gains; linear warmup then cosine to
   5 %, gradient clipping 1.0; codebooks refitted every ``refresh_every`` steps until 80 % of the
   run (the last codebooks are the exported ones);
3b. with ``anneal_steps`` N > 0, N more steps after ``steps``: the latent weights are snapped onto
   their grid (``apply.snap_to_grid``), AdamW's moments are reset and a second warmup + cosine
   runs at ``ANNEAL_LR`` × the learning rates, codebooks fixed. On the tiny model this lowered the
   held-out KLD by a sixth where more steps of the first phase no longer did (docs/qat.md);
4. every ``eval_every`` steps: held-out PPL of QAT and float, KLD and top-1 vs float
   (``monitor.HeldOut``), the stop rule, and a resumable state under ``OUT/.qat_state``;
5. ``export_qat`` into ``out`` (float32 on the grid, re-rounding error 0, tokenizer files copied)
   and ``qat_report.json``/``.md``/``qat_curves.png``.

Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1) the student is wrapped in
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA); rank 0 evaluates, saves and exports. With
``fsdp`` the student and the teacher are sharded instead (FSDP2, ``sharding``: one unit per decoder
layer): every rank takes part in evaluating and in gathering what is saved; rank 0 writes.
Deterministic on CPU for a given seed, torch version and thread count (``threads``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import progress
from ..errors import CheckpointError, InputError, RecipeError
from ..options import QAT_ANNEAL_LR
from ..quant import load_recipe
from .apply import apply_qat, find_text_model, qat_parameter_groups, quantized_roles, refresh_codebooks, snap_to_grid
from .data import load_corpus
from .export import QAT_REPORT_FORMAT, QAT_STATE_DIR, check_qat_output, export_qat
from .monitor import HeldOut, StopRule, section_sensitivity, top1_by_margin, widen_advice
from .sharding import full_like, full_state, gather_into, load_full_state, refresh_sharded, shard, shard_like, snap_sharded
from .samples import teacher_samples as generate_samples

STATE_DIR = QAT_STATE_DIR
SAMPLE_SHARE = 0.5      # of each batch drawn from the teacher's samples (``teacher_samples`` > 0)
ANNEAL_LR = QAT_ANNEAL_LR   # the anneal phase's peak learning rates, as a share of ``lr`` / ``scale_lr``
STATE_KEYS = ("checkpoint", "recipe", "seed", "steps", "batch", "seq_len", "lr", "fine_lr", "scale_lr",
              "teacher", "refresh_every", "world_size", "teacher_samples", "anneal_steps", "equalize", "fsdp")


def saved_state(out: Path, settings: dict) -> dict:
    """``OUT/.qat_state``'s loop state, once its settings are checked against this run's: called
    before anything slow (teacher samples) so that a mismatch costs nothing. A run started with
    ``--minutes`` takes the saved run's step count."""
    d = out / STATE_DIR
    if not (d / "state.json").is_file():
        raise InputError("--resume: no saved QAT state here", path=d, fix="run without --resume first")
    meta = json.loads((d / "state.json").read_text())
    want = {k: settings[k] for k in STATE_KEYS}
    if meta["settings"]["steps"] is not None and settings["steps"] is None:
        want["steps"] = settings["steps"] = meta["settings"]["steps"]
    diff = {k: (meta["settings"].get(k), want[k]) for k in STATE_KEYS if meta["settings"].get(k) != want[k]}
    if diff:
        raise InputError(f"--resume: the saved run had other settings {diff}", path=d,
                         fix="resume with the same flags, or drop --resume to start over")
    return meta


@dataclass
class QATResult:
    out: Path
    report: dict

    @property
    def met(self) -> bool:
        return self.report["verdict"]["met"]


class _Dist:
    """torch.distributed from the launcher's environment (torchrun, accelerate launch)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device("cpu")
        if self.world > 1 and not torch.distributed.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        elif self.world == 1 and torch.cuda.is_available():
            self.device = torch.device("cuda")

    def broadcast(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(t, 0)
        return float(t.item())


def _load_tokenizer(checkpoint: Path):
    """(model class, tokenizer); ``InputError`` for what is not a Gemma 4 HF checkpoint. The
    directory is first read by edge-sdk's own reader (headers, config and every tensor's shape,
    no tensor data; pickle files refused): a config that does not match the weights is one line
    naming the tensor, not a transformers traceback or a layer silently initialised at random."""
    import transformers

    from ..quant.source import open_source

    if checkpoint.is_dir() and open_source(checkpoint).binding is None:
        raise CheckpointError("no weights here: QAT needs a checkpoint directory (config.json + *.safetensors)",
                              path=checkpoint)

    transformers.logging.set_verbosity_error()       # the tokenizer's "longer than max length" note
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars: progress is ours
    cfg_path = checkpoint / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError("not a Hugging Face checkpoint (no config.json)", path=checkpoint)
    try:
        archs = json.loads(cfg_path.read_text()).get("architectures") or []
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"config.json is not JSON ({e})", path=cfg_path) from None
    cls = next((getattr(transformers, a) for a in archs if a.startswith("Gemma4") and hasattr(transformers, a)),
               None)
    if cls is None:
        raise CheckpointError(f"not a Gemma 4 checkpoint (architectures {archs})", path=cfg_path)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"no usable tokenizer ({type(e).__name__})", path=checkpoint,
                              fix="save the tokenizer beside the weights (tokenizer.save_pretrained)") from None
    return cls, tok


def _load_models(cls, checkpoint: Path, dist, recipe_name, equalize: bool, fsdp: bool):
    """(student with the recipe's fake-quantizers, frozen float model, recipe), float32, in eval
    mode (no dropout). Under ``fsdp`` each is sharded as soon as it is ready: a process holds one
    whole model at a time on the CPU, never both."""
    def load(frozen: bool):
        m = cls.from_pretrained(str(checkpoint), dtype=torch.float32)
        m = (m if fsdp else m.to(dist.device)).eval()
        for p in m.parameters() if frozen else ():
            p.requires_grad_(False)
        return m

    student = load(False)
    recipe = _apply_recipe(student, recipe_name, equalize)
    if fsdp:   # before the optimizer and the teacher samples: both work on the shards
        shard(student, dist.world, dist.device)
    float_model = load(True)
    if fsdp:
        shard(float_model, dist.world, dist.device)
    return student, float_model, recipe


def _apply_recipe(student, recipe_name, equalize: bool = False):
    recipe = load_recipe(recipe_name)
    try:
        apply_qat(student, recipe, equalize=equalize)
    except (ValueError, TypeError) as e:
        raise RecipeError(f"recipe {recipe.name!r} cannot be applied to this checkpoint: {e}") from None
    if not quantized_roles(student):
        raise RecipeError(f"recipe {recipe.name!r} quantizes no weight of this checkpoint",
                          fix="use --recipe mobile, int4 or int8 (or a recipe whose patterns match)")
    text_params = {id(p) for p in find_text_model(student).parameters()}
    for p in student.parameters():   # vision/audio towers: not trained (and unused by text: DDP needs that said)
        if id(p) not in text_params:
            p.requires_grad_(False)
    return recipe


def _plain_student(cls, checkpoint: Path, recipe, equalize: bool):
    """A whole student on the CPU with the run's fake-quantizers: what rank 0 loads an FSDP run's
    gathered state into, to export it."""
    student = cls.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    apply_qat(student, recipe, equalize=equalize)
    return student


def lr_factor(step: int, steps: int, warmup: int, floor: float = 0.05) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def batch_at(stream: np.ndarray, seed: int, step: int, batch: int, seq_len: int,
             samples: np.ndarray | None = None) -> torch.Tensor:
    """The global batch of ``step``: ``batch`` random windows, from a generator seeded (seed, step);
    with teacher ``samples`` [n, seq_len], the last ``SAMPLE_SHARE`` of the rows are drawn from them."""
    rng = np.random.default_rng([seed, step])
    k = 0 if samples is None or not len(samples) else int(round(batch * SAMPLE_SHARE))
    starts = rng.integers(0, len(stream) - seq_len + 1, size=batch - k)
    rows = [stream[s:s + seq_len] for s in starts]
    if k:
        rows += list(samples[rng.integers(0, len(samples), size=k)])
    return torch.from_numpy(np.stack(rows))


def _loss(student, teacher, x, use_teacher: bool):
    logits = student(input_ids=x, use_cache=False).logits.float()
    if not use_teacher:
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    with torch.no_grad():
        t = F.log_softmax(teacher(input_ids=x, use_cache=False).logits.float(), -1)
    s = F.log_softmax(logits, -1)
    return F.kl_div(s, t, log_target=True, reduction="none").sum(-1).mean()


def _check_args(steps, minutes, batch, seq_len, eval_every, world, teacher_samples=0, anneal_steps=0,
                fsdp=False):
    if fsdp and world == 1:
        raise InputError("--fsdp shards the model over several processes, and this is one",
                         fix="launch with torchrun --nproc_per_node N (or accelerate launch), or drop --fsdp")
    for name, v in (("teacher-samples", teacher_samples), ("anneal-steps", anneal_steps)):
        if v < 0:
            raise InputError(f"--{name} must be 0 or more, got {v}")
    if (steps is None) == (minutes is None):
        if steps is None:
            return
        raise InputError("give --steps or --minutes, not both")
    for name, v in (("steps", steps), ("minutes", minutes), ("batch", batch), ("seq_len", seq_len),
                    ("eval_every", eval_every)):
        if v is not None and v <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if batch % world:
        raise InputError(f"--batch {batch} is not a multiple of the {world} processes",
                         fix=f"use a batch divisible by {world}")


def qat(checkpoint: str | PathLike, data: str | PathLike, out: str | PathLike, *, recipe: str = "mobile",
        steps: int | None = None, minutes: float | None = None, eval_file: str | PathLike | None = None,
        seed: int = 0, resume: bool = False, teacher: bool = True, chat: bool = False, batch: int = 16,
        seq_len: int | None = None, lr: float = 1e-3, fine_lr: float = 1e-4, scale_lr: float = 1e-2,
        refresh_every: int = 50,
        eval_every: int | None = None, max_ppl_increase: float | None = 0.05,
        threads: int | None = None, teacher_samples: int = 0, anneal_steps: int = 0,
        equalize: bool = False, fsdp: bool = False, overwrite: bool = False) -> QATResult:
    """Run QAT (module docstring); ``steps`` defaults to 600 unless ``minutes`` bounds the run
    instead (the step count is then fixed after 5 timed steps and recorded in the report).
    ``teacher_samples`` N > 0: N sequences the float model writes (``samples``) make up half of
    every batch. ``anneal_steps`` N > 0: N more steps, snapped to the grid, at ``ANNEAL_LR`` × the
    learning rates (module docstring, 3b). ``equalize``: learn per-input-column gains too, folded into
    the norms and up_proj at export (``apply_qat(equalize=True)``, ``equalize`` module). ``fsdp``:
    under several processes, shard student and teacher instead of replicating them (``sharding``).
    ``out`` must be missing or empty, or this command's own (``export.check_qat_output``): an
    unfinished run (``resume`` continues it) or, with ``overwrite``, a run or checkpoint to replace.
    Returns the report; the checkpoint is in ``out`` even when the stop rule's target is missed."""
    t0 = time.monotonic()
    dist = _Dist()
    _check_args(steps, minutes, batch, seq_len, eval_every, dist.world, teacher_samples, anneal_steps, fsdp)
    if threads:
        torch.set_num_threads(threads)
    ckpt, out = Path(checkpoint), Path(out)
    if out.resolve() == ckpt.resolve():
        raise InputError("the output directory is the checkpoint itself", path=out, fix="pick another -o")
    check_qat_output(out, resume=resume, overwrite=overwrite, sources=[ckpt])
    torch.manual_seed(seed)
    cls, tok = _load_tokenizer(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    max_pos = cfg.get("text_config", cfg).get("max_position_embeddings") or 512
    seq_len = seq_len or min(512, int(max_pos))
    corpus = load_corpus(data, tok, seq_len, eval_file, chat)
    seq_len = min(seq_len, len(corpus.train) - 1)
    load_recipe(recipe)    # a bad name or file: before the models load
    student, float_model, rec = _load_models(cls, ckpt, dist, recipe, equalize, fsdp)
    total = steps if steps is not None else (600 if minutes is None else None)
    settings = {"checkpoint": str(ckpt), "out": str(out), "recipe": rec.name, "seed": seed, "steps": total,
                "minutes": minutes, "batch": batch, "seq_len": seq_len, "lr": lr, "fine_lr": fine_lr,
                "scale_lr": scale_lr,
                "teacher": teacher, "refresh_every": refresh_every, "world_size": dist.world,
                "data": str(data), "eval": None if eval_file is None else str(eval_file),
                "train_tokens": int(len(corpus.train)), "documents": corpus.documents,
                "max_ppl_increase": max_ppl_increase, "threads": torch.get_num_threads(),
                "teacher_samples": teacher_samples, "anneal_steps": anneal_steps, "equalize": equalize,
                "fsdp": fsdp}
    meta = saved_state(out, settings) if resume else None
    samples = None
    if teacher_samples:
        t_gen = time.monotonic()
        with progress.stage("teacher samples", total=teacher_samples, unit="sequences"):
            samples = generate_samples(float_model, corpus.train, teacher_samples, seq_len, seed, dist.device)
        settings["samples_s"] = round(time.monotonic() - t_gen, 1)
    run = _Run(dist, student, float_model, corpus, settings, out, eval_every, samples)
    if meta is not None:
        run.restore(meta)
    run.train(minutes)
    return run.finish(tok, ckpt, t0, lambda: _plain_student(cls, ckpt, rec, equalize))


class _Run:
    """The training loop's state: model, optimizer, step, history; save/restore for ``--resume``."""

    def __init__(self, dist, student, float_model, corpus, settings, out: Path, eval_every, samples=None):
        self.dist, self.float_model, self.corpus, self.s, self.out = dist, float_model, corpus, settings, out
        self.samples = samples
        self.student = student
        self.model = student
        self.sharded = settings["fsdp"]
        if dist.world > 1 and not self.sharded:
            self.model = torch.nn.parallel.DistributedDataParallel(
                student, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        groups = zip(qat_parameter_groups(student), (settings["scale_lr"], settings["lr"], settings["fine_lr"]))
        self.opt = torch.optim.AdamW([{"params": ps, "lr": lr, "peak": lr} for ps, lr in groups],
                                     betas=(0.9, 0.95), weight_decay=0.0)
        self.step, self.evals, self.losses = 0, [], []
        self.eval_every = eval_every
        self.stop = StopRule(settings["max_ppl_increase"])
        self.stopped_early = False
        self.evaluates = dist.rank == 0 or self.sharded   # under FSDP every forward takes every rank
        self.held = HeldOut(corpus.heldout, float_model) if self.evaluates else None
        self.elapsed_before = 0.0
        self._t0 = time.monotonic()
        self._sized = False

    # ---- the loop
    def _plan(self, steps: int) -> None:
        self.s["steps"] = steps
        self.total = steps + self.s["anneal_steps"]
        self.warmup = max(1, min(50, steps // 10))
        self.refresh_until = int(0.8 * steps)
        self.every = self.eval_every or max(1, min(100, self.total // 10))

    def _lr_factor(self, step: int) -> float:
        """The share of the peak learning rates at ``step``: phase 1's warmup + cosine, then the
        anneal phase's own, scaled by ``ANNEAL_LR``."""
        steps, anneal = self.s["steps"], self.s["anneal_steps"]
        if step < steps:
            return lr_factor(step, steps, self.warmup)
        return ANNEAL_LR * lr_factor(step - steps, anneal, max(1, min(10, anneal // 10)))

    def _start_anneal(self) -> None:
        """Snap onto the grid and forget AdamW's moments (they belong to the unsnapped weights)."""
        (snap_sharded if self.sharded else snap_to_grid)(self.student)
        self.opt.state.clear()

    def train(self, minutes: float | None) -> None:
        if self.s["steps"] is not None:
            self._plan(self.s["steps"])
        else:
            self._plan(10 ** 9)
        if self.step == 0 and self.held is not None:
            self._evaluate(None)
        total = self.total if minutes is None else None
        stage = (progress.stage("QAT training", total=total, unit="steps") if self.dist.rank == 0
                 else nullcontext(progress.Stage(None, "QAT training", total, "steps")))   # one voice
        with stage as st:
            t_loop = time.monotonic()
            while self.step < self.total:
                if minutes is not None and self.step == 5 and not self._sized:
                    per = (time.monotonic() - t_loop) / 5
                    self._plan(max(6, int(self.dist.broadcast(minutes * 60 / per))))
                    self._sized = True
                    st.total = self.total
                loss = self._one_step()
                st.advance(1, note=f"loss {loss:.4f}")
                if self.step % self.every == 0 or self.step in (self.s["steps"], self.total):
                    if self._checkpoint_and_eval(loss, st):
                        self.stopped_early = True
                        break

    def _one_step(self) -> float:
        step, s = self.step, self.s
        if step and step % s["refresh_every"] == 0 and step < self.refresh_until:
            (refresh_sharded if self.sharded else refresh_codebooks)(self.student)
        if step == s["steps"] and s["anneal_steps"]:
            self._start_anneal()
        f = self._lr_factor(step)
        for g in self.opt.param_groups:
            g["lr"] = g["peak"] * f
        x = batch_at(self.corpus.train, s["seed"], step, s["batch"], s["seq_len"], self.samples)
        x = x[self.dist.rank::self.dist.world].to(self.dist.device)
        loss = _loss(self.model, self.float_model, x, s["teacher"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        value = float(loss.item())
        self.losses.append(value)
        return value

    def _evaluate(self, loss) -> dict:
        m = self.held.measure(self.student)
        m.update(step=self.step, loss=loss)
        self.evals.append(m)
        return m

    def _checkpoint_and_eval(self, loss: float, st) -> bool:
        stop = 0.0
        if self.dist.world > 1:   # the logged loss: the mean over the ranks' halves of the batch
            t = torch.tensor([loss], dtype=torch.float64, device=self.dist.device)
            torch.distributed.all_reduce(t)
            loss = float(t.item()) / self.dist.world
        if self.evaluates:
            m = self._evaluate(loss)
        if self.dist.rank == 0:
            st.log(f"step {self.step}/{self.total}  loss {loss:.4f}  held-out PPL {m['ppl']:.3f} "
                   f"(float {m['ppl_float']:.3f}, {m['ppl_increase']:+.1%})  KLD {m['kld']:.4f}  "
                   f"top-1 {m['top1']:.1%}")
            if self.step <= self.s["steps"]:   # the stop rule judges the first phase
                stop = float(self.stop.should_stop(m["ppl_increase"], self.step, self.s["steps"]))
        if self.step < self.total and (self.sharded or self.dist.rank == 0):
            self.save()                           # under FSDP gathering the state takes every rank
        return bool(self.dist.broadcast(stop))

    # ---- resume
    def save(self) -> None:
        """``OUT/.qat_state``: student tensors, AdamW moments (safetensors) and the loop state (JSON).
        Under FSDP every rank gathers its shards; rank 0 writes."""
        from safetensors.torch import save_file

        student = full_state(self.student)   # whole tensors, copies (the tied table's too)
        opt = {}
        params = [p for g in self.opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            for k, v in self.opt.state.get(p, {}).items():
                opt[f"{i}.{k}"] = v.detach().cpu().reshape(-1).clone() if k == "step" else full_like(v).detach().cpu()
        if self.dist.rank != 0:
            return
        d = self.out / STATE_DIR
        tmp = self.out / f"{STATE_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(student, str(tmp / "student.safetensors"))
        save_file(opt, str(tmp / "optimizer.safetensors"))
        meta = {"step": self.step, "settings": {k: self.s[k] for k in STATE_KEYS}, "evals": self.evals,
                "losses": self.losses, "stop_history": self.stop.history, "sized": self._sized,
                "elapsed_s": self.elapsed_before + time.monotonic() - self._t0}
        (tmp / "state.json").write_text(json.dumps(meta) + "\n")
        shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)

    def restore(self, meta: dict) -> None:
        """Load the tensors of the state ``saved_state`` has checked (``meta``: its loop state)."""
        from safetensors.torch import load_file

        d = self.out / STATE_DIR
        load_full_state(self.student, load_file(str(d / "student.safetensors")))
        opt = load_file(str(d / "optimizer.safetensors"))
        params = [p for g in self.opt.param_groups for p in g["params"]]
        for key, v in opt.items():
            i, k = key.split(".", 1)
            self.opt.state[params[int(i)]][k] = v.reshape(()) if k == "step" else shard_like(v, params[int(i)])
        self.step, self.evals, self.losses = meta["step"], meta["evals"], meta["losses"]
        self.stop.history = meta["stop_history"]
        self._sized = meta["sized"]
        self.elapsed_before = meta["elapsed_s"]

    # ---- the end
    def finish(self, tok, ckpt: Path, t0: float, plain) -> QATResult:
        """Report (every evaluating rank), then rank 0 exports; an FSDP run's shards are gathered
        into ``plain()``, a whole student, first."""
        report = self._report(t0) if self.evaluates else None
        student = self.student
        if self.sharded:
            student = plain() if self.dist.rank == 0 else None
            gather_into(self.student, student)
        if self.dist.rank == 0:   # built beside OUT, then renamed onto it (OUT's saved state goes with it)
            export_qat(student, self.out, tokenizer=tok if not ckpt.is_dir() else ckpt, report=report,
                       overwrite=True)
        if self.dist.world > 1:
            torch.distributed.barrier()
        return QATResult(self.out, report if self.dist.rank == 0 else {})

    def _report(self, t0: float) -> dict:
        last = self.evals[-1]
        verdict = {"max_ppl_increase": self.s["max_ppl_increase"], "met": self.stop.met(last["ppl_increase"]),
                   "stopped_early": self.stopped_early, "widen": []}
        sens = None
        if not verdict["met"]:
            sens = section_sensitivity(self.student, self.held)
            verdict["widen"] = widen_advice(sens, last["kld"])
        return {"format": QAT_REPORT_FORMAT, "settings": self.s, "steps_done": self.step,
                "wall_s": self.elapsed_before + time.monotonic() - t0,
                "heldout": {"windows": int(self.corpus.heldout.shape[0]),
                            "seq_len": int(self.corpus.heldout.shape[1]), "positions": self.held.positions},
                "evals": self.evals, "verdict": verdict, "sensitivity": sens,
                "top1_by_margin": top1_by_margin(self.student, self.held)}

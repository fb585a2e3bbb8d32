"""``export_qat(model, out_dir, recipe)``: an HF-layout checkpoint whose weights sit exactly on the QAT grid.

Writes into ``out_dir``:
- ``config.json`` (the model's config, ``dtype: float32``) and ``generation_config.json`` if the
  model has one;
- ``model.safetensors``: every tensor ``save_pretrained`` would write (same names; the tied LM
  head is not stored), all float32; fake-quantized ones hold ``w_hat`` — affine ``code * scale``,
  dictionary ``codebook[code]`` — bit for bit what the last forward used. float32 because
  ``code * scale`` is generally not representable in bfloat16 (a 4-bit code times an 8-bit
  mantissa needs up to 11 bits);
- ``qat_scales.safetensors`` (``quant.write_qat_sidecar``): the float32 scale of every affine
  role (``[out]`` channel, ``[out, in/block]`` block, the latter float16-exact), and the recipe;
- ``qat_codebooks.safetensors`` (``write_qat_codebooks``): ``<role>.codebooks``
  ``[groups, codebook_size]`` float32 of every dictionary role (the quant sidecar has no slot
  for codebooks yet);
- the tokenizer files, when ``tokenizer`` is given (an object with ``save_pretrained`` or a
  directory whose tokenizer/generation files are copied).

Atomic and ours only: ``out_dir`` must be missing or empty, or, with ``overwrite``, a QAT run or
checkpoint edge-sdk wrote (``check_qat_output`` below); everything (with ``report``: the run's
``qat_report.json``/``.md``/plot too) is written and verified in a staging directory beside it,
then renamed onto it (``outputs.staged_output``). An export killed at any point leaves ``out_dir``
as it was.

``verify_export(out_dir)`` re-reads the files and re-quantizes every stored weight with the
NumPy kernels and the exported scales/codebooks: the re-rounding error must be exactly 0.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterable
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import CheckpointError, InputError
from ..outputs import is_nonempty_dir, read_json_object, refuse_protected, staged_output
from ..gemma4.names import TEXT_PREFIXES, LM_HEAD
from ..quant import (AffineConfig, DictionaryConfig, Recipe, quantize, read_qat_sidecar,
                     write_qat_sidecar)
from ..quant.scales import SIDECAR_FORMAT, SIDECAR_NAME
from .apply import find_text_model, quantized_roles
from .equalize import fold_equalizers, has_equalizers
from .fake_quant import AffineQuantizer, DictionaryFakeQuantizer
from ..quant.codebooks import CODEBOOKS_NAME, dictionary_codes, read_qat_codebooks, write_qat_codebooks

WEIGHTS_NAME = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "chat_template.jinja", "generation_config.json")


def _hf_name(key: str) -> str | None:
    """state_dict key of a parametrized model → the plain model's key (None: not a weight)."""
    if ".parametrizations." not in key:
        return key
    head, tail = key.split(".parametrizations.", 1)
    param, rest = tail.split(".", 1)
    return f"{head}.{param}" if rest == "original" else None


@torch.no_grad()
def qat_state_dict(model: nn.Module) -> dict[str, np.ndarray]:
    """The plain (un-parametrized) state dict of ``model`` as float32 NumPy arrays, with every
    fake-quantized weight replaced by its ``w_hat``; tied weights stored once, like
    ``save_pretrained``."""
    sd = model.state_dict()
    out: dict[str, np.ndarray] = {}
    owners = dict(model.named_modules())
    for key in sd:
        name = _hf_name(key)
        if name is None:
            continue
        mod_name, _, attr = name.rpartition(".")
        module = owners[mod_name] if mod_name else model
        if parametrize.is_parametrized(module, attr):
            t = getattr(module, attr)          # runs the quantizer: w_hat
        else:
            t = sd[key]
        out[name] = t.detach().to(torch.float32).cpu().numpy().copy()
    tied = getattr(model, "_tied_weights_keys", None) or {}
    keys = tied.keys() if isinstance(tied, dict) else tied
    if getattr(model.config, "tie_word_embeddings", False):
        for k in keys:
            out.pop(k, None)
    return out


def qat_scales(model: nn.Module) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(``role -> float32 scales``, ``role -> float32 codebooks``) exactly as the forward uses them."""
    scales, books = {}, {}
    with torch.no_grad():
        for role, (_, q) in quantized_roles(model).items():
            if isinstance(q, AffineQuantizer):
                scales[role] = q.effective_scale().detach().cpu().numpy().astype(np.float32)
            elif isinstance(q, DictionaryFakeQuantizer):
                books[role] = q.codebooks.detach().cpu().numpy().astype(np.float32).copy()
    return scales, books


def _copy_tokenizer(tokenizer, out: Path) -> None:
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out))
        return
    src = Path(tokenizer)
    if not src.is_dir():
        raise CheckpointError("tokenizer must be a tokenizer object or a directory", path=src)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)


QAT_REPORT_FORMAT = "edge_sdk.qat_report"
QAT_STATE_DIR = ".qat_state"             # an unfinished run's resumable state, inside its output directory


def _safetensors_format(path: Path) -> str | None:
    """The ``format`` of a safetensors file's ``__metadata__`` (its JSON header only), or None."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 16 * 2**20:
                return None
            head = json.loads(f.read(n))
    except (OSError, ValueError, RecursionError):
        return None
    meta = head.get("__metadata__") if isinstance(head, dict) else None
    return meta.get("format") if isinstance(meta, dict) else None


def qat_output_kind(path: str | os.PathLike) -> str | None:
    """What edge-sdk's QAT left in ``path``: "run" (an unfinished ``edge-sdk qat`` run:
    ``.qat_state/state.json``), "checkpoint" (``export_qat``'s output: our ``qat_report.json``, or
    the scale sidecar with our format in its header) or None."""
    p = Path(path)
    state = read_json_object(p / QAT_STATE_DIR / "state.json")
    if state is not None and isinstance(state.get("settings"), dict) and "step" in state:
        return "run"
    report = read_json_object(p / "qat_report.json")
    if report is not None and report.get("format") == QAT_REPORT_FORMAT:
        return "checkpoint"
    return "checkpoint" if _safetensors_format(p / SIDECAR_NAME) == SIDECAR_FORMAT else None


def check_qat_output(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool,
                     sources: Iterable[str | os.PathLike] = ()) -> None:
    """Raise ``InputError`` unless ``edge-sdk qat`` may write ``out_dir``: missing or empty; with
    ``resume``, its own unfinished run (the saved state is checked later); with ``overwrite``, its
    own unfinished run or earlier checkpoint. Anything else in it is never replaced."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a directory", path=out, fix="choose a directory")
    if out.exists():   # the finished checkpoint replaces the directory as a whole
        refuse_protected(out, sources, "choose a new output directory", action="write a QAT checkpoint there")
    if not is_nonempty_dir(out):
        return
    kind = qat_output_kind(out)
    if kind is None:
        raise InputError("output directory is not empty, and not a QAT run or checkpoint edge-sdk wrote",
                         path=out, fix="choose a new or empty output directory (nothing in it is replaced)")
    if resume and kind == "run":
        return
    if not overwrite:
        if kind == "run":
            raise InputError("output directory holds an unfinished QAT run", path=out,
                             fix="pass --resume to continue it, or --overwrite to start over")
        raise InputError("output directory holds the QAT checkpoint of an earlier run", path=out,
                         fix="choose a new directory, or pass --overwrite to replace it")


def export_qat(model: nn.Module, out_dir: str | PathLike, recipe: Recipe | None = None, *,
               tokenizer=None, verify: bool = True, report: dict | None = None,
               overwrite: bool = False) -> Path:
    """Write the QAT checkpoint (see module docstring); returns ``out_dir``.

    ``recipe`` defaults to the one ``apply_qat`` used. Call it on the unwrapped model on one rank
    (under FSDP, gather a full state first). With ``verify`` (default) the written files are
    re-read and checked to re-quantize with error exactly 0 (raises ``CheckpointError`` if not).
    ``report``: a run's report (``report.write_report``), written beside the weights.
    """
    recipe = recipe or getattr(model, "_edge_sdk_qat_recipe", None)
    if recipe is None:
        raise CheckpointError("export_qat needs the recipe (model was not prepared by apply_qat)")
    out = Path(out_dir)
    check_qat_output(out, resume=False, overwrite=overwrite)
    with staged_output(out, "qat", replace=overwrite) as staging:
        _write_export(model, staging, recipe, tokenizer)
        if report is not None:
            from .report import write_report
            write_report(staging, report)
        if verify:
            errs = verify_export(staging, model=model)
            bad = {r: e for r, e in errs.items() if e != 0.0}
            if bad:
                raise CheckpointError(f"exported weights are off their QAT grid: {bad}", path=out)
    return out


def _write_export(model: nn.Module, out: Path, recipe: Recipe, tokenizer) -> None:
    from safetensors.numpy import save_file

    if has_equalizers(model):      # the written model is the folded one: plain per-channel grids
        model = copy.deepcopy(model)
        fold_equalizers(model)
    sd = qat_state_dict(model)
    scales, books = qat_scales(model)
    save_file({k: np.require(v, requirements="C") for k, v in sorted(sd.items())}, str(out / WEIGHTS_NAME),
              metadata={"format": "pt"})
    write_qat_sidecar(out / SIDECAR_NAME, scales, recipe)
    if books:
        write_qat_codebooks(out / CODEBOOKS_NAME, books)
    cfg = copy.deepcopy(model.config)
    cfg.dtype = torch.float32
    if not getattr(cfg, "architectures", None):
        cfg.architectures = [type(model).__name__]
    cfg.save_pretrained(str(out))
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(str(out))
    if tokenizer is not None:
        _copy_tokenizer(tokenizer, out)


def _prefix_of(model: nn.Module) -> str:
    text = find_text_model(model)
    for name, m in model.named_modules():
        if m is text:
            return f"{name}." if name else ""
    raise AssertionError


def verify_export(out_dir: str | PathLike, model: nn.Module | None = None,
                  prefix: str | None = None) -> dict[str, float]:
    """Re-quantize every exported weight with the NumPy kernels and the exported scales or
    codebooks; ``role -> max re-rounding error`` (0.0 for a true QAT export).

    ``prefix``: where the text decoder's names start (``model.language_model.`` for
    ``Gemma4ForConditionalGeneration``); taken from ``model`` when given, else guessed."""
    from safetensors import safe_open

    out = Path(out_dir)
    side = read_qat_sidecar(out / SIDECAR_NAME)
    books = read_qat_codebooks(out / CODEBOOKS_NAME) if (out / CODEBOOKS_NAME).is_file() else {}
    errors: dict[str, float] = {}
    with safe_open(str(out / WEIGHTS_NAME), framework="numpy") as f:
        keys = set(f.keys())
        if prefix is None:
            prefix = _prefix_of(model) if model is not None else next(
                (p for p in TEXT_PREFIXES if f"{p}embed_tokens.weight" in keys), "")
        for role, s in side.scales.items():
            name = f"{prefix}{role}.weight" if role != LM_HEAD else f"{LM_HEAD}.weight"
            if name not in keys:
                raise CheckpointError("sidecar scale for a tensor not in the checkpoint", path=out,
                                      tensor=name)
            cfg = _config(side.recipe, role)
            if not isinstance(cfg, AffineConfig):
                raise CheckpointError(f"recipe does not give '{role}' an affine config", path=out)
            w = f.get_tensor(name)
            errors[role] = quantize(w, cfg, scales=s).error
        for role, b in books.items():
            name = f"{prefix}{role}.weight"
            cfg = _config(side.recipe, role)
            if not isinstance(cfg, DictionaryConfig):
                raise CheckpointError(f"recipe does not give '{role}' a dictionary config", path=out)
            w = f.get_tensor(name)
            errors[role] = dictionary_error(w, b, cfg)
    return errors


def _config(recipe: Recipe, role: str):
    from ..quant import resolve
    return resolve(recipe, role)


def dictionary_error(w: np.ndarray, codebooks: np.ndarray, cfg: DictionaryConfig) -> float:
    """max |w - codebook[code(w)]| with the NumPy kernel's code assignment for given codebooks."""
    codes = dictionary_codes(w, codebooks, cfg)
    group = np.arange(w.shape[0]) // cfg.rows_per_codebook
    w_hat = codebooks[group[:, None], codes]
    return float(np.max(np.abs(w.astype(np.float32) - w_hat))) if w.size else 0.0

"""Write a converted model directory: three .tflite files, plan.json, conversion.json, model.json.

Atomicity: everything is written into a staging directory beside OUT_DIR
(``.<name>.convert-<pid>-<hex>.tmp`` in OUT_DIR's parent, same filesystem) and renamed onto
OUT_DIR at the very end, so a conversion killed at any point leaves no model file in OUT_DIR
(only a hidden staging directory, removed by the next conversion once its process is gone).
An existing non-empty OUT_DIR is replaced only with ``overwrite`` (renamed aside, the new one
renamed in, the old one deleted).

Determinism: same checkpoint + recipe + geometry → byte-identical .tflite files, plan.json and
model.json (no timestamps; conversion.json alone records wall time and peak RSS).

``model.json`` is the contract other tools read (runtime, validator, bundler):

- ``format`` "edge_sdk.litert_model", ``version`` 1, ``edge_sdk_version``, ``model_type``,
  ``recipe`` (name), ``text_only``, ``context`` (KV cache length C), ``prefill`` (chunk length T),
  ``vocab_size``, ``hidden_size``, ``num_layers``, ``bos_token_id``, ``eos_token_id`` (list: config
  + generation_config), ``pad_token_id``;
- ``files``: {prefill_decode|embedder|per_layer_embedder: {file, sha256, bytes, section_type}}
  (per_layer_embedder only with PLE; section_type is LiteRT-LM's ``model_type`` item);
- ``signatures``: {prefill_decode: {prefill: "prefill_<T>", decode: "decode", score: "score_<T>",
  decode_<S>: "decode_<S>" for each of ``Geometry.decode_spans``},
  embedder: {prefill, decode}, per_layer_embedder: {prefill, decode}};
- ``spec``: vocab/hidden/heads/layers/eps, ``final_logit_softcapping`` (+ ``softcap_in_graph``),
  ``sliding_window``, ``embed_scale``, ``kv_layers``, ``num_kv_shared_layers``, ``layers`` [{index,
  attention, head_dim, num_kv_heads, kv_source, window, intermediate_size, k_eq_v}], ``ple``
  ({num_layers, dim, vocab_size, scale} or null);
- ``kv_cache``: the KV layout (``edge_sdk.quant.kv_layout.KvLayout.to_json``, read back with
  ``KvLayout.from_json``): ``dtype`` (float32 | int8), ``quantization`` "per_tensor",
  ``zero_point`` 0, ``context``, ``prefill``, ``scales`` {buffer: scale}, ``requested`` (the recipe's
  bits/granularity), ``adaptation`` (what differs from it, or null), ``emitted``, ``bytes`` (all
  state buffers), ``buffers`` [{name, layer, kind k|v, shape, dtype, sequence_axis, length,
  attention, window, ring, scale_granularity, bytes, scale}] in LiteRT-LM's order (k_i, v_i by
  layer), layouts, update rule (sliding layers: ring buffers of min(C, W + T - 1) slots);
- ``mask``: input name, shape [1, 1, T, C], attend 0.0, masked -1e30 (any <= -1e9), causal over
  the cache; ``logits``: shapes per signature (prefill: none), ``softcapped``;
- ``tokenizer``: {file: "tokenizer.json" | null, files: [copied tokenizer/generation files]};
- ``requires_xnnpack``: null, or {reason, tensors} when some weights are right only in XNNPACK
  (``requires_xnnpack``); runners refuse ``backend="builtin"`` for such a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import __version__
from ..artefacts import ConversionRecord, ModelInfo, PlanRecord
from .. import progress as P
from ..checkpoint import Checkpoint
from ..errors import InputError
from .. import options as O
from ..hashing import sha256_file
from ..outputs import staged_output
from ..quant.apply import Preparer
from ..quant.kv import kv_scales as compute_kv_scales
from ..quant.kv_layout import kv_layout
from ..quant.plan import QuantPlan
from ..quant.recipe import recipe_to_dict
from ..gemma4 import Binding, ModelSpec
from .gemma4 import Geometry, build_embedder, build_prefill_decode, cache_buffers
from .gemma4_attention import MASKED
from .gemma4_rows import RowSlicer
from .gemma4_weights import WeightBank
from .writer import LiteRTWriter

MODEL_FORMAT, MODEL_FORMAT_VERSION = ModelInfo.FORMAT, ModelInfo.VERSION
SECTION_TYPES = {"prefill_decode": "tf_lite_prefill_decode", "embedder": "tf_lite_embedder",
                 "per_layer_embedder": "tf_lite_per_layer_embedder"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "generation_config.json", "chat_template.jinja")


@dataclass(frozen=True)
class ConversionResult:
    out_dir: Path
    files: dict[str, Path]          # model key → .tflite path
    model: ModelInfo                # model.json
    conversion: ConversionRecord    # conversion.json
    wall_s: float


def verify_files(model_dir: str | Path, files: dict) -> None:
    """Refuse a converted model whose files are not the bytes ``model.json`` records (``files``:
    its graph -> {file, sha256, bytes} map): a bit flip, a truncated copy, a file swapped in; one
    line naming the file. Records without a sha256 (older model.json) are checked for size only."""
    for key, rec in (files or {}).items():
        if not isinstance(rec, dict) or "file" not in rec:
            continue
        p = Path(model_dir) / rec["file"]
        if not p.is_file():
            raise InputError(f"{rec['file']} ({key}) is missing", path=p,
                             fix="convert again, or copy the whole model directory")
        size = rec.get("bytes")
        if isinstance(size, int) and p.stat().st_size != size:
            raise InputError(f"{p.stat().st_size} bytes, model.json records {size}: a truncated or changed copy",
                             path=p, fix="convert again, or copy the whole model directory")
        if rec.get("sha256") and sha256_file(p) != rec["sha256"]:
            raise InputError("its sha256 differs from the one model.json records: the file changed after "
                             "conversion (corrupt copy?)", path=p, fix="convert again, or copy it again")


def export_model(ckpt: Checkpoint, spec: ModelSpec, binding: Binding, plan: QuantPlan,
                 out_dir: str | os.PathLike, *, text_only: bool, context: int, prefill: int,
                 score: bool = True, overwrite: bool = False, progress: bool | None = None,
                 fsync: bool = True, decode_spans: int = O.DECODE_SPANS) -> ConversionResult:
    """Convert (see the module docstring). Progress (one stage per model file, a bar on a
    terminal, one line per stage otherwise) goes to the current ``edge_sdk.progress`` reporter:
    ``progress`` None = whatever the caller set up (the CLI: on), True = on stderr, False = off."""
    t0 = time.monotonic()
    if prefill < 1 or context < 1:
        raise InputError(f"context ({context}) and prefill ({prefill}) must be positive")
    if prefill > context:
        raise InputError(f"prefill length {prefill} exceeds the context {context}",
                         fix="use --prefill <= --context")
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InputError("output directory is not empty", path=out_dir,
                         fix="choose a new directory, or pass --overwrite")
    with staged_output(out_dir, "convert", replace=overwrite) as staging:
        result = _convert_into(staging, ckpt, spec, binding, plan, text_only=text_only,
                               context=context, prefill=prefill, score=score, progress=progress,
                               fsync=fsync, t0=t0, out_dir=out_dir, decode_spans=decode_spans)
    files = {k: out_dir / v.name for k, v in result.files.items()}
    return ConversionResult(out_dir, files, result.model, result.conversion, result.wall_s)


def _convert_into(staging: Path, ckpt: Checkpoint, spec: ModelSpec, binding: Binding,
                  plan: QuantPlan, *, text_only, context, prefill, score, progress, fsync, t0,
                  out_dir, decode_spans=0) -> ConversionResult:
    text = spec.text
    prep = Preparer(ckpt, binding, plan)
    layout = kv_layout(text, plan.kv_cache, context, prefill)   # refuses float16
    scales = None
    if layout.dtype == "int8":
        scales = compute_kv_scales({i: prep.read_f32(f"layers.{i}.self_attn.k_norm.weight")
                                    for i in text.kv_layers})
    geo = Geometry(context=context, prefill=prefill, kv=layout, kv_scales=scales, score=score, spans=decode_spans)
    models = ["embedder"] + (["per_layer_embedder"] if text.has_ple else []) + ["prefill_decode"]
    tensors = [t for t in plan.tensors if t.model in models]
    live: list[P.Stage] = []
    bank = WeightBank(plan, prep.prepare, on_data=lambda name, nbytes: live and live[-1].advance(nbytes),
                      rows=RowSlicer(prep))
    files: dict[str, Path] = {}
    builders: dict[str, Callable[[LiteRTWriter], None]] = {
        "embedder": lambda w: build_embedder(w, text, bank, geo, per_layer=False),
        "per_layer_embedder": lambda w: build_embedder(w, text, bank, geo, per_layer=True),
        "prefill_decode": lambda w: build_prefill_decode(w, text, bank, geo),
    }
    with (P.reporting("convert") if progress else nullcontext()):
        for key in models:
            path = staging / f"{key}.tflite"
            total = sum(t.data_bytes for t in tensors if t.model == key)
            stage = P.stage(f"{key}.tflite", total=total, unit="MB") if progress is not False else nullcontext()
            with stage as st:
                live[:] = [st] if st is not None else []
                w = LiteRTWriter(path, description=f"edge_sdk {__version__}: Gemma 4 {key}", fsync=fsync)
                with w:
                    builders[key](w)
                    w.finish()
            files[key] = path
        live.clear()
    missing = [t.name for t in tensors if t.name not in bank.records]
    if missing:
        raise InputError(f"planned tensors not written to any model: {missing[:5]}")

    model_doc, conv, wall = _write_records(staging, ckpt, spec, plan, geo, bank, models, files,
                                           text_only=text_only, context=context, prefill=prefill,
                                           progress=progress, t0=t0, out_dir=out_dir)
    return ConversionResult(out_dir, files, model_doc, conv, wall)


def _write_records(staging: Path, ckpt: Checkpoint, spec: ModelSpec, plan: QuantPlan, geo, bank,
                   models: list[str], files: dict[str, Path], *, text_only, context, prefill, progress,
                   t0, out_dir):
    """The tokenizer files copied beside the models, then plan.json, conversion.json and, last (the
    directory's "complete" marker), model.json; returns (ModelInfo, ConversionRecord, wall s)."""
    copied = []
    for name in TOKENIZER_FILES:
        src = Path(ckpt.path) / name
        if src.is_file():
            shutil.copyfile(src, staging / name)
            copied.append(name)
    with (P.stage("sha256 of inputs and outputs") if progress is not False else nullcontext()):
        outputs = {k: {"file": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size,
                       "section_type": SECTION_TYPES[k]} for k, p in files.items()}
        inputs = {p.name: sha256_file(p) for p in sorted(Path(ckpt.path).iterdir())
                  if p.is_file() and not p.name.startswith(".")}
    plan_doc = plan_json(plan, bank.records, models, ckpt.config)
    model_doc = dataclasses.replace(model_json(spec, plan, geo, outputs, text_only, copied, _generation_eos(ckpt)),
                                    requires_xnnpack=requires_xnnpack(bank.requires_xnnpack))
    _write_json(staging / "plan.json", plan_doc.to_json())
    wall = time.monotonic() - t0
    conv = ConversionRecord(
        edge_sdk_version=__version__,
        source={"path": str(Path(ckpt.path).absolute()), "files": inputs},
        output_dir=str(out_dir),
        outputs={v["file"]: v["sha256"] for v in outputs.values()},
        recipe=recipe_to_dict(plan.recipe),
        text_only=text_only, context=context, prefill=prefill,
        kv_cache=model_doc.kv_cache["emitted"],
        wall_s=round(wall, 3),
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        rerounding_error={k: v["error"] for k, v in sorted(bank.records.items())},
        scale_sources={k: v["scale_source"] for k, v in sorted(bank.records.items())},
    )
    _write_json(staging / "conversion.json", conv.to_json())
    _write_json(staging / "model.json", model_doc.to_json())   # last: the directory's "complete" marker
    return model_doc, conv, wall


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def _generation_eos(ckpt: Checkpoint) -> list[int]:
    p = Path(ckpt.path) / "generation_config.json"
    try:
        v = json.loads(p.read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return []
    return [int(x) for x in (v if isinstance(v, list) else [] if v is None else [v])]


def requires_xnnpack(tensors: dict[str, str]) -> dict | None:
    """model.json ``requires_xnnpack``: null when every CPU kernel path computes the model right;
    else {reason, tensors {name: why}}: weights only XNNPACK computes right (per-channel INT8
    codes holding -128, see ``gemma4_weights.WeightBank._full_range``). Runners refuse the
    builtin kernels for such a model."""
    if not tensors:
        return None
    first = next(iter(sorted(tensors)))
    return {"reason": (f"{len(tensors)} weight tensor(s) (first: {first}) hold the most negative "
                       "code, which LiteRT's builtin FULLY_CONNECTED kernel miscomputes; XNNPACK is right"),
            "tensors": dict(sorted(tensors.items()))}


def plan_json(plan: QuantPlan, records: dict, models: list[str], source_config: dict) -> PlanRecord:
    """plan.json: a row per written tensor (``TensorPlan.to_json`` and what the writer recorded)
    and ``source_config`` (the checkpoint's config.json, which the spec was read from), so that
    ``quant.plan.plan_from_rows`` rebuilds the plan from the model's own files."""
    rows = []
    for t in plan.tensors:
        if t.model not in models:
            continue
        d = t.to_json()
        r = records.get(t.name, {})
        d["planned_scale_source"] = d.pop("scale_source")
        d["scale_source"] = r.get("scale_source", d["planned_scale_source"])
        d["rerounding_error"] = r.get("error")
        if r.get("note"):
            d["note"] = r["note"]
        if r.get("encoding"):
            d["encoding"] = r["encoding"]
        d["file"] = f"{t.model}.tflite"
        rows.append(d)
    return PlanRecord(recipe=plan.recipe.name, data_bytes=sum(r["data_bytes"] for r in rows),
                      overhead_bytes=sum(r["overhead_bytes"] for r in rows), tensors=tuple(rows),
                      source_config=source_config)


def model_json(spec: ModelSpec, plan: QuantPlan, geo: Geometry, outputs: dict, text_only: bool,
               tokenizer_files: list[str], generation_eos: list[int]) -> ModelInfo:
    """The contract: what the files are, how to drive them, and what the model is."""
    t = spec.text
    eos = list(dict.fromkeys(list(t.eos_token_ids) + generation_eos))
    lay = geo.kv
    emitted = ({"dtype": "float32"} if lay.dtype == "float32" else
               {"dtype": "int8", "quantization": "per_tensor", "zero_point": 0,
                "rounding": "half away from zero (TFLite QUANTIZE)"})
    return ModelInfo.from_json({
        "format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION, "edge_sdk_version": __version__,
        "model_type": spec.model_type, "recipe": plan.recipe.name, "text_only": text_only,
        "context": geo.context, "prefill": geo.prefill,
        "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "num_layers": t.num_layers,
        "bos_token_id": t.bos_token_id, "eos_token_id": eos, "pad_token_id": t.pad_token_id,
        "files": outputs,
        "signatures": {k: geo.signatures(k) for k in outputs},
        "spec": {
            "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "num_heads": t.num_heads,
            "num_layers": t.num_layers, "rms_norm_eps": t.rms_norm_eps,
            "final_logit_softcapping": t.final_logit_softcapping, "softcap_in_graph": bool(t.final_logit_softcapping),
            "sliding_window": t.sliding_window, "embed_scale": t.embed_scale,
            "kv_layers": list(t.kv_layers), "num_kv_shared_layers": t.num_kv_shared_layers,
            "layers": [{"index": ly.index, "attention": ly.attention, "head_dim": ly.head_dim,
                        "num_kv_heads": ly.num_kv_heads, "kv_source": ly.kv_source, "window": ly.window,
                        "intermediate_size": ly.intermediate_size, "k_eq_v": ly.k_eq_v}
                       for ly in t.layers],
            "ple": None if not t.has_ple else {
                "num_layers": t.num_layers, "dim": t.hidden_size_per_layer_input,
                "vocab_size": t.vocab_size_per_layer_input,
                "scale": t.hidden_size_per_layer_input ** 0.5},
        },
        "kv_cache": {
            **emitted, "emitted": emitted,
            "layout_version": lay.to_json()["layout_version"], "context": lay.context,
            "prefill": lay.prefill,
            "requested": {"bits": lay.requested_bits, "granularity": lay.requested_granularity},
            "adaptation": lay.adaptation, "bytes": lay.bytes,
            "scales": dict(geo.kv_scales or {}),
            "buffers": cache_buffers(geo),
            "k_layout": "[1, num_kv_heads, length, head_dim] (sequence axis 2)",
            "v_layout": "[1, num_kv_heads, head_dim, length] (sequence axis 3)",
            "update": ("full-length (ring false): DYNAMIC_UPDATE_SLICE at input_pos[0], slot j = position j; "
                       "ring (sliding layers, length min(context, window + prefill - 1)): position p is "
                       "written to slot p mod length, slot s holds the latest written position ≡ s"),
            "sliding_layers": ("ring buffers; the graph derives each slot's position from input_pos and "
                               "applies causality and the window itself" if lay.ring_layers else
                               "the window is applied in the graph from input_pos"),
        },
        "mask": {"input": "mask", "shape": [1, 1, "T", geo.context], "attend": 0.0,
                 "masked": float(MASKED), "causal_over_cache": True,
                 "note": "any masked value <= -1e9 works; the graph masks sliding windows itself"},
        "logits": {"decode": [1, 1, t.vocab_size], "score": [1, geo.prefill, t.vocab_size] if geo.score else None,
                   "prefill": None, "softcapped": bool(t.final_logit_softcapping)},
        "tokenizer": {"file": "tokenizer.json" if "tokenizer.json" in tokenizer_files else None,
                      "files": tokenizer_files},
    })

"""``edge_sdk_manifest``: one JSON document, stored in the bundle's system metadata (the engine
ignores entries it does not know) and, byte for byte the same, beside the bundle as
``<bundle>.manifest.json`` so an app can decide before loading (``android_demo`` reads it).

Keys (every byte figure in bytes; GB = 10^9):

- ``format`` ("edge_sdk_manifest"), ``version`` (1), ``created_by`` (edge-sdk and builder versions);
- ``bundle``: ``bytes`` (file size), ``container`` ("litertlm 1.7.0"); no file name, so the bytes
  do not depend on what the bundle is called;
- ``model``: ``llm_model_type`` ("gemma4"), ``vocab_size``, ``context`` (KV cache length),
  ``max_num_tokens``, ``prefill_lengths``, ``kv_cache`` (``dtype``, ``layers``, ``buffers``, ``scales``
  for int8), ``bos_token_id``, ``stop_token_ids``, ``stop_strings``, ``has_chat_template``,
  ``text_only``;
- ``recipe`` (name), ``conversion`` (recipe, the source checkpoint's directory name, the
  converter's sha256 per file);
- ``plan``: ``recipe``, ``weight_bytes`` (plan.json), and the planner at the model's context
  (``context``, ``prefill``, ``distinct_tokens``, ``bytes`` {resident, mapped, mapped_touched,
  kv_cache, activation, peak}) when the source checkpoint is at hand; or null;
- ``memory``: ``planned_peak_bytes`` (what the app compares ``availMem`` with), ``planned_source``
  ("planner", or "bundle_size" when no plan is at hand: the sum of the model sections, an
  upper bound for mmapped weights), ``planned_context``, ``validated_budget_bytes``,
  ``validated_model_peak_bytes``, ``validated_peak_rss_bytes``, ``validated_passed`` (from
  ``report.json``; null when the model was not validated);
- ``sections``: per section ``index``, ``type``, ``model_type``, ``source``, ``begin``, ``end``,
  ``bytes``, ``sha256`` (of the section's bytes in the file);
- ``adaptations``: where the bundled model departs from its recipe so that LiteRT-LM runs it
  (``part``, ``requested``, ``bundled``, ``why``); today only the KV cache: int8 with one scale per
  cache buffer where the mobile recipe asks per-(token, head) scales (the converter's choice,
  recorded in model.json); ``warnings``.
"""

from __future__ import annotations

import json
from importlib import metadata as importlib_metadata
from pathlib import Path

from ..artefacts import ConversionRecord, PlanRecord
from ..errors import InputError
from . import container as ct

MANIFEST_KEY = "edge_sdk_manifest"
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"


def dumps(manifest: dict) -> str:
    """The manifest's one serialization (header entry and side file are these exact bytes)."""
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def manifest_path_for(bundle: str | Path) -> Path:
    b = Path(bundle)
    return b.with_name(b.name + MANIFEST_SUFFIX)


def versions() -> dict:
    from .. import __version__

    out = {"edge-sdk": __version__}    # this code's own version (PyPI's "edge-sdk" is another project)
    for dist in ("litert-lm-builder", "ai-edge-litert"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = None
    return out


REPORT_PLACES = ("report.json", "report/report.json")   # `validate -o OUT` or `-o OUT/report` (the README's)


def validation_report(model_dir: Path) -> dict | None:
    """The validation report of this model directory: ``report.json`` in it or in its ``report/``
    subdirectory, and only one that validated this directory (its ``model_dir``), on the host."""
    here = Path(model_dir).resolve()
    for rel in REPORT_PLACES:
        rep = read_json(Path(model_dir) / rel)
        if rep and Path(str(rep.get("model_dir", ""))).resolve() == here and rep.get("target", "host") == "host":
            return rep
    return None


def read_json(path: Path, *, required: bool = False) -> dict | None:
    if not path.is_file():
        if required:
            raise InputError(f"{path.name} not found: not a converted model directory", path=path.parent,
                             fix="pass the OUT_DIR written by `edge-sdk convert`")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot parse JSON ({e})", path=path) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path=path)
    return data


def plan_summary(plan: PlanRecord | None, planned: dict | None) -> dict | None:
    """The plan without its per-tensor table: ``planned`` (the planner at the model's context:
    ``pipeline.planned_memory``) and the weight bytes plan.json records. ``planned`` may be
    ``{"absent": reason}`` (``pipeline.planned_or_absent``): the reason is kept as ``absent``."""
    if not plan and not planned:
        return None
    out = {"recipe": (planned or {}).get("recipe") or (plan.recipe if plan else None)}
    if plan:
        out["weight_bytes"] = {"data": plan.data_bytes, "overhead": plan.overhead_bytes}
    if planned and "absent" in planned:
        out["absent"] = planned["absent"]
    elif planned:
        out.update({"context": planned.get("context"), "prefill": planned.get("prefill"),
                    "distinct_tokens": planned.get("distinct_tokens"), "kv_sliding": planned.get("kv_sliding"),
                    "bytes": {k[: -len("_bytes")]: v for k, v in planned.items() if k.endswith("_bytes")}})
    return out


def memory_block(planned: dict | None, report: dict | None, context: int, sections_bytes: int) -> dict:
    """``planned``: the planner's figures at ``context`` (pipeline.planned_memory), or None or
    ``{"absent": reason}`` when the model's files cannot give them (then the model sections' size
    stands in: an upper bound for the weights, which are memory-mapped)."""
    if planned and planned.get("peak_bytes"):
        peak, source, pctx = int(planned["peak_bytes"]), "planner", planned.get("context", context)
    else:
        peak, source, pctx = int(sections_bytes), "bundle_size", context
    mem = (report or {}).get("memory") or {}
    budget = (report or {}).get("budget") or {}
    return {"planned_peak_bytes": peak, "planned_source": source, "planned_context": pctx,
            "validated_budget_bytes": budget.get("limit_bytes"),
            "validated_model_peak_bytes": mem.get("model_peak_bytes"),
            "validated_peak_rss_bytes": mem.get("peak_rss_bytes"),
            "validated_passed": (report or {}).get("passed")}


def conversion_block(conv: ConversionRecord | None) -> dict | None:
    if not conv:
        return None
    return {"recipe": conv.recipe_name,
            "source": Path(conv.source["path"]).name,   # no local paths in a shipped file
            "text_only": conv.text_only,
            "sha256": dict(conv.outputs)}


def find_manifest_key(manifest: dict, dotted: str):
    """``find_manifest_key(m, "memory.planned_peak_bytes")``; KeyError when absent."""
    node = manifest
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def read_manifest(bundle_path: str | Path) -> dict:
    """The manifest stored inside a .litertlm (KeyError-free: InputError when absent)."""
    _, system, _ = ct.read_header(bundle_path)
    if MANIFEST_KEY not in system:
        raise InputError(f"no {MANIFEST_KEY} in the system metadata (not built by edge-sdk?)", path=bundle_path)
    return json.loads(system[MANIFEST_KEY])

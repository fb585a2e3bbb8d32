"""``edge-sdk inspect`` on a checkpoint directory or a bare config.json: what is in it, by component."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .litert.reader import inspect_converted
from .quant.source import open_source
from .gemma4 import COMPONENTS, Count, ModelSpec
from .units import fmt_bytes, fmt_count

@dataclass(frozen=True)
class InspectReport:
    path: str
    model_type: str
    config_form: str
    from_weights: bool
    dtype: str
    text_prefix: str | None
    layers: dict
    components: dict[str, dict]       # component → {"params", "bytes"}
    total: dict
    text_only_removes: dict[str, dict]
    text_only_keeps: dict

    def to_json(self) -> dict:
        return asdict(self)

    def to_text(self) -> str:
        src = "weights" if self.from_weights else f"config.json alone (bytes at {self.dtype})"
        lines = [
            f"{self.path}",
            f"  architecture   {self.model_type}  (config form: {self.config_form}; counted from {src})",
            f"  layers         {self.layers['total']} ({self.layers['sliding']} sliding, {self.layers['full']} full; "
            f"{self.layers['kv_shared']} KV-shared), hidden {self.layers['hidden']}, vocab {self.layers['vocab']}",
        ]
        if self.text_prefix is not None:
            lines.append(f"  text prefix    {self.text_prefix or '(none)'}   dtype {self.dtype}")
        lines.append(f"  {'component':<14} {'params':>12} {'bytes':>12}")
        for name, c in self.components.items():
            lines.append(f"  {name:<14} {fmt_count(c['params']):>12} {fmt_bytes(c['bytes']):>12}"
                         f"   {COMPONENTS.get(name, 'unused tensors (KV-shared k/v, tied lm_head)')}")
        lines.append(f"  {'total':<14} {fmt_count(self.total['params']):>12} {fmt_bytes(self.total['bytes']):>12}")
        if self.text_only_removes:
            removed = ", ".join(f"{k} {fmt_count(v['params'])} ({fmt_bytes(v['bytes'])})"
                                for k, v in self.text_only_removes.items())
            lines.append(f"  --text-only removes {removed}; keeps {fmt_count(self.text_only_keeps['params'])} "
                         f"({fmt_bytes(self.text_only_keeps['bytes'])})")
        else:
            lines.append("  --text-only removes nothing (text-only checkpoint)")
        return "\n".join(lines)


def inspect_checkpoint(path: str | Path) -> InspectReport:
    """Inspect a checkpoint directory, or a config.json (file or weight-less directory)."""
    src = open_source(path)
    prefix = src.binding.prefix if src.binding else None
    return _report(Path(path), src.spec, src.inventory, prefix)


def _c(c: Count) -> dict:
    return {"params": c.params, "bytes": c.bytes}


def _report(p: Path, spec: ModelSpec, inv, prefix) -> InspectReport:
    t = spec.text
    order = [k for k in list(COMPONENTS) + ["unused"] if k in inv.by_component]
    return InspectReport(
        path=str(p), model_type=spec.model_type, config_form=spec.config_form, from_weights=inv.from_weights,
        dtype=inv.dtype, text_prefix=prefix,
        layers={"total": t.num_layers, "sliding": sum(lyr.attention == "sliding" for lyr in t.layers),
                "full": sum(lyr.attention == "full" for lyr in t.layers), "kv_shared": t.num_kv_shared_layers,
                "hidden": t.hidden_size, "vocab": t.vocab_size,
                "ple_dim": t.hidden_size_per_layer_input},
        components={k: _c(inv.by_component[k]) for k in order},
        total=_c(inv.total),
        text_only_removes={k: _c(v) for k, v in inv.removed_by_text_only.items()},
        text_only_keeps=_c(inv.kept),
    )


def inspect_path(path: str | Path):
    """Dispatch on what ``path`` is: a converted model directory (has ``model.json``; see
    ``edge_sdk.litert.reader``), or a checkpoint / config."""
    if (Path(path) / "model.json").is_file():
        return inspect_converted(path)
    return inspect_checkpoint(path)

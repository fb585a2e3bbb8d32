"""The files a converted model directory carries, as versioned types: ``model.json`` (``ModelInfo``),
``conversion.json`` (``ConversionRecord``) and ``plan.json`` (``PlanRecord``).

``litert.export`` writes them through ``to_json``; validate, bundle and the pipeline read them
through ``read``/``from_json``, never by guessing keys. Each file says what it is (``format``) and
which layout it follows (``version``): a file of another format, of a newer version, or one that
lacks a key this version needs (written by an older edge-sdk) is refused in one line that names
the fix. ``to_json`` gives back the same dict, key for key and in the same order, as
``from_json`` read (tests/test_artefacts.py), so a model's bytes do not move.

Nested blocks whose layout another module owns (``spec``, ``kv_cache``: ``quant.kv_layout.KvLayout``,
the plan's per-tensor rows: ``quant.plan.TensorPlan``) stay dicts here; their owners parse them.
The device runner (``validate/runner.py``, ``litert/runtime.py``) runs where edge_sdk may not be
installed and reads ``model.json`` as plain JSON: the keys it reads are the same.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import InputError

RECONVERT = "convert the checkpoint again with `edge-sdk convert` (this edge-sdk writes version {v})"


class _Artefact:
    """``format``/``version`` handling and the dict <-> dataclass mapping shared by the three files."""

    FILE: ClassVar[str]
    FORMAT: ClassVar[str]
    VERSION: ClassVar[int]

    def to_json(self) -> dict:
        out: dict[str, Any] = {"format": self.FORMAT, "version": self.VERSION}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_json(cls, data: Any, *, path: str | Path | None = None):
        where = Path(path) if path is not None else Path(cls.FILE)
        fix = RECONVERT.format(v=cls.VERSION)
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InputError(f"not an edge-sdk {cls.FILE} (format {got!r}, expected {cls.FORMAT!r})",
                             path=where, fix=fix)
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version > cls.VERSION:
            raise InputError(f"{cls.FILE} version {version!r} is newer than this edge-sdk reads ({cls.VERSION})",
                             path=where, fix="upgrade edge-sdk (pip install -U gemma-edge-sdk)")
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                v = data[f.name]
                kwargs[f.name] = tuple(v) if isinstance(v, list) and f.metadata.get("seq") else v
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{cls.FILE} (version {version}) lacks {f.name!r}: written by an older edge-sdk",
                                 path=where, fix=fix)
        return cls(**kwargs)

    @classmethod
    def read(cls, model_dir: str | Path):
        """The file in a converted model directory; InputError (one line, with the fix) when it is
        missing, not JSON, or not this type."""
        p = Path(model_dir) / cls.FILE
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{cls.FILE} not found: not a converted model directory", path=Path(model_dir),
                             fix="pass the OUT_DIR written by `edge-sdk convert`") from None
        except (OSError, ValueError) as e:
            raise InputError(f"cannot parse JSON ({e})", path=p) from None
        return cls.from_json(data, path=p)

    @classmethod
    def read_optional(cls, model_dir: str | Path):
        """As ``read``, or None when the directory has no such file."""
        return cls.read(model_dir) if (Path(model_dir) / cls.FILE).is_file() else None


def _seq():
    return field(metadata={"seq": True})


@dataclass(frozen=True)
class ModelInfo(_Artefact):
    """``model.json``: what the files are, how to drive them, and what the model is. Written last:
    its presence marks a complete directory."""

    FILE: ClassVar[str] = "model.json"
    FORMAT: ClassVar[str] = "edge_sdk.litert_model"
    VERSION: ClassVar[int] = 1

    edge_sdk_version: str
    model_type: str
    recipe: str
    text_only: bool
    context: int                       # the KV cache length the graphs were built for
    prefill: int                       # tokens per prefill call
    vocab_size: int
    hidden_size: int
    num_layers: int
    bos_token_id: int | None
    eos_token_id: tuple[int, ...] = _seq()
    pad_token_id: int | None = None
    files: dict = field(default_factory=dict)        # graph -> {file, sha256, bytes, section_type}
    signatures: dict = field(default_factory=dict)   # graph -> {prefill, decode[, score]}
    spec: dict = field(default_factory=dict)
    kv_cache: dict = field(default_factory=dict)     # quant.kv_layout.KvLayout.from_json reads it
    mask: dict = field(default_factory=dict)
    logits: dict = field(default_factory=dict)
    tokenizer: dict = field(default_factory=dict)
    requires_xnnpack: dict | None = None             # {reason, tensors} when builtin kernels miscompute it

    @property
    def first_eos(self) -> int | None:
        return self.eos_token_id[0] if self.eos_token_id else None


@dataclass(frozen=True)
class ConversionRecord(_Artefact):
    """``conversion.json``: how the directory was made (source files, recipe, wall time, peak RSS,
    re-rounding error per tensor). The only file of the three with times and local paths."""

    FILE: ClassVar[str] = "conversion.json"
    FORMAT: ClassVar[str] = "edge_sdk.conversion"
    VERSION: ClassVar[int] = 1

    edge_sdk_version: str
    source: dict                       # {path, files: {name: sha256}}
    output_dir: str
    outputs: dict                      # {file name: sha256}
    recipe: dict                       # quant.recipe.recipe_to_dict
    text_only: bool
    context: int
    prefill: int
    kv_cache: dict
    wall_s: float
    peak_rss_bytes: int
    rerounding_error: dict = field(default_factory=dict)
    scale_sources: dict = field(default_factory=dict)

    @property
    def source_path(self) -> Path:
        """The source checkpoint, resolved."""
        return Path(self.source["path"]).resolve()

    @property
    def recipe_name(self) -> str | None:
        return self.recipe.get("name")


@dataclass(frozen=True)
class PlanRecord(_Artefact):
    """``plan.json``: every written tensor's scheme, scales and bytes (rows: ``TensorPlan.to_json``
    plus what the writer recorded: scale source, re-rounding error, encoding, file), and the source
    checkpoint's ``config.json`` as read (``source_config``): with conversion.json's recipe and
    model.json's KV layout, the planner's memory figures of the model come from its own files
    (``quant.plan.plan_from_rows``, ``pipeline.planned_memory``), not from the source checkpoint.

    Version 2 added ``source_config``; a version 1 file reads with it None (the rows stay
    readable), and whatever needs the plan's memory figures says so and names the fix."""

    FILE: ClassVar[str] = "plan.json"
    FORMAT: ClassVar[str] = "edge_sdk.plan"
    VERSION: ClassVar[int] = 2

    recipe: str
    data_bytes: int
    overhead_bytes: int
    tensors: tuple[dict, ...] = _seq()
    source_config: dict | None = None    # the source's config.json: gemma4.spec_from_config reads it

    def require_source_config(self, path: str | Path) -> dict:
        """``source_config``, or InputError (one line: the file, what it lacks, the fix) for a
        plan.json written before version 2."""
        if self.source_config is None:
            raise InputError("plan.json lacks 'source_config' (written by an edge-sdk before plan.json version 2), "
                             "so the model's planned memory cannot be computed from its own files",
                             path=Path(path) / self.FILE, fix=RECONVERT.format(v=self.VERSION))
        return self.source_config

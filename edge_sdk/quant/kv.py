"""The int8 KV cache as the converted models store it, and the same fake-quantization in NumPy.

Which buffers exist, their shapes (sliding layers: ring buffers) and bytes: ``edge_sdk.quant.kv_layout``,
the one owner of the layout. What the converter emits (``edge_sdk.litert.gemma4``): every cache buffer ``kv_cache_k_i`` /
``kv_cache_v_i`` is an int8 graph input/output with ONE per-tensor scale (zero point 0). New K/V
are written with QUANTIZE and the whole cache is read back with DEQUANTIZE, inside the graph.
LiteRT-LM's engine carries such int8 state buffers unchanged between calls (LITERTLM_GEMMA4.md
§7); it has no notion of extra per-token scale buffers, so per-(token, head) scales are not
emitted even when a recipe asks for them (see ``kv_scales``).

Scales: K and V are RMS-normalized per head before they are cached (``k_norm`` with a weight,
``v_norm`` without), so their range is set by construction: |v| stays within a few units
(RMS 1) and |k| within a few units times the largest ``k_norm`` weight. The V scale is 1/32
(range ±4, the scale proven in the engine) and the K scale of layer i is
``max|k_norm_i.weight| / 32``. They are stored as float32 and recorded in ``model.json``.

``kv_fake_quant(x, s) = clip(round_half_away(x / s), -128, 127) * s`` is exactly TFLite's
QUANTIZE (``TfLiteRound`` = round half away from zero) followed by DEQUANTIZE; ``KvFakeQuant``
applies the per-buffer scales in the order ``edge_sdk.reference.Reference`` calls its
``kv_quant`` hook (K then V of each KV-producing layer, layers in order, every forward).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .formats import FORMATS

KV_INT8 = FORMATS["kv_int8"]
V_SCALE = 1.0 / 32.0
K_SCALE_PER_UNIT_WEIGHT = 1.0 / 32.0


def kv_fake_quant(x: np.ndarray, scale: float = V_SCALE) -> np.ndarray:
    """int8 QUANTIZE + DEQUANTIZE with a per-tensor ``scale`` (zero point 0), float32."""
    s = np.float32(scale)
    y = np.asarray(x, np.float32) / s
    q = np.clip(np.sign(y) * np.floor(np.abs(y) + np.float32(0.5)), KV_INT8.qmin, KV_INT8.qmax)
    return (q.astype(np.float32) * s).astype(np.float32)


def kv_scales(k_norm_weights: Mapping[int, np.ndarray]) -> dict[str, float]:
    """Per-buffer scales {``kv_cache_k_i``: s, ``kv_cache_v_i``: s} from each KV layer's
    ``k_norm`` weight (see the module docstring). Values are float32-representable."""
    out: dict[str, float] = {}
    for i in sorted(k_norm_weights):
        w = float(np.max(np.abs(np.asarray(k_norm_weights[i], np.float32))))
        k = np.float32(max(w, 1e-6) * K_SCALE_PER_UNIT_WEIGHT)
        out[f"kv_cache_k_{i}"] = float(k)
        out[f"kv_cache_v_{i}"] = float(np.float32(V_SCALE))
    return out


class KvFakeQuant:
    """A ``Reference(kv_quant=...)`` hook applying the per-buffer scales of a converted model.

    ``Reference`` calls the hook with K then V of each KV-producing layer in layer order, on every
    forward; this object follows that cycle. ``scales`` maps buffer names to scales (as in
    ``model.json['kv_cache']['scales']``); ``kv_layers`` the layer order."""

    def __init__(self, scales: Mapping[str, float], kv_layers: Sequence[int]):
        self.order = [scales[f"kv_cache_{kind}_{i}"] for i in kv_layers for kind in ("k", "v")]
        self._n = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        s = self.order[self._n % len(self.order)]
        self._n += 1
        return kv_fake_quant(x, s)


def kv_quant_for_model(model_json: Mapping) -> KvFakeQuant | None:
    """The reference hook matching a converted model's ``model.json`` (None: float cache)."""
    kv = model_json["kv_cache"]
    if kv["dtype"] != "int8":
        return None
    return KvFakeQuant(kv["scales"], [b["layer"] for b in kv["buffers"] if b["kind"] == "k"])

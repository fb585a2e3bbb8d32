"""The Gemma 4 text decoder as three LiteRT models, in Google's LiteRT-LM split (LITERTLM_GEMMA4.md §5).

``embedder.tflite``
    ``decode_embedder`` (token_ids int32 [1, 1]) and ``prefill_embedder_<T>`` ([1, T]) →
    ``embeddings`` float32 [1, T, H] = embed_tokens[ids] · √H.
``per_layer_embedder.tflite`` (only with per-layer embeddings)
    ``decode_per_layer_embedder`` / ``prefill_per_layer_embedder_<T>`` → ``embeddings`` float32
    [1, T, L, P] = embed_tokens_per_layer[ids] · √P.
``prefill_decode.tflite``
    ``prefill_<T>`` (subgraph 0), ``decode`` (1) and ``score_<T>`` (2), then ``decode_<S>`` for each
    of ``Geometry.decode_spans`` (decode reading the first S slots of the full-length caches), one
    set of weight buffers.
    Inputs ``embeddings`` [1, T, H], ``per_layer_embeddings`` [1, T, L, P] (with PLE),
    ``input_pos`` int32 [T], ``mask`` float32 [1, 1, T, C] (additive: 0 attend, large negative
    masked; causal over the whole cache), ``kv_cache_k_i`` [1, KVH, C, D_i] and ``kv_cache_v_i``
    [1, KVH, D_i, C] for the KV-producing layers i; outputs the updated caches under the same
    names; ``decode`` also outputs ``logits`` [1, 1, V] and ``score_<T>`` ``logits`` [1, T, V]
    (every position: what perplexity and KL divergence need; LiteRT-LM ignores it — its name does
    not start with "prefill"). ``prefill_<T>`` emits no logits and, like Google's exporter, holds
    only the ops whose results reach a cache. Tensor names ``<sig>_<name>`` / ``<sig>_<name>_output``.

Every feature of ``edge_sdk.reference``: sliding / full layers (the window applied in the graph
from ``input_pos``), KV sharing (shared layers read their source layer's updated cache), double-wide
MLPs, the PLE combine inside prefill_decode (projection from ``embeddings``), proportional partial
RoPE, q/k/v norms, layer scalars, k_eq_v, mixture-of-experts layers (``gemma4_moe``), the tied LM head as FULLY_CONNECTED over the planned
``lm_head`` weight, and final_logit_softcapping (TANH; unlike Google's exporter, so probabilities
match transformers).

KV cache: exactly the buffers of ``edge_sdk.quant.kv_layout`` (``Geometry.kv``): float32, or with
an int8 recipe (kv_cache bits 8) int8 with ONE per-tensor scale per buffer, QUANTIZE on write and
DEQUANTIZE on read inside the graph (LITERTLM_GEMMA4.md §7: int8 state buffers with a per-tensor
scale are carried correctly by the engine; a recipe's ``token_head`` request is emitted per tensor
and the layout's ``adaptation`` says so). Full-attention layers hold C positions; sliding layers a
ring of ``min(C, W + T - 1)`` slots written at ``input_pos mod R`` (``gemma4_attention``). Scales:
``edge_sdk.quant.kv`` (V 1/32, K max|k_norm|/32); ``KvFakeQuant`` reproduces them in the NumPy
reference.

Weights stream through ``WeightBank`` (``gemma4_weights``): sizes from the plan when the graph is
built, data from the Preparer when the writer writes each buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..quant.kv_layout import KvLayout, decode_span_lengths
from ..gemma4.model import TextSpec
from ..gemma4.names import LM_HEAD
from .dtypes import Quantization
from .gemma4_attention import Step, attention, rms_norm, write_kv_only
from .gemma4_moe import moe_feed_forward
from .gemma4_weights import WeightBank
from .graph import GraphBuilder, Tensor
from .writer import LiteRTWriter

MIN_RUNTIME = {"prefill_decode": "2.17.0", "embedder": "1.14.0", "per_layer_embedder": "1.13.0"}


@dataclass(frozen=True)
class Geometry:
    """What the signatures are built for."""

    context: int          # KV cache length C (full-attention layers; the mask's last axis)
    prefill: int          # prefill / score chunk length T
    kv: KvLayout          # the KV state buffers (edge_sdk.quant.kv_layout)
    kv_scales: dict | None = None   # int8 cache scales by buffer name; None: float32 cache
    score: bool = True    # add the score_<T> signature (logits for every position)
    spans: int = 0        # how many decode_<S> signatures to add, shortest first (decode_spans)

    @property
    def decode_spans(self) -> tuple[int, ...]:
        """Lengths S of the extra ``decode_<S>`` signatures: ``decode`` that attends to the first S
        slots of the full-length caches only (``quant.kv_layout.decode_span_lengths``: C/8, C/4,
        C/2, each >= 128, ``spans`` of them, shortest first). A runner at position p < S takes the smallest such: attention costs what the
        filled cache holds, not C (LiteRT-LM runs ``decode`` and ignores them, as it ignores
        ``score_<T>``). Each is a subgraph of its own, and its XNNPACK runtime, arena and unpacked
        quantization parameters stay allocated in every runtime that loads the file, LiteRT-LM
        included (E2B at 4K: ~+16 MB each, docs/benchmarks.md)."""
        return decode_span_lengths(self.context, self.spans)

    def signatures(self, model: str) -> dict[str, str]:
        T = self.prefill
        if model == "prefill_decode":
            sig = {"prefill": f"prefill_{T}", "decode": "decode"}
            sig.update({f"decode_{s}": f"decode_{s}" for s in self.decode_spans})
            if self.score:
                sig["score"] = f"score_{T}"
            return sig
        suffix = "embedder" if model == "embedder" else "per_layer_embedder"
        return {"prefill": f"prefill_{suffix}_{T}", "decode": f"decode_{suffix}"}


def cache_buffers(geo: Geometry) -> list[dict]:
    """The KV state buffers as model.json records them, in order k_i, v_i per KV layer (as
    LiteRT-LM lists them): the layout's records plus each int8 buffer's scale."""
    out = []
    for b in geo.kv.buffers:
        buf = b.to_json()
        if geo.kv_scales is not None:
            buf["scale"] = geo.kv_scales[b.name]
        out.append(buf)
    return out


# ---- embedders ------------------------------------------------------------------------------

def build_embedder(writer: LiteRTWriter, text: TextSpec, bank: WeightBank, geo: Geometry,
                   per_layer: bool) -> None:
    """Both embedder signatures (decode first, as Google orders them)."""
    model = "per_layer_embedder" if per_layer else "embedder"
    writer.add_metadata("min_runtime_version", MIN_RUNTIME[model])
    sigs = geo.signatures(model)
    table = "embed_tokens_per_layer.weight" if per_layer else "embed_tokens.weight"
    for key, T in ((sigs["decode"], 1), (sigs["prefill"], geo.prefill)):
        g = GraphBuilder(writer, key)
        ids = g.input("token_ids", [1, T], "int32", tensor_name=f"{key}_token_ids")
        rows = bank.lookup(g, table, g.reshape(ids, [T]))
        if per_layer:
            L, P = text.ple_dims
            out = g.mul(rows, np.float32(math.sqrt(P)))
            out = g.reshape(out, [1, T, L, P], name=f"{key}_embeddings_output")
        else:
            out = g.mul(rows, np.float32(math.sqrt(text.hidden_size)))
            out = g.reshape(out, [1, T, text.hidden_size], name=f"{key}_embeddings_output")
        g.output("embeddings", out)
        g.finish(key)


# ---- prefill / decode -------------------------------------------------------------------------

def build_prefill_decode(writer: LiteRTWriter, text: TextSpec, bank: WeightBank,
                         geo: Geometry) -> None:
    writer.add_metadata("min_runtime_version", MIN_RUNTIME["prefill_decode"])
    sigs = geo.signatures("prefill_decode")
    plan = [(sigs["prefill"], geo.prefill, False, None), (sigs["decode"], 1, True, None)]
    if "score" in sigs:
        plan.append((sigs["score"], geo.prefill, True, None))
    plan += [(sigs[f"decode_{s}"], 1, True, s) for s in geo.decode_spans]
    for key, T, logits, span in plan:
        _decoder_signature(writer, text, bank, geo, key, T, logits, span)


def _decoder_signature(writer: LiteRTWriter, text: TextSpec, bank: WeightBank, geo: Geometry,
                       key: str, T: int, logits: bool, span: int | None = None) -> None:
    """One signature; ``span``: attend to the first ``span`` slots of the full-length caches
    (their inputs and outputs stay whole; the DYNAMIC_UPDATE_SLICE writes the whole cache)."""
    g = GraphBuilder(writer, key)
    H, C, eps = text.hidden_size, geo.context, text.rms_norm_eps
    emb = g.input("embeddings", [1, T, H], "float32", tensor_name=f"{key}_embeddings")
    ple_in = None
    if text.has_ple:
        L, P = text.ple_dims
        ple_in = g.input("per_layer_embeddings", [1, T, L, P], "float32",
                         tensor_name=f"{key}_per_layer_embeddings")
    pos = g.input("input_pos", [T], "int32", tensor_name=f"{key}_input_pos")
    mask = g.input("mask", [1, 1, T, C], "float32", tensor_name=f"{key}_mask")
    if span is not None:
        mask = g.slice(mask, [0, 0, 0, 0], [1, 1, T, span])
    step = Step(g, key, T, C, text, bank, pos, mask, geo.kv_scales, geo.kv, span=span or C)
    for buf in cache_buffers(geo):
        q = None if "scale" not in buf else Quantization(scale=(buf["scale"],), zero_point=(0,))
        step.cache_in[buf["name"]] = g.input(buf["name"], buf["shape"], buf["dtype"],
                                             tensor_name=f"{key}_{buf['name']}", quantization=q)

    # A layer's output matters if a later layer writes a cache, or if logits are wanted.
    last_kv = text.last_kv_layer
    x = g.reshape(emb, [T, H])
    ple = None
    if ple_in is not None and (logits or last_kv > 0):
        ple = _ple_inputs(g, text, bank, x, ple_in, T)
    for layer in text.layers:
        needed = logits or layer.index < last_kv
        if not needed:
            if not layer.kv_shared:
                h = rms_norm(g, x, bank.vector(g, f"layers.{layer.index}.input_layernorm.weight"), eps)
                write_kv_only(step, layer, h)
            continue
        x = _layer(step, layer, x, ple)

    if logits:
        h = rms_norm(g, x, bank.vector(g, "norm.weight"), eps)
        z = g.fully_connected(h, bank.fc(g, LM_HEAD))
        cap = text.final_logit_softcapping
        if cap:
            z = g.mul(g.tanh(g.div(z, np.float32(cap))), np.float32(cap))
        g.output("logits", g.reshape(z, [1, T, text.vocab_size], name=f"{key}_logits_output"))
    for name, t in step.cache_out.items():
        g.output(name, t)
    g.finish(key)


def _ple_inputs(g: GraphBuilder, text: TextSpec, bank: WeightBank, x: Tensor, ple_in: Tensor,
                T: int) -> Tensor:
    """``(rmsnorm((x @ Wpm.T) · H^-0.5 → [T, L, P]) + tok) · 2^-0.5`` → [T, L · P]."""
    (L, P), H = text.ple_dims, text.hidden_size
    ctx = g.mul(g.fully_connected(x, bank.fc(g, "per_layer_model_projection.weight")),
                np.float32(H ** -0.5))
    ctx = rms_norm(g, g.reshape(ctx, [T, L, P]), bank.vector(g, "per_layer_projection_norm.weight"),
                   text.rms_norm_eps)
    ple = g.mul(g.add(ctx, g.reshape(ple_in, [T, L, P])), np.float32(2.0 ** -0.5))
    return g.reshape(ple, [T, L * P])   # each layer slices its [T, P] columns in one op


def _layer(step: Step, layer, x: Tensor, ple: Tensor | None) -> Tensor:
    g, bank, eps, T = step.g, step.bank, step.text.rms_norm_eps, step.T
    pre = f"layers.{layer.index}."
    h = rms_norm(g, x, bank.vector(g, pre + "input_layernorm.weight"), eps)
    h = attention(step, layer, h)
    x = g.add(x, rms_norm(g, h, bank.vector(g, pre + "post_attention_layernorm.weight"), eps))

    h = rms_norm(g, x, bank.vector(g, pre + "pre_feedforward_layernorm.weight"), eps)
    gate = g.gelu(g.fully_connected(h, bank.fc(g, pre + "mlp.gate_proj.weight")), approximate=True)
    up = g.fully_connected(h, bank.fc(g, pre + "mlp.up_proj.weight"))
    h = g.fully_connected(g.mul(gate, up), bank.fc(g, pre + "mlp.down_proj.weight"))
    if step.text.enable_moe:   # shared MLP + routed experts (gemma4_moe)
        h = moe_feed_forward(step, layer, x, h)
    x = g.add(x, rms_norm(g, h, bank.vector(g, pre + "post_feedforward_layernorm.weight"), eps))

    if ple is not None:
        _, P = step.text.ple_dims
        ple_i = g.slice(ple, [0, layer.index * P], [T, P])
        h = g.gelu(g.fully_connected(x, bank.fc(g, pre + "per_layer_input_gate.weight")),
                   approximate=True)
        h = g.fully_connected(g.mul(h, ple_i), bank.fc(g, pre + "per_layer_projection.weight"))
        x = g.add(x, rms_norm(g, h, bank.vector(g, pre + "post_per_layer_input_norm.weight"), eps))
    return g.mul(x, bank.vector(g, pre + "layer_scalar"))

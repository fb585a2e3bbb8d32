"""Floor 5: the Gemma 4 text decoder forward in NumPy (float32), the ground truth the LiteRT graph is
checked against. No torch.

    from edge_sdk.reference import Reference, weights_from_checkpoint
    w = weights_from_checkpoint("ckpt_dir")          # WeightFn: canonical name -> float32 array
    ref = Reference(w.spec.text, w)                   # or Reference.from_checkpoint("ckpt_dir")
    logits = ref.prefill(ids)                         # [T, V], fills the KV cache
    nxt = ref.decode(int(logits[-1].argmax()))        # [V]
    toks = ref.greedy(ids, 16)                        # reset + prefill + 16 argmax tokens

``Reference(text, weights, *, kv_quant=None, max_cache=None, cache_weights=True)``: see
``forward.Reference``; the module docstring of ``forward`` lists every op and its order.
"""

from .forward import KvQuant, Reference, UnsupportedByReference, WeightFn, gelu_tanh, rms_norm
from .weights import CheckpointWeights, weights_from_checkpoint


__all__ = ["CheckpointWeights", "KvQuant", "Reference", "UnsupportedByReference", "WeightFn", "gelu_tanh",
           "rms_norm", "weights_from_checkpoint"]

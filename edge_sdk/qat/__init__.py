"""Floor 5: quantization-aware training for Gemma 4 (torch; the optional ``[qat]`` extra).

    from edge_sdk.qat import apply_qat, export_qat, refresh_codebooks, qat_parameter_groups
    model = Gemma4ForConditionalGeneration(...).float()
    apply_qat(model, PRESETS["mobile"])         # parametrize the text decoder's weights
    scales, rest, fine = qat_parameter_groups(model)   # three optimizer groups (fine grids apart)
    ... train (plain, DDP or FSDP) ...; refresh_codebooks(model) every K steps
    export_qat(model, "out/", tokenizer=tok)    # HF checkpoint on the grid + scale sidecar

    qat("ckpt/", "my.jsonl", "out/", recipe="mobile", steps=600)   # all of it: `edge-sdk qat`
    Trainer(..., callbacks=[QATCallback("mobile", out_dir="out/")])  # in a user's Trainer script

The forward uses the NumPy kernels' formulas bit for bit (see ``fake_quant``); the exported
weights re-quantize with the exported scales/codebooks with error exactly 0 (``verify_export``).
This is the only package of edge_sdk that imports torch; torch is imported lazily here (names
resolve on first use, ``__getattr__`` below) so that ``import edge_sdk.qat`` works without the extra.
The codebook sidecar lives in ``edge_sdk.quant.codebooks`` (torch-free; the converter reads it).
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {
    "apply_qat": "apply", "is_qat": "apply", "qat_parameters": "apply", "quantized_roles": "apply",
    "qat_parameter_groups": "apply", "fold_equalizers": "equalize", "ColumnGain": "equalize",
    "refresh_codebooks": "apply", "find_text_model": "apply", "snap_to_grid": "apply",
    "AffineQuantizer": "fake_quant", "DictionaryFakeQuantizer": "fake_quant",
    "fake_quant_affine": "fake_quant", "dictionary_codes": "..quant.codebooks",
    "export_qat": "export", "verify_export": "export", "qat_state_dict": "export",
    "qat_scales": "export",
    "CODEBOOKS_NAME": "..quant.codebooks", "read_qat_codebooks": "..quant.codebooks",
    "write_qat_codebooks": "..quant.codebooks",
    "qat": "train", "QATResult": "train", "QATCallback": "callback",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        mod = _LAZY[name]
        return getattr(import_module(mod if mod.startswith(".") else f".{mod}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

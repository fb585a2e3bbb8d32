"""Checkpoints written by the real ``compressed-tensors`` library (0.20.x), the way llm-compressor
writes W4A16 / W8A16 models with its default min-max observer: per-channel (or per-group) min/max of
each Linear weight → ``calculate_qparams`` (symmetric: scale = max|w| / ((qmax - qmin) / 2), so each
row's largest negative weight lands on -8 / -128) → ``ModelCompressor.compress_model`` (the format
the library infers: pack-quantized) → ``save_pretrained`` + ``update_config``.

    make_ct_checkpoint(src, out, bits=4, strategy="channel", group_size=None, symmetric=True)

``src`` is a transformers checkpoint (e.g. the tiny ``kv_eq`` fixture, bfloat16); every Linear of
the text decoder is quantized, ``lm_head`` is ignored (as llm-compressor's examples do).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def make_ct_checkpoint(src: Path, out: Path, *, bits: int = 4, strategy: str = "channel",
                       group_size: int | None = None, symmetric: bool = True) -> Path:
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig,
                                                 QuantizationScheme, QuantizationStatus,
                                                 apply_quantization_config)
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy,
                            group_size=group_size)
    qcfg = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                              ignore=["lm_head"])
    apply_quantization_config(model, qcfg)
    with torch.no_grad():
        for _, m in model.named_modules():
            scheme = getattr(m, "quantization_scheme", None)
            if scheme is None:
                continue
            w = m.weight
            if strategy == "group":
                w = w.unflatten(-1, (-1, group_size))
            lo, hi = w.amin(dim=-1, keepdim=strategy != "group"), w.amax(dim=-1, keepdim=strategy != "group")
            scale, zp = calculate_qparams(lo, hi, scheme.weights)     # the min-max observer's qparams
            m.weight_scale.data.copy_(scale.reshape(m.weight_scale.shape))
            if hasattr(m, "weight_zero_point"):
                m.weight_zero_point.data.copy_(zp.reshape(m.weight_zero_point.shape))
            m.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    compressor.update_config(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        if (Path(src) / name).is_file() and not (out / name).exists():
            shutil.copyfile(Path(src) / name, out / name)
    return out

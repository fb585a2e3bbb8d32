"""Precomputed scales survive conversion exactly: compressed-tensors, on-grid weights, QAT sidecar."""

import json

import numpy as np
import pytest

from edge_sdk.checkpoint import open_checkpoint, write_safetensors
from edge_sdk.pipeline import plan_model
from edge_sdk.quant.apply import Preparer
from edge_sdk.quant.kernels import dequantize
from edge_sdk.quant.plan import make_plan
from edge_sdk.quant.presets import PRESETS
from edge_sdk.quant.scales import ct_pack_int32
from edge_sdk.gemma4 import bind, spec_from_config, text_tensors

from test_gemma4_config import TINY_TEXT

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def _grid_tensors(spec, rng, ct_attention=False):
    """Every tensor of the tiny spec; linear weights exactly code × per-channel float32 scale."""
    plan = {t.name: t for t in make_plan(spec, PRESETS["mobile"]).tensors}
    tensors, truth = [], {}
    for t in text_tensors(spec.text):
        cfg = plan[t.name].config
        if cfg is None or not hasattr(cfg, "bits"):
            tensors.append(("model." + t.name, rng.standard_normal(t.shape).astype(np.float32)))
            continue
        codes = rng.integers(cfg.qmin, cfg.qmax + 1, size=t.shape).astype(np.int8)
        codes[:, 0] = cfg.qmax  # every row reaches qmax, as a max-abs-initialised QAT grid does
        scales = (rng.uniform(0.5, 2.0, size=t.shape[0]) * 2.0 ** -6).astype(np.float32)
        truth[t.name] = (codes, scales)
        is_attn = t.name.split(".")[-2] in ATTN
        if ct_attention and is_attn:
            base = "model." + t.name[: -len(".weight")]
            tensors += [(base + ".weight_packed", ct_pack_int32(codes, cfg.bits)),
                        (base + ".weight_scale", scales.reshape(-1, 1)),
                        (base + ".weight_shape", np.array(t.shape, np.int64))]
        else:
            tensors.append(("model." + t.name, codes.astype(np.float32) * scales[:, None]))
    return tensors, truth


def _write(d, cfg, tensors):
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    write_safetensors(d / "model.safetensors", tensors)
    return d


@pytest.mark.parametrize("ct", [False, True])
def test_precomputed_scales_are_exact(tmp_path, ct):
    cfg = dict(TINY_TEXT)
    if ct:
        cfg["quantization_config"] = {
            "quant_method": "compressed-tensors", "format": "pack-quantized",
            "config_groups": {"attn": {"targets": [r"re:.*self_attn\.[qkvo]_proj$"],
                                       "weights": {"num_bits": 4, "strategy": "channel",
                                                   "symmetric": True, "type": "int"}}}}
    spec = spec_from_config(cfg)
    tensors, truth = _grid_tensors(spec, np.random.default_rng(1), ct_attention=ct)
    d = _write(tmp_path / "ck", cfg, tensors)
    report = plan_model(d, recipe="mobile")
    sources = {t["name"]: t["scale_source"] for t in report.to_json()["tensors"]}
    ckpt = open_checkpoint(d)
    prep = Preparer(ckpt, bind(spec, ckpt.tensors), report.plan)
    seen = set()
    for tp in report.plan.tensors:
        if tp.name not in truth:
            continue
        p = prep.prepare(tp)
        codes, scales = truth[tp.name]
        expected_source = "compressed_tensors" if ct and tp.name.split(".")[-2] in ATTN else "grid"
        assert p.scale_source == expected_source, tp.name
        if expected_source == "compressed_tensors":
            assert sources[tp.name] == "compressed_tensors"
        assert p.error == 0.0, tp.name
        assert p.value.scales.tobytes() == scales.tobytes(), tp.name  # bit for bit
        assert np.array_equal(p.value.codes, codes), tp.name
        seen.add(expected_source)
    assert seen == ({"grid", "compressed_tensors"} if ct else {"grid"})


def test_off_grid_weights_fall_back_to_ptq_with_a_note(tmp_path):
    spec = spec_from_config(TINY_TEXT)
    rng = np.random.default_rng(2)
    tensors = [("model." + t.name, rng.standard_normal(t.shape).astype(np.float32)) for t in text_tensors(spec.text)]
    d = _write(tmp_path / "ck", TINY_TEXT, tensors)
    report = plan_model(d, recipe="mobile")
    ckpt = open_checkpoint(d)
    prep = Preparer(ckpt, bind(spec, ckpt.tensors), report.plan)
    tp = report.plan.by_name()["layers.0.mlp.gate_proj.weight"]
    p = prep.prepare(tp)
    assert p.scale_source == "ptq" and p.error > 0 and "off" in p.note.lower()
    assert np.abs(dequantize(p.value) - ckpt.read_f32("model.layers.0.mlp.gate_proj.weight")).max() == \
        pytest.approx(p.error)


def test_tiny_qat_checkpoint_converts_with_zero_rerounding_error(tmp_path):
    """The embedded QAT model: every quantized tensor takes its trained scales or codebooks exactly."""
    from pathlib import Path

    qat = Path(__file__).resolve().parents[1] / "models" / "tiny-gemma4" / "qat"
    report = plan_model(qat, recipe="mobile", text_only=True)
    ckpt = open_checkpoint(qat)
    prep = Preparer(ckpt, bind(report.source.spec, ckpt.tensors), report.plan)
    sources = set()
    for tp in report.plan.tensors:
        if tp.config is None:
            continue
        p = prep.prepare(tp)
        assert p.error == 0.0, (tp.name, p.scale_source, p.error)
        sources.add(p.scale_source)
    assert sources == {"qat_sidecar", "qat_codebooks"}

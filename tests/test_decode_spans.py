"""decode_<S> signatures (issue 13): decode that attends to the first S cache slots only gives the
same logits, bit for bit, as ``decode`` over the whole cache, and the runner takes the shortest
one that holds the position."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.litert.runtime import LiteRTModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("spans") / "m"
    subprocess.run([sys.executable, "-m", "edge_sdk", "convert", str(ROOT / "models" / "tiny-gemma4" / "qat"),
                    "-o", str(out), "--recipe", "mobile", "--text-only", "--context", "512", "--decode-spans"],
                   check=True, capture_output=True)
    return out


def test_spans_are_in_model_json(tiny):
    sigs = json.loads((tiny / "model.json").read_text())["signatures"]["prefill_decode"]
    assert sigs["decode"] == "decode"
    assert {k: v for k, v in sigs.items() if k.startswith("decode_")} == {"decode_128": "decode_128",
                                                                         "decode_256": "decode_256"}


@pytest.mark.parametrize("api", ["interpreter", "compiled"])
def test_span_decode_equals_whole_cache_decode(tiny, api):
    spans = LiteRTModel(tiny, api=api)
    whole = LiteRTModel(tiny, api=api, decode_spans=False)
    ids = np.arange(3, 23)
    for m in (spans, whole):
        m.reset()
        m.prefill(ids, logits=False)
    tok, roles = 5, []
    for _ in range(250):   # positions 20..269: decode_128, decode_256, then decode
        roles.append(spans.decode_signature())
        a, b = spans.decode(tok), whole.decode(tok)
        np.testing.assert_array_equal(a, b)
        tok = int(b.argmax())
    assert roles[0] == "decode_128" and roles[128 - 20] == "decode_256" and roles[-1] == "decode"
    assert whole.decode_signature() == "decode"
    for m in (spans, whole):
        m.close()


@pytest.mark.parametrize("context,n,expect", [(4096, 0, ()), (4096, 1, (512,)), (4096, 2, (512, 1024)),
                                              (4096, 3, (512, 1024, 2048)), (4096, 9, (512, 1024, 2048)),
                                              (512, 1, (128,)), (512, 3, (128, 256)), (256, 3, (128,))])
def test_span_count_takes_the_shortest_first(context, n, expect):
    from edge_sdk.litert.gemma4 import Geometry
    assert Geometry(context=context, prefill=32, kv=None, spans=n).decode_spans == expect


def test_negative_span_count_is_refused():
    from edge_sdk.litert.gemma4 import Geometry
    with pytest.raises(ValueError, match="decode_spans"):
        Geometry(context=4096, prefill=32, kv=None, spans=-1).decode_spans


def test_planned_memory_counts_each_span(tiny):
    """Each decode_<S> costs what a decode signature unpacks (8 B per quantized channel) plus the float
    K and V of the largest layer read up to slot S; planned_memory reads the spans from model.json."""
    from edge_sdk.pipeline import converted_plan, planned_memory
    from edge_sdk.quant.memory import estimate_memory, quant_channels, unique_quant_channels

    plan, kv = converted_plan(tiny)
    with_spans = planned_memory(tiny, kv.context, 64)
    bare = estimate_memory(plan, kv.context, kv.prefill, distinct_tokens=64, kv=kv)
    every = unique_quant_channels(plan)
    assert quant_channels(plan, 2) - quant_channels(plan) == 2 * every
    assert with_spans["quant_metadata_bytes"] - bare.quant_metadata_bytes == 8 * 2 * every
    full = [b for b in kv.buffers if not b.ring]
    assert full, "the tiny model at 512 has full-length caches"
    per_slot = max(sum(4 * math.prod(b.shape) // b.length for b in full if b.layer == layer) for layer in {b.layer for b in full})
    assert with_spans["kv_read_bytes"] - bare.kv_read_bytes == per_slot * (128 + 256)

"""decode_<S> signatures (issue 13): decode that attends to the first S cache slots only gives the
same logits, bit for bit, as ``decode`` over the whole cache, and the runner takes the shortest
one that holds the position."""

import json
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

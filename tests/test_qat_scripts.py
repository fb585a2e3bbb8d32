"""The QAT measurement scripts' own pieces (issue 18): ``scripts/qat_continue.py`` starts from a QAT
checkpoint exactly as exported, and ``scripts/qat_sections.py``'s Gaussian reading of top-1 inverts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
PROSE = ROOT / "models" / "tiny-gemma4-prose"   # the fixture the QAT studies measured
QAT = PROSE / "qat"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_continue_starts_from_the_exported_model_exactly():
    """Fake-quantizers with the exported scales and codebooks leave the on-grid weights where they
    are: the student's logits equal the plain checkpoint's, bit for bit."""
    from edge_sdk.qat.train import _load_tokenizer
    cls, _ = _load_tokenizer(QAT)
    student = _script("qat_continue").load_student(cls, QAT)
    plain = cls.from_pretrained(str(QAT), dtype=torch.float32).eval()
    ids = torch.randint(3, 2048, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(student(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_gaussian_top1_reading_inverts():
    m = _script("qat_sections")
    margins = torch.rand(5000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    for sigma in (0.1, 0.5, 2.0):
        top1 = m.agreement_at(margins, sigma)
        assert 0.5 < top1 < 1 and abs(m.sigma_for(margins, top1) - sigma) < 1e-6
    assert m.agreement_at(margins, 0.2) > m.agreement_at(margins, 0.4)   # a smaller error agrees more


def test_float_margins_predicts_the_qat_models_own_top1(tmp_path):
    """``scripts/float_margins.py`` on the float model the QAT model was trained from: the shares
    weighted by the per-bin agreement are the QAT model's top-1 itself (the bins cover every
    position), and the shares sum to 1."""
    import json

    from edge_sdk.qat.monitor import HeldOut
    assert _script("float_margins").main(["--json", str(tmp_path / "m.json")]) == 0
    r = json.loads((tmp_path / "m.json").read_text())
    (row,) = r["floats"]
    assert abs(sum(row["shares"]) - 1) < 1e-9 and row["float"] == "models/tiny-gemma4-prose/float"
    cls, held = _script("float_margins").held_out(PROSE / "float",
                                                  _script("tiny_data").write_splits(tmp_path / "d", PROSE / "split.json"))
    top1 = HeldOut.measure(held, cls.from_pretrained(str(QAT), dtype=torch.float32))["top1"]
    assert row["predicted_top1"] == pytest.approx(top1, abs=1e-9) and 0.5 < top1 < 1


def test_docstrings_never_share_text_with_the_heldout_topics():
    """``train_tiny.py --docstrings``: none of the extra prose contains a 64-character string of a
    held-out topic (on this CPython none does), and a text that does is dropped: a docstring planted
    in the avoided texts, or a held-out topic's own middle."""
    tt = _script("train_tiny")
    held = tt.topic_texts(tt.split_topics()["heldout"])
    docs = tt.stdlib_docstrings()
    assert len(docs) > 1000 and all(len(d) >= 200 for d in docs)
    assert tt.without_overlap(docs, held) == docs
    longest = max(held, key=len)
    leak = "Some prose. " + longest[len(longest) // 2:][:100] + " More prose."
    assert tt.without_overlap([docs[0], leak, docs[2]], held + [docs[2]]) == [docs[0]]


def test_fit_regenerates_the_runs_own_teacher_samples():
    """``scripts/qat_fit.py`` measures "its teacher samples" on a regenerated prefix: the samples are
    drawn ``GEN_BATCH`` sequences at a time, so the first whole batch of a larger run is the same."""
    from edge_sdk.qat.samples import GEN_BATCH, teacher_samples
    from edge_sdk.qat.train import _load_tokenizer
    float_dir = PROSE / "float"
    cls, _ = _load_tokenizer(float_dir)
    model = cls.from_pretrained(str(float_dir), dtype=torch.float32).eval()
    stream = torch.randint(3, 2048, (400,), generator=torch.Generator().manual_seed(2)).numpy()
    small = teacher_samples(model, stream, GEN_BATCH, 12, seed=3)
    large = teacher_samples(model, stream, GEN_BATCH + 7, 12, seed=3)
    assert (small == large[:GEN_BATCH]).all()
    assert not (small == teacher_samples(model, stream, GEN_BATCH, 12, seed=4)).all()


def test_fit_measures_zero_for_the_float_model_itself(tmp_path):
    """The float model against itself: KLD 0, top-1 100 %, and a difficulty that is a real share."""
    from edge_sdk.qat.train import _load_tokenizer
    float_dir = PROSE / "float"
    cls, _ = _load_tokenizer(float_dir)
    model = cls.from_pretrained(str(float_dir), dtype=torch.float32).eval()
    windows = torch.randint(3, 2048, (4, 24), generator=torch.Generator().manual_seed(5)).numpy()
    (row,) = _script("qat_fit").measure_sets(model, {"random": windows}, model)
    assert row["kld"] == pytest.approx(0, abs=1e-6) and row["top1"] == 1.0
    assert 0 < row["near_ties"] < 1 and row["float_entropy"] > 0 and row["positions"] == 4 * 23


def test_code_split_is_read_alike_by_the_scripts_and_validate(tmp_path, capsys):
    """``train_tiny.py --corpus code``: the stdlib's source files split by path, train and held-out
    disjoint; ``tiny_data.write_splits`` writes them back from split.json (its sha256 check quiet)
    and ``edge-sdk validate``'s default held-out text (``quality.heldout_texts``) is the same files."""
    import json

    from edge_sdk.validate.quality import STDLIB_SOURCE, heldout_texts
    tt = _script("train_tiny")
    split = tt.split_code()
    assert split["source"] == STDLIB_SOURCE and split["train"] and split["heldout"]
    assert not set(split["train"]) & set(split["heldout"])
    (tmp_path / "split.json").write_text(json.dumps(split))
    paths = _script("tiny_data").write_splits(tmp_path / "d", tmp_path / "split.json")
    assert "differ" not in capsys.readouterr().err
    written = [json.loads(line)["text"] for line in paths["heldout"].read_text().splitlines()]
    assert written == heldout_texts(tmp_path / "split.json") == tt.code_texts(split["heldout"])
    assert sum(map(len, written)) == split["chars"]["heldout"]


def test_the_default_ships_its_split_and_a_changed_document_is_refused(tmp_path):
    """``models/tiny-gemma4/data/*.jsonl`` are the split.json's documents (names and sha256), so
    validate's default held-out text and ``tiny_data.py``'s files do not depend on this Python's
    stdlib (Debian's python3.11 has no tkinter, other releases differ); a file whose text or names
    differ from the split is refused, naming the file."""
    import json
    import shutil

    from edge_sdk.errors import InputError
    from edge_sdk.validate.quality import heldout_texts, shipped_split
    split_json = ROOT / "models" / "tiny-gemma4" / "split.json"
    split = json.loads(split_json.read_text())
    held = shipped_split(split_json, "heldout")
    assert len(held) == len(split["heldout"]) == 31 and heldout_texts(split_json) == held
    assert sum(map(len, held)) == split["chars"]["heldout"]
    assert len(shipped_split(split_json, "train")) == len(split["train"])
    paths = _script("tiny_data").write_splits(tmp_path / "w", split_json)
    assert [json.loads(line)["text"] for line in paths["heldout"].read_text().splitlines()] == held
    assert shipped_split(PROSE / "split.json", "heldout") is None   # nothing shipped: read from pydoc topics
    copy = tmp_path / "m"
    (copy / "data").mkdir(parents=True)
    shutil.copy(split_json, copy / "split.json")
    lines = (split_json.parent / "data" / "heldout.jsonl").read_text(encoding="utf-8").splitlines()
    doc = json.loads(lines[3])
    lines[3] = json.dumps({**doc, "text": doc["text"].replace("def ", "def  ", 1)})
    (copy / "data" / "heldout.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="heldout.jsonl.*sha256"):
        heldout_texts(copy / "split.json")
    (copy / "data" / "heldout.jsonl").write_text('{"text": "no name"}\n')
    with pytest.raises(InputError, match="heldout.jsonl"):
        heldout_texts(copy / "split.json")

"""The CLI as a user meets it (issue 15), every verb through a real ``edge-sdk`` subprocess on the
tiny QAT model and the real LiteRT runtime: ``run`` streams text to stdout while it generates and
prints one stats line on stderr; no LiteRT/LiteRT-LM log line reaches the terminal without ``-v``
(and ``-v`` does let them through, so the quiet is ours); progress lines for the long steps;
``--version``; every flag's help shows its default; one ``-o/--output``; the README's Quick start
output is what the commands print."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-gemma4" / "qat"
PROMPT = "def read(self, size=-1):"
STATS = re.compile(r"^prompt: (\d+) tok, [\d,.]+ tok/s \| generation: (\d+) tok, ([\d,.]+|-) tok/s \| "
                   r"peak memory: \d+\.\d{3} GB$")
# what LiteRT / LiteRT-LM write from native code (accelerator registry, plugins, delegates)
RUNTIME_LOG = re.compile(r"^(INFO|WARNING|VERBOSE|DEBUG): |\[[a-z_]+\.cc:\d+\]|XNNPACK delegate|accelerator|"
                         r"openvino", re.I | re.M)


def cli(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_sdk", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    if not (TINY / "config.json").is_file():
        pytest.skip(f"{TINY} not present")
    out = tmp_path_factory.mktemp("ux") / "tiny"
    r = cli("convert", str(TINY), "-o", str(out), "--recipe", "mobile", "--text-only")
    assert r.returncode == 0, r.stderr
    # convert: the summary on stdout says the default context; stderr holds stage lines only
    assert "context 512 (the default" in r.stdout, r.stdout
    stages = [ln for ln in r.stderr.splitlines() if not ln.endswith(" ...")]
    assert [ln.split(": ")[1] for ln in stages] == ["reading the checkpoint and planning", "embedder.tflite",
                                                      "per_layer_embedder.tflite", "prefill_decode.tflite",
                                                      "sha256 of inputs and outputs"], r.stderr
    assert not RUNTIME_LOG.search(r.stderr)
    return out


def test_run_streams_text_then_one_stats_line(model):
    """Text reaches stdout while generation runs: the first chunk arrives long before the stats
    line (which is printed when generation ends); a program that printed everything at the end
    would show both at the same moment."""
    n = 480   # builtin kernels: ~0.5-1 s of generation on 2 cores
    p = subprocess.Popen([sys.executable, "-m", "edge_sdk", "run", str(model), "--prompt", PROMPT, "-n", str(n),
                          "--ignore-eos", "--backend", "builtin"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    chunks: list[tuple[float, bytes]] = []
    err: list[tuple[float, bytes]] = []

    def pump(fd: int, into: list) -> None:
        while data := os.read(fd, 65536):
            into.append((time.monotonic(), data))

    threads = [threading.Thread(target=pump, args=(p.stdout.fileno(), chunks)),
               threading.Thread(target=pump, args=(p.stderr.fileno(), err))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert p.wait(timeout=60) == 0, b"".join(d for _, d in err)
    stderr = b"".join(d for _, d in err).decode()
    lines = stderr.splitlines()
    assert len(lines) == 1 and STATS.match(lines[0]), stderr     # the stats line and nothing else
    m = STATS.match(lines[0])
    assert int(m.group(2)) == n and int(m.group(1)) > 1
    gen_s = (n - 1) / float(m.group(3).replace(",", ""))
    t_stats = next(t for t, d in err if b"prompt:" in d)
    assert len(chunks) >= 5, f"stdout came in {len(chunks)} writes: not streamed"
    assert t_stats - chunks[0][0] > 0.5 * gen_s, (t_stats - chunks[0][0], gen_s)
    text = b"".join(d for _, d in chunks).decode()
    assert text.strip() and "prompt" not in text and not RUNTIME_LOG.search(text)


def test_quiet_unless_verbose(model):
    for api in ("interpreter", "compiled"):   # compiled: ~70 lines of accelerator registry otherwise
        quiet = cli("run", str(model), "--prompt", PROMPT, "-n", "4", "--api", api)
        assert quiet.returncode == 0 and quiet.stderr.count("\n") == 1 and STATS.match(quiet.stderr.strip()), \
            (api, quiet.stderr)
        loud = cli("run", str(model), "--prompt", PROMPT, "-n", "4", "--api", api, "-v")
        assert loud.returncode == 0 and RUNTIME_LOG.search(loud.stderr), (api, loud.stderr)
        assert loud.stdout == quiet.stdout   # the same greedy text either way
    # our own errors still reach the terminal: one line
    bad = cli("run", str(model), "--ids", "2,3", "-n", "100000")
    assert bad.returncode == 2 and bad.stderr.startswith("edge-sdk: error: ") and bad.stderr.count("\n") == 1


def test_prompt_from_stdin_and_chat_template(model):
    direct = cli("run", str(model), "--prompt", PROMPT, "-n", "12")
    piped = cli("run", str(model), "--prompt", "-", "-n", "12", stdin=PROMPT + "\n")
    assert direct.returncode == piped.returncode == 0 and direct.stdout == piped.stdout and direct.stdout.strip()
    # --chat: the prompt is the checkpoint's template rendered as transformers renders it
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(TINY))
    want = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    chat = cli("run", str(model), "--prompt", PROMPT, "--chat", "-n", "12")
    assert chat.returncode == 0, chat.stderr
    assert int(STATS.match(chat.stderr.strip()).group(1)) == len(want), (chat.stderr, want)


def test_validate_announces_each_child_and_keeps_logits_only_when_asked(model, tmp_path):
    base = ["validate", str(model), "--context", "128", "--max-tokens", "200", "--runs", "1", "--decode-tokens", "4",
            "--runtime", "edge_sdk", "--reference", str(TINY.parent / "float")]
    r = cli(*base, "-o", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("PASS") and not RUNTIME_LOG.search(r.stderr + r.stdout), r.stderr
    for child in ("our runner (first run, builds the weight cache, cold)", "our runner (steady state, cold)",
                  "our runner (every position's logits, for quality)"):
        assert f"edge-sdk validate: {child} ...\n" in r.stderr, r.stderr           # as it starts
        assert re.search(re.escape(f"edge-sdk validate: {child}: done in ") + r"\d+\.\d s", r.stderr), r.stderr
    rep = tmp_path / "rep"
    assert not list(rep.glob("*.npy")) and json.loads((rep / "report.json").read_text())["quality"]["kld_mean"] >= 0
    kept = cli(*base, "--report", str(tmp_path / "kept"), "--keep-logits", "--no-first-run")   # the old spelling
    assert kept.returncode == 0, kept.stderr
    assert {p.name for p in (tmp_path / "kept").glob("*.npy")} == {"logits.npy", "reference_logits.npy"}


def test_bundle_plan_inspect_quiet(model, tmp_path):
    pytest.importorskip("litert_lm_builder")
    b = cli("bundle", str(model), "-o", str(tmp_path / "m.litertlm"))
    assert b.returncode == 0 and (tmp_path / "m.litertlm").is_file(), b.stderr
    assert all(ln.startswith("edge-sdk bundle: ") for ln in b.stderr.splitlines()) and "done in" in b.stderr
    p = cli("plan", str(TINY), "--text-only")
    assert p.returncode == 0 and p.stderr == "" and "context 4096 is plan's default" in p.stdout
    i = cli("inspect", str(model))
    assert i.returncode == 0 and i.stderr == ""


def test_version():
    from edge_sdk import __version__

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"edge-sdk {__version__} (ai-edge-litert ")


def test_every_flag_has_help_with_its_default_and_one_output_flag():
    from edge_sdk.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subs) == {"inspect", "plan", "validate", "convert", "run", "bundle", "qat"}
    for verb, sub in subs.items():
        helper = sub._get_formatter()
        for a in sub._actions:
            if not a.option_strings or isinstance(a, argparse._HelpAction):
                continue
            shown = helper._get_help_string(a) % {"default": a.default} if a.help else ""
            assert a.help and "default" in shown, (verb, a.option_strings, shown)
            if "-o" in a.option_strings:
                assert "--output" in a.option_strings, (verb, a.option_strings)
            assert not ({"--out", "--report"} & set(a.option_strings)) or "-o" in a.option_strings
        writes = {"convert", "validate", "bundle", "qat"}
        has_o = any("-o" in a.option_strings for a in sub._actions)
        assert has_o == (verb in writes), verb
    # and as a user sees it
    r = cli("validate", "--help")
    assert r.returncode == 0 and "-o DIR, --output DIR, --report DIR" in r.stdout and "(default: 5)" in r.stdout


def test_default_threads_is_one(model):
    """The report says '1 thread, the runtime's default' when no --threads is given: ai-edge-litert
    starts no worker threads then (with --threads 2, one worker per model file)."""
    code = ("import os, sys\nfrom edge_sdk.litert.runtime import LiteRTModel\n"
            "n = lambda: len(os.listdir('/proc/self/task'))\n"
            "for api in ('interpreter', 'compiled'):\n"
            "    for th in (None, 2):\n"
            "        before = n(); m = LiteRTModel(sys.argv[1], api=api, threads=th); m.prefill([2, 5, 9])\n"
            "        print(api, th, n() - before); m.close(); del m\n")
    r = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=120)
    grown = {tuple(ln.split()[:2]): int(ln.split()[2]) for ln in r.stdout.splitlines()}
    assert grown[("interpreter", "None")] == grown[("compiled", "None")] == 0, r.stdout
    assert grown[("interpreter", "2")] > 0 and grown[("compiled", "2")] > 0, r.stdout


def _mask(lines: list[str]) -> list[str]:
    """Numbers that vary between runs (timings, rates, sizes) as '#'; a stage's start line (printed
    only when it runs for over a second) dropped."""
    return [re.sub(r"\d[\d,]*(\.\d+)?", "#", ln) for ln in lines if not ln.endswith(" ...")]


def test_readme_quick_start_output_is_what_the_commands_print(tmp_path):
    """The README's Quick start shows the output of its convert and run; the same commands, run
    as written (from a directory where models/ is this checkout's), print it: stderr lines and
    stdout lines in the order a terminal shows them for these two commands."""
    import shlex

    if not (TINY / "config.json").is_file():
        pytest.skip(f"{TINY} not present")
    block = re.search(r"<!-- quick-start-output -->\n```text\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README Quick start has no expected-output block"
    shown = block.group(1).splitlines()
    cmds = [ln[2:] for ln in shown if ln.startswith("$ ")]
    assert [c.split()[1] for c in cmds] == ["convert", "run"]
    (tmp_path / "models").symlink_to(ROOT / "models")
    got: list[str] = []
    for cmd in cmds:
        r = subprocess.run([sys.executable, "-m", "edge_sdk", *shlex.split(cmd)[1:]], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        # convert: stage lines (stderr) while it works, then the summary (stdout); run: the text, then stats
        got += [f"$ {cmd}"] + (r.stderr.splitlines() + r.stdout.splitlines() if "convert" in cmd.split()[1]
                                else r.stdout.splitlines() + r.stderr.splitlines())
    assert _mask(got) == _mask(shown), "\n".join(got)

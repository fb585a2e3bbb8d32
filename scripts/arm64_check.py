"""ARM vs x86: our converted models on the arm64 test device (scripts/arm64_device.sh) against this host.

    python scripts/arm64_check.py [--out DIR] [--presets float int8 int4 mobile]
                                  [--backends xnnpack builtin] [--max-tokens N]

For each recipe preset the tiny model is converted (``--text-only``; ``mobile`` from the QAT checkpoint
models/tiny-gemma4/qat, ``float``/``int8``/``int4`` from its float sibling), and
our runner (edge_sdk/validate/runner.py) runs it on the same token ids twice: on this x86 host, and on
the arm64 device over adb (the validator's own device path, ``DeviceRunner``: push, run, pull), under
qemu-user with the aarch64 wheels of ai-edge-litert. The two logit matrices are compared: mean/max KL
divergence (x86 as the reference distribution), top-1 agreement, max |Δlogit|. Then the ``mobile``
model is validated on the device (``edge-sdk validate --device``: quality against the float
checkpoint on ARM kernels), and its ``.litertlm`` runs in LiteRT-LM on both sides
(scripts/litertlm_greedy.py), greedy text compared. Writes DIR/arm64_check.json and .md.

Memory and speed on the device are qemu-user figures (the emulator's own process, JIT-translated
code): reported as emulation figures, never checked against a budget.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "arm64_device.sh"
TINY = REPO / "models" / "tiny-gemma4" / "qat"
PRESETS = ("float", "int8", "int4", "mobile")
# mobile is what the QAT checkpoint was trained for (its scales are taken as given); the other presets
# quantize the float checkpoint (the QAT scales are per-channel int4/int2 and refuse int4 block-32)
SOURCES = {"float": TINY.parent / "float", "int8": TINY.parent / "float", "int4": TINY.parent / "float",
           "mobile": TINY}
GREEDY = REPO / "scripts" / "litertlm_greedy.py"
PROMPTS = ("The for statement is used to", "A class definition defines", "The with statement")
EMULATION_NOTE = ("memory and speed on the arm64 device are qemu-user emulation figures (the emulator's "
                  "process, translated code): not phone figures; no budget verdict is made from them")
sys.path.insert(0, str(REPO / "tests"))


def build_root(timeout: float = 900.0) -> tuple[Path, float | None]:
    """``arm64_device.sh build``: the root's path and its build time in seconds (of the build that
    made the cached root; None when unknown)."""
    r = subprocess.run([str(SCRIPT), "build"], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"arm64_device.sh build failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    root = Path(r.stdout.strip().splitlines()[-1])
    bs = root.parent / "build_seconds"
    return root, float(bs.read_text()) if bs.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Arm64Device:
    """The arm64 root as a loopback adb device, connected to ``session``'s adb server."""

    def __init__(self, session, root: Path):
        from adb_loopback import LoopbackAdbDevice
        self.session = session
        self.dev = LoopbackAdbDevice(None, sysroot=root, shell_argv=[str(SCRIPT), "exec"],
                                     model="qemu-aarch64", lifetime=3600.0)

    def __enter__(self):
        self.dev.start()
        self.session.connect(self.dev.serial)
        return self.dev

    def __exit__(self, *exc):
        try:
            self.session.disconnect(self.dev.serial)
        finally:
            self.dev.stop()


def compare_logits(x86: np.ndarray, arm: np.ndarray) -> dict:
    """Same ids, two architectures: KL(x86 || arm) per position (x86 is the reference distribution),
    top-1 agreement, max |Δlogit|."""
    from edge_sdk.validate.quality import log_softmax
    if x86.shape != arm.shape:
        raise ValueError(f"logit shapes differ: x86 {x86.shape} vs arm64 {arm.shape}")
    a, b = np.asarray(x86, np.float64), np.asarray(arm, np.float64)
    la, lb = log_softmax(a), log_softmax(b)
    kld = np.sum(np.exp(la) * (la - lb), axis=-1)
    ta, tb = a.argmax(-1), b.argmax(-1)
    rows = np.nonzero(ta != tb)[0]
    # how close to a tie each flipped top-1 was on x86: its top logit minus ARM's choice, in logits
    gaps = a[rows, ta[rows]] - a[rows, tb[rows]]
    return {"top1_disagree_max_gap": float(gaps.max()) if len(rows) else 0.0,
            "positions": int(a.shape[0]), "kld_mean": float(kld.mean()), "kld_max": float(kld.max()),
            "top1_agreement": float(np.mean(a.argmax(-1) == b.argmax(-1))),
            "max_abs_delta_logit": float(np.abs(a - b).max()),
            "mean_abs_delta_logit": float(np.abs(a - b).mean()),
            "finite": bool(np.isfinite(a).all() and np.isfinite(b).all())}


def eval_windows(model_dir: Path, max_tokens: int | None, window: int | None = None) -> list[np.ndarray]:
    """The validator's own evaluation ids (tiny model's held-out split) cut into windows."""
    from edge_sdk.validate import quality as Q
    from edge_sdk.validate.validator import eval_tokens, model_meta
    meta = model_meta(model_dir)
    stream, _ = eval_tokens(model_dir, meta, text=None, tokens=None, want_text=True)
    ctx = int(meta.get("context") or meta.get("max_context") or 512)
    return Q.make_windows(stream, window or ctx - 8, max_tokens)


def _census(r: dict) -> dict:
    k = r.get("kernels") or {}
    return {"backend_info": (r.get("backend_info") or {}).get("kernels"),
            "delegated_ops": {m: c.get("delegated_ops", 0) for m, c in k.items()},
            "builtin_heavy": {m: c.get("heavy_builtin") for m, c in k.items() if c.get("heavy_builtin")}}


def cross_arch(session, serial: str, model_dir: Path, windows: list[np.ndarray], work: Path, *,
               backend: str = "xnnpack", api: str = "compiled", decode_tokens: int = 4) -> dict:
    """Our runner on x86 (here) and on the arm64 device, same ids; the comparison of their logits."""
    from edge_sdk.validate.remote import device_runner
    from edge_sdk.validate.validator import run_runner
    out = {}
    common = dict(logits=True, backend=backend, api=api, threads=None, runs=1, prompt_tokens=16,
                  decode_tokens=decode_tokens)
    for arch, executor in (("x86_64", None), ("arm64", device_runner(session, serial, log=io.StringIO()))):
        w = work / arch
        w.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        r = run_runner(model_dir, windows, w, executor=executor, **common)
        out[arch] = {"result": r, "logits": np.load(w / "logits.npy"), "wall_s": time.monotonic() - t0}
    n = int(sum(len(x) for x in windows))      # rows past n follow each side's own greedy tokens
    fig = compare_logits(out["x86_64"]["logits"][:n], out["arm64"]["logits"][:n])
    rx, ra = out["x86_64"]["result"], out["arm64"]["result"]
    fig.update(backend=backend, api=api, machine={"x86_64": rx.get("machine"), "arm64": ra.get("machine")},
               greedy_equal=rx.get("generated") == ra.get("generated"),
               kernels={"x86_64": _census(rx), "arm64": _census(ra)},
               wall_s={k: round(v["wall_s"], 1) for k, v in out.items()},
               emulation={"note": EMULATION_NOTE, "arm64_timing": ra.get("timing"),
                          "arm64_peak_rss_bytes": (ra.get("memory") or {}).get("peak_rss_bytes")})
    return fig


def kernel_diff(session, serial: str, tflite: Path, signature: str, work: Path) -> dict:
    """scripts/arm64_kernel_diff.py on both machines (builtin kernels, every op's output; and the XNNPACK
    delegate's outputs), same seeded inputs: which kernels compute differently, and by how much."""
    import arm64_kernel_diff as K
    remote = "/data/local/tmp/edge_sdk/kernel_diff"
    tool = REPO / "scripts" / "arm64_kernel_diff.py"
    session.run(serial, ["mkdir", "-p", remote])
    session.push(serial, tool, f"{remote}/{tool.name}")
    session.push(serial, tflite, f"{remote}/{tflite.name}")
    work.mkdir(parents=True, exist_ok=True)
    for kind in ("builtin", "xnnpack"):
        flag = ["--xnnpack"] if kind == "xnnpack" else []
        subprocess.run([sys.executable, str(tool), "dump", str(tflite), signature, str(work / f"x86_{kind}.npz"),
                        *flag], check=True, capture_output=True, timeout=300)
        session.run(serial, ["python3", f"{remote}/{tool.name}", "dump", f"{remote}/{tflite.name}", signature,
                             f"{remote}/arm_{kind}.npz", *flag], timeout=900)
        session.pull(serial, f"{remote}/arm_{kind}.npz", work / f"arm_{kind}.npz")
    session.remove(serial, remote, recursive=True)
    x, a = np.load(work / "x86_xnnpack.npz"), np.load(work / "arm_xnnpack.npz")
    outs = [k for k in x.files if k.startswith("out_")]
    return {"signature": signature,
            "builtin_same_input_diffs": K.same_input_diffs(str(work / "x86_builtin.npz"), str(work / "arm_builtin.npz")),
            "builtin_amplified": K.compare(str(work / "x86_builtin.npz"), str(work / "arm_builtin.npz"), 1e-5),
            "xnnpack_float_outputs_max_rel_diff": max([K._rel(x[k], a[k]) for k in outs if x[k].dtype.kind == "f"],
                                                      default=0.0),
            "xnnpack_int_outputs_max_steps": max([int(np.abs(x[k].astype(np.int64) - a[k]).max()) for k in outs
                                                  if x[k].dtype.kind in "iu"], default=0)}


def convert(preset: str, out: Path, context: int | None = None) -> Path:
    args = [sys.executable, "-m", "edge_sdk.cli", "convert", str(SOURCES[preset]), "-o", str(out), "--recipe", preset,
            "--text-only", "--overwrite"] + (["--context", str(context)] if context else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"convert --recipe {preset} failed: {r.stderr.strip()}")
    return out


def bundle(model_dir: Path, out: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "edge_sdk.cli", "bundle", str(model_dir), "-o", str(out),
                        "--overwrite"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"bundle failed: {r.stderr.strip()}")
    return out


def engine_both(session, serial: str, litertlm: Path, work: Path, *, max_tokens: int = 16,
                context: int = 128, prompts=PROMPTS) -> dict:
    """LiteRT-LM greedy text for ``prompts`` on x86 (here) and inside the arm64 root (over adb)."""
    remote = "/data/local/tmp/edge_sdk/litertlm"
    argv_tail = [str(max_tokens), str(context), *prompts]
    host = subprocess.run([sys.executable, str(GREEDY), str(litertlm), str(work / "x86_cache"), *argv_tail],
                          capture_output=True, text=True, timeout=600)
    if host.returncode != 0:
        raise RuntimeError(f"LiteRT-LM on x86 failed: {host.stderr.strip()[-1500:]}")
    session.run(serial, ["mkdir", "-p", remote])
    session.push(serial, litertlm, f"{remote}/{litertlm.name}")
    session.push(serial, GREEDY, f"{remote}/{GREEDY.name}")
    t0 = time.monotonic()
    dev = session.run(serial, ["python3", f"{remote}/{GREEDY.name}", f"{remote}/{litertlm.name}",
                               f"{remote}/cache", *argv_tail], timeout=1200)
    x86, arm = json.loads(host.stdout.strip().splitlines()[-1]), json.loads(dev.stdout.strip().splitlines()[-1])
    return {"x86_64": x86, "arm64": arm, "arm64_wall_s": round(time.monotonic() - t0, 1),
            "text_equal": [a["text"] == b["text"] for a, b in zip(x86["results"], arm["results"])]}


def validate_on_device(serial: str, model_dir: Path, report: Path, adb_port: int, *extra: str) -> dict:
    """``edge-sdk validate MODEL --device SERIAL --report DIR`` (no budget: emulated memory is not a
    phone's); the report.json."""
    env = dict(os.environ, ANDROID_ADB_SERVER_PORT=str(adb_port))
    r = subprocess.run([sys.executable, "-m", "edge_sdk.cli", "validate", str(model_dir), "--device", serial,
                        "--report", str(report), "--runtime", "edge_sdk", *extra], env=env, capture_output=True,
                       text=True, timeout=1800, cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"validate --device failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads((report / "report.json").read_text())


def _md(res: dict) -> str:
    lines = [f"# ARM (aarch64, qemu-user {res['qemu_cpu']}) vs x86: tiny model, same ids", "",
             f"arm64 root: built in {res['build_seconds']} s; whole check {res['total_s']} s", "",
             "| preset | backend | api | positions | mean KLD | max KLD | top-1 | max abs dlogit | greedy equal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in res["cross_arch"]:
        lines.append(f"| {c['preset']} | {c['backend']} | {c['api']} | {c['positions']} | {c['kld_mean']:.2e} | "
                     f"{c['kld_max']:.2e} | {c['top1_agreement']:.2%} | {c['max_abs_delta_logit']:.4f} | "
                     f"{c['greedy_equal']} |")
    v = res.get("validate")
    if v:
        q = v["quality"]
        lines += ["", f"`edge-sdk validate --device` (mobile, ARM kernels) vs float: PPL {q['ppl']:.3f} "
                  f"(ref {q['ppl_reference']:.3f}), KLD {q['kld_mean']:.4f}, top-1 {q['top1_agreement']:.1%}"]
    e = res.get("litert_lm")
    if e:
        lines += ["", f"LiteRT-LM greedy text equal on ARM and x86: {e['text_equal']}"]
    lines += ["", f"Note: {EMULATION_NOTE}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "out" / "arm64_check")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--backends", nargs="+", default=["xnnpack", "builtin"], choices=["xnnpack", "builtin"])
    ap.add_argument("--max-tokens", type=int, default=None, help="evaluation ids per comparison (default: all)")
    a = ap.parse_args(argv)
    from edge_sdk.device.adb import AdbSession
    t0 = time.monotonic()
    root, build_s = build_root()
    a.out.mkdir(parents=True, exist_ok=True)
    res = {"build_seconds": build_s, "qemu_cpu": os.environ.get("EDGE_SDK_ARM64_CPU", "max,sme=off"),
           "cross_arch": []}
    with tempfile.TemporaryDirectory(prefix="arm64-check.") as tmp:
        tmp = Path(tmp)
        home = tmp / "adbhome"
        home.mkdir()
        session = AdbSession(free_port(), server_env={"ADB_USB": "0", "ADB_EMU": "0", "ADB_MDNS": "0",
                                                      "HOME": str(home), "TMPDIR": str(home)})
        try:
            with Arm64Device(session, root) as dev:
                for preset in a.presets:
                    mdir = convert(preset, tmp / preset)
                    windows = eval_windows(mdir, a.max_tokens)
                    for backend in a.backends:
                        for api in (("compiled", "interpreter") if backend == "xnnpack" else ("interpreter",)):
                            fig = cross_arch(session, dev.serial, mdir, windows, tmp / "w" / preset / backend / api,
                                             backend=backend, api=api)
                            fig["preset"] = preset
                            print(f"{preset:7s} {backend:8s} {api:11s} KLD {fig['kld_mean']:.2e} "
                                  f"top-1 {fig['top1_agreement']:.2%} max|d| {fig['max_abs_delta_logit']:.4f}",
                                  flush=True)
                            res["cross_arch"].append(fig)
                if "mobile" in a.presets:
                    mdir = tmp / "mobile"
                    limit = ["--max-tokens", str(a.max_tokens)] if a.max_tokens else []
                    res["validate"] = validate_on_device(dev.serial, mdir, a.out / "validate_arm64", session.port,
                                                         "--runs", "1", "--decode-tokens", "8", *limit)
                    lm = convert("mobile", tmp / "mobile128", context=128)
                    res["litert_lm"] = engine_both(session, dev.serial, bundle(lm, tmp / "tiny.litertlm"), tmp)
        finally:
            session.kill_server()
    res["total_s"] = round(time.monotonic() - t0, 1)
    (a.out / "arm64_check.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (a.out / "arm64_check.md").write_text(_md(res))
    print(_md(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the validator's measuring child on an adb device: push, run, pull (the transport half).

``DeviceRunner(session, serial, runner_files=...)`` probes the device once and picks how to run there:

- **Linux userland with python3** (``probe().has_python and not is_android``): push the model's
  ``model.json`` + ``*.tflite`` to ``ROOT/models/<name>-<sha>/`` (sha256-matched files are reused,
  so a second run pushes nothing), push ``runner_files`` (the measuring child and the siblings it
  imports when edge_sdk is not installed; ``validate.remote.RUNNER_FILES`` names them) to
  ``ROOT/runner/``, push the ids file to a per-run directory ``ROOT/runs/<id>/``, run
  ``python3 runner.py ...`` there (``AdbSession.run``: argv quoted, a non-zero exit is a
  DeviceError), pull ``runner_result.json`` and ``logits.npy`` back into the host work directory,
  and remove the per-run directory (also when anything failed, where the device still answers).
- **Android** (no Python): LiteRT's ``benchmark_model`` (``--runner-binary PATH``) is pushed with
  ``prefill_decode.tflite`` and run on the ``decode`` signature with
  ``--report_peak_memory_footprint=true``; its text is parsed by ``benchmark_model.parse``.

What the figures mean and the report built from them belong to ``edge_sdk.validate`` (which
imports this package, never the reverse). Progress of pushes goes to stderr. Every device fault is
a ``DeviceError`` (CLI exit 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import re
import secrets
import sys
from pathlib import Path
from typing import Mapping, TextIO

from ..errors import DeviceError, InputError
from . import benchmark_model
from .adb import AdbSession, DeviceInfo

REMOTE_ROOT = "/data/local/tmp/edge_sdk"


def sanitize(serial: str) -> str:
    """A directory name for a serial (``127.0.0.1:5555`` → ``127.0.0.1_5555``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", serial) or "device"


def model_files(model_dir: Path) -> list[Path]:
    files = [model_dir / "model.json", *sorted(model_dir.glob("*.tflite"))]
    missing = [f.name for f in files if not f.is_file()]
    if missing or len(files) < 2:
        raise InputError(f"not a converted model directory (missing {', '.join(missing) or '*.tflite'})",
                         path=model_dir, fix="pass the OUT_DIR written by `edge-sdk convert`")
    return files


class DeviceRunner:
    """Executes the runner on one adb device (see the module docstring)."""

    def __init__(self, session: AdbSession, serial: str, *, runner_files: Mapping[str, Path] | None = None,
                 runner_binary: str | Path | None = None, root: str = REMOTE_ROOT, log: TextIO | None = None):
        self.session, self.serial, self.root = session, serial, root
        self.runner_files = dict(runner_files or {})
        self.log = log if log is not None else sys.stderr
        self.info: DeviceInfo = session.probe(serial)
        self.runner_binary = Path(runner_binary) if runner_binary else None
        if self.info.has_python and not self.info.is_android:
            self.kind = "python"
        elif self.runner_binary is not None:
            if not self.runner_binary.is_file():
                raise InputError("no such runner binary", path=self.runner_binary,
                                 fix="pass LiteRT's benchmark_model built for the device's ABI "
                                     f"({self.info.abi})")
            self.kind = "benchmark_model"
        else:
            what = f"Android {self.info.android_version}".strip() if self.info.is_android else "the device"
            raise DeviceError(f"{serial} ({what}, {self.info.abi}) has no python3 to run the validator's "
                              "runner", fix="pass --runner-binary PATH to LiteRT's Android benchmark_model "
                                            f"for {self.info.abi}")

    # ------------------------------------------------------------------ helpers
    def _progress(self, name: str):
        last = [-1]

        def cb(done: int, total: int) -> None:
            pct = 100 if total <= 0 else done * 100 // total
            if pct != last[0] and (pct % 10 == 0 or done == total):
                last[0] = pct
                print(f"edge-sdk: {self.serial}: push {name}: {pct}% of {total:,} bytes",
                      file=self.log, flush=True)
        return cb

    def _push(self, local: Path, remote: str, mode: int = 0o644):
        r = self.session.push(self.serial, local, remote, progress=self._progress(local.name), mode=mode)
        if r.status == "reused":
            print(f"edge-sdk: {self.serial}: {local.name} already on the device (sha256 match)",
                  file=self.log, flush=True)
        return r

    def push_model(self, model_dir: Path, files: list[Path] | None = None) -> str:
        """Push the model files; the device directory (keyed by model.json's sha256: kept for reuse)."""
        files = files or model_files(model_dir)
        key = hashlib.sha256((model_dir / "model.json").read_bytes()).hexdigest()[:12]
        remote = posixpath.join(self.root, "models", f"{sanitize(model_dir.resolve().name)}-{key}")
        self.session.run(self.serial, ["mkdir", "-p", remote])
        for f in files:
            self._push(f, posixpath.join(remote, f.name))
        return remote

    def _new_run_dir(self) -> str:
        run_dir = posixpath.join(self.root, "runs", secrets.token_hex(6))
        self.session.run(self.serial, ["mkdir", "-p", run_dir])
        return run_dir

    def _cleanup(self, run_dir: str) -> None:
        with contextlib.suppress(DeviceError):   # the device may be gone: nothing more to do
            self.session.remove(self.serial, run_dir, recursive=True)

    # ------------------------------------------------------------------ python runner
    def __call__(self, model_dir: Path, ids: Path, work: Path, opts: list[str], *, logits: bool,
                 timeout: float) -> dict:
        """Run ``runner.py`` on the device with the validator's options; its result dict, with the
        logits pulled to ``work/logits.npy``."""
        if self.kind != "python":
            raise DeviceError(f"{self.serial} runs benchmark_model, not the Python runner")
        if "runner.py" not in self.runner_files:
            raise ValueError("DeviceRunner(runner_files=...) must name runner.py (validate.remote.RUNNER_FILES)")
        model_remote = self.push_model(Path(model_dir))
        runner_remote = posixpath.join(self.root, "runner")
        self.session.run(self.serial, ["mkdir", "-p", runner_remote])
        for name, local in self.runner_files.items():
            self._push(local, posixpath.join(runner_remote, name))
        run_dir = self._new_run_dir()
        try:
            self._push(ids, posixpath.join(run_dir, "ids.json"))
            out = posixpath.join(run_dir, "runner_result.json")
            argv = ["python3", posixpath.join(runner_remote, "runner.py"), "--model", model_remote,
                    "--ids-file", posixpath.join(run_dir, "ids.json"), "--out", out, *opts]
            if logits:
                argv += ["--logits", posixpath.join(run_dir, "logits.npy")]
            print(f"edge-sdk: {self.serial}: running the runner on the device", file=self.log, flush=True)
            r = self.session.run(self.serial, argv, timeout=timeout)
            (work / "runner.log").write_text(r.stdout + r.stderr)
            self.session.pull(self.serial, out, work / "runner_result.json")
            if logits:
                self.session.pull(self.serial, posixpath.join(run_dir, "logits.npy"), work / "logits.npy")
        finally:
            self._cleanup(run_dir)
        result = json.loads((work / "runner_result.json").read_text())
        if logits:
            result["logits"]["path"] = str(work / "logits.npy")
        result["device"] = self.describe(model_remote)
        return result

    def describe(self, model_remote: str) -> dict:
        i = self.info
        return {"serial": self.serial, "abi": i.abi, "android_version": i.android_version, "sdk": i.sdk,
                "total_ram_bytes": i.total_ram_bytes, "available_ram_bytes": i.available_ram_bytes,
                "is_android": i.is_android, "runner": self.kind, "remote_model_dir": model_remote}

    # ------------------------------------------------------------------ benchmark_model
    def run_benchmark(self, model_dir: Path, work: Path, *, threads: int | None, backend: str,
                      runs: int, timeout: float) -> tuple[benchmark_model.BenchmarkResult, dict]:
        """Push benchmark_model + prefill_decode.tflite; run the decode signature; parse."""
        graph = Path(model_dir) / "prefill_decode.tflite"
        if not graph.is_file():
            raise InputError("prefill_decode.tflite not found", path=model_dir)
        model_remote = self.push_model(Path(model_dir), [Path(model_dir) / "model.json", graph])
        tool = posixpath.join(self.root, "bin", "benchmark_model")
        self.session.run(self.serial, ["mkdir", "-p", posixpath.dirname(tool)])
        self._push(self.runner_binary, tool, mode=0o755)
        argv = [tool, f"--graph={posixpath.join(model_remote, graph.name)}",
                "--signature_to_run_for_benchmark=decode", "--report_peak_memory_footprint=true",
                f"--num_runs={max(1, runs)}", f"--use_xnnpack={'true' if backend == 'xnnpack' else 'false'}"]
        if threads:
            argv.append(f"--num_threads={threads}")
        r = self.session.run(self.serial, argv, timeout=timeout)
        text = r.stdout + r.stderr
        (work / "benchmark_model.log").write_text(text)
        return benchmark_model.parse(text), {"argv": argv, **self.describe(model_remote)}

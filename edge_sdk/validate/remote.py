"""The validator on an adb device: the measuring child's files, and the Android report.

``device_runner(session, serial)`` is ``edge_sdk.device.remote.DeviceRunner`` (the transport: push,
run, pull) with the files the measuring child needs on a device without edge_sdk installed
(``RUNNER_FILES``: ``runner.py``, ``memwatch.py``, ``runtime.py``, ``paging.py``, ``decoding.py``; the
runner imports its siblings). On a Linux device with python3 the validator then builds the same report as on the
host. On Android (no Python) ``benchmark_validate`` builds the report from LiteRT's
``benchmark_model``: memory and decode speed come back; quality cannot (the tool feeds random
inputs and returns no logits): the report says quality null and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ..budget import Budget, check
from ..device.adb import AdbSession
from ..device.remote import DeviceRunner
from .report import ValidationReport, scratch_dir

_HERE = Path(__file__).resolve().parent
RUNNER_FILES = {"runner.py": _HERE / "runner.py", "memwatch.py": _HERE / "memwatch.py",
                "runtime.py": _HERE.parent / "litert" / "runtime.py", "paging.py": _HERE.parent / "litert" / "paging.py",
                "decoding.py": _HERE.parent / "decoding.py"}
QUALITY_UNAVAILABLE = ("quality is not measured on Android: benchmark_model runs the decode signature "
                       "on random inputs and returns no logits (run `edge-sdk validate` on the host, or on "
                       "a Linux device with python3, for PPL/KLD/top-1)")


def device_runner(session: AdbSession, serial: str, *, runner_binary: str | Path | None = None,
                  log: TextIO | None = None) -> DeviceRunner:
    """The validator's executor on ``serial``: a ``DeviceRunner`` that pushes ``RUNNER_FILES``."""
    return DeviceRunner(session, serial, runner_files=RUNNER_FILES, runner_binary=runner_binary, log=log)


def benchmark_validate(runner: DeviceRunner, mdir: Path, *, budget: Budget | None, report, target: str,
                       threads: int | None, backend: str, runs: int, context: int, plan_memory=None):
    """The Android report: memory (benchmark_model's peak footprint) and decode speed; quality null."""
    with scratch_dir(report) as work:
        b, dev = runner.run_benchmark(mdir, work, threads=threads, backend=backend, runs=runs,
                                      timeout=3600.0)
        peak = b.peak_memory_bytes if b.peak_memory_bytes is not None else b.overall_delta_bytes
        warnings = [QUALITY_UNAVAILABLE]
        if peak is None:
            warnings.append("benchmark_model reported no memory footprint: the budget is not checked")
        checked = check(budget, peak, whole_process=peak, what="benchmark_model peak footprint")
        decode_tps = 1e6 / b.inference_avg_us if b.inference_avg_us > 0 else None
        mem = {"peak_rss_bytes": peak, "baseline_rss_bytes": None, "model_peak_bytes": peak,
               "baseline_note": "benchmark_model reports no baseline: the whole footprint is counted",
               "source": "benchmark_model --report_peak_memory_footprint (MB = 2^20 bytes)",
               "init_delta_bytes": b.init_delta_bytes, "overall_delta_bytes": b.overall_delta_bytes,
               "units": "bytes (GB = 10^9)"}
        rep = ValidationReport.judged(
            checked, [], warnings, model_dir=str(mdir.resolve()), target=target, backend=backend,
            kernels={"requested": backend, "ran": backend, "api": "benchmark_model", "threads": threads,
                     "fallbacks": [], "census": {}, "backend_info": None},
            memory=mem,
            speed={"prefill_tokens_per_s": None, "decode_tokens_per_s": decode_tps, "time_to_first_token_s": None,
                   "decode_step_avg_us": b.inference_avg_us, "decode_step_std_us": b.inference_std_us,
                   "runs": b.runs, "load_s": b.init_us / 1e6},
            quality=None, planned=plan_memory(context, max(1, context // 4)) if plan_memory else None,
            gates={"max_kld": None, "min_top1": None, "budget_bytes": checked.limit_bytes, "sanity": None,
                   "strict_backend": False},
            evaluation={"text": None, "reference": None, "context": context, "method": "benchmark_model decode "
                        "signature on random inputs", "quality_unavailable": QUALITY_UNAVAILABLE},
            runner={"benchmark_model": b.to_json(), "device": dev})
        if report is not None:
            rep.save(work)
        return rep

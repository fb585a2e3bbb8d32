"""Parse the text that LiteRT's ``benchmark_model`` tool prints (the Android path of ``validate``).

``benchmark_model --graph=M.tflite --signature_to_run_for_benchmark=decode
--report_peak_memory_footprint=true`` ends its log with lines such as (with an ``INFO: `` prefix,
a logcat prefix, or none)::

    count=50 first=2881 curr=2703 min=2605 max=20356 avg=2942.27 std=1190 p5=2647 median=2781 p95=3169
    Inference timings in us: Init: 6395, First inference: 2761, Warmup (avg): 3243.58, Inference (avg): 2942.27
    Memory footprint delta from the start of the tool (MB): init=39.4531 overall=40.8281
    Overall peak memory footprint (MB) via periodic monitoring: 45.2852

Numbers may be written in exponent form (``2.71985e+06``). MB here is the tool's MB, 2^20 bytes
(it divides kilobytes from the kernel by 1024), so the byte figures below multiply by 2^20.
The last match of each line wins (the tool prints the warmup ``count=`` line first).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..errors import DeviceError

MIB = 1 << 20
_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_TIMINGS = re.compile(r"Inference timings in us: Init: " + _NUM + r", First inference: " + _NUM
                      + r", Warmup \(avg\): " + _NUM + r", Inference \(avg\): " + _NUM)
_DELTA = re.compile(r"Memory footprint delta from the start of the tool \(MB\): init=" + _NUM
                    + r" overall=" + _NUM)
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: " + _NUM)
_COUNT = re.compile(r"count=(\d+)\b.*?\bavg=" + _NUM + r".*?\bstd=" + _NUM)


@dataclass(frozen=True)
class BenchmarkResult:
    init_us: float
    first_inference_us: float
    warmup_avg_us: float
    inference_avg_us: float
    runs: int | None
    inference_std_us: float | None
    init_delta_bytes: int | None        # memory footprint delta after init
    overall_delta_bytes: int | None     # memory footprint delta at the end
    peak_memory_bytes: int | None       # --report_peak_memory_footprint (periodic monitoring)

    def to_json(self) -> dict:
        return asdict(self)


def _last(rx: re.Pattern, text: str):
    m = None
    for m in rx.finditer(text):
        pass
    return m


def parse(text: str) -> BenchmarkResult:
    """The figures of one ``benchmark_model`` run; DeviceError when its report lines are missing."""
    t = _last(_TIMINGS, text)
    if t is None:
        tail = " | ".join(text.strip().splitlines()[-4:])[-600:]
        raise DeviceError("benchmark_model printed no 'Inference timings in us' line: it did not "
                          f"finish a benchmark ({tail or 'no output'})",
                          fix="check the --runner-binary is LiteRT's benchmark_model for this ABI")
    d, p, c = _last(_DELTA, text), _last(_PEAK, text), _last(_COUNT, text)
    mb = lambda v: None if v is None else int(round(float(v) * MIB))  # noqa: E731
    return BenchmarkResult(
        init_us=float(t[1]), first_inference_us=float(t[2]), warmup_avg_us=float(t[3]),
        inference_avg_us=float(t[4]), runs=int(c[1]) if c else None,
        inference_std_us=float(c[3]) if c else None,
        init_delta_bytes=mb(d[1]) if d else None, overall_delta_bytes=mb(d[2]) if d else None,
        peak_memory_bytes=mb(p[1]) if p else None)

"""Memory as a phone meets it: evict files from the page cache, sample RSS over time, break a
peak down per mapping, and steer the kernel's paging of mapped tables.

Self-contained on purpose (standard library and ``paging``, Linux ``/proc``): the measuring child
processes (``runner.py`` for our LiteRT runner, ``engine_runner.py`` for LiteRT-LM) import it, and
the adb path pushes it beside them onto a device that has no edge_sdk.

- ``evict``, ``cached_bytes``, ``advise``: re-exported from ``edge_sdk.litert.paging`` (the page
  cache and madvise controls the runtime uses too).
- ``Sampler``: a thread reading ``/proc/self/status`` every ``interval`` seconds (LiteRT and
  LiteRT-LM release the GIL while they compute, so it samples during inference too). It keeps a
  time series (one point per ``series_every`` seconds, tagged with the current ``phase``), the
  sample with the largest VmRSS, and a ``/proc/self/smaps`` breakdown taken near that peak.
- ``smaps_breakdown()``: RSS per mapping, grouped by file (model files by name, the XNNPACK weight
  cache, shared libraries together) and anonymous memory, each split into file-backed and
  anonymous pages.
"""

from __future__ import annotations

import os
import sys
import threading
import time

try:
    from edge_sdk.litert.paging import advise, cached_bytes, evict, malloc_trim
except ImportError:  # standalone: paging.py beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from paging import advise, cached_bytes, evict, malloc_trim  # type: ignore[no-redef]

__all__ = ["advise", "cached_bytes", "evict", "malloc_trim", "read_status", "write_result", "smaps_breakdown", "diff_breakdown",
           "nearest_to_peak", "Sampler"]

_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def read_status(path: str = "/proc/self/status") -> dict[str, int]:
    """The memory lines of a /proc status file, in bytes (the file states kB = 1024 bytes)."""
    out = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in _FIELDS:
                out[key] = int(rest.split()[0]) * 1024
    return out


def label_for(path: str, model_files: dict[str, str] | None = None, offset: int = 0,
              sections: dict[str, list] | None = None) -> str:
    """The row of the breakdown a mapping belongs to: a model file by its name (a bundle by the
    section that holds the mapping's first byte), the weight cache, libraries, anonymous memory."""
    if sections and path in sections:
        for begin, end, name in sections[path]:
            if begin <= offset < end:
                return f"{os.path.basename(path)}: {name}"
        return f"{os.path.basename(path)}: header"
    if model_files and path in model_files:
        return model_files[path]
    if not path or path.startswith("[anon") or path == "[heap]":
        return "anonymous (heap, buffers, KV cache)"
    if path in ("[stack]", "[vvar]", "[vdso]", "[vsyscall]") or path.startswith("[stack"):
        return "stack and kernel pages"
    base = os.path.basename(path)
    if "xnnpack_cache" in base:
        return f"XNNPACK weight cache ({base})"
    if ".so" in base:
        return "shared libraries"
    if path.endswith((".tflite", ".litertlm")):
        return base
    return "other files"


def smaps_breakdown(model_files: dict[str, str] | None = None, pid: str = "self",
                    sections: dict[str, list] | None = None) -> dict[str, dict[str, int]]:
    """{label: {rss, anon, file, size, mappings}} in bytes from /proc/PID/smaps (see ``label_for``)."""
    rows: dict[str, dict[str, int]] = {}
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                path = head[5].strip() if len(head) > 5 else ""
                lab = label_for(path, model_files, int(head[2], 16), sections)
                cur = rows.setdefault(lab, {"rss": 0, "anon": 0, "file": 0, "size": 0, "mappings": 0})
                cur["mappings"] += 1
            elif cur is not None:
                key = head[0]
                if key == "Size:":
                    cur["size"] += int(head[1]) * 1024
                elif key == "Rss:":
                    cur["rss"] += int(head[1]) * 1024
                elif key == "Anonymous:":
                    cur["anon"] += int(head[1]) * 1024
    for r in rows.values():
        r["file"] = r["rss"] - r["anon"]
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]["rss"]))


def diff_breakdown(peak: dict, base: dict) -> dict[str, dict[str, int]]:
    """Growth of each row since ``base`` (rows only in one of them count from 0)."""
    out = {}
    for lab in list(peak) + [k for k in base if k not in peak]:
        p, b = peak.get(lab, {}), base.get(lab, {})
        out[lab] = {k: p.get(k, 0) - b.get(k, 0) for k in ("rss", "anon", "file")}
        out[lab]["size"] = p.get("size", 0)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["rss"]))


def nearest_to_peak(snap: dict | None, end_rows: dict, end_phase: str = "end") -> dict:
    """The sampler's breakdown near the peak, or the one taken at the end when that holds more
    (a short run can peak after the last snapshot the sampler took)."""
    end_rss = sum(r["rss"] for r in end_rows.values())
    if snap is None or end_rss >= snap.get("vm_rss", 0):
        return {"phase": end_phase, "vm_rss": end_rss, "rows": end_rows}
    return snap


# ---- sampling -------------------------------------------------------------------------------
class Sampler(threading.Thread):
    """Reads /proc/self/status every ``interval`` s; keeps the peak sample, a time series (one
    point per ``series_every`` s and at every phase change) and a smaps breakdown near the peak
    (retaken whenever VmRSS passes the last breakdown's by ``smaps_step`` and ``smaps_gap`` s have
    passed)."""

    def __init__(self, interval: float = 0.005, series_every: float = 0.05,
                 model_files: dict[str, str] | None = None, smaps_step: float = 0.02, smaps_gap: float = 0.1,
                 sections: dict[str, list] | None = None):
        super().__init__(daemon=True, name="rss-sampler")
        self.interval, self.series_every = interval, series_every
        self.model_files, self.sections = model_files, sections
        self.smaps_step, self.smaps_gap = smaps_step, smaps_gap
        self.t0 = time.perf_counter()
        self.phase = "baseline"
        self.phases: list[tuple[str, float]] = [("baseline", 0.0)]
        self.samples = 0
        self.peak: dict = {"VmRSS": -1}
        self.series: list[list] = []
        self.smaps_at_peak: dict | None = None
        self.smaps_rss = 0
        self._smaps_t = -1e9
        self._last_point = -1e9
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def set_phase(self, name: str) -> None:
        with self._lock:
            self.phase = name
            self.phases.append((name, time.perf_counter() - self.t0))
        self.sample(force_point=True)

    def sample(self, force_point: bool = False) -> None:
        s = read_status()
        t = time.perf_counter() - self.t0
        with self._lock:
            self.samples += 1
            rss = s.get("VmRSS", 0)
            if rss > self.peak["VmRSS"]:
                self.peak = dict(s, phase=self.phase, t=t)
            if force_point or t - self._last_point >= self.series_every:
                self.series.append([round(t, 4), rss, s.get("RssAnon", 0), s.get("RssFile", 0), self.phase])
                self._last_point = t
            take = rss > self.smaps_rss * (1 + self.smaps_step) and t - self._smaps_t >= self.smaps_gap
        if take:
            snap = smaps_breakdown(self.model_files, sections=self.sections)
            with self._lock:
                self.smaps_at_peak = {"t": round(t, 4), "phase": self.phase, "vm_rss": rss, "rows": snap}
                self.smaps_rss, self._smaps_t = rss, t

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample(force_point=True)

    def to_json(self) -> dict:
        return {"interval_s": self.interval, "samples": self.samples,
                "columns": ["t_s", "rss", "rss_anon", "rss_file", "phase"], "series": self.series,
                "phases": [{"phase": p, "start_s": round(t, 4)} for p, t in self.phases],
                "peak": {"rss": self.peak.get("VmRSS"), "rss_anon": self.peak.get("RssAnon"),
                         "rss_file": self.peak.get("RssFile"), "phase": self.peak.get("phase"),
                         "t_s": self.peak.get("t")},
                "smaps_near_peak": self.smaps_at_peak}


def write_result(path: str, result: dict) -> None:
    """A measuring child's result.json, written atomically (temp file + rename)."""
    import json

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)

"""Progress of long steps on stderr, the way build tools show it.

On a terminal: one live line per stage (a bar when the stage knows its size, a spinner and the
elapsed time otherwise), replaced by ``done  NAME  1.2 s`` when the stage ends. Not on a terminal
(a log file, CI): a line when a stage ends, with its elapsed time, so a log says what ran and for
how long; and a line when it starts, at once for a stage that ``announce``s itself (a child
process) or after it has run for ``ANNOUNCE_AFTER_S``. The end lines of quick stages are held
until something else is written or the verb succeeds (``flush``): a verb that fails within a
second prints only its error line (one line, as every error), and a failed stage that was never
announced prints nothing. Library calls are
silent: only ``reporting(...)`` (the CLI) turns it on, and stages nested in other stages report
through the same reporter.

    with progress.reporting("validate"):          # the CLI, around a verb
        with progress.stage("our runner, first run"):
            ...                                   # anywhere below: validator, pipeline, export
        with progress.stage("prefill_decode.tflite", total=nbytes, unit="MB") as st:
            st.advance(n)
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

SPINNER = "|/-\\"
ANNOUNCE_AFTER_S = 1.0


class Stage:
    """One running stage; ``advance(n)`` moves its bar (when it has a ``total``)."""

    def __init__(self, reporter: "Reporter | None", name: str, total: float | None, unit: str):
        self.reporter, self.name, self.total, self.unit = reporter, name, total, unit
        self.done = 0.0
        self.note = ""              # a short live figure shown after the bar (e.g. a training loss)
        self.announced = False
        self.t0 = time.monotonic()

    def advance(self, n: float = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.note = note
        if self.reporter is not None:
            self.reporter._redraw(self)

    def log(self, line: str) -> None:
        """A line that stays in the log (e.g. a training run's periodic evaluation); silent for a
        library call."""
        if self.reporter is not None:
            self.reporter._log(line)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0


class Reporter:
    """Writes stage lines for one verb to ``stream``; ``tty`` picks the live-line form."""

    def __init__(self, verb: str, stream: TextIO, tty: bool):
        self.verb, self.stream, self.tty = verb, stream, tty
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._live: Stage | None = None
        self._pending: list[str] = []   # end lines of quick stages, until flush() or an announcement
        self._last_draw = 0.0
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="edge-sdk-progress", daemon=True)
        self._ticker.start()

    # ---- output
    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):   # a closed terminal must not break the work
            pass

    def _line(self, st: Stage) -> str:
        el = st.elapsed
        if st.total:
            frac = max(0.0, min(1.0, st.done / st.total))
            bar = "#" * int(frac * 24)
            eta = el * (1 - frac) / frac if frac > 0 else 0.0
            scale = 1e6 if st.unit == "MB" else 1.0
            fmt = ".1f" if st.unit == "MB" else ".0f"
            return (f"\r\033[K  {st.name:<34} [{bar:<24}] {st.done / scale:{fmt}}/{st.total / scale:{fmt}} "
                    f"{st.unit}  {el:5.1f} s  ETA {eta:4.0f} s" + (f"  {st.note}" if st.note else ""))
        spin = SPINNER[int(el * 8) % len(SPINNER)]
        return f"\r\033[K  {st.name:<34} {spin} {el:5.1f} s"

    def _redraw(self, st: Stage, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        with self._lock:
            if self._live is not st or (not force and now - self._last_draw < 0.1):
                return
            self._last_draw = now
            self._write(self._line(st))

    def _log(self, line: str) -> None:
        with self._lock:
            self._flush()
            self._write(("\r\033[K" if self.tty else "") + f"edge-sdk {self.verb}: {line}\n")
            self._last_draw = 0.0

    def _flush(self) -> None:   # with the lock held
        if self._pending:
            self._write("".join(self._pending))
            self._pending.clear()

    def flush(self) -> None:
        """Write the held end lines of quick stages (the verb got past them)."""
        with self._lock:
            self._flush()

    def _announce(self, st: Stage) -> None:   # with the lock held
        if not st.announced and not self.tty:
            st.announced = True
            self._flush()
            self._write(f"edge-sdk {self.verb}: {st.name} ...\n")

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            st = self._live
            if st is None:
                continue
            if self.tty:
                self._redraw(st, force=True)
            elif st.elapsed >= ANNOUNCE_AFTER_S:
                with self._lock:
                    if self._live is st:
                        self._announce(st)

    # ---- stages
    @contextmanager
    def stage(self, name: str, total: float | None = None, unit: str = "",
              announce: bool = False) -> Iterator[Stage]:
        st = Stage(self, name, total, unit)
        outer = self._live
        with self._lock:
            self._live = st
            if announce:
                self._announce(st)
        self._redraw(st, force=True)
        ok = False
        try:
            yield st
            ok = True
        finally:
            el = st.elapsed
            with self._lock:
                self._live = outer
                if self.tty:
                    self._write(f"\r\033[K  done   {name}  {el:.1f} s\n" if ok else "\r\033[K")
                elif ok or st.announced:
                    line = (f"edge-sdk {self.verb}: {name}: {'done' if ok else 'FAILED'} in {el:.1f} s "
                            f"({time.monotonic() - self.t0:.1f} s so far)\n")
                    if st.announced:
                        self._flush()
                        self._write(line)
                    else:
                        self._pending.append(line)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1.0)


class _Silent:
    """The reporter when no CLI asked for progress: stages run, nothing is written."""

    def flush(self) -> None:
        pass

    @contextmanager
    def stage(self, name: str, total: float | None = None, unit: str = "",
              announce: bool = False) -> Iterator[Stage]:
        yield Stage(None, name, total, unit)


_current: Reporter | _Silent = _Silent()


def current() -> Reporter | _Silent:
    return _current


def stage(name: str, total: float | None = None, unit: str = "", announce: bool = False):
    """A stage of the current reporter (silent unless a CLI verb runs under ``reporting``);
    ``announce``: say at once that it started (child processes), not only after a second."""
    return _current.stage(name, total, unit, announce)


@contextmanager
def reporting(verb: str, stream: TextIO | None = None, enabled: bool = True) -> Iterator[Reporter | _Silent]:
    """Report stages of ``verb`` on ``stream`` (default stderr) while the block runs."""
    global _current
    if not enabled:
        yield _current
        return
    stream = stream or sys.stderr
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):
        tty = False
    prev, rep = _current, Reporter(verb, stream, tty)
    _current = rep
    try:
        yield rep
        rep.flush()   # the verb succeeded: its quick stages' lines belong in the log
    finally:
        _current = prev
        rep.close()


def flush() -> None:
    """The verb got past its stages (e.g. before printing its result): write their held lines."""
    _current.flush()

"""The CSV log of an external power meter (a USB power meter, a bench supply, a logging multimeter).

The log has a header row and one row per sample: a time and the power, or a voltage and a current.
Accepted header names (case-insensitive):

- time: ``timestamp``, ``time``, ``t``, ``unix_time``; unix epoch seconds (a float) or ISO 8601
  (``2024-05-01T12:00:00.250+02:00``, ``...Z``; a time without a zone is taken as **UTC**);
- power: ``watts``, ``power_w``, ``power``, ``w`` (W); or voltage ``voltage_v``, ``v``, ``volts``
  (V) and current ``current_a``, ``a``, ``amps`` (A), multiplied.

Fields are separated by commas (or semicolons, or tabs, as the header shows); blank lines and
lines starting with ``#`` are skipped. The meter records ``time.time()`` at ``start()`` and
``stop()``, so the logger's clock and this machine's must agree (NTP on both, or the same
machine). ``stop()`` reads the log (the logger may still be appending to it: an incomplete last
line is ignored, and a log that began before the run but ends at most ``MAX_LAG_S`` = 30 s
before its end is re-read for up to ``wait_s`` seconds, default 2), keeps the samples inside
[start, stop], interpolates linearly at both edges and integrates with the trapezoid rule.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import logging
import math
import os
import time

from edgeexit.runtime.energy.base import MEASURED, EnergyReading, Meter, MeterError, integrate

log = logging.getLogger(__name__)

TIME_NAMES = ("timestamp", "time", "t", "unix_time")
WATT_NAMES = ("watts", "power_w", "power", "w")
VOLT_NAMES = ("voltage_v", "v", "volts")
AMP_NAMES = ("current_a", "a", "amps")
DEFAULT_WAIT_S = 2.0  # how long stop() waits for a lagging logger, s
MAX_LAG_S = 30.0  # a log that ends more than this before stop() is not waited for, s


def parse_time(text: str) -> float:
    """Unix time, s, of a log timestamp: epoch seconds, or ISO 8601 (no zone = UTC)."""
    try:
        t = float(text)
    except ValueError:
        stamp = dt.datetime.fromisoformat(text)  # raises ValueError
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return stamp.timestamp()
    if not math.isfinite(t):
        raise ValueError(f"timestamp {text!r} is not finite")
    return t


def _fmt(t: float) -> str:
    iso = dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")
    return f"{iso.replace('+00:00', 'Z')} ({t:.3f})"


class _Log:
    """The parsed rows of one log file, re-read incrementally as the logger appends to it."""

    def __init__(self, path: str):
        self.path = path
        self.reset()

    def reset(self) -> None:
        self.inode = None
        self.offset = 0  # bytes parsed: up to the end of the last complete line
        self.line_no = 0
        self.columns: tuple[int, ...] | None = None  # (time, watts) or (time, volts, amps)
        self.delimiter: str | None = None
        self.ts: list[float] = []
        self.ws: list[float] = []

    def refresh(self) -> None:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:
                    self.reset()  # a new or truncated file: parse it from the top
                    self.inode = st.st_ino
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            raise MeterError(f"external meter log {self.path} does not exist: start the logger (or "
                             "copy its log there) before the run, or use another --meter",
                             why=f"{self.path} does not exist") from None
        except OSError as e:
            raise MeterError(f"external meter log {self.path} cannot be read ({e.strerror or e})",
                             why=f"{self.path} cannot be read") from e
        end = data.rfind(b"\n") + 1  # bytes after the last newline: a line still being written
        try:
            self._parse(data[:end].decode("utf-8", errors="replace"))
        except MeterError:
            self.reset()  # parse from the top next time (the file may have been fixed)
            raise
        self.offset += end

    def _fail(self, line_no: int, what: str) -> MeterError:
        return MeterError(f"external meter log {self.path} line {line_no}: {what}",
                          why=f"{self.path} line {line_no} is malformed")

    def _split(self, line: str) -> list[str]:
        if self.delimiter is None:
            return line.split()
        return [f.strip() for f in next(csv.reader([line], delimiter=self.delimiter))]

    def _parse(self, text: str) -> None:
        for line in text.splitlines():
            self.line_no += 1
            stripped = line.strip().lstrip("\ufeff")
            if not stripped or stripped.startswith("#"):
                continue
            if self.columns is None:
                self._header(stripped)
                continue
            fields = self._split(stripped)
            if len(fields) <= max(self.columns):
                raise self._fail(self.line_no, f"{len(fields)} fields, the header has more: {line!r}")
            try:
                t = parse_time(fields[self.columns[0]])
            except ValueError:
                raise self._fail(self.line_no, f"timestamp {fields[self.columns[0]]!r} is neither "
                                 "unix seconds nor ISO 8601") from None
            try:
                values = [float(fields[c]) for c in self.columns[1:]]
            except ValueError:
                raise self._fail(self.line_no, f"power {line.strip()!r} is not a number") from None
            w = values[0] if len(values) == 1 else values[0] * values[1]
            if not math.isfinite(w):
                raise self._fail(self.line_no, f"power is {w}")
            if self.ts and t < self.ts[-1]:
                raise self._fail(self.line_no, f"time goes back ({_fmt(t)} after {_fmt(self.ts[-1])})")
            self.ts.append(t)
            self.ws.append(w)

    def _header(self, line: str) -> None:
        self.delimiter = next((d for d in (",", ";", "\t") if d in line), None)
        names = [f.strip().strip('"').lower() for f in self._split(line)]

        def find(options: tuple[str, ...]) -> int | None:
            return next((names.index(o) for o in options if o in names), None)

        t, w, v, a = find(TIME_NAMES), find(WATT_NAMES), find(VOLT_NAMES), find(AMP_NAMES)
        if t is None or (w is None and (v is None or a is None)):
            raise self._fail(self.line_no, f"header {line!r} needs a time column ({', '.join(TIME_NAMES)}) "
                             f"and a power column ({', '.join(WATT_NAMES)}) or voltage "
                             f"({', '.join(VOLT_NAMES)}) and current ({', '.join(AMP_NAMES)})")
        self.columns = (t, w) if w is not None else (t, v, a)


class CsvMeter(Meter):
    """Energy from an external meter's CSV log (module docstring): kind ``"measured"``.

    Attributes ``start_unix`` / ``stop_unix``: ``time.time()`` at the last ``start()`` / ``stop()``,
    the window looked up in the log.
    """

    name = "csv"
    kind = MEASURED

    def __init__(self, path: str | os.PathLike, wait_s: float = DEFAULT_WAIT_S):
        self.path = os.fspath(path)
        self.wait_s = float(wait_s)
        self.description = f"external meter's CSV log {self.path}"
        self._log = _Log(self.path)
        self.start_unix: float | None = None
        self.stop_unix: float | None = None
        self._t0: float | None = None

    def start(self) -> None:
        if not os.path.exists(self.path):
            log.warning("external meter log %s does not exist (yet)", self.path)
        self.stop_unix = None
        self._t0 = time.monotonic()
        self.start_unix = time.time()

    def stop(self) -> EnergyReading:
        if self._t0 is None:
            raise self._not_started()
        self.stop_unix = time.time()
        seconds = time.monotonic() - self._t0
        t0, self._t0 = self._t0, None
        a, b = self.start_unix, self.stop_unix
        deadline = time.monotonic() + self.wait_s
        while True:
            self._log.refresh()
            ts = self._log.ts
            # a log that began before the run and ends shortly before its end: the logger has
            # not written the last samples yet (one that ends long before has stopped)
            lagging = bool(ts) and ts[0] <= a and 0 < b - ts[-1] <= MAX_LAG_S
            if not lagging or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        ts, ws = self._log.ts, self._log.ws
        if not ts:
            raise MeterError(f"external meter log {self.path} has no data rows: is the logger "
                             "running?", why=f"{self.path} has no data rows")
        if not (ts[0] <= a and ts[-1] >= b):
            waited = f" (waited {self.wait_s:g} s for it)" if lagging else ""
            raise MeterError(f"external meter log {self.path} covers {_fmt(ts[0])} to {_fmt(ts[-1])}"
                             f"{waited}, the run {_fmt(a)} to {_fmt(b)}: the log must cover the "
                             "whole run; are the clocks in sync? (times without a zone are UTC)",
                             why=f"{self.path} does not cover the run")
        pts_t, pts_w = self._window(ts, ws, a, b)
        joules = integrate(pts_t, pts_w, b - a)
        return EnergyReading(joules=joules, seconds=seconds, kind=self.kind, meter=self.description,
                             start=t0, samples=tuple(zip(pts_t, pts_w)))

    @staticmethod
    def _window(ts: list[float], ws: list[float], a: float, b: float) -> tuple[list, list]:
        """Samples strictly inside (a, b) plus the values interpolated at a and b; times relative
        to a, s."""

        def at(t: float, i: int) -> float:  # ts[i - 1] <= t <= ts[i]
            if i >= len(ts) or ts[i] == ts[i - 1]:
                return ws[i - 1] if i >= len(ts) else ws[i]
            f = (t - ts[i - 1]) / (ts[i] - ts[i - 1])
            return ws[i - 1] + f * (ws[i] - ws[i - 1])

        i = bisect.bisect_right(ts, a)  # ts[i - 1] <= a < ts[i]
        j = bisect.bisect_left(ts, b)  # ts[j - 1] < b <= ts[j]
        pts_t = [0.0] + [t - a for t in ts[i:j]] + [b - a]
        pts_w = [at(a, i)] + ws[i:j] + [ws[j] if ts[j] == b else at(b, j)]
        return pts_t, pts_w

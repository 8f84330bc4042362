"""What every energy meter shares: the reading, the base classes, the sysfs reader, the integration.

Units throughout: joules (J), watts (W), seconds (s) of ``time.monotonic()``. Sysfs files hold
integers in their own units (microjoules, microwatts, milliwatts, millivolts, milliamps); each
meter converts them where it reads them.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Self

from edgeexit.errors import EdgeExitError

log = logging.getLogger(__name__)

MEASURED = "measured"
ESTIMATED = "estimated"


class MeterError(EdgeExitError):
    """An energy meter is missing, unreadable, vanished during a run, or its log misses the run.

    ``why`` is a short form of the message (no advice) that :func:`auto_meter` quotes when it
    explains why it passed over a meter.
    """

    def __init__(self, message: str, *, why: str | None = None):
        super().__init__(message)
        self.why = why or message


def read_sysfs(path: str) -> str:
    """The text of one sysfs attribute file, stripped. Every meter reads its files through this
    function (tests replace it to simulate a file that only root may read)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().strip()


def read_number(path: str) -> float:
    """One sysfs attribute as a number (in the file's own unit). Text that is not a number raises
    an :class:`OSError` that names the file, like a failed read."""
    text = read_sysfs(path)
    try:
        return float(text)
    except ValueError:
        raise OSError(errno.EINVAL, f"not a number: {text[:40]!r}", path) from None


def read_int(path: str) -> int:
    """One sysfs attribute as an exact integer (RAPL counters exceed float precision only after
    2**53 uJ, but integers keep the wrap-around arithmetic exact)."""
    text = read_sysfs(path)
    try:
        return int(text)
    except ValueError:
        raise OSError(errno.EINVAL, f"not an integer: {text[:40]!r}", path) from None


@dataclasses.dataclass(frozen=True)
class EnergyReading:
    """The energy of one metered window, ``start()`` to ``stop()``.

    Attributes:
        joules: gross energy over the window, J (idle power included).
        seconds: wall duration of the window, s (``time.monotonic``).
        kind: ``"measured"`` or ``"estimated"``.
        meter: one-line description of the meter.
        start: ``time.monotonic()`` at ``start()``, s.
        samples: ``(t, watts)`` pairs, ``t`` in s since ``start``; ``()`` for the estimate.
        cpu_seconds: CPU time of this process (all threads) over the window, s, where known.
        domains: joules per RAPL domain or per INA3221 rail when the meter has several, else None.
    """

    joules: float
    seconds: float
    kind: str
    meter: str
    start: float
    samples: tuple[tuple[float, float], ...] = ()
    cpu_seconds: float | None = None
    domains: dict[str, float] | None = None

    @property
    def watts(self) -> float:
        """Mean power over the window, W (``joules / seconds``; 0 for an empty window)."""
        return self.joules / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        """JSON-ready form. Samples are summarised (count and min/mean/max W), not listed."""
        ws = [w for _, w in self.samples]
        summary: dict = {"count": len(ws), "min_w": None, "mean_w": None, "max_w": None}
        if ws:
            summary.update(min_w=min(ws), mean_w=math.fsum(ws) / len(ws), max_w=max(ws))
        return {
            "joules": self.joules,
            "seconds": self.seconds,
            "watts": self.watts,
            "kind": self.kind,
            "meter": self.meter,
            "start": self.start,
            "samples": summary,
            "cpu_seconds": self.cpu_seconds,
            "domains": dict(self.domains) if self.domains is not None else None,
        }


class Meter:
    """Base class of the energy meters: ``start()``, run the workload, ``stop()`` -> reading.

    A meter may be started and stopped any number of times (one window at a time; ``start()``
    during a window discards it and begins a new one). Use it as a context manager, or call
    ``close()``, to be sure no background thread outlives it.

    Attributes:
        name: ``"rapl"``, ``"ina2xx"``, ``"ina3221"``, ``"jetson-ina3221"``, ``"csv"``, ``"estimate"``.
        kind: ``"measured"`` or ``"estimated"``.
        description: one line saying what is measured and where.
        idle_w: idle power, W, where the meter assumes one (the estimate: the preset's); None for
            real meters (measure idle with a metered sleep).
    """

    name: str = "meter"
    kind: str = MEASURED
    description: str = ""
    idle_w: float | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> EnergyReading:
        raise NotImplementedError

    def close(self) -> None:
        """Stop any background thread. Idempotent; a closed meter may be started again."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: {self.description}>"

    def _not_started(self) -> MeterError:
        return MeterError(f"{self.name} meter: stop() called without start(); call start() before "
                          "the metered work")


class Ticker:
    """Calls ``fn()`` every ``1 / rate_hz`` s on a daemon thread until :meth:`stop`.

    Ticks are scheduled on a fixed grid; a late tick (the thread was descheduled) moves the grid
    instead of firing a burst. The first exception ends the thread and is kept in ``error``, with
    ``error_at`` = ``time.monotonic()`` when it happened.
    """

    def __init__(self, fn: Callable[[], None], rate_hz: float, name: str):
        self._fn = fn
        self._period = 1.0 / rate_hz
        self._halt = threading.Event()
        self.error: BaseException | None = None
        self.error_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = time.monotonic() + self._period
        while not self._halt.wait(max(0.0, due - time.monotonic())):
            try:
                self._fn()
            except Exception as e:  # noqa: BLE001 - kept for the meter's stop() to report
                self.error, self.error_at = e, time.monotonic()
                return
            due += self._period
            now = time.monotonic()
            if due < now:
                due = now + self._period

    def stop(self) -> None:
        """Stop the thread and wait for it (at most one ``fn()`` call). Idempotent."""
        self._halt.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def finish(self, meter: str, t0: float, last_read: Callable[[], None],
               error: Callable[[OSError, float], MeterError]) -> None:
        """End a metered window that began at ``t0`` (``time.monotonic()``): stop the thread,
        then take the window's last read with ``last_read()``. A failed read, the thread's or
        the last one, raises ``error(oserror, seconds into the window)``; any other exception of
        the thread a :class:`MeterError` naming ``meter``."""
        self.stop()
        err = self.error
        if err is not None:
            if not isinstance(err, OSError):
                raise MeterError(f"{meter} meter: sampling thread failed: {err!r}") from err
            raise error(err, self.error_at - t0) from err
        try:
            last_read()
        except OSError as e:
            raise error(e, time.monotonic() - t0) from e


def integrate(ts: Sequence[float], ws: Sequence[float], t_end: float) -> float:
    """Energy, J, over the window [0, ``t_end``] s from power samples ``ws`` (W) at times ``ts``
    (s, ascending, within the window): trapezoid rule between samples, the first and last value
    held over the few microseconds between the window's edges and the first/last sample."""
    if not ts:
        return 0.0
    e = ws[0] * max(ts[0], 0.0) + ws[-1] * max(t_end - ts[-1], 0.0)
    for i in range(1, len(ts)):
        e += 0.5 * (ws[i] + ws[i - 1]) * (ts[i] - ts[i - 1])
    return e


@dataclasses.dataclass(frozen=True)
class Rail:
    """One power input of a sampled meter: a label, a function that returns its power in W, and
    the files it reads (the first is named when a read fails)."""

    label: str
    read: Callable[[], float]
    files: tuple[str, ...]


def unique_labels(labels: Sequence[str], suffixes: Sequence[str]) -> list[str]:
    """Labels made unique: a repeated label gets its ``suffixes`` entry appended (``"x@hwmon2"``)."""
    out = []
    for label, suffix in zip(labels, suffixes):
        out.append(f"{label}@{suffix}" if labels.count(label) > 1 else label)
    return out


class SampledMeter(Meter):
    """A meter that reads instantaneous power: one background thread samples every rail at
    ``rate_hz`` (timestamps: ``time.monotonic()``, the middle of each read); ``start()`` and
    ``stop()`` take a sample each too. Energy is the trapezoid integral of the summed power over
    [start, stop], J; per-rail joules go in ``domains`` when there are several rails.

    ``total`` lists the indices of the rails whose power is the meter's total (default: all);
    the other rails are reported in ``domains`` only (e.g. sub-rails inside a board input rail).
    """

    kind = MEASURED

    def __init__(self, rails: Sequence[Rail], rate_hz: float, total: Sequence[int] | None = None):
        if not rails:
            raise MeterError(f"{self.name} meter: no rails to read")
        if not rate_hz > 0:
            raise MeterError(f"{self.name} meter: sampling rate must be > 0 Hz, got {rate_hz}")
        self.rails = tuple(rails)
        self.total = tuple(range(len(rails)) if total is None else total)
        self.rate_hz = float(rate_hz)
        self._ticker: Ticker | None = None
        self._t0: float | None = None
        self._ts: list[float] = []
        self._ws: list[tuple[float, ...]] = []
        self._failed: tuple[str, OSError] | None = None

    def _sample(self) -> None:
        t_a = time.monotonic()
        values = []
        for rail in self.rails:
            try:
                values.append(rail.read())
            except OSError as e:
                self._failed = (getattr(e, "filename", None) or rail.files[0], e)
                raise
        t_b = time.monotonic()
        self._ts.append(0.5 * (t_a + t_b) - self._t0)
        self._ws.append(tuple(values))

    def read_watts(self) -> float:
        """The total power now, W (one synchronous read of the rails, outside any window)."""
        return math.fsum(self.rails[i].read() for i in self.total)

    def start(self) -> None:
        self.close()
        self._ts, self._ws, self._failed = [], [], None
        self._t0 = time.monotonic()
        try:
            self._sample()
        except OSError as e:
            t0, self._t0 = self._t0, None
            raise self._error(e, time.monotonic() - t0) from e
        self._ticker = Ticker(self._sample, self.rate_hz, name=f"edgeexit-meter-{self.name}")

    def stop(self) -> EnergyReading:
        if self._t0 is None:
            raise self._not_started()
        t0 = self._t0
        ticker, self._ticker = self._ticker, None
        try:
            ticker.finish(self.name, t0, self._sample, self._error)
        finally:
            self._t0 = None
        t1 = time.monotonic()
        seconds = t1 - t0
        ts = self._ts
        totals = [math.fsum(w[i] for i in self.total) for w in self._ws]
        joules = integrate(ts, totals, seconds)
        domains = None
        if len(self.rails) > 1:
            domains = {rail.label: integrate(ts, [w[k] for w in self._ws], seconds)
                       for k, rail in enumerate(self.rails)}
        return EnergyReading(joules=joules, seconds=seconds, kind=self.kind, meter=self.description,
                             start=t0, samples=tuple(zip(ts, totals)), domains=domains)

    def _error(self, e: OSError, elapsed: float) -> MeterError:
        path = self._failed[0] if self._failed else (getattr(e, "filename", None) or "?")
        n = len(self._ts)
        what = "vanished" if isinstance(e, (FileNotFoundError, NotADirectoryError)) or \
            e.errno in (errno.ENODEV, errno.ENXIO) else "became unreadable"
        detail = e.strerror or str(e)
        where = "at start()" if n == 0 else f"{elapsed:.3f} s into the window after {n} samples"
        why = f"{path} {what} {where} ({detail})"
        return MeterError(f"{self.name} meter: power file {why}: the sensor was removed or its driver "
                          "unbound or failed; check it and rerun, or use --meter estimate", why=why)

    def close(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()
        self._t0 = None

"""RAPL energy counters (Intel, and AMD Zen through the same driver) under ``/sys/class/powercap``.

Each zone ``intel-rapl:N`` (a package) and subzone ``intel-rapl:N:M`` (core, uncore, dram) has
``name``, ``energy_uj`` (a cumulative counter, microjoules) and ``max_energy_range_uj`` (where the
counter wraps to 0). Summed by default: the package zones (core and uncore are already inside them)
and the ``dram`` subzones (outside the package). A ``psys`` zone (the whole SoC platform, which
contains the packages) is left out so that nothing is counted twice.

Since Linux 5.10 (the fix for CVE-2020-8694, "Platypus") ``energy_uj`` is readable only by root.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time

from edgeexit.runtime.energy import base
from edgeexit.runtime.energy.base import MEASURED, EnergyReading, Meter, MeterError, Ticker

log = logging.getLogger(__name__)

POWERCAP = "sys/class/powercap"
ZONE_RE = re.compile(r"^(?:intel|amd)-rapl:(\d+)(?::(\d+))?$")
DEFAULT_RATE_HZ = 10.0  # a counter this far from wrapping needs only a few reads a second

_ROOT_ONLY = "is readable only by root (Linux >= 5.10, CVE-2020-8694)"


def _root_only(path: str, top: str) -> MeterError:
    pattern = os.path.join(top, "intel-rapl:*", "energy_uj")
    return MeterError(f"RAPL counter {path} {_ROOT_ONLY}: run as root, or let other users read it "
                      f"until the next boot (sudo chmod o+r {pattern}), or use --meter estimate",
                      why=f"RAPL present but energy_uj {_ROOT_ONLY}")


@dataclasses.dataclass(frozen=True)
class RaplZone:
    """One powercap zone: ``zone`` is its directory name (``intel-rapl:0:1``), ``name`` the content
    of its ``name`` file (``package-0``, ``core``, ``dram``, ``psys``), ``path`` its directory;
    ``summed`` says whether the meter adds it to the total by default."""

    zone: str
    name: str
    path: str
    summed: bool

    @property
    def energy_file(self) -> str:
        return os.path.join(self.path, "energy_uj")


def powercap_dir(root: str) -> str:
    return os.path.join(root, POWERCAP)


def find_zones(root: str = "/") -> list[RaplZone]:
    """Every RAPL zone and subzone under ``root``/sys/class/powercap, in zone order.

    Subzones are found both where ``/sys/class/powercap`` links them (``intel-rapl:0:1`` next to
    ``intel-rapl:0``) and inside their package's directory; each is listed once. Entries that are
    not directories named ``intel-rapl:N[:M]`` / ``amd-rapl:N[:M]`` (``intel-rapl`` itself, the
    ``intel-rapl-mmio`` duplicate of the package counter) are ignored.
    """
    top = powercap_dir(root)
    try:
        entries = os.listdir(top)
    except OSError:
        return []
    found: dict[str, str] = {}
    for entry in entries:
        path = os.path.join(top, entry)
        if ZONE_RE.match(entry) and os.path.isdir(path):
            found.setdefault(entry, path)
            try:
                subs = os.listdir(path)
            except OSError:
                subs = []
            for sub in subs:
                m = ZONE_RE.match(sub)
                if m and m.group(2) is not None and os.path.isdir(os.path.join(path, sub)):
                    found.setdefault(sub, os.path.join(path, sub))
    zones = []
    for zone, path in sorted(found.items(), key=lambda kv: _zone_key(kv[0])):
        try:
            name = base.read_sysfs(os.path.join(path, "name"))
        except OSError:
            name = zone
        sub = ZONE_RE.match(zone).group(2) is not None
        summed = (name == "dram") if sub else (name != "psys")
        zones.append(RaplZone(zone=zone, name=name, path=path, summed=summed))
    return zones


def _zone_key(zone: str) -> tuple:
    m = ZONE_RE.match(zone)
    return (zone.split("-rapl")[0], int(m.group(1)), -1 if m.group(2) is None else int(m.group(2)))


class RaplMeter(Meter):
    """Energy from the RAPL counters: package zones + dram subzones (see the module docstring).

    The counters are read at ``start()`` and ``stop()`` and, so that a counter that wraps more than
    once in a long window is still counted, by a background thread at ``rate_hz`` (default 10 Hz).
    Every negative difference between consecutive reads gets ``max_energy_range_uj`` added.
    ``samples`` holds the mean power (W) over each interval between reads, stamped at its end.
    """

    name = "rapl"
    kind = MEASURED

    def __init__(self, root: str = "/", rate_hz: float | None = None):
        self.rate_hz = float(rate_hz) if rate_hz is not None else DEFAULT_RATE_HZ
        if not self.rate_hz > 0:
            raise MeterError(f"rapl meter: sampling rate must be > 0 Hz, got {rate_hz}")
        self._top = top = powercap_dir(root)
        zones = find_zones(root)
        self.zones = [z for z in zones if z.summed]
        if not self.zones:
            what = "no RAPL zones" if not zones else "no package or dram RAPL zones"
            raise MeterError(f"rapl meter: {what} under {top} (an Intel or AMD x86 CPU with the "
                             "intel_rapl_common driver loaded has them): use another --meter",
                             why=f"{what} under {top}")
        left_out = [f"{z.name} ({z.zone})" for z in zones if not z.summed]
        if left_out:
            log.debug("RAPL: not adding %s (inside a summed zone)", ", ".join(left_out))
        self.domain_names = base.unique_labels([z.name for z in self.zones],
                                               [z.zone for z in self.zones])
        self.max_uj = [self._read(os.path.join(z.path, "max_energy_range_uj")) for z in self.zones]
        for z, m in zip(self.zones, self.max_uj):
            if m <= 0:
                raise MeterError(f"rapl meter: {z.path}/max_energy_range_uj is {m}, so wrap-around "
                                 "cannot be corrected: use another --meter")
        for z in self.zones:
            self._read(z.energy_file)  # fail now, not in the middle of a run
        self.description = f"RAPL {'+'.join(self.domain_names)} ({top})"
        self._lock = threading.Lock()
        self._ticker: Ticker | None = None
        self._t0: float | None = None

    def _read(self, path: str) -> int:
        try:
            return base.read_int(path)
        except PermissionError as e:
            raise _root_only(path, self._top) from e
        except OSError as e:
            raise MeterError(f"RAPL counter {path} cannot be read ({e.strerror or e}): "
                             "use another --meter", why=f"RAPL present but {path} cannot be read") from e

    def _read_all(self) -> list[int]:
        return [base.read_int(z.energy_file) for z in self.zones]

    def start(self) -> None:
        self.close()
        with self._lock:
            self._acc = [0] * len(self.zones)
            self._samples: list[tuple[float, float]] = []
            t0 = time.monotonic()
            try:
                self._last = self._read_all()
            except OSError as e:
                raise self._vanished(e, 0.0, 0) from e
            self._t0, self._t_last = t0, 0.0
        self._ticker = Ticker(self.poll, self.rate_hz, name="edgeexit-meter-rapl")

    def poll(self) -> None:
        """Read the counters now and add what each advanced since the previous read (wrap-aware).

        The background thread calls this at ``rate_hz``; calling it more often is harmless. Does
        nothing outside a window. A failed read raises :class:`OSError` (``stop()`` reports it).
        """
        with self._lock:
            if self._t0 is None:
                return
            raw = self._read_all()
            t = time.monotonic() - self._t0
            step = 0
            for i, value in enumerate(raw):
                delta = value - self._last[i]
                if delta < 0:
                    delta += self.max_uj[i]
                    if delta < 0:  # a reset, not a wrap: count nothing rather than a negative
                        log.warning("RAPL %s went back by more than its range",
                                    self.zones[i].energy_file)
                        delta = 0
                self._acc[i] += delta
                self._last[i] = value
                step += delta
            dt = t - self._t_last
            if dt > 0:
                self._samples.append((t, step * 1e-6 / dt))
                self._t_last = t

    def stop(self) -> EnergyReading:
        if self._t0 is None:
            raise self._not_started()
        t0 = self._t0
        ticker, self._ticker = self._ticker, None
        try:
            ticker.finish(self.name, t0, self.poll,
                          lambda e, elapsed: self._vanished(e, elapsed, len(self._samples)))
            seconds = time.monotonic() - t0
        finally:
            with self._lock:
                self._t0 = None
        joules = [a * 1e-6 for a in self._acc]
        domains = dict(zip(self.domain_names, joules)) if len(joules) > 1 else None
        return EnergyReading(joules=sum(joules), seconds=seconds, kind=self.kind,
                             meter=self.description, start=t0, samples=tuple(self._samples),
                             domains=domains)

    def _vanished(self, e: OSError, elapsed: float, n: int) -> MeterError:
        path = getattr(e, "filename", None) or "energy_uj"
        if isinstance(e, PermissionError):
            return _root_only(path, self._top)
        why = f"{path} could not be read {elapsed:.3f} s into the window after {n} reads " \
              f"({e.strerror or e})"
        return MeterError(f"rapl meter: {why}: the powercap driver went away; rerun, or use "
                          "--meter estimate", why=why)

    def close(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()
        with self._lock:
            self._t0 = None

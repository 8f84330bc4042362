"""Choosing a meter: :func:`make_meter` by name, :func:`auto_meter` the best one present,
:func:`open_meter` what ``--meter`` names (``none`` too), :func:`check_spec` a name before any
work, :func:`detect_meters` what the machine has."""

from __future__ import annotations

import logging

from edgeexit.errors import ConfigError
from edgeexit.runtime.energy import hwmon, rapl
from edgeexit.runtime.energy.base import Meter, MeterError, SampledMeter
from edgeexit.runtime.energy.csvlog import CsvMeter
from edgeexit.runtime.energy.estimate import EstimateMeter

log = logging.getLogger(__name__)

SPECS = ("auto", "rapl", "ina2xx", "ina3221", "jetson-ina3221", "estimate", "csv:PATH")
NONE = "none"  # open_meter: no energy phase


def check_spec(spec: str, allow_none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``spec`` names a meter (as :func:`make_meter` reads it,
    case-insensitively; ``none`` too with ``allow_none``), without opening it: a bad name is
    refused before any work."""
    raw = str(spec).strip()
    key = raw.lower()
    if key.startswith("csv:"):
        if not raw[4:].strip():
            raise ConfigError("--meter csv:PATH needs the path of the external meter's log, "
                              "e.g. csv:power.csv")
        return
    if key in SPECS or (allow_none and key == NONE):
        return
    names = ((NONE,) if allow_none else ()) + SPECS
    raise ConfigError(f"unknown energy meter {raw!r}: use one of {', '.join(names)}")


def open_meter(spec: str, *, power: dict | None = None, threads: int = 1, root: str = "/",
               rate_hz: float | None = None) -> tuple[Meter | None, str]:
    """The meter ``--meter spec`` asks for and one line saying which and why: ``(None, ...)``
    for ``none`` (no energy phase), :func:`auto_meter` for ``auto``, else :func:`make_meter`."""
    check_spec(spec, allow_none=True)
    key = str(spec).strip().lower()
    if key == NONE:
        return None, "no energy phase (--meter none)"
    if key == "auto":
        return auto_meter(power=power, threads=threads, root=root, rate_hz=rate_hz)
    return (make_meter(spec, power=power, threads=threads, root=root, rate_hz=rate_hz),
            f"--meter {spec}")


def make_meter(spec: str, *, power: dict | None = None, threads: int = 1, root: str = "/",
               rate_hz: float | None = None) -> Meter:
    """The meter named by ``spec``.

    Args:
        spec: ``auto`` (see :func:`auto_meter`), ``rapl``, ``ina2xx``, ``ina3221`` (the mainline
            hwmon driver, else the Jetson L4T one), ``jetson-ina3221``, ``estimate``, or
            ``csv:PATH`` (an external meter's log).
        power: the target preset's power model ``{"idle_w", "active_w_per_core", "source"}``,
            needed by ``estimate`` (and by ``auto`` when it falls back to it).
        threads: inference threads (described by the estimate).
        root: filesystem root under which ``sys/class/...`` is looked up (tests use a fake tree).
        rate_hz: sampling rate, Hz, of the sampled meters (default: each meter's own).

    Raises :class:`ConfigError` for an unknown spec, :class:`MeterError` when the meter is
    missing or unreadable.
    """
    check_spec(spec)
    raw = str(spec).strip()
    key = raw.lower()
    if rate_hz is not None and not rate_hz > 0:
        raise ConfigError(f"meter sampling rate must be > 0 Hz, got {rate_hz}")
    if key == "auto":
        meter, why = auto_meter(power=power, threads=threads, root=root, rate_hz=rate_hz)
        log.info("energy meter: %s", why)
        return meter
    if key.startswith("csv:"):
        return CsvMeter(raw[4:].strip())
    if key == "rapl":
        return rapl.RaplMeter(root=root, rate_hz=rate_hz)
    if key == "ina2xx":
        return hwmon.Ina2xxMeter(root=root, rate_hz=rate_hz)
    if key == "ina3221":
        try:
            return hwmon.Ina3221Meter(root=root, rate_hz=rate_hz)
        except MeterError as e:
            if not hwmon.jetson_devices(root):
                raise
            log.debug("no mainline INA3221 (%s): using the Jetson ina3221x driver", e.why)
        return hwmon.JetsonIna3221Meter(root=root, rate_hz=rate_hz)
    if key == "jetson-ina3221":
        return hwmon.JetsonIna3221Meter(root=root, rate_hz=rate_hz)
    return EstimateMeter(power, threads=threads)  # "estimate": check_spec allows nothing else


def auto_meter(*, power: dict | None, threads: int = 1, root: str = "/",
               rate_hz: float | None = None) -> tuple[Meter, str]:
    """The best meter present and one line saying which and why the better ones were not used.

    Order: an INA2xx, then an INA3221 (hwmon: sensors on the supply rails, the best), the Jetson
    L4T INA3221, RAPL (CPU package and DRAM only) if readable, else the CPU-time estimate (which
    needs ``power``; without it :class:`MeterError`).
    """
    absent: list[str] = []
    failed: list[str] = []
    candidates = [
        ("INA2xx", lambda: hwmon.Ina2xxMeter(root=root, rate_hz=rate_hz),
         lambda: any(hwmon.INA2XX_RE.match(n) for _, _, n in hwmon.hwmon_devices(root))),
        ("INA3221", lambda: hwmon.Ina3221Meter(root=root, rate_hz=rate_hz),
         lambda: any(n == "ina3221" for _, _, n in hwmon.hwmon_devices(root))),
        ("Jetson INA3221", lambda: hwmon.JetsonIna3221Meter(root=root, rate_hz=rate_hz),
         lambda: bool(hwmon.jetson_devices(root))),
        ("RAPL", lambda: rapl.RaplMeter(root=root, rate_hz=rate_hz),
         lambda: bool(rapl.find_zones(root))),
    ]
    for label, build, present in candidates:
        if not present():
            absent.append(label)
            continue
        try:
            meter = build()
            if isinstance(meter, SampledMeter):
                _read_once(meter)
        except MeterError as e:
            failed.append(e.why if e.why.startswith(label) else f"{label} present but {e.why}")
            continue
        return meter, _reason(absent, failed, f"using {meter.name}: {meter.description}")
    try:
        meter = EstimateMeter(power, threads=threads)
    except MeterError as e:
        raise MeterError(f"no energy meter: {_reason(absent, failed, 'and ' + e.why)}; measure with "
                         "--meter csv:PATH, or give a preset with a power model (--power-target)",
                         why=e.why) from None
    return meter, _reason(absent, failed, "using the CPU-time estimate (not a measurement)")


def _read_once(meter: SampledMeter) -> None:
    try:
        meter.read_watts()
    except OSError as e:
        path = getattr(e, "filename", None) or meter.description
        raise MeterError(f"{path} cannot be read ({e.strerror or e})",
                         why=f"{path} cannot be read ({e.strerror or e})") from e


def _reason(absent: list[str], failed: list[str], chosen: str) -> str:
    parts = []
    if absent:
        parts.append("no " + "/".join(absent) + " meter found")
    parts += failed
    return "; ".join(parts + [chosen])


def detect_meters(root: str = "/") -> list[dict]:
    """The meters present under ``root``: ``[{"name", "path", "readable", "why"}]``, one entry per
    RAPL powercap tree, INA2xx / INA3221 hwmon device and Jetson ina3221x device, in
    :func:`auto_meter`'s order. ``readable`` says whether one read of its files worked; ``why``
    says what was found or what failed. The CPU-time estimate, always possible, is not listed."""
    out: list[dict] = []
    for d, attrs, chip in hwmon.hwmon_devices(root):
        if hwmon.INA2XX_RE.match(chip):
            try:
                m = hwmon.Ina2xxMeter(root=root, device=d)
                out.append(_probe("ina2xx", d, m, chip))
            except MeterError as e:
                out.append({"name": "ina2xx", "path": d, "readable": False, "why": e.why})
    ina3221 = [d for d, _, chip in hwmon.hwmon_devices(root) if chip == "ina3221"]
    if ina3221:
        out.append(_try("ina3221", ", ".join(ina3221), lambda: hwmon.Ina3221Meter(root=root)))
    jetson = hwmon.jetson_devices(root)
    if jetson:
        out.append(_try("jetson-ina3221", ", ".join(jetson),
                        lambda: hwmon.JetsonIna3221Meter(root=root)))
    if rapl.find_zones(root):
        out.append(_try("rapl", rapl.powercap_dir(root), lambda: rapl.RaplMeter(root=root)))
    return out


def _try(name: str, path: str, build) -> dict:
    try:
        return _probe(name, path, build(), name)
    except MeterError as e:
        return {"name": name, "path": path, "readable": False, "why": e.why}


def _probe(name: str, path: str, meter: Meter, what: str) -> dict:
    try:
        if isinstance(meter, rapl.RaplMeter):
            why = meter.description  # the constructor has read every counter once
        else:
            why = f"{meter.description}: reads {meter.read_watts():.3f} W now"
    except OSError as e:
        return {"name": name, "path": path, "readable": False,
                "why": f"{what}: {getattr(e, 'filename', None) or path} cannot be read "
                       f"({e.strerror or e})"}
    finally:
        meter.close()
    return {"name": name, "path": path, "readable": True, "why": why}

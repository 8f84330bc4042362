"""Power sensors read through sysfs: INA2xx and INA3221 (hwmon), and the older Jetson INA3221 (iio).

Units of the files (Linux hwmon ABI): ``power1_input`` microwatts, ``in*_input`` millivolts,
``curr*_input`` milliamps, ``update_interval`` milliseconds. The L4T ``ina3221x`` driver of
older Jetson releases (JetPack 4.x) writes ``in_power*_input`` in milliwatts.

A sensor measures whatever rail it is wired into: on a board whose supply passes through it, that
is the whole board's power. On Jetson modules one INA3221 channel is the module's input rail
(``VDD_IN``, ``POM_5V_IN``) and the others (CPU, GPU, SoC) are branches inside it: when a rail
with such a name is present, it alone is the total and the others are reported in ``domains``
only, so that nothing is counted twice; otherwise the rails are summed.
"""

from __future__ import annotations

import glob
import logging
import os
import re

from edgeexit.runtime.energy import base
from edgeexit.runtime.energy.base import MeterError, Rail, SampledMeter

log = logging.getLogger(__name__)

HWMON = "sys/class/hwmon"
JETSON_IIO = "sys/bus/i2c/drivers/ina3221x"
INA2XX_RE = re.compile(r"^ina2\d\d[a-z]?$")  # ina209, ina219, ina226, ina230, ina238, ina260, ...
INPUT_RAIL_RE = re.compile(r"(^|_)IN$", re.IGNORECASE)  # VDD_IN, POM_5V_IN: a module's input rail
DEFAULT_RATE_HZ = 200.0
DEFAULT_JETSON_RATE_HZ = 100.0  # each read of the L4T driver is an I2C transfer per rail


def _num_key(name: str) -> tuple:
    m = re.search(r"(\d+)$", name)
    return (name[: m.start()] if m else name, int(m.group(1)) if m else -1)


def hwmon_devices(root: str = "/") -> list[tuple[str, str, str]]:
    """``(hwmon dir, attribute dir, chip name)`` of every hwmon device, in hwmonN order. The
    attributes are in the hwmon directory itself, or in its ``device/`` on kernels before 3.x."""
    top = os.path.join(root, HWMON)
    try:
        entries = sorted(os.listdir(top), key=_num_key)
    except OSError:
        return []
    out = []
    for entry in entries:
        d = os.path.join(top, entry)
        for attrs in (d, os.path.join(d, "device")):
            try:
                name = base.read_sysfs(os.path.join(attrs, "name"))
            except OSError:
                continue
            out.append((d, attrs, name))
            break
    return out


def _exists(path: str) -> bool:
    return os.path.isfile(path)


def _rate(name: str, attrs: str, requested: float | None, default: float) -> float:
    """The sampling rate, Hz: ``requested`` or ``default``, but never faster than the sensor's
    ``update_interval`` (ms) says it produces new values."""
    rate = float(requested) if requested is not None else default
    if not rate > 0:
        raise MeterError(f"{name} meter: sampling rate must be > 0 Hz, got {requested}")
    path = os.path.join(attrs, "update_interval")
    if _exists(path):
        try:
            interval_ms = base.read_number(path)
        except OSError as e:
            log.debug("%s: update_interval unreadable (%s); sampling at %.0f Hz", attrs, e, rate)
            return rate
        if interval_ms > 0 and rate > 1000.0 / interval_ms:
            if requested is not None:
                log.info("%s updates every %g ms: sampling at %.1f Hz, not %.1f Hz", attrs,
                         interval_ms, 1000.0 / interval_ms, rate)
            rate = 1000.0 / interval_ms
    return rate


def _power_file(path: str, scale: float):
    return lambda: base.read_number(path) * scale


def _volt_amp(volt: str, curr: str):
    # mV x mA = uW
    return lambda: base.read_number(curr) * base.read_number(volt) * 1e-6


def ina2xx_rail(attrs: str, chip: str) -> Rail:
    """The one rail of an INA2xx: ``power1_input`` (uW), else ``curr1_input`` (mA) x ``in1_input``
    (bus voltage, mV)."""
    power = os.path.join(attrs, "power1_input")
    if _exists(power):
        return Rail(chip, _power_file(power, 1e-6), (power,))
    volt, curr = os.path.join(attrs, "in1_input"), os.path.join(attrs, "curr1_input")
    if _exists(volt) and _exists(curr):
        return Rail(chip, _volt_amp(volt, curr), (curr, volt))
    raise MeterError(f"{chip} at {attrs} has neither power1_input nor curr1_input + in1_input: "
                     "check its driver (and shunt_resistor), or use another --meter",
                     why=f"{chip} at {attrs} has no power or current file")


class Ina2xxMeter(SampledMeter):
    """An INA2xx power sensor (hwmon): the first one found, or the hwmon directory ``device``.

    Samples ``power1_input`` (or current x bus voltage) at ``rate_hz`` (default 200 Hz), never
    faster than the chip's ``update_interval``. Attribute ``chip``: the hwmon name (``ina226``).
    """

    name = "ina2xx"

    def __init__(self, root: str = "/", rate_hz: float | None = None, device: str | None = None):
        found = [(d, a, n) for d, a, n in hwmon_devices(root) if INA2XX_RE.match(n)]
        top = os.path.join(root, HWMON)
        if device is not None:
            found = [f for f in found if f[0] == device or os.path.basename(f[0]) == device]
        if not found:
            raise MeterError(f"no INA2xx power sensor under {top} (hwmon name ina219, ina226, ...): "
                             "bind its driver (e.g. echo ina226 0x40 > /sys/bus/i2c/devices/i2c-1/"
                             "new_device) or use another --meter", why=f"no INA2xx sensor under {top}")
        if len(found) > 1:
            log.info("several INA2xx sensors (%s): using %s", ", ".join(f[0] for f in found),
                     found[0][0])
        self.device, attrs, self.chip = found[0]
        rail = ina2xx_rail(attrs, self.chip)
        super().__init__([rail], _rate(self.name, attrs, rate_hz, DEFAULT_RATE_HZ))
        how = "power1_input" if rail.files[0].endswith("power1_input") else "curr1_input x in1_input"
        self.description = (f"{self.chip.upper()} power sensor, {how}, {self.rate_hz:.0f} Hz "
                            f"({self.device})")


def _split_total(labels: list[str]) -> list[int] | None:
    """Indices of the input rails when there are any (their sum is the total), else None."""
    inputs = [i for i, label in enumerate(labels) if INPUT_RAIL_RE.search(label)]
    return inputs if inputs and len(inputs) < len(labels) else None


def _describe(what: str, labels: list[str], total: list[int] | None) -> str:
    if total is None:
        return f"{what} rails {'+'.join(labels)}"
    inside = [lab for i, lab in enumerate(labels) if i not in total]
    return (f"{what} input rail {'+'.join(labels[i] for i in total)} "
            f"({', '.join(inside)} are inside it, reported, not added)")


class Ina3221Meter(SampledMeter):
    """The mainline ``ina3221`` hwmon driver: channels 1..3 of every INA3221 found, power per rail =
    ``in{c}_input`` (bus voltage, mV) x ``curr{c}_input`` (mA); rail names from ``in{c}_label``.
    A channel whose files are absent, or whose ``in{c}_enable`` is 0, is skipped. The total is the
    sum of the rails, or the input rail alone where one is named so (module docstring)."""

    name = "ina3221"

    def __init__(self, root: str = "/", rate_hz: float | None = None):
        top = os.path.join(root, HWMON)
        devices = [(d, a) for d, a, n in hwmon_devices(root) if n == "ina3221"]
        if not devices:
            raise MeterError(f"no INA3221 under {top} (hwmon name ina3221): load the ina3221 driver "
                             "or use another --meter", why=f"no INA3221 under {top}")
        rails, labels, suffixes, rates = [], [], [], []
        for d, attrs in devices:
            for c in (1, 2, 3):
                volt = os.path.join(attrs, f"in{c}_input")
                curr = os.path.join(attrs, f"curr{c}_input")
                if not (_exists(volt) and _exists(curr)):
                    continue
                enable = os.path.join(attrs, f"in{c}_enable")
                try:
                    if _exists(enable) and base.read_sysfs(enable) == "0":
                        continue
                    label = base.read_sysfs(os.path.join(attrs, f"in{c}_label")) or f"channel{c}"
                except OSError:
                    label = f"channel{c}"
                rails.append((label, volt, curr))
                labels.append(label)
                suffixes.append(f"{os.path.basename(d)}.{c}")
            rates.append(_rate(self.name, attrs, rate_hz, DEFAULT_RATE_HZ))
        if not rails:
            where = ", ".join(d for d, _ in devices)
            raise MeterError(f"INA3221 at {where} has no enabled channel with in*_input and "
                             "curr*_input: enable a channel (in1_enable) or use another --meter",
                             why=f"INA3221 at {where} has no enabled channel")
        labels = base.unique_labels(labels, suffixes)
        total = _split_total(labels)
        super().__init__([Rail(lab, _volt_amp(v, c), (c, v)) for lab, (_, v, c) in zip(labels, rails)],
                         min(rates), total)
        self.devices = [d for d, _ in devices]
        self.description = (f"{_describe('INA3221', labels, total)}, V x I, {self.rate_hz:.0f} Hz "
                            f"({', '.join(self.devices)})")


def jetson_devices(root: str = "/") -> list[str]:
    """The ``iio:device*`` directories of the L4T ``ina3221x`` driver, sorted."""
    pattern = os.path.join(root, JETSON_IIO, "*", "iio:device*")
    return sorted(d for d in glob.glob(pattern) if os.path.isdir(d))


class JetsonIna3221Meter(SampledMeter):
    """The INA3221 of older Jetson releases (L4T ``ina3221x`` iio driver, JetPack 4.x): rails
    ``in_power{0,1,2}_input`` (mW) of every device, named by ``rail_name_{0,1,2}``. The total is
    the input rail (``POM_5V_IN`` on the Nano, ``VDD_IN`` on the TX1/TX2/Xavier NX) where there is
    one, the sum of the rails otherwise. Default rate 100 Hz."""

    name = "jetson-ina3221"

    def __init__(self, root: str = "/", rate_hz: float | None = None):
        top = os.path.join(root, JETSON_IIO)
        devices = jetson_devices(root)
        rails, labels, suffixes = [], [], []
        for d in devices:
            for i in (0, 1, 2):
                power = os.path.join(d, f"in_power{i}_input")
                if not _exists(power):
                    continue
                try:
                    label = base.read_sysfs(os.path.join(d, f"rail_name_{i}")) or f"rail{i}"
                except OSError:
                    label = f"rail{i}"
                rails.append(power)
                labels.append(label)
                suffixes.append(f"{os.path.basename(os.path.dirname(d))}.{i}")
        if not rails:
            raise MeterError(f"no Jetson INA3221 rails under {top} (in_power*_input of the L4T "
                             "ina3221x driver): use another --meter",
                             why=f"no Jetson INA3221 under {top}")
        rate = float(rate_hz) if rate_hz is not None else DEFAULT_JETSON_RATE_HZ
        labels = base.unique_labels(labels, suffixes)
        total = _split_total(labels)
        super().__init__([Rail(lab, _power_file(p, 1e-3), (p,)) for lab, p in zip(labels, rails)],
                         rate, total)
        self.devices = devices
        self.description = (f"Jetson {_describe('INA3221', labels, total)}, in_power*_input mW, "
                            f"{self.rate_hz:.0f} Hz ({', '.join(devices)})")

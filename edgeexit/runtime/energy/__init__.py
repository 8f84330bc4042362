"""Energy meters for ``edgeexit bench``: numpy and the standard library only (no torch, no onnx).

``meter.start()``, run the work, ``meter.stop()`` -> :class:`EnergyReading` (joules, seconds,
measured or estimated). Meters, best first (:func:`auto_meter` picks the first present):

- ``ina2xx`` / ``ina3221``: INA2xx / INA3221 power sensors (Linux hwmon), sampled ~200 Hz;
- ``jetson-ina3221``: the INA3221 of older Jetson releases (L4T iio driver);
- ``rapl``: the CPU package and DRAM energy counters of x86 machines (powercap);
- ``csv:PATH``: the log of an external meter (USB power meter, bench supply);
- ``estimate``: this process's CPU time x the target preset's power model: an estimate.
"""

from __future__ import annotations

from edgeexit.runtime.energy.base import (
    ESTIMATED,
    MEASURED,
    EnergyReading,
    Meter,
    MeterError,
    SampledMeter,
    integrate,
)
from edgeexit.runtime.energy.csvlog import CsvMeter
from edgeexit.runtime.energy.estimate import EstimateMeter
from edgeexit.runtime.energy.factory import (
    SPECS,
    auto_meter,
    check_spec,
    detect_meters,
    make_meter,
    open_meter,
)
from edgeexit.runtime.energy.hwmon import Ina2xxMeter, Ina3221Meter, JetsonIna3221Meter
from edgeexit.runtime.energy.rapl import RaplMeter

__all__ = [
    "ESTIMATED",
    "MEASURED",
    "SPECS",
    "CsvMeter",
    "EnergyReading",
    "EstimateMeter",
    "Ina2xxMeter",
    "Ina3221Meter",
    "JetsonIna3221Meter",
    "Meter",
    "MeterError",
    "RaplMeter",
    "SampledMeter",
    "auto_meter",
    "check_spec",
    "detect_meters",
    "integrate",
    "make_meter",
    "open_meter",
]

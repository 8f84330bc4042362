"""The CPU-time estimate: energy from this process's CPU time and the target preset's power model.

``joules = idle_w * wall_seconds + active_w_per_core * cpu_seconds``, where ``cpu_seconds`` is
``time.process_time()`` over the window (this process, all its threads). Not wall time x a
constant: that would make every energy ratio equal the latency ratio. It is still a model, not a
measurement: it knows nothing of memory traffic, frequency scaling or the other processes.
"""

from __future__ import annotations

import logging
import math
import time

from edgeexit.runtime.energy.base import ESTIMATED, EnergyReading, Meter, MeterError

log = logging.getLogger(__name__)


class EstimateMeter(Meter):
    """Energy estimated from CPU time (module docstring).

    Args:
        power: the target preset's power model, ``{"idle_w": W, "active_w_per_core": W per busy
            core, "source": where the figures come from}``.
        threads: the inference threads (named in the description only; the CPU time counts all).

    Attributes ``idle_w`` and ``active_w_per_core`` (W) are the model's, so that energy above idle
    is ``reading.joules - meter.idle_w * reading.seconds``.
    """

    name = "estimate"
    kind = ESTIMATED

    def __init__(self, power: dict | None, threads: int = 1):
        power = power or {}
        try:
            idle = float(power["idle_w"])
            active = float(power["active_w_per_core"])
        except (KeyError, TypeError, ValueError):
            raise MeterError("the target preset has no [power] model (idle_w and active_w_per_core "
                             "in its targets/*.toml, or --power-target): add one, or measure with "
                             "--meter rapl, ina2xx, ina3221 or csv:PATH",
                             why="the target preset has no [power] model") from None
        if not (math.isfinite(idle) and math.isfinite(active) and idle >= 0 and active >= 0):
            raise MeterError(f"the target preset's [power] model has idle_w={idle}, "
                             f"active_w_per_core={active}: both must be finite and >= 0")
        self.idle_w = idle
        self.active_w_per_core = active
        self.source = str(power.get("source") or "not stated")
        self.threads = int(threads)
        self.description = (f"ESTIMATE from this process's CPU time and the target preset's power "
                            f"model ({idle:g} W idle + {active:g} W per busy core, "
                            f"{self.threads} thread(s); source: {self.source}), not a measurement")
        self._t0: float | None = None
        self._cpu0 = 0.0

    def start(self) -> None:
        self._cpu0 = time.process_time()
        self._t0 = time.monotonic()

    def stop(self) -> EnergyReading:
        t1 = time.monotonic()
        cpu1 = time.process_time()
        if self._t0 is None:
            raise self._not_started()
        t0, self._t0 = self._t0, None
        seconds = t1 - t0
        cpu = max(0.0, cpu1 - self._cpu0)
        joules = self.idle_w * seconds + self.active_w_per_core * cpu
        return EnergyReading(joules=joules, seconds=seconds, kind=self.kind, meter=self.description,
                             start=t0, cpu_seconds=cpu)

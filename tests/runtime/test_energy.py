"""Energy meters against fake sysfs trees and logs under tmp_path: RAPL counters (domains, wrap-around,
root-only counters), INA2xx / INA3221 / Jetson power files written by a writer thread, sensors that
vanish mid-run, external CSV logs, the CPU-time estimate, and the choice of meter."""

from __future__ import annotations

import datetime as dt
import errno
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest

from edgeexit.errors import ConfigError
from edgeexit.runtime.energy import (
    CsvMeter,
    EnergyReading,
    EstimateMeter,
    Ina2xxMeter,
    Ina3221Meter,
    JetsonIna3221Meter,
    MeterError,
    RaplMeter,
    auto_meter,
    base,
    detect_meters,
    make_meter,
)

# needs no torch or onnx: tools/aarch64_check.py runs it on the device install
pytestmark = pytest.mark.device_install

POWER = {"idle_w": 2.5, "active_w_per_core": 1.25, "source": "test preset"}


@pytest.fixture(autouse=True)
def no_meter_thread_left():
    yield
    left = [t.name for t in threading.enumerate() if t.name.startswith("edgeexit-meter")]
    assert left == [], f"meter threads still running: {left}"


def put(path, value) -> None:
    """Write a sysfs-like file atomically (a reader sees the old or the new value, never half)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{threading.get_ident()}"
    with open(tmp, "w") as f:
        f.write(f"{value}\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- RAPL

PC = "sys/class/powercap"


def rapl_tree(root, zones: dict[str, tuple[str, int, int]], nested: bool = False) -> None:
    """zones: {"intel-rapl:0": (name, energy_uj, max_energy_range_uj)}. Flat: subzones next to
    their package (as /sys/class/powercap links them); nested: only inside the package dir."""
    os.makedirs(os.path.join(root, PC, "intel-rapl"), exist_ok=True)  # the control type: no zone
    for zone, (name, uj, max_uj) in zones.items():
        d = zone_dir(root, zone, nested)
        put(os.path.join(d, "name"), name)
        put(os.path.join(d, "energy_uj"), uj)
        put(os.path.join(d, "max_energy_range_uj"), max_uj)


def zone_dir(root, zone: str, nested: bool = False) -> str:
    parts = zone.split(":")
    if nested and len(parts) == 3:
        return os.path.join(root, PC, ":".join(parts[:2]), zone)
    return os.path.join(root, PC, zone)


def set_uj(root, zone, uj, nested=False) -> None:
    put(os.path.join(zone_dir(root, zone, nested), "energy_uj"), uj)


def root_only(monkeypatch) -> None:
    """Reads of energy_uj raise PermissionError, as for a non-root user on Linux >= 5.10 (file modes
    do not stop root, which runs these tests on some machines)."""
    real = base.read_sysfs

    def read(path):
        if os.path.basename(path) == "energy_uj":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(base, "read_sysfs", read)


BIG = 2**40


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_rapl_sums_package_and_dram_but_not_core(tmp_path, nested):
    rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1_000_000, BIG),
                         "intel-rapl:0:0": ("core", 500_000, BIG),
                         "intel-rapl:0:1": ("dram", 200_000, BIG)}, nested)
    os.makedirs(tmp_path / PC / "intel-rapl-mmio:0")  # the MMIO copy of the package: ignored
    with make_meter("rapl", root=str(tmp_path), rate_hz=50) as m:
        m.start()
        set_uj(tmp_path, "intel-rapl:0", 4_000_000, nested)  # +3 J
        set_uj(tmp_path, "intel-rapl:0:0", 3_000_000, nested)  # +2.5 J, inside the package
        set_uj(tmp_path, "intel-rapl:0:1", 1_200_000, nested)  # +1 J
        time.sleep(0.03)
        r = m.stop()
    assert r.joules == pytest.approx(4.0, abs=1e-9)
    assert r.domains == pytest.approx({"package-0": 3.0, "dram": 1.0}, abs=1e-9)
    assert r.kind == "measured" and m.kind == "measured" and m.idle_w is None
    assert "package-0+dram" in r.meter and "core" not in r.meter
    assert r.seconds >= 0.03 and r.watts == pytest.approx(4.0 / r.seconds)
    assert sum(w * dt for (_, w), dt in zip(r.samples, _gaps(r.samples))) == pytest.approx(4.0)


def _gaps(samples):
    ts = [0.0] + [t for t, _ in samples]
    return [b - a for a, b in itertools.pairwise(ts)]


def test_rapl_counter_wrap_is_added_back(tmp_path):
    rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 9_000_000, 10_000_000)})
    m = RaplMeter(root=str(tmp_path), rate_hz=0.1)
    m.start()
    set_uj(tmp_path, "intel-rapl:0", 1_500_000)  # past 10 J and round again: +2.5 J
    r = m.stop()
    assert r.joules == pytest.approx(2.5, abs=1e-9)
    assert r.domains is None  # a single domain


def test_rapl_double_wrap_caught_by_polling(tmp_path):
    rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 9_000_000, 10_000_000)})
    m = RaplMeter(root=str(tmp_path), rate_hz=0.1)  # the thread never fires: only our polls
    m.start()
    for uj in (4_000_000, 9_500_000, 2_000_000, 7_000_000):  # +5, +5.5, +2.5, +5 J: two wraps
        set_uj(tmp_path, "intel-rapl:0", uj)
        m.poll()
    r = m.stop()
    assert r.joules == pytest.approx(18.0, abs=1e-9)  # start/stop reads alone would give 8 J


def test_rapl_background_thread_catches_several_wraps(tmp_path, monkeypatch):
    rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 0, 10_000_000)})
    counter = str(tmp_path / PC / "intel-rapl:0" / "energy_uj")
    reads = [0]
    real = base.read_sysfs

    def counting(path):
        text = real(path)
        if path == counter:
            reads[0] += 1
        return text

    monkeypatch.setattr(base, "read_sysfs", counting)
    m = RaplMeter(root=str(tmp_path), rate_hz=200)
    m.start()
    uj = 0
    for _ in range(10):  # +4 J per step: 40 J, four wraps; the test never calls poll()
        uj = (uj + 4_000_000) % 10_000_000
        set_uj(tmp_path, "intel-rapl:0", uj)
        seen, deadline = reads[0], time.monotonic() + 5.0
        while reads[0] < seen + 2:  # two reads after the write: one began after it
            assert time.monotonic() < deadline, "the meter's thread stopped reading the counter"
            time.sleep(0.001)
    r = m.stop()
    assert r.joules == pytest.approx(40.0, abs=1e-9)


def test_rapl_root_only_counter_says_run_as_root(tmp_path, monkeypatch):
    rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1, BIG)})
    root_only(monkeypatch)
    with pytest.raises(MeterError, match="root") as err:
        make_meter("rapl", root=str(tmp_path))
    msg = str(err.value)
    assert "energy_uj" in msg and "chmod o+r" in msg and "--meter estimate" in msg
    assert "\n" not in msg


def test_rapl_absent(tmp_path):
    with pytest.raises(MeterError, match="no RAPL zones"):
        make_meter("rapl", root=str(tmp_path))


# --------------------------------------------------------------------------------------------- hwmon

HW = "sys/class/hwmon"


def hwmon(root, n: int, name: str, **files) -> str:
    d = os.path.join(root, HW, f"hwmon{n}")
    put(os.path.join(d, "name"), name)
    for key, value in files.items():
        put(os.path.join(d, key), value)
    return d


class Writer:
    """Writes ``value(t)`` (t = time.monotonic()) to a file every ~0.5 ms until stopped."""

    def __init__(self, path: str, value):
        self.path, self.value = path, value
        self.halt = threading.Event()
        put(path, value(time.monotonic()))
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.halt.is_set():
            put(self.path, self.value(time.monotonic()))
            time.sleep(0.0005)

    def stop(self):
        self.halt.set()
        self.thread.join()


def test_ina226_reads_a_changing_power_file_in_watts(tmp_path):
    """Whatever the thread's timing, every sample is one of the values written (uW -> W) and the
    energy lies between the lowest and the highest power times the window. How closely it follows
    a known profile is timing: tools/timing_benchmarks.py measures it."""
    d = hwmon(tmp_path, 0, "ina226")
    w = Writer(os.path.join(d, "power1_input"),  # 4 W + 2 W sin(2 pi t / 0.6 s), in uW
               lambda t: round((4.0 + 2.0 * math.sin(2 * math.pi * t / 0.6)) * 1e6))
    try:
        m = make_meter("ina2xx", root=str(tmp_path))
        assert isinstance(m, Ina2xxMeter) and m.rate_hz == pytest.approx(200.0)
        m.start()
        time.sleep(0.1)
        r = m.stop()
    finally:
        w.stop()
    assert len(r.samples) >= 2 and all(2.0 <= p <= 6.0 for _, p in r.samples)  # start, stop
    assert 0 <= r.samples[0][0] <= r.samples[-1][0] <= r.seconds
    assert 2.0 * r.seconds <= r.joules <= 6.0 * r.seconds
    assert "INA226" in r.meter and r.domains is None and r.kind == "measured"


def test_ina2xx_current_times_voltage_when_there_is_no_power_file(tmp_path):
    hwmon(tmp_path, 3, "ina219", curr1_input=1200, in1_input=5000, in0_input=40)  # mA, mV (bus)
    m = make_meter("ina2xx", root=str(tmp_path))
    m.start()
    time.sleep(0.05)
    r = m.stop()
    assert r.joules == pytest.approx(6.0 * r.seconds, rel=1e-9)
    assert "curr1_input x in1_input" in m.description


def test_ina226_update_interval_caps_the_sampling_rate(tmp_path):
    hwmon(tmp_path, 0, "ina226", power1_input=3_000_000, update_interval=20)  # ms
    m = make_meter("ina2xx", root=str(tmp_path), rate_hz=500)
    assert m.rate_hz <= 1000 / 20
    m.start()
    time.sleep(0.2)
    r = m.stop()
    assert len(r.samples) <= 0.2 * 50 + 3  # the thread's ticks, plus start's and stop's samples
    assert r.joules == pytest.approx(3.0 * r.seconds, rel=1e-9)


def ina3221(root, n, rails: dict[int, tuple[str | None, int, int]], **extra) -> str:
    """rails: {channel: (label or None, bus mV, mA)}."""
    d = hwmon(root, n, "ina3221", **extra)
    for c, (label, mv, ma) in rails.items():
        put(os.path.join(d, f"in{c}_input"), mv)
        put(os.path.join(d, f"curr{c}_input"), ma)
        if label is not None:
            put(os.path.join(d, f"in{c}_label"), label)
    return d


def run_for(m, seconds=0.05) -> EnergyReading:
    m.start()
    time.sleep(seconds)
    return m.stop()


def test_ina3221_sums_three_rails_with_labels(tmp_path):
    ina3221(tmp_path, 1, {1: ("5V_SYS", 5000, 1000), 2: ("3V3", 3300, 500), 3: (None, 12000, 250)})
    hwmon(tmp_path, 0, "cpu_thermal", temp1_input=45000)  # another hwmon device: ignored
    m = make_meter("ina3221", root=str(tmp_path))
    assert isinstance(m, Ina3221Meter)
    r = run_for(m)
    assert r.joules == pytest.approx((5.0 + 1.65 + 3.0) * r.seconds, rel=1e-9)
    assert r.domains == pytest.approx({"5V_SYS": 5.0 * r.seconds, "3V3": 1.65 * r.seconds,
                                       "channel3": 3.0 * r.seconds}, rel=1e-9)


def test_ina3221_skips_absent_and_disabled_channels(tmp_path):
    ina3221(tmp_path, 0, {1: ("A", 5000, 400), 3: ("C", 5000, 600)}, in3_enable=0)
    r = run_for(make_meter("ina3221", root=str(tmp_path)))
    assert r.joules == pytest.approx(2.0 * r.seconds, rel=1e-9)
    assert r.domains is None  # one rail left


def test_ina3221_input_rail_is_the_total_when_named_so(tmp_path):
    # Jetson Orin: VDD_IN is the module input; the CPU/GPU and SoC rails are inside it
    ina3221(tmp_path, 0, {1: ("VDD_IN", 5000, 1400), 2: ("VDD_CPU_GPU_CV", 5000, 300),
                          3: ("VDD_SOC", 5000, 500)})
    m = make_meter("ina3221", root=str(tmp_path))
    r = run_for(m)
    assert r.joules == pytest.approx(7.0 * r.seconds, rel=1e-9)
    assert r.domains["VDD_SOC"] == pytest.approx(2.5 * r.seconds, rel=1e-9)
    assert "not added" in m.description


JET = "sys/bus/i2c/drivers/ina3221x"


def jetson(root, rails: dict[int, tuple[str, int]], dev="6-0040") -> None:
    d = os.path.join(root, JET, dev, "iio:device0")
    for i, (name, mw) in rails.items():
        put(os.path.join(d, f"rail_name_{i}"), name)
        put(os.path.join(d, f"in_power{i}_input"), mw)


@pytest.mark.parametrize("names,total_w", [(("5V_A", "5V_B", "3V3"), 2.5 + 1.5 + 0.75),
                                            (("POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"), 2.5)],
                         ids=["summed", "nano-input-rail"])
def test_jetson_ina3221_milliwatts(tmp_path, names, total_w):
    jetson(tmp_path, {0: (names[0], 2500), 1: (names[1], 1500), 2: (names[2], 750)})
    m = make_meter("ina3221", root=str(tmp_path))  # no mainline INA3221: the L4T driver
    assert isinstance(m, JetsonIna3221Meter) and m.name == "jetson-ina3221"
    r = run_for(m)
    assert r.joules == pytest.approx(total_w * r.seconds, rel=1e-9)
    assert r.domains == pytest.approx({n: w * r.seconds for n, w in zip(names, (2.5, 1.5, 0.75))},
                                      rel=1e-9)


def test_sensor_that_vanishes_mid_run_fails_stop_naming_the_file(tmp_path):
    d = hwmon(tmp_path, 2, "ina226", power1_input=2_000_000)
    m = make_meter("ina2xx", root=str(tmp_path), rate_hz=200)
    m.start()
    time.sleep(0.05)
    os.remove(os.path.join(d, "power1_input"))  # driver unbound ...
    time.sleep(0.05)
    put(os.path.join(d, "power1_input"), 2_000_000)  # ... and bound again: the gap still counts
    with pytest.raises(MeterError, match="vanished") as err:
        m.stop()
    msg = str(err.value)
    assert os.path.join(d, "power1_input") in msg and "samples" in msg and "s into the window" in msg
    os.remove(os.path.join(d, "power1_input"))
    with pytest.raises(MeterError, match="vanished at start"):
        m.start()
    m.close()


# ----------------------------------------------------------------------------------------------- CSV

def write_log(path, rows, header="timestamp,watts", end="\n") -> None:
    text = header + "\n" + "\n".join(",".join(str(v) for v in row) for row in rows) + end
    with open(path, "w") as f:
        f.write(text)


def iso(t: float, tz: dt.tzinfo | None) -> str:
    stamp = dt.datetime.fromtimestamp(t, tz or dt.UTC)
    return (stamp if tz else stamp.replace(tzinfo=None)).isoformat()


@pytest.fixture
def not_utc():
    """A local zone 5:30 ahead of UTC, so that a naive time read as local time misses the run."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "IST-5:30"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.mark.parametrize("stamp", ["epoch", "iso-z", "iso-offset", "iso-naive-utc"])
def test_csv_log_with_a_linear_ramp_is_integrated_exactly(tmp_path, not_utc, stamp):
    now = time.time()
    fmt = {"epoch": repr,
           "iso-z": lambda t: iso(t, dt.UTC).replace("+00:00", "Z"),
           "iso-offset": lambda t: iso(t, dt.timezone(dt.timedelta(hours=2))),
           "iso-naive-utc": lambda t: iso(t, None)}[stamp]

    def ramp(t):  # W, sampled once a second
        return 2.0 + 10.0 * (t - now)

    path = tmp_path / "power.csv"
    write_log(path, [(fmt(now + k), ramp(now + k)) for k in range(-5, 6)])
    m = make_meter(f"csv:{path}")
    r = run_for(m, 0.05)
    a, b = m.start_unix, m.stop_unix
    expect = 2.0 * (b - a) + 5.0 * ((b - now) ** 2 - (a - now) ** 2)
    assert r.joules == pytest.approx(expect, rel=1e-5)  # edges interpolated, not held
    assert r.seconds == pytest.approx(b - a, abs=2e-3) and r.kind == "measured"


def test_csv_log_counts_only_the_part_of_a_step_inside_the_window(tmp_path):
    path = tmp_path / "log.csv"
    m = CsvMeter(path)
    m.start()
    a = m.start_unix
    step = a + 0.02
    write_log(path, [(a - 5, 1000.0), (a - 4, 1.0), (step - 1e-6, 1.0), (step, 10.0),
                     (a + 4, 10.0), (a + 5, 1000.0)])  # 1000 W outside the window
    while time.time() < step + 0.02:
        time.sleep(0.005)
    r = m.stop()
    b = m.stop_unix
    assert r.joules == pytest.approx(1.0 * (step - a) + 10.0 * (b - step), abs=1e-4)
    assert [w for _, w in r.samples] == pytest.approx([1.0, 1.0, 10.0, 10.0])


def test_csv_volts_times_amps_and_an_unfinished_last_line(tmp_path):
    path = tmp_path / "usb.csv"
    now = time.time()
    write_log(path, [(now - 5, 5.0, 0.5), (now + 5, 5.0, 0.5)], header="Time,Voltage_V,Current_A",
              end=f"\n{now + 6:.3f},5.0")  # the logger is writing this line
    r = run_for(make_meter(f"csv:{path}"), 0.02)
    assert r.joules == pytest.approx(2.5 * r.seconds, rel=1e-3)


def test_csv_log_that_misses_the_run_asks_about_clocks(tmp_path):
    path = tmp_path / "old.csv"
    now = time.time()
    write_log(path, [(now - 3600 + k, 3.0) for k in range(10)])  # an hour ago
    with pytest.raises(MeterError, match="clocks in sync") as err:
        run_for(make_meter(f"csv:{path}"), 0.01)
    assert "covers" in str(err.value) and "the run" in str(err.value)


def test_csv_log_that_ends_inside_the_run_waits_then_fails(tmp_path):
    path = tmp_path / "lag.csv"
    m = CsvMeter(path, wait_s=0.2)
    m.start()
    write_log(path, [(m.start_unix - 1, 3.0), (m.start_unix + 0.001, 3.0)])
    time.sleep(0.01)
    t = time.monotonic()
    with pytest.raises(MeterError, match="waited 0.2 s"):
        m.stop()
    assert time.monotonic() - t >= 0.2


def test_csv_log_that_catches_up_after_stop_is_used(tmp_path):
    path = tmp_path / "late.csv"
    m = CsvMeter(path, wait_s=5.0)
    m.start()
    write_log(path, [(m.start_unix - 1, 3.0)])

    def late_row():
        time.sleep(0.1)
        with open(path, "a") as f:
            f.write(f"{time.time() + 1},3.0\n")

    writer = threading.Thread(target=late_row)
    writer.start()
    time.sleep(0.01)
    r = m.stop()
    writer.join()
    # 3 W over the run; the run's seconds (monotonic clock) and the log's span (wall clock) are
    # read at slightly different moments, so allow 5 ms of skew at 3 W (a loaded CI host showed
    # 0.5 ms, 1.3% of this 35 ms run)
    assert r.joules == pytest.approx(3.0 * r.seconds, abs=3.0 * 0.005)


def test_csv_malformed_row_names_its_line(tmp_path):
    path = tmp_path / "bad.csv"
    now = time.time()
    path.write_text(f"# meter log\ntimestamp,watts\n{now - 5},3.0\n{now},abc\n{now + 5},3.0\n")
    with pytest.raises(MeterError, match="line 4"):
        run_for(make_meter(f"csv:{path}"), 0.01)


def test_csv_bad_header_missing_file_and_empty_spec(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("time,milliwatts\n1,2\n")
    with pytest.raises(MeterError, match="line 1.*power column"):
        run_for(make_meter(f"csv:{path}"), 0.0)
    with pytest.raises(MeterError, match="does not exist"):
        run_for(make_meter(f"csv:{tmp_path / 'nope.csv'}"), 0.0)
    with pytest.raises(ConfigError, match="csv:PATH"):
        make_meter("csv:")


# ------------------------------------------------------------------------------------------ estimate

class Clocks:
    """Stands in for the estimate's ``time`` module: wall and CPU clocks that the test moves."""

    def __init__(self):
        self.wall, self.cpu = 100.0, 7.0

    def monotonic(self):
        return self.wall

    def process_time(self):
        return self.cpu


@pytest.fixture
def clocks(monkeypatch):
    from edgeexit.runtime.energy import estimate

    c = Clocks()
    monkeypatch.setattr(estimate, "time", c)
    return c


@pytest.mark.parametrize("wall, cpu, joules", [
    (2.0, 0.0, 5.0),        # asleep: the idle power over the window
    (2.0, 2.0, 7.5),        # one core busy: + 1.25 W x 2 s
    (2.0, 4.0, 10.0),       # two threads busy: CPU time counts all the process's threads
    (0.5, 0.25, 1.5625),
])
def test_estimate_is_idle_power_over_the_window_plus_active_power_per_cpu_second(
        clocks, wall, cpu, joules):
    m = make_meter("estimate", power=POWER, threads=2)
    assert isinstance(m, EstimateMeter) and m.idle_w == 2.5 and m.kind == "estimated"
    m.start()
    clocks.wall += wall
    clocks.cpu += cpu
    r = m.stop()
    assert (r.seconds, r.cpu_seconds, r.start) == (wall, cpu, 100.0)
    assert r.joules == pytest.approx(joules, rel=1e-12)
    assert r.joules - m.idle_w * r.seconds == pytest.approx(1.25 * cpu, abs=1e-12)  # above idle
    assert r.samples == () and r.kind == "estimated"
    text = r.meter.lower()
    assert "estimate" in text and "not a measurement" in text and "test preset" in text


def test_estimate_windows_are_independent_and_stop_needs_a_start(clocks):
    m = make_meter("estimate", power=POWER)
    with pytest.raises(MeterError, match="without start"):
        m.stop()
    m.start()
    clocks.wall, clocks.cpu = clocks.wall + 1.0, clocks.cpu + 1.0
    assert m.stop().joules == pytest.approx(3.75)
    clocks.wall, clocks.cpu = clocks.wall + 5.0, clocks.cpu + 5.0  # between windows: not counted
    m.start()
    clocks.wall += 1.0
    assert m.stop().joules == pytest.approx(2.5)
    with pytest.raises(MeterError, match="without start"):
        m.stop()


@pytest.mark.parametrize("power", [None, {}, {"idle_w": 2.0, "source": "x"}])
def test_estimate_without_a_power_model(power):
    with pytest.raises(MeterError, match=r"no \[power\] model"):
        make_meter("estimate", power=power)


# ------------------------------------------------------------------------------------ choosing one

def test_auto_prefers_an_ina2xx_over_rapl(tmp_path):
    rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1, BIG)})
    hwmon(tmp_path, 1, "ina226", power1_input=1_000_000)
    m, why = auto_meter(power=POWER, root=str(tmp_path))
    with m:
        assert m.name == "ina2xx" and "using ina2xx" in why
    assert make_meter("auto", power=POWER, root=str(tmp_path)).name == "ina2xx"


def test_auto_uses_a_readable_rapl(tmp_path):
    rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1, BIG)})
    m, why = auto_meter(power=None, root=str(tmp_path))
    assert m.name == "rapl" and "no INA2xx" in why and why.endswith(m.description)


def test_auto_falls_back_to_the_estimate_when_rapl_is_root_only(tmp_path, monkeypatch):
    rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1, BIG)})
    root_only(monkeypatch)
    m, why = auto_meter(power=POWER, root=str(tmp_path))
    assert m.name == "estimate" and m.kind == "estimated"
    assert "RAPL present but energy_uj is readable only by root" in why
    assert "CPU-time estimate" in why and "\n" not in why
    [found] = detect_meters(str(tmp_path))
    assert found["name"] == "rapl" and found["readable"] is False and "root" in found["why"]


def test_auto_with_nothing_present(tmp_path):
    m, why = auto_meter(power=POWER, root=str(tmp_path))
    assert m.name == "estimate" and "RAPL" in why and "estimate" in why
    with pytest.raises(MeterError, match=r"no energy meter.*\[power\] model"):
        auto_meter(power=None, root=str(tmp_path))
    assert detect_meters(str(tmp_path)) == []


def test_detect_lists_what_is_present(tmp_path):
    rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1, BIG)})
    hwmon(tmp_path, 0, "ina226", power1_input=1_500_000)
    hwmon(tmp_path, 1, "ina219")  # no power, no current file
    found = detect_meters(str(tmp_path))
    assert [(f["name"], f["readable"]) for f in found] == [("ina2xx", True), ("ina2xx", False),
                                                           ("rapl", True)]
    assert "1.500 W" in found[0]["why"] and "no power or current file" in found[1]["why"]


def test_unknown_meter_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown energy meter 'wattmeter'") as err:
        make_meter("wattmeter")
    for name in ("auto", "rapl", "ina2xx", "ina3221", "estimate", "csv:PATH"):
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="rate"):
        make_meter("rapl", rate_hz=0)


# ---------------------------------------------------------------------------------- reading, import

def test_reading_to_dict_and_watts():
    r = EnergyReading(joules=3.0, seconds=1.5, kind="measured", meter="m", start=10.0,
                      samples=((0.0, 1.0), (0.5, 3.0), (1.5, 2.0)), domains={"a": 1.0, "b": 2.0})
    d = json.loads(json.dumps(r.to_dict()))
    assert d["watts"] == 2.0 and d["samples"] == {"count": 3, "min_w": 1.0, "mean_w": 2.0,
                                                  "max_w": 3.0}
    assert d["domains"] == {"a": 1.0, "b": 2.0} and d["cpu_seconds"] is None
    empty = EnergyReading(joules=0.0, seconds=0.0, kind="estimated", meter="e", start=0.0)
    assert empty.watts == 0.0 and empty.to_dict()["samples"]["count"] == 0


def test_stop_without_start(tmp_path):
    hwmon(tmp_path, 0, "ina226", power1_input=1)
    for m in (make_meter("ina2xx", root=str(tmp_path)), make_meter("estimate", power=POWER),
              CsvMeter(tmp_path / "x.csv")):
        with pytest.raises(MeterError, match="without start"):
            m.stop()


def test_importing_the_meters_loads_no_torch_or_onnx():
    code = ("import sys, edgeexit.runtime.energy\n"
            "print(','.join(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorflow')"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_open_meter_reads_the_meter_option(tmp_path):
    from edgeexit.runtime.energy import check_spec, open_meter

    power = {"idle_w": 1.0, "active_w_per_core": 2.0, "source": "test"}
    assert open_meter("none", power=power) == (None, "no energy phase (--meter none)")
    meter, why = open_meter("Auto", power=power, root=str(tmp_path))  # an empty tree: the estimate
    assert meter.name == "estimate" and "CPU-time estimate" in why
    meter, why = open_meter("estimate", power=power)
    assert meter.name == "estimate" and why == "--meter estimate"
    check_spec("CSV:log.csv")  # a name is checked without opening anything
    for bad, match in (("watts", "unknown energy meter 'watts': use one of none, auto"),
                       ("csv:", "needs the path")):
        with pytest.raises(ConfigError, match=match):
            open_meter(bad, power=power)
    with pytest.raises(ConfigError, match="unknown energy meter 'none'"):
        check_spec("none")  # only where no energy phase is a choice

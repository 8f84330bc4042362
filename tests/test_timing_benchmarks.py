"""tools/timing_benchmarks.py runs every check and reports a ratio for each (the ratios' values are
the machine's timing, which is what the tool measures: not asserted here)."""

import importlib.util
import json
import math
import sys

from tests.conftest import REPO


def _tool():
    spec = importlib.util.spec_from_file_location("timing_benchmarks",
                                                  REPO / "tools" / "timing_benchmarks.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["timing_benchmarks"] = mod
    spec.loader.exec_module(mod)
    return mod


def _finite_positive(values: dict, keys) -> bool:
    return all(math.isfinite(values[k]) and values[k] > 0 for k in keys)


def test_every_check_reports_its_ratio(bundle_dir, int8_bundle, capsys):
    tb = _tool()
    tb.main(["--seconds", "0.05", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"ina226", "estimate", "host"}
    assert _finite_positive(res["ina226"], ("measured_j", "profile_j", "ratio", "rate_hz"))
    assert res["ina226"]["samples"] >= 2 and res["ina226"]["nominal_hz"] == 200.0
    assert 0 <= res["estimate"]["sleep_cpu_fraction"] and 0 < res["estimate"]["busy_cpu_fraction"]
    bench = tb.bench(str(bundle_dir), 0.1)
    assert _finite_positive(bench, ("idle_w", "idle_ratio", "policy_ratio", "monolithic_ratio",
                                    "all_exits_ratio"))
    paced = tb.realtime(str(int8_bundle), 1.0)  # single-lead beats with RR context: it streams
    assert paced["signal_s"] == 1.0 and paced["wall_s"] > 0 and paced["ratio"] > 0

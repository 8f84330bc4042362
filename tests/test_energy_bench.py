"""Energy in ``edgeexit bench``, reports and plots, energy-aware calibration, the budget policy."""

import errno
import json
import math
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgeexit.cli import main


def run(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kw)


def _json(r):
    assert r.exit_code == 0, r.output
    return json.loads(r.output[r.output.index("{"):])


@pytest.fixture
def bundle(bundle_dir, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(bundle_dir, out)
    return out


def _engine(path):
    from edgeexit.runtime.engine import Engine

    return Engine.from_bundle(path, backend="onnxruntime", threads=1, load_monolithic=True)


def _windows(engine, n=48):
    from edgeexit.data.bench import bench_data

    return bench_data(engine, None, "test", n)[:2]


def test_estimate_energy_comes_from_cpu_time_and_the_power_model(bundle_dir):
    from edgeexit.runtime.energy import make_meter
    from edgeexit.runtime.profile import bench_engine

    engine = _engine(bundle_dir)
    x, y = _windows(engine)
    power = {"idle_w": 2.0, "active_w_per_core": 5.0, "source": "test"}
    d = bench_engine(engine, x, y, warmup=2, meter=make_meter("estimate", power=power),
                     energy_seconds=0.3, energy_rounds=2).to_dict()
    e = d["energy"]
    assert e["kind"] == "estimated" and "ESTIMATE" in e["label"] and e["idle_w"] == 2.0
    for name, pe in e["per_inference_mj"].items():
        key = "prefix_3" if name == "all_exits" else name
        s, c = e["metered_seconds"][key], e["inferences"][key]
        # gross - above idle is the preset's idle power over the path's own wall time
        assert math.isclose(pe["gross"] - pe["above_idle"], 1e3 * 2.0 * s / c, rel_tol=1e-3)
        # above idle is 5 W x the CPU time: some, and never more than every core's (how much of
        # a core the busy loop gets is timing: tools/timing_benchmarks.py measures it)
        assert 0 < e["cpu_fraction"][key] <= (os.cpu_count() or 1) + 0.05
    seg = e["per_segment_mj"]["above_idle"]
    assert len(seg) == 4 and all(v >= 0 for v in seg)
    # segment k costs what prefix k costs more than prefix k-1 (nothing where it costs less): the
    # costs add up to the all-exits one when the prefixes grow, and to more where one does not
    prefix = [p["above_idle"] for p in e["prefix_mj"]]
    assert sum(seg) >= prefix[-1] - 1e-6
    if all(b >= a for a, b in zip(prefix, prefix[1:])):
        assert math.isclose(sum(seg), prefix[-1], rel_tol=1e-6)
    pol, mono = e["per_inference_mj"]["policy"], e["per_inference_mj"]["monolithic"]
    assert e["ratios"]["policy_vs_monolithic"] == round(pol["above_idle"] / mono["above_idle"], 4)
    # the threshold sweep has both costs, from 1/K (everything leaves at exit 0) to 1 (none does)
    pts = d["threshold_sweep"]["points"]
    assert pts[0]["exit_fractions"][0] == 1.0 and pts[-1]["exit_fractions"][-1] == 1.0
    assert math.isclose(pts[0]["energy_mj"], seg[0], rel_tol=1e-6)
    assert math.isclose(pts[-1]["latency_us"], sum(s["mean"] for s in d["latency_us"]["segments"]),
                        rel_tol=1e-3)


def _fake_ina226(root, watts: float):
    """An INA226 under ``root`` that reads a constant ``watts``; returns its power file."""
    dev = root / "sys/class/hwmon/hwmon0"
    dev.mkdir(parents=True)
    (dev / "name").write_text("ina226\n")
    (dev / "update_interval").write_text("1\n")
    path = dev / "power1_input"
    path.write_text(f"{int(watts * 1e6)}\n")
    return path


def test_bench_against_a_fake_ina226_measures_idle_and_every_path(bundle_dir, tmp_path):
    """A constant 4 W: idle is 4 W, every path costs 4 W x its metered seconds and nothing above
    idle. (How closely a changing power is followed is timing: tools/timing_benchmarks.py.)"""
    from edgeexit.runtime.energy import make_meter
    from edgeexit.runtime.profile import bench_engine

    _fake_ina226(tmp_path, 4.0)
    meter = make_meter("ina2xx", root=str(tmp_path))
    engine = _engine(bundle_dir)
    x, y = _windows(engine, 32)
    with meter:
        d = bench_engine(engine, x, y, warmup=2, meter=meter, energy_seconds=0.2, energy_rounds=2)
    e = d.to_dict()["energy"]
    assert e["kind"] == "measured" and e["meter"] == "ina2xx" and "measured in this run" in e["idle"]
    assert e["idle_w"] == 4.0 and e["cpu_fraction"] is None
    for name in ("policy", "monolithic", "prefix_0", "prefix_3"):
        want_mj = 1e3 * 4.0 * e["metered_seconds"][name] / e["inferences"][name]
        key = {"prefix_3": "all_exits"}.get(name, name)
        got = e["per_inference_mj"][key] if key in e["per_inference_mj"] else e["prefix_mj"][0]
        assert got["gross"] == pytest.approx(want_mj, rel=1e-5), name
        assert got["above_idle"] == pytest.approx(0.0, abs=1e-7), name


def test_a_meter_that_vanishes_mid_bench_keeps_the_latency_results(bundle_dir, tmp_path, monkeypatch):
    from edgeexit.runtime.energy import base, make_meter
    from edgeexit.runtime.profile import bench_engine

    path = str(_fake_ina226(tmp_path, 3.0))
    meter = make_meter("ina2xx", root=str(tmp_path))
    real, reads = base.read_sysfs, [0]

    def vanishing(p):  # the sensor goes after 5 reads of its power file: during the energy runs
        if p == path:
            reads[0] += 1
            if reads[0] > 5:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", p)
        return real(p)

    monkeypatch.setattr(base, "read_sysfs", vanishing)
    engine = _engine(bundle_dir)
    x, y = _windows(engine, 32)
    with meter:
        d = bench_engine(engine, x, y, warmup=2, meter=meter, energy_seconds=0.1,
                         energy_rounds=2).to_dict()
    assert reads[0] == 6 and "power1_input" in d["energy"]["error"]
    assert "vanished" in d["energy"]["error"] and d["latency_us"]["policy"]["mean"] > 0


def _png(path):
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # something is drawn


def test_bench_report_compare_and_budget_policy_from_the_cli(bundle, tmp_path):
    rep = tmp_path / "rep"
    d = _json(run("bench", bundle, "--limit", "48", "--warmup", "2", "--backend", "onnxruntime",
                  "--threads", "1", "--no-progress", "--meter", "estimate", "--energy-seconds", "0.3",
                  "--report", rep, "--json"))
    assert d["energy"]["kind"] == "estimated" and d["host"]["cores"] >= 1
    names = sorted(p.name for p in rep.iterdir())
    assert names == sorted(["report.json", "report.md", "accuracy_vs_energy.png", "accuracy_vs_latency.png",
                            "exit_histogram.png", "segment_latency.png", "energy_per_inference.png"])
    for p in rep.glob("*.png"):
        _png(p)
    md = (rep / "report.md").read_text()
    assert "ESTIMATE" in md and "above idle" in md and f"host: {d['host']['cpu']}" in md
    assert json.loads((rep / "report.json").read_text())["energy"] == d["energy"]
    bench_json = tmp_path / "b.json"
    bench_json.write_text(json.dumps(d))

    r = run("report", bench_json, rep, "--name", "fp32 a", "--name", "fp32 b", "--out", tmp_path / "cmp")
    assert r.exit_code == 0, r.output
    assert "| fp32 a |" in r.output and "| fp32 b |" in r.output and "estimated" in r.output
    for f in ("compare_latency.png", "compare_energy.png", "compare_accuracy_vs_energy.png"):
        _png(tmp_path / "cmp" / f)
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert [w["result"] for w in rows] == ["fp32 a", "fp32 b"]
    r = run("report", bench_json, rep, "--out", tmp_path / "cmp")  # its own earlier report: reused
    assert r.exit_code == 0, r.output
    # a user's own compare.md (no compare.json beside it) is never replaced, for one result or two
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "compare.md").write_text("my notes\n")
    for args in ((bench_json,), (bench_json, rep)):
        r = run("report", *args, "--out", mine)
        assert r.exit_code == 1 and "did not write (compare.md)" in r.output, r.output
    assert (mine / "compare.md").read_text() == "my notes\n" and len(list(mine.iterdir())) == 1
    r = run("report", tmp_path / "missing.json")
    assert r.exit_code != 0 and "no such bench result" in r.output
    (tmp_path / "bad.json").write_text("{}")
    r = run("report", tmp_path / "bad.json")
    assert r.exit_code != 0 and "not a bench result" in r.output

    # the budget policy: a budget below segment 0 answers everything there; a big one at the end
    x = np.load(bundle / "golden.npz")["inputs"][:6]
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    for budget, want in (("0.000001mJ", 0), ("1J", 3), ("1us", 0), ("10s", 3)):
        r = run("run", bundle, "--input", tmp_path / "x.npy", "--policy", "budget", "--budget", budget,
                "--costs", bench_json, "--backend", "onnxruntime")
        assert r.exit_code == 0, r.output
        lines = [json.loads(v) for v in r.output.splitlines() if v.startswith("{")]
        assert len(lines) == 6 and {v["exit"] for v in lines} == {want}, (budget, lines[0])
    r = run("run", bundle, "--input", tmp_path / "x.npy", "--policy", "budget", "--budget", "abc",
            "--costs", bench_json)
    assert r.exit_code != 0 and "e.g. 40us" in r.output
    r = run("run", bundle, "--input", tmp_path / "x.npy", "--policy", "budget", "--budget", "5us")
    assert r.exit_code != 0 and "--costs" in r.output
    r = run("run", bundle, "--input", tmp_path / "x.npy", "--budget", "5us")
    assert r.exit_code != 0 and "--policy budget" in r.output


def test_calibrate_for_energy_with_a_budget_and_the_pareto_curve(bundle, separable_npz, tmp_path):
    d = _json(run("bench", bundle, "--limit", "48", "--warmup", "2", "--backend", "onnxruntime",
                  "--threads", "1", "--no-progress", "--meter", "estimate", "--energy-seconds", "0.3",
                  "--json"))
    bench_json = tmp_path / "b.json"
    bench_json.write_text(json.dumps(d))
    seg = d["energy"]["per_segment_mj"]["above_idle"]
    plot = tmp_path / "pareto.png"
    r = _json(run("calibrate", bundle, "--data", separable_npz, "--bench", bench_json, "--cost", "energy",
                  "--pareto-plot", plot, "--json"))
    c = r["policy"]["calibration"]
    assert c["cost_unit"].startswith("mJ above idle (estimated")
    assert c["segment_costs"] == {"unit": "mJ", "values": [round(v, 8) for v in seg]}
    assert math.isclose(c["full_cost"], sum(seg), rel_tol=1e-6)
    assert len(c["pareto"]) >= 1 and all(p["cost_ratio"] <= 1.0 + 1e-9 for p in c["pareto"])
    _png(plot)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["policy"]["calibration"]["pareto"] == c["pareto"]
    # the recorded per-segment energy serves the budget policy without --costs
    x = np.load(bundle / "golden.npz")["inputs"][:3].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("run", bundle, "--input", tmp_path / "x.npy", "--policy", "budget", "--budget",
            f"{seg[0] * 1.0001 + seg[1] * 1.0001}mJ", "--backend", "onnxruntime")
    assert r.exit_code == 0, r.output
    assert {json.loads(v)["exit"] for v in r.output.splitlines() if v.startswith("{")} <= {0, 1}
    budget = 0.6 * sum(seg)
    r = _json(run("calibrate", bundle, "--data", separable_npz, "--bench", bench_json, "--cost", "energy",
                  "--budget", budget, "--dry-run", "--json"))
    c = r["policy"]["calibration"]
    assert c["budget"] == budget and c["feasible"] and c["expected_cost"] <= budget + 1e-9
    r = run("calibrate", bundle, "--data", separable_npz, "--cost", "energy")
    assert r.exit_code != 0 and "--bench" in r.output

"""The benchmark tools in tools/ run on a tiny bundle and report consistent figures."""

import importlib.util

import pytest

from tests.conftest import REPO


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("backend", ["litert", "onnxruntime"])
def test_decision_overhead_separates_native_time_from_the_engine(bundle_dir, backend):
    r = _tool("decision_overhead").measure(str(bundle_dir), backend, 1, "golden", 16, 3, 0.5)
    assert set(r["policies"]) == {"max_prob", "entropy", "ensemble", "fixed"}
    for name, p in r["policies"].items():
        u = p["us_per_window"]
        assert 0 < u["native"] < u["predict"] and u["decision"] > 0 and u["check"] > 0
        assert abs(sum(p["exit_fractions"]) - 1) < 1e-3
        assert 1 <= p["segments_run_per_window"] <= 4
        assert p["decision_us_per_exit"] == pytest.approx(u["decision"] / p["segments_run_per_window"], rel=1e-2)
    assert r["policies"]["fixed"]["segments_run_per_window"] == 4  # fixed: the last exit

"""--precision auto: the per-segment rule, bench timings, and a mixed bundle that exports,
verifies, runs and benches through the public CLI."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.errors import ConfigError
from edgeexit.export.precision import PrecisionRule, choose_precision, read_bench_timings
from edgeexit.runtime.manifest import load_manifest


def test_auto_picks_per_segment_from_given_timings_and_agreements():
    rule = PrecisionRule(margin_points=1.0)
    # (fp32 us, int8 us, fp32 agreement, int8 agreement) -> expected
    cases = [
        ((11.4, 14.3, 1.0, 1.0), "fp32", "int8 is not faster"),  # LiteRT segment 0 on the Pi
        ((30.0, 12.0, 1.0, 0.995), "int8", "faster and agrees"),
        ((30.0, 12.0, 1.0, 0.985), "fp32", "outside the agreement margin"),
        ((30.0, 30.0, 1.0, 1.0), "fp32", "not faster"),  # a tie is not faster
        ((30.0, 40.0, 1.0, 0.9), "fp32", "not faster and falls outside"),
        ((30.0, 12.0, 0.998, 0.988), "int8", "faster and agrees"),  # exactly 1 point below
    ]
    picks = [choose_precision("tflite", *m, rule=rule) for m, _, _ in cases]
    assert [c.precision for c in picks] == [want for _, want, _ in cases]
    for c, (_, _, why) in zip(picks, cases):
        assert why in c.reason
    assert picks[1].fp32_us == 30.0 and picks[1].int8_agreement == 0.995
    strict = choose_precision("onnx", 30.0, 25.0, 1.0, 1.0, PrecisionRule(min_speedup=1.5))
    assert strict.precision == "fp32"
    with pytest.raises(ConfigError):
        PrecisionRule(margin_points=-1)


def _bench(tmp_path, name, backend, precisions, p50, exits=(0, 1, 2, 3)):
    r = {"backend": backend, "precision": precisions[0] if len(set(precisions)) == 1 else "mixed",
         "segment_precisions": list(precisions), "model_exits": list(exits),
         "latency_us": {"segments": [{"p50": v, "mean": v} for v in p50]}}
    path = tmp_path / name
    path.write_text(json.dumps(r))
    return path


def test_bench_timings_are_read_per_format_and_precision(tmp_path):
    a = _bench(tmp_path, "a.json", "litert", ["fp32"] * 4, [10, 20, 30, 40])
    b = _bench(tmp_path, "b.json", "litert", ["int8", "fp32", "int8", "int8"], [12, 21, 15, 20])
    t = read_bench_timings([a, b], 4, (0, 1, 2, 3))
    assert t.get("tflite", "fp32", 0) == 10 and t.get("tflite", "int8", 0) == 12
    assert t.get("tflite", "int8", 1) is None and t.get("onnx", "fp32", 0) is None
    with pytest.raises(ConfigError, match="deploys"):
        read_bench_timings([a], 2, (0, 3))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="not an `edgeexit bench --json` report"):
        read_bench_timings([bad], 4, (0, 1, 2, 3))


def test_mixed_bundle_exports_verifies_runs_and_benches(tiny_checkpoint, tmp_path):
    """Device timings that make int8 pay only for the second of three segments: the bundle mixes
    precisions (fp32 -> int8 -> fp32 boundaries), and verify, run and bench treat it like any
    other."""
    exits = (1, 2, 3)
    fp = _bench(tmp_path, "fp32.json", "litert", ["fp32"] * 3, [10, 30, 10], exits)
    i8 = _bench(tmp_path, "int8.json", "litert", ["int8"] * 3, [12, 15, 14], exits)
    out = tmp_path / "mixed"
    runner = CliRunner()
    r = runner.invoke(main, ["export", str(tiny_checkpoint), "--target", "x86_64", "--out", str(out),
                             "--formats", "tflite", "--precision", "auto", "--timings", str(fp),
                             "--timings", str(i8), "--int8-margin", "99", "--golden-samples", "8",
                             "--calibration-samples", "40", "--exits", "1,2,3", "--json"])
    assert r.exit_code == 0, r.output
    m = load_manifest(out)
    assert m.precision == "mixed"
    got = [s.artifact("tflite").precision for s in m.segments]
    assert got == ["fp32", "int8", "fp32"]
    for s, want in zip(m.segments, got):
        (c,) = s.precision_choices
        assert c.precision == want and c.format == "tflite" and "bench p50" in c.timing
        assert 0 <= c.int8_agreement <= 1 and c.fp32_agreement >= 0.9
    assert m.provenance.precision["mode"] == "auto"
    assert "int8 where" in m.provenance.precision["rule"]

    v = runner.invoke(main, ["verify", str(out), "--json"])
    assert v.exit_code == 0, v.output
    x = np.load(out / "golden.npz")["inputs"][:3]
    np.save(tmp_path / "x.npy", x)
    run = runner.invoke(main, ["run", str(out), "--input", str(tmp_path / "x.npy")])
    assert run.exit_code == 0, run.output
    assert len([ln for ln in run.output.splitlines() if ln.startswith("{")]) == 3
    b = runner.invoke(main, ["bench", str(out), "--limit", "20", "--warmup", "2", "--no-progress",
                             "--json"])
    assert b.exit_code == 0, b.output
    rep = json.loads(b.output)
    assert rep["precision"] == "mixed" and rep["segment_precisions"] == got
    assert len(rep["latency_us"]["segments"]) == 3


def test_auto_times_here_without_timings(tiny_checkpoint, tmp_path):
    from edgeexit.export.bundle import ExportConfig, export_bundle

    out = tmp_path / "auto"
    res = export_bundle(tiny_checkpoint, out, ExportConfig(
        target="x86_64", precision="auto", formats=("onnx",), golden_samples=8, exits=(1, 3),
        calibration_samples=40, timing_seconds=0.05, monolithic=False))
    m = load_manifest(out)
    assert len(m.segments) == 2
    for s in m.segments:
        (c,) = s.precision_choices
        assert c.fp32_us > 0 and c.int8_us > 0 and "measured at export" in c.timing
        assert s.artifact("onnx").precision == c.precision
    assert res.report["precision_choices"]["onnx"][0]["format"] == "onnx"
    with pytest.raises(ConfigError, match="--precision auto only"):
        ExportConfig(precision="int8", timings=("x.json",))



def test_auto_backs_off_an_int8_segment_that_costs_a_later_exit(monkeypatch):
    # the rule sees one segment at a time: here int8 features out of segment 1 leave exit 2 at
    # 90% whichever file segment 2 has, so the chain is chosen again with segment 2, then
    # segment 1, fp32
    from edgeexit.export import write

    passes = []
    int8 = choose_precision("tflite", 30.0, 12.0, 1.0, 1.0)  # what the rule alone picks

    def fake_pass(*args):
        forced = args[-1]
        passes.append(sorted(forced))
        choices = [dataclasses.replace(int8, precision="fp32", reason=forced[i]) if i in forced
                   else int8 for i in range(3)]
        agreement = [1.0, 0.99, 0.9 if choices[1].precision == "int8" else 0.99]
        return [f"seg{i}" for i in range(3)], choices, agreement

    monkeypatch.setattr(write, "_chain_auto_pass", fake_pass)
    specs = [SimpleNamespace(exit=k) for k in range(3)]
    plan = SimpleNamespace(min_agreement=0.97)
    _, choices = write.write_chain_auto(SimpleNamespace(specs=specs), "tflite", plan)
    assert [c.precision for c in choices] == ["int8", "fp32", "fp32"]
    assert passes == [[], [2], [1, 2]]
    assert "left exit 2 (segment 2) at 90.0% agreement, below the 97%" in choices[1].reason
    # where fp32 itself falls short there is nothing to back off (validate then refuses the chain)
    fp32 = choose_precision("tflite", 10.0, 12.0, 1.0, 1.0)
    monkeypatch.setattr(write, "_chain_auto_pass", lambda *a: (["seg0"], [fp32], [0.5]))
    _, choices = write.write_chain_auto(SimpleNamespace(specs=specs[:1]), "tflite", plan)
    assert choices == [fp32]

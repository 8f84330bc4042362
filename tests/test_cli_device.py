"""The export / verify / run / bench / targets commands, end to end on a tiny bundle."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.errors import ExitStatus


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


@pytest.fixture(scope="module")
def golden_x(bundle_dir):
    with np.load(bundle_dir / "golden.npz") as z:
        return z["inputs"]


def test_export_prints_parity_and_thresholds(tiny_checkpoint, tmp_path):
    out = tmp_path / "b"
    r = run("export", tiny_checkpoint, "--target", "rpi4", "--out", out, "--formats", "onnx",
            "--no-monolithic", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{"):])
    assert d["target"] == "rpi4" and d["precision"] == "fp32" and d["formats"] == ["onnx"]
    assert len(d["policy"]["thresholds"]) == 3
    assert (out / "manifest.json").is_file() and (tmp_path / "b.tar.gz").is_file()
    r = run("bench", out, "--limit", "5")
    assert r.exit_code == 1 and "monolithic" in r.output


def test_verify_ok_then_mismatch(bundle_dir, tmp_path):
    r = run("verify", bundle_dir)
    assert r.exit_code == 0, r.output
    assert "golden[onnxruntime]" in r.output and "golden[litert]" in r.output
    assert r.output.strip().endswith("verified")
    bad = tmp_path / "b"
    shutil.copytree(bundle_dir, bad)
    # a different model file with a matching hash still fails the golden replay
    with np.load(bad / "golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["logits_2"] = arrays["logits_2"] + 1.0
    np.savez(bad / "golden.npz", **arrays)
    m = json.loads((bad / "manifest.json").read_text())
    from edgeexit.runtime.manifest import sha256_file

    m["golden"]["sha256"] = sha256_file(bad / "golden.npz")
    (bad / "manifest.json").write_text(json.dumps(m))
    r = run("verify", bad, "--json")
    assert r.exit_code == ExitStatus.MISMATCH
    report = json.loads(r.output)
    assert not report["ok"]
    assert [c["ok"] for c in report["checks"] if c["check"].startswith("golden")] == [False, False]
    # a tampered file fails the hash check
    (bad / "segment_0.onnx").write_bytes(b"not a model")
    r = run("verify", bad)
    assert r.exit_code == ExitStatus.MISMATCH and "sha256" in r.output and "MISMATCH" in r.output


@pytest.mark.parametrize("fmt", ["npy", "csv", "stdin", "batch"])
def test_run_prints_json_lines(bundle_dir, golden_x, tmp_path, fmt):
    x = golden_x[:3]
    stdin = None
    if fmt in ("npy", "batch"):
        path = tmp_path / "x.npy"
        np.save(path, x)
    elif fmt == "csv":
        path = tmp_path / "x.csv"
        np.savetxt(path, x.reshape(3, -1), delimiter=",")
    else:
        path = "-"
        stdin = "\n".join(",".join(f"{v:.9g}" for v in row) for row in x.reshape(3, -1))
    extra = ["--batch"] if fmt == "batch" else []
    r = run("run", bundle_dir, "--input", path, "--backend", "onnxruntime", *extra, input=stdin)
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.splitlines() if line.startswith('{"index"')]
    assert [d["index"] for d in lines] == [0, 1, 2]
    for d in lines:
        assert d["label"] in ("N", "S", "V", "F", "Q") and 0 <= d["exit"] <= 3
        assert abs(sum(d["probs"]) - 1) < 1e-4
        if fmt != "batch":
            assert len(d["segment_us"]) == d["exit"] + 1


def test_run_rejects_bad_input(bundle_dir, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 6, 100), np.float32))
    r = run("run", bundle_dir, "--input", path)
    assert r.exit_code == 1 and "Error:" in r.output and "[N, 6, 256]" in r.output
    nan = np.zeros((1, 6, 256), np.float32)
    nan[0, 0, 0] = np.inf
    np.save(path, nan)
    r = run("run", bundle_dir, "--input", path)
    assert r.exit_code == 1 and "NaN/Inf" in r.output
    r = run("run", bundle_dir, "--input", "-", input="1,2,3\n")
    assert r.exit_code == 1 and "needs 1536" in r.output


def test_bench_reports_ratios_side_by_side(bundle_dir):
    r = run("bench", bundle_dir, "--limit", "40", "--warmup", "2", "--backend", "litert",
            "--threads", "1", "--json", "--no-progress")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{"):])
    assert d["samples"] == 40 and d["backend"] == "litert" and d["threads"] == 1
    assert sum(d["exit_histogram"]) == 40 and len(d["latency_us"]["segments"]) == 4
    for path in ("policy", "all_exits", "monolithic"):
        s = d["latency_us"][path]
        assert 0 < s["p50"] <= s["p95"] <= s["p99"]
    assert d["ratios"]["all_exits_vs_monolithic"] > 0
    assert 0 <= d["accuracy"]["policy"] <= 1 and len(d["accuracy"]["exits"]) == 4
    # --meter auto: no meter on a CI host, so the CPU-time estimate, and it says so
    assert d["energy"]["kind"] in ("estimated", "measured") and d["energy"]["chosen"]
    assert d["energy"]["kind"] == "measured" or "ESTIMATE" in d["energy"]["label"]
    r = run("bench", bundle_dir, "--limit", "10", "--warmup", "1", "--no-progress")
    assert r.exit_code == 0 and "all exits / monolithic" in r.output


def test_targets_lists_presets_and_names_unknown_ones():
    r = run("targets")
    assert r.exit_code == 0
    for t in ("rpi4", "rpi5", "rpi3", "jetson-nano", "x86_64"):
        assert t in r.output
    r = run("targets", "rpi4", "--json")
    assert json.loads(r.output)["cpu"]["dotprod"] is False
    r = run("targets", "rpi9")
    assert r.exit_code == 1 and "rpi4" in r.output and "Traceback" not in r.output


def test_verify_holds_the_monolithic_graph_to_its_own_tolerance(bundle_dir, tmp_path):
    # an int8 monolithic graph is quantized as a whole: its error is not the segment chain's, so
    # export records a tolerance for it (older bundles without one use the chain's)
    m = json.loads((bundle_dir / "manifest.json").read_text())
    assert set(m["golden"]["monolithic_tolerance"]) == set(m["golden"]["tolerance"])
    bad = tmp_path / "b"
    shutil.copytree(bundle_dir, bad)
    m["golden"]["monolithic_tolerance"] = {f: 1e-12 for f in m["golden"]["tolerance"]}
    (bad / "manifest.json").write_text(json.dumps(m))
    report = json.loads(run("verify", bad, "--json").output)
    ok = {c["check"].split("[")[0]: c["ok"] for c in report["checks"] if "[" in c["check"]}
    assert ok["golden"] and not ok["monolithic"]
    assert [c["tolerance"] for c in report["checks"] if c["check"].startswith("monolithic")] == [1e-12] * 2
    del m["golden"]["monolithic_tolerance"]
    (bad / "manifest.json").write_text(json.dumps(m))
    assert run("verify", bad).exit_code == 0

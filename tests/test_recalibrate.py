"""`edgeexit calibrate`: a bundle's thresholds recalibrated on new records, written atomically."""

import json
import shutil
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from edgeexit.calibrate import BundleCalibrationConfig, calibrate_bundle
from edgeexit.cli import main
from edgeexit.errors import DataError
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.manifest import load_manifest
from tests.conftest import make_separable


@pytest.fixture
def bundle(bundle_dir, tmp_path):
    out = tmp_path / "tiny"
    shutil.copytree(bundle_dir, out)
    with tarfile.open(tmp_path / "tiny.tar.gz", "w:gz") as tar:
        tar.add(out, arcname="tiny")
    return out


def test_recalibrates_and_rewrites_the_bundle(bundle):
    data = make_separable(n=600, seed=11)  # records the model never saw
    before = load_manifest(bundle).policy
    r = calibrate_bundle(bundle, data.x, data.y, data.groups,
                         BundleCalibrationConfig(policy="max_prob", margin=1.0,
                                                 backend="onnxruntime"),
                         source="separable(seed=11)")
    after = load_manifest(bundle)  # hashes still match: only manifest.json changed
    assert after.policy.name == "max_prob" and len(after.policy.thresholds) == 3
    cal = after.policy.calibration
    assert cal.records == 10 and cal.samples == 600 and cal.data == "separable(seed=11)"
    assert cal.feasible and cal.loss_interval[1] <= 1.0 + 1e-6
    assert cal.previous == before
    assert r["written"] and r["archive"].endswith("tiny.tar.gz")
    with tarfile.open(r["archive"]) as tar:
        packed = json.load(tar.extractfile("tiny/manifest.json"))
    assert packed["policy"]["thresholds"] == list(after.policy.thresholds)
    # the engine uses them, and on the calibration data they reproduce the calibrated accuracy
    engine = Engine.from_bundle(bundle, backend="onnxruntime")
    b = engine.predict_batch(data.x)
    assert abs(float((b.labels == data.y).mean()) - cal.accuracy) < 1e-6
    assert np.allclose(np.bincount(b.exit_index, minlength=4) / 600, cal.exit_fractions, atol=1e-6)


def test_an_ensemble_worse_than_the_final_exit_is_reported(bundle):
    data = make_separable(n=600, seed=11)
    r = calibrate_bundle(bundle, data.x, data.y, data.groups,
                         BundleCalibrationConfig(policy="ensemble", margin=0.5, weights=None,
                                                 backend="onnxruntime", dry_run=True))
    cal = r["policy"]["calibration"]
    # the committed tiny model's early exits are weak: averaging them in equally loses to the final
    # exit (by 0.07; 0.12-0.28 on tiny_checkpoint fixtures of seeds 1, 2 and 4, while seed 3's
    # ensemble wins: the test needs a model like the committed one, not any model)
    assert cal["final_accuracy"] - cal["accuracy"] > 0.005
    assert not cal["feasible"] and cal["loss_bound"] > 0.5 and cal["weights"] is None
    # weights that grow with depth come closer; the chosen ones go into the manifest
    r = calibrate_bundle(bundle, data.x, data.y, data.groups,
                         BundleCalibrationConfig(policy="ensemble", margin=0.5,
                                                 backend="onnxruntime"))
    auto = r["policy"]["calibration"]
    assert auto["loss_bound"] < cal["loss_bound"] and auto["weights"] is not None
    spec = load_manifest(bundle).policy
    assert spec.name == "ensemble" and list(spec.weights) == auto["weights"]
    engine = Engine.from_bundle(bundle, backend="onnxruntime")
    assert engine.policy.weights == spec.weights
    b = engine.predict_batch(data.x)
    assert abs(float((b.labels == data.y).mean()) - auto["accuracy"]) < 1e-6


def test_dry_run_and_bad_data(bundle):
    data = make_separable(n=200, seed=12)
    text = (bundle / "manifest.json").read_text()
    r = calibrate_bundle(bundle, data.x, data.y, None,
                         BundleCalibrationConfig(dry_run=True, backend="onnxruntime"))
    assert not r["written"] and (bundle / "manifest.json").read_text() == text
    assert r["policy"]["calibration"]["records"] == 0  # no record ids: the bound over beats
    onnx = BundleCalibrationConfig(backend="onnxruntime")
    with pytest.raises(DataError, match="class indices"):
        calibrate_bundle(bundle, data.x, data.y + 5, None, onnx)
    with pytest.raises(DataError, match="labels"):
        calibrate_bundle(bundle, data.x, data.y[:-1], None, onnx)
    assert (bundle / "manifest.json").read_text() == text


def test_cli_calibrate(bundle, tmp_path):
    npz = tmp_path / "new.npz"
    make_separable(n=400, seed=13).save_npz(npz)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"latency_us": {"segments": [{"mean": v} for v in (5, 3, 3, 9)]}}))
    r = CliRunner().invoke(main, ["calibrate", str(bundle), "--data", str(npz), "--bench", str(bench),
                                  "--margin", "1", "--backend", "onnxruntime", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{"):])
    assert d["policy"]["calibration"]["cost_unit"].startswith("us")
    assert d["policy"]["calibration"]["full_cost"] == 20.0
    # a second recalibration keeps one step of history, not a chain
    r = CliRunner().invoke(main, ["calibrate", str(bundle), "--data", str(npz), "--margin", "1",
                                  "--backend", "onnxruntime"])
    assert r.exit_code == 0, r.output
    prev = load_manifest(bundle).policy.calibration.previous
    assert prev.calibration.cost_unit.startswith("us") and prev.calibration.previous is None
    # a signed bundle: the signature covered the old manifest, so it goes (and the user is told)
    key = tmp_path / "key"
    assert CliRunner().invoke(main, ["keygen", "--out", str(key)]).exit_code == 0
    assert CliRunner().invoke(main, ["sign", str(bundle), "--key", str(key)]).exit_code == 0
    assert (bundle / "manifest.sig").exists()
    r = CliRunner().invoke(main, ["calibrate", str(bundle), "--data", str(npz), "--margin", "1",
                                  "--backend", "onnxruntime"])
    assert r.exit_code == 0 and "sign it again" in r.output and not (bundle / "manifest.sig").exists()
    r = CliRunner().invoke(main, ["calibrate", str(bundle), "--data", str(npz), "--records", "1"])
    assert r.exit_code == 1 and "WFDB directory only" in r.output
    bench.write_text("[]")
    r = CliRunner().invoke(main, ["calibrate", str(bundle), "--data", str(npz), "--bench", str(bench)])
    assert r.exit_code == 1 and "per-segment latencies" in r.output
    r = CliRunner().invoke(main, ["calibrate", str(bundle), "--data", "synthetic"])
    assert r.exit_code == 1  # the tiny bundle takes 6-channel windows; synthetic beats have 8


def test_cross_fit_calibrates_on_every_training_record(bundle, tiny_checkpoint):
    from edgeexit.crossfit import assign_folds, cross_fit

    cf = cross_fit(tiny_checkpoint, folds=2, threads=1)
    records = sorted({str(g) for g in cf.groups})
    assert len(records) == 8 and len(cf.y) == 640  # the file's training side (2 records test)
    held = [set(f) for f in cf.folds]
    assert held[0].isdisjoint(held[1]) and sorted(held[0] | held[1]) == records
    assert all(np.allclose(p.sum(axis=1), 1.0) for p in cf.probs) and len(cf.probs) == 4
    # the folds spread the records with the most rare-class beats
    y = np.array([0, 1, 1, 1, 0, 1, 0, 0])
    g = np.array(["a", "a", "a", "b", "b", "c", "d", "d"])
    assert assign_folds(y, g, 2) == {"a": 0, "b": 1, "c": 0, "d": 1}
    r = CliRunner().invoke(main, ["calibrate", str(bundle), "--cross-fit", "2", "--checkpoint",
                                  str(tiny_checkpoint), "--threads", "1", "--margin", "1", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{"):])
    cal = load_manifest(bundle).policy.calibration
    assert cal.records == 8 and cal.samples == 640 and cal.extra["cross_fit"]["records"] == 8
    assert d["policy"]["thresholds"] == list(load_manifest(bundle).policy.thresholds)
    r = CliRunner().invoke(main, ["calibrate", str(bundle)])
    assert r.exit_code == 1 and "either --data or --cross-fit" in r.output


def test_calibrate_runs_on_a_device_install(bundle, tmp_path):
    """Recalibration needs only the runtime: torch, onnx and wfdb made unimportable."""
    import subprocess
    import sys

    npz = tmp_path / "new.npz"
    make_separable(n=300, seed=14).save_npz(npz)
    code = (
        "import sys\n"
        "for m in ('torch', 'onnx', 'onnxscript', 'wfdb', 'litert_torch'):\n"
        "    sys.modules[m] = None\n"
        "from click.testing import CliRunner\n"
        "from edgeexit.cli import main\n"
        f"r = CliRunner().invoke(main, ['-q', 'calibrate', {str(bundle)!r}, '--data', {str(npz)!r},\n"
        "                              '--backend', 'litert', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.output[r.output.index('{'):])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["policy"]["calibration"]["samples"] == 300

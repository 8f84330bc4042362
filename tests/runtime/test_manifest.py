"""The typed manifest: bundles written before it still load, verify and run, and a manifest read
and written again is the same JSON."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeexit.runtime.engine import Engine
from edgeexit.runtime.manifest import (
    BudgetSpec,
    BundleError,
    Golden,
    InputSpec,
    Manifest,
    load_manifest,
    manifest_bytes,
    with_sizes,
)
from edgeexit.runtime.verify import verify_bundle

# needs no torch or onnx: tools/aarch64_check.py runs it on the device install
pytestmark = pytest.mark.device_install

DATA = Path(__file__).resolve().parents[1] / "data"
OLD_BUNDLE = DATA / "bundle_v1"  # exported by main at 2515a11, before the manifest was typed
OLD_MANIFESTS = sorted((DATA / "manifests").glob("*.json")) + [OLD_BUNDLE / "manifest.json"]


@pytest.mark.parametrize("path", OLD_MANIFESTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_manifest_read_and_written_again_is_the_same_json(path):
    text = path.read_text()
    m = Manifest.from_dict(json.loads(text))
    assert m.to_dict() == json.loads(text)
    assert json.dumps(m.to_dict(), indent=2) + "\n" == text  # same keys, same order, same nulls


def test_sizes_a_manifest_lacks_are_added_where_add_sizes_put_them():
    text = (OLD_BUNDLE / "manifest.json").read_text()
    d = json.loads(text)
    for a in [a for s in d["segments"] for a in s["artifacts"]] + [d["golden"]]:
        del a["size"]
    m = Manifest.from_dict(d)
    assert [a.size for a in m.artifacts()] == [None] * 5
    assert manifest_bytes(with_sizes(m, OLD_BUNDLE)).decode() == text
    assert manifest_bytes(load_manifest(OLD_BUNDLE)).decode() == text


def test_a_bundle_written_before_the_typed_manifest_loads_verifies_and_runs():
    pytest.importorskip("onnxruntime")
    m = load_manifest(OLD_BUNDLE)
    assert m.model.name == "test_resnet1d" and m.model.num_exits == 4
    assert m.input.shape == (6, 256) and m.input.units == "mV" and m.input.fs == 360.0
    assert m.target.id == "x86_64" and m.target.runtime.format == "onnx"
    assert m.golden.samples == 5 and m.golden.tolerance_for("onnx") > 0
    assert m.golden.monolithic_tolerance is None  # written without a monolithic graph
    assert m.policy.calibration.margin == 0.5 and m.policy.calibration.previous is None
    assert m.provenance.data["source"].endswith("beats.npz")

    report = verify_bundle(OLD_BUNDLE)
    assert report.ok, report.checks
    assert [c["check"] for c in report.checks] == ["manifest", "sha256", "signature",
                                                   "shapes[onnxruntime]", "golden[onnxruntime]"]

    engine = Engine.from_bundle(OLD_BUNDLE, backend="onnxruntime", threads=1)
    with np.load(OLD_BUNDLE / "golden.npz") as z:
        x, golden = z["inputs"].astype(np.float32), {k: z[k] for k in z.files}
    batch = engine.predict_batch(x)
    for i, row in enumerate(x):
        r = engine.predict(row)
        want = golden[f"logits_{r.exit_index}"][i]
        assert r.label == int(want.argmax()) == batch.labels[i]
        assert r.exit_index == batch.exit_index[i]


def _old_dict() -> dict:
    return json.loads((OLD_BUNDLE / "manifest.json").read_text())


def test_keys_an_older_manifest_lacks_stay_absent_and_take_their_defaults():
    d = _old_dict()
    del d["input"]["abs_max"], d["input"]["units"], d["model"]["num_exits"]
    del d["target"]["runtime"], d["target"]["power"], d["golden"]["tolerance_rule"]
    d["policy"]["calibration"] = {"margin": 1.0}  # an early calibration record
    m = Manifest.from_dict(d)
    assert m.input.abs_max is None and m.input.units == "" and m.model.num_exits is None
    assert m.target.runtime.threads is None and m.target.power.to_dict() == {}
    assert m.policy.calibration.margin == 1.0 and m.policy.calibration.segment_costs is None
    assert m.to_dict() == d


def test_unknown_keys_are_kept_and_written_back():
    d = _old_dict()
    d["input"]["lead"] = "MLII"
    d["golden"]["note"] = {"by": "a newer exporter"}
    d["policy"]["calibration"]["cross_fit"] = {"folds": 3}
    m = Manifest.from_dict(d)
    assert m.input.extra == {"lead": "MLII"}
    assert m.policy.calibration.extra == {"cross_fit": {"folds": 3}}
    assert m.to_dict() == d
    assert list(m.to_dict()["golden"])[-1] == "note"


def test_the_monolithic_tolerance_falls_back_to_the_chains():
    g = Golden.from_dict({"file": "golden.npz", "sha256": "0" * 64, "tolerance": {"onnx": 0.01}})
    assert g.monolithic_tolerance_for("onnx") == 0.01 and g.tolerance_for("tflite") is None
    g = dataclasses.replace(g, monolithic_tolerance={"onnx": 0.5})
    assert g.monolithic_tolerance_for("onnx") == 0.5
    assert g.to_dict()["monolithic_tolerance"] == {"onnx": 0.5}  # set after reading: written


def test_a_section_built_in_code_writes_its_required_keys_and_what_differs_from_the_defaults():
    spec = InputSpec(shape=(1, 8), fs=250.0)
    assert spec.to_dict() == {"shape": [1, 8], "fs": 250.0}
    assert InputSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("section, key, value", [
    ("input", "shape", ["six", 256]),
    ("golden", "tolerance", [0.1]),
    ("model", "num_exits", "four"),
    ("target", "runtime", "onnx"),
])
def test_a_malformed_section_is_a_bundle_error(section, key, value):
    d = _old_dict()
    d[section][key] = value
    with pytest.raises(BundleError, match="malformed"):
        Manifest.from_dict(d)


def test_a_budget_policy_in_the_manifest_is_typed_and_runs(tmp_path):
    pytest.importorskip("onnxruntime")
    bundle = tmp_path / "b"
    shutil.copytree(OLD_BUNDLE, bundle)
    d = _old_dict()
    budget = {"limit": 1e9, "unit": "us", "segment_costs": [1.0, 1.0, 1.0, 1.0]}
    d["policy"] = {"name": "budget", "thresholds": None, "exit_index": None, "calibration": None,
                   "budget": budget}
    (bundle / "manifest.json").write_text(json.dumps(d, indent=2) + "\n")
    m = load_manifest(bundle)
    assert m.policy.budget == BudgetSpec(limit=1e9, segment_costs=(1.0, 1.0, 1.0, 1.0))
    assert m.policy.to_dict() == d["policy"]
    engine = Engine.from_bundle(bundle, backend="onnxruntime", threads=1)
    assert engine.policy.name == "budget" and engine.policy.describe()["limit"] == 1e9
    with np.load(bundle / "golden.npz") as z:
        r = engine.predict(z["inputs"][0].astype(np.float32))
    assert r.exit_index == 3  # a budget never reached: every segment runs


def test_the_bundle_hash_is_sha256_without_loading_openssl():
    # the device hashes bundle files with CPython's own sha256 where it has one (hashlib loads
    # libcrypto, 3.5 MB resident); the digests are sha256's, whichever implementation
    import hashlib
    import subprocess
    import sys

    from edgeexit.runtime.manifest import sha256

    data = bytes(range(256)) * 1000
    assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
    code = ("import sys; from edgeexit.runtime.manifest import sha256; "
            "d = sha256(b'abc').hexdigest(); print(d, '_hashlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    digest, loaded = out.stdout.split()
    assert digest == hashlib.sha256(b"abc").hexdigest()
    has_builtin = any(_importable(m) for m in ("_sha2", "_sha256"))
    assert loaded == str(not has_builtin)


def _importable(name):
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True

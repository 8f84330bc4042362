"""Segment files whose shapes do not chain (issue 13, item 4): ``verify`` checks the shapes of the
files themselves and always prints its report (exit status 3); ``run`` / ``Engine.from_bundle``
refuse such a bundle at load, before any window is answered, with a one-line error."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.errors import ExitStatus
from edgeexit.runtime.backends import get_backend
from edgeexit.runtime.engine import Engine, ShapeError, shape_problems
from edgeexit.runtime.manifest import BundleError, read_manifest, sha256_file
from edgeexit.runtime.verify import verify_bundle

BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(
    not get_backend(name).available(), reason=f"{name} not installed")) for name in ("onnxruntime", "litert")]
EXT = {"onnxruntime": "onnx", "litert": "tflite"}


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _edit_manifest(root, change):
    m = json.loads((root / "manifest.json").read_text())
    change(m)
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def shapes(bundle_dir):
    """Per-sample feature shapes of the bundle's segments 0 and 1 (as the manifest lists them)."""
    segs = read_manifest(bundle_dir).segments
    assert segs[0].output_shapes[0] != segs[1].output_shapes[0]  # the swap below must break the chain
    return segs[0].output_shapes[0], segs[1].output_shapes[0]


@pytest.fixture(scope="module")
def swapped(bundle_dir, tmp_path_factory):
    """segment_1.* replaced with segment_2.* (it takes segment 1's features, not segment 0's),
    sha256 and size re-fixed: the manifest is consistent, the files do not chain."""
    out = tmp_path_factory.mktemp("swapped") / "b"
    shutil.copytree(bundle_dir, out)
    for ext in EXT.values():
        shutil.copy(out / f"segment_2.{ext}", out / f"segment_1.{ext}")

    def refix(m):
        for a in m["segments"][1]["artifacts"]:
            a["sha256"] = sha256_file(out / a["file"])
            a["size"] = (out / a["file"]).stat().st_size

    _edit_manifest(out, refix)
    return out


@pytest.fixture(scope="module")
def windows(bundle_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("x") / "x.npy"
    with np.load(bundle_dir / "golden.npz") as z:
        np.save(path, z["inputs"][:4])
    return path


def _dims(shape):
    return "[" + ", ".join(map(str, shape)) + "]"


@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_refuses_files_that_do_not_chain(swapped, shapes, backend):
    ext = EXT[backend]
    with pytest.raises(ShapeError) as e:
        Engine.from_bundle(swapped, backend=backend)
    msg = str(e.value)
    assert "\n" not in msg and "re-export" in msg and str(swapped) in msg
    assert (f"segment_1.{ext} takes {_dims(shapes[1])} but segment_0.{ext} returns features "
            f"{_dims(shapes[0])}") in msg
    assert isinstance(e.value, BundleError) and len(e.value.problems) >= 2


def test_run_refuses_at_load_before_any_window(swapped, windows, shapes):
    for extra in ((), ("--batch",)):
        r = cli("run", swapped, "--input", windows, "--backend", "onnxruntime", *extra)
        assert r.exit_code == 1
        assert '"index"' not in r.stdout  # no window answered
        err = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert len(err) == 1 and "segment_1.onnx" in err[0] and _dims(shapes[0]) in err[0]
        assert "re-export" in err[0]


def test_verify_library_records_each_shape_problem(swapped):
    report = verify_bundle(swapped, backend="onnxruntime")
    assert not report.ok
    by = {}
    for c in report.checks:
        by.setdefault(c["check"], []).append(c)
    assert all(c["ok"] for name in ("manifest", "sha256") for c in by[name])
    bad = by["shapes[onnxruntime]"]
    assert bad and not any(c["ok"] for c in bad)
    assert "segment_1.onnx" in bad[0]["error"] and "do not chain" in bad[0]["error"]
    assert [c["ok"] for c in by["golden[onnxruntime]"]] == [False]
    assert "not replayed" in by["golden[onnxruntime]"][0]["error"]


def test_verify_cli_prints_the_report_and_exits_3(swapped):
    r = cli("verify", swapped)
    assert r.exit_code == ExitStatus.MISMATCH == 3
    out = r.stdout
    assert "ok   sha256" in out and "FAIL shapes[onnxruntime]" in out and "segment_1.onnx" in out
    if get_backend("litert").available():
        assert "FAIL shapes[litert]" in out and "segment_1.tflite" in out
    assert out.strip().endswith("MISMATCH")
    r = cli("verify", swapped, "--json", "--backend", "onnxruntime")
    assert r.exit_code == 3
    d = json.loads(r.stdout)
    assert not d["ok"] and any(c["check"] == "shapes[onnxruntime]" and not c["ok"] for c in d["checks"])


def test_manifest_shapes_that_do_not_chain_are_a_failed_check(bundle_dir, tmp_path):
    bad = tmp_path / "b"
    shutil.copytree(bundle_dir, bad)
    _edit_manifest(bad, lambda m: m["segments"][1].__setitem__("input_shape", [9, 9]))
    r = cli("verify", bad, "--backend", "onnxruntime", "--json")
    assert r.exit_code == 3
    checks = json.loads(r.stdout)["checks"]
    got = {c["check"]: c for c in checks}
    assert not got["manifest"]["ok"] and "do not chain" in got["manifest"]["error"]
    assert got["sha256"]["ok"]  # the rest of the bundle was still checked
    assert not got["shapes[onnxruntime]"]["ok"] and "segment_1.onnx" in got["shapes[onnxruntime]"]["error"]
    assert "[9, 9]" in got["shapes[onnxruntime]"]["error"]
    assert not got["golden[onnxruntime]"]["ok"]
    r = cli("verify", bad)  # text: the report is printed, not a bare error
    assert r.exit_code == 3 and "FAIL manifest" in r.stdout and "ok   sha256" in r.stdout
    with pytest.raises(BundleError, match="do not chain"):
        Engine.from_bundle(bad, backend="onnxruntime")


def test_manifest_that_chains_but_disagrees_with_the_files(bundle_dir, tmp_path, shapes):
    bad = tmp_path / "b"
    shutil.copytree(bundle_dir, bad)
    wrong = [shapes[1][0] + 1, *shapes[1][1:]]

    def change(m):
        m["segments"][1]["output_shapes"][0] = wrong
        m["segments"][2]["input_shape"] = wrong

    _edit_manifest(bad, change)
    with pytest.raises(ShapeError, match=r"segment_1\.onnx returns feat_1 .* the manifest lists"):
        Engine.from_bundle(bad, backend="onnxruntime")
    r = cli("verify", bad, "--backend", "onnxruntime")
    assert r.exit_code == 3 and r.stdout.count("FAIL shapes[onnxruntime]") == 2


def test_a_good_bundle_passes_the_shape_check(bundle_dir):
    report = verify_bundle(bundle_dir, backend="onnxruntime")
    assert report.ok
    assert [c for c in report.checks if c["check"] == "shapes[onnxruntime]"] == [
        {"check": "shapes[onnxruntime]", "ok": True, "files": 4}]


def test_shape_problems_unit(bundle_dir):
    m = read_manifest(bundle_dir)
    segs = m.segments

    def sess(seg, takes=None, returns=None, names=None):
        return SimpleNamespace(input_shape=seg.input_shape if takes is None else takes,
                               output_names=names or seg.output_names,
                               output_shapes=seg.output_shapes if returns is None else returns)

    files = [f"s{k}" for k in range(len(segs))]
    good = [sess(s) for s in segs]
    assert shape_problems(m, good, files) == []
    # symbolic (unknown) dimensions and sessions that report no shapes are not flagged
    unknown = [sess(s, takes=(None,) * len(s.input_shape)) for s in segs]
    assert shape_problems(m, unknown, files) == []
    assert shape_problems(m, [SimpleNamespace(output_names=s.output_names) for s in segs], files) == []
    # a first file that does not take the bundle's input
    first = [sess(segs[0], takes=(1, 2)), *good[1:]]
    (p,) = shape_problems(m, first, files)
    assert p.startswith("segments do not chain: s0 takes [1, 2] but the bundle's input is")
    # a file with the wrong number of outputs
    short = [sess(segs[0], names=("logits_0",), returns=((len(m.classes),),)), *good[1:]]
    assert any("s0 has 1 output(s)" in p for p in shape_problems(m, short, files))

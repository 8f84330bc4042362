"""Every bad input gets a clear answer and nothing good is lost: windows outside the trained range,
NaN/Inf, unreadable files, bad CSV lines, bad options; plus property-based checks that the input
check and the manifest reader raise only their documented errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeexit.cli import main
from edgeexit.runtime.engine import RANGE_FACTOR, Engine, InputError
from edgeexit.runtime.manifest import BundleError, Manifest, load_manifest


@pytest.fixture(scope="module")
def engine(bundle_dir):
    return Engine.from_bundle(bundle_dir, backend="onnxruntime", threads=1)


@pytest.fixture(scope="module")
def windows(bundle_dir):
    with np.load(bundle_dir / "golden.npz") as z:
        return np.ascontiguousarray(z["inputs"][:6], dtype=np.float32)


def _lines(output: str) -> list[dict]:
    """The per-window JSON lines (--batch also prints its segment totals, on stderr)."""
    out = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [d for d in out if "index" in d]


def test_the_manifest_records_the_training_range(bundle_dir, windows):
    abs_max = load_manifest(bundle_dir).input.abs_max
    assert len(abs_max) == windows.shape[1] and all(v > 0 for v in abs_max)
    assert np.abs(windows).max(axis=(0, 2)).tolist() <= [v * RANGE_FACTOR for v in abs_max]


def test_windows_far_outside_the_trained_range_are_refused(engine, windows):
    for scale in (1e30, 1000.0):  # absurd, and uV given for mV
        x = windows[0] * np.float32(scale)
        with pytest.raises(InputError, match="beyond .*largest magnitude.*check the units"):
            engine.predict(x)
    x = windows[0].copy()
    x[0, :128], x[0, 128:] = 3e38, -3e38
    with pytest.raises(InputError, match="beyond"):
        engine.predict(x)
    with pytest.raises(InputError, match="window 2: .*beyond"):
        engine.predict_batch(np.stack([windows[0], windows[1], x]))
    assert engine.predict(windows[0] * np.float32(2.0)).label >= 0  # louder, still plausible


def test_run_answers_every_good_window_and_reports_each_bad_one(bundle_dir, windows, tmp_path):
    x = windows.copy()
    x[1, 0, 5] = np.nan
    x[3] *= np.float32(1e6)
    np.save(tmp_path / "mixed.npy", x)
    for extra in ([], ["--batch"]):
        r = CliRunner().invoke(main, ["run", str(bundle_dir), "--input", str(tmp_path / "mixed.npy"),
                                      "--backend", "onnxruntime", *extra])
        assert r.exit_code == 1
        lines = _lines(r.output)
        assert [d["index"] for d in lines] == list(range(6))
        assert "NaN" in lines[1]["error"] and "beyond" in lines[3]["error"]
        assert all("label" in lines[i] for i in (0, 2, 4, 5))
        assert "2 of 6 windows refused (index 1, 3)" in r.output
    r = CliRunner().invoke(main, ["run", str(bundle_dir), "--input", str(tmp_path / "mixed.npy"),
                                  "--backend", "onnxruntime", "--fail-fast"])
    assert r.exit_code == 1 and [d["index"] for d in _lines(r.output)] == [0, 1]


def test_a_bad_csv_line_costs_only_its_own_window(bundle_dir, windows, tmp_path):
    rows = [",".join(f"{v:.6g}" for v in w.reshape(-1)) for w in windows[:3]]
    rows.insert(1, "1,2,oops")
    (tmp_path / "w.csv").write_text("\n".join(rows) + "\n")
    r = CliRunner().invoke(main, ["run", str(bundle_dir), "--input", str(tmp_path / "w.csv"),
                                  "--backend", "onnxruntime"])
    lines = _lines(r.output)
    assert r.exit_code == 1 and [d["index"] for d in lines] == [0, 1, 2, 3]
    assert "line 2: not a list of numbers" in lines[1]["error"]
    assert all("label" in lines[i] for i in (0, 2, 3))


@pytest.mark.parametrize("name,content,message", [
    ("empty.npy", None, "holds no windows"),
    ("zero.npy", b"", "not a readable .npy"),
    ("bad.npz", b"PK\x03\x04garbage", "not a readable .npz"),
    ("latin.csv", "N,1,2,\xe9\n".encode("latin-1"), "not UTF-8"),
])
def test_unreadable_inputs_end_in_one_line(bundle_dir, tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros((0, 6, 256), np.float32))
    else:
        path.write_bytes(content)
    r = CliRunner().invoke(main, ["run", str(bundle_dir), "--input", str(path),
                                  "--backend", "onnxruntime"])
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output
    assert "Aborted" not in r.output
    if name in ("latin.csv", "bad.npz"):
        why = "not UTF-8" if name == "latin.csv" else "cannot read"
        for cmd in (["data", "inspect", str(path)],
                    ["train", "--data", str(path), "--out", str(tmp_path / "t")],
                    ["bench", str(bundle_dir), "--data", str(path), "--backend", "onnxruntime"]):
            r = CliRunner().invoke(main, cmd)
            assert r.exit_code == 1 and why in r.output and "Traceback" not in r.output, cmd
            assert not (tmp_path / "t").exists()


def test_bad_thread_counts_are_refused(tmp_path, bundle_dir):
    for value in ("0", "-3"):
        r = CliRunner().invoke(main, ["train", "--threads", value, "--out", str(tmp_path / "t")])
        assert r.exit_code == 1 and "--threads" in r.output and "Traceback" not in r.output
        r = CliRunner().invoke(main, ["bench", str(bundle_dir), "--threads", value])
        assert r.exit_code == 1


def test_an_older_bundle_without_a_range_still_refuses_nan_and_accepts_huge(bundle_dir, windows,
                                                                          tmp_path):
    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["input"]["abs_max"]
    (old / "manifest.json").write_text(json.dumps(m))
    e = Engine.from_bundle(old, backend="onnxruntime", threads=1)
    assert e.predict(windows[0] * np.float32(1e20)).label >= 0
    x = windows[0].copy()
    x[0, 0] = np.inf
    with pytest.raises(InputError, match="NaN/Inf"):
        e.predict(x)


# -- property-based ------------------------------------------------------------------------------

_SETTINGS = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(data=st.data())
def test_the_input_check_raises_only_input_errors(engine, data):
    shape = data.draw(st.one_of(
        st.just(engine.input_shape),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9)))
    dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int16]))
    elements = st.floats(width=32, allow_nan=True, allow_infinity=True) if dtype is np.float32 else None
    x = data.draw(hnp.arrays(dtype, shape, elements=elements))
    try:
        r = engine.predict(x)
    except InputError:
        return
    assert x.shape == engine.input_shape and x.dtype == np.float32
    assert np.isfinite(x).all() and np.isfinite(r.probs).all()


_TAMPER = st.sampled_from(["drop", "none", "int", "str", "list", "dict"])


@_SETTINGS
@given(data=st.data())
def test_the_manifest_reader_raises_only_bundle_errors(bundle_dir, data):
    d = json.loads((bundle_dir / "manifest.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        node = d
        while isinstance(node, dict) and node:
            key = data.draw(st.sampled_from(sorted(node)))
            if isinstance(node[key], (dict, list)) and data.draw(st.booleans()):
                child = node[key]
                if isinstance(child, list):
                    if not child:
                        break
                    child = child[data.draw(st.integers(0, len(child) - 1))]
                if isinstance(child, dict):
                    node = child
                    continue
            how = data.draw(_TAMPER)
            if how == "drop":
                del node[key]
            else:
                node[key] = {"none": None, "int": -7, "str": "x", "list": [], "dict": {}}[how]
            break
    try:
        Manifest.from_dict(d)
    except BundleError:
        pass

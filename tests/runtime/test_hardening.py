"""Field hardening (issue 32): each case a careless or hostile user tried, refused or answered as
documented, in one line, with no traceback. Crafted archives are built here."""

import hashlib
import io
import json
import shutil
import stat
import tarfile
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.fileio import pack_directory
from edgeexit.runtime.archive import ArchiveLimits, extract_archive
from edgeexit.runtime.install import BUNDLES, CURRENT, PREVIOUS, install_bundle, rollback, status
from edgeexit.runtime.manifest import MANIFEST, BundleError, load_manifest, parse_manifest
from edgeexit.runtime.signing import keygen, sign_bundle
from edgeexit.runtime.verify import read_golden, verify_bundle
from tests.conftest import REPO

BUNDLE = REPO / "tests" / "data" / "bundle_v1"  # ONNX only: installs check it with onnxruntime


def _copy(tmp_path, version=1, name="b"):
    root = tmp_path / "src" / f"v{version}" / name
    shutil.copytree(BUNDLE, root)
    _edit(root, lambda d: d.update(bundle_version=version))
    return root


def _edit(root, change):
    d = json.loads((root / MANIFEST).read_text())
    change(d)
    (root / MANIFEST).write_text(json.dumps(d, indent=2) + "\n")


def _refix_hash(root, name):
    data = (root / name).read_bytes()

    def fix(d):
        for a in [*(a for s in d["segments"] for a in s["artifacts"]), d["golden"]]:
            if a["file"] == name:
                a["sha256"], a["size"] = hashlib.sha256(data).hexdigest(), len(data)
    _edit(root, fix)


def _add_member(archive, name, data, mode=0o644):
    """``archive`` re-packed with one more member (what an attacker does to a signed bundle)."""
    with tarfile.open(archive) as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src.getmembers()]
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    members.append((info, data))
    with tarfile.open(archive, "w:gz") as tar:
        for m, d in members:
            tar.addfile(m, None if d is None else io.BytesIO(d))
    return archive


def _errors(output):
    return [ln for ln in output.splitlines() if ln.startswith("Error:")]


def _one_error(r, *why):
    errors = _errors(r.output)
    assert r.exit_code == 1 and len(errors) == 1, r.output
    assert all(w in errors[0] for w in why), errors[0]
    assert "Traceback" not in r.output and "internal error" not in r.output


# -- 1. a signed bundle installs only what it signed; a cap on the unpacked total ----------------


def test_a_signed_bundle_with_an_unsigned_extra_file_is_refused_by_name(tmp_path):
    key, pub, _ = keygen(tmp_path / "owner")
    root = _copy(tmp_path)
    sign_bundle(root, key)
    archive = _add_member(pack_directory(root, tmp_path / "b.tar.gz"), "b/run_me.sh",
                          b"#!/bin/sh\nrm -rf /\n", mode=0o755)
    into = tmp_path / "dev"
    r = CliRunner().invoke(main, ["install", str(archive), "--into", str(into), "--trusted-keys", str(pub)])
    _one_error(r, "run_me.sh", "not a file the bundle's manifest lists")
    assert not (into / CURRENT).exists() and not list(into.rglob("run_me.sh"))
    report = verify_bundle(archive)
    assert not report.ok and "run_me.sh" in report.checks[0]["error"]
    (root / "run_me.sh").write_text("echo hi\n")  # the same beside a bundle directory
    report = verify_bundle(root)
    assert not report.ok and any(c["check"] == "files" and "run_me.sh" in c["error"]
                                 for c in report.checks)


def test_the_unpacked_total_is_capped_and_listed_sizes_must_match(tmp_path):
    archive = pack_directory(_copy(tmp_path), tmp_path / "b.tar.gz")
    total = sum(p.stat().st_size for p in BUNDLE.iterdir())
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(BundleError, match="unpacks to more than"):
        extract_archive(archive, dest, ArchiveLimits(max_total_bytes=total // 2))
    assert list(dest.iterdir()) == []
    root = _copy(tmp_path, 2)
    (root / "golden.npz").write_bytes((root / "golden.npz").read_bytes() + b"\0" * 4096)
    with pytest.raises(BundleError, match="golden.npz.*bytes but the manifest lists"):
        extract_archive(pack_directory(root, tmp_path / "c.tar.gz"), dest)
    assert list(dest.iterdir()) == []
    assert ArchiveLimits().max_total_bytes <= 512 << 20  # four 500 MB members are refused


# -- 2./3./5. install and rollback switch a pair; a broken current; user files ------------------


def _serving(into):
    return load_manifest(into / CURRENT).bundle_version


def test_installing_over_a_broken_current_keeps_the_intact_previous(tmp_path):
    into = tmp_path / "dev"
    for v in (1, 2):
        install_bundle(pack_directory(_copy(tmp_path, v), tmp_path / f"v{v}.tar.gz"), into)
    seg = (into / CURRENT / "segment_1.onnx").resolve()
    seg.chmod(stat.S_IWUSR | stat.S_IRUSR)
    seg.write_bytes(seg.read_bytes()[:100])  # current (v2) damaged on the device
    r = install_bundle(pack_directory(_copy(tmp_path, 3), tmp_path / "v3.tar.gz"), into)
    assert _serving(into) == 3 and r["previous"]["bundle_version"] == 1
    assert load_manifest(into / PREVIOUS).bundle_version == 1  # intact, hash-checked
    assert status(into)["previous"]["bundle_version"] == 1
    assert len(list((into / BUNDLES).iterdir())) == 2  # the broken one removed
    rollback(into)
    assert _serving(into) == 1 and load_manifest(into / PREVIOUS).bundle_version == 3


def test_install_refuses_to_replace_a_user_file_or_write_where_it_cannot(tmp_path):
    archive = pack_directory(_copy(tmp_path), tmp_path / "b.tar.gz")
    into = tmp_path / "dev"
    into.mkdir()
    (into / CURRENT).write_text("my notes\n")
    r = CliRunner().invoke(main, ["install", str(archive), "--into", str(into)])
    _one_error(r, "not what edgeexit install writes", "current")
    assert (into / CURRENT).read_text() == "my notes\n"
    (tmp_path / "afile").write_text("x")
    for where in (tmp_path / "afile" / "dev", "/proc/edgeexit-dev"):
        r = CliRunner().invoke(main, ["install", str(archive), "--into", str(where)])
        _one_error(r, "cannot write")


# -- 7./8. manifests and golden files that crashed the reader; silent wrong answers -------------


@pytest.mark.parametrize("change, why", [
    (lambda d: d["input"].update(abs_max=[1.0]), "abs_max has 1 values for 6 channels"),
    (lambda d: d["policy"].update(thresholds=[-5, 0.3, 0.3]), "thresholds"),
    (lambda d: d["policy"].update(thresholds=[7.0, 0.3, 0.3]), "thresholds"),
    (lambda d: d.update(bundle_version=10**30), "bundle_version"),
    (lambda d: d.update(bundle_version=1e30), "bundle_version"),
    (lambda d: d["input"].update(fs=0), "input.fs"),
    (lambda d: d["input"].update(fs=float("nan")), "input.fs"),
    (lambda d: d.update(classes="NSVFQ"), "classes"),
])
def test_manifest_values_out_of_shape_or_range_are_refused(tmp_path, change, why):
    root = _copy(tmp_path)
    _edit(root, change)
    with pytest.raises(BundleError, match=why) as e:
        load_manifest(root)
    assert "\n" not in str(e.value)


def test_a_json_list_and_a_deeply_nested_manifest_are_refused_in_one_line():
    for data in (b"[1, 2]", b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(BundleError) as e:
            parse_manifest(data)
        assert "\n" not in str(e.value) and len(str(e.value)) < 400


@pytest.mark.parametrize("golden, why", [
    (b"\x93NUMPY random bytes" * 20, "not a readable golden file"),
    ({"logits_0": np.zeros((2, 5))}, "lacks 'inputs'"),
    ({"inputs": np.zeros((2, 6, 256), np.float32), **{f"logits_{k}": np.full((2, 5), np.nan)
                                                      for k in range(4)}}, "NaN or Inf"),
])
def test_a_damaged_golden_file_with_its_hash_fixed_is_reported(tmp_path, golden, why):
    root = _copy(tmp_path)
    if isinstance(golden, bytes):
        (root / "golden.npz").write_bytes(golden)
    else:
        np.savez(root / "golden.npz", **golden)
    _refix_hash(root, "golden.npz")
    with pytest.raises(BundleError, match=why):
        read_golden(root, load_manifest(root))
    r = CliRunner().invoke(main, ["verify", str(root), "--backend", "onnxruntime"])
    assert r.exit_code == 3 and why in r.output and "Traceback" not in r.output


def test_a_nan_replay_error_is_a_failure_not_ok(tmp_path, monkeypatch):
    from edgeexit.runtime.engine import Engine

    run_all = Engine.run_all

    def nan_logits(self, x):
        logits, rest = run_all(self, x)
        return [np.full_like(a, np.nan) for a in logits], rest

    monkeypatch.setattr(Engine, "run_all", nan_logits)
    report = verify_bundle(BUNDLE, backend="onnxruntime")
    golden = next(c for c in report.checks if c["check"].startswith("golden["))
    assert not report.ok and not golden["ok"] and "differs from golden.npz by nan" in golden["error"]


# -- 2./5. every command that writes: writable before work starts, never a user's file ----------


def test_unwritable_outputs_are_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    below_a_file = str(tmp_path / "afile" / "out")
    ck = str(REPO / "tests" / "data" / "fixtures" / "tiny_checkpoint.pt")
    for where in ("/proc/edgeexit-out", below_a_file):
        for cmd in (["train", "--epochs", "1", "--out", where],
                    ["bench", str(BUNDLE), "--report", where],
                    ["export", ck, "--out", where],
                    ["keygen", "--out", where],
                    ["evaluate", str(BUNDLE), "--out", where],
                    ["data", "generate", "--out", where + ".npz"]):
            _one_error(CliRunner().invoke(main, cmd), "cannot write")


def test_outputs_never_replace_a_users_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.pt").write_bytes(b"my own model")
    (mine / "report.md").write_text("my notes\n")
    for cmd in (["train", "--epochs", "1", "--out", str(mine)],
                ["evaluate", str(BUNDLE), "--out", str(mine)],
                ["bench", str(BUNDLE), "--report", str(mine)],
                ["report", str(tmp_path / "bench.json"), "--out", str(mine)]):
        _one_error(CliRunner().invoke(main, cmd), "did not write")
    (tmp_path / "data.npz").write_bytes(b"not a data set")
    _one_error(CliRunner().invoke(main, ["data", "generate", "--out", str(tmp_path / "data.npz")]),
               "was not written by data generate")
    assert (mine / "model.pt").read_bytes() == b"my own model"
    assert (tmp_path / "data.npz").read_bytes() == b"not a data set"


# -- 6. the CLI's error contract -----------------------------------------------------------------


def test_usage_errors_ctrl_c_and_bugs_end_in_one_line(tmp_path, monkeypatch):
    for cmd in (["run"], ["run", str(BUNDLE), "--bogus"], ["nope"],
                ["run", str(BUNDLE), "--stream", "x", "--fs", "nan"]):
        r = CliRunner().invoke(main, cmd)
        _one_error(r, "see '")
        assert "Usage:" not in r.output
    import edgeexit.runtime.verify as verify_module

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify_module, "verify_bundle", interrupted)
    r = CliRunner().invoke(main, ["verify", str(BUNDLE)])
    assert r.exit_code == 130 and _errors(r.output) == [
        "Error: interrupted; nothing was left half-written (run the command again)"]
    assert "Aborted" not in r.output

    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(verify_module, "verify_bundle", bug)
    r = CliRunner().invoke(main, ["verify", str(BUNDLE)])
    assert r.exit_code == 1 and len(_errors(r.output)) == 1 and "internal error" in r.output
    assert "Traceback" not in r.output


def test_the_issues_inputs_give_one_short_line_and_no_traceback(tmp_path):
    r = CliRunner().invoke(main, ["-q", "run", str(BUNDLE), "--input", "-"], input=b"\0" * 100_000)
    assert r.exit_code == 1 and max(len(ln) for ln in r.output.splitlines()) < 1000
    big = tmp_path / "big.csv"
    big.write_text(",".join(["1e300"] * (6 * 256)) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow warning fails the run
        r = CliRunner().invoke(main, ["-q", "run", str(BUNDLE), "--input", str(big)])
    assert r.exit_code == 1 and "beyond float32's range" in r.output and "NaN" not in r.output
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "b")])
    _one_error(r, "cannot read", "bad.pt")
    assert "weights_only" not in r.output


def test_a_real_process_prints_no_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "rec.hea").write_text("rec 1 360 1000\nrec.dat 16 200 16 0 0 0 0 MLII\n")  # no .dat
    for args in (["run", str(BUNDLE), "--stream", str(tmp_path / "rec")],
                 ["install", str(tmp_path / "none.tar.gz"), "--into", "/proc/x"]):
        p = subprocess.run([sys.executable, "-m", "edgeexit", *args], capture_output=True, text=True,
                           cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert len([ln for ln in p.stderr.splitlines() if ln.startswith("Error:")]) == 1, p.stderr


# -- 9. the golden replay sees a damaged int8 segment ---------------------------------------------


def _damage_int8_weights(path, fraction=0.05, shift=20):
    """Shift ``fraction`` of the largest int8 weight tensor of an ONNX file by ``shift``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    t = max(inits, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(t).astype(np.int16)
    flat = w.reshape(-1)
    idx = np.random.default_rng(0).choice(flat.size, max(1, int(fraction * flat.size)), replace=False)
    flat[idx] = np.clip(flat[idx] + shift, -128, 127)
    t.CopyFrom(numpy_helper.from_array(flat.reshape(w.shape).astype(np.int8), t.name))
    onnx.save(model, str(path))
    return t.name


def test_verify_fails_an_int8_bundle_with_one_damaged_weight_tensor(int8_bundle, tmp_path):
    report = verify_bundle(int8_bundle, backend="onnxruntime")
    own = next(c for c in report.checks if c["check"] == "own[onnxruntime]")
    assert report.ok and own["ok"] and all(e <= t for e, t in zip(own["max_abs_err"], own["tolerance"]))
    root = shutil.copytree(int8_bundle, tmp_path / "b")
    seg = next(s.artifact("onnx").file for s in load_manifest(root).segments)
    _damage_int8_weights(root / seg)
    _refix_hash(root, seg)
    report = verify_bundle(root, backend="onnxruntime")
    checks = {c["check"]: c for c in report.checks}
    assert not report.ok and not checks["own[onnxruntime]"]["ok"], checks["own[onnxruntime]"]
    assert seg in checks["own[onnxruntime]"]["error"]
    r = CliRunner().invoke(main, ["verify", str(root), "--backend", "onnxruntime"])
    assert r.exit_code == 3 and "own[onnxruntime]" in r.output


def test_one_class_labels_are_warned_about_and_a_folder_is_not_an_input_file(tmp_path, caplog):
    from edgeexit.metrics import warn_one_class

    with caplog.at_level("WARNING", logger="edgeexit"):
        warn_one_class(np.zeros(50, np.int64), "training")
        warn_one_class(np.array([0, 1, 1]), "calibration")
    assert [r.getMessage()[:45] for r in caplog.records] == ["the training labels hold 1 class only (0): th"]
    r = CliRunner().invoke(main, ["run", str(BUNDLE), "--input", str(tmp_path)])
    _one_error(r, "is a directory")


def test_an_install_directory_of_the_older_layout_is_converted_in_place(tmp_path):
    """``current``/``previous`` as direct links (before the pair): read, rolled back, converted."""
    into = tmp_path / "dev"
    for v in (1, 2):
        shutil.copytree(_copy(tmp_path, v), into / BUNDLES / f"b-v{v}")
    (into / CURRENT).symlink_to(f"{BUNDLES}/b-v2")
    (into / PREVIOUS).symlink_to(f"{BUNDLES}/b-v1")
    assert status(into)["current"]["bundle_version"] == 2
    assert status(into)["previous"]["bundle_version"] == 1
    rollback(into)
    assert _serving(into) == 1 and load_manifest(into / PREVIOUS).bundle_version == 2
    assert (into / CURRENT).readlink().as_posix() == "pair/current"
    install_bundle(pack_directory(_copy(tmp_path, 3), tmp_path / "v3.tar.gz"), into)
    assert _serving(into) == 3 and load_manifest(into / PREVIOUS).bundle_version == 1
    assert sorted(p.name for p in (into / BUNDLES).iterdir())[0] == "b-v1"  # v2 dropped: not in the pair


def test_calibrate_checks_its_outputs_before_reading_data(tmp_path):
    (tmp_path / "mine.png").write_bytes(b"\x89PNG my own figure")
    r = CliRunner().invoke(main, ["calibrate", str(BUNDLE), "--data", str(tmp_path / "none.npz"),
                                  "--pareto-plot", str(tmp_path / "mine.png")])
    _one_error(r, "was not written by calibrate")
    assert (tmp_path / "mine.png").read_bytes() == b"\x89PNG my own figure"

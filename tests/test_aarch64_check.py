"""tools/aarch64_check.py on the host, without a chroot: the device-side tests it selects import
without torch, it stages bundles with the runtime's safe extraction, and the project commands it
runs in the chroot, run here in their place, pass its output checks."""

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgeexit.runtime.archive import pack_directory
from tests.conftest import REPO

HOST_ONLY = ("torch", "onnx", "onnxscript", "tensorflow", "torch_pruning", "litert_torch")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("aarch64_check", REPO / "tools" / "aarch64_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_device_tests_are_collected_with_torch_and_onnx_unimportable(tool):
    files = tool.device_test_files()
    assert "tests/test_imports.py" in files and "tests/runtime/test_policy.py" in files
    assert "tests/runtime/test_engine.py" not in files  # trains and exports with torch
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in HOST_ONLY)
    code = (f"import sys; {block}; import pytest; "
            f"sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', '-m', "
            f"{tool.DEVICE_TEST_MARKER!r}, *{files!r}]))")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert int(p.stdout.rsplit(" tests collected", 1)[0].split()[-1].split("/")[0]) >= 100


def test_stage_bundle_copies_a_directory_or_the_archive_and_writes_the_golden_inputs(
        tool, bundle_dir, tmp_path):
    with np.load(bundle_dir / "golden.npz") as z:
        inputs = z["inputs"]
    (tmp_path / "dir").mkdir()
    name, n = tool.stage_bundle(bundle_dir, tmp_path / "dir")
    assert (name, n) == ("bundle", len(inputs))
    assert (tmp_path / "dir" / "bundle" / "manifest.json").is_file()
    np.testing.assert_array_equal(np.load(tmp_path / "dir" / "input.npy"), inputs)

    archive = pack_directory(bundle_dir, tmp_path / "tiny.tar.gz")
    (tmp_path / "tar").mkdir()
    name, n = tool.stage_bundle(archive, tmp_path / "tar")
    assert (name, n) == ("bundle.tar.gz", len(inputs))
    assert (tmp_path / "tar" / name).read_bytes() == archive.read_bytes()  # the device unpacks it
    np.testing.assert_array_equal(np.load(tmp_path / "tar" / "input.npy"), inputs)


def test_stage_bundle_refuses_an_archive_that_escapes(tool, bundle_dir, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(bundle_dir, arcname="tiny")
        tar.add(bundle_dir / "manifest.json", arcname="tiny/../../escaped.json")
    (tmp_path / "run").mkdir()
    with pytest.raises(tool.HostError, match="points outside the bundle"):
        tool.stage_bundle(evil, tmp_path / "run")
    assert not (tmp_path / "escaped.json").exists()


def test_stage_stream_copies_every_file_of_a_wfdb_record_or_a_csv(tool, tmp_path):
    rec = tmp_path / "db"
    rec.mkdir()
    for suffix in (".hea", ".dat", ".atr"):
        (rec / f"100{suffix}").write_text(suffix)
    (rec / "101.hea").write_text("another record")
    (tmp_path / "a").mkdir()
    assert tool.stage_stream(rec / "100", tmp_path / "a") == f"{tool.RUN_DIR}/stream/100"
    assert sorted(p.name for p in (tmp_path / "a" / "stream").iterdir()) == [
        "100.atr", "100.dat", "100.hea"]
    (tmp_path / "b").mkdir()
    assert tool.stage_stream(rec / "100.hea", tmp_path / "b") == f"{tool.RUN_DIR}/stream/100"
    csv = tmp_path / "ecg.csv"
    csv.write_text("0.1\n0.2\n")
    (tmp_path / "c").mkdir()
    assert tool.stage_stream(csv, tmp_path / "c") == f"{tool.RUN_DIR}/stream/ecg.csv"
    (tmp_path / "d").mkdir()
    with pytest.raises(tool.HostError, match="no .hea"):
        tool.stage_stream(rec / "102", tmp_path / "d")


def test_the_wheel_is_built_from_the_checkouts_source_files_only(tool):
    files = {str(p) for p in tool.env.source_files(REPO)}
    assert {"pyproject.toml", "setup.py", "edgeexit/__init__.py", "targets/rpi4.toml"} <= files
    assert not [f for f in files if f.startswith((".venv/", "build/", "runs/")) or "__pycache__" in f]


def test_stream_needs_a_bundle(tool, capsys):
    with pytest.raises(SystemExit) as e:
        tool.parse_args(["--smoke", "--stream", "x.csv"])
    assert e.value.code == 2 and "--stream needs --bundle" in capsys.readouterr().err


def _host_chroot(root: Path):
    """Runs a chroot command on the host instead: paths under / are read under ``root``."""
    def run(_root, cmd, *, check=True, timeout=None, cwd=None, env=None, **_):
        exe = {"edgeexit": [sys.executable, "-m", "edgeexit"], "python": [sys.executable]}
        args = [f"{root}{a}" if a.startswith("/tmp/") else a for a in cmd]
        return subprocess.run([*exe.get(args[0], [args[0]]), *args[1:]], capture_output=True,
                              text=True, timeout=timeout, cwd=cwd and f"{root}{cwd}")
    return run


@pytest.mark.slow
def test_the_bundle_commands_pass_the_tools_checks_when_run_on_the_host(
        tool, bundle_dir, tmp_path, monkeypatch):
    """install, verify, run and bench as the tool runs them in the chroot (here: on the host)."""
    root = tmp_path / "root"
    run_host = root / tool.RUN_DIR.lstrip("/")
    run_host.mkdir(parents=True)
    monkeypatch.setattr(tool.env, "chroot", _host_chroot(root))
    args = tool.parse_args(["--bundle", str(pack_directory(bundle_dir, tmp_path / "tiny.tar.gz")),
                            "--backend", "onnxruntime"])
    steps = tool.Steps(root, timeout=300)
    tool.check_bundle(steps, run_host, args)
    assert [s["name"] for s in steps.items] == [
        "install", "verify[onnxruntime]", "run[onnxruntime]", "bench-energy[onnxruntime]"]
    assert all(s["ok"] for s in steps.items), json.dumps(steps.items, indent=1)[-4000:]
    with np.load(bundle_dir / "golden.npz") as z:
        assert steps.items[2]["lines"] == len(z["inputs"])
    assert (run_host / "report-onnxruntime" / "report.md").is_file()


def test_replayed_backends_come_from_verifys_report(tool, bundle_dir):
    from edgeexit.runtime.verify import verify_bundle

    assert tool.replayed_backends(verify_bundle(bundle_dir).to_dict()) == ["onnxruntime", "litert"]
    report = verify_bundle(bundle_dir, backend="litert").to_dict()
    assert tool.replayed_backends(report) == ["litert"]


def test_output_checks_flag_refused_windows_and_host_packages(tool):
    lines, err = tool.parse_output('{"index": 0, "label": "N"}\n{"index": 1, "error": "NaN"}\n',
                                   "lines", expect_lines=2)
    assert err is None and "1 windows not answered" in tool.all_answered(lines)
    assert tool.parse_output('{"index": 0, "label": "N"}\n', "lines", expect_lines=2)[1] == (
        "expected 2 JSON lines (one per input), got 1")
    assert tool.parse_output('{"ok": false}', "json")[1] == "the report says ok: false"
    assert "torch" in tool.no_host_packages([{"name": "numpy"}, {"name": "torch"}])
    assert tool.no_host_packages([{"name": "numpy"}, {"name": "onnxruntime"}]) is None
    assert tool.stream_summary([{"summary": True, "beats": 0}]) == "the stream summary counts no beats"


def test_the_check_runs_itself_under_sudo_only_when_not_root(tool, monkeypatch):
    """One README command for root (no sudo in a container) and for a user with sudo."""
    env = sys.modules["aarch64_env"]
    execs = []
    monkeypatch.setattr(env.os, "execv", lambda path, args: execs.append((path, args)))
    monkeypatch.setattr(env.os, "geteuid", lambda: 0)
    env.ensure_root("tools/aarch64_check.py", ["--smoke"])
    assert execs == []  # root: runs as it is
    monkeypatch.setattr(env.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(env.shutil, "which", lambda name: "/usr/bin/sudo" if name == "sudo" else None)
    env.ensure_root("tools/aarch64_check.py", ["--smoke"])
    assert execs == [("/usr/bin/sudo", ["/usr/bin/sudo", "--", sys.executable,
                                        "tools/aarch64_check.py", "--smoke"])]
    monkeypatch.setattr(env.shutil, "which", lambda name: None)
    with pytest.raises(env.HostError, match="no sudo here"):
        env.ensure_root("tools/aarch64_check.py", ["--smoke"])

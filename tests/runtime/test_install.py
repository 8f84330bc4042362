"""Safe install, update and rollback of bundle archives; verify of a .tar.gz and missing backends."""

import importlib.util
import io
import json
import os
import shutil
import sys
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.fileio import pack_directory
from edgeexit.runtime.backends.litert import LiteRTBackend
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.install import (
    BUNDLES,
    CURRENT,
    PAIR,
    PAIRS,
    PREVIOUS,
    ArchiveLimits,
    InstallConfig,
    extract_archive,
    install_bundle,
    rollback,
    status,
)
from edgeexit.runtime.manifest import MANIFEST, BundleError, read_manifest
from edgeexit.runtime.signing import keygen, sign_bundle
from edgeexit.runtime.verify import verify_bundle
from tests.conftest import REPO


def _archive(src, tmp_path, version, key=None, mutate=None):
    """``src`` as ``tmp_path/v{version}.tar.gz`` with that bundle_version (signed with ``key``)."""
    root = tmp_path / "src" / f"v{version}" / "tiny"
    shutil.copytree(src, root)
    d = json.loads((root / MANIFEST).read_text())
    d["bundle_version"] = version
    (root / MANIFEST).write_text(json.dumps(d, indent=2) + "\n")
    if key is not None:
        sign_bundle(root, key)
    if mutate is not None:
        mutate(root)
    return pack_directory(root, tmp_path / f"v{version}.tar.gz")


def _serves(into):
    """The installed bundle loads and answers; returns its bundle_version."""
    cur = into / CURRENT
    engine = Engine.from_bundle(cur, backend="onnxruntime", threads=1)
    with np.load(cur / "golden.npz") as z:
        engine.predict(z["inputs"][0].astype(np.float32))
    return read_manifest(cur).bundle_version


def _flip_a_byte(root):
    seg = root / "segment_2.tflite"
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x01
    seg.write_bytes(bytes(data))


def test_install_update_status_and_rollback(bundle_dir, tmp_path):
    into = tmp_path / "dev"
    r = install_bundle(_archive(bundle_dir, tmp_path, 1), into)
    assert r["installed"]["bundle_version"] == 1 and r["previous"] is None and _serves(into) == 1
    install_bundle(_archive(bundle_dir, tmp_path, 2), into)
    assert _serves(into) == 2
    s = status(into, check=True)
    assert s["current"]["bundle_version"] == 2 and s["previous"]["bundle_version"] == 1
    assert s["current"]["hashes_ok"]
    assert (into / CURRENT).is_symlink() and not (into / CURRENT).readlink().is_absolute()
    rollback(into)
    assert _serves(into) == 1 and status(into)["previous"]["bundle_version"] == 2
    r = CliRunner().invoke(main, ["rollback", "--into", str(into), "--json"])  # and forward again
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["current"]["bundle_version"] == 2 and _serves(into) == 2
    r = CliRunner().invoke(main, ["status", "--into", str(into), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["current"]["bundle_version"] == 2
    assert len(list((into / BUNDLES).iterdir())) == 2  # current and previous only


def test_a_version_not_newer_is_refused_unless_rolling_back(bundle_dir, tmp_path):
    into = tmp_path / "dev"
    install_bundle(_archive(bundle_dir, tmp_path, 5), into)
    old = _archive(bundle_dir, tmp_path, 4)
    with pytest.raises(BundleError, match="not newer than the installed 5") as e:
        install_bundle(old, into)
    assert "\n" not in str(e.value) and "--allow-rollback" in str(e.value)
    r = CliRunner().invoke(main, ["install", str(tmp_path / "v5.tar.gz"), "--into", str(into)])
    assert r.exit_code == 1 and "not newer" in r.output
    assert _serves(into) == 5
    install_bundle(old, into, InstallConfig(allow_rollback=True))
    assert _serves(into) == 4


def test_tampered_and_unsigned_bundles_are_refused_and_the_installed_one_keeps_serving(
        bundle_dir, tmp_path, monkeypatch):
    key, pub, _ = keygen(tmp_path / "owner")
    other, _, _ = keygen(tmp_path / "other")
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(pub, keys)
    cfg = tmp_path / "device.toml"
    cfg.write_text(f'trusted_keys = "{keys}"\nrequire_signature = true\n')
    monkeypatch.setenv("EDGEEXIT_CONFIG", str(cfg))
    into = tmp_path / "dev"
    install_bundle(_archive(bundle_dir, tmp_path, 1, key=key), into)
    serving = (into / CURRENT).resolve()
    cases = {
        "tampered": (_archive(bundle_dir, tmp_path, 2, key=key, mutate=_flip_a_byte), "sha256"),
        "unsigned": (_archive(bundle_dir, tmp_path, 3), "not signed"),
        "untrusted": (_archive(bundle_dir, tmp_path, 4, key=other), "not among the trusted keys"),
        "changed after signing": (_archive(bundle_dir, tmp_path, 5, key=key, mutate=lambda r: (
            r / MANIFEST).write_text((r / MANIFEST).read_text().replace('"bundle_version": 5',
                                                                         '"bundle_version": 6'))),
            "changed after signing"),
    }
    for name, (archive, why) in cases.items():
        r = CliRunner().invoke(main, ["install", str(archive), "--into", str(into)])
        errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
        assert r.exit_code == 1 and len(errors) == 1 and why in errors[0], (name, r.output)
        assert (into / CURRENT).resolve() == serving and _serves(into) == 1, name
    assert not [p for p in into.iterdir() if p.name.startswith(".staging-")]
    assert len(list((into / BUNDLES).iterdir())) == 1


def _tar(path, members):
    """Write a .tar.gz of (TarInfo, bytes or None) members."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return path


def _file(name, data=b"x"):
    return tarfile.TarInfo(name), data


def _bundle_members(src, top):
    """Every file of bundle directory ``src`` as (TarInfo, bytes) members under ``top/``."""
    return [_file(f"{top}/{p.name}", p.read_bytes()) for p in sorted(src.iterdir()) if p.is_file()]


def _special(name, kind, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


DANGEROUS = [
    (_file("../evil"), "outside the bundle"),
    (_file("tiny/../../evil"), "outside the bundle"),
    (_file("/etc/evil"), "outside the bundle"),
    (_special("tiny/link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    (_special("tiny/hard", tarfile.LNKTYPE, "tiny/manifest.json"), "is a link"),
    (_special("tiny/dev", tarfile.CHRTYPE), "device or special"),
    (_special("tiny/fifo", tarfile.FIFOTYPE), "device or special"),
    (_file("tiny/big", b"y" * 2048), "over the limit"),
]


@pytest.mark.device_install
@pytest.mark.parametrize("data_filter", [True, False], ids=["data-filter", "no-data-filter"])
@pytest.mark.parametrize("member, why", DANGEROUS)
def test_dangerous_archive_members_are_refused(tmp_path, monkeypatch, data_filter, member, why):
    _with_data_filter(monkeypatch, data_filter)
    archive = _tar(tmp_path / "bad.tar.gz", [_file("tiny/manifest.json", b"{}"), member])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(BundleError, match=why) as e:
        extract_archive(archive, dest, ArchiveLimits(max_member_bytes=1024))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "evil").exists() and list(dest.iterdir()) == []


def _with_data_filter(monkeypatch, wanted: bool) -> None:
    """Run with or without tarfile's extraction filters (Python >= 3.11.4; Raspberry Pi OS
    Bookworm's 3.11.2 has none)."""
    if not wanted and hasattr(tarfile, "data_filter"):  # make this Python look like 3.11.2
        extractall = tarfile.TarFile.extractall

        def extractall_without_filter(self, path=".", members=None, *, numeric_owner=False):
            return extractall(self, path, members, numeric_owner=numeric_owner,
                              filter="fully_trusted")

        monkeypatch.setattr(tarfile.TarFile, "extractall", extractall_without_filter)
        monkeypatch.delattr(tarfile, "data_filter")
        monkeypatch.delattr(tarfile, "FilterError")
    elif wanted and not hasattr(tarfile, "data_filter"):
        pytest.skip(f"tarfile has no extraction filters in Python {sys.version.split()[0]}")


@pytest.mark.device_install
@pytest.mark.parametrize("data_filter", [True, False], ids=["data-filter", "no-data-filter"])
def test_an_archive_unpacks_as_plain_files_owned_by_the_installer(tmp_path, monkeypatch,
                                                                  data_filter):
    _with_data_filter(monkeypatch, data_filter)
    members = _bundle_members(REPO / "tests" / "data" / "bundle_v1", "tiny")
    seg_info = next(info for info, _ in members if info.name == "tiny/segment_0.onnx")
    seg_info.mode, seg_info.uid, seg_info.uname = 0o4777, 12345, "nobody-here"
    dest = tmp_path / "out"
    dest.mkdir()
    root = extract_archive(_tar(tmp_path / "ok.tar.gz", members), dest)
    seg = root / "segment_0.onnx"
    assert root == dest / "tiny"
    assert seg.read_bytes() == (REPO / "tests" / "data" / "bundle_v1" / "segment_0.onnx").read_bytes()
    assert seg.stat().st_mode & 0o7022 == 0  # no setuid, no group/other write
    assert seg.stat().st_uid == os.geteuid()


def test_archive_total_size_member_count_and_garbage_are_refused(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", [_file(f"tiny/f{i}", b"z" * 600) for i in range(4)])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(BundleError, match="unpacks to more than"):
        extract_archive(archive, dest, ArchiveLimits(max_total_bytes=2000))
    with pytest.raises(BundleError, match="more than 3 members"):
        extract_archive(archive, dest, ArchiveLimits(max_members=3))
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(BundleError, match="not a readable .tar.gz|damaged"):
        extract_archive(tmp_path / "junk.tar.gz", dest)
    two = _tar(tmp_path / "two.tar.gz", [_file("a/manifest.json"), _file("b/manifest.json")])
    with pytest.raises(BundleError, match="one bundle folder"):
        extract_archive(two, dest)


def test_a_failed_health_check_reverts_by_itself(bundle_dir, tmp_path):
    into = tmp_path / "dev"
    install_bundle(_archive(bundle_dir, tmp_path, 1), into)

    def broken(root):
        raise BundleError("the engine would not start")

    with pytest.raises(BundleError, match="failed its health check.*reverted to") as e:
        install_bundle(_archive(bundle_dir, tmp_path, 2), into, health_check=broken)
    assert "\n" not in str(e.value)
    assert _serves(into) == 1 and len(list((into / BUNDLES).iterdir())) == 1


def test_the_next_install_removes_what_a_killed_one_left(bundle_dir, tmp_path):
    into = tmp_path / "dev"
    install_bundle(_archive(bundle_dir, tmp_path, 1), into)
    (into / ".staging-dead").mkdir()
    (into / ".staging-dead" / "half.onnx").write_bytes(b"half")
    (into / ".current.tmp-dead").symlink_to("bundles/nowhere")
    shutil.copytree(bundle_dir, into / BUNDLES / "tiny-v9-unswitched")
    r = install_bundle(_archive(bundle_dir, tmp_path, 2), into)
    assert set(r["cleaned_up"]) == {".staging-dead", ".current.tmp-dead", f"{BUNDLES}/tiny-v9-unswitched"}
    assert _serves(into) == 2
    assert sorted(p.name for p in into.iterdir()) == [".lock", BUNDLES, CURRENT, PAIR, PAIRS, PREVIOUS]


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_killing_install_and_rollback_at_random_moments_always_leaves_a_working_pair(bundle_dir,
                                                                                    tmp_path):
    r = _tool("install_kill_test").run(str(bundle_dir), kills=5, seed=1, work=str(tmp_path), mode="both")
    for mode in ("install", "rollback"):
        assert r[mode]["working_after_kill"] == 5, r[mode]["failures"]
        assert r[mode]["interrupted"] >= 1  # some kills did land inside an install / a rollback
    assert r["next_install_ok"], r["next_install_error"]
    assert r["leftovers_after_next_install"] == [] and r["bundles_kept"] == 2


def test_engine_and_verify_take_a_tar_gz(bundle_dir, tmp_path):
    archive = pack_directory(shutil.copytree(bundle_dir, tmp_path / "tiny"), tmp_path / "tiny.tar.gz")
    engine = Engine.from_bundle(archive, backend="litert", threads=1)
    with np.load(bundle_dir / "golden.npz") as z:
        engine.predict(z["inputs"][0].astype(np.float32))
    report = verify_bundle(archive)
    assert report.ok and report.bundle == str(archive) and report.unchecked == ()
    r = CliRunner().invoke(main, ["verify", str(archive)])
    assert r.exit_code == 0 and f"{archive}: verified" in r.output
    _flip_a_byte(tmp_path / "tiny")
    bad = pack_directory(tmp_path / "tiny", tmp_path / "bad.tar.gz")
    r = CliRunner().invoke(main, ["verify", str(bad)])
    assert r.exit_code == 3 and "segment_2.tflite" in r.output
    _tar(tmp_path / "evil.tar.gz", [_file("tiny/manifest.json", b"{}"), _file("../evil")])
    report = verify_bundle(tmp_path / "evil.tar.gz")
    assert not report.ok and report.checks[0]["check"] == "archive"


def test_verify_reports_formats_it_could_not_check_and_strict_fails(bundle_dir, monkeypatch):
    monkeypatch.setattr(LiteRTBackend, "available", lambda self: False)
    report = verify_bundle(bundle_dir)
    assert report.ok and report.unchecked == ("tflite",)
    skipped = [c for c in report.checks if "skipped" in c]
    assert len(skipped) == 1 and "litert is not installed" in skipped[0]["skipped"]
    r = CliRunner().invoke(main, ["verify", str(bundle_dir)])
    assert r.exit_code == 0 and "SKIP golden[litert]" in r.output and "not checked here: tflite" in r.output
    assert not verify_bundle(bundle_dir, strict=True).ok
    r = CliRunner().invoke(main, ["verify", str(bundle_dir), "--strict", "--json"])
    assert r.exit_code == 3 and json.loads(r.output)["unchecked"] == ["tflite"]


def _truncate_a_segment(root):
    seg = root / "segment_1.onnx"
    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])


def _corrupt_a_segment_and_fix_its_hash(root):
    """Weights scaled in place and the manifest's hash re-fixed: only the golden replay can tell."""
    import hashlib

    seg = root / "segment_3.tflite"
    data = bytearray(seg.read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = bytes(64)
    seg.write_bytes(bytes(data))
    d = json.loads((root / MANIFEST).read_text())
    for s in d["segments"]:
        for a in s["artifacts"]:
            if a["file"] == seg.name:
                a["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
                a["size"] = len(data)
    (root / MANIFEST).write_text(json.dumps(d, indent=2) + "\n")


def _edit(**fields):
    def mutate(root):
        d = json.loads((root / MANIFEST).read_text())
        d.update(fields)
        (root / MANIFEST).write_text(json.dumps(d, indent=2) + "\n")
    return mutate


@pytest.mark.parametrize("fault, mutate, why", [
    ("truncated segment", _truncate_a_segment, "segment_1.onnx"),
    ("corrupted segment, hash re-fixed", _corrupt_a_segment_and_fix_its_hash, "segment_3"),
    ("missing golden file", lambda r: (r / "golden.npz").unlink(), "golden.npz"),
    ("wrong schema version", _edit(schema_version=99), "schema version 99"),
    ("manifest not JSON", lambda r: (r / MANIFEST).write_text("{"), "manifest.json"),
])
def test_fault_injection_each_refused_in_one_line_and_the_old_bundle_keeps_serving(
        bundle_dir, tmp_path, fault, mutate, why):
    into = tmp_path / "dev"
    install_bundle(_archive(bundle_dir, tmp_path, 1), into)
    serving = (into / CURRENT).resolve()
    r = CliRunner().invoke(main, ["install", str(_archive(bundle_dir, tmp_path, 2, mutate=mutate)),
                                  "--into", str(into)])
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code == 1 and len(errors) == 1 and why in errors[0], (fault, r.output)
    assert (into / CURRENT).resolve() == serving and _serves(into) == 1
    assert not [p for p in into.iterdir() if p.name.startswith(".staging-")]

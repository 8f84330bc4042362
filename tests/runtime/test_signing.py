"""Signed bundles: keygen, sign, and loading only bundles signed by trusted keys."""

import json
import shutil
import stat

import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.errors import ConfigError
from edgeexit.runtime import signing
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.manifest import MANIFEST, BundleError, load_manifest, sha256_file
from edgeexit.runtime.signing import (
    SIGNATURE,
    DeviceConfig,
    SignatureError,
    TrustedKeys,
    check_signature,
    keygen,
    load_device_config,
    sign_bundle,
)
from edgeexit.runtime.verify import verify_bundle


@pytest.fixture
def bundle(bundle_dir, tmp_path):
    dst = tmp_path / "tiny"
    shutil.copytree(bundle_dir, dst)
    return dst


@pytest.fixture
def keys(tmp_path):
    """Two key pairs; the directory ``trusted`` holds only the first one's public key."""
    a, a_pub, a_fp = keygen(tmp_path / "a")
    b, _, b_fp = keygen(tmp_path / "b")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(a_pub, trusted / "a.pub")
    return {"a": a, "b": b, "a_fp": a_fp, "b_fp": b_fp, "trusted": trusted}


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_keygen_writes_a_private_key_only_its_owner_reads_and_refuses_to_overwrite(tmp_path):
    priv, pub, fp = keygen(tmp_path / "k")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert pub == tmp_path / "k.pub" and b"PUBLIC KEY" in pub.read_bytes() and len(fp) == 64
    before = priv.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        keygen(tmp_path / "k")
    assert priv.read_bytes() == before
    r = CliRunner().invoke(main, ["keygen", "--out", str(tmp_path / "k")])
    assert r.exit_code == 1 and "refusing to overwrite" in r.output


def test_sign_and_verify_round_trip(bundle, keys):
    (bundle.parent / "tiny.tar.gz").write_bytes(b"old archive")
    r = sign_bundle(bundle, keys["a"], bundle_version=7)
    assert r["key_fingerprint"] == keys["a_fp"] and r["bundle_version"] == 7
    assert (bundle.parent / "tiny.tar.gz").read_bytes()[:2] == b"\x1f\x8b"  # packed again
    m = load_manifest(bundle)
    assert m.bundle_version == 7 and all(a.size == (bundle / a.file).stat().st_size for a in m.artifacts())
    sig = check_signature(bundle, TrustedKeys.load([keys["trusted"]]))
    assert sig == {"signed": True, "key_fingerprint": keys["a_fp"], "trusted": True}
    engine = Engine.from_bundle(bundle, backend="onnxruntime", trusted_keys=[keys["trusted"]])
    assert engine.manifest.bundle_version == 7
    report = verify_bundle(bundle, trusted_keys=[keys["trusted"]])
    assert report.ok and any(c["check"] == "signature" and c["trusted"] == "yes" for c in report.checks)
    r = CliRunner().invoke(main, ["verify", str(bundle), "--trusted-keys", str(keys["trusted"]), "--json"])
    assert r.exit_code == 0, r.output
    # a signed bundle verified without trusted keys: checked against the key it names
    sig = check_signature(bundle, None)
    assert sig["signed"] and not sig["trusted"]


def test_export_records_every_file_with_its_size_and_version_1(bundle_dir):
    m = load_manifest(bundle_dir)
    assert m.bundle_version == 1
    assert all(a.size == (bundle_dir / a.file).stat().st_size for a in m.artifacts())
    assert {a.file for a in m.artifacts()} | {MANIFEST} == {p.name for p in bundle_dir.iterdir()}
    r = CliRunner().invoke(main, ["export", "--help"])
    assert "--bundle-version" in r.output


def test_cli_sign_sets_the_version(bundle, keys):
    r = CliRunner().invoke(main, ["sign", str(bundle), "--key", str(keys["a"]), "--bundle-version", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["bundle_version"] == 3
    assert json.loads((bundle / SIGNATURE).read_text())["bundle_version"] == 3


def test_tampered_segment_is_refused_with_one_line(bundle, keys):
    sign_bundle(bundle, keys["a"])
    seg = bundle / "segment_1.onnx"
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x01
    seg.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        Engine.from_bundle(bundle, trusted_keys=[keys["trusted"]])
    assert "segment_1.onnx" in _one_line(e) and "sha256" in str(e.value)


def test_manifest_changed_after_signing_is_refused(bundle, keys):
    sign_bundle(bundle, keys["a"])
    # the attacker re-fixes the hash (and size) of an altered segment in the manifest
    seg = bundle / "segment_1.onnx"
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x01
    seg.write_bytes(bytes(data))
    d = json.loads((bundle / MANIFEST).read_text())
    for a in d["segments"][1]["artifacts"]:
        if a["file"] == "segment_1.onnx":
            a["sha256"] = sha256_file(seg)
    (bundle / MANIFEST).write_text(json.dumps(d, indent=2) + "\n")
    load_manifest(bundle)  # the hashes hold now: only the signature catches it
    with pytest.raises(SignatureError) as e:
        Engine.from_bundle(bundle, trusted_keys=[keys["trusted"]])
    msg = _one_line(e)
    assert str(bundle) in msg and "changed after signing" in msg and "edgeexit sign" in msg
    assert not verify_bundle(bundle, trusted_keys=[keys["trusted"]]).ok
    assert not verify_bundle(bundle).ok  # also without trusted keys: the signature is checked


def test_untrusted_key_is_refused(bundle, keys):
    sign_bundle(bundle, keys["b"])
    with pytest.raises(SignatureError) as e:
        Engine.from_bundle(bundle, trusted_keys=keys["trusted"])
    msg = _one_line(e)
    assert keys["b_fp"][:16] in msg and "not among the trusted keys" in msg and str(keys["trusted"]) in msg
    r = CliRunner().invoke(main, ["verify", str(bundle), "--trusted-keys", str(keys["trusted"])])
    assert r.exit_code == 3 and "not among the trusted keys" in r.output


def test_unsigned_bundle_refused_where_the_device_config_requires_signatures(bundle, keys, tmp_path,
                                                                          monkeypatch, golden_input):
    cfg = tmp_path / "device.toml"
    cfg.write_text('trusted_keys = "trusted"\nrequire_signature = true\n')  # relative to the file
    monkeypatch.setenv("EDGEEXIT_CONFIG", str(cfg))
    config = load_device_config()
    assert config.require_signature and config.trusted_keys == (str(tmp_path / "trusted"),)
    with pytest.raises(SignatureError) as e:
        Engine.from_bundle(bundle)
    msg = _one_line(e)
    assert "not signed" in msg and "edgeexit sign" in msg
    r = CliRunner().invoke(main, ["run", str(bundle), "--input", golden_input])
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code == 1 and len(errors) == 1 and "not signed" in errors[0]
    sign_bundle(bundle, keys["a"])
    Engine.from_bundle(bundle)  # signed by a trusted key: accepted
    r = CliRunner().invoke(main, ["run", str(bundle), "--input", golden_input])
    assert r.exit_code == 0, r.output


@pytest.fixture
def golden_input(bundle_dir, tmp_path):
    import numpy as np

    with np.load(bundle_dir / "golden.npz") as z:
        x = z["inputs"][:2]
    path = tmp_path / "x.npy"
    np.save(path, x)
    return str(path)


def test_device_config_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEEXIT_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="not found"):
        load_device_config()
    cfg = tmp_path / "device.toml"
    cfg.write_text("require_signature = true\n")
    with pytest.raises(ConfigError, match="no trusted_keys"):
        load_device_config(cfg)
    cfg.write_text('trusted_key = "x"\n')
    with pytest.raises(ConfigError, match="unknown setting"):
        load_device_config(cfg)
    cfg.write_text("trusted_keys = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_device_config(cfg)
    monkeypatch.delenv("EDGEEXIT_CONFIG")
    monkeypatch.setattr(signing, "DEFAULT_CONFIG", str(tmp_path / "absent.toml"))
    assert load_device_config() == DeviceConfig()  # no config file: no signature required
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no \\*.pub file"):
        TrustedKeys.load(empty)


def test_older_manifests_without_sizes_or_version_still_load_and_sign_adds_them(bundle, keys):
    d = json.loads((bundle / MANIFEST).read_text())
    d.pop("bundle_version")
    d["golden"].pop("size")
    for s in [*d["segments"], d["monolithic"]]:
        for a in s["artifacts"]:
            a.pop("size")
    (bundle / MANIFEST).write_text(json.dumps(d, indent=2))
    m = load_manifest(bundle)
    assert m.bundle_version == 0 and all(a.size is None for a in m.artifacts())
    sign_bundle(bundle, keys["a"])
    m = load_manifest(bundle)
    assert m.bundle_version == 1 and all(a.size is not None for a in m.artifacts())


def test_a_size_mismatch_is_named(bundle):
    with open(bundle / "golden.npz", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="bytes but manifest.json lists"):
        load_manifest(bundle)


def test_a_malformed_signature_file_is_refused(bundle, keys):
    sign_bundle(bundle, keys["a"])
    (bundle / SIGNATURE).write_text("{not json")
    with pytest.raises(SignatureError, match="malformed"):
        Engine.from_bundle(bundle, trusted_keys=[keys["trusted"]])

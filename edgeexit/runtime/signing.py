"""Ed25519 bundle signatures and the device's trust configuration.

A signed bundle holds ``manifest.sig`` beside ``manifest.json``: a small JSON document with an
ed25519 signature over the manifest's exact bytes and the signing key's fingerprint (the sha256
of its 32 raw public-key bytes). The manifest lists every other file with its sha256 and size, so
a valid signature covers the whole bundle. ``cryptography`` is imported inside the functions that
need it: reading a bundle without signatures never loads it.

Keys: ``edgeexit keygen --out KEY`` writes the private key ``KEY`` (PKCS#8 PEM, mode 0600) and the
public key ``KEY.pub`` (SubjectPublicKeyInfo PEM). A device trusts the ``*.pub`` files of a
directory (or the key files given), either per command (``--trusted-keys``) or in its device
config (:func:`load_device_config`)::

    # /etc/edgeexit/device.toml, or the file named by $EDGEEXIT_CONFIG
    trusted_keys = "/etc/edgeexit/keys"   # a directory of *.pub files, a file, or a list of them
    require_signature = true              # default: true when trusted_keys is set

Relative paths in the config are relative to the config file.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import tomllib
from pathlib import Path

from edgeexit.errors import ConfigError
from edgeexit.runtime.atomic import atomic_write, check_writable
from edgeexit.runtime.manifest import (  # noqa: F401 (SIGNATURE re-exported)
    MANIFEST,
    MAX_BUNDLE_VERSION,
    SIGNATURE,
    BundleError,
    load_manifest,
    manifest_bytes,
    sha256,
    with_sizes,
)

log = logging.getLogger(__name__)

SIG_FORMAT = "edgeexit.signature"
CONFIG_ENV = "EDGEEXIT_CONFIG"
DEFAULT_CONFIG = "/etc/edgeexit/device.toml"


class SignatureError(BundleError):
    """A bundle is unsigned where a signature is required, or its signature does not hold."""


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ModuleNotFoundError:  # pragma: no cover - cryptography is a runtime dependency
        raise ConfigError("bundle signatures need the cryptography package: "
                          "pip install -c constraints.txt 'edgeexit[runtime]'") from None
    return serialization, ed25519


def fingerprint(public_key) -> str:
    """Hex sha256 of an ed25519 public key's 32 raw bytes."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256(raw).hexdigest()


# -- keys ----------------------------------------------------------------------------------------


def keygen(out: str | os.PathLike) -> tuple[Path, Path, str]:
    """Write a new ed25519 private key ``out`` (0600) and its public key ``out.pub``.

    Refuses to overwrite either file. Returns (private path, public path, fingerprint)."""
    serialization, ed25519 = _crypto()
    priv_path = Path(out)
    pub_path = priv_path.with_name(priv_path.name + ".pub")
    for p in (priv_path, pub_path):
        if p.exists() or p.is_symlink():
            raise ConfigError(f"{p} exists; refusing to overwrite a key (choose another --out)")
    check_writable(priv_path)
    if not priv_path.parent.is_dir():
        raise ConfigError(f"{priv_path.parent} is not a directory; create it first")
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(pub)
    fp = fingerprint(key.public_key())
    log.info("wrote private key %s and public key %s (fingerprint %s)", priv_path, pub_path, fp)
    return priv_path, pub_path, fp


def load_private_key(path: str | os.PathLike):
    serialization, ed25519 = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the signing key {path} ({e.strerror}); give the file "
                          "written by `edgeexit keygen --out KEY`") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({e}); give the file "
                          "written by `edgeexit keygen --out KEY`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an ed25519 key; make one with `edgeexit keygen --out KEY`")
    return key


def load_public_key(path: str | os.PathLike):
    serialization, ed25519 = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the public key {path} ({e.strerror})") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path} is not a PEM public key ({e}); give a KEY.pub written by "
                          "`edgeexit keygen`") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path} is not an ed25519 public key; give a KEY.pub written by `edgeexit keygen`")
    return key


@dataclasses.dataclass(frozen=True)
class TrustedKeys:
    """Public keys a device accepts, by fingerprint; ``source`` names where they came from."""

    keys: dict
    source: str

    @classmethod
    def load(cls, paths) -> TrustedKeys:
        """``paths``: a path or a list of paths, each a ``.pub`` file or a directory of them."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [Path(p) for p in paths]
        if not paths:
            raise ConfigError("no trusted keys given: give a directory of KEY.pub files")
        keys: dict = {}
        for p in paths:
            if p.is_dir():
                files = sorted(f for f in p.iterdir() if f.suffix == ".pub" and f.is_file())
                if not files:
                    raise ConfigError(f"the trusted-keys directory {p} holds no *.pub file; copy "
                                      "the signer's KEY.pub there")
            elif p.is_file():
                files = [p]
            else:
                raise ConfigError(f"trusted keys {p} not found: give a directory of KEY.pub files "
                                  "or a KEY.pub file")
            for f in files:
                k = load_public_key(f)
                keys[fingerprint(k)] = k
        return cls(keys, ", ".join(str(p) for p in paths))


# -- device config -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeviceConfig:
    """The device's signature policy (see the module docstring for the file).

    ``trusted_keys``: key files/directories (absolute); ``require_signature``: refuse unsigned
    bundles and bundles signed by any other key; ``source``: the config file, or "" for none."""

    trusted_keys: tuple[str, ...] = ()
    require_signature: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if self.require_signature and not self.trusted_keys:
            raise ConfigError(f"{self.source or 'the device config'} sets require_signature but no "
                              "trusted_keys: add trusted_keys = \"DIR\" (a directory of KEY.pub files)")

    def to_dict(self) -> dict:
        return {"trusted_keys": list(self.trusted_keys), "require_signature": self.require_signature,
                "source": self.source}

    @classmethod
    def from_dict(cls, d: dict, source: str = "", base: Path | None = None) -> DeviceConfig:
        unknown = sorted(set(d) - {"trusted_keys", "require_signature"})
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {unknown}; known: trusted_keys, "
                              "require_signature")
        keys = d.get("trusted_keys", ())
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys):
            raise ConfigError(f"{source}: trusted_keys must be a path or a list of paths")
        req = d.get("require_signature", bool(keys))
        if not isinstance(req, bool):
            raise ConfigError(f"{source}: require_signature must be true or false")
        base = base or Path.cwd()
        return cls(tuple(str(base / k) for k in keys), req, source)


def load_device_config(path: str | os.PathLike | None = None) -> DeviceConfig:
    """Read ``path``, else ``$EDGEEXIT_CONFIG``, else ``/etc/edgeexit/device.toml`` if it exists;
    no file: no signature requirement. A file named explicitly (argument or variable) must exist."""
    explicit = path or os.environ.get(CONFIG_ENV)
    p = Path(explicit or DEFAULT_CONFIG)
    if not p.is_file():
        if explicit:
            raise ConfigError(f"device config {p} not found (named by "
                              f"{'$' + CONFIG_ENV if not path else 'the option'}); create it or unset it")
        return DeviceConfig()
    try:
        d = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"device config {p} is not valid TOML ({e}); fix or remove it") from None
    return DeviceConfig.from_dict(d, str(p), p.parent)


def resolve_trust(trusted_keys=None, config: DeviceConfig | None = None) -> TrustedKeys | None:
    """The keys a bundle must be signed by: ``trusted_keys`` when given, else the device
    config's when it requires signatures, else None (no signature required)."""
    if trusted_keys is not None:
        return trusted_keys if isinstance(trusted_keys, TrustedKeys) else TrustedKeys.load(trusted_keys)
    config = load_device_config() if config is None else config
    if config.require_signature:
        return TrustedKeys.load(list(config.trusted_keys))
    return None


# -- sign / check --------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sign_bundle(bundle: str | os.PathLike, key: str | os.PathLike,
                bundle_version: int | None = None) -> dict:
    """Sign bundle directory ``bundle`` with the private key file ``key``.

    Checks the bundle first (hashes, chain); adds file sizes the manifest lacks and sets
    ``bundle_version`` when given (rewriting ``manifest.json`` atomically), then writes
    ``manifest.sig`` and packs ``BUNDLE.tar.gz`` again if it exists. Returns a report."""
    root = Path(bundle)
    if root.is_file():
        raise ConfigError(f"{root} is a file: sign the bundle directory (unpack the .tar.gz first); "
                          "BUNDLE.tar.gz beside it is packed again")
    priv = load_private_key(key)
    found = load_manifest(root)  # never sign a bundle whose files do not match their hashes
    check_writable(root / SIGNATURE, advice="copy the bundle somewhere writable and sign it there")
    if bundle_version is not None:
        if isinstance(bundle_version, bool) or not isinstance(bundle_version, int) \
                or not 1 <= bundle_version <= MAX_BUNDLE_VERSION:
            raise ConfigError(f"bundle version must be an integer in [1, 2**63), got {bundle_version!r}")
    elif found.bundle_version == 0:  # written before bundle versions: the first
        bundle_version = 1
    manifest = with_sizes(found, root)
    if bundle_version is not None:
        manifest = dataclasses.replace(manifest, bundle_version=bundle_version)
    raw = (root / MANIFEST).read_bytes()
    if manifest != found:  # sizes or the version added: the manifest signed is the one rewritten
        raw = manifest_bytes(manifest)
        atomic_write(root / MANIFEST, lambda f: f.write(raw))
    pub = priv.public_key()
    fp = fingerprint(pub)
    sig = {
        "format": SIG_FORMAT,
        "algorithm": "ed25519",
        "key_fingerprint": fp,
        "public_key": _b64(pub.public_bytes(*_raw_public())),
        "manifest_sha256": sha256(raw).hexdigest(),
        "bundle_version": manifest.bundle_version,
        "signature": _b64(priv.sign(raw)),
    }
    text = (json.dumps(sig, indent=2) + "\n").encode()
    atomic_write(root / SIGNATURE, lambda f: f.write(text))
    report = {"bundle": str(root), "signature": str(root / SIGNATURE), "key_fingerprint": fp,
              "bundle_version": manifest.bundle_version}
    archive = root.with_name(root.name + ".tar.gz")
    if archive.exists():
        from edgeexit.runtime.archive import pack_directory  # tarfile: only here

        pack_directory(root, archive)
        report["archive"] = str(archive)
    log.info("signed %s (bundle version %d) with key %s", root, manifest.bundle_version, fp[:16])
    return report


def _raw_public():
    serialization, _ = _crypto()
    return serialization.Encoding.Raw, serialization.PublicFormat.Raw


def read_signature(root: str | os.PathLike) -> dict | None:
    """The parsed ``manifest.sig`` of bundle ``root``, or None when it has none."""
    path = Path(root) / SIGNATURE
    if not path.is_file():
        return None
    try:
        sig = json.loads(path.read_text(encoding="utf-8"))
        if sig.get("format") != SIG_FORMAT or sig.get("algorithm") != "ed25519":
            raise ValueError(f"format {sig.get('format')!r}/{sig.get('algorithm')!r}")
        for k in ("key_fingerprint", "signature", "public_key"):
            if not isinstance(sig.get(k), str):
                raise TypeError(f"{k} missing")
        sig["_signature"] = base64.b64decode(sig["signature"], validate=True)
        sig["_public_key"] = base64.b64decode(sig["public_key"], validate=True)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
        raise SignatureError(f"{path} is malformed ({e}): copy the bundle again, or sign it again "
                             "with `edgeexit sign BUNDLE --key KEY`") from None
    return sig


def check_signature(root: str | os.PathLike, trusted: TrustedKeys | None) -> dict:
    """Check bundle ``root``'s signature; raise :class:`SignatureError` if it does not hold.

    ``trusted``: the keys it must be signed by (an unsigned bundle is refused); None: an unsigned
    bundle passes, and a signed one is checked against the key it names (``trusted`` False in
    the result). Returns ``{"signed", "key_fingerprint", "trusted"}``."""
    root = Path(root)
    sig = read_signature(root)
    if sig is None:
        if trusted is not None:
            raise SignatureError(
                f"{root} is not signed ({SIGNATURE} missing) and this device accepts only bundles "
                f"signed by a trusted key ({trusted.source}): sign it on the host with "
                "`edgeexit sign BUNDLE --key KEY`")
        return {"signed": False, "key_fingerprint": None, "trusted": False}
    # cryptography (6 MB resident) only where a signature is checked
    from cryptography.exceptions import InvalidSignature

    _, ed25519 = _crypto()
    fp = sig["key_fingerprint"]
    if trusted is not None:
        key = trusted.keys.get(fp)
        if key is None:
            raise SignatureError(
                f"{root} is signed by key {fp[:16]}..., which is not among the trusted keys "
                f"({trusted.source}): sign it with a trusted key, or add the signer's KEY.pub there")
    else:
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(sig["_public_key"])
        except ValueError:
            raise SignatureError(f"{root / SIGNATURE} holds an invalid public key: sign the bundle "
                                 "again") from None
        if fingerprint(key) != fp:
            raise SignatureError(f"{root / SIGNATURE}: its public key does not match its "
                                 "fingerprint: sign the bundle again")
    try:
        key.verify(sig["_signature"], (root / MANIFEST).read_bytes())
    except InvalidSignature:
        raise SignatureError(
            f"{root}: {MANIFEST} does not match its signature (changed after signing, or the "
            "signature is corrupt): copy the bundle again, or sign it again with "
            "`edgeexit sign BUNDLE --key KEY`") from None
    except OSError as e:
        raise BundleError(f"cannot read {root / MANIFEST} ({e.strerror})") from None
    return {"signed": True, "key_fingerprint": fp, "trusted": trusted is not None}

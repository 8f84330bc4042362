"""The device's atomic install / rollback of bundles (safe archives: :mod:`edgeexit.runtime.archive`).

Layout of an install directory ``DIR``::

    DIR/current  -> bundles/<name>-v<version>-<id>    the bundle that serves (a relative symlink)
    DIR/previous -> bundles/...                       the one before it, for `edgeexit rollback`
    DIR/bundles/                                      complete, verified bundles
    DIR/.staging-*                                    extraction in progress (removed when found)
    DIR/.lock                                         held (flock) by the running install

An install extracts the archive into a new staging directory (safely:
:func:`edgeexit.runtime.archive.extract_archive`),
checks it completely (hashes and sizes, signature when required, bundle version, golden replay
with every installed backend), moves it under ``bundles/`` and fsyncs it, then points ``current``
at it with one ``os.replace`` of a temporary symlink. A health check (load the engine, replay
golden) runs after the switch; if it fails ``current`` goes back by itself. ``current`` therefore
always names a complete bundle that passed verification, whatever moment the process dies at;
the next install removes what a killed one left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from edgeexit.runtime.archive import ArchiveLimits, extract_archive
from edgeexit.runtime.manifest import BundleError, load_manifest, read_manifest

log = logging.getLogger(__name__)

CURRENT = "current"
PREVIOUS = "previous"
BUNDLES = "bundles"
STAGING = ".staging-"
LOCK = ".lock"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


# -- the install directory -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InstallConfig:
    """Options of :func:`install_bundle` and :func:`rollback`.

    ``trusted_keys``: keys the bundle must be signed by (paths; None: the device config decides,
    see :mod:`edgeexit.runtime.signing`); ``allow_rollback``: accept a bundle version not newer
    than the installed one; ``strict``: fail when a format's backend is missing here."""

    trusted_keys: tuple[str, ...] | None = None
    allow_rollback: bool = False
    strict: bool = False
    threads: int | None = 1
    limits: ArchiveLimits = ArchiveLimits()


@contextlib.contextmanager
def _locked(into: Path) -> Iterator[None]:
    into.mkdir(parents=True, exist_ok=True)
    fd = os.open(into / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BundleError(f"another install is running in {into}; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _target(into: Path, link: str) -> Path | None:
    p = into / link
    if not p.is_symlink():
        return None
    return into / os.readlink(p)


def _point(into: Path, link: str, target: Path | None) -> None:
    """Atomically point ``into/link`` at ``target`` (relative), or remove it for None."""
    p = into / link
    if target is None:
        p.unlink(missing_ok=True)
    else:
        tmp = into / f".{link}.tmp-{uuid.uuid4().hex[:8]}"
        os.symlink(os.path.relpath(target, into), tmp)
        os.replace(tmp, p)
    _fsync_dir(into)


def _cleanup(into: Path) -> list[str]:
    """Remove what killed runs left: staging dirs, temporary links, unreferenced bundles."""
    removed = []
    keep = {t.resolve() for t in (_target(into, CURRENT), _target(into, PREVIOUS)) if t is not None}
    for p in into.iterdir():
        if p.name.startswith(STAGING) or (p.name.startswith(".") and ".tmp-" in p.name):
            if p.is_symlink() or p.is_file():
                p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    bundles = into / BUNDLES
    if bundles.is_dir():
        for p in bundles.iterdir():
            if p.resolve() not in keep:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                removed.append(f"{BUNDLES}/{p.name}")
    if removed:
        log.info("removed leftovers of earlier runs in %s: %s", into, ", ".join(removed))
    return removed


def check_bundle(root: Path, trusted, strict: bool = False, threads: int | None = 1) -> dict:
    """Everything a device checks before serving ``root``: manifest, hashes and sizes, the
    signature (``trusted``: keys it must be signed by, or None), and a golden replay with every
    installed backend. Raises :class:`BundleError` (one line) on the first failure."""
    from edgeexit.runtime.signing import check_signature
    from edgeexit.runtime.verify import verify_bundle

    manifest = load_manifest(root)
    sig = check_signature(root, trusted)
    report = verify_bundle(root, backend="all", threads=threads, strict=strict, trusted_keys=trusted,
                           check_signature=False)  # checked just above
    if not report.ok:
        bad = next(c for c in report.checks if not c["ok"])
        why = bad.get("error") or ", ".join(f"{k}={v}" for k, v in bad.items() if k not in ("check", "ok"))
        raise BundleError(f"{root} fails verification ({bad['check']}: {why}); it was not installed: "
                          "re-export the bundle")
    return {"bundle_version": manifest.bundle_version, "model": manifest.model.name,
            "signature": sig, "unchecked": list(report.unchecked),
            "checks": [c["check"] for c in report.checks]}


def _health_check(root: Path, trusted, threads: int | None) -> None:
    """Load the engine from the installed path and replay golden (raise on any failure)."""
    import numpy as np

    from edgeexit.runtime.engine import Engine

    engine = Engine.from_bundle(root, threads=threads, trusted_keys=trusted)
    with np.load(root / "golden.npz", allow_pickle=False) as z:
        x = z["inputs"][:4].astype(np.float32)
    for row in x:
        engine.predict(row)
    check_bundle(root, trusted, threads=threads)


def _describe(root: Path | None) -> dict | None:
    if root is None:
        return None
    try:
        m = read_manifest(root)
    except BundleError as e:
        return {"path": str(root), "error": str(e)}
    from edgeexit.runtime.signing import read_signature

    try:
        sig = read_signature(root)
    except BundleError:
        sig = None
    return {"path": str(root), "name": root.name, "bundle_version": m.bundle_version,
            "model": m.model.name, "formats": list(m.formats), "precision": m.precision,
            "key_fingerprint": None if sig is None else sig["key_fingerprint"]}


HealthCheck = Callable[[Path], None]


def _trust(config: InstallConfig):
    from edgeexit.runtime.signing import resolve_trust

    return resolve_trust(None if config.trusted_keys is None else list(config.trusted_keys))


def _switch(into: Path, new: Path, health: HealthCheck) -> tuple[Path | None, Path | None]:
    """Point ``current`` at ``new`` (``previous`` at the old current), health-check, and revert
    both links on failure. Returns the old (current, previous)."""
    old_cur, old_prev = _target(into, CURRENT), _target(into, PREVIOUS)
    if old_cur is not None:
        _point(into, PREVIOUS, old_cur)  # current and previous both name the old bundle for now
    _point(into, CURRENT, new)
    try:
        health(into / CURRENT)
    except BaseException as e:
        log.error("health check of %s failed (%s); switching back to %s", new, e, old_cur)
        _point(into, CURRENT, old_cur)
        _point(into, PREVIOUS, old_prev)
        if isinstance(e, BundleError):
            raise BundleError(f"{new.name} failed its health check after the switch ({e}); "
                              f"{'reverted to ' + old_cur.name if old_cur else 'nothing is installed'}") from None
        raise
    return old_cur, old_prev


def install_bundle(archive: str | os.PathLike, into: str | os.PathLike,
                   config: InstallConfig = InstallConfig(),
                   health_check: HealthCheck | None = None) -> dict:
    """Install bundle archive ``archive`` into the install directory ``into`` (see the module
    docstring); returns a report. Raises :class:`BundleError` (one line) and leaves the
    installed bundle serving when the archive is refused."""
    archive, into = Path(archive), Path(into)
    if not archive.is_file():
        raise BundleError(f"{archive} not found: give the BUNDLE.tar.gz written by `edgeexit export`")
    t0 = time.perf_counter()
    trusted = _trust(config)
    health = health_check or (lambda root: _health_check(root, trusted, config.threads))
    with _locked(into):
        removed = _cleanup(into)
        stage = into / f"{STAGING}{uuid.uuid4().hex[:12]}"
        stage.mkdir()
        try:
            root = extract_archive(archive, stage, config.limits)
            manifest = read_manifest(root)
            cur = _target(into, CURRENT)
            installed = None
            if cur is not None:
                try:
                    installed = read_manifest(cur).bundle_version
                except BundleError as e:
                    log.warning("the installed bundle %s is unreadable (%s); replacing it", cur, e)
            if installed is not None and manifest.bundle_version <= installed and not config.allow_rollback:
                raise BundleError(
                    f"{archive} has bundle version {manifest.bundle_version}, not newer than the "
                    f"installed {installed}; refusing it (install a newer bundle, or pass "
                    "--allow-rollback / use `edgeexit rollback` to go back on purpose)")
            checked = check_bundle(root, trusted, strict=config.strict, threads=config.threads)
            _fsync_tree(root)
            (into / BUNDLES).mkdir(exist_ok=True)
            final = into / BUNDLES / f"{root.name}-v{manifest.bundle_version}-{uuid.uuid4().hex[:8]}"
            os.rename(root, final)
            _fsync_dir(into / BUNDLES)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        try:
            old_cur, _ = _switch(into, final, health)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        _cleanup(into)
    log.info("installed %s as %s (bundle version %d)", archive, final, manifest.bundle_version)
    return {"installed": _describe(final), "previous": _describe(old_cur), "into": str(into),
            "archive": str(archive), "replaced_version": installed, **checked,
            "cleaned_up": removed, "seconds": round(time.perf_counter() - t0, 3)}


def rollback(into: str | os.PathLike, config: InstallConfig = InstallConfig(),
             health_check: HealthCheck | None = None) -> dict:
    """Switch ``current`` back to ``previous`` (checked like an install first); the bundle that
    served becomes ``previous``, so a second rollback goes forward again."""
    into = Path(into)
    trusted = _trust(config)
    health = health_check or (lambda root: _health_check(root, trusted, config.threads))
    with _locked(into):
        cur, prev = _target(into, CURRENT), _target(into, PREVIOUS)
        if prev is None or cur is None or prev.resolve() == cur.resolve():
            raise BundleError(f"{into} holds no previous bundle to roll back to; install the one "
                              "you want with `edgeexit install BUNDLE.tar.gz --allow-rollback`")
        check_bundle(prev, trusted, strict=config.strict, threads=config.threads)
        old_cur = cur
        _point(into, CURRENT, prev)
        try:
            health(into / CURRENT)
        except BaseException as e:  # noqa: BLE001 - any failure reverts; re-raised as one line
            _point(into, CURRENT, old_cur)
            raise BundleError(f"rollback to {prev.name} failed its health check ({e}); "
                              f"{old_cur.name} still serves") from None
        _point(into, PREVIOUS, old_cur)
    log.info("rolled back %s: %s -> %s", into, old_cur.name, prev.name)
    return {"into": str(into), "current": _describe(prev), "previous": _describe(old_cur)}


def status(into: str | os.PathLike, check: bool = False) -> dict:
    """What ``into`` serves (``current``) and can roll back to (``previous``); ``check``: also
    verify the current bundle's hashes."""
    into = Path(into)
    if not into.is_dir():
        raise BundleError(f"{into} is not an install directory: install a bundle with "
                          "`edgeexit install BUNDLE.tar.gz --into DIR`")
    cur, prev = _target(into, CURRENT), _target(into, PREVIOUS)
    out = {"into": str(into), "current": _describe(cur),
           "previous": None if prev is None or (cur and prev.resolve() == cur.resolve()) else _describe(prev)}
    if check and cur is not None:
        try:
            load_manifest(cur)
            out["current"]["hashes_ok"] = True
        except BundleError as e:
            out["current"]["hashes_ok"] = False
            out["current"]["error"] = str(e)
    return out

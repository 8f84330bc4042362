"""The device's atomic install / rollback of bundles (safe archives: :mod:`edgeexit.runtime.archive`).

Layout of an install directory ``DIR``::

    DIR/current  -> pair/current                      the bundle that serves
    DIR/previous -> pair/previous                     the one before it, for `edgeexit rollback`
    DIR/pair     -> pairs/<id>                        the one link a switch replaces
    DIR/pairs/<id>/current  -> ../../bundles/<name>-v<version>-<id>
    DIR/pairs/<id>/previous -> ../../bundles/...      (absent when there is none)
    DIR/bundles/                                      complete, verified bundles
    DIR/.staging-*                                    extraction in progress (removed when found)
    DIR/.lock                                         held (flock) by the running install

(all links relative). An install extracts the archive into a new staging directory (safely:
:func:`edgeexit.runtime.archive.extract_archive`: only the files its manifest lists), checks it
completely (hashes and sizes, signature when required, bundle version, golden replay with every
installed backend), moves it under ``bundles/`` and fsyncs it, writes the new
``(current, previous)`` pair as a new ``pairs/<id>`` directory, and switches both at once with
one ``os.replace`` of the ``pair`` link; a rollback switches the pair the same way. A health check
(load the engine, replay golden) runs after the switch; if it fails the old pair comes back by
itself. Whatever moment the process dies at, ``current`` and ``previous`` are the old pair or the
new one, never a mix; the next install removes what a killed one left behind. A ``current`` whose
bundle fails its hashes is dropped by the next install, which keeps an intact ``previous``.
Install directories written by older versions (``current`` a direct link) are converted on the
next install, one consistent step at a time.
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
from edgeexit.runtime.atomic import check_output_directory
from edgeexit.runtime.manifest import BundleError, load_manifest, read_manifest

log = logging.getLogger(__name__)

CURRENT = "current"
PREVIOUS = "previous"
BUNDLES = "bundles"
PAIR = "pair"
PAIRS = "pairs"
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


def _link(path: Path) -> Path | None:
    """Where symlink ``path`` points (normalised, not resolved further), or None."""
    if not path.is_symlink():
        return None
    return Path(os.path.normpath(path.parent / os.readlink(path)))


def _pair(into: Path) -> tuple[Path | None, Path | None]:
    """The (current, previous) bundle directories of ``into``; an older layout's direct links
    too. A link to nothing counts as none."""
    pair = _link(into / PAIR)
    if pair is not None:
        cur, prev = _link(pair / CURRENT), _link(pair / PREVIOUS)
    else:
        cur, prev = _link(into / CURRENT), _link(into / PREVIOUS)
    return tuple(p if p is not None and p.is_dir() else None for p in (cur, prev))  # type: ignore[return-value]


def _replace_link(into: Path, link: str, target: str) -> None:
    """Atomically make ``into/link`` a symlink to ``target`` (relative text)."""
    tmp = into / f".{link}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(target, tmp)
    os.replace(tmp, into / link)


def _set_pair(into: Path, cur: Path, prev: Path | None) -> None:
    """Point ``current`` at ``cur`` and ``previous`` at ``prev`` (None: no previous) in one
    atomic step: a new ``pairs/<id>`` directory, then one ``os.replace`` of the ``pair`` link."""
    pairs = into / PAIRS
    pairs.mkdir(exist_ok=True)
    d = pairs / uuid.uuid4().hex[:12]
    d.mkdir()
    os.symlink(os.path.relpath(cur, d), d / CURRENT)
    if prev is not None and prev.resolve() != cur.resolve():
        os.symlink(os.path.relpath(prev, d), d / PREVIOUS)
    _fsync_dir(d)
    _fsync_dir(pairs)
    _replace_link(into, PAIR, f"{PAIRS}/{d.name}")
    _fsync_dir(into)
    for old in pairs.iterdir():
        if old.name != d.name:
            shutil.rmtree(old, ignore_errors=True)


_OURS = frozenset({CURRENT, PREVIOUS, PAIR, PAIRS, BUNDLES})


def _layout(into: Path) -> None:
    """Bring ``into`` to the pair layout: on a first install, or one made by an older version
    (``current`` a direct link: the same bundles become the first pair, then the fixed links
    replace the direct ones; every step leaves the same pair serving). Refuses an entry edgeexit
    did not write (a user's file called ``current``, say)."""
    check_output_directory(into, _OURS, "install")
    for name in (CURRENT, PREVIOUS, PAIR, PAIRS, BUNDLES):
        p = into / name
        ok = p.is_symlink() if name in (CURRENT, PREVIOUS, PAIR) else (p.is_dir() and not p.is_symlink())
        if (p.exists() or p.is_symlink()) and not ok:
            raise BundleError(f"{p} is not what edgeexit install writes there; refusing to replace "
                              "it: move it away, or choose another --into")
    if not (into / PAIR).is_symlink():
        cur, prev = _pair(into)
        if cur is not None:
            _set_pair(into, cur, prev)
    for link in (CURRENT, PREVIOUS):
        if not (into / link).is_symlink() or os.readlink(into / link) != f"{PAIR}/{link}":
            _replace_link(into, link, f"{PAIR}/{link}")
    _fsync_dir(into)


def _cleanup(into: Path) -> list[str]:
    """Remove what killed runs left: staging dirs, temporary links, unreferenced pairs and
    bundles."""
    removed = []
    keep = {t.resolve() for t in _pair(into) if t is not None}
    for p in into.iterdir():
        if p.name.startswith(STAGING) or (p.name.startswith(".") and ".tmp-" in p.name):
            if p.is_symlink() or p.is_file():
                p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    active = _link(into / PAIR)
    for sub in (PAIRS, BUNDLES):
        if not (into / sub).is_dir():
            continue
        for p in (into / sub).iterdir():
            if (p == active) if sub == PAIRS else (p.resolve() in keep):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(f"{sub}/{p.name}")
    if removed:
        log.info("removed leftovers of earlier runs in %s: %s", into, ", ".join(removed))
    return removed


def _intact(root: Path | None) -> bool:
    """``root`` is a bundle whose manifest reads and whose files match their hashes."""
    if root is None:
        return False
    try:
        load_manifest(root)
    except BundleError as e:
        log.warning("the installed bundle %s is unusable (%s)", root, e)
        return False
    return True


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
    from edgeexit.runtime.verify import read_golden

    engine = Engine.from_bundle(root, threads=threads, trusted_keys=trusted)
    x = read_golden(root, engine.manifest)["inputs"][:4].astype(np.float32)
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


def _switch(into: Path, new: Path, keep: Path | None, health: HealthCheck,
            verb: str) -> tuple[Path | None, Path | None]:
    """Switch the pair to (``new``, ``keep``) in one step, health-check, and switch the old pair
    back on failure. Returns the old (current, previous)."""
    old_cur, old_prev = _pair(into)
    _set_pair(into, new, keep)
    try:
        health(into / CURRENT)
    except BaseException as e:
        log.error("health check of %s failed (%s); switching back to %s", new, e, old_cur)
        if old_cur is not None:
            _set_pair(into, old_cur, old_prev)
        else:
            (into / PAIR).unlink(missing_ok=True)
        if isinstance(e, BundleError):
            raise BundleError(f"{verb} {new.name} failed its health check after the switch ({e}); "
                              f"{'reverted to ' + old_cur.name if old_cur else 'nothing is installed'}") from None
        raise
    return old_cur, old_prev


def _stage(archive: Path, into: Path, config: InstallConfig, trusted) -> tuple[Path, dict, int | None, bool]:
    """Extract and check ``archive``, move it under ``bundles/``; returns (its directory, the
    check's report, the installed version it replaces, whether the installed bundle is intact)."""
    stage = into / f"{STAGING}{uuid.uuid4().hex[:12]}"
    stage.mkdir()
    try:
        root = extract_archive(archive, stage, config.limits)
        manifest = read_manifest(root)
        cur, _ = _pair(into)
        installed, intact = None, _intact(cur)
        if intact:
            installed = read_manifest(cur).bundle_version
        elif cur is not None:
            log.warning("the installed bundle %s is unusable; replacing it (the previous one stays)", cur)
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
    return final, checked, installed, intact


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
    check_output_directory(into, _OURS, "install")
    with _locked(into):
        _layout(into)
        removed = _cleanup(into)
        final, checked, installed, intact = _stage(archive, into, config, trusted)
        cur, prev = _pair(into)
        # an unusable current is dropped; an intact previous stays what rollback goes back to
        keep = cur if intact else (prev if _intact(prev) else None)
        try:
            old_cur, _ = _switch(into, final, keep, health, "installed")
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        _cleanup(into)
    log.info("installed %s as %s (bundle version %d)", archive, final, read_manifest(final).bundle_version)
    return {"installed": _describe(final), "previous": _describe(keep), "into": str(into),
            "archive": str(archive), "replaced_version": installed, **checked,
            "cleaned_up": removed, "seconds": round(time.perf_counter() - t0, 3)}


def rollback(into: str | os.PathLike, config: InstallConfig = InstallConfig(),
             health_check: HealthCheck | None = None) -> dict:
    """Switch ``current`` back to ``previous`` (checked like an install first); the bundle that
    served becomes ``previous``, so a second rollback goes forward again. Both links change in
    one atomic step."""
    into = Path(into)
    trusted = _trust(config)
    health = health_check or (lambda root: _health_check(root, trusted, config.threads))
    if not into.is_dir():
        raise BundleError(f"{into} is not an install directory: install a bundle with "
                          "`edgeexit install BUNDLE.tar.gz --into DIR`")
    with _locked(into):
        _layout(into)
        cur, prev = _pair(into)
        if prev is None or cur is None or prev.resolve() == cur.resolve():
            raise BundleError(f"{into} holds no previous bundle to roll back to; install the one "
                              "you want with `edgeexit install BUNDLE.tar.gz --allow-rollback`")
        check_bundle(prev, trusted, strict=config.strict, threads=config.threads)
        _switch(into, prev, cur if _intact(cur) else None, health, "rollback to")
        _cleanup(into)
    log.info("rolled back %s: %s -> %s", into, cur.name, prev.name)
    return {"into": str(into), "current": _describe(prev), "previous": _describe(_pair(into)[1])}


def status(into: str | os.PathLike, check: bool = False) -> dict:
    """What ``into`` serves (``current``) and can roll back to (``previous``); ``check``: also
    verify the current bundle's hashes."""
    into = Path(into)
    if not into.is_dir():
        raise BundleError(f"{into} is not an install directory: install a bundle with "
                          "`edgeexit install BUNDLE.tar.gz --into DIR`")
    cur, prev = _pair(into)
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

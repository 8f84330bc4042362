"""``edgeexit verify``: prove on the device that a bundle computes what the PyTorch model computed.

Checks, in order: the manifest (schema version, segment chain), the sha256 of every file, then for
every file format (or the one asked for) the shapes of the segment files themselves (each takes
what the one before returns and what the manifest lists: ``shapes[backend]``, one check per
problem) and a replay of ``golden.npz`` through the chained segments: each exit's logits must lie
within the manifest's tolerance of PyTorch's, and the monolithic reference graph's final logits
too. A failed check is recorded and the checks that can still run do (a manifest whose shapes do
not chain still has its hashes and files checked; only the replay is skipped). Runs with numpy
and the backends only.

``path`` may be a bundle directory or its ``.tar.gz`` (unpacked safely into a temporary
directory). A signed bundle's signature is checked (against the trusted keys when given or
required by the device config). A format whose backend is not installed here is reported in
``unchecked`` (its files were hash-checked but never run); ``strict`` makes that a failure.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from edgeexit.errors import EdgeExitError
from edgeexit.runtime.archive import open_bundle
from edgeexit.runtime.backends import backend_for_format, get_backend
from edgeexit.runtime.engine import (
    Engine,
    ShapeError,
    _pick_backend,
    default_threads,
    shape_problems,
)
from edgeexit.runtime.manifest import (
    GOLDEN,
    MANIFEST,
    SIGNATURE,
    BundleError,
    Manifest,
    check_chain,
    own_key,
    read_manifest,
    verify_hashes,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """``ok`` is True only if every check passed; ``checks`` lists each with its details;
    ``unchecked``: formats whose golden replay could not run (backend not installed here)."""

    bundle: str
    ok: bool
    checks: tuple[dict, ...]
    unchecked: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"bundle": self.bundle, "ok": self.ok, "checks": list(self.checks),
                "unchecked": list(self.unchecked)}


_GOLDEN_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error,
                  TypeError, IndexError, OverflowError, MemoryError, RuntimeError)


def read_golden(root: str | os.PathLike, manifest: Manifest) -> dict[str, np.ndarray]:
    """``golden.npz`` of bundle ``root``: ``inputs`` [G, *input shape] and one ``logits_{j}``
    [G, classes] per segment, all finite, plus any other arrays it holds. Raises
    :class:`BundleError` (one line) for a file that is not that, whatever its bytes are."""
    path = Path(root) / (manifest.golden.file or GOLDEN)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("not an .npz archive of arrays")
            out = {k: np.asarray(z[k]) for k in z.files}
    except _GOLDEN_ERRORS as e:
        raise BundleError(f"{path} is not a readable golden file ({type(e).__name__}: "
                          f"{str(e)[:160]}); re-export the bundle") from None
    want = {"inputs": (None, *manifest.input_shape)}
    want.update({f"logits_{k}": (None, len(manifest.classes)) for k in range(manifest.num_exits)})
    g = out["inputs"].shape[0] if "inputs" in out and out["inputs"].ndim else 0
    for key, shape in want.items():
        a = out.get(key)
        if a is None:
            raise BundleError(f"{path} lacks {key!r}; re-export the bundle")
        if a.dtype.kind not in "fiu" or a.shape != (g, *shape[1:]) or g < 1:
            raise BundleError(f"{path}: {key!r} is {a.dtype} {list(a.shape)}, expected numbers of "
                              f"shape {[g, *shape[1:]]}; re-export the bundle")
        if not np.isfinite(a).all():
            raise BundleError(f"{path}: {key!r} holds NaN or Inf; re-export the bundle")
    return out


def verify_bundle(path: str | os.PathLike, backend: str = "all", threads: int | None = None,
                  strict: bool = False, trusted_keys=None, check_signature: bool = True) -> VerifyReport:
    """Verify bundle ``path`` (a directory or a ``.tar.gz``); ``backend`` = ``all`` (every
    installed backend for the bundle's formats), ``auto`` or a backend name; ``strict``: fail if
    a format could not be replayed here; ``trusted_keys``: the bundle must be signed by one of
    these keys (None: as the device config says). Never raises for a mismatch: the report says it."""
    try:
        with open_bundle(path) as root:
            report = _verify(root, backend, threads, strict, trusted_keys, check_signature)
    except EdgeExitError as e:
        log.error("archive: FAILED %s", e)
        return VerifyReport(str(path), False, ({"check": "archive", "ok": False, "error": str(e)},))
    return dataclasses.replace(report, bundle=str(path))


class _Checks:
    """The checks recorded so far (each logged as it is recorded)."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.unchecked: list[str] = []

    def __call__(self, name: str, ok: bool, **detail) -> bool:
        self.items.append({"check": name, "ok": bool(ok), **detail})
        (log.debug if ok else log.error)("%s: %s %s", name, "ok" if ok else "FAILED", detail or "")
        return ok

    def report(self, root: Path, replayed: bool = True) -> VerifyReport:
        ok = replayed and all(c["ok"] for c in self.items)
        return VerifyReport(str(root), ok, tuple(self.items), tuple(self.unchecked))


def _verify(root: Path, backend: str, threads: int | None, strict: bool, trusted_keys,
            check_signature: bool) -> VerifyReport:
    check = _Checks()
    try:
        manifest = read_manifest(root)
    except EdgeExitError as e:  # nothing else can be read
        check("manifest", False, error=str(e))
        return check.report(root)
    chained = _check_manifest(manifest, check)
    if not _check_hashes(root, manifest, check):
        return check.report(root)
    if check_signature:
        try:
            trusted_keys = _check_signature(root, trusted_keys, check)  # the engines reuse them
        except EdgeExitError:
            return check.report(root)
    try:
        golden = read_golden(root, manifest)
    except EdgeExitError as e:
        check("golden", False, error=str(e))
        return check.report(root)
    names = _replay_backends(manifest, backend, strict, check)
    for name in names:
        if chained:
            _replay(root, manifest, name, threads, trusted_keys, golden, check)
        else:  # no engine loads such a bundle: check the files' shapes on their own
            _check_file_shapes(root, manifest, name, threads, check)
            check(f"golden[{name}]", False,
                  error="not replayed: the manifest's segment shapes do not chain (see above)")
    return check.report(root, replayed=bool(names))


def _check_manifest(manifest: Manifest, check: _Checks) -> bool:
    """Record whether the segment chain is consistent; True when it is (the files can be hashed
    and their shapes checked either way)."""
    try:
        check_chain(manifest)
    except EdgeExitError as e:
        return check("manifest", False, error=str(e))
    return check("manifest", True, schema_version=manifest.schema_version,
                 segments=manifest.num_exits)


def _check_hashes(root: Path, manifest: Manifest, check: _Checks) -> bool:
    try:
        verify_hashes(root, manifest)
    except EdgeExitError as e:
        return check("sha256", False, error=str(e))
    check("sha256", True, files=len(manifest.artifacts()))
    listed = {Path(a.file) for a in manifest.artifacts()} | {Path(MANIFEST), Path(SIGNATURE)}
    extra = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if not p.is_dir() and p.relative_to(root) not in listed)
    if extra:
        return check("files", False, error=f"{len(extra)} file(s) the manifest does not list: "
                     f"{', '.join(extra[:5])} (a signature covers only the listed files: remove "
                     "them, or re-export the bundle)")
    return True


def _check_signature(root: Path, trusted_keys, check: _Checks):
    """Record the signature check; return the resolved trusted keys, or raise
    :class:`EdgeExitError` (recorded) when the signature fails."""
    from edgeexit.runtime import signing

    try:
        trusted_keys = signing.resolve_trust(trusted_keys)
        sig = signing.check_signature(root, trusted_keys)
    except EdgeExitError as e:
        check("signature", False, error=str(e))
        raise
    if sig["signed"]:
        check("signature", True, key=sig["key_fingerprint"][:16],
              trusted="yes" if sig["trusted"] else "not checked (no trusted keys given)")
    else:
        check("signature", True, signed="no")
    return trusted_keys


def _replay_backends(manifest: Manifest, backend: str, strict: bool, check: _Checks) -> list[str]:
    """The backends to replay golden with: ``all`` = every installed one for the bundle's formats
    (a format none runs here is recorded as skipped, a failure when ``strict``)."""
    if backend != "all":
        try:
            return [_pick_backend(manifest, backend)]
        except EdgeExitError as e:
            check(f"golden[{backend}]", False, error=str(e))
            return []
    names = []
    for fmt in manifest.formats:
        be = backend_for_format(fmt)
        if be.available():
            names.append(be.name)
        else:
            check.unchecked.append(fmt)
            check(f"golden[{be.name}]", not strict, skipped=f"{fmt} files not replayed: "
                  f"{be.name} is not installed here")
    if not names:
        check("golden", False, error="no installed backend runs this bundle's formats")
    return names


def _replay(root: Path, manifest: Manifest, name: str, threads: int | None, trusted_keys,
            golden: dict[str, np.ndarray], check: _Checks) -> None:
    """Load backend ``name``'s engine (its shapes checked) and replay golden through its segment
    chain and, when the bundle has one, its monolithic graph."""
    try:
        engine = Engine.from_bundle(root, backend=name, threads=threads, check_hashes=False,
                                    trusted_keys=trusted_keys,
                                    load_monolithic=manifest.monolithic is not None)
    except ShapeError as e:
        for problem in e.problems:
            check(f"shapes[{name}]", False, error=problem)
        check(f"golden[{name}]", False,
              error="not replayed: the segment files' shapes are wrong (see above)")
        return
    except EdgeExitError as e:
        check(f"golden[{name}]", False, error=str(e))
        return
    check(f"shapes[{engine.backend}]", True, files=len(engine.sessions))
    x = golden["inputs"].astype(np.float32)
    ref = [golden[f"logits_{k}"] for k in range(manifest.num_exits)]
    logits = _check_golden(engine, manifest, x, ref, check)
    if logits is None:
        return
    _check_own(engine, manifest, logits, golden, check)
    if engine.monolithic is not None:
        _check_monolithic(engine, manifest, x, ref[-1], check)


def _check_golden(engine: Engine, manifest: Manifest, x: np.ndarray, ref: list[np.ndarray],
                  check: _Checks) -> list[np.ndarray] | None:
    """Every exit's logits within the format's tolerance of golden's; returns them, or None when
    the chain could not run (then nothing else is tried)."""
    name = f"golden[{engine.backend}]"
    fmt = get_backend(engine.backend).file_format
    tol = manifest.golden.tolerance_for(fmt)
    if tol is None:
        check(name, False,
              error=f"the manifest lists no golden tolerance for {fmt}; re-export the bundle")
        return None
    try:
        logits, _ = engine.run_all(x)
    except EdgeExitError as e:
        check(name, False, error=str(e))
        return None
    errs = [float(np.abs(a - b).max()) for a, b in zip(logits, ref)]
    agree = [float((a.argmax(-1) == b.argmax(-1)).mean()) for a, b in zip(logits, ref)]
    ok = all(e <= tol for e in errs)  # a NaN error is not within any tolerance
    detail = {}
    if not ok:
        k = next(k for k, e in enumerate(errs) if not e <= tol)
        seg = manifest.segments[k] if k < len(manifest.segments) else None
        art = seg.artifact(fmt) if seg is not None else None
        where = f"; {art.file} is the first file off" if art is not None else ""
        detail["error"] = (f"exit {seg.exit if seg else k} differs from golden.npz by {errs[k]:.3g} "
                           f"(tolerance {tol:.3g}){where}")
    check(name, ok, samples=len(x), max_abs_err=[float(f"{e:.3g}") for e in errs],
          tolerance=tol, top1_agreement=agree, **detail)
    return logits


def _check_own(engine: Engine, manifest: Manifest, logits: list[np.ndarray],
               golden: dict[str, np.ndarray], check: _Checks) -> None:
    """Every exit's logits within a few quantization steps of what the exported files computed
    on the host at export (``own[backend]``): the check that sees a damaged int8 layer, or int8
    kernels that compute something else, which the tolerance against PyTorch must let through.
    Bundles written before these outputs were recorded have no such check."""
    fmt = get_backend(engine.backend).file_format
    tols = manifest.golden.own_tolerance_for(fmt)
    if tols is None:
        return
    name = f"own[{engine.backend}]"
    refs = [golden.get(own_key(fmt, k)) for k in range(manifest.num_exits)]
    if any(r is None or r.shape != z.shape for r, z in zip(refs, logits)):
        check(name, False, error=f"golden.npz lacks the {fmt} files' own outputs; re-export the bundle")
        return
    errs = [float(np.abs(z - r).max()) for z, r in zip(logits, refs)]
    bad = [k for k, (e, t) in enumerate(zip(errs, tols)) if not e <= t]
    detail = {}
    if bad:
        k = bad[0]
        art = manifest.segments[k].artifact(fmt)
        detail["error"] = (f"exit {manifest.segments[k].exit} differs from the exported {fmt} files' "
                           f"own outputs by {errs[k]:.3g} (tolerance {tols[k]:.3g}, a few quantization "
                           f"steps); {art.file if art else 'segment ' + str(k)} or this device's "
                           "kernels compute something else")
    check(name, not bad, max_abs_err=[float(f"{e:.3g}") for e in errs],
          tolerance=[float(f"{t:.3g}") for t in tols], **detail)


def _check_monolithic(engine: Engine, manifest: Manifest, x: np.ndarray, ref: np.ndarray,
                      check: _Checks) -> None:
    name = f"monolithic[{engine.backend}]"
    try:
        err = float(np.abs(engine.run_monolithic(x) - ref).max())
    except EdgeExitError as e:
        check(name, False, error=str(e))
        return
    # bundles written before the monolithic graph had a tolerance of its own share the chain's
    tol = manifest.golden.monolithic_tolerance_for(get_backend(engine.backend).file_format)
    if tol is None:
        check(name, False, error="the manifest lists no golden tolerance for it; re-export the bundle")
        return
    check(name, err <= tol, max_abs_err=float(f"{err:.3g}"), tolerance=tol)  # NaN fails


def _check_file_shapes(root: Path, manifest: Manifest, name: str, threads: int | None,
                       check: _Checks) -> None:
    """Load backend ``name``'s segment files of bundle ``root`` and record their shapes (against
    the manifest and each other) as ``shapes[name]`` checks: used where no engine can load the
    bundle because its manifest's own shapes do not chain."""
    be = get_backend(name)
    threads = default_threads(manifest) if threads is None else threads
    files, sessions = [], []
    for seg in manifest.segments:
        art = seg.artifact(be.file_format)
        if art is None:
            check(f"shapes[{name}]", False, error=f"segment {seg.index} has no {be.file_format} file")
            return
        try:
            sessions.append(be.load(root / art.file, threads))
        except EdgeExitError as e:
            check(f"shapes[{name}]", False, error=str(e))
            return
        files.append(art.file)
    problems = shape_problems(manifest, sessions, files)
    for problem in problems:
        check(f"shapes[{name}]", False, error=problem)
    if not problems:
        check(f"shapes[{name}]", True, files=len(files),
              note="the files chain; the manifest's shapes do not")

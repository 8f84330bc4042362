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
from pathlib import Path

import numpy as np

from edgeexit.errors import EdgeExitError
from edgeexit.runtime.backends import backend_for_format, get_backend
from edgeexit.runtime.engine import (
    Engine,
    ShapeError,
    _pick_backend,
    default_threads,
    shape_problems,
)
from edgeexit.runtime.install import open_bundle
from edgeexit.runtime.manifest import GOLDEN, check_chain, read_manifest, verify_hashes

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


def _golden(root: Path) -> dict[str, np.ndarray]:
    with np.load(root / GOLDEN, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


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


def _verify(root: Path, backend: str, threads: int | None, strict: bool, trusted_keys,
            check_signature: bool) -> VerifyReport:
    checks: list[dict] = []
    unchecked: list[str] = []

    def check(name: str, ok: bool, **detail) -> bool:
        checks.append({"check": name, "ok": bool(ok), **detail})
        (log.info if ok else log.error)("%s: %s %s", name, "ok" if ok else "FAILED", detail or "")
        return ok

    try:
        manifest = read_manifest(root)
    except EdgeExitError as e:  # nothing else can be read
        check("manifest", False, error=str(e))
        return VerifyReport(str(root), False, tuple(checks))
    try:
        check_chain(manifest)
        chained = True
    except EdgeExitError as e:  # the files can still be hashed and their shapes checked
        chained = False
        check("manifest", False, error=str(e))
    if chained:
        check("manifest", True, schema_version=manifest.schema_version, segments=manifest.num_exits)
    try:
        verify_hashes(root, manifest)
    except EdgeExitError as e:
        check("sha256", False, error=str(e))
        return VerifyReport(str(root), False, tuple(checks))
    check("sha256", True, files=len(manifest.artifacts()))
    if check_signature:
        from edgeexit.runtime import signing

        try:
            trusted_keys = signing.resolve_trust(trusted_keys)  # the engines below reuse them
            sig = signing.check_signature(root, trusted_keys)
        except EdgeExitError as e:
            check("signature", False, error=str(e))
            return VerifyReport(str(root), False, tuple(checks))
        if sig["signed"]:
            check("signature", True, key=sig["key_fingerprint"][:16],
                  trusted="yes" if sig["trusted"] else "not checked (no trusted keys given)")
        else:
            check("signature", True, signed="no")

    golden = _golden(root)
    x = golden["inputs"].astype(np.float32)
    ref = [golden[f"logits_{k}"] for k in range(manifest.num_exits)]
    if backend == "all":
        names = []
        for fmt in manifest.formats:
            be = backend_for_format(fmt)
            if be.available():
                names.append(be.name)
            else:
                unchecked.append(fmt)
                check(f"golden[{be.name}]", not strict, skipped=f"{fmt} files not replayed: "
                      f"{be.name} is not installed here")
        if not names:
            check("golden", False, error="no installed backend runs this bundle's formats")
    else:
        try:
            names = [_pick_backend(manifest, backend)]
        except EdgeExitError as e:
            check(f"golden[{backend}]", False, error=str(e))
            names = []
    not_replayed = "not replayed: the segment files' shapes are wrong (see above)"
    for name in names:
        if not chained:  # no engine loads such a bundle: check the files' shapes on their own
            _check_file_shapes(root, manifest, name, threads, check)
            check(f"golden[{name}]", False,
                  error="not replayed: the manifest's segment shapes do not chain (see above)")
            continue
        try:
            engine = Engine.from_bundle(root, backend=name, threads=threads, check_hashes=False,
                                        trusted_keys=trusted_keys,
                                        load_monolithic=manifest.monolithic is not None)
        except ShapeError as e:
            for problem in e.problems:
                check(f"shapes[{name}]", False, error=problem)
            check(f"golden[{name}]", False, error=not_replayed)
            continue
        except EdgeExitError as e:
            check(f"golden[{name}]", False, error=str(e))
            continue
        check(f"shapes[{engine.backend}]", True, files=len(engine.sessions))
        fmt = get_backend(engine.backend).file_format
        tol = float(manifest.golden["tolerance"][fmt])
        try:
            logits, _ = engine.run_all(x)
        except EdgeExitError as e:
            check(f"golden[{engine.backend}]", False, error=str(e))
            continue
        errs = [float(np.abs(a - b).max()) for a, b in zip(logits, ref)]
        agree = [float((a.argmax(-1) == b.argmax(-1)).mean()) for a, b in zip(logits, ref)]
        detail = {}
        if max(errs) > tol:
            k = next(k for k, e in enumerate(errs) if e > tol)
            seg = next((s for s in manifest.segments if s.exit == k), None)
            art = seg.artifact(fmt) if seg is not None else None
            where = f"; {art.file} is the first file off" if art is not None else ""
            detail["error"] = (f"exit {k} differs from golden.npz by {errs[k]:.3g} "
                               f"(tolerance {tol:.3g}){where}")
        check(
            f"golden[{engine.backend}]",
            max(errs) <= tol,
            samples=len(x),
            max_abs_err=[float(f"{e:.3g}") for e in errs],
            tolerance=tol,
            top1_agreement=agree,
            **detail,
        )
        if engine.monolithic is not None:
            try:
                err = float(np.abs(engine.run_monolithic(x) - ref[-1]).max())
            except EdgeExitError as e:
                check(f"monolithic[{engine.backend}]", False, error=str(e))
                continue
            # bundles written before the monolithic graph had a tolerance of its own share the chain's
            mtol = float(manifest.golden.get("monolithic_tolerance", {}).get(fmt, tol))
            check(f"monolithic[{engine.backend}]", err <= mtol, max_abs_err=float(f"{err:.3g}"), tolerance=mtol)
    ok = all(c["ok"] for c in checks) and bool(names)
    return VerifyReport(str(root), ok, tuple(checks), tuple(unchecked))


def _check_file_shapes(root: Path, manifest, name: str, threads: int | None, check) -> None:
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

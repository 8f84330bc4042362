"""Bundle archives: unpacked safely (a device installs what it is sent), packed atomically.

:func:`extract_archive` checks every member before anything is written (no absolute paths,
``..``, links, devices, duplicates, or members over the size limits of :class:`ArchiveLimits`;
one top-level folder holding ``manifest.json``, and no file that this manifest does not list), then extracts with tarfile's ``data`` filter (or, on Python
< 3.11.4, what it would do). :func:`open_bundle` gives a bundle directory for a directory or an
archive alike. :func:`pack_directory` writes a bundle directory as a ``.tar.gz``, atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from edgeexit.errors import ConfigError
from edgeexit.runtime.atomic import atomic_path
from edgeexit.runtime.manifest import MANIFEST, SIGNATURE, BundleError, parse_manifest

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    """Limits on what an archive may unpack to (bytes; members = files and directories).

    A bundle of an ECG model is a few MB; the limits leave room for much larger models while a
    crafted archive (a few MB of gzip that unpacks to GBs) cannot fill a device's storage. The
    unpacked total must also fit the free space of the install directory."""

    max_member_bytes: int = 256 << 20
    max_total_bytes: int = 512 << 20
    max_members: int = 1000
    max_manifest_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        if min(self.max_member_bytes, self.max_total_bytes, self.max_members,
               self.max_manifest_bytes) < 1:
            raise ConfigError("archive limits must be >= 1")


def is_archive(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES)


# tarfile's extraction filters came with Python 3.11.4; Debian Bookworm and Raspberry Pi OS ship 3.11.2
_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


def _extract(tar: tarfile.TarFile, dest: Path, members: list[tarfile.TarInfo]) -> None:
    """``extractall`` with the ``data`` filter; where tarfile has none (Python < 3.11.4), what it
    would do to the members :func:`extract_archive` has already checked (plain files and
    directories inside ``dest``): plain permissions, owned by this user."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=members, filter="data")
        return
    for m in members:
        m.mode = 0o755 if m.isdir() or m.mode & 0o100 else 0o644
        m.uid, m.gid, m.uname, m.gname = os.geteuid(), os.getegid(), "", ""
    tar.extractall(dest, members=members)


def _rel(member: tarfile.TarInfo) -> tuple[str, ...]:
    """The member's path as parts, ``.`` parts dropped (``./tiny/x`` is ``tiny/x``)."""
    return tuple(p for p in PurePosixPath(member.name).parts if p != ".")


def _scan(tar: tarfile.TarFile, archive: Path, limits: ArchiveLimits) -> list[tarfile.TarInfo]:
    """Every member's header, checked on its own (paths, kinds, sizes, counts, duplicates)."""
    members: list[tarfile.TarInfo] = []
    seen: set[tuple[str, ...]] = set()
    total = 0
    for m in tar:
        members.append(m)
        if len(members) > limits.max_members:
            raise BundleError(f"{archive} has more than {limits.max_members} members; "
                              "refusing it (a bundle holds a handful of files)")
        name = m.name
        if not name.isprintable():
            raise BundleError(f"{archive}: member {name!r} has control characters in its name; "
                              "refusing the archive (re-export or re-pack it)")
        if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in Path(name).parts:
            raise BundleError(f"{archive}: member {name!r} points outside the bundle; "
                              "refusing the archive (re-export or re-pack it)")
        if not (m.isfile() or m.isdir()):
            kind = "a link" if (m.issym() or m.islnk()) else "a device or special file"
            raise BundleError(f"{archive}: member {name!r} is {kind}; a bundle holds only "
                              "plain files: refusing the archive (re-export or re-pack it)")
        if m.size > limits.max_member_bytes:
            raise BundleError(f"{archive}: member {name!r} has {m.size} bytes, over the "
                              f"limit of {limits.max_member_bytes}; refusing the archive")
        total += m.size
        if total > limits.max_total_bytes:
            raise BundleError(f"{archive} unpacks to more than {limits.max_total_bytes} "
                              "bytes; refusing it")
        if _rel(m) in seen:
            raise BundleError(f"{archive}: member {name!r} appears twice; refusing the archive "
                              "(re-export or re-pack it)")
        seen.add(_rel(m))
    return members


def _listed(tar: tarfile.TarFile, archive: Path, top: str, members: list[tarfile.TarInfo],
            limits: ArchiveLimits) -> dict[tuple[str, ...], int | None]:
    """The files the archive's manifest lets it hold, as member parts -> size (None: not
    recorded): the manifest, its signature, and every file the manifest lists with its hash."""
    by_name = {_rel(m): m for m in members}
    entry = by_name.get((top, MANIFEST))
    if entry is None or not entry.isfile():
        raise BundleError(f"{archive} holds no {top}/{MANIFEST}: it is not a bundle archive")
    if entry.size > limits.max_manifest_bytes:
        raise BundleError(f"{archive}: {top}/{MANIFEST} has {entry.size} bytes, over the limit of "
                          f"{limits.max_manifest_bytes}; refusing the archive")
    f = tar.extractfile(entry)
    data = f.read(limits.max_manifest_bytes + 1) if f is not None else b""
    manifest = parse_manifest(data, f"{archive}: {top}/{MANIFEST}")
    allowed: dict[tuple[str, ...], int | None] = {(top, MANIFEST): None, (top, SIGNATURE): None}
    for a in manifest.artifacts():
        parts = tuple(p for p in PurePosixPath(a.file).parts if p != ".")
        if not parts or PurePosixPath(a.file).is_absolute() or ".." in parts:
            raise BundleError(f"{archive}: {MANIFEST} lists {a.file!r} outside the bundle; refusing it")
        allowed[(top, *parts)] = a.size
    return allowed


def _check_listed(archive: Path, members: list[tarfile.TarInfo],
                  allowed: dict[tuple[str, ...], int | None]) -> None:
    """Refuse any member the manifest does not list (naming it), and a listed file whose size
    differs from the manifest's: a signature covers only what the manifest lists."""
    dirs = {parts[:i] for parts in allowed for i in range(1, len(parts))}
    for m in members:
        parts = _rel(m)
        if m.isdir() and parts in dirs:
            continue
        if m.isfile() and parts in allowed:
            size = allowed[parts]
            if size is not None and m.size != size:
                raise BundleError(f"{archive}: member {m.name!r} has {m.size} bytes but the "
                                  f"manifest lists {size}; refusing the archive (copy it again)")
            continue
        raise BundleError(f"{archive}: member {m.name!r} is not a file the bundle's manifest lists; "
                          "refusing the archive (a bundle holds only its listed files: re-export "
                          "or re-pack it)")


def _check_space(archive: Path, dest: Path, members: list[tarfile.TarInfo]) -> None:
    need = sum(m.size for m in members)
    free = shutil.disk_usage(dest).free
    if need > free:
        raise BundleError(f"{archive} unpacks to {need} bytes but {dest} has {free} free; "
                          "free some space on the device and install again")


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike,
                    limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Unpack bundle archive ``archive`` into the empty directory ``dest``; return the bundle
    directory inside it (the archive's one top-level folder holding ``manifest.json``).

    Before anything is written, refuses (:class:`BundleError`, naming the member) absolute
    paths, ``..``, links, devices and other special members, duplicates, more than
    ``limits.max_members`` members, members or a total over the size limits or the free space,
    and any file the archive's own manifest does not list (the manifest and ``manifest.sig``
    aside) or lists with another size; then extracts with tarfile's ``data`` filter."""
    archive, dest = Path(archive), Path(dest)
    try:
        tar = tarfile.open(archive, "r:gz")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise BundleError(f"{archive} not found") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise BundleError(f"{archive} is not a readable .tar.gz ({e}); copy it again") from None
    with tar:
        try:
            members = _scan(tar, archive, limits)
            tops = {_rel(m)[0] for m in members if _rel(m)}
            if len(tops) != 1:
                raise BundleError(f"{archive} must hold one bundle folder, it holds "
                                  f"{sorted(tops)[:5]}; pack it with `edgeexit export`")
            top = tops.pop()
            _check_listed(archive, members, _listed(tar, archive, top, members, limits))
            _check_space(archive, dest, members)
            _extract(tar, dest, members)
        except _FILTER_ERRORS as e:
            raise BundleError(f"{archive}: {e}; refusing the archive") from None
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise BundleError(f"{archive} is damaged ({e}); copy it again") from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise BundleError(f"no space left to unpack {archive} into {dest}") from None
            raise BundleError(f"cannot unpack {archive} ({e})") from None
    root = dest / top
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{archive} holds no {root.name}/{MANIFEST}: it is not a bundle archive")
    return root


@contextlib.contextmanager
def open_bundle(path: str | os.PathLike, limits: ArchiveLimits = ArchiveLimits()) -> Iterator[Path]:
    """Yield a bundle directory for ``path``: the directory itself, or an archive unpacked
    safely into a temporary directory that is removed afterwards."""
    if not is_archive(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="edgeexit-bundle-") as tmp:
        yield extract_archive(path, tmp, limits)


def pack_directory(directory: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """Write ``directory`` as the gzipped tar ``archive`` (one top-level folder, the directory's
    name), atomically: a failure leaves the old archive (or none), never half of one."""
    directory, archive = Path(directory), Path(archive)
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        tar.add(directory, arcname=directory.name)
    return archive

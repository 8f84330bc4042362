"""Bundle archives: unpacked safely (a device installs what it is sent), packed atomically.

:func:`extract_archive` checks every member before anything is written (no absolute paths,
``..``, links, devices, or members over the size limits of :class:`ArchiveLimits`; one top-level
folder holding ``manifest.json``), then extracts with tarfile's ``data`` filter (or, on Python
< 3.11.4, what it would do). :func:`open_bundle` gives a bundle directory for a directory or an
archive alike. :func:`pack_directory` writes a bundle directory as a ``.tar.gz``, atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from edgeexit.errors import ConfigError
from edgeexit.runtime.atomic import atomic_path
from edgeexit.runtime.manifest import MANIFEST, BundleError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    """Limits on what an archive may unpack to (bytes; members = files and directories)."""

    max_member_bytes: int = 512 << 20
    max_total_bytes: int = 2 << 30
    max_members: int = 1000

    def __post_init__(self) -> None:
        if min(self.max_member_bytes, self.max_total_bytes, self.max_members) < 1:
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


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike,
                    limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Unpack bundle archive ``archive`` into the empty directory ``dest``; return the bundle
    directory inside it (the archive's one top-level folder holding ``manifest.json``).

    Refuses (:class:`BundleError`, naming the member) absolute paths, ``..``, links, devices and
    other special members, more than ``limits.max_members`` members, and members or a total
    over the size limits; then extracts with tarfile's ``data`` filter."""
    archive, dest = Path(archive), Path(dest)
    try:
        tar = tarfile.open(archive, "r:gz")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise BundleError(f"{archive} not found") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise BundleError(f"{archive} is not a readable .tar.gz ({e}); copy it again") from None
    with tar:
        try:
            members = []
            total = 0
            for m in tar:
                members.append(m)
                if len(members) > limits.max_members:
                    raise BundleError(f"{archive} has more than {limits.max_members} members; "
                                      "refusing it (a bundle holds a handful of files)")
                name = m.name
                parts = Path(name).parts
                if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts:
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
            tops = {Path(m.name).parts[0] for m in members if Path(m.name).parts}
            if len(tops) != 1:
                raise BundleError(f"{archive} must hold one bundle folder, it holds "
                                  f"{sorted(tops)[:5]}; pack it with `edgeexit export`")
            _extract(tar, dest, members)
        except _FILTER_ERRORS as e:
            raise BundleError(f"{archive}: {e}; refusing the archive") from None
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise BundleError(f"{archive} is damaged ({e}); copy it again") from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise BundleError(f"no space left to unpack {archive} into {dest}") from None
            raise BundleError(f"cannot unpack {archive} ({e})") from None
    root = dest / tops.pop()
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

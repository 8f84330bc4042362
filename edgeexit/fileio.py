"""Atomic file writes: a failed or interrupted write leaves the old file (or nothing), never half."""

from __future__ import annotations

import contextlib
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from edgeexit.errors import ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place.

    The parent directory is created if needed; the file gets the usual permissions (0666 less
    the umask), not the 0600 of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (a converter);
    rename it onto ``path`` if the block succeeds.

    On any exception the temporary file is removed and the exception propagates, so ``path`` is
    either the complete new file or untouched. ``suffix`` ends the temporary name (some writers
    choose the format by the extension).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # the usual permissions, not mkstemp's 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output_directory(out: Path, ours: set[str] | frozenset[str], command: str) -> None:
    """Refuse an ``--out`` that is a file, or a directory holding entries ``command`` does not
    write (names in ``ours``; hidden temporaries aside): a later run would mix with, or replace,
    someone else's files. A directory of an earlier run of ``command`` is fine."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith(".")]
        if foreign:
            raise ConfigError(
                f"{out} holds files that {command} did not write ({', '.join(sorted(foreign)[:5])}); "
                f"choose an empty or new --out (a previous {command} directory is reused)"
            )


def pack_directory(directory: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """Write ``directory`` as the gzipped tar ``archive`` (one top-level folder, the directory's
    name), atomically: a failure leaves the old archive (or none), never half of one."""
    directory, archive = Path(directory), Path(archive)
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        tar.add(directory, arcname=directory.name)
    return archive

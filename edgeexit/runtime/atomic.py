"""Atomic file writes: a failed or interrupted write leaves the old file (or nothing), never half;
and the one rule every command that writes follows before it starts work
(:func:`check_output_directory`, :func:`check_output_file`).

The runtime writes this way (a signed manifest, a signature, a bundle archive, an install), and
so does every host-side stage (:mod:`edgeexit.fileio` re-exports these).
"""

from __future__ import annotations

import contextlib
import os
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


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not (p.exists() or p.is_symlink()) and p.parent != p:
        p = p.parent
    return p


def check_writable(path: str | os.PathLike, option: str = "--out", advice: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``path`` (a file or directory to be written, existing or
    not) can be created or replaced: its nearest existing ancestor is a directory in which a file
    can really be created (tried, then removed: permissions alone do not tell, e.g. ``/proc``)."""
    path = Path(path)
    advice = advice or f"choose another {option}"
    base = _nearest_existing(path if path.is_dir() else path.parent)
    if not base.is_dir():
        raise ConfigError(f"cannot write {path}: {base} is a file, not a directory; {advice}")
    try:
        with tempfile.TemporaryFile(dir=base, prefix=".edgeexit-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {base} is not writable ({e.strerror or e}); "
                          f"{advice}") from None


def check_output_directory(out: str | os.PathLike, ours: set[str] | frozenset[str], command: str,
                           option: str = "--out", record: str | tuple[str, ...] | None = None) -> None:
    """The rule for an output directory, checked before any work starts: it can be written
    (:func:`check_writable`), it is not a file, and it holds no entries ``command`` does not
    write (names in ``ours``; hidden temporaries aside): a run would mix with, or replace,
    someone else's files. A directory of an earlier run of ``command`` is reused; with
    ``record`` (a JSON file every run writes, e.g. ``metrics.json``; or several names, any one
    of which will do), a directory holding some of ``ours`` is one only if that record is there
    and is a JSON object (a user's own ``model.pt`` or ``report.md`` is not replaced)."""
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; choose another {option}")
    if out.is_dir():
        names = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        foreign = [n for n in names if n not in ours]
        records = (record,) if isinstance(record, str) else record
        if not foreign and names and records and not any(_is_json_object(out / r) for r in records):
            foreign = names
        if foreign:
            raise ConfigError(
                f"{out} holds files that {command} did not write ({', '.join(sorted(foreign)[:5])}); "
                f"choose an empty or new {option} (a previous {command} directory is reused)"
            )
    check_writable(out, option)


def _is_json_object(path: Path) -> bool:
    import json

    try:
        return path.is_file() and isinstance(json.loads(path.read_bytes()), dict)
    except (OSError, ValueError, RecursionError):
        return False


def check_output_file(path: str | os.PathLike, command: str, option: str = "--out",
                      ours: Callable[[Path], bool] | None = None) -> None:
    """The same rule for one output file: it can be written, it is not a directory, and an
    existing file is replaced only when ``ours(path)`` says ``command`` wrote it (None: never)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a file name to {option}")
    if path.exists() or path.is_symlink():
        if ours is None or path.is_symlink() or not ours(path):
            raise ConfigError(f"{path} exists and was not written by {command}; refusing to "
                              f"overwrite it (move it, or choose another {option})")
    check_writable(path, option)

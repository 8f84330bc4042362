"""Host-side file helpers: atomic writes (a failed or interrupted write leaves the old file, or
nothing, never half), bundle archives, and the check of an output directory.

The atomic writes and the archive packing live with the runtime, which writes the same way
(:mod:`edgeexit.runtime.atomic`, :mod:`edgeexit.runtime.archive`); they are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from edgeexit.errors import ConfigError
from edgeexit.runtime.archive import pack_directory
from edgeexit.runtime.atomic import atomic_path, atomic_write

__all__ = ["atomic_path", "atomic_write", "check_output_directory", "pack_directory"]


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

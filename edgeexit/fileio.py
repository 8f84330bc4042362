"""Host-side file helpers: atomic writes (a failed or interrupted write leaves the old file, or
nothing, never half), bundle archives, and the one rule for outputs (writable before work starts,
never replacing a file the command did not write).

All live with the runtime, which writes the same way (:mod:`edgeexit.runtime.atomic`,
:mod:`edgeexit.runtime.archive`); they are re-exported here.
"""

from __future__ import annotations

from edgeexit.runtime.archive import pack_directory
from edgeexit.runtime.atomic import (
    atomic_path,
    atomic_write,
    check_output_directory,
    check_output_file,
    check_writable,
)

__all__ = ["atomic_path", "atomic_write", "check_output_directory", "check_output_file",
           "check_writable", "pack_directory"]

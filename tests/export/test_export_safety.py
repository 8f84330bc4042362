"""Export never deletes or overwrites what it did not write, and cleans up after killed runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from edgeexit.errors import ConfigError
from edgeexit.export.bundle import ExportConfig, export_bundle

# two segments (the fewest a bundle has): these tests are about the files, not the model
CFG = ExportConfig(target="x86_64", formats=("onnx",), golden_samples=8, calibration_samples=32,
                   monolithic=False, exits=(1, 3))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_user_files_inside_the_bundle_and_a_foreign_archive_are_kept(tiny_checkpoint, tmp_path):
    out = tmp_path / "b"
    export_bundle(tiny_checkpoint, out, CFG)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        export_bundle(tiny_checkpoint, out, CFG)
    assert (out / "notes.txt").read_text() == "mine" and (out / "manifest.json").is_file()
    other = tmp_path / "c"
    (tmp_path / "c.tar.gz").write_bytes(b"someone else's archive")
    with pytest.raises(ConfigError, match="not an archive of a bundle called c"):
        export_bundle(tiny_checkpoint, other, CFG)
    assert (tmp_path / "c.tar.gz").read_bytes() == b"someone else's archive"
    assert not other.exists()
    (out / "notes.txt").unlink()
    export_bundle(tiny_checkpoint, out, CFG)  # its own bundle and archive are replaced


def test_leftovers_of_killed_exports_are_cleaned_up(tiny_checkpoint, tmp_path):
    out = tmp_path / "b"
    export_bundle(tiny_checkpoint, out, CFG)
    dead = _dead_pid()
    stale = tmp_path / f".b.tmp-{dead}-abc123"
    stale.mkdir()
    (stale / "segment_0.onnx").write_bytes(b"half")
    running = tmp_path / f".b.tmp-{os.getpid()}-live"  # an export still running: left alone
    running.mkdir()
    export_bundle(tiny_checkpoint, out, CFG)
    assert not stale.exists() and running.exists()
    # killed between moving the old bundle aside and moving the new one in: the old comes back
    aside = tmp_path / f".b.old-{dead}"
    os.replace(out, aside)
    export_bundle(tiny_checkpoint, out, CFG)
    assert not aside.exists() and (out / "manifest.json").is_file()
    shutil.rmtree(running)

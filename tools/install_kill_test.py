"""Power-cut test of `edgeexit install`: kill the install process at random moments (SIGKILL)
and check after every kill that DIR/current is a complete bundle that passes verification and
serves, and at the end that the next install succeeds and leaves nothing behind.

    .venv/bin/python tools/install_kill_test.py --bundle BUNDLE_DIR --kills 100

Every attempt installs a newer bundle_version of BUNDLE_DIR (packed here), so an install that
finished before its kill moves the device forward and the next one is still accepted. The kill
delay of every other attempt is uniform over [0, 1.2 T], T the duration of an uncut install
(process start included; the median of three), and of the others over [S, T], S the moment its
staging directory appears: the part after the imports where the install works on the disk. ``left_partial_state`` counts kills that left leftovers behind (a
staging directory, a temporary link, or a bundle directory neither current nor previous).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeexit.fileio import pack_directory
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.install import CURRENT, STAGING, check_bundle, install_bundle
from edgeexit.runtime.manifest import MANIFEST, manifest_bytes, read_manifest


def make_archive(bundle: Path, work: Path, version: int) -> Path:
    """``bundle`` packed as ``work/v{version}.tar.gz`` with manifest bundle_version = version."""
    src = work / "src" / f"v{version}" / bundle.name
    shutil.copytree(bundle, src)
    manifest = dataclasses.replace(read_manifest(src), bundle_version=version)
    (src / MANIFEST).write_bytes(manifest_bytes(manifest))
    (src / "manifest.sig").unlink(missing_ok=True)  # the version changed: a signature would not hold
    archive = pack_directory(src, work / f"v{version}.tar.gz")
    shutil.rmtree(src.parent)
    return archive


def serving(into: Path) -> tuple[bool, int | None, str]:
    """(DIR/current is complete, verifies and answers; its bundle_version; what failed)."""
    cur = into / CURRENT
    try:
        check_bundle(cur, None)
        engine = Engine.from_bundle(cur, threads=1)
        with np.load(cur / "golden.npz", allow_pickle=False) as z:
            engine.predict(z["inputs"][0].astype(np.float32))
        return True, read_manifest(cur).bundle_version, ""
    except Exception as e:  # noqa: BLE001 - any failure is what this test counts
        return False, None, f"{type(e).__name__}: {e}"


def _partial(into: Path) -> bool:
    """A killed install left something half-done (the next install removes it)."""
    if any(p.name.startswith(STAGING) or ".tmp-" in p.name for p in into.iterdir()):
        return True
    keep = {(into / link).resolve() for link in (CURRENT, "previous") if (into / link).is_symlink()}
    return any(p.resolve() not in keep for p in (into / "bundles").iterdir())


def _timed_install(archive: Path, into: Path) -> tuple[float, float]:
    """Run one install to its end; return (seconds until its staging directory appeared,
    seconds until it exited)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(_command(archive, into), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = None
    while p.poll() is None:
        if start is None and any(q.name.startswith(STAGING) for q in into.iterdir()):
            start = time.perf_counter() - t0
        time.sleep(0.0005)
    end = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"an uncut install of {archive} failed (exit status {p.returncode})")
    return (end / 2 if start is None else start), end


def _command(archive: Path, into: Path) -> list[str]:
    return [sys.executable, "-m", "edgeexit", "-q", "install", str(archive), "--into", str(into)]


def run(bundle: str, kills: int, seed: int = 0, work: str | None = None) -> dict:
    rng = random.Random(seed)
    bundle = Path(bundle)
    tmp = tempfile.TemporaryDirectory(prefix="edgeexit-killtest-") if work is None else None
    work = Path(work or tmp.name)
    into = work / "device"
    install_bundle(make_archive(bundle, work, 1), into)
    version = 1
    starts, ends = [], []
    for _ in range(3):  # uncut installs: when the install starts on the disk, when it ends
        version += 1
        start, end = _timed_install(make_archive(bundle, work, version), into)
        starts.append(start)
        ends.append(end)
    start_s, uncut_s = float(np.median(starts)), float(np.median(ends))
    working = completed = partial = 0
    failures = []
    for i in range(kills):
        version += 1
        archive = make_archive(bundle, work, version)
        delay = rng.uniform(0, 1.2 * uncut_s) if i % 2 == 0 else rng.uniform(start_s, uncut_s)
        p = subprocess.Popen(_command(archive, into), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)  # does nothing harmful if it has just exited
        p.wait()
        archive.unlink()
        partial += _partial(into)
        ok, v, why = serving(into)
        working += ok
        completed += v == version
        if not ok:
            failures.append({"kill": i, "delay_s": round(delay, 3), "error": why})
    archive = make_archive(bundle, work, version + 1)
    final = subprocess.run(_command(archive, into), check=False, capture_output=True, text=True)
    ok, v, why = serving(into)
    leftovers = sorted(p.name for p in into.iterdir() if p.name.startswith(STAGING) or ".tmp-" in p.name)
    bundles = sorted(p.name for p in (into / "bundles").iterdir())
    report = {
        "kills": kills,
        "working_after_kill": working,
        "install_finished_before_kill": completed,
        "interrupted": kills - completed,
        "left_partial_state": partial,
        "uncut_install_s": round(uncut_s, 3),
        "install_starts_on_disk_s": round(start_s, 3),
        "next_install_ok": final.returncode == 0 and ok and v == version + 1,
        "next_install_error": final.stderr.strip()[-300:] if final.returncode else "",
        "leftovers_after_next_install": leftovers,
        "bundles_kept": len(bundles),  # current and previous
        "failures": failures[:10],
    }
    if tmp is not None:
        tmp.cleanup()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="A bundle directory (written by edgeexit export).")
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = run(a.bundle, a.kills, a.seed)
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{r['working_after_kill']}/{r['kills']} kills left a working bundle "
              f"({r['interrupted']} interrupted the install, {r['install_finished_before_kill']} came "
              f"after it had switched; {r['left_partial_state']} left leftovers for the next install "
              f"to remove; an uncut install {r['uncut_install_s']} s, on the disk from "
              f"{r['install_starts_on_disk_s']} s); next install "
              f"{'succeeded' if r['next_install_ok'] else 'FAILED ' + r['next_install_error']}, "
              f"leftovers {r['leftovers_after_next_install'] or 'none'}, {r['bundles_kept']} bundles kept")
        for f in r["failures"]:
            print(f"  kill {f['kill']} after {f['delay_s']} s: {f['error']}")
    sys.exit(0 if r["working_after_kill"] == r["kills"] and r["next_install_ok"] else 1)


if __name__ == "__main__":
    main()

"""Power-cut test of `edgeexit install` and `edgeexit rollback`: kill the process at random
moments (SIGKILL) and check after every kill that DIR/current is a complete bundle that passes
verification and serves, that DIR/previous is another complete bundle (a usable rollback), and
at the end that the next install succeeds and leaves nothing behind.

    .venv/bin/python tools/install_kill_test.py --bundle BUNDLE_DIR --kills 100 --mode both

``--mode install`` kills installs only, ``rollback`` rollbacks only (between two installed
versions, each surviving rollback swapping them), ``both`` runs the two, ``--kills`` each.

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
from edgeexit.runtime.install import CURRENT, PAIR, PREVIOUS, STAGING, check_bundle, install_bundle
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
    """(DIR/current is complete, verifies and answers, and DIR/previous is another complete
    bundle to roll back to; current's bundle_version; what failed)."""
    cur, prev = into / CURRENT, into / PREVIOUS
    try:
        check_bundle(cur, None)
        engine = Engine.from_bundle(cur, threads=1)
        with np.load(cur / "golden.npz", allow_pickle=False) as z:
            engine.predict(z["inputs"][0].astype(np.float32))
    except Exception as e:  # noqa: BLE001 - any failure is what this test counts
        return False, None, f"current: {type(e).__name__}: {e}"
    try:
        read_manifest(prev)
        check_bundle(prev, None)
        if prev.resolve() == cur.resolve():
            raise RuntimeError("previous is the same bundle as current")
    except Exception as e:  # noqa: BLE001
        return False, None, f"previous (no usable rollback): {type(e).__name__}: {e}"
    return True, read_manifest(cur).bundle_version, ""


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


def _command(archive: Path | None, into: Path) -> list[str]:
    """The install of ``archive``, or a rollback (None)."""
    what = ["rollback"] if archive is None else ["install", str(archive)]
    return [sys.executable, "-m", "edgeexit", "-q", *what, "--into", str(into)]


def _kill_at(command: list[str], delay: float) -> None:
    p = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    os.kill(p.pid, signal.SIGKILL)  # does nothing harmful if it has just exited
    p.wait()


def _timed_rollback(into: Path) -> tuple[float, float]:
    """Run one rollback to its end; return (seconds until it switched the pair, until it exited)."""
    before = os.readlink(into / PAIR)
    t0 = time.perf_counter()
    p = subprocess.Popen(_command(None, into), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    switched = None
    while p.poll() is None:
        if switched is None and os.readlink(into / PAIR) != before:
            switched = time.perf_counter() - t0
        time.sleep(0.0005)
    end = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"an uncut rollback failed: {p.stderr.read().decode()[-300:]}")
    return (end if switched is None else switched), end


def _kill_installs(bundle: Path, work: Path, into: Path, kills: int, rng: random.Random,
                   version: int) -> tuple[dict, int]:
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
        _kill_at(_command(archive, into), delay)
        archive.unlink()
        partial += _partial(into)
        ok, v, why = serving(into)
        working += ok
        completed += v == version
        if not ok:
            failures.append({"kill": i, "delay_s": round(delay, 3), "error": why})
    return {"kills": kills, "working_after_kill": working, "install_finished_before_kill": completed,
            "interrupted": kills - completed, "left_partial_state": partial,
            "uncut_install_s": round(uncut_s, 3), "install_starts_on_disk_s": round(start_s, 3),
            "failures": failures[:10]}, version


def _kill_rollbacks(into: Path, kills: int, rng: random.Random) -> dict:
    """Kill rollbacks between the two installed bundles; after each, the pair must be the old one
    or the swapped one (both complete). Every other kill lands between 0.8x the moment an uncut
    rollback switches the pair and its end (re-timed every 10 kills)."""
    timed = [_timed_rollback(into) for _ in range(3)]
    working = swapped = 0
    failures = []
    for i in range(kills):
        if i and i % 10 == 0:  # the machine's load drifts: time an uncut rollback again
            timed = [*timed[-2:], _timed_rollback(into)]
        switch_s, uncut_s = (float(np.median([t[k] for t in timed])) for k in (0, 1))
        before = ((into / CURRENT).resolve(), (into / PREVIOUS).resolve())
        # every other kill lands near the switch: from the golden replay before it to the end
        delay = rng.uniform(0, 1.2 * uncut_s) if i % 2 == 0 else rng.uniform(0.8 * switch_s, uncut_s)
        _kill_at(_command(None, into), delay)
        after = ((into / CURRENT).resolve(), (into / PREVIOUS).resolve())
        ok, _, why = serving(into)
        if ok and after not in (before, before[::-1]):
            ok, why = False, f"the pair is neither the old one nor the swapped one: {after}"
        working += ok
        swapped += after == before[::-1]
        if not ok:
            failures.append({"kill": i, "delay_s": round(delay, 3), "error": why})
    return {"kills": kills, "working_after_kill": working, "rollback_finished_before_kill": swapped,
            "interrupted": kills - swapped, "uncut_rollback_s": round(uncut_s, 3),
            "rollback_switches_at_s": round(switch_s, 3),
            "failures": failures[:10]}


def run(bundle: str, kills: int, seed: int = 0, work: str | None = None,
        mode: str = "install") -> dict:
    """Kill ``kills`` installs and/or rollbacks (``mode``: install, rollback, both); returns
    ``{"install": ..., "rollback": ..., "next_install_ok": ...}`` for the modes run."""
    rng = random.Random(seed)
    bundle = Path(bundle)
    tmp = tempfile.TemporaryDirectory(prefix="edgeexit-killtest-") if work is None else None
    work = Path(work or tmp.name)
    into = work / "device"
    install_bundle(make_archive(bundle, work, 1), into)
    install_bundle(make_archive(bundle, work, 2), into)
    version, report = 2, {}
    if mode in ("install", "both"):
        report["install"], version = _kill_installs(bundle, work, into, kills, rng, version)
    if mode in ("rollback", "both"):
        report["rollback"] = _kill_rollbacks(into, kills, rng)
    version = max(read_manifest(into / CURRENT).bundle_version,
                  read_manifest(into / PREVIOUS).bundle_version) + 1
    final = subprocess.run(_command(make_archive(bundle, work, version), into), check=False,
                           capture_output=True, text=True)
    ok, v, why = serving(into)
    report.update({
        "next_install_ok": final.returncode == 0 and ok and v == version,
        "next_install_error": final.stderr.strip()[-300:] if final.returncode else why,
        "leftovers_after_next_install": sorted(
            p.name for p in into.iterdir() if p.name.startswith(STAGING) or ".tmp-" in p.name),
        "bundles_kept": len(list((into / "bundles").iterdir())),  # current and previous
    })
    if tmp is not None:
        tmp.cleanup()
    return report


def _text(r: dict) -> str:
    lines = []
    if "install" in r:
        i = r["install"]
        lines.append(f"install: {i['working_after_kill']}/{i['kills']} kills left a serving bundle and a "
                     f"usable rollback ({i['interrupted']} interrupted the install, "
                     f"{i['install_finished_before_kill']} came after it had switched; "
                     f"{i['left_partial_state']} left leftovers for the next install to remove; an "
                     f"uncut install {i['uncut_install_s']} s, on the disk from "
                     f"{i['install_starts_on_disk_s']} s)")
    if "rollback" in r:
        b = r["rollback"]
        lines.append(f"rollback: {b['working_after_kill']}/{b['kills']} kills left a serving bundle and "
                     f"a usable rollback ({b['interrupted']} interrupted the rollback, "
                     f"{b['rollback_finished_before_kill']} came after it had switched; an uncut "
                     f"rollback {b['uncut_rollback_s']} s, switching at {b['rollback_switches_at_s']} s)")
    lines.append(f"next install {'succeeded' if r['next_install_ok'] else 'FAILED ' + r['next_install_error']}, "
                 f"leftovers {r['leftovers_after_next_install'] or 'none'}, {r['bundles_kept']} bundles kept")
    for part in ("install", "rollback"):
        for f in r.get(part, {}).get("failures", []):
            lines.append(f"  {part} kill {f['kill']} after {f['delay_s']} s: {f['error']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="A bundle directory (written by edgeexit export).")
    ap.add_argument("--kills", type=int, default=100, help="Kills per mode.")
    ap.add_argument("--mode", choices=["install", "rollback", "both"], default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = run(a.bundle, a.kills, a.seed, mode=a.mode)
    print(json.dumps(r, indent=2) if a.json else _text(r))
    ok = all(r[m]["working_after_kill"] == r[m]["kills"] for m in ("install", "rollback") if m in r)
    sys.exit(0 if ok and r["next_install_ok"] else 1)


if __name__ == "__main__":
    main()

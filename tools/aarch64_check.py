#!/usr/bin/env python3
"""Check edgeexit the way a Raspberry Pi runs it: in an aarch64 Debian Bookworm chroot.

The environment (``tools/aarch64_env.py``): a cached Bookworm arm64 chroot (qemu-user-static on
an x86_64 host, native on aarch64) with Python 3.11 and ONLY the device install: the edgeexit
wheel built from this checkout (``pip wheel --no-deps``) over its base and ``[runtime]``
dependencies as aarch64 wheels, pinned by constraints-device.txt. No torch, no onnx.

In it, this tool runs the project's own commands and tests, and checks their output:
  - ``pip list``: no host-only distribution (torch, onnx, ...) is installed;
  - ``edgeexit targets rpi4 --json``: the wheel ships the presets;
  - with ``--bundle``: ``edgeexit install`` (a .tar.gz, unpacked by the device itself), ``edgeexit
    verify`` (``--strict`` over every engine for ``--backend both``), then for every engine that
    verify replayed: ``edgeexit run`` on the bundle's golden inputs (one answer per window, none
    refused) and ``edgeexit bench --meter auto --report`` (energy and the report without
    matplotlib); with ``--stream SIGNAL`` also ``edgeexit run --stream`` on that signal;
  - the device-side tests: every test marked ``device_install`` (they need no torch or onnx),
    run by pytest on the installed wheel (``--no-tests`` skips them).

Usage (as root, or as a user with sudo: the tool then runs itself again under sudo)::

    .venv/bin/python tools/aarch64_check.py --smoke
    .venv/bin/python tools/aarch64_check.py --bundle runs/bundle-rpi4 --backend both --json

Exit status: 0 every check passed, 1 a check failed, 2 the host is not set up / bad arguments.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # aarch64_env, when loaded by path
import aarch64_env as env  # noqa: E402
from aarch64_env import CheckError, HostError  # noqa: E402

log = logging.getLogger("aarch64_check")

REPO = env.REPO
RUN_DIR = "/tmp/edgeexit-check"  # inside the chroot: the wheel, the bundle, the tests
DEVICE_TEST_MARKER = "device_install"
# must NOT be installed in the device venv
HOST_ONLY_DISTRIBUTIONS = ("torch", "onnx", "onnxscript", "tensorflow", "torch-pruning",
                           "torch_pruning", "litert-torch", "litert_torch")
BACKENDS = ("onnxruntime", "litert")


class Steps:
    """Runs commands in the chroot and records each one's outcome and time for the summary."""

    def __init__(self, root: Path, timeout: float) -> None:
        self.root, self.timeout, self.items = root, timeout, []

    def run(self, name: str, cmd: list[str], *, parse: str = "text",
            expect_lines: int | None = None, validate=None, cwd: str | None = None,
            extra_env: dict | None = None) -> dict:
        """Run ``cmd``; ``parse``: ``json`` (one document on stdout), ``lines`` (one JSON object
        per line, ``expect_lines`` of them) or ``text``; ``validate(output)`` returns an error
        message or None. A step passes when the command exits 0 and its output checks out."""
        line = " ".join(cmd)
        log.info("[chroot] %s: %s", name, line if len(line) < 200 else cmd[0] + " ...")
        t0 = time.monotonic()
        try:
            p = env.chroot(self.root, cmd, check=False, timeout=self.timeout, cwd=cwd,
                           env=extra_env)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except CheckError as e:  # timeout
            rc, out, err = 124, "", str(e)
        step = {"name": name, "ok": rc == 0, "rc": rc, "seconds": round(time.monotonic() - t0, 1)}
        output, error = parse_output(out, parse, expect_lines)
        if error is None and validate is not None and output is not None:
            error = validate(output)
        if parse == "lines" and isinstance(output, list):
            step["lines"], step["first_lines"] = len(output), output[:2]
        elif parse == "json" and output is not None:
            step["output"] = output
        else:
            step["stdout_tail"] = out[-2000:]
        if error is not None:
            step["ok"], step["error"] = False, error
        if not step["ok"]:
            step["stderr_tail"] = err[-3000:]
            log.error("[chroot] %s FAILED (status %d%s)\n%s%s", name, rc,
                      f"; {error}" if error else "", out[-2000:], err[-3000:])
        else:
            log.info("[chroot] %s ok (%.1f s)", name, step["seconds"])
        self.items.append(step)
        return step


def parse_output(out: str, parse: str, expect_lines: int | None = None):
    """``(parsed output or None, error or None)`` of a command's stdout."""
    if parse == "json":
        try:
            doc = json.loads(out)
        except ValueError:
            return None, f"stdout is not JSON: {out[:300]!r}"
        if isinstance(doc, dict) and doc.get("ok") is False:
            return doc, "the report says ok: false"
        return doc, None
    if parse == "lines":
        parsed = []
        for ln in (ln for ln in out.splitlines() if ln.strip()):
            try:
                parsed.append(json.loads(ln))
            except ValueError:
                return parsed, f"not a JSON line: {ln[:200]!r}"
        if expect_lines is not None and len(parsed) != expect_lines:
            return parsed, f"expected {expect_lines} JSON lines (one per input), got {len(parsed)}"
        return parsed, None
    return out, None


def no_host_packages(listing: list[dict]) -> str | None:
    """``pip list --format=json`` of the device venv holds no host-only distribution."""
    found = sorted(p["name"] for p in listing if p["name"].lower() in HOST_ONLY_DISTRIBUTIONS)
    return f"host-only packages installed on the device: {', '.join(found)}" if found else None


def all_answered(lines: list[dict]) -> str | None:
    """Every line of ``edgeexit run`` is an answer (a label), none an error."""
    bad = [ln for ln in lines if "error" in ln or "label" not in ln]
    return f"{len(bad)} windows not answered, first: {bad[0]}" if bad else None


def stream_summary(lines: list[dict]) -> str | None:
    """``run --stream --summary-only --json`` printed one summary that found beats."""
    if len(lines) != 1 or not lines[0].get("summary"):
        return f"expected one summary line, got {lines[:2]}"
    return None if lines[0].get("beats", 0) > 0 else "the stream summary counts no beats"


def replayed_backends(report: dict) -> list[str]:
    """The engines ``edgeexit verify --json`` replayed golden.npz with (``golden[NAME]`` checks
    that were not skipped), in the report's order."""
    names = []
    for c in report.get("checks", []):
        name = c.get("check", "")
        if name.startswith("golden[") and "skipped" not in c:
            backend = name[len("golden["):-1]
            if backend in BACKENDS and backend not in names:
                names.append(backend)
    return names


def device_test_files(repo: Path = REPO) -> list[str]:
    """The test files (relative to ``repo``) that mark tests ``device_install``."""
    needle = f"mark.{DEVICE_TEST_MARKER}"
    return sorted(str(p.relative_to(repo)) for p in (repo / "tests").rglob("test_*.py")
                  if needle in p.read_text(encoding="utf-8"))


def stage_bundle(src: Path, run_host: Path) -> tuple[str, int]:
    """Copy bundle ``src`` (a directory, or a .tar.gz as it is) to ``run_host``; write its golden
    inputs to ``run_host/input.npy`` (the windows ``bench`` runs). Returns the bundle's name in
    ``run_host`` and the number of golden inputs. An archive is read with the runtime's own safe
    extraction (``open_bundle``)."""
    import numpy as np

    from edgeexit.errors import EdgeExitError
    from edgeexit.runtime.archive import is_archive, open_bundle
    from edgeexit.runtime.manifest import GOLDEN

    if src.is_dir():
        name = "bundle"
        shutil.copytree(src, run_host / name, symlinks=False)
    elif is_archive(src):
        name = "bundle.tar.gz"
        shutil.copy2(src, run_host / name)
    else:
        raise HostError(f"--bundle {src}: not a bundle directory or .tar.gz")
    try:
        with open_bundle(src) as root, np.load(root / GOLDEN, allow_pickle=False) as golden:
            x = golden["inputs"]
    except (EdgeExitError, OSError, KeyError, ValueError) as e:
        raise HostError(f"--bundle {src}: cannot read its golden inputs ({e})") from None
    np.save(run_host / "input.npy", x)
    return name, len(x)


def stage_stream(src: Path, run_host: Path) -> str:
    """Copy a signal for ``run --stream`` into ``run_host/stream``: a CSV/text file, or a WFDB
    record (every file of the record: ``100`` -> ``100.hea``, ``100.dat``, ``100.atr``, ...).
    Returns the source argument to give ``run --stream`` inside the chroot."""
    dest = run_host / "stream"
    dest.mkdir()
    if src.suffix in (".csv", ".txt") and src.is_file():
        shutil.copy2(src, dest / src.name)
        return f"{RUN_DIR}/stream/{src.name}"
    record = src.with_suffix("") if src.suffix in (".hea", ".dat", ".atr") else src
    files = [p for p in record.parent.glob(record.name + ".*") if p.is_file()]
    if not any(p.suffix == ".hea" for p in files):
        raise HostError(f"--stream {src}: not a .csv/.txt file or a WFDB record (no .hea)")
    for p in files:
        shutil.copy2(p, dest / p.name)
    return f"{RUN_DIR}/stream/{record.name}"


def stage_tests(repo: Path, run_host: Path) -> list[str]:
    """Copy tests/, the data files they read (targets/, calibration/) and pyproject.toml (pytest's
    settings and markers) to ``run_host/src``, with no edgeexit source beside them: the tests
    import the installed wheel. Returns the test files that hold device_install tests."""
    files = device_test_files(repo)
    if not files:
        raise CheckError(f"no test in {repo / 'tests'} is marked {DEVICE_TEST_MARKER}")
    src = run_host / "src"
    for name in ("tests", "targets", "calibration"):
        shutil.copytree(repo / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
    shutil.copy2(repo / "pyproject.toml", src / "pyproject.toml")
    return files


def check_bundle(steps: Steps, run_host: Path, args: argparse.Namespace) -> None:
    """install (an archive), verify, then run and bench (and run --stream) on every engine."""
    name, n_inputs = stage_bundle(Path(args.bundle).expanduser().resolve(), run_host)
    stream = stage_stream(Path(args.stream).expanduser(), run_host) if args.stream else None
    bundle = f"{RUN_DIR}/{name}"
    verify_backend = "all" if args.backend == "both" else args.backend
    strict = ["--strict"] if args.backend == "both" else []
    if name.endswith(".tar.gz"):  # the device unpacks, verifies and installs the archive itself
        steps.run("install", ["edgeexit", "install", bundle, "--into", f"{RUN_DIR}/device",
                              *strict, "--json"], parse="json")
        bundle = f"{RUN_DIR}/device/current"
    verify = steps.run(f"verify[{verify_backend}]", ["edgeexit", "verify", bundle, "--backend",
                                                     verify_backend, *strict, "--json"],
                       parse="json")
    backends = replayed_backends(verify.get("output") or {})
    if not backends:
        log.error("verify replayed golden.npz with no engine: skipping run and bench")
    for backend in backends:
        steps.run(f"run[{backend}]", ["edgeexit", "run", bundle, "--input",
                                      f"{bundle}/golden.npz", "--backend", backend],
                  parse="lines", expect_lines=n_inputs, validate=all_answered)
        # energy on the device side: --meter auto (no meter in the chroot: the CPU-time
        # estimate), and the report without matplotlib (no plots)
        steps.run(f"bench-energy[{backend}]",
                  ["edgeexit", "bench", bundle, "--data", f"{RUN_DIR}/input.npy", "--backend",
                   backend, "--warmup", "2", "--meter", "auto", "--energy-seconds", "0.3",
                   "--no-progress", "--report", f"{RUN_DIR}/report-{backend}", "--json"],
                  parse="json")
        if stream is not None:
            fs = ["--fs", str(args.fs)] if args.fs else []
            steps.run(f"run-stream[{backend}]",
                      ["edgeexit", "run", bundle, "--stream", stream, *fs, "--backend", backend,
                       "--summary-only", "--json"], parse="lines", validate=stream_summary)


def run_checks(root: Path, args: argparse.Namespace) -> list[dict]:
    """Install this checkout's wheel in the chroot, then run the project's commands and tests."""
    run_host = root / RUN_DIR.lstrip("/")
    env.remove_tree(run_host)
    run_host.mkdir(parents=True)
    steps = Steps(root, args.timeout)
    try:
        with tempfile.TemporaryDirectory(prefix="edgeexit-wheel-") as tmp:
            wheel = env.build_wheel(REPO, args.host_python, Path(tmp))
            shutil.copy2(wheel, run_host / wheel.name)
        test_files = [] if args.no_tests else stage_tests(REPO, run_host)
        with env.proc_mounted(root):
            env.install_wheel(root, f"{RUN_DIR}/{wheel.name}")
            steps.run("no-host-packages", [f"{env.VENV}/bin/python", "-m", "pip", "list",
                                           "--format=json"], parse="json",
                      validate=no_host_packages)
            steps.run("targets[rpi4]", ["edgeexit", "targets", "rpi4", "--json"], parse="json")
            if args.bundle:
                check_bundle(steps, run_host, args)
            if test_files:
                steps.run(f"pytest[-m {DEVICE_TEST_MARKER}]",
                          ["python", "-m", "pytest", "-m", DEVICE_TEST_MARKER, "-q",
                           "-p", "no:cacheprovider", *test_files],
                          cwd=f"{RUN_DIR}/src", extra_env={"PYTHONPATH": env.TEST_DEPS})
    finally:
        if args.keep:
            log.info("kept %s (enter the chroot with: mount -t proc proc %s/proc && chroot %s "
                     "/bin/bash; umount %s/proc afterwards)", run_host, root, root, root)
        else:
            env.remove_tree(run_host)
    return steps.items


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Install the edgeexit device runtime in a cached aarch64 Debian Bookworm "
        "chroot (qemu-user-static) and run the project's own commands (install, verify, run, "
        "bench, run --stream) and its device-side tests (marked device_install) there.",
        epilog="Needs root. Exit status: 0 passed, 1 a check failed, 2 host not set up or bad "
        "arguments.",
    )
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--bundle", help="bundle directory (or .tar.gz) written by `edgeexit export`")
    what.add_argument("--smoke", action="store_true",
                      help="no bundle: install, check the venv and the presets, run the tests")
    what.add_argument("--build-only", action="store_true",
                      help="only build/refresh the cached chroot")
    ap.add_argument("--backend", default="both", choices=["auto", "onnxruntime", "litert", "both"],
                    help="engine for verify/run/bench; 'both' checks every engine the bundle has "
                    "files for, verify --strict (default: both)")
    ap.add_argument("--stream", metavar="SIGNAL", default=None,
                    help="with --bundle: also `edgeexit run --stream` this WFDB record "
                    "(.../mitdb/100) or CSV file in the chroot")
    ap.add_argument("--fs", type=float, default=None,
                    help="sampling rate of a CSV --stream signal (Hz)")
    ap.add_argument("--no-tests", action="store_true",
                    help="skip the device-side tests (pytest -m device_install)")
    ap.add_argument("--cache", default="~/.cache/edgeexit/aarch64-bookworm",
                    help="where the rootfs, the venv and the wheels are cached "
                    "(default: %(default)s)")
    ap.add_argument("--mirror", default=env.DEFAULT_MIRROR,
                    help="Debian mirror (default: %(default)s)")
    ap.add_argument("--host-python", default=sys.executable,
                    help="Python with pip on the host, used for `pip download`/`pip wheel` "
                    "(default: this interpreter)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the rootfs and the venv")
    ap.add_argument("--rebuild-venv", action="store_true", help="rebuild only the venv and the test requirements")
    ap.add_argument("--setup-host", dest="setup_host", action="store_true", default=True,
                    help="install qemu-user-static/binfmt-support/debootstrap with apt-get and "
                    "enable binfmt if missing, logging each command (the default)")
    ap.add_argument("--no-setup-host", dest="setup_host", action="store_false",
                    help="do not change the host: print the set-up commands it needs and exit "
                    "with status 2")
    ap.add_argument("--keep", action="store_true",
                    help=f"keep {RUN_DIR} in the chroot for inspection")
    ap.add_argument("--timeout", type=float, default=1800,
                    help="seconds allowed for each command under emulation (default: %(default)s)")
    ap.add_argument("--json", action="store_true",
                    help="print a JSON summary on stdout at the end")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every command")
    args = ap.parse_args(argv)
    if args.stream and not args.bundle:
        ap.error("--stream needs --bundle")
    return args


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse a bundle or a signal that does not exist before touching the host."""
    if args.bundle:
        bundle = Path(args.bundle).expanduser()
        if not bundle.exists():
            raise HostError(f"--bundle {args.bundle}: no such file or directory")
        if bundle.is_dir() and not (bundle / "manifest.json").is_file():
            raise HostError(f"--bundle {args.bundle} is not a bundle: manifest.json not found "
                            "(give the directory that `edgeexit export` wrote, or its .tar.gz)")
    if args.stream:
        s = Path(args.stream).expanduser()
        if not (s.is_file() or s.with_suffix(".hea").is_file() or Path(f"{s}.hea").is_file()):
            raise HostError(f"--stream {args.stream}: no such file or WFDB record")
    try:
        ok = env.run_command([args.host_python, "-m", "pip", "--version"], capture=True,
                             check=False, what="pip --version").returncode == 0
    except CheckError:  # no such interpreter
        ok = False
    if not ok:
        raise HostError(f"{args.host_python} cannot run pip: pass --host-python with a venv's "
                        "python (e.g. .venv/bin/python) or install python3-pip")


def build_environment(args: argparse.Namespace, cache: Path, summary: dict) -> Path:
    """The cached rootfs and venv (built when missing or stale); returns the rootfs."""
    t0 = time.monotonic()
    rootfs = env.ensure_rootfs(cache, args.mirror, args.rebuild)
    summary["timings_s"]["rootfs"] = round(time.monotonic() - t0, 1)
    root = cache / "rootfs"
    env.prepare_interpreter(root)
    t0 = time.monotonic()
    reqs = env.device_requirements()
    venv = env.ensure_venv(root, cache, reqs, args.host_python, args.rebuild or args.rebuild_venv)
    tests = env.ensure_test_deps(root, cache, args.host_python, args.rebuild or args.rebuild_venv)
    summary["timings_s"]["venv"] = round(time.monotonic() - t0, 1)
    summary["rootfs"] = {k: rootfs[k] for k in
                         ("suite", "arch", "python", "glibc", "created", "seconds", "reused")}
    summary["venv"] = {"path": env.VENV, "requirements": reqs,
                       "constraints": env.DEVICE_CONSTRAINTS.name, "packages": venv["packages"],
                       "reused": venv["reused"]}
    summary["test_deps"] = {"path": env.TEST_DEPS, "packages": tests["packages"],
                            "reused": tests["reused"]}
    return root


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    summary: dict = {"ok": False, "timings_s": {}}
    t_start = time.monotonic()
    status = 1
    try:
        _check_arguments(args)
        env.ensure_root(Path(__file__).resolve(), sys.argv[1:] if argv is None else list(argv))
        summary["host"] = env.check_host(args.setup_host)
        cache = Path(args.cache).expanduser().resolve()
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise HostError(f"another aarch64 check is using {cache}; wait for it or pass "
                                "another --cache") from None
            root = build_environment(args, cache, summary)
            if args.build_only:
                summary["ok"], status = True, 0
            else:
                t0 = time.monotonic()
                summary["steps"] = run_checks(root, args)
                summary["timings_s"]["checks"] = round(time.monotonic() - t0, 1)
                summary["ok"] = all(s["ok"] for s in summary["steps"])
                status = 0 if summary["ok"] else 1
    except HostError as e:
        log.error("%s", e)
        summary["error"], status = str(e), 2
    except CheckError as e:
        log.error("%s", e)
        summary["error"], status = str(e), 1
    except KeyboardInterrupt:
        log.error("interrupted")
        summary["error"], status = "interrupted", 1
    summary["timings_s"]["total"] = round(time.monotonic() - t_start, 1)
    for s in summary.get("steps", []):
        log.info("%-26s %s  (%.1f s)", s["name"], "ok" if s["ok"] else "FAILED", s["seconds"])
    log.info("%s in %.0f s", "PASSED" if status == 0 else "FAILED", summary["timings_s"]["total"])
    if args.json:
        print(json.dumps(summary, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())

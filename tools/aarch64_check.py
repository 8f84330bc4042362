#!/usr/bin/env python3
"""Check a bundle the way a Raspberry Pi would run it: in an aarch64 Debian Bookworm chroot.

On an x86_64 host the chroot runs under qemu-user-static (binfmt_misc); on an aarch64 host it runs
natively. The chroot gets Raspberry Pi OS Bookworm's Python (3.11) and ONLY the device side of
edgeexit: the package itself plus its base and ``[runtime]`` dependencies (numpy, click,
onnxruntime, ai-edge-litert) as aarch64 wheels, so the check proves that the runtime installs from
wheels on the device's platform and needs neither torch nor onnx.

What it does:
  1. checks the host (root, debootstrap, qemu-user-static, binfmt for aarch64) and runs the
     commands that fix what is missing (apt-get install, update-binfmts; each is logged), unless
     ``--no-setup-host`` is given: then it only prints them and exits with status 2;
  2. builds and caches a minbase Bookworm arm64 root file system (debootstrap; built in a temporary
     directory and renamed when complete, so an interrupted build is never reused);
  3. builds and caches ``/opt/edgeexit-venv`` in it: the device requirements are read from
     pyproject.toml and pinned by constraints-device.txt, their aarch64 cp311 wheels are
     downloaded on the host (``pip download --platform -c constraints-device.txt``) and installed
     offline in the chroot with ``--only-binary=:all:`` and the same constraints;
  4. for each run: builds the edgeexit wheel on the host, installs it ``--no-deps`` in the chroot,
     asserts torch/onnx/tensorflow are not importable there, imports the runtime and both engines,
     checks that ``edgeexit targets rpi4`` reads the presets the wheel ships, runs a tiny
     hand-built ONNX and TFLite model with each engine against numpy (``--smoke`` stops here),
     then copies the bundle in and runs ``edgeexit verify``, ``edgeexit run`` and ``edgeexit bench
     --meter auto --report`` (energy and the report on the device side, without matplotlib) on it.
Only /proc is mounted in the chroot (onnxruntime and LiteRT crash under qemu with /sys mounted);
it is unmounted in a ``finally``.

Usage (as root; the host side needs only Python 3.11's standard library and pip)::

    sudo python3 tools/aarch64_check.py --smoke
    sudo python3 tools/aarch64_check.py --bundle runs/bundle-rpi4 --backend both --json

Exit status: 0 every check passed, 1 a check failed, 2 the host is not set up / bad arguments.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

log = logging.getLogger("aarch64_check")

REPO = Path(__file__).resolve().parents[1]
# pins the device requirements (and their dependencies) to versions with aarch64 cp311 wheels
DEVICE_CONSTRAINTS = REPO / "constraints-device.txt"
# the bundle layout (edgeexit/runtime/manifest.py): golden inputs live under this key
BUNDLE_MANIFEST = "manifest.json"
GOLDEN_FILE = "golden.npz"
GOLDEN_INPUTS_KEY = "inputs"

SUITE = "bookworm"  # Raspberry Pi OS Bookworm is Debian 12
DEB_ARCH = "arm64"
VARIANT = "minbase"
# python3-venv brings ensurepip's pip wheel; no network is used inside the chroot (wheels are
# downloaded on the host), so ca-certificates and python3-pip are not needed
INCLUDE = ("python3", "python3-venv")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEVICE_PYTHON = "3.11"  # Bookworm's python3
DEVICE_GLIBC_MINOR = 36  # Bookworm's glibc 2.36: accepts manylinux_2_17 .. manylinux_2_36 wheels
VENV = "/opt/edgeexit-venv"
RUN_DIR = "/tmp/edgeexit-check"
STAMP = ".edgeexit-stamp.json"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ENTRY = BINFMT_DIR / "qemu-aarch64"
HOST_PACKAGES = ("qemu-user-static", "binfmt-support", "debootstrap")
# must NOT be importable in the device venv
HOST_ONLY_MODULES = ("torch", "onnx", "onnxscript", "tensorflow", "torch_pruning", "litert_torch")
CHROOT_PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# every chroot command starts from a clean environment: no host variable (PIP_*, proxies) leaks in
CHROOT_ENV = [
    "/usr/bin/env",
    "-i",
    f"PATH={CHROOT_PATH}",
    "HOME=/root",
    "LANG=C.UTF-8",
    "PIP_DISABLE_PIP_VERSION_CHECK=1",
    "PIP_NO_INPUT=1",
    "PYTHONDONTWRITEBYTECODE=1",
]


class CheckError(Exception):
    """A step failed; the message says which and what to do."""


class HostError(CheckError):
    """The host lacks something the check needs (exit status 2)."""


# --------------------------------------------------------------------------------------------
# small helpers


def _run(
    cmd: list[str],
    *,
    capture: bool = False,
    check: bool = True,
    timeout: float | None = None,
    what: str = "",
) -> subprocess.CompletedProcess:
    """Run ``cmd`` (logged); raise CheckError with the tail of its output when it fails."""
    log.debug("$ %s", " ".join(map(str, cmd)))
    try:
        p = subprocess.run(
            [str(c) for c in cmd],
            text=True,
            timeout=timeout,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
    except OSError as e:
        raise CheckError(f"{what or cmd[0]}: cannot run {e.filename}: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise CheckError(f"{what or cmd[0]}: timed out after {timeout:.0f} s") from None
    if check and p.returncode != 0:
        tail = (
            ((p.stdout or "") + (p.stderr or ""))[-3000:] if capture else "(see the output above)"
        )
        raise CheckError(
            f"{what or ' '.join(map(str, cmd[:3]))} failed with status {p.returncode}:\n{tail}"
        )
    return p


def _run_streamed(
    cmd: list, *, what: str, every: float = 30.0, env: dict | None = None
) -> None:
    """Run a long command: its lines logged at DEBUG, a progress line at INFO every ``every`` s.

    Nothing reaches stdout (it carries only the ``--json`` summary) and stdin is closed.
    """
    log.debug("$ %s", " ".join(map(str, cmd)))
    tail: collections.deque[str] = collections.deque(maxlen=40)
    t0 = last = time.monotonic()
    try:
        p = subprocess.Popen(
            [str(c) for c in cmd],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            errors="replace",
            env=env,
        )
    except FileNotFoundError as e:
        raise CheckError(f"{what}: command not found ({e.filename})") from None
    assert p.stdout is not None
    for line in p.stdout:
        line = line.rstrip()
        tail.append(line)
        log.debug("%s: %s", what, line)
        if time.monotonic() - last >= every:
            last = time.monotonic()
            log.info("%s: running for %.0f s; %s", what, last - t0, line[:120])
    if p.wait() != 0:
        raise CheckError(f"{what} failed with status {p.returncode}:\n" + "\n".join(tail))


def _mount_points() -> list[Path]:
    """Every mount point of this mount namespace (from /proc/self/mountinfo)."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            raw = line.split()[4]
            # mountinfo escapes space, tab, newline and backslash as octal
            points.append(Path(raw.encode().decode("unicode_escape")))
    return points


def _mounts_under(path: Path) -> list[Path]:
    path = path.resolve()
    return [m for m in _mount_points() if m == path or path in m.parents]


def _umount_all_under(path: Path) -> None:
    """Unmount everything mounted at or below ``path``, deepest first."""
    for m in sorted(set(_mounts_under(path)), key=lambda p: len(p.parts), reverse=True):
        log.info("unmounting %s", m)
        if _run(["umount", m], check=False, capture=True).returncode != 0:
            _run(["umount", "-l", m], check=False, capture=True)
    left = _mounts_under(path)
    if left:
        raise CheckError(f"could not unmount {', '.join(map(str, left))}; unmount them by hand")


def _rmtree(path: Path) -> None:
    """Remove ``path`` after making sure nothing is mounted inside it (never recurse into /proc)."""
    if not path.exists() and not path.is_symlink():
        return
    _umount_all_under(path)
    shutil.rmtree(path)


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def device_requirements(repo: Path = REPO) -> list[str]:
    """The base dependencies plus the ``[runtime]`` extra of pyproject.toml (no host extras)."""
    with open(repo / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    extras = project.get("optional-dependencies", {})
    if "runtime" not in extras:
        raise CheckError(f"{repo / 'pyproject.toml'} has no [runtime] extra")
    return list(project.get("dependencies", [])) + list(extras["runtime"])


def device_constraints(path: Path = DEVICE_CONSTRAINTS) -> str:
    """The text of constraints-device.txt (the venv is rebuilt when it changes)."""
    try:
        return path.read_text()
    except OSError as e:
        raise CheckError(f"cannot read the device constraints {path}: {e}") from None


# --------------------------------------------------------------------------------------------
# the host


def _native() -> bool:
    return platform.machine() in ("aarch64", "arm64")


def _binfmt_state() -> tuple[str, dict]:
    """('ok'|'unmounted'|'missing'|'disabled', fields of the qemu-aarch64 entry)."""
    if not (BINFMT_DIR / "register").exists():
        return "unmounted", {}
    if not BINFMT_ENTRY.exists():
        return "missing", {}
    lines = BINFMT_ENTRY.read_text().splitlines()
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    fields["flags"] = fields.get("flags:", fields.get("flags", "")).strip()
    return ("ok" if lines and lines[0] == "enabled" else "disabled"), fields


def _missing_packages() -> list[str]:
    if not shutil.which("dpkg-query"):
        return [
            p
            for p, exe in zip(
                HOST_PACKAGES,
                ("qemu-aarch64-static", "update-binfmts", "debootstrap"),
                strict=True,
            )
            if not shutil.which(exe)
        ]
    missing = []
    for pkg in HOST_PACKAGES:
        p = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if "install ok installed" not in p.stdout:
            missing.append(pkg)
    return missing


def check_host(setup: bool) -> dict:
    """Check (and with ``setup``, fix) what the host needs; raise HostError listing the fixes.

    ``setup`` is the default (the tool runs as root anyway): missing host packages are installed
    with apt-get and binfmt is enabled, each command logged. ``--no-setup-host`` only prints them.
    """
    info = {"machine": platform.machine(), "native": _native(), "python": platform.python_version()}
    if os.geteuid() != 0:
        raise HostError(
            "this check needs root (debootstrap, chroot and mounting /proc): run it as "
            f"`sudo {sys.executable} {' '.join(sys.argv)}`"
        )
    fixes: list[list[str]] = []
    packages = [] if _native() else list(HOST_PACKAGES)
    missing = [p for p in _missing_packages() if p in packages or p == "debootstrap"]
    if missing:
        fixes += [["apt-get", "update"], ["apt-get", "install", "-y", *missing]]
    if not _native():
        state, _ = _binfmt_state()
        if state == "unmounted":
            fixes.append(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)])
        if state != "ok":
            fixes.append(["update-binfmts", "--enable", "qemu-aarch64"])
    for cmd in ("chroot", "mount", "umount"):
        if not shutil.which(cmd):
            raise HostError(f"`{cmd}` is not on PATH (package coreutils/mount)")
    if fixes and not setup:
        lines = "\n".join("  " + " ".join(f) for f in fixes)
        raise HostError(
            "the host is not ready for an aarch64 chroot; run (as root):\n"
            + lines
            + "\nor drop --no-setup-host to let this tool run exactly those commands"
        )
    if missing:
        log.info(
            "the host lacks %s: installing %s with apt-get (pass --no-setup-host to only print "
            "the commands)",
            ", ".join(missing),
            "it" if len(missing) == 1 else "them",
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in fixes:
        log.info("setting up the host: %s", " ".join(cmd))
        _run_streamed(cmd, what=" ".join(cmd[:3]), env=env)
    info["setup"] = [" ".join(cmd) for cmd in fixes]
    if not _native():
        state, fields = _binfmt_state()
        if state != "ok":
            raise HostError(
                f"binfmt_misc has no enabled qemu-aarch64 entry ({state}) after set-up; check "
                "`update-binfmts --display qemu-aarch64` (in a container the HOST must register "
                "it, "
                "e.g. `docker run --privileged --rm tonistiigi/binfmt --install arm64` or "
                "qemu-user-static on the host)"
            )
        info["binfmt"] = {"interpreter": fields.get("interpreter", ""), "flags": fields["flags"]}
        qemu = shutil.which("qemu-aarch64-static")
        if qemu:
            info["qemu"] = _run([qemu, "--version"], capture=True).stdout.splitlines()[0]
    info["debootstrap"] = _dpkg_version("debootstrap")
    return info


def _dpkg_version(pkg: str) -> str:
    p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else "unknown"


# --------------------------------------------------------------------------------------------
# the chroot


def _prepare_interpreter(root: Path) -> None:
    """Without binfmt's F (fix-binary) flag the kernel looks for qemu in the chroot: copy it in."""
    if _native():
        return
    _, fields = _binfmt_state()
    if "F" in fields.get("flags", ""):
        return
    interp = fields.get("interpreter", "")
    if interp and Path(interp).exists():
        dest = root / interp.lstrip("/")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(interp, dest)


@contextlib.contextmanager
def proc_mounted(root: Path):
    """Mount /proc (and only /proc) in the chroot for the duration; always unmount it."""
    target = root / "proc"
    target.mkdir(exist_ok=True)
    if target.resolve() in _mount_points():
        raise CheckError(f"{target} is already mounted (another check running?); unmount it first")
    _run(["mount", "-t", "proc", "proc", target], what="mount /proc in the chroot")
    try:
        yield
    finally:
        _umount_all_under(target)


def chroot(
    root: Path,
    cmd: list[str],
    *,
    capture: bool = True,
    check: bool = True,
    timeout: float | None = None,
    what: str = "",
) -> subprocess.CompletedProcess:
    """Run ``cmd`` inside ``root`` with a clean environment (no host variables leak in)."""
    return _run(
        ["chroot", root, *CHROOT_ENV, *cmd],
        capture=capture,
        check=check,
        timeout=timeout,
        what=what or f"chroot: {' '.join(cmd[:3])}",
    )


def ensure_rootfs(cache: Path, mirror: str, rebuild: bool) -> dict:
    """The cached Bookworm arm64 rootfs at ``cache/rootfs`` (built when missing or different)."""
    root = cache / "rootfs"
    want = {"suite": SUITE, "arch": DEB_ARCH, "variant": VARIANT, "include": list(INCLUDE)}
    stamp = _read_stamp(root / STAMP)
    if stamp and not rebuild and {k: stamp.get(k) for k in want} == want:
        log.info(
            "reusing the cached rootfs %s (built %s in %.0f s)",
            root,
            stamp["created"],
            stamp["seconds"],
        )
        return {**stamp, "reused": True}
    for old in [root, *cache.glob("rootfs.partial-*")]:
        if old.exists():
            log.info(
                "removing %s (%s)", old, "incomplete build" if old != root else "stale or --rebuild"
            )
            _rmtree(old)
    tmp = cache / f"rootfs.partial-{os.getpid()}"
    cmd = [
        "debootstrap",
        f"--arch={DEB_ARCH}",
        f"--variant={VARIANT}",
        f"--include={','.join(INCLUDE)}",
        SUITE,
        tmp,
        mirror,
    ]
    log.info(
        "building the %s %s rootfs in %s (debootstrap under %s; takes minutes)",
        SUITE,
        DEB_ARCH,
        tmp,
        "native execution" if _native() else "qemu",
    )
    t0 = time.monotonic()
    try:
        _run_streamed(cmd, what="debootstrap")
    finally:
        _umount_all_under(tmp)  # debootstrap mounts /proc and /sys while it runs
    _prepare_interpreter(tmp)
    with proc_mounted(tmp):
        chroot(tmp, ["apt-get", "clean"])
        py = chroot(
            tmp,
            [
                "python3",
                "-c",
                "import platform; print(platform.python_version(), "
                "platform.machine(), platform.libc_ver()[1])",
            ],
        ).stdout.split()
    stamp = {
        **want,
        "mirror": mirror,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.monotonic() - t0, 1),
        "python": py[0],
        "machine": py[1],
        "glibc": py[2],
        "debootstrap": _dpkg_version("debootstrap"),
    }
    if py[1] != "aarch64":
        raise CheckError(f"the new rootfs reports machine {py[1]!r}, expected aarch64")
    _write_stamp(tmp / STAMP, stamp)
    tmp.rename(root)
    log.info("rootfs ready: Python %s, glibc %s, %.0f s", py[0], py[2], stamp["seconds"])
    return {**stamp, "reused": False}


def _download_wheels(dest: Path, reqs: list[str], host_python: str, constraints: Path) -> None:
    platforms = [f"manylinux_2_{m}_aarch64" for m in range(DEVICE_GLIBC_MINOR, 16, -1)]
    platforms += ["manylinux2014_aarch64", "linux_aarch64"]
    abi = "cp" + DEVICE_PYTHON.replace(".", "")
    cmd = [
        host_python,
        "-m",
        "pip",
        "download",
        "--dest",
        dest,
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        DEVICE_PYTHON,
        "--abi",
        abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
        "--constraint",
        constraints,
    ]
    for p in platforms:
        cmd += ["--platform", p]
    log.info(
        "downloading aarch64 %s wheels on the host: %s (pinned by %s)",
        abi,
        " ".join(reqs),
        constraints.name,
    )
    _run([*cmd, *reqs], capture=True, what="pip download (aarch64 wheels)")


def ensure_venv(root: Path, cache: Path, reqs: list[str], host_python: str, rebuild: bool) -> dict:
    """The cached device venv ``/opt/edgeexit-venv`` in the rootfs: ``reqs`` pinned by
    constraints-device.txt (rebuilt when either changes)."""
    venv = root / VENV.lstrip("/")
    stamp = _read_stamp(venv / STAMP)
    constraints = device_constraints()
    if (
        stamp
        and not rebuild
        and stamp.get("requirements") == reqs
        and stamp.get("constraints") == constraints
    ):
        log.info(
            "reusing the cached venv %s (%s)",
            VENV,
            ", ".join(f"{k} {v}" for k, v in stamp["packages"].items()),
        )
        return {**stamp, "reused": True}
    t0 = time.monotonic()
    wheels = cache / "wheels"
    wheels.mkdir(exist_ok=True)
    _download_wheels(wheels, reqs, host_python, DEVICE_CONSTRAINTS)
    if venv.exists():
        log.info(
            "removing the old venv (%s)",
            "--rebuild" if rebuild else "requirements or constraints changed",
        )
        _rmtree(venv)
    inside = root / "tmp" / "edgeexit-wheels"
    _rmtree(inside)
    shutil.copytree(wheels, inside)
    (inside / DEVICE_CONSTRAINTS.name).write_text(constraints)
    try:
        with proc_mounted(root):
            log.info(
                "creating %s in the chroot and installing the device requirements offline", VENV
            )
            chroot(root, ["python3", "-m", "venv", VENV], what="python3 -m venv")
            _run_streamed(
                [
                    "chroot",
                    root,
                    *CHROOT_ENV,
                    f"{VENV}/bin/python",
                    "-m",
                    "pip",
                    "install",
                    "--no-index",
                    "--find-links",
                    "/tmp/edgeexit-wheels",
                    "--only-binary=:all:",
                    "--constraint",
                    f"/tmp/edgeexit-wheels/{DEVICE_CONSTRAINTS.name}",
                    *reqs,
                ],
                what="pip install (device requirements)",
            )
            listing = json.loads(
                chroot(root, [f"{VENV}/bin/python", "-m", "pip", "list", "--format=json"]).stdout
            )
    finally:
        _rmtree(inside)
    packages = {p["name"]: p["version"] for p in listing}
    stamp = {
        "requirements": reqs,
        "constraints": constraints,
        "packages": packages,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.monotonic() - t0, 1),
    }
    _write_stamp(venv / STAMP, stamp)
    log.info(
        "venv ready in %.0f s: %s",
        stamp["seconds"],
        ", ".join(f"{k} {v}" for k, v in packages.items()),
    )
    return {**stamp, "reused": False}


# --------------------------------------------------------------------------------------------
# the checks run inside the chroot

ISOLATION_CHECK = f"""
import importlib.util, json, sys
found = [m for m in {HOST_ONLY_MODULES!r} if importlib.util.find_spec(m) is not None]
import edgeexit, edgeexit.runtime, onnxruntime, ai_edge_litert.interpreter
loaded = [m for m in {HOST_ONLY_MODULES!r} if m in sys.modules]
import platform, importlib.metadata as md
print(json.dumps({{"importable_host_modules": found, "loaded_host_modules": loaded,
                  "machine": platform.machine(), "python": platform.python_version(),
                  "edgeexit": md.version("edgeexit"), "onnxruntime": onnxruntime.__version__,
                  "ai_edge_litert": md.version("ai-edge-litert"),
                  "providers": onnxruntime.get_available_providers()}}))
sys.exit(1 if found or loaded else 0)
"""

# Builds a tiny ONNX model (hand-encoded protobuf: no onnx package) and a tiny TFLite model (the
# flatbuffers schema that ai-edge-litert ships: no converter), runs each with its engine and
# compares with numpy. Proves both engines really execute under emulation, before any bundle.
SMOKE_SCRIPT = r'''
import json, platform, sys
import numpy as np

def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)

def _f(num, wire, payload):  # one protobuf field: varint (wire 0) or length-delimited (wire 2)
    key = _varint((num << 3) | wire)
    return key + (_varint(payload) if wire == 0 else _varint(len(payload)) + payload)

def _s(num, text):
    return _f(num, 2, text.encode())

def _value_info(name, dims):
    shape = b"".join(_f(1, 2, _f(1, 0, d)) for d in dims)
    return _s(1, name) + _f(2, 2, _f(1, 2, _f(1, 0, 1) + _f(2, 2, shape)))  # FLOAT tensor

def _initializer(name, arr):
    arr = np.ascontiguousarray(arr, dtype="<f4")
    dims = b"".join(_f(1, 0, d) for d in arr.shape)
    return dims + _f(2, 0, 1) + _s(8, name) + _f(9, 2, arr.tobytes())  # FLOAT, raw_data

def _node(op, inputs, outputs):
    return b"".join(_s(1, i) for i in inputs) + b"".join(_s(2, o) for o in outputs) + _s(4, op)

def make_onnx(w, b, x_shape):
    """Conv1d -> Relu -> GlobalAveragePool -> Flatten -> Softmax (opset 13, IR 8)."""
    nodes = [_node("Conv", ["x", "w", "b"], ["c"]), _node("Relu", ["c"], ["r"]),
             _node("GlobalAveragePool", ["r"], ["p"]), _node("Flatten", ["p"], ["f"]),
             _node("Softmax", ["f"], ["y"])]
    graph = (b"".join(_f(1, 2, n) for n in nodes) + _s(2, "smoke")
             + _f(5, 2, _initializer("w", w)) + _f(5, 2, _initializer("b", b))
             + _f(11, 2, _value_info("x", x_shape))
             + _f(12, 2, _value_info("y", [x_shape[0], w.shape[0]])))
    opset = _s(1, "") + _f(2, 0, 13)
    return _f(1, 0, 8) + _s(2, "edgeexit-smoke") + _f(7, 2, graph) + _f(8, 2, opset)

def ref_onnx(x, w, b):
    k, l = w.shape[2], x.shape[2]
    out = sum(np.einsum("ncl,oc->nol", x[:, :, j:l - k + 1 + j].astype(np.float64), w[:, :, j])
              for j in range(k))
    h = np.maximum(out + b[None, :, None], 0).mean(axis=2)
    e = np.exp(h - h.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

def make_tflite(w, b, batch):
    """FULLY_CONNECTED (fused RELU) -> SOFTMAX."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s
    def tensor(shape, buf, name):
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = list(shape), s.TensorType.FLOAT32, buf, name
        return t
    def buffer(arr=None):
        bt = s.BufferT()
        if arr is not None:
            bt.data = list(np.ascontiguousarray(arr, "<f4").tobytes())
        return bt
    def opcode(code):
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        return oc
    fc_opt = s.FullyConnectedOptionsT()
    fc_opt.fusedActivationFunction = s.ActivationFunctionType.RELU
    sm_opt = s.SoftmaxOptionsT()
    sm_opt.beta = 1.0
    fc, sm = s.OperatorT(), s.OperatorT()
    fc.opcodeIndex, fc.inputs, fc.outputs = 0, [0, 1, 2], [3]
    fc.builtinOptionsType, fc.builtinOptions = s.BuiltinOptions.FullyConnectedOptions, fc_opt
    sm.opcodeIndex, sm.inputs, sm.outputs = 1, [3], [4]
    sm.builtinOptionsType, sm.builtinOptions = s.BuiltinOptions.SoftmaxOptions, sm_opt
    sg = s.SubGraphT()
    sg.name, sg.inputs, sg.outputs, sg.operators = "main", [0], [4], [fc, sm]
    sg.tensors = [tensor([batch, w.shape[1]], 1, "x"), tensor(w.shape, 2, "w"),
                  tensor(b.shape, 3, "b"),
                  tensor([batch, w.shape[0]], 4, "h"), tensor([batch, w.shape[0]], 5, "y")]
    m = s.ModelT()
    m.version, m.description, m.subgraphs = 3, "edgeexit-smoke", [sg]
    m.operatorCodes = [opcode(s.BuiltinOperator.FULLY_CONNECTED), opcode(s.BuiltinOperator.SOFTMAX)]
    m.buffers = [buffer(), buffer(), buffer(w), buffer(b), buffer(), buffer()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())

def ref_tflite(x, w, b):
    h = np.maximum(x.astype(np.float64) @ w.T.astype(np.float64) + b, 0)
    e = np.exp(h - h.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

def main(workdir, engines):
    rng = np.random.default_rng(0)
    report, ok = {"machine": platform.machine()}, True
    if "onnxruntime" in engines:
        import onnxruntime as ort
        x = rng.standard_normal((3, 2, 32)).astype(np.float32)
        w = rng.standard_normal((4, 2, 5)).astype(np.float32)
        b = rng.standard_normal(4).astype(np.float32)
        path = f"{workdir}/smoke.onnx"
        with open(path, "wb") as f:
            f.write(make_onnx(w, b, list(x.shape)))
        y = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        err = float(np.abs(y - ref_onnx(x, w, b)).max())
        report["onnxruntime"] = {"model": "Conv,Relu,GlobalAveragePool,Flatten,Softmax",
                                 "max_abs_err": err, "ok": err < 1e-4}
        ok &= err < 1e-4
    if "litert" in engines:
        from ai_edge_litert import interpreter as lt
        x = rng.standard_normal((3, 16)).astype(np.float32)
        w = rng.standard_normal((5, 16)).astype(np.float32)
        b = rng.standard_normal(5).astype(np.float32)
        path = f"{workdir}/smoke.tflite"
        with open(path, "wb") as f:
            f.write(make_tflite(w, b, x.shape[0]))
        it = lt.Interpreter(model_path=path, num_threads=2)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        y = it.get_tensor(it.get_output_details()[0]["index"])
        err = float(np.abs(y - ref_tflite(x, w, b)).max())
        report["litert"] = {"model": "FULLY_CONNECTED(relu),SOFTMAX", "max_abs_err": err,
                            "ok": err < 1e-4}
        ok &= err < 1e-4
    print(json.dumps(report))
    return 0 if ok else 1

sys.exit(main(sys.argv[1], sys.argv[2].split(",")))
'''

GOLDEN_TO_NPY = f"""
import sys, numpy as np
with np.load(sys.argv[1]) as d:
    if {GOLDEN_INPUTS_KEY!r} not in d.files:
        sys.exit(f"{{sys.argv[1]}} has no {GOLDEN_INPUTS_KEY!r} array "
                 f"(has: {{', '.join(d.files)}})")
    x = d[{GOLDEN_INPUTS_KEY!r}]
np.save(sys.argv[2], x)
print(len(x))
"""


def build_wheel(repo: Path, host_python: str, out: Path) -> Path:
    """The edgeexit wheel, built on the host from a copy of the package source (repo untouched)."""
    src = out / "src"
    src.mkdir(parents=True)
    shutil.copytree(
        repo / "edgeexit", src / "edgeexit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    shutil.copytree(repo / "targets", src / "targets")  # setup.py ships them in the wheel
    shutil.copytree(repo / "calibration", src / "calibration")  # and the int8 recipes
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        if (repo / name).exists():
            shutil.copy2(repo / name, src / name)
    log.info("building the edgeexit wheel on the host (pip wheel --no-deps)")
    cmd = [host_python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", out, src]
    try:  # offline when the host has setuptools; otherwise pip fetches the build backend
        _run([*cmd, "--no-build-isolation"], capture=True, what="pip wheel")
    except CheckError:
        _run(cmd, capture=True, what="pip wheel")
    wheels = sorted(out.glob("edgeexit-*.whl"))
    if not wheels:
        raise CheckError(f"pip wheel wrote no edgeexit wheel to {out}")
    return wheels[-1]


def _bundle_backends(bundle: Path, backend: str) -> list[str]:
    """The backends to check: ``both`` means every engine whose format the bundle ships."""
    if backend != "both":
        return [backend]
    try:
        manifest = json.loads((bundle / BUNDLE_MANIFEST).read_text())
        formats = {a["format"] for seg in manifest["segments"] for a in seg["artifacts"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning(
            "cannot read the formats from %s (%s); checking both engines",
            bundle / BUNDLE_MANIFEST,
            e,
        )
        return ["onnxruntime", "litert"]
    chosen = [b for b, f in (("onnxruntime", "onnx"), ("litert", "tflite")) if f in formats]
    for b, f in (("onnxruntime", "onnx"), ("litert", "tflite")):
        if f not in formats:
            log.warning("the bundle has no .%s files: skipping %s", f, b)
    return chosen or ["auto"]


def _safe_extract(tf: tarfile.TarFile, dest: Path, src: Path) -> None:
    """Extract only plain files and directories that stay inside ``dest`` (no links, devices)."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (Bookworm's 3.11.2 lacks it)
        tf.extractall(dest, filter="data")
        return
    for m in tf.getmembers():
        parts = Path(m.name).parts
        if Path(m.name).is_absolute() or ".." in parts or not (m.isfile() or m.isdir()):
            raise CheckError(f"{src}: refusing archive member {m.name!r} (absolute, .. or a link)")
    tf.extractall(dest)


def _stage_bundle(src: Path, dest: Path) -> None:
    """Copy a bundle directory (or unpack a .tar.gz of one) to ``dest``."""
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=False)
    elif src.is_file() and src.name.endswith((".tar.gz", ".tgz", ".tar")):
        unpack = dest.with_name(dest.name + ".unpack")
        with tarfile.open(src) as tf:
            _safe_extract(tf, unpack, src)
        found = [p.parent for p in unpack.rglob(BUNDLE_MANIFEST)]
        if len(found) != 1:
            raise CheckError(
                f"{src} holds {len(found)} {BUNDLE_MANIFEST} files, expected one bundle"
            )
        found[0].rename(dest)
        shutil.rmtree(unpack)
    else:
        raise CheckError(f"--bundle {src}: no such directory or .tar.gz")
    for name in (BUNDLE_MANIFEST, GOLDEN_FILE):
        if not (dest / name).is_file():
            raise CheckError(
                f"{src} is not a bundle: {name} not found (give the directory that "
                "`edgeexit export` wrote)"
            )


class Steps:
    """Records each check's outcome and time for the summary."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def run(
        self,
        name: str,
        root: Path,
        cmd: list[str],
        *,
        timeout: float,
        parse_json: bool = False,
        expect_lines: int | None = None,
    ) -> dict:
        log.info(
            "[chroot] %s: %s", name, " ".join(cmd) if len(" ".join(cmd)) < 200 else cmd[0] + " ..."
        )
        t0 = time.monotonic()
        try:
            p = chroot(root, cmd, check=False, timeout=timeout)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except CheckError as e:  # timeout
            rc, out, err = 124, "", str(e)
        step = {"name": name, "ok": rc == 0, "rc": rc, "seconds": round(time.monotonic() - t0, 1)}
        if parse_json:  # one JSON document (possibly indented) on stdout
            try:
                step["output"] = json.loads(out)
            except ValueError:
                step["ok"], step["error"] = False, f"stdout is not JSON: {out[:300]!r}"
                step["stdout_tail"] = out[-2000:]
            else:
                if isinstance(step["output"], dict) and step["output"].get("ok") is False:
                    step["ok"], step["error"] = False, "the report says ok: false"
        elif expect_lines is not None:  # one JSON object per line
            parsed = []
            for ln in (ln for ln in out.splitlines() if ln.strip()):
                try:
                    parsed.append(json.loads(ln))
                except ValueError:
                    step["ok"], step["error"] = False, f"not a JSON line: {ln[:200]!r}"
                    break
            step["lines"], step["first_lines"] = len(parsed), parsed[:2]
            if len(parsed) != expect_lines:
                step["ok"] = False
                step.setdefault(
                    "error",
                    f"expected {expect_lines} JSON lines (one per input), got {len(parsed)}",
                )
        else:
            step["stdout_tail"] = out[-2000:]
        if not step["ok"]:
            step["stderr_tail"] = err[-3000:]
            log.error(
                "[chroot] %s FAILED (status %d%s)\n%s%s",
                name,
                rc,
                f"; {step['error']}" if "error" in step else "",
                out[-2000:],
                err[-3000:],
            )
        else:
            log.info("[chroot] %s ok (%.1f s)", name, step["seconds"])
        self.items.append(step)
        return step


def run_checks(root: Path, args: argparse.Namespace, host_python: str) -> list[dict]:
    """Install the current edgeexit, then run the isolation, import, smoke and bundle checks."""
    run_host = root / RUN_DIR.lstrip("/")
    _rmtree(run_host)
    run_host.mkdir(parents=True)
    steps = Steps()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeexit-wheel-") as tmp:
            wheel = build_wheel(REPO, host_python, Path(tmp))
            shutil.copy2(wheel, run_host / wheel.name)
        if args.bundle:
            _stage_bundle(Path(args.bundle).expanduser().resolve(), run_host / "bundle")
        with proc_mounted(root):
            chroot(
                root,
                [
                    f"{VENV}/bin/python",
                    "-m",
                    "pip",
                    "install",
                    "--no-deps",
                    "--no-index",
                    "--force-reinstall",
                    f"{RUN_DIR}/{wheel.name}",
                ],
                what="pip install edgeexit (--no-deps)",
            )
            steps.run(
                "isolation+imports",
                root,
                [f"{VENV}/bin/python", "-c", ISOLATION_CHECK],
                timeout=600,
                parse_json=True,
            )
            steps.run(
                "targets[rpi4]",
                root,
                ["edgeexit", "targets", "rpi4", "--json"],
                timeout=600,
                parse_json=True,
            )
            (run_host / "smoke.py").write_text(SMOKE_SCRIPT)
            steps.run(
                "smoke-models",
                root,
                [f"{VENV}/bin/python", f"{RUN_DIR}/smoke.py", RUN_DIR, "onnxruntime,litert"],
                timeout=600,
                parse_json=True,
            )
            if args.bundle:
                bundle = f"{RUN_DIR}/bundle"
                n = steps.run(
                    "golden-to-npy",
                    root,
                    [
                        f"{VENV}/bin/python",
                        "-c",
                        GOLDEN_TO_NPY,
                        f"{bundle}/{GOLDEN_FILE}",
                        f"{RUN_DIR}/input.npy",
                    ],
                    timeout=600,
                )
                n_inputs = int(n["stdout_tail"].strip() or 0) if n["ok"] else None
                for backend in _bundle_backends(run_host / "bundle", args.backend):
                    steps.run(
                        f"verify[{backend}]",
                        root,
                        ["edgeexit", "verify", bundle, "--backend", backend, "--json"],
                        timeout=args.timeout,
                        parse_json=True,
                    )
                    if n_inputs is not None:
                        steps.run(
                            f"run[{backend}]",
                            root,
                            [
                                "edgeexit",
                                "run",
                                bundle,
                                "--input",
                                f"{RUN_DIR}/input.npy",
                                "--backend",
                                backend,
                            ],
                            timeout=args.timeout,
                            expect_lines=n_inputs,
                        )
                        # energy on the device side: --meter auto (no meter in the chroot: the
                        # CPU-time estimate), and the report without matplotlib (no plots)
                        steps.run(
                            f"bench-energy[{backend}]",
                            root,
                            [
                                "edgeexit",
                                "bench",
                                bundle,
                                "--data",
                                f"{RUN_DIR}/input.npy",
                                "--backend",
                                backend,
                                "--warmup",
                                "2",
                                "--meter",
                                "auto",
                                "--energy-seconds",
                                "0.3",
                                "--no-progress",
                                "--report",
                                f"{RUN_DIR}/report-{backend}",
                                "--json",
                            ],
                            timeout=args.timeout,
                            parse_json=True,
                        )
    finally:
        if args.keep:
            log.info(
                "kept %s (enter the chroot with: mount -t proc proc %s/proc && chroot %s /bin/bash;"
                " umount %s/proc afterwards)",
                run_host,
                root,
                root,
                root,
            )
        else:
            _rmtree(run_host)
    return steps.items


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Install the edgeexit device runtime in a cached aarch64 Debian Bookworm "
        "chroot "
        "(qemu-user-static) and run `edgeexit verify` / `edgeexit run` on a bundle there.",
        epilog="Needs root. Exit status: 0 passed, 1 a check failed, 2 host not set up or bad "
        "arguments.",
    )
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--bundle", help="bundle directory (or .tar.gz) written by `edgeexit export`")
    what.add_argument(
        "--smoke",
        action="store_true",
        help="only install and check imports + a tiny model per engine (no bundle)",
    )
    what.add_argument(
        "--build-only", action="store_true", help="only build/refresh the cached chroot"
    )
    ap.add_argument(
        "--backend",
        default="both",
        choices=["auto", "onnxruntime", "litert", "both"],
        help="engine for verify/run; 'both' checks every engine the bundle has files for "
        "(default: both)",
    )
    ap.add_argument(
        "--cache",
        default="~/.cache/edgeexit/aarch64-bookworm",
        help="where the rootfs, the venv and the wheels are cached (default: %(default)s)",
    )
    ap.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror (default: %(default)s)")
    ap.add_argument(
        "--host-python",
        default=sys.executable,
        help="Python with pip on the host, used for `pip download`/`pip wheel` "
        "(default: this interpreter)",
    )
    ap.add_argument("--rebuild", action="store_true", help="rebuild the rootfs and the venv")
    ap.add_argument("--rebuild-venv", action="store_true", help="rebuild only the venv")
    ap.add_argument(
        "--setup-host",
        dest="setup_host",
        action="store_true",
        default=True,
        help="install qemu-user-static/binfmt-support/debootstrap with apt-get and enable "
        "binfmt if missing, logging each command (the default)",
    )
    ap.add_argument(
        "--no-setup-host",
        dest="setup_host",
        action="store_false",
        help="do not change the host: print the set-up commands it needs and exit with status 2",
    )
    ap.add_argument(
        "--keep", action="store_true", help=f"keep {RUN_DIR} in the chroot for inspection"
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds allowed for each verify/run command under emulation (default: %(default)s)",
    )
    ap.add_argument("--json", action="store_true", help="print a JSON summary on stdout at the end")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every command")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )

    summary: dict = {"ok": False, "timings_s": {}}
    t_start = time.monotonic()
    status = 1
    try:
        if args.bundle:
            bundle = Path(args.bundle).expanduser()
            if not bundle.exists():
                raise HostError(f"--bundle {args.bundle}: no such file or directory")
            if bundle.is_dir() and not (bundle / BUNDLE_MANIFEST).is_file():
                raise HostError(
                    f"--bundle {args.bundle} is not a bundle: {BUNDLE_MANIFEST} not found "
                    "(give the directory that `edgeexit export` wrote, or its .tar.gz)"
                )
        summary["host"] = check_host(args.setup_host)
        try:
            has_pip = (
                _run(
                    [args.host_python, "-m", "pip", "--version"], capture=True, check=False
                ).returncode
                == 0
            )
        except CheckError:
            has_pip = False
        if not has_pip:
            raise HostError(
                f"{args.host_python} cannot run pip: pass --host-python with a venv's python "
                "(e.g. .venv/bin/python) or install python3-pip"
            )
        cache = Path(args.cache).expanduser().resolve()
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise HostError(
                    f"another aarch64 check is using {cache}; wait for it or pass another --cache"
                ) from None
            t0 = time.monotonic()
            rootfs = ensure_rootfs(cache, args.mirror, args.rebuild)
            summary["timings_s"]["rootfs"] = round(time.monotonic() - t0, 1)
            root = cache / "rootfs"
            _prepare_interpreter(root)
            t0 = time.monotonic()
            reqs = device_requirements()
            venv = ensure_venv(
                root, cache, reqs, args.host_python, args.rebuild or args.rebuild_venv
            )
            summary["timings_s"]["venv"] = round(time.monotonic() - t0, 1)
            summary["rootfs"] = {
                k: rootfs[k]
                for k in ("suite", "arch", "python", "glibc", "created", "seconds", "reused")
            }
            summary["venv"] = {
                "path": VENV,
                "requirements": reqs,
                "constraints": DEVICE_CONSTRAINTS.name,
                "packages": venv["packages"],
                "reused": venv["reused"],
            }
            if args.build_only:
                summary["ok"], status = True, 0
            else:
                t0 = time.monotonic()
                summary["steps"] = run_checks(root, args, args.host_python)
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
        log.info("%-22s %s  (%.1f s)", s["name"], "ok" if s["ok"] else "FAILED", s["seconds"])
    log.info("%s in %.0f s", "PASSED" if status == 0 else "FAILED", summary["timings_s"]["total"])
    if args.json:
        print(json.dumps(summary, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())

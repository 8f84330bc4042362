"""The aarch64 environment of ``tools/aarch64_check.py``: a Debian Bookworm arm64 chroot with the
device install of edgeexit, and a way to run commands in it.

On an x86_64 host the chroot runs under qemu-user-static (binfmt_misc); on an aarch64 host it runs
natively. It holds Raspberry Pi OS Bookworm's Python (3.11) and, in ``/opt/edgeexit-venv``, ONLY
the device side of edgeexit: its base and ``[runtime]`` dependencies (numpy, click, onnxruntime,
ai-edge-litert, cryptography) as aarch64 wheels pinned by constraints-device.txt, then the
edgeexit wheel itself (``install_wheel``). pytest lives apart, in ``/opt/edgeexit-test`` (on
``PYTHONPATH`` for the test run only), so the venv is exactly what a device gets.

Steps, each cached under ``--cache`` and rebuilt when its inputs change:
  1. ``check_host``: root, debootstrap, qemu-user-static, binfmt for aarch64; the commands that fix
     what is missing are run (apt-get install, update-binfmts; each logged) or, with
     ``setup=False``, only printed;
  2. ``ensure_rootfs``: a minbase Bookworm arm64 root file system (debootstrap; built in a
     temporary directory and renamed when complete, so an interrupted build is never reused);
  3. ``ensure_venv``: the device requirements (from pyproject.toml), downloaded as aarch64 cp311
     wheels on the host (``pip download --platform``) and installed offline in the chroot with
     ``--only-binary=:all:`` and the same pins; ``ensure_test_deps``: pytest, the same way.
Only /proc is mounted in the chroot (onnxruntime and LiteRT crash under qemu with /sys mounted);
``proc_mounted`` always unmounts it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

log = logging.getLogger("aarch64_check")

REPO = Path(__file__).resolve().parents[1]
# pins the device requirements (and their dependencies) to versions with aarch64 cp311 wheels
DEVICE_CONSTRAINTS = REPO / "constraints-device.txt"
# pins everything else (here: pytest and its dependencies) at the host's versions
HOST_CONSTRAINTS = REPO / "constraints.txt"
# what the device-side tests need beyond the device install (pure-Python wheels); pytest-xdist:
# pyproject's pytest addopts name its options (-n auto --dist loadfile)
TEST_REQUIREMENTS = ("pytest", "pytest-xdist")

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
# pytest, installed with --target: on PYTHONPATH for the tests only
TEST_DEPS = "/opt/edgeexit-test"
STAMP = ".edgeexit-stamp.json"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ENTRY = BINFMT_DIR / "qemu-aarch64"
HOST_PACKAGES = ("qemu-user-static", "binfmt-support", "debootstrap")
CHROOT_PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# every chroot command starts from a clean environment: no host variable (PIP_*, proxies) leaks in
CHROOT_ENV = {
    "PATH": CHROOT_PATH,
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


class CheckError(Exception):
    """A step failed; the message says which and what to do."""


class HostError(CheckError):
    """The host lacks something the check needs (exit status 2)."""


# --------------------------------------------------------------------------------------------
# small helpers


def run_command(
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
        if run_command(["umount", m], check=False, capture=True).returncode != 0:
            run_command(["umount", "-l", m], check=False, capture=True)
    left = _mounts_under(path)
    if left:
        raise CheckError(f"could not unmount {', '.join(map(str, left))}; unmount them by hand")


def remove_tree(path: Path) -> None:
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


def ensure_root(script: str | os.PathLike, argv: list[str]) -> None:
    """Return when this process is root; otherwise run ``script argv`` again under sudo (this
    process is replaced; sudo asks for a password when it needs one), so that one command works
    for root (in a container, where sudo is often missing) and for a user with sudo alike.
    Raises HostError when not root and sudo is not there."""
    if os.geteuid() == 0:
        return
    sudo = shutil.which("sudo")
    if sudo is None:
        raise HostError("this check needs root (debootstrap, chroot and mounting /proc) and there "
                        f"is no sudo here: run `{sys.executable} {script}` as root")
    log.info("not root: running again under sudo")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sudo, [sudo, "--", sys.executable, str(script), *argv])


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
            info["qemu"] = run_command([qemu, "--version"], capture=True).stdout.splitlines()[0]
    info["debootstrap"] = _dpkg_version("debootstrap")
    return info


def _dpkg_version(pkg: str) -> str:
    p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else "unknown"


# --------------------------------------------------------------------------------------------
# the chroot


def prepare_interpreter(root: Path) -> None:
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
    run_command(["mount", "-t", "proc", "proc", target], what="mount /proc in the chroot")
    try:
        yield
    finally:
        _umount_all_under(target)


def chroot_command(root: Path, cmd: list[str], *, cwd: str | None = None,
                   env: dict | None = None) -> list[str]:
    """``cmd`` run inside ``root`` from ``cwd`` with CHROOT_ENV (plus ``env``) and nothing else."""
    variables = [f"{k}={v}" for k, v in {**CHROOT_ENV, **(env or {})}.items()]
    return ["chroot", str(root), "/usr/bin/env", "-i", *(["-C", cwd] if cwd else []), *variables,
            *cmd]


def chroot(
    root: Path,
    cmd: list[str],
    *,
    capture: bool = True,
    check: bool = True,
    timeout: float | None = None,
    what: str = "",
    cwd: str | None = None,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` inside ``root`` with a clean environment (no host variables leak in)."""
    return run_command(
        chroot_command(root, cmd, cwd=cwd, env=env),
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
            remove_tree(old)
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
    prepare_interpreter(tmp)
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
    """aarch64 cp311 wheels of ``reqs`` (and their dependencies), pinned by ``constraints``."""
    platforms = [f"manylinux_2_{m}_aarch64" for m in range(DEVICE_GLIBC_MINOR, 16, -1)]
    platforms += ["manylinux2014_aarch64", "linux_aarch64"]
    abi = "cp" + DEVICE_PYTHON.replace(".", "")
    cmd = [host_python, "-m", "pip", "download", "--dest", dest, "--only-binary=:all:",
           "--implementation", "cp", "--python-version", DEVICE_PYTHON,
           "--abi", abi, "--abi", "abi3", "--abi", "none", "--constraint", constraints]
    for p in platforms:
        cmd += ["--platform", p]
    log.info("downloading aarch64 %s wheels on the host: %s (pinned by %s)", abi, " ".join(reqs),
             constraints.name)
    run_command([*cmd, *reqs], capture=True, what="pip download (aarch64 wheels)")


@contextlib.contextmanager
def _wheels_in_chroot(root: Path, wheels: Path, constraints: Path):
    """The downloaded wheels and ``constraints`` at /tmp/edgeexit-wheels in the chroot, with
    /proc mounted; yields the ``pip install`` arguments that install offline from them."""
    inside = root / "tmp" / "edgeexit-wheels"
    remove_tree(inside)
    shutil.copytree(wheels, inside)
    shutil.copy2(constraints, inside / constraints.name)
    try:
        with proc_mounted(root):
            yield [f"{VENV}/bin/python", "-m", "pip", "install", "--no-index", "--find-links",
                   "/tmp/edgeexit-wheels", "--only-binary=:all:", "--constraint",
                   f"/tmp/edgeexit-wheels/{constraints.name}"]
    finally:
        remove_tree(inside)


def ensure_venv(root: Path, cache: Path, reqs: list[str], host_python: str, rebuild: bool) -> dict:
    """The cached device venv ``/opt/edgeexit-venv`` in the rootfs: ``reqs`` pinned by
    constraints-device.txt (rebuilt when either changes)."""
    venv = root / VENV.lstrip("/")
    stamp = _read_stamp(venv / STAMP)
    want = {"requirements": reqs, "constraints": device_constraints()}
    if stamp and not rebuild and {k: stamp.get(k) for k in want} == want:
        log.info("reusing the cached venv %s (%s)", VENV,
                 ", ".join(f"{k} {v}" for k, v in stamp["packages"].items()))
        return {**stamp, "reused": True}
    t0 = time.monotonic()
    wheels = cache / "wheels"
    wheels.mkdir(exist_ok=True)
    _download_wheels(wheels, reqs, host_python, DEVICE_CONSTRAINTS)
    if venv.exists():
        log.info("removing the old venv (%s)",
                 "--rebuild" if rebuild else "requirements or constraints changed")
        remove_tree(venv)
    with _wheels_in_chroot(root, wheels, DEVICE_CONSTRAINTS) as pip_install:
        log.info("creating %s in the chroot and installing the device requirements offline", VENV)
        chroot(root, ["python3", "-m", "venv", VENV], what="python3 -m venv")
        _run_streamed(chroot_command(root, [*pip_install, *reqs]),
                      what="pip install (device requirements)")
        packages = installed_packages(root)
    stamp = {**want, "packages": packages, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "seconds": round(time.monotonic() - t0, 1)}
    _write_stamp(venv / STAMP, stamp)
    log.info("venv ready in %.0f s: %s", stamp["seconds"],
             ", ".join(f"{k} {v}" for k, v in packages.items()))
    return {**stamp, "reused": False}


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _pins(text: str) -> dict[str, str]:
    """``{normalized name: version}`` of a constraints file's ``name==version`` lines."""
    pins = {}
    for line in text.splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[_normalized(name.strip())] = version.strip()
    return pins


def ensure_test_deps(root: Path, cache: Path, host_python: str, rebuild: bool) -> dict:
    """pytest (TEST_REQUIREMENTS) in ``/opt/edgeexit-test``, outside the device venv, pinned by
    the host's constraints.txt; reinstalled when a pin of what it installed changes."""
    target = root / TEST_DEPS.lstrip("/")
    stamp = _read_stamp(target / STAMP)
    pins = _pins(device_constraints(HOST_CONSTRAINTS))
    if (stamp and not rebuild and stamp.get("requirements") == list(TEST_REQUIREMENTS)
            and all(pins.get(n) == v for n, v in stamp["packages"].items())):
        return {**stamp, "reused": True}
    wheels = cache / "wheels"
    wheels.mkdir(exist_ok=True)
    _download_wheels(wheels, list(TEST_REQUIREMENTS), host_python, HOST_CONSTRAINTS)
    remove_tree(target)
    with _wheels_in_chroot(root, wheels, HOST_CONSTRAINTS) as pip_install:
        _run_streamed(chroot_command(root, [*pip_install, "--target", TEST_DEPS,
                                            *TEST_REQUIREMENTS]),
                      what="pip install --target (test requirements)")
    packages = {}
    for d in sorted(target.glob("*.dist-info")):  # NAME-VERSION.dist-info
        name, version = d.name[:-len(".dist-info")].rsplit("-", 1)
        packages[_normalized(name)] = version
    stamp = {"requirements": list(TEST_REQUIREMENTS), "packages": packages,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write_stamp(target / STAMP, stamp)
    return {**stamp, "reused": False}


# --------------------------------------------------------------------------------------------
# the edgeexit wheel


def source_files(repo: Path) -> list[Path]:
    """The checkout's files as git sees them (tracked, plus untracked ones not ignored), so that
    no build/, dist/ or egg-info left in the checkout can leak stale modules into the wheel."""
    p = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                        "--exclude-standard"], capture_output=True)
    if p.returncode != 0:
        raise CheckError(f"{repo} is not a git checkout (git ls-files: {p.stderr.decode()[-300:]})")
    return [Path(n) for n in p.stdout.decode().split("\0") if n and (repo / n).is_file()]


def build_wheel(repo: Path, host_python: str, out: Path) -> Path:
    """The edgeexit wheel, built with ``pip wheel --no-deps`` from a copy of the checkout's
    source files (the checkout itself is not written to)."""
    src = out / "src"
    for rel in source_files(repo):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, src / rel)
    log.info("building the edgeexit wheel on the host (pip wheel --no-deps)")
    cmd = [host_python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", out, src]
    try:  # offline when the host has setuptools; otherwise pip fetches the build backend
        run_command([*cmd, "--no-build-isolation"], capture=True, what="pip wheel")
    except CheckError:
        run_command(cmd, capture=True, what="pip wheel")
    wheels = sorted(out.glob("edgeexit-*.whl"))
    if not wheels:
        raise CheckError(f"pip wheel wrote no edgeexit wheel to {out}")
    return wheels[-1]


def install_wheel(root: Path, wheel: str) -> None:
    """Install the edgeexit wheel (a path inside the chroot) into the device venv, ``--no-deps``:
    its dependencies are the venv's."""
    chroot(root, [f"{VENV}/bin/python", "-m", "pip", "install", "--no-deps", "--no-index",
                  "--force-reinstall", wheel], what="pip install edgeexit (--no-deps)")


def installed_packages(root: Path) -> dict[str, str]:
    """``{name: version}`` of the device venv (``pip list``)."""
    out = chroot(root, [f"{VENV}/bin/python", "-m", "pip", "list", "--format=json"]).stdout
    return {p["name"]: p["version"] for p in json.loads(out)}

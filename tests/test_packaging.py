"""A regular (non-editable) install works outside the source tree: the wheel ships the presets.

Builds the wheel and the sdist from a copy of the checkout (offline: ``--no-build-isolation``
with this venv's setuptools), installs the wheel ``--no-deps`` in a fresh venv (its dependencies
are made importable there through a ``.pth`` file that points at links to this venv's copies: no
network, and nothing else from this venv leaks in), then, from a directory outside the source
tree, runs ``edgeexit targets`` with the base dependencies only, and ``edgeexit verify`` and
``edgeexit run`` on an int8 bundle with the ``[runtime]`` extra's (no torch). Also: the device
constraints pin the device requirements at the host's versions.
"""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# not part of the source: never copied into the build directory
SKIP = (".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")

def _env() -> dict:
    """The environment without anything that would point at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGEEXIT_TARGETS")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def _source_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*SKIP), symlinks=True)
    return src


def _expected_presets() -> set[str]:
    return {p.name for p in (REPO / "targets").glob("*.toml")}


def _expected_recipes() -> set[str]:
    return {p.name for p in (REPO / "calibration").glob("*.toml")}


def _pins(path: Path) -> dict[str, str]:
    """``{normalized name: version}`` of a constraints file's ``name==version`` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: not a name==version pin: {line!r}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_device_constraints_match_the_host_pins():
    """constraints-device.txt pins every device requirement, at the host's versions."""
    host, device = _pins(REPO / "constraints.txt"), _pins(REPO / "constraints-device.txt")
    assert host["torch"] == "2.13.0"
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["runtime"]
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", r)[0]).lower() for r in reqs}
    assert names <= set(device), f"unpinned device requirements: {names - set(device)}"
    assert {k: host.get(k) for k in device} == device


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp)
    out = tmp / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", out, src],
        cwd=tmp,
    )
    (whl,) = out.glob("edgeexit-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_ships_the_presets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {Path(n).name for n in names if n.startswith("edgeexit/_targets/")}
    assert shipped == _expected_presets()
    assert not any(n.startswith("targets/") for n in names), "presets must live in the package"
    recipes = {Path(n).name for n in names if n.startswith("edgeexit/_calibration/")}
    assert recipes == _expected_recipes() and "default.toml" in recipes


@pytest.mark.slow
def test_sdist_carries_the_presets_and_builds_the_same_wheel(tmp_path):
    """``python -m build`` goes sdist -> wheel: the sdist must hold targets/ and the build hook."""
    src = _source_copy(tmp_path)
    out = tmp_path / "sdist"
    code = (
        "import sys; from setuptools import build_meta as b; "
        "print(b.build_sdist(sys.argv[1]))"
    )
    name = _run([sys.executable, "-c", code, out], cwd=src).stdout.strip().splitlines()[-1]
    with tarfile.open(out / name) as tf:
        members = {Path(*Path(m).parts[1:]).as_posix() for m in tf.getnames()}
    assert {f"targets/{n}" for n in _expected_presets()} <= members
    assert {f"calibration/{n}" for n in _expected_recipes()} <= members
    assert "setup.py" in members
    whl_dir = tmp_path / "whl"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", whl_dir, out / name],
        cwd=tmp_path,
    )
    (whl,) = whl_dir.glob("edgeexit-*.whl")
    shipped = {Path(n).name for n in zipfile.ZipFile(whl).namelist() if "/_targets/" in n}
    assert shipped == _expected_presets()


def _link_dependencies(site: Path, deps_dir: Path, dists) -> None:
    """Make this venv's copies of the distributions ``dists`` (and nothing else of it) importable in
    the fresh venv: links to their files in ``deps_dir``, which a ``.pth`` file puts on its path."""
    deps_dir.mkdir()
    for name in dists:
        dist = importlib.metadata.distribution(name)
        tops = {f.parts[:2] for f in dist.files if f.parts[0] not in ("..", "__pycache__")}
        for parts in sorted(tops):
            src = Path(dist.locate_file(parts[0]))
            if src.is_dir() and not (src / "__init__.py").exists() and len(parts) == 2 \
                    and not parts[0].endswith((".dist-info", ".libs")):
                # a namespace package (google/protobuf, backports/strenum): only this dist's part
                (deps_dir / parts[0]).mkdir(exist_ok=True)
                src, dst = src / parts[1], deps_dir / parts[0] / parts[1]
            else:
                dst = deps_dir / parts[0]
            if not dst.exists():
                dst.symlink_to(src, target_is_directory=src.is_dir())
    (site / "edgeexit-test-deps.pth").write_text(f"{deps_dir}\n")


def _install(wheel: Path, env_dir: Path, dists) -> tuple[Path, Path]:
    """A fresh venv with the wheel installed ``--no-deps`` and ``dists`` linked from this venv:
    its python and its site-packages."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    py = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", wheel],
         cwd=env_dir.parent)
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=env_dir.parent).stdout.strip())
    _link_dependencies(site, env_dir.parent / "deps", dists)
    return py, site


@pytest.mark.slow
def test_installed_wheel_lists_and_shows_presets_outside_the_source_tree(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    py, site = _install(wheel, env_dir, ("numpy", "click"))  # the base dependencies only

    work = tmp_path / "elsewhere"  # outside the source tree
    work.mkdir()
    where = _run([py, "-c", "import edgeexit; print(edgeexit.__file__)"], cwd=work).stdout.strip()
    assert Path(where).resolve().is_relative_to(site.resolve()), where  # not the checkout's copy

    exe = env_dir / "bin" / "edgeexit"
    listing = json.loads(_run([exe, "targets", "--json"], cwd=work).stdout)
    ids = {t["id"] for t in listing}
    assert {Path(n).stem for n in _expected_presets()} == ids
    with open(REPO / "targets" / "rpi4.toml", "rb") as f:
        preset = tomllib.load(f)
    rpi4 = next(t for t in listing if t["id"] == "rpi4")
    assert rpi4["name"] == preset["name"]
    assert rpi4["cpu"]["arch"] == "aarch64" and rpi4["cpu"]["cores"] == preset["cpu"]["cores"]
    assert rpi4["runtime"] == {**rpi4["runtime"], **preset["runtime"]}
    assert rpi4["python"]["platform_tag"] == preset["python"]["platform_tag"]
    assert rpi4["power"]["idle_w"] == preset["power"]["idle_w"]

    shown = json.loads(_run([exe, "targets", "rpi4"], cwd=work).stdout)
    assert shown == rpi4
    assert "rpi4" in _run([exe, "targets"], cwd=work).stdout

    # the int8 calibration recipes ship the same way (read without torch)
    code = ("import json; from edgeexit.export.recipes import list_recipes, load_recipe, "
            "recipes_dir; r = load_recipe(); print(json.dumps([list_recipes(), str(recipes_dir()), "
            "r.name, r.sha256]))")
    names, where, name, digest = json.loads(_run([py, "-c", code], cwd=work).stdout)
    assert set(names) == {Path(n).stem for n in _expected_recipes()} and name == "default"
    assert Path(where).resolve().is_relative_to(site.resolve())
    import hashlib
    assert digest == hashlib.sha256((REPO / "calibration" / "default.toml").read_bytes()).hexdigest()


@pytest.mark.slow
def test_wheel_with_the_runtime_extra_only_verifies_and_runs_an_int8_bundle(wheel, int8_bundle,
                                                                             tmp_path):
    """The device install: the wheel and the [runtime] extra's dependencies (those that
    constraints-device.txt pins), no torch, no onnx: ``verify`` and ``run`` with both backends."""
    py, site = _install(wheel, tmp_path / "venv", _pins(REPO / "constraints-device.txt"))
    exe = tmp_path / "venv" / "bin" / "edgeexit"
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import importlib.util as u, edgeexit; "
            "print(edgeexit.__file__, *(u.find_spec(m) is None for m in ('torch', 'onnx')))")
    where, *absent = _run([py, "-c", code], cwd=work).stdout.split()
    assert Path(where).resolve().is_relative_to(site.resolve()) and absent == ["True", "True"]

    archive = int8_bundle.parent / "bundle.tar.gz"
    report = json.loads(_run([exe, "verify", archive, "--strict", "--json"], cwd=work).stdout)
    assert report["ok"] and report["unchecked"] == []
    assert {c["check"] for c in report["checks"]} >= {"golden[onnxruntime]", "golden[litert]"}
    x = tmp_path / "x.npy"
    np.save(x, np.load(int8_bundle / "golden.npz")["inputs"].astype(np.float32))
    for backend in ("onnxruntime", "litert"):
        out = _run([exe, "run", int8_bundle, "--input", x, "--backend", backend], cwd=work).stdout
        lines = [json.loads(v) for v in out.splitlines()]
        assert [v["index"] for v in lines] == list(range(8)), out
        assert all(v["exit"] in (0, 1) and len(v["probs"]) == 5 for v in lines)

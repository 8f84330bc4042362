"""Device presets ("targets"): what a device's CPU, runtime, Python and power draw look like.

A target is a TOML data file ``targets/<id>.toml`` (the file name is the target id; an installed
wheel carries a copy of ``targets/`` as ``edgeexit/_targets/``, see :func:`targets_dir`), read with
the standard library's :mod:`tomllib` into the frozen :class:`Target` dataclass::

    id, name, description
    [cpu]      model, arch, cores, isa_features, dotprod
    [runtime]  format ("tflite"|"onnx"), backend ("litert"|"onnxruntime"), precision, threads
    [python]   os, version, glibc, platform_tag, wheels, install, notes
    [power]    idle_w, active_w_per_core, source

Export copies the resolved preset (:meth:`Target.to_dict`) into the bundle manifest, so a device
never needs the preset files. This module imports no torch and no onnx (the device imports it).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from edgeexit.errors import ConfigError
from edgeexit.runtime.kinds import FORMAT_BACKEND, PRECISIONS, Format, Precision

ENV_VAR = "EDGEEXIT_TARGETS"
PACKAGED_DIR = "_targets"  # inside the installed package: see setup.py
ARCHES = ("aarch64", "armv7l", "x86_64")
MIN_PYTHON = (3, 11)  # what edgeexit (numpy 2.x, pyproject requires-python) needs on the device
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_VERSION = re.compile(r"^\d+\.\d+$")


def _check_fields(cls: type, d: Any, what: str) -> dict:
    """``d`` as a dict holding every required field of ``cls`` and nothing else."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a table, got {type(d).__name__}")
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {what}; "
            f"known: {', '.join(sorted(known))}"
        )
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in d]
    if missing:
        raise ConfigError(f"{what} lacks required key(s) {', '.join(map(repr, missing))}")
    return d


def _typed(value: Any, kind: type | tuple[type, ...], key: str) -> Any:
    """``value`` if it has type ``kind`` (bool is not a number here), else a ConfigError."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{key} must be {names}, got {value!r}")
    return value


def _str_tuple(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings, got {value!r}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class CpuSpec:
    """The CPU the runtime uses.

    Attributes:
        model: core type and SoC, e.g. ``"Cortex-A72 (BCM2711)"``.
        arch: ``aarch64``, ``armv7l`` or ``x86_64`` (as ``uname -m`` prints it).
        cores: physical cores available to the runtime.
        isa_features: instruction-set features (on Arm: the kernel's names in /proc/cpuinfo).
        dotprod: True when the cores have int8 dot-product instructions (Arm SDOT/UDOT, x86 VNNI).
    """

    model: str
    arch: str
    cores: int
    isa_features: tuple[str, ...] = ()
    dotprod: bool = False

    def __post_init__(self) -> None:
        _typed(self.model, str, "cpu.model")
        if _typed(self.arch, str, "cpu.arch") not in ARCHES:
            raise ConfigError(f"cpu.arch {self.arch!r} is not one of {', '.join(ARCHES)}")
        if _typed(self.cores, int, "cpu.cores") < 1:
            raise ConfigError(f"cpu.cores must be >= 1, got {self.cores}")
        object.__setattr__(self, "isa_features", _str_tuple(self.isa_features, "cpu.isa_features"))
        _typed(self.dotprod, bool, "cpu.dotprod")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "isa_features": list(self.isa_features)}


@dataclasses.dataclass(frozen=True)
class RuntimeSpec:
    """How bundles for this target are built and run.

    Attributes:
        format: segment file format, ``tflite`` or ``onnx``.
        backend: the engine that runs it (``litert`` for tflite, ``onnxruntime`` for onnx).
        precision: ``fp32`` or ``int8`` (int8 only pays off with dot-product instructions, and
            even then it must be measured per segment).
        threads: intra-op threads, 1..cpu.cores.
    """

    format: Format
    backend: str
    precision: Precision = Precision.FP32
    threads: int = 1

    def __post_init__(self) -> None:
        if _typed(self.format, str, "runtime.format") not in FORMAT_BACKEND:
            raise ConfigError(
                f"runtime.format {self.format!r} is not one of {', '.join(FORMAT_BACKEND)}"
            )
        object.__setattr__(self, "format", Format(self.format))
        _typed(self.backend, str, "runtime.backend")
        if self.backend != self.format.backend:
            raise ConfigError(
                f"runtime.backend {self.backend!r} cannot run {self.format.value!r} files; "
                f"use backend = {self.format.backend!r} (or change the format)"
            )
        if _typed(self.precision, str, "runtime.precision") not in PRECISIONS:
            raise ConfigError(
                f"runtime.precision {self.precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        if _typed(self.threads, int, "runtime.threads") < 1:
            raise ConfigError(f"runtime.threads must be >= 1, got {self.threads}")
        object.__setattr__(self, "precision", Precision(self.precision))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PythonSpec:
    """The device's Python environment as its stock OS ships it.

    Attributes:
        os: the stock OS image.
        version: its Python ``major.minor`` (may be too old: see :attr:`meets_minimum`).
        glibc: its glibc ``major.minor`` (decides which manylinux wheels install).
        platform_tag: the newest wheel platform tag the OS accepts.
        wheels: facts about the runtime's wheels for this platform (free text, one per package).
        install: the command that installs the runtime there.
        notes: anything else a user must know (e.g. how to get a newer Python).
    """

    os: str
    version: str
    glibc: str = ""
    platform_tag: str = ""
    wheels: tuple[str, ...] = ()
    install: str = 'pip install "edgeexit[runtime]"'
    notes: str = ""

    def __post_init__(self) -> None:
        for key in ("os", "glibc", "platform_tag", "install", "notes"):
            _typed(getattr(self, key), str, f"python.{key}")
        if not _VERSION.match(_typed(self.version, str, "python.version")):
            raise ConfigError(f"python.version must look like '3.11', got {self.version!r}")
        if self.glibc and not _VERSION.match(self.glibc):
            raise ConfigError(f"python.glibc must look like '2.36', got {self.glibc!r}")
        object.__setattr__(self, "wheels", _str_tuple(self.wheels, "python.wheels"))

    @property
    def meets_minimum(self) -> bool:
        """True when the stock Python can run edgeexit (>= :data:`MIN_PYTHON`)."""
        return tuple(int(v) for v in self.version.split(".")) >= MIN_PYTHON

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "wheels": list(self.wheels)}


@dataclasses.dataclass(frozen=True)
class PowerModel:
    """A model-based power estimate: ``idle_w + active_w_per_core * busy cores``.

    Attributes:
        idle_w: whole-device power when idle (W).
        active_w_per_core: extra power per fully busy core (W).
        source: where the numbers come from (and whether they are estimates).
    """

    idle_w: float
    active_w_per_core: float
    source: str = ""

    def __post_init__(self) -> None:
        for key in ("idle_w", "active_w_per_core"):
            value = _typed(getattr(self, key), (int, float), f"power.{key}")
            if not value >= 0 or value == float("inf"):  # also refuses NaN
                raise ConfigError(f"power.{key} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, key, float(value))
        _typed(self.source, str, "power.source")

    def watts(self, busy_cores: float) -> float:
        """Estimated device power with ``busy_cores`` cores busy (may be fractional)."""
        return self.idle_w + self.active_w_per_core * max(0.0, busy_cores)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Target:
    """A device preset (see the module docstring for the file layout)."""

    id: str
    name: str
    description: str
    cpu: CpuSpec
    runtime: RuntimeSpec
    python: PythonSpec
    power: PowerModel

    def __post_init__(self) -> None:
        if not _ID.match(_typed(self.id, str, "id")):
            raise ConfigError(
                f"id {self.id!r} must be lower-case letters, digits, '-', '_' or '.', "
                "starting with a letter or digit"
            )
        _typed(self.name, str, "name")
        _typed(self.description, str, "description")
        if self.runtime.threads > self.cpu.cores:
            raise ConfigError(
                f"runtime.threads = {self.runtime.threads} exceeds cpu.cores = {self.cpu.cores}"
            )

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "cpu": self.cpu.to_dict(),
            "runtime": self.runtime.to_dict(),
            "python": self.python.to_dict(),
            "power": self.power.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Target:
        """Build a target from a dict (parsed TOML or a manifest's ``target``).

        Raises:
            ConfigError: unknown or missing keys, wrong types, or inconsistent values.
        """
        d = dict(_check_fields(cls, d, "the target"))
        sections = {
            "cpu": CpuSpec,
            "runtime": RuntimeSpec,
            "python": PythonSpec,
            "power": PowerModel,
        }
        for key, sub in sections.items():
            d[key] = sub(**_check_fields(sub, d[key], f"[{key}]"))
        return cls(**d)


def _source_tree_dir() -> Path | None:
    """``<checkout>/targets`` when edgeexit runs from a source checkout (or an editable install)."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "targets").is_dir():
        return root / "targets"
    return None


def targets_dir() -> Path:
    """Where the presets live.

    ``$EDGEEXIT_TARGETS`` if set; else the checkout's ``targets/`` when edgeexit runs from a source
    tree (or an editable install); else the copy a wheel ships in ``edgeexit/_targets/`` (setup.py
    puts it there at build time; ``targets/`` is the only copy kept in git).
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return _source_tree_dir() or Path(__file__).resolve().parent / PACKAGED_DIR


def _load_file(path: Path) -> Target:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"target file {path} not found") from None
    except OSError as e:
        raise ConfigError(f"cannot read target file {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:  # its message names the line and column
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    try:
        target = Target.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    if target.id != path.stem:
        raise ConfigError(
            f"{path}: id = {target.id!r} does not match the file name; the file name is the "
            f"target id: set id = {path.stem!r} or rename the file to {target.id}.toml"
        )
    return target


def _preset_files() -> list[Path]:
    d = targets_dir()
    return sorted(d.glob("*.toml")) if d.is_dir() else []


def list_targets() -> list[Target]:
    """Every preset in :func:`targets_dir`, sorted by id (a broken file raises ConfigError)."""
    return [_load_file(p) for p in _preset_files()]


def load_target(name_or_path: str | os.PathLike) -> Target:
    """The preset called ``name_or_path`` (a target id), or the one in that ``.toml`` file.

    Raises:
        ConfigError: unknown id (the message lists the known ones), missing or malformed file
            (the message names the file, and for TOML syntax errors the line), invalid values.
    """
    text = os.fspath(name_or_path)
    looks_like_path = (
        isinstance(name_or_path, os.PathLike)
        or text.endswith(".toml")
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
    )
    if looks_like_path:
        return _load_file(Path(text).expanduser())
    path = targets_dir() / f"{text}.toml"
    if path.is_file():
        return _load_file(path)
    known = [p.stem for p in _preset_files()]
    where = targets_dir()
    listing = ", ".join(known) if known else f"none ({where} holds no .toml files)"
    if os.environ.get(ENV_VAR) or _source_tree_dir():
        add = (
            f"copy a preset to {where}/<id>.toml (the file name is the id) and edit it, or pass "
            f"the path of a .toml file; ${ENV_VAR} points to another presets directory"
        )
    else:  # the copy inside an installed wheel: not the place for the user's own presets
        add = (
            f"copy a preset from {where} to <dir>/<id>.toml (the file name is the id), edit it "
            f"and set ${ENV_VAR}=<dir>, or pass the path of a .toml file"
        )
    raise ConfigError(f"unknown target {text!r}; known targets: {listing}. To add one, {add}")

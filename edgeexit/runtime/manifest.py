"""The bundle manifest: the one schema that export writes and the device runtime reads.

A bundle is a directory::

    manifest.json        this schema (``format`` = "edgeexit.bundle", ``schema_version`` = 1)
    segment_{k}.onnx     segment k in ONNX    } one or both formats; every file listed in the
    segment_{k}.tflite   segment k in TFLite  } manifest with its sha256
    monolithic.onnx      the whole model as one graph (reference for benchmarks; never used to
    monolithic.tflite    classify)
    golden.npz           ``inputs`` [G, *input_shape] and ``logits_{k}`` [G, K] from PyTorch

Segment k takes ``feat_{k-1}`` (segment 0 takes ``input``) and returns ``feat_k`` and ``logits_k``;
the last returns ``logits_k`` only.

A bundle may deploy only some of the model's exits (``edgeexit export --exits 0,3``): then each
segment records the model exit it answers (``exit``; absent in older manifests, where it is the
segment's index) and tensor names carry that model exit index (segment 1 of exits 0,3 takes
``feat_0`` and returns ``logits_3``). Everything else is indexed by segment position: the policy's
thresholds (one per segment but the last), the engine's ``exit_index``, and ``golden.npz``'s
``logits_{j}`` (PyTorch's logits of the model exit that segment j answers).
:func:`load_manifest` checks the schema version, every file's hash and that the segment shapes
chain, and raises :class:`BundleError` naming the file and the fix.

Every section is a frozen dataclass (:class:`ModelInfo`, :class:`InputSpec`, :class:`TargetInfo`,
:class:`PolicySpec` with its :class:`CalibrationRecord` and :class:`BudgetSpec`,
:class:`SegmentEntry`, :class:`Golden`, :class:`Provenance`) with ``from_dict``/``to_dict``; this
module is the only one that reads or writes the JSON's keys. This module needs only the standard
library (it never imports export code).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from edgeexit.errors import EdgeExitError
from edgeexit.runtime.kinds import FILE_FORMATS, MIXED, PRECISIONS  # noqa: F401 (re-exported)

FORMAT = "edgeexit.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
GOLDEN = "golden.npz"
MAX_BUNDLE_VERSION = 2**63 - 1  # a signed 64-bit integer, as every reader can hold it


class BundleError(EdgeExitError):
    """A bundle is missing, altered, from an unknown schema version, or inconsistent."""


def own_key(file_format: str, segment: int) -> str:
    """The ``golden.npz`` key of segment ``segment``'s logits as the exported ``file_format``
    files computed them at export (beside PyTorch's ``logits_{segment}``)."""
    return f"{file_format}_logits_{segment}"


_SHA256_NEW: list = []  # the sha256 constructor, found on first use


def sha256(data: bytes = b""):
    """A sha256 hash object (``hashlib.sha256``'s interface) over ``data``.

    CPython's own implementation (module ``_sha2``, before 3.12 ``_sha256``) where the interpreter
    has it: ``hashlib`` loads OpenSSL's libcrypto, 3.5 MB of resident memory on the device for the
    few files a bundle hashes; ``hashlib``'s where it does not (or where it is loaded already).
    """
    if not _SHA256_NEW:
        import sys

        mods = ("hashlib",) if "_hashlib" in sys.modules else ("_sha2", "_sha256", "hashlib")
        for name in mods:
            try:
                _SHA256_NEW.append(importlib.import_module(name).sha256)
                break
            except (ImportError, AttributeError):
                continue
    return _SHA256_NEW[0](data)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One model file: ``file`` (relative to the bundle), its format, precision, sha256 and size
    in bytes (``size``: None in manifests written before sizes were recorded)."""

    file: str
    format: str
    precision: str
    sha256: str
    size: int | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.size is None:
            del d["size"]
        return d


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """Why one segment file of a ``--precision auto`` export has its precision.

    ``fp32_us``/``int8_us``: median batch-1 latency of each file (``timing`` says where it was
    measured); ``*_agreement``: its exit's top-1 agreement with PyTorch on validation beats, the
    segments before it as chosen; ``reason``: which part of the rule decided."""

    format: str
    precision: str
    fp32_us: float
    int8_us: float
    fp32_agreement: float
    int8_agreement: float
    reason: str
    timing: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PrecisionChoice:
        return cls(format=str(d["format"]), precision=str(d["precision"]),
                   fp32_us=float(d["fp32_us"]), int8_us=float(d["int8_us"]),
                   fp32_agreement=float(d["fp32_agreement"]),
                   int8_agreement=float(d["int8_agreement"]), reason=str(d["reason"]),
                   timing=str(d.get("timing", "")))


@dataclasses.dataclass(frozen=True)
class SegmentEntry:
    """One segment of the chain (shapes are per sample, without the batch dimension)."""

    index: int
    input_name: str
    input_shape: tuple[int, ...]
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    macs: int
    params: int
    artifacts: tuple[Artifact, ...]
    exit: int | None = None  # the model exit this segment answers; None (old manifests) = index
    # --precision auto: why each format's file has its precision (absent in older manifests)
    precision_choices: tuple[PrecisionChoice, ...] = ()

    def __post_init__(self) -> None:
        if self.exit is None:
            object.__setattr__(self, "exit", self.index)

    def artifact(self, file_format: str) -> Artifact | None:
        """The file of ``file_format`` (``onnx``/``tflite``), or None when the bundle lacks it."""
        return next((a for a in self.artifacts if a.format == file_format), None)

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "exit": self.exit,
            "input_name": self.input_name,
            "input_shape": list(self.input_shape),
            "output_names": list(self.output_names),
            "output_shapes": [list(s) for s in self.output_shapes],
            "macs": self.macs,
            "params": self.params,
            "artifacts": [a.to_dict() for a in self.artifacts],
            **({"precision_choices": [c.to_dict() for c in self.precision_choices]}
               if self.precision_choices else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SegmentEntry:
        return cls(
            index=int(d["index"]),
            input_name=str(d["input_name"]),
            input_shape=tuple(int(v) for v in d["input_shape"]),
            output_names=tuple(str(v) for v in d["output_names"]),
            output_shapes=tuple(tuple(int(v) for v in s) for s in d["output_shapes"]),
            macs=int(d["macs"]),
            params=int(d["params"]),
            artifacts=tuple(_artifact(a) for a in d["artifacts"]),
            exit=None if d.get("exit") is None else int(d["exit"]),
            precision_choices=tuple(PrecisionChoice.from_dict(c)
                                    for c in d.get("precision_choices") or ()),
        )


# -- the manifest's free-form sections, typed --------------------------------------------------
#
# Every section below was a plain dict and grew keys while the schema version stayed 1, so each
# reads what a manifest holds and tolerates what it lacks: a field whose key may be absent has a
# default (None, or an empty section), keys this runtime does not know are kept in ``extra``, and
# a section read from JSON remembers its keys in their order (``_keys``), so that reading and
# writing a manifest gives back the same JSON (absent keys stay absent, nulls stay null). Writers
# that compose a section as a dict build it with ``from_dict`` for the same reason.


def _copy(v: Any) -> Any:
    return copy.deepcopy(v)


def _floats(v: Any) -> tuple[float, ...]:
    return tuple(float(x) for x in v)


def _ints(v: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in v)


def _strs(v: Any) -> tuple[str, ...]:
    return tuple(str(x) for x in v)


def _float_map(v: Any) -> dict[str, float]:
    return {str(k): float(x) for k, x in v.items()}


def _plain(v: Any) -> Any:
    """``v`` as JSON data: sections by their ``to_dict``, tuples as lists, containers copied."""
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class _Section:
    """Base of the typed sections (see the comment above): ``from_dict`` / ``to_dict``.

    A subclass lists its fields and, in ``_PARSE``, how a JSON value becomes a field's value (a
    value left out is deep-copied as it is; None stays None). ``extra``: the keys it does not
    know, verbatim."""

    _PARSE: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    extra: dict[str, Any] = dataclasses.field(default_factory=dict, kw_only=True)
    _keys: tuple[str, ...] = dataclasses.field(default=(), kw_only=True, compare=False, repr=False)

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "_keys"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        if not isinstance(d, Mapping):
            raise TypeError(f"{cls.__name__} must be a JSON object, got {type(d).__name__}")
        names = cls._names()
        kw = {k: None if v is None else cls._PARSE.get(k, _copy)(v)
              for k, v in d.items() if k in names}
        extra = {k: copy.deepcopy(v) for k, v in d.items() if k not in names}
        return cls(**kw, extra=extra, _keys=tuple(d))

    def to_dict(self) -> dict[str, Any]:
        """The section as JSON data: the keys it was read with, in their order, and any field set
        since (a field at its default whose key was never there is left out)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "_keys"):
                continue
            v = getattr(self, f.name)
            if f.name in self._keys or _default(f) is dataclasses.MISSING or v != _default(f):
                out[f.name] = _plain(v)
        out.update(_plain(self.extra))
        if not self._keys:
            return out
        ordered = {k: out.pop(k) for k in self._keys if k in out}
        return {**ordered, **out}


@dataclasses.dataclass(frozen=True)
class ModelInfo(_Section):
    """The exported model: ``name`` (its family), ``config`` (its model config, to rebuild it),
    ``params`` and ``num_exits`` (the model's exits; a bundle may deploy fewer)."""

    name: str | None = None
    config: dict[str, Any] | None = None
    params: int | None = None
    num_exits: int | None = None

    _PARSE = {"name": str, "params": int, "num_exits": int}


@dataclasses.dataclass(frozen=True)
class InputSpec(_Section):
    """What one input window is: ``shape`` (per sample), ``dtype``, sampling rate ``fs`` (Hz),
    ``units``, channel names, and the facts streaming needs to cut windows itself (``window``
    samples, ``r_offset`` of the R peak, ``rr_context``/``morph_context`` channels).
    ``abs_max``: per channel, the largest magnitude of the training data (None in older
    bundles): the engine refuses a window far beyond it."""

    shape: tuple[int, ...]
    name: str = "input"
    dtype: str = "float32"
    fs: float | None = None
    units: str = ""
    channels: tuple[str, ...] = ()
    signal_channels: int | None = None
    window: int | None = None
    r_offset: int | None = None
    rr_context: bool | None = None
    morph_context: bool | None = None
    abs_max: tuple[float, ...] | None = None

    _PARSE = {"shape": _ints, "name": str, "dtype": str, "fs": float, "units": str,
              "channels": _strs, "signal_channels": int, "window": int, "r_offset": int,
              "rr_context": bool, "morph_context": bool, "abs_max": _floats}


@dataclasses.dataclass(frozen=True)
class TargetRuntime(_Section):
    """How the target runs bundles: file ``format``, ``backend``, ``precision``, ``threads``."""

    format: str | None = None
    backend: str | None = None
    precision: str | None = None
    threads: int | None = None

    _PARSE = {"format": str, "backend": str, "precision": str, "threads": int}


@dataclasses.dataclass(frozen=True)
class TargetPower(_Section):
    """The target's power model (``idle_w + active_w_per_core`` x busy cores, W); its
    ``to_dict()`` is what :func:`edgeexit.runtime.energy.open_meter` takes as ``power``."""

    idle_w: float | None = None
    active_w_per_core: float | None = None
    source: str | None = None

    _PARSE = {"idle_w": float, "active_w_per_core": float, "source": str}


@dataclasses.dataclass(frozen=True)
class TargetInfo(_Section):
    """The resolved target preset, copied in at export (the device needs no preset files):
    ``cpu`` and ``python`` are descriptive facts; ``runtime`` and ``power`` are read."""

    id: str | None = None
    name: str | None = None
    description: str | None = None
    cpu: dict[str, Any] | None = None
    runtime: TargetRuntime = dataclasses.field(default_factory=TargetRuntime)
    python: dict[str, Any] | None = None
    power: TargetPower = dataclasses.field(default_factory=TargetPower)

    _PARSE = {"id": str, "name": str, "description": str,
              "runtime": lambda v: TargetRuntime.from_dict(v),
              "power": lambda v: TargetPower.from_dict(v)}


@dataclasses.dataclass(frozen=True)
class Golden(_Section):
    """``golden.npz``: its ``file``, ``sha256``, ``size`` and ``samples``; per file format the
    ``tolerance`` (max abs logit error of the segment chain) and ``monolithic_tolerance`` (of the
    monolithic graph; None in bundles written before it, which use ``tolerance``); per format and
    segment, ``own_tolerance`` against the exported files' own outputs (a few int8 quantization
    steps; None in older bundles)."""

    file: str | None = None
    sha256: str | None = None
    samples: int | None = None
    tolerance: dict[str, float] = dataclasses.field(default_factory=dict)
    monolithic_tolerance: dict[str, float] | None = None
    tolerance_rule: str | None = None
    size: int | None = None
    own_tolerance: dict[str, tuple[float, ...]] | None = None
    own_tolerance_rule: str | None = None

    _PARSE = {"file": str, "sha256": str, "samples": int, "tolerance": _float_map,
              "monolithic_tolerance": _float_map, "tolerance_rule": str, "size": int,
              "own_tolerance": lambda v: {str(k): _floats(x) for k, x in v.items()},
              "own_tolerance_rule": str}

    def tolerance_for(self, file_format: str) -> float | None:
        """The segment chain's tolerance for ``file_format``, or None when the manifest has none."""
        return self.tolerance.get(file_format)

    def own_tolerance_for(self, file_format: str) -> tuple[float, ...] | None:
        """Per segment, how far a device may be from the ``file_format`` files' own outputs on
        the golden beats (``golden.npz``'s :func:`own_key` arrays, computed at export); None in
        bundles written before they were recorded."""
        return (self.own_tolerance or {}).get(file_format)

    def monolithic_tolerance_for(self, file_format: str) -> float | None:
        """The monolithic graph's tolerance (the chain's in bundles written before it had one)."""
        own = (self.monolithic_tolerance or {}).get(file_format)
        return own if own is not None else self.tolerance_for(file_format)


@dataclasses.dataclass(frozen=True)
class Provenance(_Section):
    """Where the bundle came from: ``created`` (ISO time), the source ``checkpoint`` and its
    ``checkpoint_sha256``, the training ``data`` spec (``DataSpec.to_dict()``), the int8
    ``quantization`` and ``--precision auto`` records (None when not used), the number of
    ``validation_samples``, the export's ``parity`` with PyTorch, its ``export_config`` and the
    tool ``versions``. The records inside are reports, kept as dicts."""

    created: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    data: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    precision: dict[str, Any] | None = None
    validation_samples: int | None = None
    parity: dict[str, Any] | None = None
    export_config: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None

    _PARSE = {"created": str, "checkpoint": str, "checkpoint_sha256": str,
              "validation_samples": int}


@dataclasses.dataclass(frozen=True)
class BudgetSpec(_Section):
    """The ``budget`` policy's limit per input, in ``unit`` (``us`` or ``mJ``), and one cost per
    segment in that unit (:class:`edgeexit.runtime.policy.Budget`)."""

    limit: float
    segment_costs: tuple[float, ...]
    unit: str = "us"

    _PARSE = {"limit": float, "segment_costs": _floats, "unit": str}


@dataclasses.dataclass(frozen=True)
class SegmentCosts(_Section):
    """Per-segment costs recorded by ``edgeexit calibrate`` (``unit``: MACs, us or mJ)."""

    unit: str
    values: tuple[float, ...]

    _PARSE = {"unit": str, "values": _floats}


@dataclasses.dataclass(frozen=True)
class CalibrationRecord(_Section):
    """How a policy's thresholds were found (:class:`edgeexit.calibrate.Calibration` as written,
    plus where its data came from). Every field may be absent in older manifests (None).

    ``margin``: the allowed accuracy loss (points) versus the final exit; ``loss_bound`` the upper
    end of its ``confidence`` interval that was held within it; ``expected_cost``/``full_cost``
    in ``cost_unit``; ``data``/``split``: the calibration samples' source; ``format``: the file
    format whose outputs were calibrated on; ``segment_costs``: the costs used (by
    ``edgeexit calibrate``; the ``budget`` policy can take them); ``pareto``: accuracy versus
    cost over margins; ``previous``: the policy before this calibration (without its own
    ``previous``)."""

    policy: str | None = None
    thresholds: tuple[float, ...] | None = None
    accuracy: float | None = None
    final_accuracy: float | None = None
    margin: float | None = None
    expected_cost: float | None = None
    full_cost: float | None = None
    exit_fractions: tuple[float, ...] | None = None
    samples: int | None = None
    loss_points: float | None = None
    loss_interval: tuple[float, ...] | None = None
    loss_bound: float | None = None
    confidence: float | None = None
    bound: str | None = None
    records: int | None = None
    worst_record_loss_points: float | None = None
    cost_unit: str | None = None
    feasible: bool | None = None
    weights: tuple[float, ...] | None = None
    budget: float | None = None
    cost_ratio: float | None = None
    data: str | None = None
    split: str | None = None
    validation_records: tuple[str, ...] | None = None
    format: str | None = None
    cost: str | None = None
    segment_costs: SegmentCosts | None = None
    pareto: tuple[dict[str, Any], ...] | None = None
    previous: PolicySpec | None = None

    _PARSE = {
        "policy": str, "thresholds": _floats, "accuracy": float, "final_accuracy": float,
        "margin": float, "expected_cost": float, "full_cost": float, "exit_fractions": _floats,
        "samples": int, "loss_points": float, "loss_interval": _floats, "loss_bound": float,
        "confidence": float, "bound": str, "records": int, "worst_record_loss_points": float,
        "cost_unit": str, "feasible": bool, "weights": _floats, "budget": float,
        "cost_ratio": float, "data": str, "split": str, "validation_records": _strs,
        "format": str, "cost": str, "segment_costs": lambda v: SegmentCosts.from_dict(v),
        "pareto": lambda v: tuple(copy.deepcopy(dict(p)) for p in v),
        "previous": lambda v: PolicySpec.from_dict(v),
    }


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """The exit policy the bundle was calibrated for.

    Attributes:
        name: ``max_prob``, ``entropy``, ``ensemble``, ``fixed`` or ``budget``.
        thresholds: one per early exit (``num_exits - 1`` values, one per segment but the last,
            indexed by segment position; the last exit always answers).
            ``max_prob``/``ensemble``: exit when the max probability >= t_k; ``entropy``: exit when
            the entropy (nats) <= t_k.
        exit_index: for ``fixed``: the exit that always answers.
        weights: for ``ensemble``: one weight per exit of its running weighted mean (None: equal).
        budget: for ``budget``: its limit and per-segment costs.
        calibration: how the thresholds were found (data, samples, margin, accuracy, cost).
    """

    name: str = "max_prob"
    thresholds: tuple[float, ...] | None = None
    exit_index: int | None = None
    calibration: CalibrationRecord | None = None
    weights: tuple[float, ...] | None = None
    budget: BudgetSpec | None = None

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "thresholds": None if self.thresholds is None else list(self.thresholds),
            "exit_index": self.exit_index,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
        }
        if self.weights is not None:  # only the ensemble has them (older runtimes lack the key)
            d["weights"] = list(self.weights)
        if self.budget is not None:  # only the budget policy has one
            d["budget"] = self.budget.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PolicySpec:
        t, cal, budget = d.get("thresholds"), d.get("calibration"), d.get("budget")
        return cls(
            name=str(d.get("name", "max_prob")),
            thresholds=None if t is None else tuple(float(v) for v in t),
            exit_index=None if d.get("exit_index") is None else _int(d["exit_index"]),
            calibration=None if cal is None else CalibrationRecord.from_dict(cal),
            weights=None if d.get("weights") is None else tuple(float(v) for v in d["weights"]),
            budget=None if budget is None else BudgetSpec.from_dict(budget),
        )


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a bundle (see the module docstring for the layout).

    Attributes:
        model: name, config, parameter count and number of exits of the exported model.
        classes: class names, in logit order.
        input: ``name``, ``shape`` (per sample), ``dtype``, ``fs``, ``units`` and channel facts.
        target: the resolved target preset (copied in at export, so the device needs no preset files).
        policy: the calibrated exit policy.
        precision: ``fp32`` or ``int8`` (of every segment file), or ``mixed`` (``--precision
            auto``: each artifact says its own, each segment's ``precision_choices`` why).
        segments: the chain, in order.
        monolithic: the whole-model reference graph (input -> final logits), or None.
        golden: ``golden.npz`` and the per-format tolerances its replay is held to.
        provenance: where the calibration and golden data came from, tool versions, time.
        bundle_version: a monotonic integer set at export (``--bundle-version``, default 1) or
            by ``edgeexit sign --bundle-version``; ``edgeexit install`` refuses a bundle whose
            version is not newer than the installed one. 0 in manifests written before it existed.
    """

    model: ModelInfo
    classes: tuple[str, ...]
    input: InputSpec
    target: TargetInfo
    policy: PolicySpec
    precision: str
    segments: tuple[SegmentEntry, ...]
    monolithic: SegmentEntry | None
    golden: Golden
    provenance: Provenance
    schema_version: int = SCHEMA_VERSION
    bundle_version: int = 1

    @property
    def num_exits(self) -> int:
        """Deployed exits = segments (what the engine and the policy index)."""
        return len(self.segments)

    @property
    def exits(self) -> tuple[int, ...]:
        """The model exit index each segment answers, in chain order (all of them unless the
        bundle was exported with ``--exits``)."""
        return tuple(s.exit for s in self.segments)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.input.shape

    @property
    def formats(self) -> tuple[str, ...]:
        """File formats present for every segment."""
        return tuple(f for f in FILE_FORMATS if all(s.artifact(f) for s in self.segments))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "bundle_version": self.bundle_version,
            "model": self.model.to_dict(),
            "classes": list(self.classes),
            "input": self.input.to_dict(),
            "target": self.target.to_dict(),
            "policy": self.policy.to_dict(),
            "precision": self.precision,
            "segments": [s.to_dict() for s in self.segments],
            "monolithic": None if self.monolithic is None else self.monolithic.to_dict(),
            "golden": self.golden.to_dict(),
            "provenance": self.provenance.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = MANIFEST) -> Manifest:
        """Parse and validate manifest JSON data; raises :class:`BundleError` (one line) for any
        input that is not a manifest this runtime can serve, and nothing else."""
        if not isinstance(d, Mapping):
            raise BundleError(f"{source} is not an edgeexit bundle manifest (a JSON "
                              f"{type(d).__name__}, not an object); re-export the bundle")
        if d.get("format") != FORMAT:
            raise BundleError(f"{source} is not an edgeexit bundle manifest (format "
                              f"{_short(d.get('format'))})")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise BundleError(
                f"{source} has schema version {_short(version)}, this runtime reads version "
                f"{SCHEMA_VERSION}: re-export the bundle with a matching edgeexit, or upgrade the "
                "runtime on the device"
            )
        try:
            manifest = cls._parse(d, version)
            _validate(manifest)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError,
                RecursionError) as e:
            raise BundleError(f"{source} is malformed ({type(e).__name__}: {_short(e, 200)}); "
                              "re-export the bundle") from None
        return manifest

    @classmethod
    def _parse(cls, d: Mapping, version: int) -> Manifest:
        bundle_version = d.get("bundle_version", 0)
        if isinstance(bundle_version, bool) or not isinstance(bundle_version, int) \
                or not 0 <= bundle_version <= MAX_BUNDLE_VERSION:
            raise ValueError(f"bundle_version must be an integer in [0, 2**63), got {_short(bundle_version)}")
        classes = d["classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise TypeError("classes must be a list of names")
        mono = d.get("monolithic")
        return cls(
            model=ModelInfo.from_dict(d["model"]),
            classes=tuple(classes),
            input=InputSpec.from_dict(d["input"]),
            target=TargetInfo.from_dict(d["target"]),
            policy=PolicySpec.from_dict(d["policy"]),
            precision=str(d["precision"]),
            segments=tuple(SegmentEntry.from_dict(s) for s in _list(d["segments"], "segments")),
            monolithic=None if mono is None else SegmentEntry.from_dict(mono),
            golden=Golden.from_dict(d["golden"]),
            provenance=Provenance.from_dict(d.get("provenance") or {}),
            schema_version=int(version),
            bundle_version=bundle_version,
        )

    def artifacts(self) -> list[Artifact]:
        """Every hashed file of the bundle (segments, monolithic, golden)."""
        files = [a for s in self.segments for a in s.artifacts]
        if self.monolithic is not None:
            files += list(self.monolithic.artifacts)
        g = self.golden
        if g.file:
            files.append(Artifact(g.file, "npz", "fp32", str(g.sha256), g.size))
        return files


def _short(v: Any, limit: int = 80) -> str:
    """``repr(v)`` cut to ``limit`` characters: a message quotes crafted input, never all of it."""
    r = repr(v) if not isinstance(v, BaseException) else str(v)
    r = r.replace("\n", " ")
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _list(v: Any, what: str) -> list:
    if not isinstance(v, list):
        raise TypeError(f"{what} must be a list, got {type(v).__name__}")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {_short(v)}")
    return v


def _finite(values, what: str, lo: float = -math.inf, hi: float = math.inf) -> None:
    for v in values:
        if not (math.isfinite(v) and lo <= v <= hi):
            raise ValueError(f"{what} must be finite and within [{lo:g}, {hi:g}], got {_short(v)}")


# a probability threshold lies in [0, 1], or at 2 (calibration's "never exit early" there); an
# entropy threshold (nats) in [0, ln K], or at -2 for "never"
_NEVER = 2.0


def _validate(m: Manifest) -> None:
    """Ranges and shapes that the dataclasses' types alone do not hold (ValueError/TypeError)."""
    inp = m.input
    if not inp.shape or min(inp.shape) < 1 or math.prod(inp.shape) > 1 << 24:
        raise ValueError(f"input.shape must be positive sizes, got {list(inp.shape)}")
    if inp.fs is not None:
        _finite([inp.fs], "input.fs", lo=1e-9)
    if inp.abs_max is not None:
        if len(inp.abs_max) != inp.shape[0]:
            raise ValueError(f"input.abs_max has {len(inp.abs_max)} values for "
                             f"{inp.shape[0]} channels")
        _finite(inp.abs_max, "input.abs_max", lo=0.0)
    if not m.classes or len(set(m.classes)) != len(m.classes):
        raise ValueError(f"classes must be distinct names, got {_short(list(m.classes))}")
    if m.precision not in (*PRECISIONS, MIXED):
        raise ValueError(f"precision {_short(m.precision)} is none of {[*PRECISIONS, MIXED]}")
    pol = m.policy
    if pol.thresholds is not None:
        if len(pol.thresholds) != len(m.segments) - 1:
            raise ValueError(f"policy.thresholds has {len(pol.thresholds)} values for "
                             f"{len(m.segments)} segments (one per segment but the last)")
        lo, hi = ((-_NEVER, math.log(len(m.classes)) + 1e-6) if pol.name == "entropy"
                  else (0.0, _NEVER))
        _finite(pol.thresholds, f"policy.thresholds of {pol.name}", lo=lo, hi=hi)
    if pol.weights is not None:
        _finite(pol.weights, "policy.weights", lo=0.0)
    if pol.exit_index is not None and not 0 <= pol.exit_index < len(m.segments):
        raise ValueError(f"policy.exit_index {pol.exit_index} is not a segment of {len(m.segments)}")
    g = m.golden
    _finite([*g.tolerance.values(), *(g.monolithic_tolerance or {}).values(),
             *(t for ts in (g.own_tolerance or {}).values() for t in ts)], "golden tolerances", lo=0.0)
    for fmt, ts in (g.own_tolerance or {}).items():
        if len(ts) != len(m.segments):
            raise ValueError(f"golden.own_tolerance[{fmt}] has {len(ts)} values for "
                             f"{len(m.segments)} segments")
    if g.samples is not None and g.samples < 1:
        raise ValueError(f"golden.samples must be >= 1, got {g.samples}")
    for a in m.artifacts():
        if not _SHA256.fullmatch(a.sha256):
            raise ValueError(f"{_short(a.file)}: sha256 must be 64 hex digits")
        if a.size is not None and a.size < 0:
            raise ValueError(f"{_short(a.file)}: size must be >= 0")


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _artifact(d: dict) -> Artifact:
    size = d.get("size")
    return Artifact(file=str(d["file"]), format=str(d["format"]), precision=str(d["precision"]),
                    sha256=str(d["sha256"]), size=None if size is None else int(size))


def with_sizes(manifest: Manifest, root: str | os.PathLike) -> Manifest:
    """``manifest`` with ``size`` (bytes, from the files in ``root``) set on every file entry that
    lacks one (segments, monolithic, golden)."""
    root = Path(root)

    def sized(a: Artifact) -> Artifact:
        return a if a.size is not None else dataclasses.replace(a, size=(root / a.file).stat().st_size)

    def segment(s: SegmentEntry) -> SegmentEntry:
        return dataclasses.replace(s, artifacts=tuple(sized(a) for a in s.artifacts))

    golden = manifest.golden
    if golden.file and golden.size is None:
        golden = dataclasses.replace(golden, size=(root / golden.file).stat().st_size)
    return dataclasses.replace(
        manifest,
        segments=tuple(segment(s) for s in manifest.segments),
        monolithic=None if manifest.monolithic is None else segment(manifest.monolithic),
        golden=golden,
    )


def manifest_bytes(manifest: Manifest) -> bytes:
    """The ``manifest.json`` text of ``manifest`` (the only way a manifest is written)."""
    return (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()


def check_chain(manifest: Manifest) -> None:
    """Raise :class:`BundleError` unless every segment's input is the previous segment's feature."""
    segs = manifest.segments
    if not segs:
        raise BundleError("the manifest lists no segments; re-export the bundle")
    if segs[0].input_shape != manifest.input_shape:
        raise BundleError(
            f"segment 0 takes {list(segs[0].input_shape)} but the bundle's input is "
            f"{list(manifest.input_shape)}; the manifest is inconsistent: re-export the bundle"
        )
    n_classes = len(manifest.classes)
    exits = manifest.exits
    if any(e < 0 for e in exits) or any(b <= a for a, b in zip(exits, exits[1:])):
        raise BundleError(
            f"the segments answer model exits {list(exits)}, which are not increasing; re-export the bundle"
        )
    n_model = manifest.model.num_exits
    if n_model is not None and exits[-1] != n_model - 1:
        raise BundleError(
            f"the last segment answers model exit {exits[-1]} but the model's final exit is "
            f"{n_model - 1}; re-export the bundle"
        )
    for k, seg in enumerate(segs):
        last = k == len(segs) - 1
        if seg.index != k:
            raise BundleError(f"segment {k} is listed with index {seg.index}; re-export the bundle")
        if len(seg.output_names) != (1 if last else 2) or len(seg.output_shapes) != len(seg.output_names):
            raise BundleError(
                f"segment {k} must return {'logits' if last else 'features and logits'}, the manifest "
                f"lists {list(seg.output_names)}; re-export the bundle"
            )
        if seg.output_shapes[-1] != (n_classes,):
            raise BundleError(
                f"segment {k} returns logits of shape {list(seg.output_shapes[-1])} but the bundle has "
                f"{n_classes} classes; re-export the bundle"
            )
        if not last:
            nxt = segs[k + 1]
            if nxt.input_shape != seg.output_shapes[0] or nxt.input_name != seg.output_names[0]:
                raise BundleError(
                    f"segments do not chain: segment {k} returns {seg.output_names[0]} "
                    f"{list(seg.output_shapes[0])} but segment {k + 1} takes {nxt.input_name} "
                    f"{list(nxt.input_shape)}; re-export the bundle"
                )
        if not seg.artifacts:
            raise BundleError(f"segment {k} lists no model file; re-export the bundle")
        for a in seg.artifacts:
            if a.format not in FILE_FORMATS or a.precision not in PRECISIONS:
                raise BundleError(f"{a.file}: unknown format/precision {a.format}/{a.precision}")


def verify_hashes(root: str | os.PathLike, manifest: Manifest) -> None:
    """Raise :class:`BundleError` if a listed file is missing, or its size or sha256 differs."""
    root = Path(root)
    for a in manifest.artifacts():
        path = root / a.file
        if Path(a.file).is_absolute() or ".." in Path(a.file).parts:
            raise BundleError(f"{MANIFEST} lists {a.file!r} outside the bundle; refusing it")
        if not path.is_file():
            raise BundleError(f"{path} is listed in {MANIFEST} but missing: copy the whole bundle again")
        size = path.stat().st_size
        if a.size is not None and size != a.size:
            raise BundleError(
                f"{path} has {size} bytes but {MANIFEST} lists {a.size}: the file was altered or "
                "copied incompletely; copy the bundle again (or re-export it)"
            )
        digest = sha256_file(path)
        if digest != a.sha256:
            raise BundleError(
                f"{path} does not match its sha256 in {MANIFEST} (file {digest[:12]}..., manifest "
                f"{a.sha256[:12]}...): the file was altered or copied incompletely; copy the bundle "
                "again (or re-export it)"
            )


def parse_manifest(data: bytes, source: str = MANIFEST) -> Manifest:
    """Parse the bytes of a ``manifest.json`` (see :meth:`Manifest.from_dict`); raises
    :class:`BundleError` and nothing else, whatever the bytes are."""
    try:
        d = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise BundleError(f"{source} is not valid JSON ({type(e).__name__}: {_short(e, 200)}); "
                          "copy the bundle again") from None
    return Manifest.from_dict(d, source)


def read_manifest(root: str | os.PathLike) -> Manifest:
    """Parse ``root/manifest.json`` (no hash check; see :func:`load_manifest`)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"{root} is not a bundle: {MANIFEST} not found (give the directory written by "
            "`edgeexit export`, or unpack its .tar.gz first)"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"cannot read {path} ({e.strerror}); copy the bundle again") from None
    return parse_manifest(data, str(path))


def load_manifest(root: str | os.PathLike, check_hashes: bool = True) -> Manifest:
    """Read, validate (schema version, chain) and hash-check the manifest of bundle ``root``."""
    manifest = read_manifest(root)
    check_chain(manifest)
    if check_hashes:
        verify_hashes(root, manifest)
    return manifest

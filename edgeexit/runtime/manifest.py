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
``logits_{j}`` (PyTorch's logits of the model exit that segment j answers). :func:`load_manifest` checks the schema version, every file's
hash and that the segment shapes chain, and raises :class:`BundleError` naming the file and the fix.
This module needs only the standard library and numpy (it never imports export code).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from edgeexit.errors import EdgeExitError

FORMAT = "edgeexit.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GOLDEN = "golden.npz"
FILE_FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "int8")
MIXED = "mixed"  # Manifest.precision of a bundle whose segment files differ in precision


class BundleError(EdgeExitError):
    """A bundle is missing, altered, from an unknown schema version, or inconsistent."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
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


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """The exit policy the bundle was calibrated for.

    Attributes:
        name: ``max_prob``, ``entropy``, ``ensemble`` or ``fixed``.
        thresholds: one per early exit (``num_exits - 1`` values, one per segment but the last,
            indexed by segment position; the last exit always answers).
            ``max_prob``/``ensemble``: exit when the max probability >= t_k; ``entropy``: exit when
            the entropy (nats) <= t_k.
        exit_index: for ``fixed``: the exit that always answers.
        weights: for ``ensemble``: one weight per exit of its running weighted mean (None: equal).
        budget: for ``budget``: ``{"limit", "unit" ("us" or "mJ"), "segment_costs"}`` (one cost per
            segment, in that unit; :class:`edgeexit.runtime.policy.Budget`).
        calibration: how the thresholds were found (data, samples, margin, accuracy, cost).
    """

    name: str = "max_prob"
    thresholds: tuple[float, ...] | None = None
    exit_index: int | None = None
    calibration: dict | None = None
    weights: tuple[float, ...] | None = None
    budget: dict | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["thresholds"] = None if self.thresholds is None else list(self.thresholds)
        if self.weights is None:
            del d["weights"]  # only the ensemble has them; older runtimes do not know the key
        else:
            d["weights"] = list(self.weights)
        if self.budget is None:
            del d["budget"]  # only the budget policy has one
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PolicySpec:
        t = d.get("thresholds")
        return cls(
            name=str(d.get("name", "max_prob")),
            thresholds=None if t is None else tuple(float(v) for v in t),
            exit_index=d.get("exit_index"),
            calibration=d.get("calibration"),
            weights=None if d.get("weights") is None else tuple(float(v) for v in d["weights"]),
            budget=d.get("budget"),
        )


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a bundle (see the module docstring for the layout).

    Attributes:
        model: name, config and parameter count of the exported model.
        classes: class names, in logit order.
        input: ``name``, ``shape`` (per sample), ``dtype``, ``fs``, ``units`` and channel facts.
        target: the resolved target preset (copied in at export, so the device needs no preset files).
        policy: the calibrated exit policy.
        precision: ``fp32`` or ``int8`` (of every segment file), or ``mixed`` (``--precision
            auto``: each artifact says its own, each segment's ``precision_choices`` why).
        segments: the chain, in order.
        monolithic: the whole-model reference graph (input -> final logits), or None.
        golden: ``file``, ``sha256``, ``samples``, per-format ``tolerance`` (max abs logit error
            of the segment chain) and ``monolithic_tolerance`` (of the monolithic graph; bundles
            written before it use ``tolerance``).
        provenance: where the calibration and golden data came from, tool versions, time.
        bundle_version: a monotonic integer set at export (``--bundle-version``, default 1) or
            by ``edgeexit sign --bundle-version``; ``edgeexit install`` refuses a bundle whose
            version is not newer than the installed one. 0 in manifests written before it existed.
    """

    model: dict
    classes: tuple[str, ...]
    input: dict
    target: dict
    policy: PolicySpec
    precision: str
    segments: tuple[SegmentEntry, ...]
    monolithic: SegmentEntry | None
    golden: dict
    provenance: dict
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
        return tuple(int(v) for v in self.input["shape"])

    @property
    def formats(self) -> tuple[str, ...]:
        """File formats present for every segment."""
        return tuple(f for f in FILE_FORMATS if all(s.artifact(f) for s in self.segments))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "bundle_version": self.bundle_version,
            "model": self.model,
            "classes": list(self.classes),
            "input": self.input,
            "target": self.target,
            "policy": self.policy.to_dict(),
            "precision": self.precision,
            "segments": [s.to_dict() for s in self.segments],
            "monolithic": None if self.monolithic is None else self.monolithic.to_dict(),
            "golden": self.golden,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = MANIFEST) -> Manifest:
        if d.get("format") != FORMAT:
            raise BundleError(f"{source} is not an edgeexit bundle manifest (format {d.get('format')!r})")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{source} has schema version {version!r}, this runtime reads version "
                f"{SCHEMA_VERSION}: re-export the bundle with a matching edgeexit, or upgrade the "
                "runtime on the device"
            )
        try:
            bundle_version = d.get("bundle_version", 0)
            if isinstance(bundle_version, bool) or not isinstance(bundle_version, int) \
                    or bundle_version < 0:
                raise ValueError(f"bundle_version must be an integer >= 0, got {bundle_version!r}")
            mono = d.get("monolithic")
            return cls(
                model=dict(d["model"]),
                classes=tuple(d["classes"]),
                input=dict(d["input"]),
                target=dict(d["target"]),
                policy=PolicySpec.from_dict(d["policy"]),
                precision=str(d["precision"]),
                segments=tuple(SegmentEntry.from_dict(s) for s in d["segments"]),
                monolithic=None if mono is None else SegmentEntry.from_dict(mono),
                golden=dict(d["golden"]),
                provenance=dict(d.get("provenance", {})),
                schema_version=int(version),
                bundle_version=bundle_version,
            )
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise BundleError(f"{source} is malformed ({type(e).__name__}: {e}); re-export the bundle") from e

    def artifacts(self) -> list[Artifact]:
        """Every hashed file of the bundle (segments, monolithic, golden)."""
        files = [a for s in self.segments for a in s.artifacts]
        if self.monolithic is not None:
            files += list(self.monolithic.artifacts)
        if self.golden.get("file"):
            size = self.golden.get("size")
            files.append(Artifact(self.golden["file"], "npz", "fp32", self.golden["sha256"],
                                  None if size is None else int(size)))
        return files


def _artifact(d: dict) -> Artifact:
    size = d.get("size")
    return Artifact(file=str(d["file"]), format=str(d["format"]), precision=str(d["precision"]),
                    sha256=str(d["sha256"]), size=None if size is None else int(size))


def add_sizes(d: dict, root: str | os.PathLike) -> dict:
    """Set ``size`` (bytes, from the files in ``root``) on every file entry of the manifest dict
    ``d`` that lacks one (segments, monolithic, golden); returns ``d``, changed in place."""
    root = Path(root)
    entries = [a for s in d.get("segments") or () for a in s.get("artifacts") or ()]
    if d.get("monolithic"):
        entries += list(d["monolithic"].get("artifacts") or ())
    if d.get("golden", {}).get("file"):
        entries.append(d["golden"])
    for e in entries:
        if e.get("size") is None:
            e["size"] = (root / e["file"]).stat().st_size
    return d


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
    n_model = manifest.model.get("num_exits") if isinstance(manifest.model, dict) else None
    if isinstance(n_model, int) and exits[-1] != n_model - 1:
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


def read_manifest(root: str | os.PathLike) -> Manifest:
    """Parse ``root/manifest.json`` (no hash check; see :func:`load_manifest`)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"{root} is not a bundle: {MANIFEST} not found (give the directory written by "
            "`edgeexit export`, or unpack its .tar.gz first)"
        )
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); copy the bundle again") from e
    return Manifest.from_dict(d, str(path))


def load_manifest(root: str | os.PathLike, check_hashes: bool = True) -> Manifest:
    """Read, validate (schema version, chain) and hash-check the manifest of bundle ``root``."""
    manifest = read_manifest(root)
    check_chain(manifest)
    if check_hashes:
        verify_hashes(root, manifest)
    return manifest

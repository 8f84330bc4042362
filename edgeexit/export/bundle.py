"""``edgeexit export``: checkpoint -> a self-contained, hash-checked bundle for one target.

:func:`export_bundle` runs a list of named stages, each a function from a frozen
:class:`ExportState` to a new one (each logged; ``progress`` sees their steps):

=============  ==========================================================================
``plan``       resolve the target, the precision and the deployed exits; load the checkpoint
``data``       the data it was trained on (its recorded data spec), split as training split it
               (:meth:`edgeexit.data.ValidationSplit.recorded`); calibration, validation, golden beats
``reference``  the per-exit segments' specs and PyTorch's logits the files are checked against
``files``      every segment (:mod:`edgeexit.export.split`: only the exits in
               ``ExportConfig.exits``, the stages between two deployed exits merged into one
               graph) and the whole model as one reference graph, in every requested format
               (:mod:`edgeexit.export.write`); int8 files are calibrated segment by segment on
               training beats, each on the features its int8 predecessor really produces; every
               file keeps float inputs/outputs, so segments chain although their quantization
               scales differ ("float boundaries")
``draft``      the manifest of those files
``check``      every file against PyTorch (:mod:`edgeexit.export.validate`), every failure listed
``calibrate``  the exit thresholds on the validation beats with the deployed files
               (:mod:`edgeexit.calibrate`), never on test data
``manifest``   ``golden.npz`` and ``manifest.json`` (:mod:`edgeexit.runtime.manifest`)
=============  ==========================================================================

The first three (:data:`PREPARE`) only read; the others (:data:`BUILD`) build the bundle in a
temporary directory next to the output, moved into place (``DIR.tar.gz`` packed beside it) only
when complete: a failure leaves no half-written bundle, and an existing bundle is replaced only
once the new one is complete.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from edgeexit.calibrate import CalibrationConfig, calibrate_thresholds
from edgeexit.checkpoint import Checkpoint, load_checkpoint
from edgeexit.data import BeatDataset, DataSpec, ValidationSplit, load_source, load_split
from edgeexit.errors import ConfigError, DataError
from edgeexit.export.precision import BenchTimings, PrecisionRule, read_bench_timings
from edgeexit.export.recipes import (
    DATA_CHECKPOINT,
    CalibrationSet,
    Recipe,
    calibration_set,
    load_recipe,
)
from edgeexit.export.split import (
    INPUT_NAME,
    Monolithic,
    SegmentSpec,
    check_exits,
    segment_specs,
)
from edgeexit.export.validate import (
    GOLDEN_RULE,
    INT8_MIN_AGREEMENT,
    OWN_RULE,
    References,
    ValidationReport,
    run_chunked,
    segment_engine,
    validate_segments,
)
from edgeexit.export.write import (
    FLOAT_DEFAULTS,
    AutoPlan,
    WriteJob,
    write_chain,
    write_chain_auto,
    write_monolithic,
    write_monolithic_auto,
)
from edgeexit.fileio import check_writable, pack_directory
from edgeexit.metrics import warn_one_class
from edgeexit.models.base import MultiExitNet
from edgeexit.runtime.backends import backend_for_format
from edgeexit.runtime.kinds import (
    AUTO,
    CALIBRATED_POLICIES,
    EXPORT_PRECISIONS,
    FILE_FORMATS,
    MIXED,
    Format,
    PolicyName,
    Precision,
)
from edgeexit.runtime.manifest import (
    GOLDEN,
    MANIFEST,
    Artifact,
    CalibrationRecord,
    Golden,
    InputSpec,
    Manifest,
    ModelInfo,
    PolicySpec,
    PrecisionChoice,
    Provenance,
    SegmentEntry,
    TargetInfo,
    manifest_bytes,
    own_key,
    read_manifest,
    sha256_file,
    with_sizes,
)
from edgeexit.runtime.policy import make_policy, softmax
from edgeexit.targets import Target, load_target

log = logging.getLogger(__name__)

Progress = Callable[[str], None] | None
PARITY_BEATS = 1024  # validation beats every file is checked on (and --precision auto's agreement)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Options of :func:`export_bundle`.

    Attributes:
        target: target id (``targets/<id>.toml``) or a path to a preset file.
        formats: file formats to write; None = both ``onnx`` and ``tflite``.
        precision: ``fp32``, ``int8`` or ``auto`` (per segment and format: int8 only where it
            is faster here, or in ``timings``, and agrees within ``int8_margin``; see
            :mod:`edgeexit.export.precision`); None = the target's preferred precision.
        policy: exit policy to calibrate (``max_prob``, ``entropy``, ``ensemble``).
        margin: allowed validation accuracy loss of the policy versus the final exit, in points.
        confidence: the loss's interval at this level (a bootstrap over the validation records)
            must stay within ``margin`` (:func:`edgeexit.calibrate.calibrate_thresholds`).
        ensemble_weights: ``auto`` (calibration chooses the ensemble's per-exit weights) or None
            (equal weights); ignored by the other policies.
        calibration: the int8 calibration recipe (a name in ``calibration/`` or a ``.toml``
            path; None = ``default``): which training beats, how many, how chosen, and how the
            files are quantized (:mod:`edgeexit.export.recipes`).
        calibration_samples: override the recipe's number of calibration windows (None: the
            recipe's).
        golden_samples: validation beats stored in ``golden.npz`` for ``edgeexit verify``.
        max_val_samples: cap on validation beats for threshold calibration (stratified sample).
        int8_min_agreement: export fails if an int8 exit agrees with PyTorch's top-1 on fewer
            than this fraction of validation beats.
        int8_margin: ``auto``: int8 may agree with PyTorch at most this many points less than
            fp32 (:class:`~edgeexit.export.precision.PrecisionRule`).
        timings: ``auto``: ``edgeexit bench --json`` reports (made on the device; an fp32 and an
            int8 bundle per format) to take the latencies from instead of measuring here.
        timing_seconds: ``auto``: seconds of alternate fp32/int8 timing per segment and format.
        timing_threads: ``auto``: interpreter threads while timing here.
        monolithic: also write the whole model as one graph (for benchmarks).
        exits: model exit indices to deploy (sorted here; unique; the final exit and at least one
            early exit); None = every exit. Stages between two deployed exits run as one merged
            segment; the heads of the other exits are left out.
        opset: ONNX opset.
        seed: seeds the sampling of calibration and golden beats.
        bundle_version: the manifest's monotonic ``bundle_version`` (``edgeexit install``
            refuses a version not newer than the installed one).
    """

    target: str = "rpi4"
    formats: tuple[Format, ...] | None = None
    precision: str | None = None
    policy: PolicyName = PolicyName.MAX_PROB
    margin: float = 0.5
    confidence: float = 0.9
    ensemble_weights: str | None = "auto"
    calibration: str | None = None
    calibration_samples: int | None = None
    golden_samples: int = 32
    max_val_samples: int = 20000
    int8_min_agreement: float = INT8_MIN_AGREEMENT
    int8_margin: float = 1.0
    timings: tuple[str, ...] | None = None
    timing_seconds: float = 0.25
    timing_threads: int = 1
    monolithic: bool = True
    opset: int = 18
    seed: int = 0
    exits: tuple[int, ...] | None = None
    bundle_version: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.bundle_version, bool) or not isinstance(self.bundle_version, int) \
                or self.bundle_version < 1:
            raise ConfigError(f"bundle version must be an integer >= 1, got {self.bundle_version!r}")
        if self.formats is not None:
            bad = [f for f in self.formats if f not in FILE_FORMATS]
            if bad or not self.formats:
                raise ConfigError(f"unknown format(s) {bad}; choose from {', '.join(FILE_FORMATS)}")
            object.__setattr__(self, "formats", tuple(Format(f) for f in self.formats))
        if self.precision is not None and self.precision not in EXPORT_PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose fp32, int8 or auto")
        if self.timings and self.precision != AUTO:
            raise ConfigError("timings are read by --precision auto only; add --precision auto")
        PrecisionRule(self.int8_margin)  # validates the margin
        if self.timing_seconds <= 0 or self.timing_threads < 1:
            raise ConfigError("timing seconds must be > 0 and timing threads >= 1")
        if self.policy not in CALIBRATED_POLICIES:
            raise ConfigError(f"export calibrates the policy max_prob, entropy or ensemble, got {self.policy!r}")
        object.__setattr__(self, "policy", PolicyName(self.policy))
        if self.ensemble_weights not in ("auto", None):
            raise ConfigError(f"ensemble weights are 'auto' or None (equal), got {self.ensemble_weights!r}")
        if not 0.0 <= self.confidence < 1.0:  # checked here too: before any file is converted
            raise ConfigError(f"confidence must lie in [0, 1), got {self.confidence}")
        if not 0 <= self.margin < 100:
            raise ConfigError(f"margin must lie in [0, 100) accuracy points, got {self.margin}")
        if (self.calibration_samples is not None and self.calibration_samples < 1) \
                or self.golden_samples < 1:
            raise ConfigError("calibration and golden samples must be >= 1")
        if self.exits is not None:
            # range and the final exit are checked against the model in export_bundle
            if isinstance(self.exits, (str, bytes)) or not hasattr(self.exits, "__iter__"):
                raise ConfigError(f"exits must be a sequence of model exit indices, got {self.exits!r}")
            keep = check_exits(self.exits, max(self._int_exits()) + 1)
            object.__setattr__(self, "exits", keep)

    def _int_exits(self) -> list[int]:
        try:
            vals = [int(k) for k in self.exits]
        except (TypeError, ValueError):
            raise ConfigError(f"exits must be integers (model exit indices), got {self.exits!r}") from None
        if not vals:
            raise ConfigError("exits is empty: give the model exit indices to deploy, or None for all")
        if min(vals) < 0:
            raise ConfigError(f"exit indices must be >= 0, got {sorted(vals)}")
        return vals

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["formats"] = None if self.formats is None else list(self.formats)
        d["exits"] = None if self.exits is None else list(self.exits)
        d["timings"] = None if self.timings is None else list(self.timings)
        return d


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """The written bundle: directory, archive, manifest and the export report."""

    path: Path
    archive: Path
    manifest: Manifest
    report: dict


# -- data ----------------------------------------------------------------------------------------


def _training_data(ckpt, spec: str | DataSpec | None) -> tuple[DataSpec, BeatDataset, BeatDataset]:
    """(spec, training part, validation part) as training split them."""
    meta = ckpt.meta or {}
    spec = ckpt.data_spec(spec, "; give it with --data (thresholds are calibrated on "
                                "validation beats of that data)")
    data = load_split(spec, "train")
    if tuple(data.input_shape) != tuple(ckpt.input_spec["shape"]):
        raise DataError(
            f"data {spec.source} has windows {list(data.input_shape)} but the model takes "
            f"{ckpt.input_spec['shape']}; give the data the model was trained on"
        )
    train_part, val_part = ValidationSplit.recorded(meta.get("train_config")).apply(data)
    return spec, train_part, val_part


def _calibration_set(recipe: Recipe, ckpt, spec: DataSpec, train_part: BeatDataset,
                     samples: int | None) -> CalibrationSet:
    """The recipe's windows: from the checkpoint's training part (its own data), else from the
    training side of the recipe's data source."""
    own = recipe.data == DATA_CHECKPOINT or recipe.data == spec.source or (
        recipe.data != "synthetic" and os.path.exists(recipe.data) and os.path.exists(spec.source)
        and os.path.realpath(recipe.data) == os.path.realpath(spec.source))
    if own:
        pool, what = train_part, f"{spec.source}: training part (validation held out, no test)"
    else:
        from edgeexit.errors import RecipeError

        if recipe.data != "synthetic" and not os.path.exists(recipe.data):
            raise RecipeError(f"{recipe.path}: data source {recipe.data!r} not found (relative "
                              "paths are read from the current directory); give \"checkpoint\", "
                              "\"synthetic\", or an existing WFDB directory / .npz / .csv")
        other = dataclasses.replace(spec, source=recipe.data, test_source=None)
        pool = load_split(other, "train") if recipe.data == "synthetic" or os.path.isdir(recipe.data) \
            else load_source(recipe.data, other)
        what = f"{recipe.data}: training side"
        if tuple(pool.input_shape) != tuple(ckpt.input_spec["shape"]):
            raise RecipeError(f"{recipe.path}: data {recipe.data} has windows "
                              f"{list(pool.input_shape)}, the model takes {ckpt.input_spec['shape']}")
    return calibration_set(recipe, pool.x, pool.y, pool.groups, tuple(pool.classes), what, samples)


def _sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=min(k, n), replace=False))


def _stratified_sample(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` indices, every class in proportion but at least one each where present."""
    if k >= len(y):
        return np.arange(len(y))
    picks = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        take = max(1, int(round(k * len(idx) / len(y))))
        picks.append(rng.choice(idx, size=min(take, len(idx)), replace=False))
    return np.sort(np.concatenate(picks))

# -- the state the stages pass on ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """Stage ``plan``: what this export writes, resolved before any data is read."""

    target: Target
    ckpt: Checkpoint
    model: MultiExitNet
    formats: tuple[Format, ...]
    precision: str  # fp32, int8 or auto
    exits: tuple[int, ...]  # deployed model exits, sorted
    recipe: Recipe | None  # the int8 calibration recipe (None: fp32)
    rule: PrecisionRule
    timings: BenchTimings | None  # --precision auto: the device's bench reports


@dataclasses.dataclass(frozen=True)
class Beats:
    """Stage ``data``: the windows the export calibrates and checks on (never test data)."""

    spec: DataSpec
    train_part: BeatDataset
    val_part: BeatDataset
    cset: CalibrationSet | None  # the recipe's int8 calibration set
    calib_x: np.ndarray  # its windows (fp32: a few training beats, the export example)
    val_idx: np.ndarray  # validation beats used (indices into val_part)
    val_x: np.ndarray
    val_y: np.ndarray
    golden_idx: np.ndarray  # indices into val_x of the beats written to golden.npz

    @property
    def golden_x(self) -> np.ndarray:
        return self.val_x[self.golden_idx]

    @property
    def val_groups(self) -> np.ndarray | None:
        return None if self.val_part.groups is None else self.val_part.groups[self.val_idx]


@dataclasses.dataclass(frozen=True)
class Written:
    """Stage ``files``: every file written, per format (``choices``: ``--precision auto``'s)."""

    files: dict[str, list[Artifact]]
    choices: dict[str, list[PrecisionChoice]]
    mono: dict[str, Artifact]
    mono_choice: dict[str, dict]
    auto: AutoPlan


@dataclasses.dataclass(frozen=True)
class ExportState:
    """What the stages of :func:`export_bundle` pass on: the request, then each stage's result
    (None until that stage ran). Frozen: a stage returns a new state."""

    checkpoint: str | os.PathLike
    out: Path
    config: ExportConfig
    data: str | DataSpec | None = None
    progress: Progress = None
    tmp: Path | None = None  # the directory the bundle is built in (set before ``files``)
    plan: Plan | None = None
    beats: Beats | None = None
    specs: list[SegmentSpec] | None = None
    refs: References | None = None
    written: Written | None = None
    draft: Manifest | None = None
    checks: ValidationReport | None = None
    policy: PolicySpec | None = None
    manifest: Manifest | None = None

    def step(self, text: str) -> None:
        if self.progress:
            self.progress(text)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One named step of the export: a function from the state to a new state."""

    name: str
    run: Callable[[ExportState], ExportState]

    def __call__(self, state: ExportState) -> ExportState:
        start = time.perf_counter()
        state = self.run(state)
        log.debug("export stage %s: %.2f s", self.name, time.perf_counter() - start)
        return state


def run_stages(stages: Sequence[Stage], state: ExportState) -> ExportState:
    for stage in stages:
        state = stage(state)
    return state


# -- the stages ----------------------------------------------------------------------------------


def plan_export(s: ExportState) -> ExportState:
    """Resolve the target, refuse an output export must not replace, load the checkpoint."""
    config = s.config
    target = load_target(config.target)
    if s.out.parent.is_dir():
        _remove_stale(s.out)
    _check_out(s.out)
    ckpt = load_checkpoint(s.checkpoint)
    model = ckpt.model.eval()
    precision = config.precision or target.runtime.precision
    exits = check_exits(config.exits, model.num_exits)
    recipe = load_recipe(config.calibration) if precision != Precision.FP32 else None
    rule = PrecisionRule(config.int8_margin)
    timings = read_bench_timings(config.timings, len(exits), exits) if config.timings else None
    return dataclasses.replace(s, plan=Plan(target, ckpt, model, config.formats or FILE_FORMATS,
                                            precision, exits, recipe, rule, timings))


def load_beats(s: ExportState) -> ExportState:
    """The data training used, split as training split it; calibration, validation and golden
    beats drawn from it (seeded)."""
    p, config = s.plan, s.config
    s.step("loading data")
    spec, train_part, val_part = _training_data(p.ckpt, s.data)
    rng = np.random.default_rng(config.seed)
    cset = None
    if p.recipe is not None:
        cset = _calibration_set(p.recipe, p.ckpt, spec, train_part, config.calibration_samples)
        calib_x = cset.x
    else:  # fp32 needs no calibration; a few training beats serve as the export example
        calib_x = np.ascontiguousarray(train_part.x[_sample(len(train_part), 8, rng)], dtype=np.float32)
    val_idx = _stratified_sample(val_part.y, config.max_val_samples, rng)
    val_x = np.ascontiguousarray(val_part.x[val_idx], dtype=np.float32)
    val_y = val_part.y[val_idx]
    golden_idx = _stratified_sample(val_y, config.golden_samples, rng)
    beats = Beats(spec, train_part, val_part, cset, calib_x, val_idx, val_x, val_y, golden_idx)
    return dataclasses.replace(s, beats=beats)


def run_reference(s: ExportState) -> ExportState:
    """The segments' shapes and costs, and PyTorch's logits of the deployed exits that every
    file is checked against."""
    p, b = s.plan, s.beats
    specs = segment_specs(p.model, _input_shape(p.ckpt), p.exits)
    parity_x = b.val_x[:PARITY_BEATS]
    with torch.no_grad():  # PyTorch's logits of the model exit each segment answers
        golden = [z.numpy() for z in _select(p.model(torch.from_numpy(b.golden_x)), p.exits)]
        parity = [z.numpy() for z in _select(p.model(torch.from_numpy(parity_x)), p.exits)]
    refs = References(parity_x, parity, b.golden_x, golden)
    return dataclasses.replace(s, specs=specs, refs=refs)


def write_files(s: ExportState) -> ExportState:
    """Every segment file (and the monolithic graph) of every format into the build directory."""
    p, b, config = s.plan, s.beats, s.config
    quant = p.recipe.quantization if p.recipe is not None else FLOAT_DEFAULTS
    job = WriteJob(p.model, s.specs, s.tmp, b.calib_x, p.exits, config.opset, quant, s.progress)
    auto = AutoPlan(p.rule, p.timings, config.timing_seconds, config.timing_threads,
                    s.refs.parity_x, s.refs.parity, config.int8_min_agreement)
    files, choices, mono, mono_choice = {}, {}, {}, {}
    for fmt in p.formats:
        if p.precision == AUTO:
            files[fmt], choices[fmt] = write_chain_auto(job, fmt, auto)
        else:
            files[fmt] = write_chain(job, fmt, p.precision)
        if config.monolithic:
            s.step(f"monolithic -> {fmt} {p.precision}")
            if p.precision == AUTO:
                mono[fmt], c = write_monolithic_auto(job, fmt, auto)
                mono_choice[fmt] = c.to_dict()
            else:
                mono[fmt] = write_monolithic(job, fmt, p.precision)
    return dataclasses.replace(s, written=Written(files, choices, mono, mono_choice, auto))


def draft_manifest(s: ExportState) -> ExportState:
    """The manifest of the files written, with a placeholder policy (``ensemble`` with no
    thresholds runs every exit) until the thresholds are calibrated."""
    p, w = s.plan, s.written
    segments = tuple(
        dataclasses.replace(spec, artifacts=tuple(w.files[f][spec.index] for f in p.formats),
                            precision_choices=tuple(w.choices[f][spec.index] for f in w.choices))
        for spec in s.specs
    )
    used = {a.precision for seg in segments for a in seg.artifacts}
    model = p.model
    draft = Manifest(
        model=ModelInfo.from_dict({
            "name": model.config.family if model.config else type(model).__name__,
            "config": model.config.to_dict() if model.config else None,
            "params": sum(t.numel() for t in model.parameters()),
            "num_exits": model.num_exits,
        }),
        classes=tuple(p.ckpt.classes),
        input=InputSpec.from_dict(_input_info(p.ckpt, s.beats.train_part)),
        target=TargetInfo.from_dict(p.target.to_dict()),
        policy=PolicySpec(name=PolicyName.ENSEMBLE),
        precision=used.pop() if len(used) == 1 else MIXED,
        segments=segments,
        monolithic=_monolithic_entry(p, w.mono) if w.mono else None,
        golden=Golden(),
        provenance=Provenance(),
    )
    return dataclasses.replace(s, draft=draft)


def check_files(s: ExportState) -> ExportState:
    """Every file against PyTorch (:func:`~edgeexit.export.validate.validate_segments`); one
    :class:`~edgeexit.export.errors.ValidationError` lists every file that is off."""
    report = validate_segments(s.draft, s.tmp, s.refs, s.config.int8_min_agreement, s.progress)
    report.raise_failures()
    return dataclasses.replace(s, checks=report)


def calibrate_policy(s: ExportState) -> ExportState:
    """The policy's thresholds, set on every validation beat run through the target's preferred
    format (:func:`edgeexit.calibrate.calibrate_thresholds`)."""
    p, b, config = s.plan, s.beats, s.config
    fmt = _preferred_format(p)
    s.step(f"calibrating {config.policy} thresholds on {len(b.val_x)} validation beats")
    engine = segment_engine(s.draft, s.tmp, backend_for_format(fmt).name)
    val_probs = [softmax(z) for z in run_chunked(engine, b.val_x)]
    costs = [float(spec.macs) for spec in s.specs]
    groups = b.val_groups
    warn_one_class(b.val_y, "calibration")
    calib = calibrate_thresholds(val_probs, b.val_y, costs,
                                 CalibrationConfig(config.policy, config.margin,
                                                   confidence=config.confidence,
                                                   weights=config.ensemble_weights),
                                 groups=groups)
    policy = PolicySpec(
        name=config.policy,
        thresholds=tuple(round(t, 6) for t in calib.thresholds),
        weights=calib.weights,
        calibration=CalibrationRecord.from_dict({
            **calib.to_dict(),
            "data": b.spec.source,
            "split": "validation (training's held-out part; never test)",
            "validation_records": None if groups is None
            else sorted(str(g) for g in np.unique(groups)),
            "format": fmt,
            "cost": "MACs per inference (stages and exit heads run)",
        }),
    )
    make_policy(policy.name, len(s.specs), policy.thresholds, weights=policy.weights)  # validates
    return dataclasses.replace(s, policy=policy)


def write_manifest(s: ExportState) -> ExportState:
    """``golden.npz`` and ``manifest.json`` into the build directory."""
    s.step("writing golden.npz and manifest")
    b, refs = s.beats, s.refs
    golden = {"inputs": refs.golden_x, "labels": b.val_y[b.golden_idx].astype(np.int64)}
    # logits_{j}: segment j's reference (PyTorch's logits of model exit exits[j]): what verify
    # replays
    golden.update({f"logits_{j}": z.astype(np.float32) for j, z in enumerate(refs.golden)})
    checks = s.checks
    # {fmt}_logits_{j}: what the exported files themselves computed (verify's own[...] check)
    golden.update({own_key(fmt, j): z for fmt, zs in checks.outputs.items() for j, z in enumerate(zs)})
    with open(s.tmp / GOLDEN, "wb") as f:
        np.savez(f, **golden)
    mono_tol = checks.monolithic_tolerance
    manifest = dataclasses.replace(
        s.draft,
        policy=s.policy,
        golden=Golden.from_dict({
            "file": GOLDEN,
            "sha256": sha256_file(s.tmp / GOLDEN),
            "samples": len(refs.golden_x),
            "tolerance": checks.golden_tolerance,
            **({"monolithic_tolerance": mono_tol} if mono_tol else {}),
            "tolerance_rule": GOLDEN_RULE,
            "own_tolerance": checks.own_tolerance,
            "own_tolerance_rule": OWN_RULE,
        }),
        provenance=Provenance.from_dict(_provenance(s)),
        bundle_version=s.config.bundle_version,
    )
    manifest = with_sizes(manifest, s.tmp)
    (s.tmp / MANIFEST).write_bytes(manifest_bytes(manifest))
    os.chmod(s.tmp, 0o755)
    return dataclasses.replace(s, manifest=manifest)


PREPARE = (Stage("plan", plan_export), Stage("data", load_beats), Stage("reference", run_reference))
"""Stages that read only: a failure here writes nothing."""
BUILD = (Stage("files", write_files), Stage("draft", draft_manifest), Stage("check", check_files),
         Stage("calibrate", calibrate_policy), Stage("manifest", write_manifest))
"""Stages that build the bundle in a temporary directory (removed when one fails)."""


def export_bundle(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    config: ExportConfig = ExportConfig(),
    data: str | DataSpec | None = None,
    progress: Progress = None,
) -> ExportResult:
    """Export ``checkpoint`` as a bundle directory ``out`` (and ``out.tar.gz``) for ``config.target``.

    Runs :data:`PREPARE`, then :data:`BUILD` in a temporary directory next to ``out``, which
    replaces ``out`` only once the bundle is complete.

    Args:
        checkpoint: a checkpoint written by ``edgeexit train``.
        out: the bundle directory to write (an existing bundle there is replaced atomically; any
            other existing path is refused).
        config: see :class:`ExportConfig`.
        data: the data to calibrate on (a source string or a :class:`DataSpec`); None = the data
            recorded in the checkpoint.
        progress: called with a short description before each step.

    Raises:
        CheckpointError, DataError, ConfigError: bad inputs (nothing is written).
        ExportError: a conversion failed (nothing is written); its subclass ValidationError when
            files do not match PyTorch (it lists every one).
    """
    state = run_stages(PREPARE, ExportState(checkpoint, Path(out), config, data, progress))
    state.out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{state.out.name}.tmp-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(dir=state.out.parent, prefix=prefix))
    try:
        state = run_stages(BUILD, dataclasses.replace(state, tmp=tmp))
        _install(tmp, state.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    archive = _archive(state.out)
    log.info("wrote bundle %s (%s)", state.out, archive)
    return ExportResult(state.out, archive, state.manifest, _report(state, archive))


# -- what the stages write -----------------------------------------------------------------------


def _input_shape(ckpt: Checkpoint) -> tuple[int, ...]:
    return tuple(int(v) for v in ckpt.input_spec["shape"])


def _preferred_format(p: Plan) -> Format:
    """The target's format if exported, else the first one: thresholds are calibrated on it."""
    return p.target.runtime.format if p.target.runtime.format in p.formats else p.formats[0]


def _input_info(ckpt: Checkpoint, train_part: BeatDataset) -> dict:
    x = train_part.x
    return {
        "name": INPUT_NAME,
        "shape": list(_input_shape(ckpt)),
        "dtype": "float32",
        **{k: v for k, v in ckpt.input_spec.items() if k != "shape"},
        # the runtime refuses windows far beyond what the model was trained on
        "abs_max": [round(float(v), 6) for v in
                    np.abs(x).max(axis=tuple(i for i in range(x.ndim) if i != 1))],
    }


def _monolithic_entry(p: Plan, mono: dict[str, Artifact]) -> SegmentEntry:
    shape = _input_shape(p.ckpt)
    return SegmentEntry(
        index=0,
        input_name=INPUT_NAME,
        input_shape=shape,
        output_names=("logits",),
        output_shapes=((len(p.ckpt.classes),),),
        macs=_mono_macs(p.model, shape),
        params=sum(t.numel() for t in Monolithic(p.model).parameters()),
        artifacts=tuple(mono[f] for f in p.formats),
        exit=p.model.num_exits - 1,
    )


def _provenance(s: ExportState) -> dict:
    p, b, w = s.plan, s.beats, s.written
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "checkpoint": str(s.checkpoint),
        "checkpoint_sha256": sha256_file(s.checkpoint),
        "data": b.spec.to_dict(),
        "quantization": None if p.recipe is None else {
            "samples": len(b.calib_x), "from": "training beats (not validation, not test)",
            "boundaries": "float: each int8 file quantizes its input and dequantizes its outputs",
            "recipe": p.recipe.to_dict(),
            "set": b.cset.provenance(),
            "applies": {"onnx": "recipe's method, per_channel and float_heads",
                        "tflite": "PT2E: per-channel symmetric int8 weights, per-tensor "
                                  "activations, input normalisation float (the recipe's "
                                  "samples; its [quantization] table is onnx's)"}},
        "precision": None if p.precision != AUTO else {
            "mode": "auto", **p.rule.to_dict(), "timing": w.auto.timing_note(),
            "agreement_beats": len(s.refs.parity_x),
            "agreement": "top-1 vs PyTorch on validation beats, earlier segments as chosen",
            "monolithic": w.mono_choice or None},
        "validation_samples": len(b.val_x),
        "parity": s.checks.parity,
        "export_config": s.config.to_dict(),
        "versions": _versions(),
    }


def _report(s: ExportState, archive: Path) -> dict:
    p, b, w = s.plan, s.beats, s.written
    return {
        "bundle": str(s.out),
        "archive": str(archive),
        "target": p.target.id,
        "precision": s.manifest.precision,
        "precision_choices": {f: [c.to_dict() for c in cs] for f, cs in w.choices.items()} or None,
        "calibration": None if p.recipe is None else {
            "recipe": p.recipe.name, "samples": len(b.calib_x), "sha256": b.cset.sha256},
        "formats": list(p.formats),
        "exits": list(p.exits),
        "num_model_exits": int(p.model.num_exits),
        "policy": s.policy.to_dict(),
        "parity": s.checks.parity,
    }


def _select(logits: list, exits: tuple[int, ...]) -> list:
    """The logits of the deployed model exits, in segment order."""
    return [logits[k] for k in exits]


def _mono_macs(model: MultiExitNet, input_shape) -> int:
    from edgeexit.models.profile import profile_model

    costs = profile_model(model, input_shape)
    return sum(c.stage_macs for c in costs) + costs[-1].head_macs


# -- install --------------------------------------------------------------------------------------


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("edgeexit", "torch", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


_OWN_EXTRA = (MANIFEST, "manifest.sig")  # files of a bundle that its manifest does not hash


def _check_out(out: Path) -> None:
    """Refuse to replace anything export did not write: a path that is not a bundle, a bundle
    holding files its manifest does not list (a user's notes would be deleted with it), or a
    ``OUT.tar.gz`` that is not an archive of a bundle called OUT; and a place it cannot write
    (checked before any work, as every command does: :func:`edgeexit.fileio.check_writable`)."""
    check_writable(out)
    if out.exists():
        if not out.is_dir() or not (out / MANIFEST).is_file():
            raise ConfigError(
                f"{out} exists and is not an edgeexit bundle; refusing to replace it (choose another --out)"
            )
        listed = {a.file for a in read_manifest(out).artifacts()} | set(_OWN_EXTRA)
        foreign = sorted(p.name for p in out.iterdir() if p.name not in listed)
        if foreign:
            raise ConfigError(
                f"{out} holds files its bundle does not list ({', '.join(foreign[:5])}); export "
                "replaces the whole directory: move them out, or choose another --out"
            )
    archive = out.with_name(out.name + ".tar.gz")
    if archive.exists():
        import tarfile

        try:
            with tarfile.open(archive, "r:gz") as tar:
                ours = f"{out.name}/{MANIFEST}" in tar.getnames()
        except (tarfile.TarError, OSError, EOFError):
            ours = False
        if not ours:
            raise ConfigError(
                f"{archive} exists and is not an archive of a bundle called {out.name}; refusing "
                "to overwrite it (move it, or choose another --out)"
            )


def _remove_stale(out: Path, max_age_s: float = 3600.0) -> None:
    """Clean up what killed exports of ``out`` left beside it: ``.OUT.tmp-PID-*`` directories and
    archive temporaries whose process is gone (or, without a process id, older than
    ``max_age_s``) are removed; a ``.OUT.old-PID`` is the previous bundle moved aside during the
    switch: put back when OUT is missing, removed otherwise."""
    for p in out.parent.glob(f".{out.name}.*"):
        kind, _, rest = p.name[len(out.name) + 2:].partition("-")
        if kind not in ("tmp", "old") and not p.name.endswith(".tmp"):
            continue
        pid = rest.split("-", 1)[0]
        if pid.isdigit() and kind in ("tmp", "old"):
            try:
                os.kill(int(pid), 0)
                continue  # an export still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif time.time() - p.lstat().st_mtime < max_age_s:
            continue
        if kind == "old" and p.is_dir() and not out.exists():  # killed mid-switch: restore
            log.warning("restoring %s from %s, left by an interrupted export", out, p)
            os.replace(p, out)
            continue
        log.info("removing %s, left by an interrupted export", p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _install(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``, replacing an old bundle only after the new one is whole."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _archive(out: Path) -> Path:
    return pack_directory(out, out.with_name(out.name + ".tar.gz"))


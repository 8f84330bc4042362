"""``edgeexit export``: checkpoint -> a self-contained, hash-checked bundle for one target.

Steps (each logged; ``progress`` sees them):

1. load the checkpoint and the data it was trained on (its recorded data spec); rebuild the very
   validation split training used (:meth:`edgeexit.data.ValidationSplit.recorded`);
2. split the model into per-exit segments (:mod:`edgeexit.export.split`; only the exits in
   ``ExportConfig.exits``, the stages between two deployed exits merged into one graph) and write each segment,
   and the whole model as one reference graph, in every requested format (ONNX, TFLite);
   int8 files are calibrated segment by segment on training beats, each segment on the features
   its int8 predecessor really produces; every file keeps float inputs/outputs, so segments chain
   although their quantization scales differ ("float boundaries");
3. check every file against PyTorch (:mod:`edgeexit.export.validate`);
4. calibrate the exit thresholds on the validation beats with the deployed files
   (:mod:`edgeexit.calibrate`), never on test data;
5. write ``golden.npz`` and ``manifest.json`` (:mod:`edgeexit.runtime.manifest`), then move the
   finished directory into place and pack ``DIR.tar.gz`` beside it.

Everything is built in a temporary directory next to the output; a failure leaves no half-written
bundle, and an existing bundle is replaced only once the new one is complete.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from edgeexit.calibrate import CalibrationConfig, calibrate_thresholds
from edgeexit.checkpoint import load_checkpoint
from edgeexit.data import BeatDataset, DataSpec, ValidationSplit, load_source, load_split
from edgeexit.errors import ConfigError, DataError
from edgeexit.export.errors import ExportError
from edgeexit.export.precision import (
    BenchTimings,
    PrecisionRule,
    choose_precision,
    read_bench_timings,
    time_pair,
)
from edgeexit.export.recipes import (
    DATA_CHECKPOINT,
    CalibrationSet,
    QuantOptions,
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
    split_model,
)
from edgeexit.fileio import pack_directory
from edgeexit.models.base import MultiExitNet
from edgeexit.runtime.backends import backend_for_format, get_backend
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.manifest import (
    FILE_FORMATS,
    GOLDEN,
    MANIFEST,
    MIXED,
    PRECISIONS,
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
    read_manifest,
    sha256_file,
    with_sizes,
)
from edgeexit.runtime.policy import POLICIES, make_policy, softmax
from edgeexit.targets import load_target

log = logging.getLogger(__name__)

Progress = Callable[[str], None] | None
MONOLITHIC = "monolithic"
_FLOAT_DEFAULTS = QuantOptions()  # quantization options where no recipe applies (fp32)


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
    formats: tuple[str, ...] | None = None
    precision: str | None = None
    policy: str = "max_prob"
    margin: float = 0.5
    confidence: float = 0.9
    ensemble_weights: str | None = "auto"
    calibration: str | None = None
    calibration_samples: int | None = None
    golden_samples: int = 32
    max_val_samples: int = 20000
    int8_min_agreement: float = 0.97
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
        if self.precision is not None and self.precision not in (*PRECISIONS, "auto"):
            raise ConfigError(f"unknown precision {self.precision!r}; choose fp32, int8 or auto")
        if self.timings and self.precision != "auto":
            raise ConfigError("timings are read by --precision auto only; add --precision auto")
        PrecisionRule(self.int8_margin)  # validates the margin
        if self.timing_seconds <= 0 or self.timing_threads < 1:
            raise ConfigError("timing seconds must be > 0 and timing threads >= 1")
        if self.policy not in POLICIES or self.policy in ("fixed", "budget"):
            raise ConfigError(f"export calibrates the policy max_prob, entropy or ensemble, got {self.policy!r}")
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


# -- files ---------------------------------------------------------------------------------------


def _export_file(module, example, path: Path, fmt: str, spec_names, precision, calib, opset,
                 quant: QuantOptions = _FLOAT_DEFAULTS) -> None:
    if fmt == "onnx":
        from edgeexit.export.onnx import export_onnx, quantize_onnx_int8

        in_name, out_names = spec_names
        if precision == "fp32":
            export_onnx(module, example, path, input_name=in_name, output_names=out_names, opset=opset)
        else:
            fp32 = path.with_name(path.stem + ".fp32.onnx")
            export_onnx(module, example, fp32, input_name=in_name, output_names=out_names, opset=opset)
            quantize_onnx_int8(fp32, calib, path, per_channel=quant.per_channel,
                               method=quant.method, float_heads=quant.float_heads)
            fp32.unlink()
    else:
        from edgeexit.export.split import fold_batchnorm
        from edgeexit.export.tflite import export_tflite

        export_tflite(
            fold_batchnorm(module) if precision == "fp32" else module,
            example,
            path,
            int8=precision == "int8",
            calibration=None if calib is None else torch.from_numpy(calib),
            input_name=spec_names[0],
            output_names=list(spec_names[1]),
        )


def _run_session(sess, x: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    outs: list[list[np.ndarray]] = []
    for i in range(0, len(x), batch):
        outs.append(sess.run(np.ascontiguousarray(x[i : i + batch])))
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


def _write_chain(
    model: MultiExitNet,
    specs: list[SegmentSpec],
    root: Path,
    fmt: str,
    precision: str,
    calib_x: np.ndarray,
    opset: int,
    progress: Progress,
    exits: tuple[int, ...] | None = None,
    quant: QuantOptions = _FLOAT_DEFAULTS,
) -> list[Artifact]:
    """Write every segment of one format; int8 segment k is calibrated on what int8 k-1 outputs.

    ``exits``: the deployed model exits (None = all); segment j is the merged graph of the stages
    up to exit ``exits[j]`` and that exit's head, as :func:`split_model` builds it."""
    segments = split_model(model, exits)
    backend = backend_for_format(fmt)
    h = calib_x
    artifacts = []
    for seg, spec in zip(segments, specs):
        if progress:
            what = "" if seg.stages == (seg.exit,) else f" (stages {seg.stages[0]}-{seg.stages[-1]}, exit {seg.exit})"
            progress(f"segment {spec.index}{what} -> {fmt} {precision}")
        path = root / f"segment_{spec.index}.{fmt}"
        example = torch.from_numpy(np.ascontiguousarray(h[:1]))
        _export_file(seg, example, path, fmt, (spec.input_name, list(spec.output_names)), precision,
                     h if precision == "int8" else None, opset, quant)
        artifacts.append(Artifact(path.name, fmt, precision, sha256_file(path)))
        if not seg.last:
            if precision == "int8":
                h = _run_session(backend.load(path, 1), h)[0]  # the features the device will see
            else:
                with torch.no_grad():
                    h = seg(torch.from_numpy(h))[0].numpy()
    return artifacts


def _write_monolithic(model, root, fmt, precision, calib_x, opset,
                      quant: QuantOptions = _FLOAT_DEFAULTS, name: str = MONOLITHIC) -> Artifact:
    path = root / f"{name}.{fmt}"
    example = torch.from_numpy(np.ascontiguousarray(calib_x[:1]))
    _export_file(Monolithic(model).eval(), example, path, fmt, (INPUT_NAME, ["logits"]), precision,
                 calib_x if precision == "int8" else None, opset, quant)
    return Artifact(path.name, fmt, precision, sha256_file(path))


@dataclasses.dataclass(frozen=True)
class _AutoPlan:
    """What ``--precision auto`` needs: the rule, where latencies come from, the check beats."""

    rule: PrecisionRule
    timings: BenchTimings | None
    seconds: float
    threads: int
    val_x: np.ndarray  # validation beats the agreements are measured on
    val_ref: list[np.ndarray]  # PyTorch's logits of the deployed exits on them (segment order)
    min_agreement: float = 0.0  # what every exit of the chosen chain must keep (_parity's bound)

    def timing_note(self) -> str:
        if self.timings is not None:
            return "bench p50 from " + ", ".join(self.timings.sources)
        return (f"measured at export on this host: batch 1, {self.threads} thread(s), fp32 and "
                f"int8 alternately, medians over {self.seconds:g} s")

    def latency(self, fmt: str, k: int | None, fp32_sess, int8_sess, x1) -> tuple[float, float]:
        if self.timings is None:
            return time_pair(fp32_sess, int8_sess, x1, self.seconds)
        if k is None:  # the monolithic graph: bench reports time it, but not per precision pair
            return time_pair(fp32_sess, int8_sess, x1, self.seconds)
        a, b = self.timings.get(fmt, "fp32", k), self.timings.get(fmt, "int8", k)
        if a is None or b is None:
            have = sorted(f"{f}/{p}" for f, p in self.timings.us)
            raise ConfigError(f"the --timings reports give no {fmt} "
                              f"{'fp32' if a is None else 'int8'} latency of segment {k} (they "
                              f"hold {', '.join(have) or 'nothing'}): bench an fp32 and an int8 "
                              f"{fmt} bundle on the device, or drop --timings to measure here")
        return a, b


def _agreement(logits: np.ndarray, ref: np.ndarray) -> float:
    return float((logits.argmax(-1) == ref.argmax(-1)).mean())


def _write_chain_auto(model, specs, root: Path, fmt: str, calib_x: np.ndarray, opset: int,
                      progress: Progress, exits, quant: QuantOptions,
                      plan: _AutoPlan) -> tuple[list[Artifact], list[PrecisionChoice]]:
    """Per segment: write the fp32 and the int8 file (int8 calibrated on what the chosen files
    before it output), time both, measure their exit's agreement, keep the one the rule picks.

    The rule sees one segment at a time, and an int8 segment's features can cost a later exit
    more than its own: where a later exit then falls below ``plan.min_agreement`` (with either
    file of its own), the last int8 segment at or before it is made fp32 and the chain chosen
    again (at most once per segment)."""
    forced: dict[int, str] = {}
    while True:
        artifacts, choices, agreement = _chain_auto_pass(model, specs, root, fmt, calib_x, opset,
                                                         progress, exits, quant, plan, forced)
        low = next((j for j, a in enumerate(agreement) if a < plan.min_agreement), None)
        culprit = None if low is None else next(
            (i for i in range(low, -1, -1) if choices[i].precision == "int8"), None)
        if culprit is None:  # all is well, or fp32 itself falls short (_parity says so)
            return artifacts, choices
        forced[culprit] = (f"int8 here left exit {specs[low].exit} (segment {low}) at "
                           f"{100 * agreement[low]:.1f}% agreement, below the "
                           f"{100 * plan.min_agreement:.0f}% every exit must keep")
        log.info("segment %d %s: %s; choosing the chain again with it fp32", culprit, fmt,
                 forced[culprit])


def _chain_auto_pass(model, specs, root: Path, fmt: str, calib_x: np.ndarray, opset: int,
                     progress: Progress, exits, quant: QuantOptions, plan: _AutoPlan,
                     forced: dict[int, str]) -> tuple[list[Artifact], list[PrecisionChoice], list[float]]:
    """One pass of :func:`_write_chain_auto`; ``forced``: segments kept fp32, with the reason.
    Also returns the kept file's agreement of every segment."""
    segments = split_model(model, exits)
    backend = backend_for_format(fmt)
    h, hv = calib_x, plan.val_x
    artifacts, choices, kept = [], [], []
    for seg, spec, ref in zip(segments, specs, plan.val_ref):
        path = root / f"segment_{spec.index}.{fmt}"
        cand = {p: root / f"segment_{spec.index}.{p}.{fmt}" for p in PRECISIONS}
        names = (spec.input_name, list(spec.output_names))
        example = torch.from_numpy(np.ascontiguousarray(h[:1]))
        for p, file in cand.items():
            if progress:
                progress(f"segment {spec.index} -> {fmt} {p} (auto)")
            _export_file(seg, example, file, fmt, names, p, h if p == "int8" else None, opset, quant)
        sess = {p: backend.load(file, plan.threads) for p, file in cand.items()}
        outs = {p: _run_session(s, hv) for p, s in sess.items()}
        agree = {p: _agreement(o[-1], ref) for p, o in outs.items()}
        t32, t8 = plan.latency(fmt, spec.index, sess["fp32"], sess["int8"], hv[:1])
        choice = choose_precision(fmt, t32, t8, agree["fp32"], agree["int8"], plan.rule,
                                  plan.timing_note())
        if spec.index in forced:
            choice = dataclasses.replace(choice, precision="fp32", reason=forced[spec.index])
        log.info("segment %d %s: fp32 %.1f us, int8 %.1f us, agreement %.4f / %.4f -> %s (%s)",
                 spec.index, fmt, t32, t8, agree["fp32"], agree["int8"], choice.precision,
                 choice.reason)
        keep = choice.precision
        os.replace(cand[keep], path)
        cand[next(p for p in PRECISIONS if p != keep)].unlink()
        artifacts.append(Artifact(path.name, fmt, keep, sha256_file(path)))
        choices.append(choice)
        kept.append(agree[keep])
        if not seg.last:
            hv = outs[keep][0]
            h = _run_session(backend.load(path, 1), h)[0]  # the features the device will see
    return artifacts, choices, kept


def _write_monolithic_auto(model, root: Path, fmt: str, calib_x: np.ndarray, opset: int,
                           quant: QuantOptions, plan: _AutoPlan) -> tuple[Artifact, PrecisionChoice]:
    """The monolithic reference graph under the same rule (final exit's agreement)."""
    backend = backend_for_format(fmt)
    arts = {p: _write_monolithic(model, root, fmt, p, calib_x, opset, quant, f"{MONOLITHIC}.{p}")
            for p in PRECISIONS}
    sess = {p: backend.load(root / a.file, plan.threads) for p, a in arts.items()}
    agree = {p: _agreement(_run_session(s, plan.val_x)[0], plan.val_ref[-1]) for p, s in sess.items()}
    t32, t8 = plan.latency(fmt, None, sess["fp32"], sess["int8"], plan.val_x[:1])
    note = plan.timing_note() if plan.timings is None else \
        f"measured at export on this host (bench reports time no monolithic pair): batch 1, " \
        f"{plan.threads} thread(s), medians over {plan.seconds:g} s"
    choice = choose_precision(fmt, t32, t8, agree["fp32"], agree["int8"], plan.rule, note)
    keep = choice.precision
    path = root / f"{MONOLITHIC}.{fmt}"
    os.replace(root / arts[keep].file, path)
    (root / arts["int8" if keep == "fp32" else "fp32"].file).unlink()
    return Artifact(path.name, fmt, keep, sha256_file(path)), choice


# -- checks --------------------------------------------------------------------------------------


def _parity(backend: str, logits: list[np.ndarray], ref: list[np.ndarray],
            precision: str | Sequence[str], min_agreement: float,
            exits: tuple[int, ...] | None = None) -> dict:
    """Max abs error and top-1 agreement of every segment's logits (``logits``) versus PyTorch's
    logits of the model exit it answers (``ref``, same order; ``exits`` names those model exits)
    on the same beats; raises :class:`ExportError` beyond the tolerances.

    ``precision``: of every segment file (one string: all alike). A segment is held to the fp32
    tolerance only when it and every segment before it are fp32 (an fp32 segment after an int8
    one sees int8 features); otherwise to the int8 agreement."""
    report = []
    exits = tuple(range(len(logits))) if exits is None else exits
    precs = [precision] * len(logits) if isinstance(precision, str) else list(precision)
    for j, (k, a, b) in enumerate(zip(exits, logits, ref)):
        precision = "fp32" if all(p == "fp32" for p in precs[: j + 1]) else "int8"
        err = float(np.abs(a - b).max())
        scale = float(np.abs(b).max())
        agree = float((a.argmax(-1) == b.argmax(-1)).mean())
        report.append({"exit": k, "segment": j, "precision": precs[j], "max_abs_err": err,
                       "ref_scale": scale, "top1_agreement": agree})
        if precision == "fp32" and err > 1e-3 * (1.0 + scale):
            raise ExportError(
                f"{backend} exit {k} (segment {j}): max abs logit error {err:.3g} versus PyTorch exceeds the "
                f"fp32 tolerance {1e-3 * (1 + scale):.3g}; the converted file does not compute what "
                "the model computes (report this with the model family)"
            )
        if precision == "int8" and agree < min_agreement:
            raise ExportError(
                f"{backend} int8 exit {k} (segment {j}) agrees with PyTorch's top-1 on only {100 * agree:.1f}% "
                f"of {len(a)} validation beats (< {100 * min_agreement:.0f}%); export fp32, use "
                "--precision auto, or another --calibration recipe (calibration/*.toml)"
            )
    return {"samples": len(logits[0]), "exits": report}


def _chunked_run_all(engine: Engine, x: np.ndarray, batch: int = 512) -> list[np.ndarray]:
    """Logits of every exit for ``x``, run through ``engine`` in batches."""
    parts = [engine.run_all(np.ascontiguousarray(x[i : i + batch]))[0] for i in range(0, len(x), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


# -- the bundle ----------------------------------------------------------------------------------


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
    ``OUT.tar.gz`` that is not an archive of a bundle called OUT."""
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
    import time

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


def export_bundle(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    config: ExportConfig = ExportConfig(),
    data: str | DataSpec | None = None,
    progress: Progress = None,
) -> ExportResult:
    """Export ``checkpoint`` as a bundle directory ``out`` (and ``out.tar.gz``) for ``config.target``.

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
        ExportError: a conversion failed or a file does not match PyTorch (nothing is written).
    """
    out = Path(out)
    target = load_target(config.target)
    if out.parent.is_dir():
        _remove_stale(out)
    _check_out(out)
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model.eval()
    formats = config.formats or FILE_FORMATS
    precision = config.precision or target.runtime.precision
    step = progress or (lambda s: None)
    exits = check_exits(config.exits, model.num_exits)  # deployed model exits, sorted
    recipe = load_recipe(config.calibration) if precision != "fp32" else None
    rule = PrecisionRule(config.int8_margin)
    bench_timings = None
    if config.timings:
        bench_timings = read_bench_timings(config.timings, len(exits), exits)

    step("loading data")
    spec, train_part, val_part = _training_data(ckpt, data)
    rng = np.random.default_rng(config.seed)
    cset = None
    if recipe is not None:
        cset = _calibration_set(recipe, ckpt, spec, train_part, config.calibration_samples)
        calib_x = cset.x
    else:  # fp32 needs no calibration; a few training beats serve as the export example
        calib_x = np.ascontiguousarray(train_part.x[_sample(len(train_part), 8, rng)], dtype=np.float32)
    quant = recipe.quantization if recipe is not None else _FLOAT_DEFAULTS
    val_idx = _stratified_sample(val_part.y, config.max_val_samples, rng)
    val_x = np.ascontiguousarray(val_part.x[val_idx], dtype=np.float32)
    val_y = val_part.y[val_idx]
    golden_idx = _stratified_sample(val_y, config.golden_samples, rng)
    golden_x = val_x[golden_idx]

    input_shape = tuple(int(v) for v in ckpt.input_spec["shape"])
    specs = segment_specs(model, input_shape, exits)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    n_parity = min(len(val_x), 1024)
    with torch.no_grad():  # PyTorch's logits of the model exit each segment answers
        golden_ref = [z.numpy() for z in _select(model(torch.from_numpy(golden_x)), exits)]
        parity_ref = [z.numpy() for z in _select(model(torch.from_numpy(val_x[:n_parity])), exits)]
    try:
        files: dict[str, list[Artifact]] = {}
        mono: dict[str, Artifact] = {}
        choices: dict[str, list[PrecisionChoice]] = {}
        mono_choice: dict[str, dict] = {}
        plan = _AutoPlan(rule, bench_timings, config.timing_seconds, config.timing_threads,
                         val_x[:n_parity], parity_ref, config.int8_min_agreement)
        for fmt in formats:
            if precision == "auto":
                files[fmt], choices[fmt] = _write_chain_auto(model, specs, tmp, fmt, calib_x,
                                                             config.opset, progress, exits, quant, plan)
            else:
                files[fmt] = _write_chain(model, specs, tmp, fmt, precision, calib_x, config.opset,
                                          progress, exits, quant)
            if config.monolithic:
                step(f"monolithic -> {fmt} {precision}")
                if precision == "auto":
                    mono[fmt], c = _write_monolithic_auto(model, tmp, fmt, calib_x, config.opset,
                                                          quant, plan)
                    mono_choice[fmt] = c.to_dict()
                else:
                    mono[fmt] = _write_monolithic(model, tmp, fmt, precision, calib_x, config.opset,
                                                  quant)

        segments = tuple(
            dataclasses.replace(s, artifacts=tuple(files[f][s.index] for f in formats),
                                precision_choices=tuple(choices[f][s.index] for f in choices))
            for s in specs
        )
        used = {a.precision for s in segments for a in s.artifacts}
        bundle_precision = used.pop() if len(used) == 1 else MIXED
        monolithic = None
        if mono:
            monolithic = SegmentEntry(
                index=0,
                input_name=INPUT_NAME,
                input_shape=input_shape,
                output_names=("logits",),
                output_shapes=((len(ckpt.classes),),),
                macs=_mono_macs(model, input_shape),
                params=sum(p.numel() for p in Monolithic(model).parameters()),
                artifacts=tuple(mono[f] for f in formats),
                exit=model.num_exits - 1,
            )
        input_info = {
            "name": INPUT_NAME,
            "shape": list(input_shape),
            "dtype": "float32",
            **{k: v for k, v in ckpt.input_spec.items() if k != "shape"},
            # the runtime refuses windows far beyond what the model was trained on
            "abs_max": [round(float(v), 6) for v in
                        np.abs(train_part.x).max(axis=tuple(i for i in range(train_part.x.ndim)
                                                            if i != 1))],
        }
        draft = Manifest(
            model=ModelInfo.from_dict({
                "name": model.config.family if model.config else type(model).__name__,
                "config": model.config.to_dict() if model.config else None,
                "params": sum(p.numel() for p in model.parameters()),
                "num_exits": model.num_exits,
            }),
            classes=tuple(ckpt.classes),
            input=InputSpec.from_dict(input_info),
            target=TargetInfo.from_dict(target.to_dict()),
            policy=PolicySpec(name="ensemble"),  # placeholder while checking: runs every exit
            precision=bundle_precision,
            segments=segments,
            monolithic=monolithic,
            golden=Golden(),
            provenance=Provenance(),
        )

        parity, golden_tol, mono_tol, val_probs = {}, {}, {}, None
        preferred = target.runtime.format if target.runtime.format in formats else formats[0]
        for fmt in formats:
            step(f"checking {fmt} against PyTorch")
            be = backend_for_format(fmt)
            engine = _engine(draft, tmp, be.name)
            # the preferred format runs every validation beat once: parity and thresholds share it
            logits = _chunked_run_all(engine, val_x if fmt == preferred else val_x[:n_parity])
            parity[fmt] = _parity(engine.backend, [z[:n_parity] for z in logits], parity_ref,
                                  [files[fmt][k].precision for k in range(len(specs))],
                                  config.int8_min_agreement, exits)
            got, _ = engine.run_all(golden_x)
            err = max(float(np.abs(a - b).max()) for a, b in zip(got, golden_ref))
            scale = max(float(np.abs(b).max()) for b in golden_ref)
            golden_tol[fmt] = float(2.0 * err + 1e-4 * (1.0 + scale))
            if fmt == preferred:
                step(f"calibrating {config.policy} thresholds on {len(val_x)} validation beats")
                val_probs = [softmax(z) for z in logits]
        if config.monolithic:
            for fmt in formats:
                be = backend_for_format(fmt)
                sess = be.load(tmp / mono[fmt].file, 1)
                got = _run_session(sess, golden_x)[0]
                err = float(np.abs(got - golden_ref[-1]).max())
                parity[fmt]["monolithic_max_abs_err"] = err
                # its own tolerance: an int8 monolithic graph is quantized as a whole, and its
                # error is not the segment chain's (verify failed int8 bundles on that alone)
                mono_tol[fmt] = float(2.0 * err + 1e-4 * (1.0 + float(np.abs(golden_ref[-1]).max())))
                if mono[fmt].precision == "fp32" and err > 1e-3 * (1.0 + float(np.abs(golden_ref[-1]).max())):
                    raise ExportError(f"{fmt} monolithic graph differs from PyTorch by {err:.3g}")

        costs = [float(s.macs) for s in specs]
        val_groups = None if val_part.groups is None else val_part.groups[val_idx]
        calib = calibrate_thresholds(val_probs, val_y, costs,
                                     CalibrationConfig(config.policy, config.margin,
                                                       confidence=config.confidence,
                                                       weights=config.ensemble_weights),
                                     groups=val_groups)
        policy = PolicySpec(
            name=config.policy,
            thresholds=tuple(round(t, 6) for t in calib.thresholds),
            weights=calib.weights,
            calibration=CalibrationRecord.from_dict({
                **calib.to_dict(),
                "data": spec.source,
                "split": "validation (training's held-out part; never test)",
                "validation_records": None if val_groups is None
                else sorted(str(g) for g in np.unique(val_groups)),
                "format": preferred,
                "cost": "MACs per inference (stages and exit heads run)",
            }),
        )
        make_policy(policy.name, len(segments), policy.thresholds, weights=policy.weights)  # validates

        step("writing golden.npz and manifest")
        golden_arrays = {"inputs": golden_x, "labels": val_y[golden_idx].astype(np.int64)}
        # logits_{j}: segment j's reference (PyTorch's logits of model exit exits[j]), what verify replays
        golden_arrays.update({f"logits_{j}": z.astype(np.float32) for j, z in enumerate(golden_ref)})
        with open(tmp / GOLDEN, "wb") as f:
            np.savez(f, **golden_arrays)
        manifest = dataclasses.replace(
            draft,
            policy=policy,
            golden=Golden.from_dict({
                "file": GOLDEN,
                "sha256": sha256_file(tmp / GOLDEN),
                "samples": len(golden_x),
                "tolerance": golden_tol,
                **({"monolithic_tolerance": mono_tol} if mono_tol else {}),
                "tolerance_rule": "2 x the max abs logit error measured at export + 1e-4 x (1 + logit scale)",
            }),
            provenance=Provenance.from_dict({
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "checkpoint": str(checkpoint),
                "checkpoint_sha256": sha256_file(checkpoint),
                "data": spec.to_dict(),
                "quantization": None
                if recipe is None
                else {"samples": len(calib_x), "from": "training beats (not validation, not test)",
                      "boundaries": "float: each int8 file quantizes its input and dequantizes its outputs",
                      "recipe": recipe.to_dict(),
                      "set": cset.provenance(),
                      "applies": {"onnx": "recipe's method, per_channel and float_heads",
                                  "tflite": "PT2E: per-channel symmetric int8 weights, per-tensor "
                                            "activations, input normalisation float (the recipe's "
                                            "samples; its [quantization] table is onnx's)"}},
                "precision": None
                if precision != "auto"
                else {"mode": "auto", **rule.to_dict(), "timing": plan.timing_note(),
                      "agreement_beats": int(n_parity),
                      "agreement": "top-1 vs PyTorch on validation beats, earlier segments as chosen",
                      "monolithic": mono_choice or None},
                "validation_samples": len(val_x),
                "parity": parity,
                "export_config": config.to_dict(),
                "versions": _versions(),
            }),
        )
        manifest = dataclasses.replace(manifest, bundle_version=config.bundle_version)
        manifest = with_sizes(manifest, tmp)
        (tmp / MANIFEST).write_bytes(manifest_bytes(manifest))
        os.chmod(tmp, 0o755)
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    archive = _archive(out)
    report = {
        "bundle": str(out),
        "archive": str(archive),
        "target": target.id,
        "precision": bundle_precision,
        "precision_choices": {f: [c.to_dict() for c in cs] for f, cs in choices.items()} or None,
        "calibration": None if recipe is None else {"recipe": recipe.name, "samples": len(calib_x),
                                                    "sha256": cset.sha256},
        "formats": list(formats),
        "exits": list(exits),
        "num_model_exits": int(model.num_exits),
        "policy": policy.to_dict(),
        "parity": parity,
    }
    log.info("wrote bundle %s (%s)", out, archive)
    return ExportResult(out, archive, manifest, report)


def _select(logits: list, exits: tuple[int, ...]) -> list:
    """The logits of the deployed model exits, in segment order."""
    return [logits[k] for k in exits]


def _mono_macs(model: MultiExitNet, input_shape) -> int:
    from edgeexit.models.profile import profile_model

    costs = profile_model(model, input_shape)
    return sum(c.stage_macs for c in costs) + costs[-1].head_macs


def _engine(manifest: Manifest, root: Path, backend: str) -> Engine:
    b = get_backend(backend)
    sessions = [b.load(root / s.artifact(b.file_format).file, 1) for s in manifest.segments]
    return Engine(manifest, sessions, make_policy("ensemble", manifest.num_exits), backend, 1)

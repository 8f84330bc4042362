"""Check an export's files against PyTorch: one tolerance table, every file checked, one report.

:data:`TOLERANCES` declares, once per (format, precision), how close a file must stay to what
PyTorch computes on the same inputs; :func:`tolerance` reads it (the int8 agreement floor can be
overridden per export, ``edgeexit export --int8-min-agreement``). Three checks read the table:

- right after conversion, a TFLite file's outputs on the export example
  (:attr:`Tolerance.example_rel_err`, :mod:`edgeexit.export.tflite`);
- :func:`validate_segments`, every segment of every format run as the device chains them, on
  validation beats (error bound and top-1 agreement of every exit), and the monolithic reference
  graph on the golden beats; it returns a :class:`ValidationReport` listing every failure instead
  of stopping at the first, and :meth:`ValidationReport.raise_failures` raises one
  :class:`~edgeexit.export.errors.ValidationError` naming them all;
- :func:`golden_tolerance`, the tolerance recorded in the manifest for ``edgeexit verify`` to
  replay ``golden.npz`` on the device (:data:`GOLDEN_RULE`).

A segment is held to its own precision's tolerance only when it and every segment before it are
fp32: an fp32 segment after an int8 one sees int8 features, so it is held to int8's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgeexit.export.errors import ValidationError
from edgeexit.runtime.backends import backend_for_format, get_backend
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.kinds import Format, PolicyName, Precision
from edgeexit.runtime.manifest import Manifest
from edgeexit.runtime.policy import make_policy

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How close a file of one (format, precision) must stay to PyTorch on the same inputs.

    Attributes:
        max_rel_err: the max abs logit error over the checked beats must stay <= ``max_rel_err *
            (1 + max |PyTorch logit|)``; None: not bounded (quantized files).
        min_agreement: the exit's top-1 must agree with PyTorch's on at least this fraction of
            the checked beats; None: not bounded (the error bound is the stricter check).
        example_rel_err: right after conversion, every output on the export example within
            ``example_rel_err * (1 + max |PyTorch output|)``; None: not checked there.
    """

    max_rel_err: float | None = None
    min_agreement: float | None = None
    example_rel_err: float | None = None

    def error_bound(self, scale: float) -> float | None:
        """The largest allowed max abs error for references of max magnitude ``scale``."""
        return None if self.max_rel_err is None else self.max_rel_err * (1.0 + scale)

    def example_bound(self, scale: float) -> float | None:
        """The largest allowed max abs error on the export example for outputs of max magnitude
        ``scale`` (None: not checked there)."""
        return None if self.example_rel_err is None else self.example_rel_err * (1.0 + scale)


INT8_MIN_AGREEMENT = 0.97
"""int8's top-1 agreement floor (``ExportConfig.int8_min_agreement`` overrides it per export)."""

TOLERANCES: dict[tuple[Format, Precision], Tolerance] = {
    (Format.ONNX, Precision.FP32): Tolerance(max_rel_err=1e-3),
    (Format.TFLITE, Precision.FP32): Tolerance(max_rel_err=1e-3, example_rel_err=1e-4),
    (Format.ONNX, Precision.INT8): Tolerance(min_agreement=INT8_MIN_AGREEMENT),
    (Format.TFLITE, Precision.INT8): Tolerance(min_agreement=INT8_MIN_AGREEMENT),
}


def tolerance(fmt: str, precision: str, min_agreement: float | None = None) -> Tolerance:
    """The tolerance of files of ``fmt`` and ``precision``; ``min_agreement`` replaces the
    table's agreement floor where it has one (int8)."""
    tol = TOLERANCES[(Format(fmt), Precision(precision))]
    if min_agreement is not None and tol.min_agreement is not None:
        tol = dataclasses.replace(tol, min_agreement=min_agreement)
    return tol


GOLDEN_RULE = "2 x the max abs logit error measured at export + 1e-4 x (1 + logit scale)"


OWN_STEPS = 6  # aarch64 LiteRT int8 kernels were 2 steps off x86 outputs (qemu, 8 beats)
OWN_RULE = (f"int8 files: {OWN_STEPS} quantization steps of each exit's outputs ((max - min) / 255 "
            "over the golden beats); fp32 files: the golden tolerance")


def own_tolerance(outputs: Sequence[np.ndarray], precisions: Sequence[str],
                  fp32_tol: float) -> list[float]:
    """Per segment, how far a device's outputs may be from the exported files' own outputs on the
    golden beats (computed here, on the host): :data:`OWN_RULE`. A broken int8 layer, or a
    device whose int8 kernels compute something else, moves an exit by more than a few steps,
    while the quantization error against PyTorch that the golden tolerance must allow hides it."""
    return [float(OWN_STEPS * (o.max() - o.min()) / 255.0) if p == Precision.INT8 else float(fp32_tol)
            for o, p in zip(outputs, precisions)]


def golden_tolerance(err: float, scale: float) -> float:
    """What ``edgeexit verify`` allows on the device for a file that was ``err`` off at export
    (:data:`GOLDEN_RULE`; ``scale``: max |PyTorch logit| on the golden beats)."""
    return float(2.0 * err + 1e-4 * (1.0 + scale))


@dataclasses.dataclass(frozen=True)
class References:
    """What PyTorch computed: the logits of every deployed exit (segment order) on the parity
    beats (validation) and on the golden beats (written to ``golden.npz``)."""

    parity_x: np.ndarray
    parity: list[np.ndarray]
    golden_x: np.ndarray
    golden: list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Failure:
    """One check a file failed: what was measured against which bound, and a message that says
    what to do."""

    file: str
    format: str
    check: str  # "max_abs_err" or "top1_agreement"
    measured: float
    bound: float
    message: str


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Every file's measurements, and every failure.

    ``parity[fmt]``: ``{"samples", "exits": [per segment: exit, segment, precision, max_abs_err,
    ref_scale, top1_agreement], "monolithic_max_abs_err"}`` (the last with a monolithic graph);
    ``golden_tolerance`` / ``monolithic_tolerance``: per format, for the manifest
    (:func:`golden_tolerance`); ``outputs``: per format, every segment's logits on the golden
    beats as the exported files compute them, and ``own_tolerance`` how far a device may be from
    those (:func:`own_tolerance`)."""

    parity: dict[str, dict]
    golden_tolerance: dict[str, float]
    monolithic_tolerance: dict[str, float]
    failures: tuple[Failure, ...] = ()
    outputs: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    own_tolerance: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_failures(self) -> None:
        """Raise :class:`ValidationError` listing every failure (nothing when all passed)."""
        if self.failures:
            raise ValidationError(self.failures)


def top1_agreement(logits: np.ndarray, ref: np.ndarray) -> float:
    """The fraction of beats on which ``logits``' top-1 class is ``ref``'s."""
    return float((logits.argmax(-1) == ref.argmax(-1)).mean())


def check_parity(backend: str, fmt: str, logits: Sequence[np.ndarray], ref: Sequence[np.ndarray],
                 precisions: Sequence[str], exits: Sequence[int], files: Sequence[str],
                 min_agreement: float | None = None) -> tuple[dict, list[Failure]]:
    """Max abs error and top-1 agreement of every segment's logits versus PyTorch's logits of the
    model exit it answers (same beats, same order), each against :func:`tolerance`.

    Returns the parity entry (``{"samples", "exits"}``) and the failures, every one of them."""
    rows, failures = [], []
    for j, (k, a, b) in enumerate(zip(exits, logits, ref)):
        all_fp32 = all(p == Precision.FP32 for p in precisions[: j + 1])
        held = Precision.FP32 if all_fp32 else Precision.INT8
        tol = tolerance(fmt, held, min_agreement)
        err = float(np.abs(a - b).max())
        scale = float(np.abs(b).max())
        agree = top1_agreement(a, b)
        rows.append({"exit": k, "segment": j, "precision": precisions[j], "max_abs_err": err,
                     "ref_scale": scale, "top1_agreement": agree})
        bound = tol.error_bound(scale)
        if bound is not None and err > bound:
            failures.append(Failure(files[j], fmt, "max_abs_err", err, bound, (
                f"{backend} exit {k} (segment {j}): max abs logit error {err:.3g} versus PyTorch "
                f"exceeds the {held} tolerance {bound:.3g}; the converted file does not compute "
                "what the model computes (report this with the model family)")))
        if tol.min_agreement is not None and agree < tol.min_agreement:
            failures.append(Failure(files[j], fmt, "top1_agreement", agree, tol.min_agreement, (
                f"{backend} {held} exit {k} (segment {j}) agrees with PyTorch's top-1 on only "
                f"{100 * agree:.1f}% of {len(a)} validation beats "
                f"(< {100 * tol.min_agreement:.0f}%); "
                "export fp32, use --precision auto, or another --calibration recipe "
                "(calibration/*.toml)")))
    return {"samples": len(logits[0]), "exits": rows}, failures


def validate_segments(manifest: Manifest, root: str | Path, refs: References,
                      min_agreement: float | None = None,
                      progress: Callable[[str], None] | None = None) -> ValidationReport:
    """Run every file of ``manifest`` (in ``root``) with the device's backends and check it
    against ``refs``: the segment chain of each format on the parity and the golden beats, the
    monolithic graph (if any) on the golden beats. Checks every file; never raises for a file
    that is off (the report lists it); backends' own errors propagate.

    ``min_agreement``: int8's agreement floor (None: :data:`INT8_MIN_AGREEMENT`)."""
    root = Path(root)
    parity: dict[str, dict] = {}
    golden_tol: dict[str, float] = {}
    mono_tol: dict[str, float] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    own_tol: dict[str, list[float]] = {}
    failures: list[Failure] = []
    formats = [a.format for a in manifest.segments[0].artifacts]  # in the order export wrote them
    for fmt in formats:
        if progress:
            progress(f"checking {fmt} against PyTorch")
        engine = segment_engine(manifest, root, backend_for_format(fmt).name)
        logits = run_chunked(engine, refs.parity_x)
        arts = [s.artifact(fmt) for s in manifest.segments]
        parity[fmt], found = check_parity(engine.backend, fmt, logits, refs.parity,
                                          [a.precision for a in arts], manifest.exits,
                                          [a.file for a in arts], min_agreement)
        failures += found
        got, _ = engine.run_all(refs.golden_x)
        err = max(float(np.abs(a - b).max()) for a, b in zip(got, refs.golden))
        golden_tol[fmt] = golden_tolerance(err, max(float(np.abs(b).max()) for b in refs.golden))
        outputs[fmt] = [g.astype(np.float32) for g in got]
        own_tol[fmt] = own_tolerance(got, [a.precision for a in arts], golden_tol[fmt])
    if manifest.monolithic is not None:
        for fmt in formats:
            err, tol, failure = _check_monolithic(manifest, root, fmt, refs, min_agreement)
            parity[fmt]["monolithic_max_abs_err"] = err
            # its own tolerance: an int8 monolithic graph is quantized as a whole, and its error
            # is not the segment chain's (verify failed int8 bundles on that alone)
            mono_tol[fmt] = tol
            failures += [failure] if failure else []
    for f in failures:
        log.warning("%s", f.message)
    return ValidationReport(parity, golden_tol, mono_tol, tuple(failures), outputs, own_tol)


def _check_monolithic(manifest: Manifest, root: Path, fmt: str, refs: References,
                      min_agreement: float | None) -> tuple[float, float, Failure | None]:
    """The monolithic graph's final logits on the golden beats: (error, golden tolerance, failure).

    Only the error bound applies (fp32): the graph is a benchmark reference, never used to
    classify, and its agreement on a few golden beats would say little."""
    art = manifest.monolithic.artifact(fmt)
    sess = backend_for_format(fmt).load(root / art.file, 1)
    want = refs.golden[-1]
    err = float(np.abs(run_session(sess, refs.golden_x)[0] - want).max())
    scale = float(np.abs(want).max())
    bound = tolerance(fmt, art.precision, min_agreement).error_bound(scale)
    failure = None
    if bound is not None and err > bound:
        failure = Failure(art.file, fmt, "max_abs_err", err, bound,
                          f"{fmt} monolithic graph differs from PyTorch by {err:.3g} "
                          f"(> {bound:.3g}, the {art.precision} tolerance)")
    return err, golden_tolerance(err, scale), failure


def segment_engine(manifest: Manifest, root: Path, backend: str) -> Engine:
    """An engine over ``manifest``'s segment files in ``root`` that runs every exit (one thread)."""
    b = get_backend(backend)
    sessions = [b.load(root / s.artifact(b.file_format).file, 1) for s in manifest.segments]
    policy = make_policy(PolicyName.ENSEMBLE, manifest.num_exits)
    return Engine(manifest, sessions, policy, backend, 1)


def run_chunked(engine: Engine, x: np.ndarray, batch: int = 512) -> list[np.ndarray]:
    """Logits of every exit for ``x``, run through ``engine`` in batches."""
    parts = [engine.run_all(np.ascontiguousarray(x[i : i + batch]))[0] for i in range(0, len(x), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def run_session(sess, x: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    """Every output of one loaded file for ``x``, run in batches."""
    outs: list[list[np.ndarray]] = []
    for i in range(0, len(x), batch):
        outs.append(sess.run(np.ascontiguousarray(x[i : i + batch])))
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]

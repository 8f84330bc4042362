"""Write a model's segment files (and its monolithic reference graph) in one format.

:func:`write_chain` writes every segment at one precision; int8 segment k is calibrated on what
int8 segment k-1 really outputs (the features the device will see). :func:`write_chain_auto`
(``--precision auto``) writes an fp32 and an int8 file per segment and keeps the one
:func:`~edgeexit.export.precision.choose_precision` picks. Every file keeps float inputs and
outputs, so segments chain although their quantization scales differ.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgeexit.errors import ConfigError
from edgeexit.export.precision import BenchTimings, PrecisionRule, choose_precision, time_pair
from edgeexit.export.recipes import QuantOptions
from edgeexit.export.split import INPUT_NAME, Monolithic, SegmentSpec, split_model
from edgeexit.export.validate import run_session, top1_agreement
from edgeexit.models.base import MultiExitNet
from edgeexit.runtime.backends import backend_for_format
from edgeexit.runtime.kinds import PRECISIONS, Format, Precision
from edgeexit.runtime.manifest import Artifact, PrecisionChoice, sha256_file

log = logging.getLogger(__name__)

MONOLITHIC = "monolithic"
FLOAT_DEFAULTS = QuantOptions()  # quantization options where no recipe applies (fp32)


@dataclasses.dataclass(frozen=True)
class WriteJob:
    """What every file of one export shares.

    ``calib_x``: the int8 calibration windows (fp32: a few training beats, the example input);
    ``exits``: the deployed model exits (segment j is the merged graph of the stages up to exit
    ``exits[j]`` and that exit's head, as :func:`split_model` builds it)."""

    model: MultiExitNet
    specs: list[SegmentSpec]
    root: Path
    calib_x: np.ndarray
    exits: tuple[int, ...] | None = None
    opset: int = 18
    quant: QuantOptions = FLOAT_DEFAULTS
    progress: Callable[[str], None] | None = None

    def say(self, text: str) -> None:
        if self.progress:
            self.progress(text)


def export_file(module, example, path: Path, fmt: str, spec_names, precision: str, calib,
                opset: int, quant: QuantOptions = FLOAT_DEFAULTS) -> None:
    """Write ``module`` as one ``fmt`` file at ``precision`` (int8: calibrated on ``calib``)."""
    if fmt == Format.ONNX:
        from edgeexit.export.onnx import export_onnx, quantize_onnx_int8

        in_name, out_names = spec_names
        if precision == Precision.FP32:
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
            fold_batchnorm(module) if precision == Precision.FP32 else module,
            example,
            path,
            int8=precision == Precision.INT8,
            calibration=None if calib is None else torch.from_numpy(calib),
            input_name=spec_names[0],
            output_names=list(spec_names[1]),
        )


def write_chain(job: WriteJob, fmt: str, precision: str) -> list[Artifact]:
    """Write every segment of one format; int8 segment k is calibrated on what int8 k-1 outputs."""
    segments = split_model(job.model, job.exits)
    backend = backend_for_format(fmt)
    h = job.calib_x
    artifacts = []
    for seg, spec in zip(segments, job.specs):
        what = "" if seg.stages == (seg.exit,) else \
            f" (stages {seg.stages[0]}-{seg.stages[-1]}, exit {seg.exit})"
        job.say(f"segment {spec.index}{what} -> {fmt} {precision}")
        path = job.root / f"segment_{spec.index}.{fmt}"
        example = torch.from_numpy(np.ascontiguousarray(h[:1]))
        export_file(seg, example, path, fmt, (spec.input_name, list(spec.output_names)), precision,
                    h if precision == Precision.INT8 else None, job.opset, job.quant)
        artifacts.append(Artifact(path.name, fmt, precision, sha256_file(path)))
        if not seg.last:
            if precision == Precision.INT8:
                h = run_session(backend.load(path, 1), h)[0]  # the features the device will see
            else:
                with torch.no_grad():
                    h = seg(torch.from_numpy(h))[0].numpy()
    return artifacts


def write_monolithic(job: WriteJob, fmt: str, precision: str, name: str = MONOLITHIC) -> Artifact:
    """Write the whole model as one graph ``name.fmt`` (the benchmarks' reference)."""
    path = job.root / f"{name}.{fmt}"
    example = torch.from_numpy(np.ascontiguousarray(job.calib_x[:1]))
    export_file(Monolithic(job.model).eval(), example, path, fmt, (INPUT_NAME, ["logits"]),
                precision, job.calib_x if precision == Precision.INT8 else None, job.opset,
                job.quant)
    return Artifact(path.name, fmt, precision, sha256_file(path))


@dataclasses.dataclass(frozen=True)
class AutoPlan:
    """What ``--precision auto`` needs: the rule, where latencies come from, the check beats."""

    rule: PrecisionRule
    timings: BenchTimings | None
    seconds: float
    threads: int
    val_x: np.ndarray  # validation beats the agreements are measured on
    val_ref: list[np.ndarray]  # PyTorch's logits of the deployed exits on them (segment order)
    min_agreement: float = 0.0  # what every exit of the chosen chain must keep (validate's bound)

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


def write_chain_auto(job: WriteJob, fmt: str,
                     plan: AutoPlan) -> tuple[list[Artifact], list[PrecisionChoice]]:
    """Per segment: write the fp32 and the int8 file (int8 calibrated on what the chosen files
    before it output), time both, measure their exit's agreement, keep the one the rule picks.

    The rule sees one segment at a time, and an int8 segment's features can cost a later exit
    more than its own: where a later exit then falls below ``plan.min_agreement`` (with either
    file of its own), the last int8 segment at or before it is made fp32 and the chain chosen
    again (at most once per segment)."""
    forced: dict[int, str] = {}
    while True:
        artifacts, choices, agreement = _chain_auto_pass(job, fmt, plan, forced)
        low = next((j for j, a in enumerate(agreement) if a < plan.min_agreement), None)
        culprit = None if low is None else next(
            (i for i in range(low, -1, -1) if choices[i].precision == Precision.INT8), None)
        if culprit is None:  # all is well, or fp32 itself falls short (validate says so)
            return artifacts, choices
        forced[culprit] = (f"int8 here left exit {job.specs[low].exit} (segment {low}) at "
                           f"{100 * agreement[low]:.1f}% agreement, below the "
                           f"{100 * plan.min_agreement:.0f}% every exit must keep")
        log.info("segment %d %s: %s; choosing the chain again with it fp32", culprit, fmt,
                 forced[culprit])


def _chain_auto_pass(job: WriteJob, fmt: str, plan: AutoPlan,
                     forced: dict[int, str]) -> tuple[list[Artifact], list[PrecisionChoice], list[float]]:
    """One pass of :func:`write_chain_auto`; ``forced``: segments kept fp32, with the reason.
    Also returns the kept file's agreement of every segment."""
    segments = split_model(job.model, job.exits)
    backend = backend_for_format(fmt)
    h, hv = job.calib_x, plan.val_x
    artifacts, choices, kept = [], [], []
    for seg, spec, ref in zip(segments, job.specs, plan.val_ref):
        path = job.root / f"segment_{spec.index}.{fmt}"
        cand = {p: job.root / f"segment_{spec.index}.{p}.{fmt}" for p in PRECISIONS}
        names = (spec.input_name, list(spec.output_names))
        example = torch.from_numpy(np.ascontiguousarray(h[:1]))
        for p, file in cand.items():
            job.say(f"segment {spec.index} -> {fmt} {p} (auto)")
            export_file(seg, example, file, fmt, names, p, h if p == Precision.INT8 else None,
                        job.opset, job.quant)
        sess = {p: backend.load(file, plan.threads) for p, file in cand.items()}
        outs = {p: run_session(s, hv) for p, s in sess.items()}
        agree = {p: top1_agreement(o[-1], ref) for p, o in outs.items()}
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
            h = run_session(backend.load(path, 1), h)[0]  # the features the device will see
    return artifacts, choices, kept


def write_monolithic_auto(job: WriteJob, fmt: str,
                          plan: AutoPlan) -> tuple[Artifact, PrecisionChoice]:
    """The monolithic reference graph under the same rule (final exit's agreement)."""
    backend = backend_for_format(fmt)
    arts = {p: write_monolithic(job, fmt, p, f"{MONOLITHIC}.{p}") for p in PRECISIONS}
    sess = {p: backend.load(job.root / a.file, plan.threads) for p, a in arts.items()}
    agree = {p: top1_agreement(run_session(s, plan.val_x)[0], plan.val_ref[-1])
             for p, s in sess.items()}
    t32, t8 = plan.latency(fmt, None, sess["fp32"], sess["int8"], plan.val_x[:1])
    note = plan.timing_note() if plan.timings is None else \
        f"measured at export on this host (bench reports time no monolithic pair): batch 1, " \
        f"{plan.threads} thread(s), medians over {plan.seconds:g} s"
    choice = choose_precision(fmt, t32, t8, agree["fp32"], agree["int8"], plan.rule, note)
    keep = choice.precision
    path = job.root / f"{MONOLITHIC}.{fmt}"
    os.replace(job.root / arts[keep].file, path)
    (job.root / arts[Precision.INT8 if keep == Precision.FP32 else Precision.FP32].file).unlink()
    return Artifact(path.name, fmt, keep, sha256_file(path)), choice

"""Host-side deployment: ``export`` a checkpoint as a bundle, ``calibrate`` its exit thresholds."""

from __future__ import annotations

import click

from edgeexit.cli.app import echo_result, main, names, parse_exits, read_json_file, stage_printer
from edgeexit.cli.formats import calibrate_text, export_text
from edgeexit.cli.options import backend_option, bound_options, json_option
from edgeexit.runtime.kinds import CALIBRATED_POLICIES, EXPORT_PRECISIONS

_EXPORT_GROUPS = (
    ("Bundle", ("target", "out_dir", "formats", "monolithic", "exits", "bundle_version",
                "golden_samples", "as_json")),
    ("Precision", ("precision", "recipe", "int8_margin", "timings", "calibration_samples")),
    ("Exit thresholds", ("policy", "margin", "confidence", "ensemble_weights", "source")),
)


@main.command(option_groups=_EXPORT_GROUPS)
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--target", default="rpi4", show_default=True,
              help="Device preset id (`edgeexit targets`) or a preset .toml file.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to write (DIR.tar.gz is written beside it).")
@click.option("--formats", default="onnx,tflite", show_default=True,
              help="Comma-separated file formats: onnx, tflite.")
@click.option("--precision", type=click.Choice([str(p) for p in EXPORT_PRECISIONS]), default=None,
              help="Precision of the segment files (default: the target's). auto: per segment "
                   "and format, int8 only where it is faster (timed here, or --timings) and its "
                   "top-1 agreement stays within --int8-margin of fp32's.")
@click.option("--calibration", "recipe", default=None, metavar="RECIPE",
              help="int8 calibration recipe: a name in calibration/ or a .toml file (default: "
                   "'default'); the manifest records it and the samples it chose.")
@click.option("--int8-margin", default=1.0, show_default=True,
              help="--precision auto: int8 may agree with PyTorch this many points less than fp32.")
@click.option("--timings", multiple=True, type=click.Path(dir_okay=False),
              help="--precision auto: `edgeexit bench --json` reports made on the device (an fp32 "
                   "and an int8 bundle per format; repeat the option) instead of timing here.")
@click.option("--policy", type=click.Choice([str(p) for p in CALIBRATED_POLICIES]), default="max_prob",
              show_default=True, help="Exit policy whose thresholds are calibrated.")
@click.option("--margin", default=0.5, show_default=True,
              help="Allowed validation accuracy loss versus the final exit, in points.")
@bound_options
@click.option("--data", "source", default=None,
              help="Data to calibrate on (default: the data recorded in the checkpoint; its "
                   "validation part sets the thresholds, its training part the int8 scales).")
@click.option("--calibration-samples", type=int, default=None,
              help="Override the recipe's number of int8 calibration windows.")
@click.option("--golden-samples", default=32, show_default=True,
              help="Validation beats stored in golden.npz for `edgeexit verify`.")
@click.option("--monolithic/--no-monolithic", default=True, show_default=True,
              help="Also write the whole model as one graph (needed by `edgeexit bench`).")
@click.option("--exits", "exits", default=None, metavar="K,K,...",
              help="Comma-separated model exit indices to deploy, e.g. 0,3 (default: all). Must "
                   "include the final exit and one early exit; given in any order, they are "
                   "sorted. The stages between two kept exits run as one segment and the other "
                   "heads are dropped, so segment j answers the j-th kept exit (thresholds, "
                   "--exit and `edgeexit run` index segments).")
@click.option("--bundle-version", type=click.IntRange(min=1, max=2**63 - 1), default=1, show_default=True,
              help="The manifest's monotonic bundle_version (a device installs only newer ones).")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export(checkpoint, target, out_dir, formats, precision, recipe, int8_margin, timings, policy,
           margin, confidence, ensemble_weights, source,
           calibration_samples, golden_samples, monolithic, exits, bundle_version, as_json):
    """Export a checkpoint as a device bundle: per-exit segments, checked, thresholds calibrated.

    Writes OUT (manifest.json, segment_K.onnx/.tflite, monolithic.*, golden.npz) and OUT.tar.gz.
    A failed export leaves nothing behind; an existing bundle at OUT is replaced only when the
    new one is complete.
    """
    from edgeexit.export.bundle import ExportConfig, export_bundle

    config = ExportConfig(
        target=target, formats=names(formats), precision=precision, calibration=recipe,
        int8_margin=int8_margin, timings=tuple(timings) or None, policy=policy, margin=margin,
        confidence=confidence, ensemble_weights=None if ensemble_weights == "equal" else "auto",
        calibration_samples=calibration_samples, golden_samples=golden_samples,
        monolithic=monolithic, exits=parse_exits(exits), bundle_version=bundle_version,
    )
    result = export_bundle(checkpoint, out_dir, config, data=source, progress=stage_printer())
    echo_result(as_json, result.report, lambda: export_text(result.report))


_CALIBRATE_GROUPS = (
    ("Labelled data (one of)", ("source", "records", "cross_fit", "checkpoint", "threads")),
    ("Thresholds", ("policy", "margin", "confidence", "ensemble_weights", "cost_budget")),
    ("Cost", ("bench_file", "cost", "backend")),
    ("Output", ("pareto_plot", "dry_run", "as_json")),
)


@main.command(option_groups=_CALIBRATE_GROUPS)
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--data", "source", default=None,
              help="Labelled beats of the target population that training never saw: "
                   "'synthetic' (new simulated patients), a WFDB directory (with --records), or "
                   "an .npz/.csv data set (its 'groups' are used as record ids).")
@click.option("--cross-fit", "cross_fit", type=click.IntRange(min=2), default=None, metavar="K",
              help="Instead of --data: train K models with the checkpoint's recipe, each without "
                   "one group of its training records, and calibrate on their out-of-fold "
                   "answers for every training record (host only; K trainings).")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="--cross-fit: the bundle's checkpoint (default: the one its manifest records).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="--cross-fit: training threads.")
@click.option("--records", default=None,
              help="WFDB data: comma-separated record names to calibrate on (default: all).")
@click.option("--policy", type=click.Choice([str(p) for p in CALIBRATED_POLICIES]), default=None,
              help="Policy to calibrate (default: the bundle's).")
@click.option("--margin", default=0.5, show_default=True,
              help="Allowed accuracy loss versus the final exit, in points.")
@bound_options
@click.option("--bench", "bench_file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="A `bench --json` report (e.g. made on the device): minimise its measured "
                   "per-segment latency (or energy, --cost energy) instead of MACs.")
@click.option("--cost", type=click.Choice(["latency", "energy"]), default="latency", show_default=True,
              help="With --bench: the cost to minimise (energy: per segment, above idle, as the "
                   "bench's meter measured or estimated it).")
@click.option("--budget", "cost_budget", default=None, type=float,
              help="Instead of holding --margin: the most accurate thresholds whose expected cost "
                   "per inference stays within this (us, mJ with --cost energy, MACs without --bench).")
@click.option("--pareto-plot", default=None, type=click.Path(dir_okay=False),
              help="Write the accuracy/cost curve of the calibration data as this PNG (the curve "
                   "itself is always recorded in the manifest).")
@backend_option
@click.option("--dry-run", is_flag=True, help="Report the thresholds, write nothing.")
@json_option
def calibrate(bundle, source, cross_fit, checkpoint, threads, records, policy, margin, confidence,
              ensemble_weights, bench_file, cost, cost_budget, pareto_plot, backend, dry_run, as_json):
    """Recalibrate a bundle's exit thresholds on your own labelled data and write them into it.

    Runs the bundle's own files on the beats, chooses the cheapest thresholds whose accuracy
    loss against the final exit stays within --margin at the upper end of its --confidence
    interval over records, and rewrites manifest.json (and BUNDLE.tar.gz) atomically.
    """
    from edgeexit.calibrate import BundleCalibrationConfig, calibrate_bundle
    from edgeexit.recalibrate import cross_fitted, labelled_data
    from edgeexit.runtime.manifest import load_manifest

    if (source is None) == (cross_fit is None):
        raise click.UsageError("give either --data or --cross-fit K")
    if cost == "energy" and bench_file is None:
        raise click.UsageError("--cost energy needs --bench BENCH.json (from `edgeexit bench BUNDLE "
                               "--meter auto --json`)")
    manifest = load_manifest(bundle)  # checked before any data is read or model trained
    _check_calibrate_outputs(bundle, pareto_plot, dry_run)
    ckpt = checkpoint or manifest.provenance.checkpoint
    if cross_fit is not None and not ckpt:
        raise click.UsageError("give --checkpoint (the bundle records none)")
    d = (labelled_data(manifest, source, None if records is None else list(names(records)))
         if cross_fit is None else
         cross_fitted(manifest, cross_fit, ckpt, threads=threads, progress=stage_printer()))
    config = BundleCalibrationConfig(
        policy=policy, margin=margin, confidence=confidence,
        weights=None if ensemble_weights == "equal" else "auto", cost=cost, budget=cost_budget,
        backend=backend, dry_run=dry_run, pareto_plot=pareto_plot)
    r = calibrate_bundle(bundle, d.x, d.y, d.groups, config,
                         bench=None if not bench_file else read_json_file(bench_file, "--bench"),
                         probs=d.probs, source=d.source, provenance=d.provenance)
    echo_result(as_json, r, lambda: calibrate_text(r, d.source, bundle, dry_run))


def _check_calibrate_outputs(bundle, pareto_plot, dry_run) -> None:
    """The output rule for calibrate, before any data is read: the bundle's manifest can be
    rewritten, and --pareto-plot replaces only a plot that edgeexit drew (matplotlib's PNG)."""
    from pathlib import Path

    from edgeexit.fileio import check_output_file, check_writable

    if not dry_run and Path(bundle).is_dir():
        check_writable(Path(bundle) / "manifest.json",
                       advice="copy the bundle somewhere writable and calibrate it there")
    if pareto_plot:
        def drawn_here(path: Path) -> bool:
            head = path.read_bytes()[:512]
            return head.startswith(b"\x89PNG") and b"matplotlib" in head.lower()

        check_output_file(pareto_plot, "calibrate", "--pareto-plot", ours=drawn_here)

"""On the device: ``run`` a bundle, ``verify`` it, ``bench`` it and compare benches (``report``)."""

from __future__ import annotations

import json

import click

from edgeexit.cli.app import (
    Failure,
    ProgressBars,
    echo_json,
    echo_result,
    exit_with,
    interactive,
    main,
)
from edgeexit.cli.formats import bench_text, stream_summary_text, verify_text
from edgeexit.cli.options import (
    POLICY_PARAMS,
    STREAM_PARAMS,
    backend_option,
    json_option,
    open_engine,
    policy_options,
    stream_options,
    threads_option,
    trusted_option,
)
from edgeexit.errors import ExitStatus
from edgeexit.runtime.kinds import FORMAT_BACKEND

_RUN_GROUPS = (
    ("Windows", ("input_path", "batch", "fail_fast")),
    ("Engine and exit policy", ("backend", "threads", "trusted_keys", *POLICY_PARAMS)),
    ("Streaming (--stream)", STREAM_PARAMS),
)


@main.command(option_groups=_RUN_GROUPS)
@click.argument("bundle", type=click.Path())
@click.option("--input", "input_path", default=None,
              help="Windows to classify: .npy ([N,C,L] or [C,L]), .npz (x or inputs), .csv "
                   "(one window per line, C*L values), or - for CSV lines on stdin.")
@backend_option
@threads_option
@policy_options
@click.option("--batch", is_flag=True,
              help="Classify all windows as one batch (each segment runs only on undecided ones).")
@click.option("--fail-fast", is_flag=True,
              help="Stop at the first window that cannot be answered (default: answer all others).")
@trusted_option
@stream_options
def run(bundle, input_path, backend, threads, batch, fail_fast, trusted_keys, **options):
    """Classify windows with a bundle; print one JSON line per window.

    Each line: label, exit taken, class probabilities, and the microseconds of every segment
    that ran (with --batch: the batch's per-segment totals are printed last, to stderr). A window
    the bundle cannot answer (NaN/Inf, far outside the training range, a CSV line that is not a
    window) gets its own line with its index and the error; every other window is answered, and
    the exit status is 1 when any window was refused (--fail-fast: stop at the first).
    """
    policy = {k: options.pop(k) for k in POLICY_PARAMS}
    if options["stream"] is not None or input_path is None:  # --stream SOURCE
        return _run_stream(bundle, input_path, backend, threads, trusted_keys, policy, **options)
    from edgeexit.runtime.classify import WindowAnswers
    from edgeexit.runtime.io import read_windows

    engine = open_engine(bundle, backend, threads, trusted_keys, policy)
    problems: dict[int, str] = {}
    x = read_windows(input_path, engine.input_shape, errors=problems)
    answers = WindowAnswers(engine, x, problems, batch=batch, fail_fast=fail_fast)
    for line in answers:
        click.echo(json.dumps(line))
    if answers.segments is not None:
        click.echo(json.dumps(answers.segments), err=True)
    if answers.refused:
        refused = answers.refused
        shown = ", ".join(map(str, refused[:10])) + (" ..." if len(refused) > 10 else "")
        raise Failure(
            f"{len(refused)} of {len(x)} windows refused (index {shown})"
            + ("; stopped at the first (--fail-fast)" if fail_fast else "; every other window was answered"))


def _run_stream(bundle, input_path, backend, threads, trusted_keys, policy, stream, fs, units,
                adc_gain, adc_zero, dtype, n_channels, channel, block_seconds, hop_s, realtime,
                min_sqi, summary_only, as_json):
    """``run --stream``: one JSON line per beat (one beat late), then the summary."""
    from edgeexit.runtime.stream import open_source, stream_classify

    if stream is None:
        raise click.UsageError("give --input WINDOWS, or --stream SOURCE for a live signal")
    if input_path is not None:
        raise click.UsageError("--input and --stream exclude each other: give one")
    engine = open_engine(bundle, backend, threads, trusted_keys, policy)
    src = open_source(stream, fs=fs, units=units, dtype=dtype, channel=channel, channels=n_channels,
                      adc_gain=adc_gain, adc_zero=adc_zero, block_seconds=block_seconds)
    summary = None
    for ev in stream_classify(engine, src, realtime=realtime, min_sqi=min_sqi, detector={"hop_s": hop_s}):
        if not ev.get("summary"):
            if not summary_only:
                click.echo(json.dumps(ev))
            continue
        summary = ev
        if as_json:
            click.echo(json.dumps(ev))
        else:
            click.echo(stream_summary_text(ev), err=not summary_only)
    _stream_status(summary)


def _stream_status(summary: dict | None) -> None:
    """Exit 1 when the stream classified no beat, or refused any (the summary is printed first)."""
    beats, refused = (summary or {}).get("beats", 0), (summary or {}).get("refused", 0)
    if refused:
        raise Failure(f"{refused} of {beats} beats refused (see their 'error' lines): check the "
                      "signal's units, --fs and gains against the bundle's input")
    if not beats:
        raise Failure("no beat was classified: the signal held no detectable R peaks (check "
                      "--fs, --units and the lead; a stream needs several seconds of ECG)")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--backend", type=click.Choice(["all", "auto", *FORMAT_BACKEND.values()]), default="all",
              show_default=True, help="all: every installed backend for the bundle's formats.")
@threads_option
@trusted_option
@click.option("--strict", is_flag=True,
              help="Fail (status 3) when a format could not be replayed: its backend is not installed.")
@json_option
def verify(bundle, backend, threads, trusted_keys, strict, as_json):
    """Check a bundle's hashes and file shapes and replay golden.npz; exit status 3 on any mismatch.

    Proves, on the device, that the files compute what the PyTorch model computed at export.
    BUNDLE is the directory or its .tar.gz. Every segment file's input and output shapes are
    checked against the manifest and the next file (shapes[BACKEND]); the report is printed
    whatever fails. Formats whose backend is not installed here are listed as not checked
    (--strict: a failure).
    """
    from edgeexit.runtime.verify import verify_bundle

    report = verify_bundle(bundle, backend=backend, threads=threads, strict=strict,
                           trusted_keys=trusted_keys)
    echo_result(as_json, report.to_dict(), lambda: verify_text(report, bundle))
    if not report.ok:
        exit_with(ExitStatus.MISMATCH)


_BENCH_GROUPS = (
    ("Data", ("source", "split", "limit", "warmup")),
    ("Engine and exit policy", ("backend", "threads", "trusted_keys", *POLICY_PARAMS)),
    ("Energy", ("meter", "energy_seconds", "meter_rate", "power_target")),
    ("Output", ("report_dir", "progress", "as_json")),
)


@main.command(option_groups=_BENCH_GROUPS)
@click.argument("bundle", type=click.Path())
@click.option("--data", "source", default=None,
              help="Labelled windows: 'synthetic', a WFDB directory, .npz/.csv data set, or .npy "
                   "(no labels). Default: the test side of the data recorded in the bundle.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Side of a synthetic/WFDB source to use (WFDB: DS2 / DS1).")
@click.option("--limit", type=int, default=None,
              help="Benchmark a seeded random sample of this many windows (default: all).")
@click.option("--warmup", default=50, show_default=True, help="Untimed runs of every path first.")
@backend_option
@threads_option
@policy_options
@click.option("--meter", default="auto", show_default=True, metavar="METER",
              help="Energy meter: auto (the best present, and it says which), rapl, ina2xx, "
                   "ina3221, csv:LOG.csv (an external meter's timestamped watts), estimate (CPU "
                   "time x the target's power model), or none.")
@click.option("--energy-seconds", type=click.FloatRange(min=0, min_open=True), default=0.5,
              show_default=True, help="Metered seconds per path (policy, monolithic, each prefix).")
@click.option("--meter-rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="HZ",
              help="Sampling rate of a sampled meter (INA2xx/INA3221: 200 Hz, never faster than "
                   "its update_interval; Jetson 100 Hz; RAPL polls at 10 Hz for wrap-arounds).")
@click.option("--power-target", default=None, metavar="TARGET",
              help="--meter estimate: the preset whose power model is used (default: the "
                   "bundle's target; x86_64 on a PC host).")
@click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False),
              help="Also write DIR/report.md, report.json and PNG plots (host: needs matplotlib).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@trusted_option
@json_option
def bench(bundle, source, split, limit, warmup, backend, threads, meter, energy_seconds, meter_rate,
          power_target, report_dir, progress, trusted_keys, as_json, **policy):
    """Accuracy, per-segment latency (p50/p95/p99), exit histogram, energy, early-exit savings.

    Batch 1. For every window the exit policy, the all-exits segmented path and the monolithic
    model run back to back, so their ratios are measured side by side in one run. Then each
    path runs alone under the energy meter (--energy-seconds each): energy per inference and per
    segment, gross and above idle, labelled measured or estimated.
    """
    from edgeexit.data.bench import bench_data
    from edgeexit.fileio import check_output_directory
    from edgeexit.report import REPORT_FILES
    from edgeexit.runtime.profile import bench_engine

    if report_dir is not None:  # before the bench: its result must have somewhere to go
        check_output_directory(report_dir, REPORT_FILES, "bench", "--report", record="report.json")
    engine = open_engine(bundle, backend, threads, trusted_keys, policy, load_monolithic=True)
    energy_meter, why = _open_meter(meter, engine, power_target, meter_rate)
    x, y, described = bench_data(engine, source, split, limit)
    try:
        with ProgressBars(interactive(progress)) as bars:
            report = bench_engine(engine, x, y, warmup=warmup, progress=bars.ticker("bench", "beat"),
                                  meter=energy_meter, energy_seconds=energy_seconds,
                                  energy_progress=bars.ticker("energy", "window")).to_dict()
    finally:
        if energy_meter is not None:
            energy_meter.close()
    report["bundle"] = str(bundle)
    report["data"] = described
    if energy_meter is not None:
        report["energy"]["chosen"] = why
    written = None
    if report_dir is not None:
        from edgeexit.report import write_bench_report

        written = write_bench_report(report, report_dir)
    echo_result(as_json, report, lambda: bench_text(report) + (
        f"\nreport: {written['dir']}/report.md ({len(written['files'])} files)" if written else ""))


def _open_meter(spec, engine, power_target, rate_hz=None):
    """(meter or None, one line saying which meter and why) for ``--meter``; the estimate's
    power model is the bundle's target's, or ``--power-target``'s."""
    from edgeexit.runtime.energy import open_meter

    power = engine.manifest.target.power.to_dict()
    if power_target is not None:
        from edgeexit.targets import load_target

        power = load_target(power_target).power.to_dict()
    return open_meter(spec, power=power, threads=engine.threads, rate_hz=rate_hz)


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--name", "names", multiple=True,
              help="A label per result, in order (default: the file or directory name).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Write DIR/compare.md and comparison plots (PNG) there.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def report(results, names, out_dir, as_json):
    """Compare several bench results (two devices, fp32 vs int8, ...) in one table and plot.

    RESULTS: `edgeexit bench --json` files or `bench --report` directories (results made on a
    device are plotted here from their JSON). With one result and --out, that result's full
    report (report.md and its plots) is written.
    """
    from pathlib import Path

    from edgeexit.fileio import check_output_directory
    from edgeexit.report import (REPORT_FILES, REPORT_RECORDS, compare_results, load_result,
                                  write_bench_report)

    if names and len(names) != len(results):
        raise click.UsageError(f"{len(names)} --name for {len(results)} results: give one each")
    if out_dir is not None:  # report.json / compare.json: the records of an earlier report
        check_output_directory(out_dir, REPORT_FILES, "report", record=REPORT_RECORDS)
    loaded = []
    for i, path in enumerate(results):
        p = Path(path)
        label = names[i] if names else (p.name if p.is_dir() else p.stem)
        loaded.append((label, load_result(path)))
    out = compare_results(loaded, out_dir)
    if len(loaded) == 1 and out_dir is not None:
        out["files"] += write_bench_report(loaded[0][1], out_dir)["files"]
    if as_json:
        echo_json(out)
        return
    click.echo(out["markdown"], nl=False)
    if out["files"]:
        click.echo(f"wrote {len(out['files'])} files into {out_dir}")

"""Options several commands share, as decorators (datasette's ``@sqlite_extensions`` pattern),
and what turns them into library arguments."""

from __future__ import annotations

import click

from edgeexit.cli.app import FiniteFloat, apply, read_json_file
from edgeexit.runtime.kinds import FORMAT_BACKEND, POLICY_NAMES

backend_option = click.option(
    "--backend", type=click.Choice(["auto", *FORMAT_BACKEND.values()]), default="auto",
    show_default=True, help="Inference engine (auto: the target's preferred format if installed).")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="Threads (default: the target's, capped at the CPUs here).")
trusted_option = click.option(
    "--trusted-keys", "trusted_keys", default=None, type=click.Path(exists=True),
    help="Accept only bundles signed by these public keys (a KEY.pub or a directory of them; "
         "default: the device config, $EDGEEXIT_CONFIG or /etc/edgeexit/device.toml).")
into_option = click.option("--into", "into", required=True, type=click.Path(file_okay=False),
                           help="Install directory (DIR/current is the bundle that serves).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")

# --device / --amp of the commands that run torch (train, compress, evaluate); the library
# resolves them (edgeexit.torchdevice), so `--device cuda` without a GPU is a one-line Error
_DEVICE_HELP = ("Where torch computes: auto (a CUDA GPU when one is visible, else the CPU), cpu, "
                "cuda or cuda:N. Checkpoints hold CPU tensors either way.")
device_option = click.option("--device", default="auto", show_default=True,
                             metavar="auto|cpu|cuda|cuda:N", help=_DEVICE_HELP)
device_options = apply([
    device_option,
    click.option("--amp", type=click.Choice(["none", "bf16"]), default="none", show_default=True,
                 help="Mixed precision: bf16 runs the training forward passes in bfloat16 "
                      "(torch.autocast; GPUs with bf16 support, or the CPU)."),
])

POLICY_PARAMS = ("policy", "thresholds", "exit_index", "budget", "costs_file")
policy_options = apply([
    click.option("--policy", type=click.Choice([str(p) for p in POLICY_NAMES]),
                 default=None, help="Exit policy (default: the bundle's calibrated one)."),
    click.option("--thresholds", default=None,
                 help="Override thresholds, one per early exit, e.g. 0.9,0.9,0.95 (max_prob, "
                      "ensemble: probabilities from 0 to 1; entropy: nats, at least 0)."),
    click.option("--exit", "exit_index", type=int, default=None, help="The exit of --policy fixed."),
    click.option("--budget", "budget", default=None, metavar="LIMIT",
                 help="The limit of --policy budget per input: latency (40us, 0.1ms: the live "
                      "clock) or energy (0.05mJ, 50uJ: predicted per-segment energy)."),
    click.option("--costs", "costs_file", default=None, type=click.Path(dir_okay=False),
                 help="--policy budget: a `bench --json` report whose per-segment latency/energy "
                      "predicts each segment's cost (default: the costs the bundle records)."),
])

bound_options = apply([  # shared by export and calibrate
    click.option("--confidence", default=0.9, show_default=True,
                 help="The accuracy loss's interval at this level (a bootstrap over "
                      "records) must stay within the margin; 0: only the pooled loss."),
    click.option("--ensemble-weights", type=click.Choice(["auto", "equal"]), default="auto",
                 show_default=True,
                 help="ensemble policy: auto lets calibration weight later exits more where "
                      "an equal average would lose to the final exit; equal: the plain mean."),
])

STREAM_PARAMS = ("stream", "fs", "units", "adc_gain", "adc_zero", "dtype", "n_channels", "channel",
                 "block_seconds", "hop_s", "realtime", "min_sqi", "summary_only", "as_json")
stream_options = apply([  # `run --stream` (streaming beat classification)
    click.option("--stream", "stream", default=None, metavar="SOURCE",
                 help="Classify the beats of a live signal instead of windows: a WFDB record "
                      "(.../mitdb/100), a .csv/.txt file (one sample per line, or columns and "
                      "--channel), a raw binary file (--dtype), or - for stdin as it arrives."),
    click.option("--fs", type=FiniteFloat(positive=True), default=None,
                 help="[--stream] Sampling rate in Hz (not for WFDB)."),
    click.option("--units", type=click.Choice(["mV", "uV", "adc"], case_sensitive=False),
                 default="mV", show_default=True,
                 help="[--stream] Sample units; adc: (value - --adc-zero) / --adc-gain."),
    click.option("--adc-gain", type=FiniteFloat(nonzero=True), default=200.0, show_default=True,
                 help="[--stream] ADC units per mV (--units adc)."),
    click.option("--adc-zero", type=FiniteFloat(), default=0.0, show_default=True,
                 help="[--stream] ADC value of 0 mV (--units adc)."),
    click.option("--dtype", default=None,
                 help="[--stream] Raw binary samples of this type (float32, int16, ...)."),
    click.option("--channels", "n_channels", type=int, default=1, show_default=True,
                 help="[--stream] Interleaved channels per frame of a raw binary source."),
    click.option("--channel", type=int, default=None,
                 help="[--stream] Channel / CSV column to use, from 0 (WFDB default: MLII)."),
    click.option("--block-seconds", type=float, default=1.0, show_default=True,
                 help="[--stream] Signal seconds read per block."),
    click.option("--hop-s", type=FiniteFloat(positive=True), default=2.0, show_default=True,
                 help="[--stream] Signal seconds between the R-peak detector's steps: 4 takes "
                      "about 30% off its CPU time and answers about 1 s later (same beats)."),
    click.option("--realtime", is_flag=True, help="[--stream] Pace reading to the sampling rate."),
    click.option("--min-sqi", type=float, default=None, metavar="Q",
                 help="[--stream] Flag beats whose signal-quality index (QRS peak-to-peak over "
                      "the high-frequency noise) is below Q as unreadable, counted apart "
                      "(6: about half the beats under muscle noise at 0 dB, none clean)."),
    click.option("--summary-only", is_flag=True, help="[--stream] Print only the summary."),
    click.option("--json", "as_json", is_flag=True,
                 help="[--stream] Print the summary as a JSON line on stdout (default: text on stderr)."),
])


def policy_args(bundle, policy=None, thresholds=None, exit_index=None, budget=None,
                costs_file=None) -> dict:
    """The engine's policy arguments from the policy options (``--policy budget``: its limit and
    the per-segment costs it is checked against, from ``--costs`` or the bundle)."""
    t = None
    if thresholds:
        try:
            t = [float(v) for v in thresholds.split(",")]
        except ValueError:
            raise click.BadParameter("thresholds are comma-separated numbers", param_hint="--thresholds")
    args = {"policy": policy, "thresholds": t, "exit_index": exit_index}
    if (budget is not None or costs_file is not None) and policy != "budget":
        raise click.UsageError("--budget and --costs go with --policy budget")
    if policy == "budget":
        from edgeexit.runtime.manifest import load_manifest
        from edgeexit.runtime.profile import budget_costs, parse_budget

        if budget is None:
            raise click.UsageError("--policy budget needs --budget LIMIT (e.g. 40us or 0.05mJ)")
        limit, unit = parse_budget(budget)
        bench = None if costs_file is None else read_json_file(costs_file, "--costs")
        manifest = load_manifest(bundle, check_hashes=False)
        args["budget"] = {"limit": limit, "unit": unit,
                          "segment_costs": budget_costs(unit, bench, manifest)}
    return args


def check_threshold_range(policy: str | None, thresholds: list[float]) -> None:
    """Thresholds the policy can meet: max_prob and ensemble compare a probability (0 to 1),
    entropy an entropy in nats (at least 0). A value outside given on the command line is a typo
    (95 for 0.95), not a setting: it would silently never (or always) exit early. (The library
    keeps accepting them: calibration's "never exit early" is such a value.)"""
    if policy in ("max_prob", "ensemble"):
        bad = next((v for v in thresholds if not 0.0 <= v <= 1.0), None)
        if bad is not None:
            hint = f" (did you mean {bad / 100:g}?)" if 1.0 < bad <= 100.0 else ""
            raise click.BadParameter(
                f"{policy} thresholds are probabilities from 0 to 1, got {bad:g}{hint}; "
                "--policy fixed --exit K answers at one exit", param_hint="--thresholds")
    elif policy == "entropy":
        bad = next((v for v in thresholds if v < 0.0 or v != v), None)
        if bad is not None:
            raise click.BadParameter(f"entropy thresholds are entropies in nats, at least 0, got "
                                     f"{bad:g}", param_hint="--thresholds")


def open_engine(bundle, backend, threads, trusted_keys, policy: dict, **kwargs):
    """:meth:`Engine.from_bundle` with the policy options (``policy``: their values by name)."""
    from edgeexit.runtime.engine import Engine

    args = policy_args(bundle, **policy)
    engine = Engine.from_bundle(bundle, backend=backend, threads=threads, trusted_keys=trusted_keys,
                                **kwargs, **args)
    if args["thresholds"] is not None:  # checked against the policy that took them: the engine
        # knows it, a bundle given as its .tar.gz included
        check_threshold_range(engine.policy.name, args["thresholds"])
    return engine

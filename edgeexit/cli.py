"""The ``edgeexit`` command line: each command parses, calls one library function, and prints.

This module imports neither torch nor onnx at module level (a test checks it): the device side
installs only numpy and an inference engine, and ``edgeexit --help`` must work there.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from edgeexit import __version__
from edgeexit.errors import EdgeExitError

# Packages of the [host] extra: a device with only [runtime] installed lacks them.
_HOST_MODULES = {"torch", "wfdb", "tqdm", "onnx", "onnxscript", "torch_pruning", "litert_torch"}


class _Group(click.Group):
    """Turns every :class:`EdgeExitError` into a one-line ``Error: ...`` and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeExitError as e:
            raise click.ClickException(str(e)) from None
        except ModuleNotFoundError as e:
            if e.name not in _HOST_MODULES:
                raise
            raise click.ClickException(
                f"this command needs {e.name}, part of the host install (the device install has "
                "only the runtime): pip install -c constraints.txt 'edgeexit[host]'"
            ) from None


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2))


def _pct(v: float) -> str:
    return f"{100 * v:5.1f}"


def _format_exits(exits: list[dict], split: str) -> str:
    """A per-exit table: cost, accuracy, macro-F1, per-class sensitivity/precision on ``split``."""
    first = exits[0][split]
    classes = list(first["per_class"])
    nsvf = "macro_f1_nsvf" in first
    head = f"{'exit':>4} {'MACs':>10} {'params':>8} {'acc%':>6} {'mF1':>6}"
    head += f" {'mF1nsvf':>7}" if nsvf else ""
    head += "  " + " ".join(f"{c + ' sen/pre%':>13}" for c in classes)
    lines = [head]
    params = 0
    for e in exits:
        r = e[split]
        params += e["stage_params"] + e["head_params"]
        line = f"{e['index']:>4} {e['cumulative_macs']:>10,} {params:>8,} {_pct(r['accuracy']):>6}"
        line += f" {r['macro_f1']:6.3f}"
        line += f" {r['macro_f1_nsvf']:7.3f}" if nsvf else ""
        line += "  " + " ".join(
            f"{_pct(r['per_class'][c]['sensitivity']).strip():>6}/"
            f"{_pct(r['per_class'][c]['precision']).strip():<6}"
            for c in classes
        )
        lines.append(line.rstrip())
    return "\n".join(lines)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeexit")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages too.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
def main(verbose: bool, quiet: bool) -> None:
    """edgeexit: robust multi-exit ECG classifiers, from training to Raspberry Pi-class devices.

    Train a multi-exit model on the built-in synthetic ECG or on MIT-BIH records, inspect data
    sets and checkpoints. Logs go to stderr; results to stdout (human text, or JSON with --json).
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# ---------------------------------------------------------------------------------------- train
@main.command()
@click.option("--data", "source", default="synthetic", show_default=True,
              help="'synthetic', a WFDB directory (MIT-BIH), or a .npz/.csv file.")
@click.option("--test-data", default=None,
              help="A separate test set (file or directory). Default: synthetic -> other simulated "
                   "patients; WFDB -> DS2; file -> a held-out part of it.")
@click.option("--split", type=click.Choice(["inter-patient", "random"]), default="inter-patient",
              show_default=True, help="WFDB data: DS1/DS2 by patient, or random beats (leaks patients).")
@click.option("--n-beats", default=6000, show_default=True, help="Synthetic training beats.")
@click.option("--window", default=256, show_default=True, help="Samples per beat window.")
@click.option("--rr-context/--no-rr-context", default=True, show_default=True,
              help="Add RR-interval channels (needed to tell S beats from N).")
@click.option("--model", default="resnet1d", show_default=True,
              help="Model family (`edgeexit info --models` lists them).")
@click.option("--width", default=1.0, show_default=True, help="Channel-width multiplier.")
@click.option("--method", default="standard", show_default=True, help="Training method.")
@click.option("--epochs", default=12, show_default=True, help="Maximum epochs.")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=3e-3, show_default=True, help="Peak learning rate (cosine decay).")
@click.option("--class-weighting", type=click.Choice(["none", "sqrt", "balanced"]), default="sqrt",
              show_default=True, help="Cross-entropy class weights for imbalanced classes.")
@click.option("--max-class-weight", default=3.0, show_default=True,
              help="Cap on any class weight (strong weights wreck the normal class).")
@click.option("--val-split", type=click.Choice(["auto", "record", "beat"]), default="auto",
              show_default=True, help="Hold out whole records or random beats for validation.")
@click.option("--val-fraction", default=0.15, show_default=True)
@click.option("--patience", default=4, show_default=True, help="Early-stopping patience (0: off).")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random gain and baseline offset during training.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=None, type=int, help="Torch threads (default: all cores).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for model.pt and metrics.json.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the full metrics as JSON.")
def train(source, test_data, split, n_beats, window, rr_context, model, width, method, epochs,
          batch_size, lr, class_weighting, max_class_weight, val_split, val_fraction, patience,
          augment, seed,
          threads, out_dir, progress, as_json):
    """Train a multi-exit model and report every exit on the test set.

    Writes OUT/model.pt (rebuilds the model from the file alone) and OUT/metrics.json. Runs on
    several processes under torchrun (DDP, gloo backend), e.g.
    `torchrun --nproc-per-node 2 -m edgeexit train ...`.
    """
    from edgeexit.data import DataSpec
    from edgeexit.train import TrainConfig, run_training

    spec = DataSpec(source=source, test_source=test_data, split=split, n_beats=n_beats,
                    seed=seed, window=window, rr_context=rr_context)
    config = TrainConfig(model=model, width=width, method=method, epochs=epochs,
                         batch_size=batch_size, lr=lr, class_weighting=class_weighting,
                         max_class_weight=max_class_weight,
                         val_split=val_split, val_fraction=val_fraction, patience=patience,
                         augment=augment, seed=seed, threads=threads)
    result = run_training(spec, config, out_dir, progress=progress and sys.stderr.isatty())
    if result.checkpoint is None:  # a non-zero rank under torchrun: rank 0 reports
        return
    if as_json:
        _echo_json(result.metrics)
        return
    m = result.metrics
    click.echo(f"{m['model']['family']}: {m['params']:,} parameters, best epoch {m['best_epoch']}, "
               f"{m['elapsed_s']} s on {m['processes']} process(es)")
    click.echo(f"test set: {m['data']['test']['source']} ({m['data']['test']['beats']} beats)")
    click.echo(_format_exits(m["exits"], "test"))
    click.echo(f"wrote {result.checkpoint} and metrics.json")


# ----------------------------------------------------------------------------------------- info
@main.command()
@click.argument("target", required=False)
@click.option("--models", "list_all", is_flag=True, help="List the registered model families.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(target, list_all, as_json):
    """Show a checkpoint's (or a model family's) architecture, exits, parameters and MACs.

    TARGET is a checkpoint written by `edgeexit train`, or a model family name (profiled for
    one ECG lead plus the RR context channels, 256 samples).
    """
    from edgeexit.summary import describe_models, describe_target

    if list_all or target is None:
        models = describe_models()
        if as_json:
            _echo_json(models)
        else:
            for name, desc in models.items():
                click.echo(f"{name:18} {desc}")
        return
    d = describe_target(target)
    if as_json:
        _echo_json(d)
        return
    click.echo(f"{d['name']}: family {d['model']['family']}, {d['params']:,} parameters, "
               f"input {d['input_spec']['shape']} ({', '.join(d['input_spec']['channels'])})")
    if d.get("classes"):
        click.echo(f"classes: {' '.join(d['classes'])}")
    click.echo(f"{'exit':>4} {'feature':>10} {'stage MACs':>11} {'head MACs':>10} "
               f"{'MACs to exit':>13} {'stage par.':>10} {'head par.':>9}")
    for e in d["exits"]:
        click.echo(f"{e['index']:>4} {'x'.join(map(str, e['feature_shape'])):>10} "
                   f"{e['stage_macs']:>11,} {e['head_macs']:>10,} {e['cumulative_macs']:>13,} "
                   f"{e['stage_params']:>10,} {e['head_params']:>9,}")
    if d.get("test"):
        click.echo(f"final exit on the test set: accuracy {_pct(d['test']['accuracy']).strip()}%")
    if as_json is False and d.get("architecture"):
        click.echo(d["architecture"])


# ----------------------------------------------------------------------------------------- data
@main.group()
def data():
    """Generate or inspect a data set (synthetic, MIT-BIH directory, .npz/.csv)."""


@data.command("inspect")
@click.argument("source")
@click.option("--n-beats", default=6000, show_default=True, help="Synthetic beats.")
@click.option("--seed", default=0, show_default=True, help="Synthetic seed.")
@click.option("--window", default=256, show_default=True)
@click.option("--rr-context/--no-rr-context", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_inspect(source, n_beats, seed, window, rr_context, as_json):
    """Print the size, shape, channels and class counts of SOURCE.

    SOURCE is 'synthetic', a WFDB directory (all non-paced records), or a .npz/.csv file.
    """
    from edgeexit.data import DataSpec, load_source

    spec = DataSpec(source=source, n_beats=n_beats, seed=seed, window=window, rr_context=rr_context)
    d = load_source(source, spec).describe()
    if as_json:
        _echo_json(d)
        return
    click.echo(f"{d['source']}: {d['beats']} beats of shape {d['input_shape']} at {d['fs']} Hz, "
               f"channels {', '.join(d['channels'])}"
               + (f", {d['records']} records" if d["records"] else ""))
    total = max(d["beats"], 1)
    for name, count in d["class_counts"].items():
        click.echo(f"  {name:>3} {count:>8}  {100 * count / total:5.1f}%")


@data.command("generate")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The .npz file to write.")
@click.option("--source", default="synthetic", show_default=True,
              help="'synthetic', or a WFDB directory to convert.")
@click.option("--n-beats", default=6000, show_default=True, help="Synthetic beats.")
@click.option("--seed", default=0, show_default=True, help="Synthetic seed.")
@click.option("--window", default=256, show_default=True)
@click.option("--rr-context/--no-rr-context", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def data_generate(out_path, source, n_beats, seed, window, rr_context, as_json):
    """Write a data set to an .npz file (synthetic beats, or a WFDB directory converted)."""
    from edgeexit.data import DataSpec, load_source

    if not out_path.endswith(".npz"):
        raise click.BadParameter("the output file must end in .npz", param_hint="--out")
    spec = DataSpec(source=source, n_beats=n_beats, seed=seed, window=window, rr_context=rr_context)
    dataset = load_source(source, spec)
    dataset.save_npz(out_path)
    d = {**dataset.describe(), "written": out_path}
    if as_json:
        _echo_json(d)
    else:
        counts = " ".join(f"{k}={v}" for k, v in d["class_counts"].items())
        click.echo(f"wrote {d['beats']} beats {d['input_shape']} to {out_path}: {counts}")


if __name__ == "__main__":
    sys.exit(main())

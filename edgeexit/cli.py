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
from edgeexit.config import EXIT_HEADS
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


def _names(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: a comma-separated option, blanks dropped."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


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
    # our own messages at the chosen level; the converters' (onnxscript, torch) chatter only when -v
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("edgeexit").setLevel(level)


# ---------------------------------------------------------------------------------------- train
# `edgeexit train` options of the training methods: CLI parameter -> (method config field, the
# one method it belongs to, or None for any method whose config has the field)
_METHOD_OPTIONS = {
    "eps": ("eps", None), "norm": ("norm", None), "attack_steps": ("steps", None),
    "attack_step_size": ("step_size", None), "attack_kind": ("attack", None),
    "kd_alpha": ("alpha", "neokd"), "kd_beta": ("beta", "neokd"),
    "kd_temperature": ("temperature", "neokd"),
    "ima_eps_max": ("eps_max", "ima"), "ima_eps_step": ("eps_step", "ima"),
    "ima_eps_init": ("eps_init", "ima"), "ima_beta": ("beta", "ima"),
    "ima_bisection_steps": ("bisection_steps", "ima"), "ima_criterion": ("criterion", "ima"),
    "vae": ("vae", "onmanifold"), "eta": ("eta", "onmanifold"),
    "latent_steps": ("latent_steps", "onmanifold"),
}


def _method_config(method: str, ctx: click.Context):
    """The method's settings from the method options given on the command line (only those:
    the rest keep the method's defaults); an option the method does not take is refused."""
    import dataclasses

    from click.core import ParameterSource

    from edgeexit.errors import ConfigError
    from edgeexit.robust.methods import check_method_name, make_method_config, method_config_class

    check_method_name(method)
    fields = {f.name for f in dataclasses.fields(method_config_class(method))}

    def flag(param: str) -> str:
        return next(p for p in ctx.command.params if p.name == param).opts[0]

    takes = [flag(p) for p, (f, only) in _METHOD_OPTIONS.items()
             if f in fields and only in (None, method)]
    options = {}
    for param, (field, only) in _METHOD_OPTIONS.items():
        if ctx.get_parameter_source(param) in (None, ParameterSource.DEFAULT):
            continue
        if field not in fields or only not in (None, method):
            raise ConfigError(
                f"training method {method!r} does not take {flag(param)} ("
                + (f"it takes {', '.join(takes)}" if takes else "it has no options")
                + "; choose the method the option belongs to with --method)"
            )
        options[field] = ctx.params[param]
    return make_method_config(method, options)


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
@click.option("--morph-context/--no-morph-context", default=False, show_default=True,
              help="Add morphology channels: each beat against the same recording's previous "
                   "beats (correlation, QRS amplitude ratio, deviation; the device computes them too).")
@click.option("--model", default="resnet1d", show_default=True,
              help="Model family (`edgeexit info --models` lists them).")
@click.option("--width", default=1.0, show_default=True, help="Channel-width multiplier.")
@click.option("--exit-heads", type=click.Choice(EXIT_HEADS), default="conv",
              show_default=True,
              help="Early exits: conv (small conv adapter, more accurate) or linear (pooling + "
                   "linear only: cheapest, the all-exits path costs least).")
@click.option("--context-fusion", is_flag=True,
              help="Give every exit a linear term in the input's context scalars (RR and "
                   "morphology channels), beside what the network makes of them.")
@click.option("--method", default="standard", show_default=True,
              help="Training method: standard, rdi (RDI-Nets adversarial training), neokd (NEO-KD: "
                   "RDI plus neighbour and exit-wise orthogonal distillation), ima (increasing-"
                   "margin adversarial training) or onmanifold (RDI plus on-manifold examples of "
                   "a VAE, --vae). Method options left unset keep its defaults.")
@click.option("--eps", type=float, default=None,
              help="rdi, neokd: attack budget on the ECG channels in mV (Linf per sample; L2 over "
                   "the window) [default 0.1].")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=None,
              help="rdi, neokd, ima: norm of the attack budget / margins [default linf].")
@click.option("--attack-steps", type=int, default=None,
              help="rdi, neokd, ima: PGD steps per batch [default 5].")
@click.option("--attack-step-size", type=float, default=None,
              help="rdi, neokd: PGD step in mV [default 2.5 * eps / steps].")
@click.option("--attack", "attack_kind", type=click.Choice(["avg", "max-avg"]), default=None,
              help="rdi, neokd: average-exit PGD, or max-average PGD (one PGD per exit, costs "
                   "that many times more) [default avg].")
@click.option("--kd-alpha", type=float, default=None,
              help="neokd: weight of the neighbour distillation [default 3].")
@click.option("--kd-beta", type=float, default=None,
              help="neokd: weight of the exit-wise orthogonal distillation [default 1].")
@click.option("--kd-temperature", type=float, default=None,
              help="neokd: softmax temperature of the distillation [default 1].")
@click.option("--ima-eps-max", type=float, default=None,
              help="ima: largest per-sample margin in mV [default 0.2].")
@click.option("--ima-eps-step", type=float, default=None,
              help="ima: margin growth per epoch in mV [default 0.02].")
@click.option("--ima-eps-init", type=float, default=None,
              help="ima: initial margin of every sample in mV [default: the step].")
@click.option("--ima-beta", type=float, default=None,
              help="ima: weight of the loss on the boundary points, 0-1 [default 0.5].")
@click.option("--ima-bisection-steps", type=int, default=None,
              help="ima: bisection steps placing points on the decision boundary [default 6].")
@click.option("--ima-criterion", type=click.Choice(["mean", "final"]), default=None,
              help="ima: which answer counts as correct: mean softmax of the exits, or the final "
                   "exit [default mean].")
@click.option("--vae", default=None, type=click.Path(exists=True, dir_okay=False),
              help="onmanifold: the VAE of the data (a vae.pt of `edgeexit compress`).")
@click.option("--eta", type=float, default=None,
              help="onmanifold: latent Linf budget of the on-manifold examples [default 0.5].")
@click.option("--latent-steps", type=int, default=None,
              help="onmanifold: latent PGD steps per batch [default 5].")
@click.option("--attack-morph", type=click.Choice(["follows", "held"]), default="follows",
              show_default=True,
              help="rdi, neokd, ima, onmanifold on data with --morph-context: the training "
                   "attacks recompute the morphology channels from the perturbed waveform, as "
                   "the device and `edgeexit evaluate` do (follows), or hold them (held).")
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
@click.option("--cv", "cv_folds", default=None, type=click.IntRange(min=2),
              help="Choose the epoch count by K-fold cross-validation over the training records "
                   "(folds by record; every fold trains --epochs epochs and is scored on its "
                   "held-out records after each), then train for that many epochs and keep the "
                   "last: no single hold-out and never the test split chooses. Writes OUT/cv.json "
                   "and OUT/cv.md. Costs about K + 1 trainings.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random gain and baseline offset during training.")
@click.option("--rr-augment", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Probability that a training beat's local rhythm is set to its own RR interval "
                   "(as in runs of premature beats), so that the long rhythm must find it too.")
@click.option("--rr-scale", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Multiply training beats' RR intervals (seconds) by a random factor within "
                   "[1/(1+F), 1+F], ratios unchanged: other patients' heart rates; 0: off.")
@click.option("--time-warp", default=0.0, show_default=True, type=click.FloatRange(0, 0.5, max_open=True),
              help="Stretch training beats in time by up to this fraction about the R peak "
                   "(e.g. 0.15: QRS and T widths of other patients); 0: off.")
@click.option("--signal-dropout", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Probability that a training beat's waveform is flattened, so that its RR and "
                   "morphology context alone must answer it; 0: off.")
@click.option("--ema", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Keep an exponential moving average of the weights with this decay per step "
                   "(e.g. 0.998) and validate, select and save it; 0: off.")
@click.option("--bn-recalibrate", "bn_recalibrate", default=0, show_default=True,
              type=click.IntRange(min=0), metavar="BATCHES",
              help="After every epoch, recompute the BatchNorm statistics from this many "
                   "unaugmented training batches (precise BN, e.g. 100) instead of keeping the "
                   "running averages of the last training steps; 0: off.")
@click.option("--bn-recalibrate-augmented", "bn_recalibrate_augmented", is_flag=True,
              help="With --bn-recalibrate: recompute them from batches augmented as in training.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Torch threads (default: all cores).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for model.pt and metrics.json (and cv.json, cv.md with --cv).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the full metrics as JSON.")
def train(source, test_data, split, n_beats, window, rr_context, morph_context, model, width, exit_heads,
          context_fusion, method, eps, norm, attack_steps, attack_step_size, attack_kind, kd_alpha, kd_beta,
          kd_temperature, ima_eps_max, ima_eps_step, ima_eps_init, ima_beta, ima_bisection_steps,
          ima_criterion, vae, eta, latent_steps, attack_morph, epochs,
          batch_size, lr, class_weighting, max_class_weight, val_split, val_fraction, patience,
          cv_folds, augment, rr_augment, rr_scale, time_warp, signal_dropout, ema, bn_recalibrate,
          bn_recalibrate_augmented, seed, threads, out_dir, progress, as_json):
    """Train a multi-exit model and report every exit on the test set.

    Writes OUT/model.pt (rebuilds the model from the file alone) and OUT/metrics.json. Runs on
    several processes under torchrun (DDP, gloo backend), e.g.
    `torchrun --nproc-per-node 2 -m edgeexit train ...`.
    """
    from edgeexit.cv import run_training
    from edgeexit.data import DataSpec
    from edgeexit.train import TrainConfig

    spec = DataSpec(source=source, test_source=test_data, split=split, n_beats=n_beats,
                    seed=seed, window=window, rr_context=rr_context, morph_context=morph_context)
    config = TrainConfig(model=model, width=width, exit_heads=exit_heads,
                         context_fusion=context_fusion, method=method,
                         method_config=_method_config(method, click.get_current_context()),
                         attack_morph=attack_morph, epochs=epochs,
                         batch_size=batch_size, lr=lr, class_weighting=class_weighting,
                         max_class_weight=max_class_weight,
                         val_split=val_split, val_fraction=val_fraction, patience=patience,
                         augment=augment, rr_augment=rr_augment, rr_scale=rr_scale, time_warp=time_warp,
                         signal_dropout=signal_dropout, ema=ema, bn_recalibrate=bn_recalibrate,
                         bn_recalibrate_augmented=bn_recalibrate_augmented, seed=seed,
                         threads=threads)

    def stage(text: str) -> None:
        if not as_json:
            click.echo(text, err=True)

    result = run_training(spec, config, out_dir, progress=progress and sys.stderr.isatty(),
                          cv_folds=cv_folds, on_stage=stage)
    if result.checkpoint is None:  # a non-zero rank under torchrun: rank 0 reports
        return
    if as_json:
        _echo_json(result.metrics)
        return
    m = result.metrics
    if "cv" in m:
        click.echo(f"cross-validation ({m['cv']['source']}):")
        click.echo(m["cv"]["table"])
    click.echo(f"{m['model']['family']}: {m['params']:,} parameters, best epoch {m['best_epoch']}, "
               f"{m['elapsed_s']} s on {m['processes']} process(es)")
    click.echo(f"test set: {m['data']['test']['source']} ({m['data']['test']['beats']} beats)")
    settings = m["train_config"]["method_config"]
    click.echo(f"method: {m['train_config']['method']}"
               + (" (" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")" if settings
                  else ""))
    click.echo(_format_exits(m["exits"], "test"))
    click.echo(f"wrote {result.checkpoint} and metrics.json")


# ----------------------------------------------------------------------------------------- info
@main.command()
@click.argument("target", required=False)
@click.option("--models", "list_all", is_flag=True, help="List the registered model families.")
@click.option("--exit-heads", type=click.Choice(EXIT_HEADS), default="conv",
              show_default=True, help="Early exits to profile a family with (not a checkpoint).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(target, list_all, exit_heads, as_json):
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
    d = describe_target(target, exit_heads)
    if as_json:
        _echo_json(d)
        return
    click.echo(f"{d['name']}: family {d['model']['family']}, {d['params']:,} parameters, "
               f"input {d['input_spec']['shape']} ({', '.join(d['input_spec']['channels'])})")
    if d.get("classes"):
        click.echo(f"classes: {' '.join(d['classes'])}")
    comp = d.get("compression")
    if comp:
        pr, ft, pg = comp.get("prune") or {}, comp.get("finetune") or {}, comp.get("pruning") or {}
        click.echo(f"compressed from {comp.get('source_checkpoint')}: pruned {pr.get('ratio', 0):g} "
                   f"({pr.get('importance')}, {pr.get('scope')}), {100 * pg.get('macs_ratio', 1):.0f}%"
                   f" of the MACs; fine-tuned {ft.get('kind')} {ft.get('epochs')} epochs")
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
@click.option("--morph-context/--no-morph-context", default=False, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_inspect(source, n_beats, seed, window, rr_context, morph_context, as_json):
    """Print the size, shape, channels and class counts of SOURCE.

    SOURCE is 'synthetic', a WFDB directory (all non-paced records), or a .npz/.csv file.
    """
    from edgeexit.data import DataSpec, load_source

    spec = DataSpec(source=source, n_beats=n_beats, seed=seed, window=window, rr_context=rr_context,
                    morph_context=morph_context)
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
@click.option("--morph-context/--no-morph-context", default=False, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def data_generate(out_path, source, n_beats, seed, window, rr_context, morph_context, as_json):
    """Write a data set to an .npz file (synthetic beats, or a WFDB directory converted)."""
    from edgeexit.data import DataSpec, load_source

    if not out_path.endswith(".npz"):
        raise click.BadParameter("the output file must end in .npz", param_hint="--out")
    spec = DataSpec(source=source, n_beats=n_beats, seed=seed, window=window, rr_context=rr_context,
                    morph_context=morph_context)
    dataset = load_source(source, spec)
    dataset.save_npz(out_path)
    d = {**dataset.describe(), "written": out_path}
    if as_json:
        _echo_json(d)
    else:
        counts = " ".join(f"{k}={v}" for k, v in d["class_counts"].items())
        click.echo(f"wrote {d['beats']} beats {d['input_shape']} to {out_path}: {counts}")


# -------------------------------------------------------------------------------------- targets
@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def targets(name, as_json):
    """List the device presets, or show one (NAME: a target id or a .toml file).

    Presets are data files, targets/<id>.toml (EDGEEXIT_TARGETS points elsewhere).
    """
    from edgeexit.targets import list_targets, load_target

    found = [load_target(name)] if name else list_targets()
    if as_json:
        _echo_json([t.to_dict() for t in found] if not name else found[0].to_dict())
        return
    if name:
        click.echo(json.dumps(found[0].to_dict(), indent=2))
        return
    click.echo(f"{'id':12} {'cpu':28} {'cores':>5} {'dotprod':>7} {'format':>7} {'precision':>9} {'threads':>7}")
    for t in found:
        click.echo(f"{t.id:12} {t.cpu.model[:28]:28} {t.cpu.cores:>5} {str(t.cpu.dotprod).lower():>7} "
                   f"{t.runtime.format:>7} {t.runtime.precision:>9} {t.runtime.threads:>7}")


def _bound_options(f):
    """--confidence and --ensemble-weights, shared by export and calibrate."""
    f = click.option("--ensemble-weights", type=click.Choice(["auto", "equal"]), default="auto",
                     show_default=True,
                     help="ensemble policy: auto lets calibration weight later exits more where "
                          "an equal average would lose to the final exit; equal: the plain mean.")(f)
    return click.option("--confidence", default=0.9, show_default=True,
                        help="The accuracy loss's interval at this level (a bootstrap over "
                             "records) must stay within the margin; 0: only the pooled loss.")(f)


# --------------------------------------------------------------------------------------- export
@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--target", default="rpi4", show_default=True,
              help="Device preset id (`edgeexit targets`) or a preset .toml file.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to write (DIR.tar.gz is written beside it).")
@click.option("--formats", default="onnx,tflite", show_default=True,
              help="Comma-separated file formats: onnx, tflite.")
@click.option("--precision", type=click.Choice(["fp32", "int8", "auto"]), default=None,
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
@click.option("--policy", type=click.Choice(["max_prob", "entropy", "ensemble"]), default="max_prob",
              show_default=True, help="Exit policy whose thresholds are calibrated.")
@click.option("--margin", default=0.5, show_default=True,
              help="Allowed validation accuracy loss versus the final exit, in points.")
@_bound_options
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
@click.option("--bundle-version", type=click.IntRange(min=1), default=1, show_default=True,
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
        target=target,
        formats=_names(formats),
        precision=precision,
        calibration=recipe,
        int8_margin=int8_margin,
        timings=tuple(timings) or None,
        policy=policy,
        margin=margin,
        confidence=confidence,
        ensemble_weights=None if ensemble_weights == "equal" else "auto",
        calibration_samples=calibration_samples,
        golden_samples=golden_samples,
        monolithic=monolithic,
        exits=_parse_exits(exits),
        bundle_version=bundle_version,
    )
    result = export_bundle(checkpoint, out_dir, config, data=source,
                           progress=(lambda s: click.echo(f"... {s}", err=True)))
    r = result.report
    if as_json:
        _echo_json(r)
        return
    cal = r["policy"]["calibration"]
    click.echo(f"bundle {r['bundle']} ({r['archive']}) for {r['target']}: {r['precision']}, "
               f"{', '.join(r['formats'])}")
    click.echo(f"  exits deployed {','.join(map(str, r['exits']))} of the model's "
               f"{r['num_model_exits']} (one segment each)")
    for fmt, par in r["parity"].items():
        errs = " ".join(f"{e['max_abs_err']:.2g}" for e in par["exits"])
        agree = " ".join(f"{100 * e['top1_agreement']:.1f}" for e in par["exits"])
        click.echo(f"  {fmt:7} vs PyTorch on {par['samples']} beats: max |logit err| {errs}; "
                   f"top-1 agreement % {agree}")
    for fmt, picks in (r.get("precision_choices") or {}).items():
        click.echo(f"  {fmt:7} precision per segment: " + "; ".join(
            f"{c['precision']} (fp32 {c['fp32_us']:.1f} us / int8 {c['int8_us']:.1f} us, agreement "
            f"{100 * c['fp32_agreement']:.1f}/{100 * c['int8_agreement']:.1f}%)" for c in picks))
    click.echo(f"  {r['policy']['name']} thresholds {cal['thresholds']} on {cal['samples']} "
               f"validation beats: accuracy {_pct(cal['accuracy']).strip()}% (final exit "
               f"{_pct(cal['final_accuracy']).strip()}%), exits "
               + " ".join(f"{100 * f:.0f}%" for f in cal["exit_fractions"])
               + f", {100 * cal['cost_ratio']:.0f}% of the all-exits MACs")
    lo, hi = cal["loss_interval"]
    click.echo(f"  accuracy loss {cal['loss_points']:.2f} points, {100 * cal['confidence']:g}% "
               f"interval {lo:.2f}..{hi:.2f} ({cal['bound']})"
               + ("" if cal.get("feasible", True) else "; NO thresholds keep it within the margin"))


def _parse_exits(text):
    """``--exits 0,2,3`` -> (0, 2, 3); None -> None (all). Range and the final exit are checked
    against the model by the export."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        vals = tuple(int(p) for p in parts if p)
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated model exit indices, e.g. 0,3",
                                 param_hint="--exits") from None
    if not vals or any(v < 0 for v in vals):
        raise click.BadParameter(f"{text!r}: give comma-separated model exit indices >= 0, e.g. 0,3",
                                 param_hint="--exits")
    return vals


def _read_json_file(path, option):
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise click.BadParameter(f"not a JSON report ({e})", param_hint=option)


def _policy_args(policy, thresholds, exit_index, budget=None, costs_file=None, bundle=None):
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
        bench = None if costs_file is None else _read_json_file(costs_file, "--costs")
        manifest = load_manifest(bundle, check_hashes=False)
        args["budget"] = {"limit": limit, "unit": unit,
                          "segment_costs": budget_costs(unit, bench, manifest)}
    return args


_backend_option = click.option(
    "--backend", type=click.Choice(["auto", "onnxruntime", "litert"]), default="auto",
    show_default=True, help="Inference engine (auto: the target's preferred format if installed).")
_threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                               help="Threads (default: the target's, capped at the CPUs here).")
_policy_options = [
    click.option("--policy", type=click.Choice(["max_prob", "entropy", "ensemble", "fixed", "budget"]),
                 default=None, help="Exit policy (default: the bundle's calibrated one)."),
    click.option("--thresholds", default=None, help="Override thresholds, e.g. 0.9,0.9,0.95."),
    click.option("--exit", "exit_index", type=int, default=None, help="The exit of --policy fixed."),
    click.option("--budget", "budget", default=None, metavar="LIMIT",
                 help="The limit of --policy budget per input: latency (40us, 0.1ms: the live "
                      "clock) or energy (0.05mJ, 50uJ: predicted per-segment energy)."),
    click.option("--costs", "costs_file", default=None, type=click.Path(dir_okay=False),
                 help="--policy budget: a `bench --json` report whose per-segment latency/energy "
                      "predicts each segment's cost (default: the costs the bundle records)."),
]


def _with_policy_options(f):
    for opt in reversed(_policy_options):
        f = opt(f)
    return f


_trusted_option = click.option(
    "--trusted-keys", "trusted_keys", default=None, type=click.Path(exists=True),
    help="Accept only bundles signed by these public keys (a KEY.pub or a directory of them; "
         "default: the device config, $EDGEEXIT_CONFIG or /etc/edgeexit/device.toml).")


def _stream_options(f):
    """The options of ``run --stream`` (streaming beat classification)."""
    opts = [
        click.option("--stream", "stream", default=None, metavar="SOURCE",
                     help="Classify the beats of a live signal instead of windows: a WFDB record "
                          "(.../mitdb/100), a .csv/.txt file (one sample per line, or columns and "
                          "--channel), a raw binary file (--dtype), or - for stdin as it arrives."),
        click.option("--fs", type=float, default=None, help="[--stream] Sampling rate in Hz (not for WFDB)."),
        click.option("--units", type=click.Choice(["mV", "uV", "adc"], case_sensitive=False),
                     default="mV", show_default=True,
                     help="[--stream] Sample units; adc: (value - --adc-zero) / --adc-gain."),
        click.option("--adc-gain", type=float, default=200.0, show_default=True,
                     help="[--stream] ADC units per mV (--units adc)."),
        click.option("--adc-zero", type=float, default=0.0, show_default=True,
                     help="[--stream] ADC value of 0 mV (--units adc)."),
        click.option("--dtype", default=None,
                     help="[--stream] Raw binary samples of this type (float32, int16, ...)."),
        click.option("--channels", "n_channels", type=int, default=1, show_default=True,
                     help="[--stream] Interleaved channels per frame of a raw binary source."),
        click.option("--channel", type=int, default=None,
                     help="[--stream] Channel / CSV column to use, from 0 (WFDB default: MLII)."),
        click.option("--block-seconds", type=float, default=1.0, show_default=True,
                     help="[--stream] Signal seconds read per block."),
        click.option("--realtime", is_flag=True, help="[--stream] Pace reading to the sampling rate."),
        click.option("--summary-only", is_flag=True, help="[--stream] Print only the summary."),
        click.option("--json", "as_json", is_flag=True,
                     help="[--stream] Print the summary as a JSON line on stdout (default: text on stderr)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _run_stream(bundle, input_path, backend, threads, policy, thresholds, exit_index, budget,
                costs_file, trusted_keys, stream, fs, units, adc_gain, adc_zero, dtype, n_channels, channel, block_seconds,
                realtime, summary_only, as_json):
    """``run --stream``: one JSON line per beat (one beat late), then the summary."""
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.stream import open_source, stream_classify

    if stream is None:
        raise click.UsageError("give --input WINDOWS, or --stream SOURCE for a live signal")
    if input_path is not None:
        raise click.UsageError("--input and --stream exclude each other: give one")
    engine = Engine.from_bundle(bundle, backend=backend, threads=threads, trusted_keys=trusted_keys,
                                **_policy_args(policy, thresholds, exit_index, budget, costs_file, bundle))
    src = open_source(stream, fs=fs, units=units, dtype=dtype, channel=channel, channels=n_channels,
                      adc_gain=adc_gain, adc_zero=adc_zero, block_seconds=block_seconds)
    for ev in stream_classify(engine, src, realtime=realtime):
        if not ev.get("summary"):
            if not summary_only:
                click.echo(json.dumps(ev))
            continue
        if as_json:
            click.echo(json.dumps(ev))
            continue
        line = (f"{ev['source']}: {ev['beats']} beats in {ev['signal_s']:.1f} s of signal, "
                f"{ev['realtime_factor']}x real time; answered {ev['answered']}")
        if "detection" in ev:
            d, c = ev["detection"], ev["classification"]
            line += (f"; detection Se {100 * d['sensitivity']:.2f}% +P {100 * d['ppv']:.2f}% "
                     f"({d['tolerance_s'] * 1000:.0f} ms); accuracy vs annotations "
                     f"{100 * c['accuracy']:.2f}% on {c['beats']} beats")
        if ev["filled_samples"]:
            line += (f"; {ev['filled_samples']} non-finite samples held at the last finite value, "
                     f"beats over them: {ev['beats_over_held_samples']} (lines with held_samples)")
        if ev["refused"]:
            line += f"; beats refused: {ev['refused']} (lines with error)"
        click.echo(line, err=not summary_only)


# ------------------------------------------------------------------------------------------ run
@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--input", "input_path", default=None,
              help="Windows to classify: .npy ([N,C,L] or [C,L]), .npz (x or inputs), .csv "
                   "(one window per line, C*L values), or - for CSV lines on stdin.")
@_backend_option
@_threads_option
@_with_policy_options
@click.option("--batch", is_flag=True,
              help="Classify all windows as one batch (each segment runs only on undecided ones).")
@click.option("--fail-fast", is_flag=True,
              help="Stop at the first window that cannot be answered (default: answer all others).")
@_trusted_option
@_stream_options
def run(bundle, input_path, backend, threads, policy, thresholds, exit_index, budget, costs_file,
        batch, fail_fast, trusted_keys, **stream_options):
    """Classify windows with a bundle; print one JSON line per window.

    Each line: label, exit taken, class probabilities, and the microseconds of every segment
    that ran (with --batch: the batch's per-segment totals are printed last, to stderr). A window
    the bundle cannot answer (NaN/Inf, far outside the training range, a CSV line that is not a
    window) gets its own line with its index and the error; every other window is answered, and
    the exit status is 1 when any window was refused (--fail-fast: stop at the first).
    """
    if stream_options["stream"] is not None or input_path is None:  # --stream SOURCE
        return _run_stream(bundle, input_path, backend, threads, policy, thresholds, exit_index,
                           budget, costs_file, trusted_keys, **stream_options)
    import numpy as np

    from edgeexit.runtime.engine import Engine, InputError
    from edgeexit.runtime.io import read_windows

    engine = Engine.from_bundle(bundle, backend=backend, threads=threads, trusted_keys=trusted_keys,
                                **_policy_args(policy, thresholds, exit_index, budget, costs_file, bundle))
    problems: dict[int, str] = {}
    x = read_windows(input_path, engine.input_shape, errors=problems)
    answers: dict[int, dict] = {}
    if batch:  # one bad window would refuse the whole batch: set the bad ones aside first
        for i in range(len(x)):
            if i not in problems:
                why = engine.input_problem(x[i])
                if why is not None:
                    problems[i] = why
        good = np.array([i for i in range(len(x)) if i not in problems], np.int64)
        if fail_fast and problems:
            good = good[good < min(problems)]
        if len(good):
            r = engine.predict_batch(x[good])
            for j, i in enumerate(good):
                answers[int(i)] = {"label": engine.classes[int(r.labels[j])],
                                   "label_index": int(r.labels[j]), "exit": int(r.exit_index[j]),
                                   "probs": [round(float(p), 6) for p in r.probs[j]]}
    refused = []
    for i in range(len(x)):
        if i not in problems and not batch:
            try:
                answer = engine.predict(x[i]).to_dict()
            except InputError as e:
                problems[i] = str(e)
        if i in problems:
            refused.append(i)
            click.echo(json.dumps({"index": i, "error": problems[i]}))
            if fail_fast:
                break
            continue
        if batch:
            answer = answers[i]
        try:
            line = json.dumps({"index": i, **answer}, allow_nan=False)
        except ValueError:  # a non-finite probability: never print invalid JSON
            refused.append(i)
            line = json.dumps({"index": i, "error": "the model's answer is not finite"})
        click.echo(line)
    if batch and len(answers):
        click.echo(json.dumps({"segment_us": [round(t / 1e3, 1) for t in r.segment_ns],
                               "segment_samples": list(r.segment_samples)}), err=True)
    if refused:
        shown = ", ".join(map(str, refused[:10])) + (" ..." if len(refused) > 10 else "")
        raise click.ClickException(
            f"{len(refused)} of {len(x)} windows refused (index {shown})"
            + ("; stopped at the first (--fail-fast)" if fail_fast else "; every other window was answered"))


# --------------------------------------------------------------------------------------- verify
@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--backend", type=click.Choice(["all", "auto", "onnxruntime", "litert"]), default="all",
              show_default=True, help="all: every installed backend for the bundle's formats.")
@_threads_option
@_trusted_option
@click.option("--strict", is_flag=True,
              help="Fail (status 3) when a format could not be replayed: its backend is not installed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(bundle, backend, threads, trusted_keys, strict, as_json):
    """Check a bundle's hashes and file shapes and replay golden.npz; exit status 3 on any mismatch.

    Proves, on the device, that the files compute what the PyTorch model computed at export.
    BUNDLE is the directory or its .tar.gz. Every segment file's input and output shapes are
    checked against the manifest and the next file (shapes[BACKEND]); the report is printed
    whatever fails. Formats whose backend is not installed here are listed as not checked
    (--strict: a failure).
    """
    from edgeexit.errors import ExitStatus
    from edgeexit.runtime.verify import verify_bundle

    report = verify_bundle(bundle, backend=backend, threads=threads, strict=strict,
                           trusted_keys=trusted_keys)
    if as_json:
        _echo_json(report.to_dict())
    else:
        for c in report.checks:
            detail = {k: v for k, v in c.items() if k not in ("check", "ok")}
            mark = "FAIL" if not c["ok"] else "SKIP" if "skipped" in c else "ok  "
            click.echo(f"{mark} {c['check']:24} " + " ".join(f"{k}={v}" for k, v in detail.items()))
        note = (f" (not checked here: {', '.join(report.unchecked)}; --strict fails)"
                if report.unchecked and report.ok else "")
        click.echo(f"{bundle}: {'verified' + note if report.ok else 'MISMATCH'}")
    if not report.ok:
        sys.exit(ExitStatus.MISMATCH)


# ---------------------------------------------------------------------------------------- bench
@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--data", "source", default=None,
              help="Labelled windows: 'synthetic', a WFDB directory, .npz/.csv data set, or .npy "
                   "(no labels). Default: the test side of the data recorded in the bundle.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Side of a synthetic/WFDB source to use (WFDB: DS2 / DS1).")
@click.option("--limit", type=int, default=None,
              help="Benchmark a seeded random sample of this many windows (default: all).")
@click.option("--warmup", default=50, show_default=True, help="Untimed runs of every path first.")
@_backend_option
@_threads_option
@_with_policy_options
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
@_trusted_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench(bundle, source, split, limit, warmup, backend, threads, policy, thresholds, exit_index,
          budget, costs_file, meter, energy_seconds, meter_rate, power_target, report_dir, progress,
          trusted_keys, as_json):
    """Accuracy, per-segment latency (p50/p95/p99), exit histogram, energy, early-exit savings.

    Batch 1. For every window the exit policy, the all-exits segmented path and the monolithic
    model run back to back, so their ratios are measured side by side in one run. Then each
    path runs alone under the energy meter (--energy-seconds each): energy per inference and per
    segment, gross and above idle, labelled measured or estimated.
    """
    from edgeexit.data.bench import bench_data
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.profile import bench_engine

    engine = Engine.from_bundle(bundle, backend=backend, threads=threads, load_monolithic=True,
                                trusted_keys=trusted_keys,
                                **_policy_args(policy, thresholds, exit_index, budget, costs_file, bundle))
    energy_meter, why = _open_meter(meter, engine, power_target, meter_rate)
    x, y, described = bench_data(engine, source, split, limit)
    bars = {}
    show = progress and sys.stderr.isatty()

    def ticker(name, unit):
        def tick(done, total):
            if not show:
                return
            if name not in bars:
                from tqdm import tqdm

                bars[name] = tqdm(total=total, desc=name, unit=unit, leave=False)
            bars[name].update(done - bars[name].n)
        return tick

    try:
        report = bench_engine(engine, x, y, warmup=warmup, progress=ticker("bench", "beat"),
                              meter=energy_meter, energy_seconds=energy_seconds,
                              energy_progress=ticker("energy", "window")).to_dict()
    finally:
        for b in bars.values():
            b.close()
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
    if as_json:
        _echo_json(report)
        return
    _print_bench(report)
    if written:
        click.echo(f"report: {written['dir']}/report.md ({len(written['files'])} files)")


def _open_meter(spec, engine, power_target, rate_hz=None):
    """(meter or None, one line saying which meter and why) for ``--meter``; the estimate's
    power model is the bundle's target's, or ``--power-target``'s."""
    from edgeexit.runtime.energy import open_meter

    power = engine.manifest.target.power.to_dict()
    if power_target is not None:
        from edgeexit.targets import load_target

        power = load_target(power_target).power.to_dict()
    return open_meter(spec, power=power, threads=engine.threads, rate_hz=rate_hz)


def _print_bench(r):
    lat = r["latency_us"]
    click.echo(f"{r['samples']} windows, backend {r['backend']}, {r['threads']} thread(s), "
               f"{r['precision']}, policy {r['policy']}")
    if "accuracy" in r:
        a = r["accuracy"]
        click.echo(f"accuracy: policy {_pct(a['policy']).strip()}%, final exit "
                   f"{_pct(a['final_exit']).strip()}% (loss {a['policy_loss_points']} points), "
                   f"monolithic {_pct(a['monolithic']).strip()}%, exits "
                   + " ".join(f"{100 * v:.1f}" for v in a["exits"]))
    click.echo(f"{'latency us':16} {'mean':>9} {'p50':>9} {'p95':>9} {'p99':>9}")
    rows = [(f"segment {k}", s) for k, s in enumerate(lat["segments"])]
    rows += [("policy", lat["policy"]), ("all exits", lat["all_exits"]), ("monolithic", lat["monolithic"])]
    for name, s in rows:
        click.echo(f"{name:16} {s['mean']:>9.1f} {s['p50']:>9.1f} {s['p95']:>9.1f} {s['p99']:>9.1f}")
    ids = r.get("model_exits") or list(range(len(r["exit_histogram"])))
    note = "" if ids == list(range(len(ids))) else " (segments answer model exits " + \
        ",".join(map(str, ids)) + ")"
    click.echo("exits taken: " + " ".join(f"{k}:{n} ({100 * f:.1f}%)" for k, (n, f)
                                          in enumerate(zip(r["exit_histogram"], r["exit_fractions"])))
               + note)
    ra = r["ratios"]
    click.echo(f"ratios (mean latency): all exits / monolithic {ra['all_exits_vs_monolithic']:.3f}, "
               f"policy / monolithic {ra['policy_vs_monolithic']:.3f}")
    e = r.get("energy")
    if e and "error" in e:
        click.echo(f"energy: NOT measured: {e['error']}")
    elif e:
        pe, er = e["per_inference_mj"], e["ratios"]
        click.echo(f"energy meter: {e.get('chosen') or e['meter']}")
        click.echo(f"energy per inference, mJ, {e['label']}; idle {e['idle_w']:.2f} W ({e['idle']}):")
        for name in ("policy", "all_exits", "monolithic"):
            click.echo(f"  {name.replace('_', ' '):12} gross {pe[name]['gross']:.5f}  above idle "
                       f"{pe[name]['above_idle']:.5f}")
        click.echo("  per segment above idle " + " ".join(f"{v:.5f}" for v in e["per_segment_mj"]["above_idle"])
                   + f"; ratio policy / monolithic {er['policy_vs_monolithic']} above idle, "
                   f"{er['policy_vs_monolithic_gross']} gross")


# --------------------------------------------------------------------------------------- report
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

    from edgeexit.report import compare_results, load_result, write_bench_report

    if names and len(names) != len(results):
        raise click.UsageError(f"{len(names)} --name for {len(results)} results: give one each")
    loaded = []
    for i, path in enumerate(results):
        p = Path(path)
        label = names[i] if names else (p.name if p.is_dir() else p.stem)
        loaded.append((label, load_result(path)))
    out = compare_results(loaded, out_dir)
    if len(loaded) == 1 and out_dir is not None:
        out["files"] += write_bench_report(loaded[0][1], out_dir)["files"]
    if as_json:
        _echo_json(out)
        return
    click.echo(out["markdown"], nl=False)
    if out["files"]:
        click.echo(f"wrote {len(out['files'])} files into {out_dir}")


# ------------------------------------------------------------------------------------ calibrate
def _calibration_data(manifest, source, records):
    import dataclasses
    import os

    from edgeexit.data import DataSpec, load_source, load_split
    from edgeexit.errors import DataError

    recorded = manifest.provenance.data
    spec = DataSpec.from_dict(recorded) if recorded else DataSpec()
    if source == "synthetic":
        return load_split(dataclasses.replace(spec, source="synthetic", test_source=None), "calibration")
    if os.path.isdir(source):
        from edgeexit.data.mitbih import load_mitbih

        if records is None and recorded and os.path.realpath(recorded.get("source", "")) == os.path.realpath(source):
            raise DataError(
                f"{source} is the data this model was trained and tested on: calibrating on all of "
                "it would use training and test records; give --records with records training "
                "never saw (e.g. the validation records listed in the bundle's provenance)"
            )
        return load_mitbih(source, records, window=spec.window, rr_context=spec.rr_context,
                           morph_context=spec.morph_context)
    if records is not None:
        raise DataError("--records applies to a WFDB directory only")
    return load_source(source)


@main.command()
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
@click.option("--policy", type=click.Choice(["max_prob", "entropy", "ensemble"]), default=None,
              help="Policy to calibrate (default: the bundle's).")
@click.option("--margin", default=0.5, show_default=True,
              help="Allowed accuracy loss versus the final exit, in points.")
@_bound_options
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
@_backend_option
@click.option("--dry-run", is_flag=True, help="Report the thresholds, write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def calibrate(bundle, source, cross_fit, checkpoint, threads, records, policy, margin, confidence,
              ensemble_weights, bench_file, cost, cost_budget, pareto_plot, backend, dry_run, as_json):
    """Recalibrate a bundle's exit thresholds on your own labelled data and write them into it.

    Runs the bundle's own files on the beats, chooses the cheapest thresholds whose accuracy
    loss against the final exit stays within --margin at the upper end of its --confidence
    interval over records, and rewrites manifest.json (and BUNDLE.tar.gz) atomically.
    """
    import numpy as np

    from edgeexit.calibrate import calibrate_bundle
    from edgeexit.errors import DataError
    from edgeexit.runtime.manifest import load_manifest

    if (source is None) == (cross_fit is None):
        raise click.UsageError("give either --data or --cross-fit K")
    # checked before any data is read or model trained; calibrate_bundle loads the engine
    manifest = load_manifest(bundle)
    x = probs = extra = None
    if cross_fit is None:
        recs = None if records is None else list(_names(records))
        ds = _calibration_data(manifest, source, recs)
        if tuple(ds.classes) != tuple(manifest.classes):
            raise DataError(f"data classes {list(ds.classes)} differ from the bundle's "
                            f"{list(manifest.classes)}")
        x, y, groups, described = ds.x.astype(np.float32), ds.y, ds.groups, ds.source
    else:
        from edgeexit.crossfit import cross_fit as run_cross_fit

        ckpt = checkpoint or manifest.provenance.checkpoint
        if not ckpt:
            raise click.UsageError("give --checkpoint (the bundle records none)")
        cf = run_cross_fit(ckpt, cross_fit, threads=threads,
                           progress=lambda s: click.echo(f"... {s}", err=True))
        y, groups, described = cf.y, cf.groups, cf.source
        probs = [cf.probs[k] for k in manifest.exits]  # the exits the bundle deploys
        extra = {"cross_fit": cf.describe(), "checkpoint": str(ckpt)}
    bench = None if not bench_file else _read_json_file(bench_file, "--bench")
    if cost == "energy" and bench is None:
        raise click.UsageError("--cost energy needs --bench BENCH.json (from `edgeexit bench BUNDLE "
                               "--meter auto --json`)")
    r = calibrate_bundle(bundle, x, y, groups, policy=policy, probs=probs, provenance=extra,
                         margin=margin, confidence=confidence, source=described, backend=backend,
                         bench=bench, dry_run=dry_run, cost=cost, budget=cost_budget,
                         pareto_plot=pareto_plot,
                         weights=None if ensemble_weights == "equal" else "auto")
    if as_json:
        _echo_json(r)
        return
    c = r["policy"]["calibration"]
    lo, hi = c["loss_interval"]
    click.echo(f"{r['policy']['name']} thresholds {r['policy']['thresholds']} on {c['samples']} beats "
               f"of {c['records'] or 'unknown'} records ({described}), costs in {c['cost_unit']}")
    click.echo(f"  accuracy {_pct(c['accuracy']).strip()}% (final exit {_pct(c['final_accuracy']).strip()}%), "
               f"loss {c['loss_points']:.2f} points, {100 * c['confidence']:g}% interval "
               f"{lo:.2f}..{hi:.2f} ({c['bound']})")
    click.echo("  exits " + " ".join(f"{100 * f:.1f}%" for f in c["exit_fractions"])
               + f", expected cost {c['expected_cost']:.4g} ({100 * c['cost_ratio']:.0f}% of all exits)"
               + ("" if c.get("budget") is None else
                  f", budget {c['budget']:g}: {'met' if c['feasible'] else 'NOT met'}"))
    click.echo("  accuracy/cost curve (calibration data): " + ", ".join(
        f"{100 * p['accuracy']:.2f}% at {100 * p['cost_ratio']:.0f}%" for p in c["pareto"])
        + (f" (plot: {r['pareto_plot']})" if r.get("pareto_plot") else ""))
    ch = r.get("exit_choice")
    if ch:
        b = ch["best"]
        click.echo(f"  exits worth their call (estimated from the bench's latencies): "
                   f"{','.join(map(str, b['exits']))}, {b['expected_us']:.1f} us expected "
                   f"(monolithic {ch['monolithic_us']:.1f} us; re-export with --exits to use it)")
    click.echo(f"{'not written (--dry-run)' if dry_run else 'wrote ' + bundle + '/manifest.json'}")
    if r.get("signature_removed"):
        click.echo(f"its signature covered the old manifest and was removed: sign it again "
                   f"(edgeexit sign {bundle} --key KEY)")


# ----------------------------------------------------------------------------------- quickstart
@main.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the model, the bundle and the summary (new, or a previous "
                   "quickstart's).")
@click.option("--model", default="resnet1d", show_default=True,
              help="Model family (resnet1d, or mobilenet1d for the smallest devices).")
@click.option("--width", type=float, default=None,
              help="Channel-width multiplier of the trained model, before pruning (default: 2 "
                   "for resnet1d, 4 for mobilenet1d, 1 otherwise: wide enough that the pruned "
                   "model's compute outweighs the fixed cost of a segment call).")
@click.option("--exit-heads", type=click.Choice(EXIT_HEADS), default="conv", show_default=True,
              help="Early exits: conv (more accurate) or linear (cheapest at run time).")
@click.option("--exits", "exits", default="auto", show_default=True, metavar="auto|all|K,K,...",
              help="Model exits to deploy: auto keeps the exits worth their call by the latencies "
                   "measured while calibrating (exporting again with them), all keeps every exit, "
                   "or a list such as 0,3 (see `edgeexit export --exits`).")
@click.option("--epochs", default=12, show_default=True)
@click.option("--prune", default=0.5, show_default=True,
              help="Fraction of channels pruned after training, then fine-tuned (0: deploy the "
                   "trained model as is).")
@click.option("--finetune-epochs", default=8, show_default=True,
              help="Fine-tuning epochs of the pruned model.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Training threads (default: all cores).")
@click.option("--target", default="rpi4", show_default=True, help="Device preset of the bundle.")
@click.option("--margin", default=0.5, show_default=True,
              help="Allowed accuracy loss of the early-exit policy, in points.")
@_backend_option
@click.option("--meter", default="auto", show_default=True, metavar="METER",
              help="The bench's energy meter (see `edgeexit bench --help`); none: no energy phase.")
@click.option("--evaluate/--no-evaluate", "run_eval", default=True, show_default=True,
              help="End with a short robustness check of the bundle (policy-aware PGD at 0.1 mV "
                   "and muscle noise at 6 dB, through the runtime).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (tables on stderr).")
def quickstart(out_dir, model, width, exit_heads, exits, epochs, prune, finetune_epochs, seed,
               threads, target, margin, backend, meter, run_eval, as_json):
    """Train, export, verify, calibrate and benchmark a multi-exit model in one command.

    On the built-in synthetic ECG: trains a small model, prunes and fine-tunes it (shown next to
    the original), exports it for TARGET, verifies the
    bundle, recalibrates its exit thresholds on new simulated patients against measured segment
    latency, benchmarks it on the test patients, checks its robustness (one attack, one noise
    level; `edgeexit evaluate` runs the full check), and writes OUT/summary.json,
    OUT/summary.md and the bench's report with plots (OUT/report/report.md).
    """
    from edgeexit.quickstart import QuickstartConfig, run_quickstart

    config = QuickstartConfig(model=model, width=width, exit_heads=exit_heads,
                              exits="auto" if exits == "auto" else
                              None if exits == "all" else _parse_exits(exits),
                              epochs=epochs, prune=prune, finetune_epochs=finetune_epochs,
                              seed=seed, threads=threads, target=target,
                              margin=margin, bench_backend=backend, evaluate=run_eval, meter=meter)

    def show(name, r):
        echo = (lambda s: click.echo(s, err=True)) if as_json else click.echo
        if name == "train":
            echo(f"[train] {r['model']} width {r['width']:g}, {r['params']:,} parameters, "
                 f"best epoch {r['best_epoch']}, {r['elapsed_s']} s")
            echo(f"  {'exit':>4} {'MACs':>10} {'test acc%':>9} {'mF1':>6}")
            for e in r["exits"]:
                echo(f"  {e['index']:>4} {e['cumulative_macs']:>10,} {_pct(e['accuracy']):>9} "
                     f"{e['macro_f1']:6.3f}")
        elif name == "compress":
            echo(f"[compress] pruned {r['prune']:g} of the channels, fine-tuned "
                 f"{r['finetune_epochs']} epochs, {r['elapsed_s']} s")
            echo(f"  {'model':10} {'params':>8} {'MACs':>10} {'test acc%':>9} {'mF1':>6} "
                 f"{'us/beat':>8}  (one graph, {r['latency_backend']}, batch 1, timed alternately)")
            for i, which in enumerate(("original", "compressed")):
                acc, f1 = r["accuracy"][i], r["macro_f1"][i]
                echo(f"  {which:10} {r['params'][i]:>8,} {r['macs'][i]:>10,} "
                     f"{'-' if acc is None else _pct(acc):>9} "
                     f"{'-' if f1 is None else format(f1, '6.3f'):>6} {r['latency_us'][i]:8.1f}")
        elif name == "export":
            echo(f"[export] {r['bundle']} for {r['target']}, {r['precision']}, "
                 f"{', '.join(r['formats'])}, {r['elapsed_s']} s")
            for fmt, p in r["parity"].items():
                echo(f"  {fmt:7} max |logit err| " + " ".join(f"{v:.2g}" for v in p["max_abs_err"]))
        elif name == "verify":
            echo(f"[verify] {'verified' if r['ok'] else 'MISMATCH'}: {', '.join(r['checks'])}")
        elif name == "calibrate":
            lo, hi = r["loss_interval"]
            echo(f"[calibrate] {r['policy']} on {r['beats']} beats of {r['records']} new patients, "
                 f"{r['elapsed_s']} s")
            echo(f"  thresholds {r['thresholds']}, exits "
                 + " ".join(f"{100 * f:.1f}%" for f in r["exit_fractions"])
                 + f", loss {r['loss_points']:.2f} points ({100 * r['confidence']:g}% interval "
                   f"{lo:.2f}..{hi:.2f})")
            ch = r.get("exit_choice")
            if ch:
                echo(f"  exits worth their call (estimated from measured latency): "
                     f"{','.join(map(str, ch['best_exits']))} at {ch['best_expected_us']:.1f} us "
                     f"(deployed {','.join(map(str, r['exits']))}; monolithic "
                     f"{ch['monolithic_us']:.1f} us)")
        elif name == "evaluate":
            echo(f"[evaluate] {r['windows']} test windows through the runtime, {r['policy']}, "
                 f"{r['elapsed_s']} s (the full check: {r['command']})")
            echo(f"  {'input':26} {'accuracy':>9} {'mF1':>6} {'latency us':>10}  exits taken")
            for row in r["rows"]:
                echo(f"  {row['input']:26} {_pct(row['accuracy']):>9} {row['macro_f1']:6.3f} "
                     f"{row['latency_us']:10.0f}  "
                     + " ".join(f"{100 * f:.0f}%" for f in row["exit_histogram"]))
        elif name == "bench":
            a, lat, ra = r.get("accuracy", {}), r["latency_us"], r["ratios"]
            echo(f"[bench] {r['samples']} test beats (other patients), {r['backend']}, batch 1, "
                 f"{r['elapsed_s']} s")
            echo(f"  {'path':12} {'mean us':>8} {'accuracy':>9} {'/ mono':>7}")
            echo(f"  {'policy':12} {lat['policy']['mean']:8.1f} {_pct(a['policy']):>9} "
                 f"{ra['policy_vs_monolithic']:7.3f}")
            echo(f"  {'all exits':12} {lat['all_exits']['mean']:8.1f} {_pct(a['final_exit']):>9} "
                 f"{ra['all_exits_vs_monolithic']:7.3f}")
            echo(f"  {'monolithic':12} {lat['monolithic']['mean']:8.1f} {_pct(a['monolithic']):>9} "
                 f"{1:7.3f}")
            echo("  exits taken " + " ".join(f"{100 * f:.1f}%" for f in r["exit_fractions"])
                 + f"; policy loss {a['policy_loss_points']} points")
            en = r.get("energy")
            if en and "error" not in en:
                pe = en["per_inference_mj"]
                echo(f"  energy per inference above idle: policy {pe['policy']['above_idle']:.5f} mJ, "
                     f"monolithic {pe['monolithic']['above_idle']:.5f} mJ "
                     f"({en['ratios']['policy_vs_monolithic']}x); {en['chosen']}")
            elif en:
                echo(f"  energy: NOT measured: {en['error']}")
            if r.get("report"):
                echo(f"  report with plots: {r['report']['dir']}/report.md")

    summary = run_quickstart(out_dir, config, on_stage=show, progress=sys.stderr.isatty())
    if as_json:
        _echo_json(summary)
        return
    click.echo(f"wrote {summary['out']}/summary.json and summary.md ({summary['elapsed_s']} s)")


# ------------------------------------------------------------------------------------- evaluate
def _floats(text):
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


_ATTACK_NAMES = ("max_avg", "policy", "universal", "square", "slowdown", "universal_slowdown",
                 "onmanifold")


@main.command()
@click.argument("target", type=click.Path(exists=True))
@click.option("--data", "source", default=None,
              help="Test data: 'synthetic', a WFDB directory or a file (default: the test side of "
                   "the data the checkpoint records). Universal perturbations fit on its training side.")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="A bundle's source model (default: the one its manifest names; the sha256 must "
                   "match).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for report.json, report.md and the PNG plots.")
@click.option("--eps", default="0.05,0.1,0.2", show_default=True,
              help="Attack budgets in mV (comma-separated).")
@click.option("--sanity-eps", default=2.0, show_default=True,
              help="A large budget (mV) at which the final exit's accuracy under PGD must fall "
                   "toward 0 (else: gradient masking); 0 skips the check.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True,
              help="linf: per time step; l2: over the whole window (mV).")
@click.option("--attacks", default=",".join(_ATTACK_NAMES), show_default=True,
              help="Which attacks (square and the cost figures need a bundle; onmanifold needs "
                   "--vae, and is skipped without it when the list is left at its default).")
@click.option("--steps", default=20, show_default=True, help="PGD steps (also the latent attack's).")
@click.option("--vae", default=None, type=click.Path(dir_okay=False),
              help="VAE of the model's data (the vae.pt of `edgeexit compress`) for the on-manifold "
                   "attack: PGD on its latent code, scored on the windows whose latent label it keeps.")
@click.option("--eta", default=0.5, show_default=True,
              help="The on-manifold attack's latent Linf budget (latent units, not mV).")
@click.option("--noise", default="ma", show_default=True,
              help="Noise kinds: bw (baseline wander), ma (muscle), em (electrode motion); '' none.")
@click.option("--snr", default="6,0", show_default=True, help="Noise SNRs in dB (nst's definition).")
@click.option("--noise-dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="WFDB noise records bw/ma/em (MIT-BIH Noise Stress Test format) instead of "
                   "synthetic noise.")
@click.option("--limit", default=1000, show_default=True,
              help="Test windows attacked (a class-stratified sample; 0: all).")
@click.option("--square-queries", default=300, show_default=True,
              help="Queries per window of the black-box Square attack.")
@click.option("--backend", default="auto", show_default=True, help="Runtime backend for a bundle.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Torch and runtime threads.")
@click.option("--seed", default=0, show_default=True)
@click.option("--morph", type=click.Choice(["follows", "held"]), default="follows",
              show_default=True,
              help="With morphology context channels: follows = recomputed from every attacked "
                   "or noisy waveform, as the device does; held = kept at their clean values "
                   "(a threat model that gives them away; only to compare).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def evaluate(target, source, checkpoint, out_dir, eps, sanity_eps, norm, attacks, steps, vae, eta,
             noise, snr, noise_dir, limit, square_queries, backend, threads, seed, morph, progress,
             as_json):
    """Attack a checkpoint or a deployed bundle and report robustness.

    For a checkpoint: white-box attacks (max-average PGD, policy-aware PGD on the ensemble of all
    exits, universal perturbations, DeepSloth slowdown, and with --vae the on-manifold latent
    attack). For a bundle: the same inputs crafted on
    its source model, run through the runtime with the deployed exit policy, plus the black-box
    Square attack and noise through the runtime; exit histograms, MACs and latency clean vs
    attacked. Writes OUT/report.json, OUT/report.md, OUT/robustness.png and OUT/exits.png.
    """
    from edgeexit.robust.evaluate import EvalConfig, format_markdown
    from edgeexit.robust.evaluate import evaluate as run_evaluate

    config = EvalConfig(eps=_floats(eps), sanity_eps=sanity_eps or None, norm=norm,
                        attacks=_names(attacks), steps=steps, vae=vae, eta=eta,
                        noise=_names(noise),
                        snr_db=_floats(snr), noise_dir=noise_dir, limit=limit or None,
                        square_queries=square_queries, backend=backend, threads=threads,
                        seed=seed, morph_follows=morph == "follows")
    bar = None

    def show(what, done, total):
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="evaluate", unit="step", leave=False)
        bar.set_postfix_str(what)
        bar.update(done - bar.n)

    try:
        result = run_evaluate(target, data=source, checkpoint=checkpoint, config=config,
                              out_dir=out_dir,
                              progress=show if progress and sys.stderr.isatty() else None)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        _echo_json(result.report)
        return
    click.echo(format_markdown(result.report))
    click.echo("wrote " + ", ".join(str(f) for f in result.files))


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the compressed model.pt, metrics.json, vae.pt, report.json, "
                   "report.md and both models' evaluate reports.")
@click.option("--prune", "ratio", default=0.5, show_default=True,
              help="Fraction of channels removed, in [0, 1) (0: fine-tune only).")
@click.option("--stage-ratios", default=None,
              help="One pruning ratio per stage instead of --prune, e.g. 0,0.5,0.75,0.75.")
@click.option("--scope", type=click.Choice(["per-stage", "global"]), default="per-stage",
              show_default=True,
              help="per-stage: every layer loses the ratio; global: channels ranked across layers.")
@click.option("--importance", type=click.Choice(["magnitude", "bn-scale", "taylor"]),
              default="magnitude", show_default=True, help="Which channels go first.")
@click.option("--steps", "prune_steps", default=1, show_default=True,
              help="Iterative pruning in this many steps, fine-tuning --step-epochs in between.")
@click.option("--step-epochs", default=1, show_default=True,
              help="Fine-tuning epochs between pruning steps.")
@click.option("--finetune", "kind", type=click.Choice(["none", "standard", "adv", "onmanifold"]),
              default="standard", show_default=True,
              help="standard: cross-entropy; adv: RDI-Nets PGD training; onmanifold: PGD plus "
                   "on-manifold (VAE latent) adversarial examples.")
@click.option("--epochs", default=8, show_default=True, help="Fine-tuning epochs.")
@click.option("--lr", default=None, type=float,
              help="Fine-tuning learning rate (default: the one training used).")
@click.option("--eps", default=0.1, show_default=True,
              help="adv/onmanifold: PGD budget in mV (Linf, signal channels).")
@click.option("--attack-steps", default=5, show_default=True, help="PGD steps per training batch.")
@click.option("--eta", default=None, type=float,
              help="onmanifold: latent budget (default: the method's).")
@click.option("--vae", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A saved VAE (a vae.pt from an earlier compress) instead of training one.")
@click.option("--data", "source", default=None,
              help="Data (default: the data the checkpoint records).")
@click.option("--train-limit", default=0, show_default=True,
              help="Training beats used (a class-stratified sample; 0: all).")
@click.option("--eval-eps", default="0.1,0.2", show_default=True,
              help="Max-average PGD budgets of the report, mV.")
@click.option("--eval-limit", default=1000, show_default=True,
              help="Test windows measured (a class-stratified sample; 0: all).")
@click.option("--vae-epochs", default=None, type=int,
              help="Epochs of the VAE trained here (default: the VAE's own).")
@click.option("--formats", default="onnx,tflite", show_default=True,
              help="Formats exported for the report's file sizes and latency.")
@click.option("--no-onmanifold-eval", is_flag=True,
              help="Leave the on-manifold attack out of the report (no VAE is trained then, "
                   "unless --finetune onmanifold needs one).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Torch and runtime threads.")
@click.option("--seed", default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Stage lines and progress bars on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def compress(checkpoint, out_dir, ratio, stage_ratios, scope, importance, prune_steps, step_epochs,
             kind, epochs, lr, eps, attack_steps, eta, vae, source, train_limit, eval_eps,
             eval_limit, vae_epochs, formats, no_onmanifold_eval, threads, seed, progress,
             as_json):
    """Prune a checkpoint (channels really removed), fine-tune it, and report before vs after.

    Writes OUT/model.pt (it loads from the file alone and exports like any checkpoint),
    OUT/report.json and OUT/report.md: parameters, MACs, exported file sizes, batch-1 latency,
    clean accuracy and macro-F1, and accuracy under max-average PGD, the on-manifold attack and
    muscle noise, for the original and the compressed model side by side.
    """
    from edgeexit.compress.finetune import FinetuneConfig
    from edgeexit.compress.prune import PruneConfig
    from edgeexit.compress.run import CompressConfig, format_markdown
    from edgeexit.compress.run import compress as run_compress

    config = CompressConfig(
        prune=PruneConfig(ratio=ratio, scope=scope, importance=importance, steps=prune_steps,
                          stage_ratios=_floats(stage_ratios) if stage_ratios else None),
        finetune=FinetuneConfig(kind, epochs=epochs, lr=lr, eps=eps, attack_steps=attack_steps,
                                eta=eta, seed=seed, threads=threads),
        step_epochs=step_epochs, train_limit=train_limit or None, eval_eps=_floats(eval_eps),
        eval_limit=eval_limit or None, onmanifold=not no_onmanifold_eval, seed=seed,
        threads=threads, vae_epochs=vae_epochs, formats=_names(formats))
    say = (lambda stage: click.echo(f"... {stage}", err=True)) if progress else None
    result = run_compress(checkpoint, out_dir, config, data=source, vae=vae, progress=say,
                          bars=progress and sys.stderr.isatty())
    if as_json:
        _echo_json(result.report)
        return
    click.echo(format_markdown(result.report))
    click.echo("wrote " + ", ".join(str(f) for f in (result.checkpoint, *result.files)))


# ------------------------------------------------------------------- keygen / sign / install
@main.command()
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Private key file to write (0600); the public key goes to OUT.pub.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keygen(out_path, as_json):
    """Make an ed25519 signing key pair for `edgeexit sign` (refuses to overwrite).

    Keep the private key on the host; copy OUT.pub into the device's trusted-keys directory.
    """
    from edgeexit.runtime.signing import keygen as make_key

    priv, pub, fp = make_key(out_path)
    if as_json:
        _echo_json({"private_key": str(priv), "public_key": str(pub), "fingerprint": fp})
        return
    click.echo(f"wrote {priv} (private, keep it secret) and {pub} (public), fingerprint {fp}")


@main.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--key", required=True, type=click.Path(dir_okay=False),
              help="Private key written by `edgeexit keygen`.")
@click.option("--bundle-version", type=click.IntRange(min=1), default=None,
              help="Set the manifest's bundle_version before signing (a device installs only "
                   "newer versions).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def sign(bundle, key, bundle_version, as_json):
    """Sign a bundle directory: write manifest.sig (ed25519 over manifest.json's exact bytes).

    The manifest lists every file with its sha256 and size (sizes are added if missing), so the
    signature covers the whole bundle. BUNDLE.tar.gz beside it is packed again.
    """
    from edgeexit.runtime.signing import sign_bundle

    r = sign_bundle(bundle, key, bundle_version=bundle_version)
    if as_json:
        _echo_json(r)
        return
    click.echo(f"signed {r['bundle']} (bundle version {r['bundle_version']}) with key "
               f"{r['key_fingerprint'][:16]}..." + (f"; packed {r['archive']}" if "archive" in r else ""))


_into_option = click.option("--into", "into", required=True, type=click.Path(file_okay=False),
                            help="Install directory (DIR/current is the bundle that serves).")


def _install_config(trusted_keys, allow_rollback=False, strict=False):
    from edgeexit.runtime.install import InstallConfig

    return InstallConfig(trusted_keys=None if trusted_keys is None else (trusted_keys,),
                         allow_rollback=allow_rollback, strict=strict)


def _bundle_line(d):
    if not d:
        return "none"
    if "error" in d and "bundle_version" not in d:
        return f"{d['path']} (UNREADABLE: {d['error']})"
    fp = d.get("key_fingerprint")
    return (f"{d['name']} (bundle version {d['bundle_version']}, {d['model']}, "
            f"{'/'.join(d['formats'])} {d['precision']}, "
            f"{'signed by ' + fp[:16] + '...' if fp else 'unsigned'})")


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@_into_option
@_trusted_option
@click.option("--allow-rollback", is_flag=True,
              help="Accept a bundle version not newer than the installed one.")
@click.option("--strict", is_flag=True,
              help="Refuse the bundle if a format's backend is not installed here (not replayed).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def install(archive, into, trusted_keys, allow_rollback, strict, as_json):
    """Install BUNDLE.tar.gz on this device, atomically, keeping the previous bundle.

    Unpacks safely into a new directory, verifies it (hashes and sizes, signature when required,
    bundle version newer than the installed one, golden replay on every installed backend), then
    switches DIR/current to it in one step and health-checks it (reverting by itself on failure).
    """
    from edgeexit.runtime.install import install_bundle

    r = install_bundle(archive, into, _install_config(trusted_keys, allow_rollback, strict))
    if as_json:
        _echo_json(r)
        return
    click.echo(f"installed {_bundle_line(r['installed'])} into {r['into']} in {r['seconds']} s")
    click.echo(f"  previous: {_bundle_line(r['previous'])}")
    if r["unchecked"]:
        click.echo(f"  not replayed here (backend not installed): {', '.join(r['unchecked'])}")


@main.command()
@_into_option
@_trusted_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def rollback(into, trusted_keys, as_json):
    """Switch back to the previous bundle (checked first); run it again to go forward."""
    from edgeexit.runtime.install import rollback as do_rollback

    r = do_rollback(into, _install_config(trusted_keys))
    if as_json:
        _echo_json(r)
        return
    click.echo(f"rolled back {r['into']}: now {_bundle_line(r['current'])}")
    click.echo(f"  previous: {_bundle_line(r['previous'])}")


@main.command()
@_into_option
@click.option("--check", is_flag=True, help="Also check the current bundle's hashes and sizes.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status(into, check, as_json):
    """Show the bundle an install directory serves and the one it can roll back to."""
    from edgeexit.runtime.install import status as install_status

    r = install_status(into, check=check)
    if as_json:
        _echo_json(r)
    else:
        click.echo(f"{r['into']}: current {_bundle_line(r['current'])}")
        click.echo(f"  previous: {_bundle_line(r['previous'])}")
        if check and r["current"]:
            click.echo(f"  hashes: {'ok' if r['current'].get('hashes_ok') else 'FAILED: ' + r['current'].get('error', '')}")
    if check and r["current"] and not r["current"].get("hashes_ok"):
        from edgeexit.errors import ExitStatus

        sys.exit(ExitStatus.MISMATCH)


if __name__ == "__main__":
    sys.exit(main())

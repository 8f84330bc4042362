"""``edgeexit train``: a recipe (``--config FILE.toml``, flags override it) in, a checkpoint out."""

from __future__ import annotations

import click
from click.core import ParameterSource

from edgeexit.cli.app import echo_result, interactive, main
from edgeexit.cli.formats import train_text
from edgeexit.cli.options import device_options
from edgeexit.config import EXIT_HEADS
from edgeexit.robust.names import TRAIN_ATTACKS

# command-line parameter -> DataSpec field
_DATA = {"source": "source", "test_data": "test_source", "split": "split", "n_beats": "n_beats",
         "window": "window", "rr_context": "rr_context", "morph_context": "morph_context"}
# command-line parameters that are TrainConfig fields of the same name
_TRAIN = ("model", "width", "exit_heads", "context_fusion", "method", "attack_morph", "epochs",
          "batch_size", "lr", "class_weighting", "max_class_weight", "val_split", "val_fraction",
          "patience", "augment", "rr_augment", "rr_scale", "time_warp", "signal_dropout", "ema",
          "bn_recalibrate", "bn_recalibrate_augmented", "seed", "threads", "device", "amp",
          "loader_workers")
# command-line parameter -> (method config field, the one method it belongs to, or None for any
# method whose config has the field)
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
    "timing_ms": ("timing_ms", "ctxadv"), "rhythm": ("rhythm", "ctxadv"),
}

_GROUPS = (
    ("Recipe and output", ("config_file", "out_dir", "progress", "as_json")),
    ("Data", tuple(_DATA)),
    ("Model", ("model", "width", "exit_heads", "context_fusion")),
    ("Training method", ("method", *_METHOD_OPTIONS, "attack_morph")),
    ("Optimisation", ("epochs", "batch_size", "lr", "class_weighting", "max_class_weight",
                      "patience", "seed", "threads")),
    ("Where it computes", ("device", "amp", "loader_workers")),
    ("Validation and epoch choice", ("val_split", "val_fraction", "cv_folds")),
    ("Augmentation", ("augment", "rr_augment", "rr_scale", "time_warp", "signal_dropout")),
    ("Weights kept", ("ema", "bn_recalibrate", "bn_recalibrate_augmented")),
)


def _given(ctx: click.Context, param: str) -> bool:
    return ctx.get_parameter_source(param) not in (None, ParameterSource.DEFAULT)


def _method_options(method: str, ctx: click.Context) -> dict:
    """The method's settings given on the command line (only those: the rest keep the recipe's
    or the method's defaults); an option the method does not take is refused."""
    import dataclasses

    from edgeexit.errors import ConfigError
    from edgeexit.robust.methods import check_method_name, method_config_class

    check_method_name(method)
    fields = {f.name for f in dataclasses.fields(method_config_class(method))}

    def flag(param: str) -> str:
        return next(p for p in ctx.command.params if p.name == param).opts[0]

    takes = [flag(p) for p, (f, only) in _METHOD_OPTIONS.items()
             if f in fields and only in (None, method)]
    options = {}
    for param, (field, only) in _METHOD_OPTIONS.items():
        if not _given(ctx, param):
            continue
        if field not in fields or only not in (None, method):
            raise ConfigError(
                f"training method {method!r} does not take {flag(param)} ("
                + (f"it takes {', '.join(takes)}" if takes else "it has no options")
                + "; choose the method the option belongs to with --method)"
            )
        options[field] = ctx.params[param]
    return options


def _recipe(config_file: str | None, ctx: click.Context, options: dict):
    """The recipe file (or the defaults) with the options given on the command line over it;
    without a file every option counts, defaults included."""
    from edgeexit.train_recipe import TrainRecipe

    given = {p: v for p, v in options.items()
             if p not in _METHOD_OPTIONS and (config_file is None or _given(ctx, p))}
    base = TrainRecipe() if config_file is None else TrainRecipe.load(config_file)
    method = given.get("method", base.train.method)
    return base.override(data={_DATA[p]: v for p, v in given.items() if p in _DATA},
                         train={p: v for p, v in given.items() if p in _TRAIN},
                         method_options=_method_options(method, ctx), cv=given.get("cv_folds"))


@main.command(option_groups=_GROUPS)
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              metavar="FILE.toml",
              help="A training recipe (data, training config, --cv; e.g. recipes/*.toml); the "
                   "options given here override it, the others keep the file's values.")
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
                   "margin adversarial training), onmanifold (RDI plus on-manifold examples of "
                   "a VAE, --vae) or ctxadv (RDI whose attack also moves the R-peak timing, "
                   "--timing-ms, and recomputes the RR context as the device does). Method "
                   "options left unset keep its defaults.")
@click.option("--eps", type=float, default=None,
              help="rdi, neokd: attack budget on the ECG channels in mV (Linf per sample; L2 over "
                   "the window) [default 0.1].")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=None,
              help="rdi, neokd, ima: norm of the attack budget / margins [default linf].")
@click.option("--attack-steps", type=int, default=None,
              help="rdi, neokd, ima: PGD steps per batch [default 5].")
@click.option("--attack-step-size", type=float, default=None,
              help="rdi, neokd: PGD step in mV [default 2.5 * eps / steps].")
@click.option("--attack", "attack_kind", type=click.Choice([str(a) for a in TRAIN_ATTACKS]),
              default=None,
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
@click.option("--timing-ms", type=float, default=None,
              help="ctxadv: largest move of one R-peak detection by the training attack, ms "
                   "[default 25].")
@click.option("--rhythm", type=float, default=None,
              help="ctxadv: how far the training attack may move the long rhythm (the mean of "
                   "the last 256 RR intervals), as a fraction: extra or missed detections on "
                   "the device [default 0: held].")
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
@device_options
@click.option("--loader-workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Worker processes that assemble the training batches (0: this process).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for model.pt and metrics.json (and cv.json, cv.md with --cv).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the full metrics as JSON.")
def train(config_file, out_dir, progress, as_json, **options):
    """Train a multi-exit model and report every exit on the test set.

    Writes OUT/model.pt (rebuilds the model from the file alone, CPU tensors) and
    OUT/metrics.json. Runs on a GPU with --device (auto takes one when present) and on several
    processes or machines under torchrun (DDP: NCCL on GPUs, gloo on CPUs), e.g.
    `torchrun --nproc-per-node 2 -m edgeexit train ...` (docs/guides/scale-out.md). A recipe file (--config, e.g. the
    README's under recipes/) sets any of the data, model, method and training options.
    """
    from edgeexit.cv import TRAIN_FILES, run_training
    from edgeexit.fileio import check_output_directory

    # before any work: an unwritable --out, or a user's files there (a model.pt of their own)
    check_output_directory(out_dir, TRAIN_FILES, "train", record="metrics.json")
    recipe = _recipe(config_file, click.get_current_context(), options)
    result = run_training(recipe.data, recipe.train, out_dir, progress=interactive(progress),
                          cv_folds=recipe.cv,
                          on_stage=None if as_json else (lambda s: click.echo(s, err=True)))
    if result.checkpoint is None:  # a non-zero rank under torchrun: rank 0 reports
        return
    echo_result(as_json, result.metrics, lambda: train_text(result.metrics, result.checkpoint))

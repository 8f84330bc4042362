"""Robustness and compression on the host: ``evaluate`` and ``compress``."""

from __future__ import annotations

import click

from edgeexit.cli.app import (
    ProgressBars,
    echo_result,
    floats,
    interactive,
    main,
    names,
    stage_printer,
)
from edgeexit.cli.options import device_option, device_options, json_option
from edgeexit.robust.names import EvalAttack, StreamAttack

_ATTACK_NAMES = tuple(str(a) for a in EvalAttack)
_STREAM_NAMES = tuple(str(a) for a in StreamAttack)

_EVALUATE_GROUPS = (
    ("Inputs", ("source", "checkpoint", "limit", "seed", "out_dir")),
    ("Device path (--records: continuous records, end to end)",
     ("records", "record_names", "minutes", "rounds", "min_sqi")),
    ("Attacks", ("eps", "sanity_eps", "norm", "attacks", "steps", "vae", "eta", "square_queries",
                 "morph")),
    ("Noise", ("noise", "snr", "noise_dir")),
    ("Run", ("backend", "threads", "device", "progress", "as_json")),
)

@main.command(option_groups=_EVALUATE_GROUPS)
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
                   "--vae, and is skipped without it when the list is left at its default). With "
                   f"--records: {', '.join(_STREAM_NAMES)} (the default list means all of them).")
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
@click.option("--records", default=None, is_flag=False, flag_value="synthetic",
              help="Evaluate on the device path instead: stream continuous records end to end "
                   "(detector, RR and morphology context, exit policy), clean, noisy and under "
                   "the stream attacks. A WFDB directory with beat annotations, or 'synthetic' "
                   "(also: --records alone). Needs a bundle.")
@click.option("--record-names", default=None,
              help="--records: which records (comma-separated; default: DS2 for MIT-BIH, else all).")
@click.option("--minutes", default=None, type=float,
              help="--records: stream only each record's first minutes.")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(min=1),
              help="--records: white-box PGD rounds (craft on the device's windows, re-detect).")
@click.option("--min-sqi", default=None, metavar="Q", type=click.FloatRange(min=0, min_open=True),
              help="--records: the device's signal-quality gate, as `run --stream --min-sqi`: "
                   "beats whose quality index is below Q are flagged unreadable and reported apart "
                   "(neither right nor wrong; 6 flags about half the beats under muscle noise at "
                   "0 dB, none clean).")
@device_option
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@json_option
def evaluate(target, source, checkpoint, out_dir, eps, sanity_eps, norm, attacks, steps, vae, eta,
             noise, snr, noise_dir, limit, square_queries, backend, threads, seed, morph, records,
             record_names, minutes, rounds, min_sqi, device, progress, as_json):
    """Attack a checkpoint or a deployed bundle and report robustness.

    For a checkpoint: white-box attacks (max-average PGD, policy-aware PGD on the ensemble of all
    exits, universal perturbations, DeepSloth slowdown, and with --vae the on-manifold latent
    attack). For a bundle: the same inputs crafted on
    its source model, run through the runtime with the deployed exit policy, plus the black-box
    Square attack and noise through the runtime; exit histograms, MACs and latency clean vs
    attacked. Writes OUT/report.json, OUT/report.md, OUT/robustness.png and OUT/exits.png.
    """
    if records is not None:
        if device not in ("auto", "cpu"):  # not silently ignored
            raise click.UsageError(
                f"--records runs the device path on the CPU (its PGD's gradients too): --device "
                f"{device} is not supported there; leave --device out")
        return _evaluate_stream(target, records, checkpoint, out_dir, eps, attacks, steps, noise,
                                snr, noise_dir, square_queries, backend, threads, seed,
                                record_names, minutes, rounds, min_sqi, progress, as_json)
    if min_sqi is not None:
        raise click.UsageError("--min-sqi needs --records (the device path's quality gate)")
    from edgeexit.robust.evaluate import EvalConfig, format_markdown
    from edgeexit.robust.evaluate import evaluate as run_evaluate

    config = EvalConfig(eps=floats(eps), sanity_eps=sanity_eps or None, norm=norm,
                        attacks=names(attacks), steps=steps, vae=vae, eta=eta, noise=names(noise),
                        snr_db=floats(snr), noise_dir=noise_dir, limit=limit or None,
                        square_queries=square_queries, backend=backend, threads=threads,
                        seed=seed, morph_follows=morph == "follows", device=device)
    with ProgressBars(interactive(progress)) as bars:
        result = run_evaluate(target, data=source, checkpoint=checkpoint, config=config,
                              out_dir=out_dir,
                              progress=(lambda what, done, total: bars.update(
                                  "evaluate", done, total, "step", what)) if bars.enabled else None)
    echo_result(as_json, result.report, lambda: format_markdown(result.report) + "\nwrote "
                + ", ".join(str(f) for f in result.files))


def _evaluate_stream(target, records, checkpoint, out_dir, eps, attacks, steps, noise, snr,
                     noise_dir, square_queries, backend, threads, seed, record_names, minutes,
                     rounds, min_sqi, progress, as_json):
    """``evaluate --records``: the device path end to end (edgeexit.robust.stream)."""
    from edgeexit.robust.stream.evaluate import StreamEvalConfig, evaluate_stream, format_markdown

    config = StreamEvalConfig(
        eps=floats(eps),
        attacks=_STREAM_NAMES if names(attacks) == _ATTACK_NAMES else names(attacks), noise=names(noise),
        snr_db=floats(snr), noise_dir=noise_dir, steps=steps, rounds=rounds,
        records=names(record_names) if record_names else None, minutes=minutes,
        square_queries=square_queries, min_sqi=min_sqi, backend=backend, threads=threads,
        seed=seed)
    with ProgressBars(interactive(progress)) as bars:
        result = evaluate_stream(target, records, checkpoint=checkpoint, config=config,
                                 out_dir=out_dir,
                                 progress=(lambda what, done, total: bars.update(
                                     "evaluate", done, total, "step", what)) if bars.enabled else None)
    echo_result(as_json, result.report, lambda: format_markdown(result.report) + "\nwrote "
                + ", ".join(str(f) for f in result.files))


_COMPRESS_GROUPS = (
    ("Pruning", ("ratio", "stage_ratios", "scope", "importance", "prune_steps", "step_epochs")),
    ("Fine-tuning", ("kind", "epochs", "lr", "eps", "attack_steps", "timing_ms", "rhythm",
                     "keep_sensitivity", "keep_max_loss", "eta", "vae", "vae_epochs", "source",
                     "train_limit")),
    ("Report", ("out_dir", "eval_eps", "eval_limit", "formats", "no_onmanifold_eval", "as_json")),
    ("Run", ("threads", "device", "amp", "seed", "progress")),
)


@main.command(option_groups=_COMPRESS_GROUPS)
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
@click.option("--finetune", "kind", type=click.Choice(["none", "standard", "adv", "ctxadv", "onmanifold"]),
              default="standard", show_default=True,
              help="standard: cross-entropy; adv: RDI-Nets PGD training; ctxadv: PGD that also "
                   "moves the R-peak timing (--timing-ms); onmanifold: PGD plus on-manifold (VAE "
                   "latent) adversarial examples.")
@click.option("--epochs", default=8, show_default=True, help="Fine-tuning epochs.")
@click.option("--lr", default=None, type=float,
              help="Fine-tuning learning rate (default: the one training used).")
@click.option("--eps", default=0.1, show_default=True,
              help="adv/onmanifold: PGD budget in mV (Linf, signal channels).")
@click.option("--attack-steps", default=5, show_default=True, help="PGD steps per training batch.")
@click.option("--timing-ms", default=25.0, show_default=True,
              help="ctxadv: largest move of one R-peak detection by the training attack, ms.")
@click.option("--rhythm", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="ctxadv: how far the training attack may move the long rhythm (mean of the "
                   "last 256 RR intervals), as a fraction: extra or missed detections; 0: held.")
@click.option("--keep-sensitivity", default="",
              help="Classes (e.g. S,V) whose validation sensitivity the fine-tuned model keeps at "
                   "the original model's, exit by exit, by per-class logit offsets folded into the "
                   "exit heads (adversarial fine-tuning gives up rare classes); default: off.")
@click.option("--keep-max-loss", default=2.0, show_default=True, type=click.FloatRange(0, 100),
              help="--keep-sensitivity: points of validation accuracy the offsets may cost per "
                   "exit (the other classes pay for the kept ones); beyond it they are scaled "
                   "back.")
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
@device_options
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Stage lines and progress bars on stderr.")
@json_option
def compress(checkpoint, out_dir, ratio, stage_ratios, scope, importance, prune_steps, step_epochs,
             kind, epochs, lr, eps, attack_steps, timing_ms, rhythm, keep_sensitivity,
             keep_max_loss, eta, vae, source, train_limit, eval_eps, eval_limit, vae_epochs,
             formats, no_onmanifold_eval, threads, seed, device, amp, progress, as_json):
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
                          stage_ratios=floats(stage_ratios) if stage_ratios else None),
        finetune=FinetuneConfig(kind, epochs=epochs, lr=lr, eps=eps, attack_steps=attack_steps,
                                timing_ms=timing_ms, rhythm=rhythm, eta=eta, seed=seed,
                                keep_sensitivity=names(keep_sensitivity),
                                keep_max_loss=keep_max_loss,
                                threads=threads, device=device, amp=amp),
        step_epochs=step_epochs, train_limit=train_limit or None, eval_eps=floats(eval_eps),
        eval_limit=eval_limit or None, onmanifold=not no_onmanifold_eval, seed=seed,
        threads=threads, vae_epochs=vae_epochs, formats=names(formats))
    result = run_compress(checkpoint, out_dir, config, data=source, vae=vae,
                          progress=stage_printer(progress), bars=interactive(progress))
    echo_result(as_json, result.report, lambda: format_markdown(result.report) + "\nwrote "
                + ", ".join(str(f) for f in (result.checkpoint, *result.files)))

"""``edgeexit quickstart``: the whole path on synthetic data in one command, and the text of each
of its stages (one formatter per stage, looked up by the stage's name)."""

from __future__ import annotations

import click

from edgeexit.cli.app import echo_result, interactive, main, parse_exits
from edgeexit.cli.formats import pct
from edgeexit.cli.options import backend_option
from edgeexit.config import EXIT_HEADS


def _train(r: dict) -> list[str]:
    lines = [f"[train] {r['model']} width {r['width']:g}, {r['params']:,} parameters, "
             f"best epoch {r['best_epoch']}, {r['elapsed_s']} s",
             f"  {'exit':>4} {'MACs':>10} {'test acc%':>9} {'mF1':>6}"]
    for e in r["exits"]:
        lines.append(f"  {e['index']:>4} {e['cumulative_macs']:>10,} {pct(e['accuracy']):>9} "
                     f"{e['macro_f1']:6.3f}")
    return lines


def _compress(r: dict) -> list[str]:
    lines = [f"[compress] pruned {r['prune']:g} of the channels, fine-tuned "
             f"{r['finetune_epochs']} epochs ({r.get('finetune', 'standard')}), {r['elapsed_s']} s",
             f"  {'model':10} {'params':>8} {'MACs':>10} {'test acc%':>9} {'mF1':>6} "
             f"{'us/beat':>8}  (one graph, {r['latency_backend']}, batch 1, timed alternately)"]
    for i, which in enumerate(("original", "compressed")):
        acc, f1 = r["accuracy"][i], r["macro_f1"][i]
        lines.append(f"  {which:10} {r['params'][i]:>8,} {r['macs'][i]:>10,} "
                     f"{'-' if acc is None else pct(acc):>9} "
                     f"{'-' if f1 is None else format(f1, '6.3f'):>6} {r['latency_us'][i]:8.1f}")
    return lines


def _export(r: dict) -> list[str]:
    lines = [f"[export] {r['bundle']} for {r['target']}, {r['precision']}, "
             f"{', '.join(r['formats'])}, {r['elapsed_s']} s"]
    for fmt, p in r["parity"].items():
        lines.append(f"  {fmt:7} max |logit err| " + " ".join(f"{v:.2g}" for v in p["max_abs_err"]))
    return lines


def _verify(r: dict) -> list[str]:
    return [f"[verify] {'verified' if r['ok'] else 'MISMATCH'}: {', '.join(r['checks'])}"]


def _calibrate(r: dict) -> list[str]:
    lo, hi = r["loss_interval"]
    lines = [f"[calibrate] {r['policy']} on {r['beats']} beats of {r['records']} new patients, "
             f"{r['elapsed_s']} s",
             f"  thresholds {r['thresholds']}, exits "
             + " ".join(f"{100 * f:.1f}%" for f in r["exit_fractions"])
             + f", loss {r['loss_points']:.2f} points ({100 * r['confidence']:g}% interval "
               f"{lo:.2f}..{hi:.2f})"]
    ch = r.get("exit_choice")
    if ch:
        lines.append(f"  exits worth their call (estimated from measured latency): "
                     f"{','.join(map(str, ch['best_exits']))} at {ch['best_expected_us']:.1f} us "
                     f"(deployed {','.join(map(str, r['exits']))}; monolithic "
                     f"{ch['monolithic_us']:.1f} us)")
    return lines


def _evaluate(r: dict) -> list[str]:
    lines = [f"[evaluate] {r['windows']} test windows through the runtime, {r['policy']}; "
             f"{r.get('stream_beats', '-')} beats of {r.get('stream_patients', '-')} patients "
             f"streamed; {r['elapsed_s']} s "
             f"(the full check: {r['command']})",
             f"  {'model':10} {'input':48} {'accuracy':>9} {'mF1':>6}"]
    for row in r["rows"]:
        lines.append(f"  {row.get('model', 'deployed').split(' ')[0]:10} {row['input']:48} "
                     f"{pct(row['accuracy']):>9} {row['macro_f1']:6.3f}")
    return lines


def _bench(r: dict) -> list[str]:
    a, lat, ra = r.get("accuracy", {}), r["latency_us"], r["ratios"]
    lines = [f"[bench] {r['samples']} test beats (other patients), {r['backend']}, batch 1, "
             f"{r['elapsed_s']} s",
             f"  {'path':12} {'mean us':>8} {'accuracy':>9} {'/ mono':>7}",
             f"  {'policy':12} {lat['policy']['mean']:8.1f} {pct(a['policy']):>9} "
             f"{ra['policy_vs_monolithic']:7.3f}",
             f"  {'all exits':12} {lat['all_exits']['mean']:8.1f} {pct(a['final_exit']):>9} "
             f"{ra['all_exits_vs_monolithic']:7.3f}",
             f"  {'monolithic':12} {lat['monolithic']['mean']:8.1f} {pct(a['monolithic']):>9} "
             f"{1:7.3f}",
             "  exits taken " + " ".join(f"{100 * f:.1f}%" for f in r["exit_fractions"])
             + f"; policy loss {a['policy_loss_points']} points"]
    en = r.get("energy")
    if en and "error" not in en:
        pe = en["per_inference_mj"]
        lines.append(f"  energy per inference above idle: policy {pe['policy']['above_idle']:.5f} mJ, "
                     f"monolithic {pe['monolithic']['above_idle']:.5f} mJ "
                     f"({en['ratios']['policy_vs_monolithic']}x); {en['chosen']}")
    elif en:
        lines.append(f"  energy: NOT measured: {en['error']}")
    if r.get("report"):
        lines.append(f"  report with plots: {r['report']['dir']}/report.md")
    return lines


STAGES = {"train": _train, "compress": _compress, "export": _export, "verify": _verify,
          "calibrate": _calibrate, "evaluate": _evaluate, "bench": _bench}
"""The text of every quick-start stage, by the name :func:`run_quickstart` reports it under."""


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
              help="Fraction of channels pruned after training, then fine-tuned (0: no pruning; "
                   "with --finetune standard, the trained model is deployed as is).")
@click.option("--finetune", type=click.Choice(["ctxadv", "standard"]), default="ctxadv",
              show_default=True,
              help="Fine-tuning of the pruned model: ctxadv (adversarial, PGD at 0.15 mV that also "
                   "moves the R-peak timing: the deployed model is robust) or standard.")
@click.option("--finetune-epochs", type=int, default=None,
              help="Fine-tuning epochs (default: 3 for ctxadv, 8 for standard).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Training threads (default: all cores).")
@click.option("--target", default="rpi4", show_default=True, help="Device preset of the bundle.")
@click.option("--margin", default=0.5, show_default=True,
              help="Allowed accuracy loss of the early-exit policy, in points.")
@backend_option
@click.option("--meter", default="auto", show_default=True, metavar="METER",
              help="The bench's energy meter (see `edgeexit bench --help`); none: no energy phase.")
@click.option("--evaluate/--no-evaluate", "run_eval", default=True, show_default=True,
              help="End with a short robustness check of the bundle (policy-aware PGD at 0.1 mV "
                   "and muscle noise at 6 dB, through the runtime).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (tables on stderr).")
def quickstart(out_dir, model, width, exit_heads, exits, epochs, prune, finetune, finetune_epochs,
               seed, threads, target, margin, backend, meter, run_eval, as_json):
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
                              None if exits == "all" else parse_exits(exits),
                              epochs=epochs, prune=prune, finetune=finetune,
                              finetune_epochs=finetune_epochs,
                              seed=seed, threads=threads, target=target,
                              margin=margin, bench_backend=backend, evaluate=run_eval, meter=meter)

    def show(name: str, r: dict) -> None:  # the tables go to stderr when stdout carries the JSON
        if name in STAGES:
            click.echo("\n".join(STAGES[name](r)), err=as_json)

    output = click.get_current_context().meta.get("edgeexit.output")
    if output is not None:  # its stage tables are the progress; the stages' own logs go to the log
        output.details_to_log()
    summary = run_quickstart(out_dir, config, on_stage=show, progress=interactive(True))
    echo_result(as_json, summary, lambda: f"wrote {summary['out']}/summary.json and summary.md "
                                          f"({summary['elapsed_s']} s)")

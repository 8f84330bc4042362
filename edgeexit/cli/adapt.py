"""Patient adaptation on the host: ``adapt``."""

from __future__ import annotations

import click

from edgeexit.cli.app import echo_result, main, names
from edgeexit.cli.options import json_option

_ADAPT_GROUPS = (
    ("Wearer", ("data", "records", "minutes", "out_dir")),
    ("Adaptation", ("unsupervised", "trainable", "loss", "epochs", "lr", "replay", "replay_data",
                    "margin")),
    ("Run", ("seed", "threads", "as_json")),
)


@main.command(option_groups=_ADAPT_GROUPS)
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=False),
              help="The wearer: a WFDB record (DIR/NAME, e.g. ../shared/data/mitdb/232), a "
                   "directory of the wearer's records, or an .npz with beat times.")
@click.option("--records", default=None, help="With a directory: the wearer's records (comma-separated).")
@click.option("--minutes", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Adapt on the beats of the first MINUTES of every record; later beats are "
                   "only scored, never used.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for model.pt (and adaptation.npz, the labelled beats used).")
@click.option("--unsupervised", is_flag=True,
              help="Use no labels: BatchNorm statistics re-estimated on the first minutes, exit "
                   "thresholds from the final exit's answers.")
@click.option("--trainable", type=click.Choice(["heads", "all"]), default="heads", show_default=True,
              help="heads: the exit heads and their context-fusion terms (stages frozen); all: "
                   "every weight at a small learning rate.")
@click.option("--loss", type=click.Choice(["clean", "parent"]), default="clean", show_default=True,
              help="clean: plain cross-entropy; parent: the checkpoint's own training method (a "
                   "robust model's adversarial loss, several times slower).")
@click.option("--epochs", default=6, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=None, type=float,
              help="Peak learning rate (default 1e-3 for heads, 3e-4 for all).")
@click.option("--replay", default=1500, show_default=True, type=click.IntRange(min=0),
              help="Beats of the general training data mixed in (0: the wearer's beats only).")
@click.option("--replay-data", default=None, type=click.Path(exists=True),
              help="The general training data to draw them from (default: the data the "
                   "checkpoint records; an .npz of it saves loading the records).")
@click.option("--margin", default=0.5, show_default=True,
              help="Accuracy-loss margin (points) of the exit thresholds set on the wearer.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Torch threads.")
@json_option
def adapt(checkpoint, data, records, minutes, out_dir, unsupervised, trainable, loss, epochs, lr,
          replay, replay_data, margin, seed, threads, as_json):
    """Adapt a model to one wearer on the first minutes of their recording.

    Writes OUT/model.pt, which records its parent's sha256 and the adaptation data and exports
    like any checkpoint (`edgeexit export OUT/model.pt --out BUNDLE`), and scores the wearer's
    later beats with the adapted and the global model.
    """
    from edgeexit.adapt import AdaptConfig, adapt_wearer, format_report

    config = AdaptConfig(minutes=minutes, trainable=trainable, loss=loss, epochs=epochs, lr=lr,
                         replay=replay, margin=margin, seed=seed, threads=threads)
    report = adapt_wearer(checkpoint, data, out_dir, config,
                          records=list(names(records)) if records else None,
                          unsupervised=unsupervised, replay_data=replay_data)
    echo_result(as_json, report, lambda: format_report(report))

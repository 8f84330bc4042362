"""Looking at things: ``info`` (checkpoints, model families), ``data`` and ``targets``."""

from __future__ import annotations

import click

from edgeexit.cli.app import apply, echo_json, echo_result, main
from edgeexit.cli.formats import data_text, info_text, models_text, targets_text
from edgeexit.config import EXIT_HEADS

# the DataSpec options of `data inspect` and `data generate`
_data_spec_options = apply([
    click.option("--n-beats", default=6000, show_default=True, help="Synthetic beats."),
    click.option("--seed", default=0, show_default=True, help="Synthetic seed."),
    click.option("--window", default=256, show_default=True),
    click.option("--rr-context/--no-rr-context", default=True, show_default=True),
    click.option("--morph-context/--no-morph-context", default=False, show_default=True),
])


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
        echo_result(as_json, models, lambda: models_text(models) or None)
        return
    d = describe_target(target, exit_heads)
    echo_result(as_json, d, lambda: info_text(d))


@main.group()
def data():
    """Generate or inspect a data set (synthetic, MIT-BIH directory, .npz/.csv)."""


@data.command("inspect")
@click.argument("source")
@_data_spec_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_inspect(source, n_beats, seed, window, rr_context, morph_context, as_json):
    """Print the size, shape, channels and class counts of SOURCE.

    SOURCE is 'synthetic', a WFDB directory (all non-paced records), or a .npz/.csv file.
    """
    from edgeexit.data import DataSpec, load_source

    spec = DataSpec(source=source, n_beats=n_beats, seed=seed, window=window, rr_context=rr_context,
                    morph_context=morph_context)
    d = load_source(source, spec).describe()
    echo_result(as_json, d, lambda: data_text(d))


@data.command("generate")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The .npz file to write.")
@click.option("--source", default="synthetic", show_default=True,
              help="'synthetic', or a WFDB directory to convert.")
@_data_spec_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def data_generate(out_path, source, n_beats, seed, window, rr_context, morph_context, as_json):
    """Write a data set to an .npz file (synthetic beats, or a WFDB directory converted)."""
    from edgeexit.data import DataSpec, load_source

    from edgeexit.fileio import check_output_file

    if not out_path.endswith(".npz"):
        raise click.BadParameter("the output file must end in .npz", param_hint="--out")
    check_output_file(out_path, "data generate", ours=_is_data_npz)
    spec = DataSpec(source=source, n_beats=n_beats, seed=seed, window=window, rr_context=rr_context,
                    morph_context=morph_context)
    dataset = load_source(source, spec)
    dataset.save_npz(out_path)
    d = {**dataset.describe(), "written": out_path}
    counts = " ".join(f"{k}={v}" for k, v in d["class_counts"].items())
    echo_result(as_json, d, lambda: f"wrote {d['beats']} beats {d['input_shape']} to {out_path}: {counts}")


def _is_data_npz(path) -> bool:
    """``path`` is a data set .npz (``x`` and ``y`` arrays): what data generate writes."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return {"x.npy", "y.npy"} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def targets(name, as_json):
    """List the device presets, or show one (NAME: a target id or a .toml file).

    Presets are data files, targets/<id>.toml (EDGEEXIT_TARGETS points elsewhere).
    """
    from edgeexit.targets import list_targets, load_target

    if name:  # one preset: its resolved values, as JSON either way
        echo_json(load_target(name).to_dict())
        return
    found = list_targets()
    echo_result(as_json, [t.to_dict() for t in found], lambda: targets_text(found))

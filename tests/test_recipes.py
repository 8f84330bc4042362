"""Training recipes (``recipes/*.toml``, ``edgeexit train --config``): every shipped recipe loads,
round-trips, and the options given on the command line override it."""

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.cli.train import _recipe
from edgeexit.cli.train import train as train_command
from edgeexit.errors import ConfigError
from edgeexit.train_recipe import TrainRecipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


def parse(*args):
    """The recipe ``edgeexit train ARGS`` would run (parsed, not trained)."""
    ctx = train_command.make_context("train", [*map(str, args), "--out", "unused"])
    options = {k: v for k, v in ctx.params.items()
               if k not in ("config_file", "out_dir", "progress", "as_json")}
    return _recipe(ctx.params["config_file"], ctx, options)


def test_the_readme_recipes_ship():
    assert {p.stem for p in RECIPES} >= {"mitdb-fused-cv", "mitdb-rdi", "mitdb-neokd", "mitdb-ima"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_round_trips(path):
    recipe = TrainRecipe.load(path)
    assert TrainRecipe.from_dict(recipe.to_dict()) == recipe
    assert TrainRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    on_disk = tomllib.loads(path.read_text())
    for section in ("data", "train"):  # every value written in the file is the recipe's
        for key, value in on_disk.get(section, {}).items():
            if key != "method_config":
                assert recipe.to_dict()[section][key] == value, (section, key)
    for key, value in on_disk.get("train", {}).get("method_config", {}).items():
        assert getattr(recipe.train.method_config, key) == value, key
    assert parse("--config", path) == recipe  # the command line adds nothing of its own


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_flag_overrides_the_recipe_and_the_rest_stays(path):
    recipe = TrainRecipe.load(path)
    r = parse("--config", path, "--epochs", 3, "--seed", 7, "--data", "synthetic", "--no-augment")
    assert (r.train.epochs, r.train.seed, r.data.seed, r.data.source) == (3, 7, 7, "synthetic")
    assert r.train.augment is False
    assert r.train.method == recipe.train.method
    assert r.train.method_config == recipe.train.method_config
    assert r.cv == recipe.cv and r.data.morph_context == recipe.data.morph_context
    assert r.train.context_fusion == recipe.train.context_fusion


def test_method_options_merge_into_the_recipe_and_another_method_starts_afresh():
    rdi = next(p for p in RECIPES if p.stem == "mitdb-rdi")
    r = parse("--config", rdi, "--eps", 0.2)
    assert (r.train.method_config.eps, r.train.method_config.steps) == (0.2, 5)
    r = parse("--config", rdi, "--method", "ima")
    assert r.train.method == "ima" and r.train.method_config == TrainRecipe().override(
        train={"method": "ima"}).train.method_config
    with pytest.raises(ConfigError, match="does not take --kd-alpha"):
        parse("--config", rdi, "--kd-alpha", 2)


def test_without_a_file_the_flags_and_their_defaults_make_the_recipe():
    assert parse() == TrainRecipe()
    r = parse("--method", "rdi", "--eps", 0.05, "--cv", 3, "--morph-context")
    assert r.train.method_config.eps == 0.05 and r.cv == 3 and r.data.morph_context


def test_bad_recipes_are_refused_with_the_file_named(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, match in [("[train]\nepoch = 3\n", "unknown train config keys 'epoch'"),
                        ("[data]\nseed = 1\n", r"\[train\] seed"),
                        ("cv = 1\n", "at least 2"),
                        ("[modle]\n", "unknown recipe keys 'modle'"),
                        ("[train\n", "not valid TOML"),
                        ('[train]\nepochs = "6"\n', r"\[train\]: epochs = '6' should be int"),
                        ("[train]\nlr = true\n", "lr = True should be float"),
                        ("[train]\nthreads = 1.5\n", "threads = 1.5 should be int | None"),
                        ("[data]\nmorph_context = 1\n",
                         r"\[data\]: morph_context = 1 should be bool"),
                        ('[train]\nmethod = "rdi"\n[train.method_config]\neps = "0.1"\n',
                         r"\[train.method_config\]: eps = '0.1' should be float")]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match) as e:
            TrainRecipe.load(bad)
        assert str(bad) in str(e.value)


def test_train_runs_a_recipe_file_with_a_flag_over_it(separable_npz, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f'[data]\nsource = "{separable_npz}"\n\n[train]\nmodel = "test_resnet1d"\n'
                      'epochs = 1\nbatch_size = 32\npatience = 0\nthreads = 1\nseed = 3\n')
    r = CliRunner().invoke(main, ["train", "--config", str(recipe), "--epochs", "2",
                                  "--out", str(tmp_path / "run"), "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert len(m["history"]) == 2 and m["train_config"]["epochs"] == 2  # the flag
    assert m["train_config"]["seed"] == 3 and m["data"]["spec"]["seed"] == 3  # the file
    assert m["model"]["family"] == "test_resnet1d"


def test_help_groups_the_train_options():
    out = CliRunner().invoke(main, ["train", "--help"]).output
    headings = ["Recipe and output:", "Data:", "Model:", "Training method:", "Optimisation:",
                "Validation and epoch choice:", "Augmentation:", "Weights kept:"]
    assert [out.index(h) for h in headings] == sorted(out.index(h) for h in headings)
    assert out.index("--config") < out.index("--data") < out.index("--model") < out.index("--eps")

"""int8 calibration recipes: loading, every bad-recipe error, selection rules, the stored set,
and what an int8 export records about its calibration samples."""

import json

import numpy as np
import pytest

from edgeexit.errors import ConfigError, RecipeError
from edgeexit.export.recipes import (
    array_sha256,
    calibration_set,
    list_recipes,
    load_recipe,
    select_indices,
)

CLASSES = ("N", "S", "V", "F", "Q")
GOOD = """
data = "checkpoint"
split = "train"
samples = 20
selection = "class-balanced"
seed = 1
[quantization]
method = "percentile"
float_heads = true
"""


def _write(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_recipes_load():
    assert {"default", "synthetic", "class-balanced", "by-record"} <= set(list_recipes())
    for name in list_recipes():
        r = load_recipe(name)
        assert r.split == "train" and r.samples > 0 and len(r.sha256) == 64
    d = load_recipe()
    assert d.name == "default" and d.quantization.float_heads


def test_recipe_from_a_path(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD))
    assert (r.samples, r.selection, r.seed, r.quantization.method) == (20, "class-balanced", 1,
                                                                        "percentile")
    assert r.to_dict()["sha256"] == r.sha256 and r.stored is None


@pytest.mark.parametrize("text, match", [
    (GOOD + "colour = 1\n", r"unknown key\(s\) 'colour'"),
    (GOOD.replace('"class-balanced"', '"by-luck"'), r"unknown selection 'by-luck'"),
    (GOOD.replace("samples = 20", "samples = 0"), r"samples must be a positive"),
    (GOOD.replace("samples = 20", "samples = -3"), r"samples must be a positive"),
    (GOOD.replace("samples = 20", 'samples = "many"'), r"samples must be int"),
    (GOOD.replace('split = "train"', 'split = "test"'), r"training side only"),
    (GOOD.replace('"percentile"', '"vibes"'), r"unknown quantization.method"),
    ("samples = [1,\n", r"not valid TOML"),
])
def test_bad_recipes_name_file_and_key(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError, match=match) as e:
        load_recipe(path)
    assert str(path) in str(e.value) and isinstance(e.value, ConfigError)


def test_unknown_quantization_key_and_missing_file(tmp_path):
    path = _write(tmp_path, GOOD.replace("float_heads = true", "bits = 4"))
    with pytest.raises(RecipeError, match=r"'bits' in \[quantization\]"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "absent.toml")
    with pytest.raises(RecipeError, match="unknown calibration recipe 'nope'; known recipes: .*default"):
        load_recipe("nope")


def _pool(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=n, p=[0.6, 0.2, 0.12, 0.05, 0.03])
    groups = np.asarray([f"rec{i % 7}" for i in range(n)])
    x = rng.normal(size=(n, 2, 16)).astype(np.float32)
    return x, y, groups


def test_selection_rules(tmp_path):
    _, y, groups = _pool()
    r = load_recipe(_write(tmp_path, GOOD))
    idx = select_indices(r, y, groups, CLASSES)
    counts = np.bincount(y[idx], minlength=5)
    assert len(idx) == 20 and (counts == 4).all()
    np.testing.assert_array_equal(idx, select_indices(r, y, groups, CLASSES))  # seeded
    rec = load_recipe(_write(tmp_path, GOOD.replace('"class-balanced"', '"stratified-by-record"')
                             .replace("samples = 20", "samples = 70")))
    per = np.unique(groups[select_indices(rec, y, groups, CLASSES)], return_counts=True)[1]
    assert per.tolist() == [10] * 7
    with pytest.raises(RecipeError, match="needs record ids"):
        select_indices(rec, y, None, CLASSES)
    rnd = load_recipe(_write(tmp_path, GOOD.replace('"class-balanced"', '"random"')))
    assert len(np.unique(select_indices(rnd, y, groups, CLASSES))) == 20


def test_class_balanced_that_the_data_cannot_fill(tmp_path):
    _, y, groups = _pool()
    n_q = int((y == 4).sum())
    r = load_recipe(_write(tmp_path, GOOD.replace("samples = 20", "samples = 150")))
    with pytest.raises(RecipeError, match=rf"only .*Q: {n_q}.*short_classes = \"take-all\""):
        select_indices(r, y, groups, CLASSES)
    text = GOOD.replace("samples = 20", 'samples = 150\nshort_classes = "take-all"')
    idx = select_indices(load_recipe(_write(tmp_path, text)), y, groups, CLASSES)
    assert len(idx) == 150 and (np.bincount(y[idx], minlength=5)[4] == n_q)
    with pytest.raises(RecipeError, match="pool holds only 200"):
        select_indices(load_recipe(_write(tmp_path, GOOD.replace("samples = 20", "samples = 999"))),
                       y, groups, CLASSES)


def test_stored_set_is_checked(tmp_path):
    x, y, groups = _pool()
    idx = [3, 5, 8]
    good = GOOD + f'[set]\nindices = {idx}\nsha256 = "{array_sha256(x[idx])}"\nmade_for = "pool"\n'
    r = load_recipe(_write(tmp_path, good))
    s = calibration_set(r, x, y, groups, CLASSES, "pool")
    assert s.from_stored_set and s.indices == (3, 5, 8) and s.sha256 == array_sha256(x[idx])
    other = x.copy()
    other[5] += 1
    with pytest.raises(RecipeError, match=r"set.sha256 .*remove the \[set\] table"):
        calibration_set(r, other, y, groups, CLASSES, "pool")
    with pytest.raises(RecipeError, match="set.indices go up to 8"):
        calibration_set(r, x[:5], y[:5], groups[:5], CLASSES, "pool")


def test_int8_export_records_recipe_and_samples(tiny_checkpoint, tmp_path):
    from edgeexit.export.bundle import ExportConfig, export_bundle
    from edgeexit.runtime.manifest import load_manifest

    path = _write(tmp_path, GOOD.replace("samples = 20", "samples = 40")
                  .replace('"percentile"', '"minmax"'))
    out = tmp_path / "b"
    export_bundle(tiny_checkpoint, out, ExportConfig(
        target="x86_64", precision="int8", formats=("onnx",), calibration=str(path),
        golden_samples=8, monolithic=False, int8_min_agreement=0.5, exits=(1, 3)))
    q = load_manifest(out).provenance.quantization
    assert q["recipe"]["name"] == "r" and q["recipe"]["sha256"] == load_recipe(path).sha256
    assert q["recipe"]["selection"] == "class-balanced" and q["samples"] == 40
    s = q["set"]
    assert len(s["indices"]) == 40 and sorted(s["class_counts"].values()) == [8] * 5
    assert sum(s["record_counts"].values()) == 40 and len(s["sha256"]) == 64
    assert json.loads((out / "manifest.json").read_text())["provenance"]["quantization"] == q


def test_export_refuses_a_missing_data_source(tiny_checkpoint, tmp_path):
    from edgeexit.export.bundle import ExportConfig, export_bundle

    path = _write(tmp_path, GOOD.replace('"checkpoint"', '"/no/such/wfdb"'))
    with pytest.raises(RecipeError, match=r"data source '/no/such/wfdb' not found"):
        export_bundle(tiny_checkpoint, tmp_path / "b", ExportConfig(
            target="x86_64", precision="int8", formats=("onnx",), calibration=str(path)))
    assert not (tmp_path / "b").exists()

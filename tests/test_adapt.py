"""Patient adaptation (edgeexit.adapt): no beat after the first minutes is ever used, the adapted
checkpoint records its parent and exports, the unsupervised path reads no label."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_separable

from edgeexit.adapt import (
    AdaptConfig,
    adapt,
    adapt_unsupervised,
    first_minutes,
    patient_specific,
)
from edgeexit.checkpoint import load_checkpoint
from edgeexit.errors import ConfigError, DataError
from edgeexit.runtime.manifest import sha256_file

# one minute of adaptation at 0.8 s per beat: beats 0..74 adapt, 75..159 are scored
CONFIG = AdaptConfig(minutes=1.0, epochs=1, replay=100, batch_size=32, threads=1)


def _wearer(seed: int = 5, name: str = "w1", n: int = 160):
    data = make_separable(n=n, seed=seed)
    return dataclasses.replace(data, groups=np.full(n, name), times=np.arange(n) * 0.8,
                               source=f"wearer {name}")


def _planted(data, index: int):
    """``data`` with beat ``index`` turned into a marker: another class, an impossible waveform."""
    x, y = data.x.copy(), data.y.copy()
    x[index, 0] = 40.0
    y[index] = (y[index] + 2) % 5
    return dataclasses.replace(data, x=x, y=y)


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_first_minutes_cuts_every_record_at_its_own_start():
    data = make_separable(n=40, seed=1)
    data = dataclasses.replace(data, groups=np.repeat(["a", "b"], 20),
                               times=np.tile(np.arange(20) * 10.0, 2))
    early, late = first_minutes(data, 1.0)  # 0..50 s of each record
    assert len(early) == 12 and len(late) == 28
    assert early.times.max() < 60.0 <= late.times.min()
    with pytest.raises(DataError, match="beat times"):
        first_minutes(dataclasses.replace(data, times=None), 1.0)


def test_a_beat_after_minute_n_cannot_change_the_adapted_model(tiny_checkpoint):
    wearer = _wearer()
    replay = make_separable(n=100, seed=9)
    base = adapt(tiny_checkpoint, wearer, CONFIG, replay=replay).model
    marked = adapt(tiny_checkpoint, _planted(wearer, 100), CONFIG, replay=replay).model
    assert _same(_weights(base), _weights(marked))
    # and a marker inside the first minute does change it: the test can fail
    inside = adapt(tiny_checkpoint, _planted(wearer, 10), CONFIG, replay=replay).model
    assert not _same(_weights(base), _weights(inside))


def test_heads_only_keeps_the_stages_and_their_batchnorm(tiny_checkpoint):
    parent = load_checkpoint(tiny_checkpoint).model
    model = adapt(tiny_checkpoint, _wearer(), CONFIG, replay=make_separable(n=100, seed=9)).model
    before, after = parent.state_dict(), model.state_dict()
    stages = [k for k in before if k.startswith("stages.")]
    heads = [k for k in before if k.startswith("exits.") and before[k].is_floating_point()]
    assert stages and all(torch.equal(before[k], after[k]) for k in stages)  # BN stats too
    assert any(not torch.equal(before[k], after[k]) for k in heads)


def test_adapted_checkpoint_records_its_parent_and_exports(tiny_checkpoint, tmp_path):
    from edgeexit.export.bundle import ExportConfig, export_bundle
    from edgeexit.runtime.verify import verify_bundle

    out = tmp_path / "adapted"
    result = adapt(tiny_checkpoint, _wearer(), CONFIG, out_dir=out)  # replay from the parent's data
    ck = load_checkpoint(out / "model.pt")
    rec = ck.meta["adaptation"]
    assert rec["parent_sha256"] == sha256_file(tiny_checkpoint)
    assert rec["records"] == ["w1"] and rec["beats"] == 75 and rec["last_beat_s"] < 60.0
    assert abs(rec["replay_beats"] - 100) <= 5 and len(rec["thresholds"]["thresholds"]) == 3
    assert (out / "adaptation.npz").is_file() and result.checkpoint == out / "model.pt"
    bundle = tmp_path / "bundle"
    export_bundle(out / "model.pt", bundle, ExportConfig(
        target="x86_64", formats=("onnx",), exits=(1, 3), monolithic=False, max_val_samples=200,
        golden_samples=8))
    assert verify_bundle(bundle, backend="onnxruntime").ok


def test_unsupervised_reads_no_label(tiny_checkpoint):
    wearer = _wearer()
    scrambled = dataclasses.replace(wearer, y=np.zeros_like(wearer.y))
    a = adapt_unsupervised(tiny_checkpoint, wearer, CONFIG)
    b = adapt_unsupervised(tiny_checkpoint, scrambled, CONFIG)
    assert _same(_weights(a.model), _weights(b.model))
    assert a.record["thresholds"] == b.record["thresholds"] and not a.record["labels_used"]
    c = adapt_unsupervised(tiny_checkpoint, _planted(wearer, 100), CONFIG)  # after minute 1
    assert _same(_weights(a.model), _weights(c.model))
    parent = load_checkpoint(tiny_checkpoint).model.state_dict()
    moved = [k for k in parent if "running_mean" in k
             and not torch.equal(parent[k], a.model.state_dict()[k])]
    assert moved  # the BatchNorm statistics are the wearer's


def test_patient_specific_scores_the_same_beats_for_every_mode(tiny_checkpoint):
    test = dataclasses.replace(
        make_separable(n=200, seed=7), groups=np.repeat(["p", "q"], 100),
        times=np.tile(np.arange(100) * 0.8, 2))
    report = patient_specific(tiny_checkpoint, test, CONFIG, replay=make_separable(n=100, seed=9))
    assert sorted(report["records"]) == ["p", "q"]
    for entry in report["records"].values():
        assert entry["scored_beats"] == 25  # 100 beats, 75 in the first minute
        assert {entry[m]["beats"] for m in ("global", "labelled", "unsupervised")} == {25}
    assert report["pooled"]["global"]["beats"] == 50
    with pytest.raises(ConfigError, match="unknown mode"):
        patient_specific(tiny_checkpoint, test, CONFIG, modes=("oracle",))


def test_cli_adapt_scores_the_later_beats(tiny_checkpoint, tmp_path):
    from edgeexit.cli import main

    npz = tmp_path / "wearer.npz"
    _wearer().save_npz(npz)
    out = tmp_path / "a"
    r = CliRunner().invoke(main, ["adapt", str(tiny_checkpoint), "--data", str(npz), "--minutes",
                                  "1", "--out", str(out), "--epochs", "1", "--replay", "50",
                                  "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["scored"]["beats"] == 85 and report["adaptation"]["kind"] == "labelled"
    bad = CliRunner().invoke(main, ["adapt", str(tiny_checkpoint), "--data", str(tmp_path / "nope"),
                                    "--out", str(tmp_path / "b")])
    assert bad.exit_code == 1 and bad.output.startswith("Error: ") and "Traceback" not in bad.output
    again = CliRunner().invoke(main, ["adapt", str(tiny_checkpoint), "--data", str(npz), "--minutes",
                                      "1", "--out", str(out), "--unsupervised"])
    assert again.exit_code == 0, again.output  # an earlier adapt directory is reused
    assert not (out / "adaptation.npz").exists()  # no labelled beats behind this model
    (out / "notes.txt").write_text("mine")
    mine = CliRunner().invoke(main, ["adapt", str(tiny_checkpoint), "--data", str(npz), "--out",
                                     str(out)])
    assert mine.exit_code == 1 and "notes.txt" in mine.output


@pytest.mark.parametrize("method, settings", [("rdi", {"eps": 0.05, "steps": 2}),
                                              ("neokd", {"eps": 0.05, "steps": 2}),
                                              ("ima", {"steps": 2})])
def test_a_robust_parent_is_adapted_with_its_own_method(tiny_checkpoint, tmp_path, method, settings):
    from edgeexit.checkpoint import save_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    meta = {**ck.meta, "train_config": {**ck.meta["train_config"], "method": method,
                                        "method_config": settings}}
    parent = save_checkpoint(tmp_path / "robust.pt", ck.model, classes=ck.classes,
                             input_spec=ck.input_spec, meta=meta)
    result = adapt(parent, _wearer(), dataclasses.replace(CONFIG, loss="parent"),
                   replay=make_separable(n=100, seed=9), out_dir=tmp_path / "a")
    adapted = load_checkpoint(tmp_path / "a" / "model.pt")
    assert adapted.meta["adaptation"]["parent_method"] == method
    assert adapted.meta["train_config"]["method"] == method
    assert not _same(_weights(ck.model), _weights(result.model))


def test_clean_loss_trains_a_robust_parent_with_cross_entropy(tiny_checkpoint, tmp_path):
    from edgeexit.adapt import _train_config
    from edgeexit.checkpoint import save_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    meta = {**ck.meta, "train_config": {**ck.meta["train_config"], "method": "rdi"}}
    parent = load_checkpoint(save_checkpoint(tmp_path / "rdi.pt", ck.model, classes=ck.classes,
                                             input_spec=ck.input_spec, meta=meta))
    assert _train_config(parent, AdaptConfig(loss="parent")).method == "rdi"
    assert _train_config(parent, AdaptConfig()).method == "standard"
    with pytest.raises(ConfigError, match="loss"):
        AdaptConfig(loss="kl")

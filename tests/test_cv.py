"""Leave-records-out cross-validation: folds by record, per-epoch scores, the epoch chosen from the
mean, and `edgeexit train --cv` training the final model for exactly that many epochs."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_separable

from edgeexit.cli import main
from edgeexit.cv import cross_validate
from edgeexit.errors import ConfigError, DataError
from edgeexit.train import TrainConfig, train

CFG = TrainConfig(model="test_resnet1d", epochs=3, batch_size=32, threads=1, seed=0)


@pytest.fixture(scope="module")
def data():
    return make_separable(n=400, seed=3, channels=6)


def test_folds_hold_out_whole_records_and_the_scores_are_the_held_out_ones(data):
    seen = []

    def spy(epoch, logits):
        seen.append((epoch, logits.shape))

    cv = cross_validate(data, CFG, folds=2)
    recs = [set(f) for f in cv.folds]
    assert recs[0].isdisjoint(recs[1]) and recs[0] | recs[1] == set(np.unique(data.groups))
    assert sum(cv.fold_beats) == len(data) and cv.epochs == 3
    assert len(cv.per_fold) == 2 and all(len(f) == 3 and len(f[0]) == 4 for f in cv.per_fold)
    # the chosen epoch maximises the mean over folds of the final exit's score
    curve = cv.curve()
    assert cv.best_epoch == int(np.argmax(np.round(curve, 6))) + 1
    assert curve[cv.best_epoch - 1] == pytest.approx(
        np.mean([f[cv.best_epoch - 1][-1]["score"] for f in cv.per_fold]))
    # a fold's score is that of a model trained without its records, scored on them
    held = np.isin(data.groups, cv.folds[0])
    train(data.subset(np.flatnonzero(~held)), TrainConfig(**{**CFG.to_dict(), "select": "last",
                                                             "patience": 0, "method_config": None}),
          val=data.subset(np.flatnonzero(held)), on_epoch=spy)
    assert [e for e, _ in seen] == [1, 2, 3] and seen[0][1] == (4, int(held.sum()), len(data.classes))
    d = cv.to_dict()
    assert json.loads(json.dumps(d))["best_epoch"] == cv.best_epoch
    assert "(chosen)" in cv.table()


def test_cv_is_deterministic_on_one_machine(data):
    a = cross_validate(data, CFG, folds=2).to_dict()
    b = cross_validate(data, CFG, folds=2).to_dict()
    assert a["per_fold"] == b["per_fold"]


def test_too_few_records_is_a_clear_error(data):
    with pytest.raises(DataError, match="at least 12 records"):
        cross_validate(data, CFG, folds=6)


def test_select_last_keeps_the_last_epoch(data):
    """The model handed back answers as the last epoch's did on the validation beats, not as an
    earlier one's (patience does not stop a run that keeps the last epoch)."""
    from edgeexit.train import predict_exits

    held = np.isin(data.groups, sorted(set(data.groups))[:5])
    part, rest = data.subset(np.flatnonzero(held)), data.subset(np.flatnonzero(~held))
    seen = {}
    cfg = TrainConfig(**{**CFG.to_dict(), "select": "last", "patience": 1, "method_config": None})
    r = train(rest, cfg, val=part, on_epoch=lambda e, z: seen.setdefault(e, z))
    assert r.metrics["best_epoch"] == 3 and len(r.metrics["history"]) == 3 and sorted(seen) == [1, 2, 3]
    kept = predict_exits(r.model, part.x)
    assert np.allclose(kept, seen[3], atol=1e-5)
    assert not np.allclose(kept, seen[2], atol=1e-3)  # epochs do differ: the check can fail
    with pytest.raises(ConfigError, match="best or last"):
        TrainConfig(select="median")


def test_cli_train_cv_chooses_the_epochs_then_trains_for_them(data, tmp_path):
    path = tmp_path / "beats.npz"
    data.save_npz(path)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", str(path), "--model", "test_resnet1d", "--epochs", "3",
                                  "--batch-size", "32", "--threads", "1", "--cv", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    cv = json.loads((out / "cv.json").read_text())
    assert (out / "cv.md").is_file() and "chosen" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_config"]["epochs"] == cv["best_epoch"] and m["train_config"]["select"] == "last"
    assert m["best_epoch"] == cv["best_epoch"] and m["cv"]["best_epoch"] == cv["best_epoch"]
    assert m["train_config"]["schedule_epochs"] == 3  # the folds' schedule, stopped at the chosen epoch


def test_a_model_trained_for_the_chosen_epochs_is_the_one_the_fold_scored(data):
    """schedule_epochs lays the learning rate out as in the folds: stopping at epoch e of a run
    planned for E epochs gives that run's epoch-e model exactly."""
    from edgeexit.train import predict_exits

    held = np.isin(data.groups, sorted(set(data.groups))[:5])
    part, rest = data.subset(np.flatnonzero(held)), data.subset(np.flatnonzero(~held))
    seen = {}
    train(rest, TrainConfig(**{**CFG.to_dict(), "select": "last", "patience": 0, "method_config": None}),
          val=part, on_epoch=lambda e, z: seen.setdefault(e, z))
    short = train(rest, TrainConfig(**{**CFG.to_dict(), "epochs": 2, "schedule_epochs": 3, "select": "last",
                                       "method_config": None}), val=part).model
    assert np.allclose(predict_exits(short, part.x), seen[2], atol=1e-5)

"""The training side's splits (edgeexit.data.splits): export rebuilds training's validation split
from the checkpoint alone, and the folds spread the records rich in rare classes."""

import dataclasses

import numpy as np
import pytest
from conftest import make_separable

from edgeexit.data import ValidationSplit, assign_folds
from edgeexit.errors import ConfigError, DataError
from edgeexit.train import TrainConfig, split_validation


def test_the_recorded_split_is_the_one_training_made():
    data = make_separable(n=400)
    for settings in ({}, {"val_split": "beat", "val_fraction": 0.3, "seed": 5}, {"seed": 2}):
        config = TrainConfig(model="test_resnet1d", **settings)
        trained_on, validated_on = split_validation(data, config)
        rebuilt_train, rebuilt_val = ValidationSplit.recorded(config.to_dict()).apply(data)
        np.testing.assert_array_equal(rebuilt_val.x, validated_on.x)
        np.testing.assert_array_equal(rebuilt_train.y, trained_on.y)
        assert len(rebuilt_train) + len(rebuilt_val) == len(data)


def test_a_checkpoint_without_settings_gets_trainings_defaults():
    defaults = TrainConfig()
    assert ValidationSplit.recorded(None) == ValidationSplit.recorded({}) == ValidationSplit(
        defaults.val_split, defaults.val_fraction, defaults.seed)


def test_record_split_holds_out_whole_records():
    data = make_separable(n=400)
    train_part, val_part = ValidationSplit("record", 0.2, 0).apply(data)
    assert set(train_part.groups).isdisjoint(set(val_part.groups)) and len(val_part)
    with pytest.raises(DataError, match="needs record ids"):
        ValidationSplit("record").apply(dataclasses.replace(data, groups=None))


def test_bad_splits_are_refused():
    with pytest.raises(ConfigError, match="unknown val split"):
        ValidationSplit("patient")
    with pytest.raises(ConfigError, match="val fraction"):
        ValidationSplit(fraction=1.0)
    with pytest.raises(ConfigError, match="unknown val split"):
        TrainConfig(val_split="patient")


def test_folds_spread_the_records_rich_in_rare_classes():
    y = np.array([0, 1, 1, 1, 0, 1, 0, 0])
    g = np.array(["a", "a", "a", "b", "b", "c", "d", "d"])
    # rare beats: a 2, b 1, c 1, d 0 -> order a, b, c, d (ties by name), round robin
    assert assign_folds(y, g, 2) == {"a": 0, "b": 1, "c": 0, "d": 1}
    assert assign_folds(y, g, 3) == {"a": 0, "b": 1, "c": 2, "d": 0}

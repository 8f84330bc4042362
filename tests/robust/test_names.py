"""robust/names.py: the attacks' names, one registry each, read by evaluate, training and the CLI."""

import json

import pytest

from edgeexit.errors import ConfigError
from edgeexit.robust.names import EVAL_ATTACKS, TRAIN_ATTACKS, EvalAttack, TrainAttack


def test_every_evaluation_attack_says_where_it_runs():
    assert list(EVAL_ATTACKS) == list(EvalAttack)
    assert {s.budget for s in EVAL_ATTACKS.values()} <= {"eps", "max_eps", "eta"}
    assert {s.needs for s in EVAL_ATTACKS.values()} <= {None, "train", "bundle", "vae"}
    assert json.dumps([EvalAttack.MAX_AVG, TrainAttack.MAX_AVG]) == '["max_avg", "max-avg"]'


def test_evaluate_and_the_cli_take_the_registry():
    from edgeexit.cli import main
    from edgeexit.robust.evaluate import ATTACKS, EvalConfig

    assert ATTACKS == tuple(a.value for a in EvalAttack)
    option = next(o for o in main.get_command(None, "evaluate").params if o.name == "attacks")
    assert option.default == ",".join(EvalAttack)
    with pytest.raises(ConfigError, match="unknown attack"):
        EvalConfig(attacks=("max_avg", "fgsm"))
    train_option = next(o for o in main.get_command(None, "train").params if o.name == "attack_kind")
    assert list(train_option.type.choices) == [str(a) for a in TRAIN_ATTACKS]


def test_training_attacks_are_checked_and_stay_plain_strings():
    from edgeexit.robust.methods.adversarial import AdversarialConfig

    with pytest.raises(ConfigError, match="choose one of avg, max-avg"):
        AdversarialConfig(attack="max_avg")
    # a config goes into the checkpoint, which loads with weights_only: no enum objects in it
    assert type(AdversarialConfig().attack) is str and AdversarialConfig().attack == TrainAttack.AVG

"""Per-class logit offsets that give a fine-tuned model back its reference's sensitivities."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgeexit.checkpoint import load_checkpoint
from edgeexit.compress.finetune import FinetuneConfig, finetune
from edgeexit.errors import ConfigError
from edgeexit.train import TrainConfig
from edgeexit.training.evaluation import predict_exits
from edgeexit.training.offsets import STEP, fit_offsets, keep_sensitivity, logit_bias, sensitivity
from tests.conftest import make_separable


def _biased(n=2000, against=1, by=1.3, seed=0):
    """Logits of a 4-class problem answered right, then lowered by ``by`` for one class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    z = rng.normal(0.0, 1.0, (n, 4))
    z[np.arange(n), y] += 1.5
    truth = z.copy()
    z[:, against] -= by
    return z, truth, y


def test_offsets_give_a_class_back_its_sensitivity_with_the_smallest_grid_step():
    z, truth, y = _biased()
    want = {1: sensitivity(truth, y, 1)}
    assert sensitivity(z, y, 1) < want[1] - 0.2  # the bias costs the class
    b, short = fit_offsets(z, y, want)
    assert short == [] and b[0] == b[2] == b[3] == 0.0 and b[1] > 0
    assert sensitivity(z, y, 1, b) >= want[1]
    below = b.copy()
    below[1] -= STEP
    assert sensitivity(z, y, 1, below) < want[1]  # one step less falls short: the smallest
    assert b[1] == pytest.approx(1.3, abs=0.3)  # about the bias put in


def test_offsets_skip_absent_classes_and_report_the_unreachable():
    z, truth, y = _biased(against=2, by=9.0)
    b, short = fit_offsets(z, y, {2: 1.01, 3: float("nan")})  # 101%: never reached
    assert short == [2] and b[2] == pytest.approx(4.0) and b[3] == 0.0
    assert fit_offsets(z, y, {})[0].tolist() == [0.0] * 4


def test_the_offsets_cost_at_most_the_accuracy_allowed():
    from edgeexit.training.offsets import _accuracy, _guarded

    rng = np.random.default_rng(1)
    y = np.where(rng.random(3000) < 0.7, 0, rng.integers(1, 4, 3000))  # 70% class 0
    z = rng.normal(0.0, 1.0, (3000, 4))
    z[np.arange(3000), y] += 1.0
    z[:, 1:] -= 0.8  # the fine-tuned model answers class 0 more often
    have = {c: sensitivity(z, y, c) for c in (1, 2, 3)}
    want = {c: 0.99 for c in (1, 2, 3)}  # a reference that found nearly every rare beat
    full, _ = fit_offsets(z, y, want)
    zero = np.zeros(4)
    assert _accuracy(z, y, full) < _accuracy(z, y, zero) - 0.1  # unguarded: class 0 pays
    b, short, share = _guarded(z, y, have, want, 2.0)
    assert 0 < share < 1 and short == [1, 2, 3]
    assert _accuracy(z, y, b) >= _accuracy(z, y, zero) - 0.02
    assert all(sensitivity(z, y, c, b) >= have[c] for c in (1, 2, 3))  # still towards want
    assert _guarded(z, y, have, want, 100.0)[2] == 1.0  # no guard: the full way


def test_classes_already_found_get_no_offset():
    z, truth, y = _biased(by=0.0)
    b, short = fit_offsets(z, y, {c: sensitivity(truth, y, c) for c in range(4)})
    assert b.tolist() == [0.0] * 4 and short == []


def test_keep_sensitivity_folds_the_offsets_into_every_exit_head(tiny_checkpoint):
    ck = load_checkpoint(tiny_checkpoint)
    data = make_separable(n=400, seed=5)
    reference = predict_exits(ck.model, data.x)
    with torch.no_grad():  # "fine-tuning" that gave up class 1 at every exit
        for head in ck.model.exits:
            logit_bias(head, 5)[1] -= 3.0
    before = predict_exits(ck.model, data.x)
    record = keep_sensitivity(ck.model, data.x, data.y, reference, [1], list(ck.classes))
    after = predict_exits(ck.model, data.x)
    assert len(record) == ck.model.num_exits
    name = ck.classes[1]
    for e, r in enumerate(record):
        off = np.asarray(r["offsets"])
        assert np.delete(off, 1).tolist() == [0.0] * 4 and r["short"] == []
        np.testing.assert_allclose(after[e] - before[e], np.broadcast_to(off, after[e].shape),
                                   atol=1e-4)
        assert r["after"][name] >= r["reference"][name] >= r["before"][name]
        if r["reference"][name] > r["before"][name]:  # given back: about the 3 logits taken
            assert 0 < off[1] <= 3.0 + STEP / 2
        else:  # nothing to give back (an exit that never found the class): no offset
            assert off[1] == 0
    assert max(r["offsets"][1] for r in record) >= 2.5


def test_a_head_that_adds_no_bias_last_is_refused(tiny_checkpoint):
    ck = load_checkpoint(tiny_checkpoint)
    with pytest.raises(ConfigError, match="no linear layer with a bias"):
        logit_bias(torch.nn.Sequential(torch.nn.Linear(4, 5, bias=False)), 5)
    model = copy.deepcopy(ck.model)
    model.exits[0] = torch.nn.Sequential(model.exits[0], torch.nn.Tanh())  # bias before tanh
    data = make_separable(n=200, seed=6)
    ref = predict_exits(model, data.x)
    ref[0][:, 2] += 5.0  # the reference finds class 2 everywhere: an offset is needed
    keep = [p.clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match="did not move by the offsets"):
        keep_sensitivity(model, data.x, data.y, ref, [2])
    assert all(torch.equal(a, b) for a, b in zip(keep, model.parameters()))  # undone


def test_keep_sensitivity_settings_are_checked():
    with pytest.raises(ConfigError, match="class names"):
        TrainConfig(keep_sensitivity="S")
    with pytest.raises(ConfigError, match="class names"):
        FinetuneConfig("ctxadv", keep_sensitivity=("S", ""))
    with pytest.raises(ConfigError, match="choose a fine-tuning"):
        FinetuneConfig("none", keep_sensitivity=("S",))
    with pytest.raises(ConfigError, match="points of accuracy"):
        FinetuneConfig("ctxadv", keep_sensitivity=("S",), keep_max_loss=-1)
    cfg = TrainConfig(keep_sensitivity=["S", "V"])
    assert cfg.keep_sensitivity == ("S", "V")
    assert TrainConfig.from_dict(cfg.to_dict()).keep_sensitivity == ("S", "V")


def test_finetuning_keeps_the_reference_sensitivity_and_records_the_offsets(tiny_checkpoint,
                                                                             tmp_path):
    ck = load_checkpoint(tiny_checkpoint)
    data = make_separable(n=400, seed=3)
    name = ck.classes[1]
    reference = copy.deepcopy(ck.model)
    with torch.no_grad():  # the model to fine-tune has given up class 1 at every exit
        for head in ck.model.exits:
            logit_bias(head, 5)[1] -= 4.0
    cfg = FinetuneConfig("standard", epochs=1, lr=1e-5, threads=1, keep_sensitivity=(name,))
    result = finetune(ck.model, data, cfg, meta=ck.meta, out_dir=tmp_path, reference=reference)
    rec = load_checkpoint(result.checkpoint).meta["class_offsets"]
    assert rec["classes"] == [name] and len(rec["exits"]) == ck.model.num_exits
    assert any(r["offsets"][1] > 0 for r in rec["exits"])
    for e, r in zip(result.metrics["exits"], rec["exits"]):
        # the metrics are those of the offset model: its validation sensitivity is the record's
        assert e["val"]["per_class"][name]["sensitivity"] == pytest.approx(r["after"][name],
                                                                           abs=1e-4)
        assert r["after"][name] >= r["reference"][name] or r["short"] == [name]
    bad = FinetuneConfig("standard", epochs=1, threads=1, keep_sensitivity=("X",))
    with pytest.raises(ConfigError, match="not classes of the data"):
        finetune(copy.deepcopy(reference), data, bad, meta=ck.meta)

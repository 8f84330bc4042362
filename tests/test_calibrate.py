"""Threshold calibration: accuracy within the margin of the final exit, at the lowest cost."""

import itertools

import numpy as np
import pytest

from edgeexit.calibrate import CalibrationConfig, calibrate_thresholds
from edgeexit.errors import ConfigError
from edgeexit.runtime.policy import make_policy


def _probs(rng, y, acc, conf):
    """Softmax-like rows: right with probability ``acc``; confident (max ~conf) when right."""
    n, k = len(y), 5
    pred = np.where(rng.random(n) < acc, y, (y + 1) % k)
    p = np.full((n, k), 0.0)
    right = pred == y
    top = np.where(right, conf + 0.1 * rng.random(n), 0.35 + 0.1 * rng.random(n))
    p[np.arange(n), pred] = top
    rest = (1 - top) / (k - 1)
    for j in range(k):
        p[:, j] = np.where(np.arange(k)[j] == pred, p[:, j], rest)
    return p


@pytest.mark.parametrize("policy", ["max_prob", "entropy", "ensemble"])
def test_thresholds_keep_accuracy_and_save_cost(policy):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 4000)
    probs = [_probs(rng, y, a, c) for a, c in [(0.8, 0.8), (0.9, 0.8), (0.95, 0.85), (0.97, 0.85)]]
    cal = calibrate_thresholds(probs, y, [1.0, 1.0, 2.0, 4.0], CalibrationConfig(policy, margin=1.0))
    assert cal.accuracy >= cal.final_accuracy - 0.01
    assert cal.expected_cost < 0.8 * cal.full_cost  # confident early exits are taken
    assert abs(sum(cal.exit_fractions) - 1.0) < 1e-9
    # the stored thresholds, applied by the runtime policy, reproduce the calibrated accuracy
    # (up to samples whose score ties a threshold and is recomputed from logits in float)
    pol = make_policy(policy, 4, cal.thresholds)
    logits = [np.log(p) for p in probs]
    done_at = np.full(len(y), -1)
    answer = np.zeros(len(y), int)
    carry = None
    for k in range(4):
        done, pk, carry = pol.decide(k, logits[k], carry)
        new = done & (done_at < 0)
        done_at[new] = k
        answer[new] = pk[new].argmax(-1)
    assert abs((answer == y).mean() - cal.accuracy) <= 0.001
    # the batch-1 path (plain floats) takes the same exit with the same answer
    for i in range(0, len(y), 97):
        for k in range(4):
            p = pol.step(k, [float(v) for v in logits[k][i]])
            if p is not None:
                break
        assert k == done_at[i] and int(np.argmax(p)) == answer[i]


def test_margin_zero_never_loses_accuracy():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 2000)
    probs = [_probs(rng, y, a, 0.8) for a in (0.7, 0.99)]
    cal = calibrate_thresholds(probs, y, [1.0, 3.0], CalibrationConfig("max_prob", margin=0.0))
    assert cal.accuracy >= cal.final_accuracy


def test_useless_early_exit_is_never_taken():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 2000)
    bad = np.full((2000, 5), 0.2) + 0.0
    bad[np.arange(2000), (y + 1) % 5] = 0.9  # confidently wrong
    good = _probs(rng, y, 1.0, 0.9)
    cal = calibrate_thresholds([bad, good], y, [1.0, 1.0], CalibrationConfig("max_prob", margin=0.5))
    assert cal.exit_fractions[0] <= 0.005 and cal.accuracy >= 0.995


def test_bad_arguments():
    y = np.zeros(3, int)
    p = np.full((3, 2), 0.5)
    with pytest.raises(ConfigError):
        calibrate_thresholds([p], y, [1.0], CalibrationConfig("max_prob"))
    with pytest.raises(ConfigError):
        calibrate_thresholds([p, p], y, [1.0], CalibrationConfig("max_prob"))
    with pytest.raises(ConfigError):
        calibrate_thresholds([p, p], y, [1.0, 1.0], CalibrationConfig("fixed"))


def _records_with_one_hard_patient(seed=3, per=300, records=12):
    """Exit 0 right on every record but one, where it is confidently wrong half the time."""
    rng = np.random.default_rng(seed)
    n = per * records
    y = rng.integers(0, 5, n)
    groups = np.repeat([f"r{i}" for i in range(records)], per)
    early = _probs(rng, y, 0.97, 0.9)
    hard = groups == "r0"
    wrong = hard & (rng.random(n) < 0.5)
    early[wrong] = np.roll(early[wrong], 1, axis=1)  # same confidence, wrong class
    final = _probs(rng, y, 1.0, 0.9)
    return [early, final], y, groups


def test_bound_over_records_is_stricter_than_the_pooled_loss():
    probs, y, groups = _records_with_one_hard_patient()
    pooled = calibrate_thresholds(probs, y, [1.0, 3.0], CalibrationConfig(margin=5.0, confidence=0.0))
    records = calibrate_thresholds(probs, y, [1.0, 3.0], CalibrationConfig(margin=5.0, confidence=0.9),
                                   groups=groups)
    assert pooled.loss_points <= 5.0 and records.loss_bound <= 5.0 + 1e-9
    # the pooled mean lets exit 0 answer almost everything (r0 is 1/12 of the beats) ...
    assert pooled.exit_fractions[0] > 0.9
    # ... the bound over records does not: resamples rich in r0 lose more than the margin
    assert records.exit_fractions[0] < pooled.exit_fractions[0]
    assert records.expected_cost > pooled.expected_cost
    assert records.records == 12 and "bootstrap over records" in records.bound
    lo, hi = records.loss_interval
    assert lo <= records.loss_points <= hi
    assert records.worst_record_loss_points >= records.loss_points
    d = records.to_dict()
    assert d["loss_interval"] == [round(lo, 4), round(hi, 4)] and d["confidence"] == 0.9


def test_no_sample_sits_on_a_threshold():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 1000)
    probs = [_probs(rng, y, a, 0.8) for a in (0.85, 0.95, 0.99)]
    cal = calibrate_thresholds(probs, y, [1.0, 1.0, 1.0], CalibrationConfig(margin=1.0))
    for p, t in zip(probs, cal.thresholds):
        assert np.min(np.abs(p.max(axis=-1) - t)) > 0
    # without record ids the bound is the normal one over beats
    assert cal.records == 0 and "normal bound" in cal.bound
    with pytest.raises(ConfigError, match="record ids"):
        calibrate_thresholds(probs, y, [1.0, 1.0, 1.0], groups=np.zeros(5))
    with pytest.raises(ConfigError, match="confidence"):
        calibrate_thresholds(probs, y, [1.0, 1.0, 1.0], CalibrationConfig(confidence=1.0))


def test_choose_exits_drops_exits_not_worth_their_call():
    from edgeexit.calibrate import choose_exits

    rng = np.random.default_rng(5)
    y = rng.integers(0, 5, 3000)
    useless = np.full((3000, 5), 0.2)  # exit 1 is never confident
    probs = [_probs(rng, y, 0.95, 0.9), useless, _probs(rng, y, 1.0, 0.9)]
    # segments 5 / 4 / 6 us, monolithic 11 us: the chain's excess is 2 us per extra call
    c = choose_exits(probs, y, [5.0, 4.0, 6.0], 11.0, 15.0, margin=1.0)
    assert c["per_call_us"] == 2.0 and c["best"]["exits"] == [0, 2]
    by = {tuple(o["exits"]): o for o in c["options"]}
    assert set(by) == {(2,), (0, 2), (1, 2), (0, 1, 2)}
    assert by[(0, 2)]["expected_us"] < by[(0, 1, 2)]["expected_us"] < by[(2,)]["expected_us"]
    # where no early exit answers enough beats to pay for its call, the monolithic model wins
    weak = [_probs(rng, y, 0.1, 0.9), useless, probs[2]]
    c = choose_exits(weak, y, [5.0, 4.0, 6.0], 11.0, 15.0, margin=1.0)
    assert c["best"]["exits"] == [2] and c["best"]["expected_us"] == 11.0
    # the engine's own time per segment run (decision, check) counts against every early exit
    c = choose_exits(probs, y, [5.0, 4.0, 6.0], 11.0, 15.0, margin=1.0, decision_us=6.0)
    assert c["best"]["exits"] == [2] and c["decision_us"] == 6.0


def test_decision_overhead_from_a_bench_report():
    from edgeexit.calibrate import decision_overhead_us

    bench = {"latency_us": {"segments": [{"mean": 5.0}, {"mean": 4.0}], "policy": {"mean": 9.0}},
             "exit_histogram": [50, 50]}
    # half the windows ran 5 us, half 9 us: 7 us of segments over 1.5 runs; 2 us left over
    assert decision_overhead_us(bench) == pytest.approx(2.0 / 1.5)
    assert decision_overhead_us({}) == 0.0


def _four_exits(seed=0, n=4000):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    return [_probs(rng, y, a, c) for a, c in [(0.8, 0.8), (0.9, 0.8), (0.95, 0.85), (0.97, 0.85)]], y


@pytest.mark.parametrize("policy", ["max_prob", "ensemble"])
def test_budget_gives_the_most_accurate_thresholds_within_it(policy):
    probs, y = _four_exits(n=2000)
    costs = [1.0, 1.0, 2.0, 4.0]
    weights = (1.0, 2.0, 3.0, 4.0) if policy == "ensemble" else None
    curve = []
    for budget in (1.5, 3.0, 5.0, 8.0):
        cal = calibrate_thresholds(probs, y, costs,
                                   CalibrationConfig(policy, budget=budget, weights=weights))
        assert cal.feasible and cal.expected_cost <= budget + 1e-9 and cal.budget == budget
        curve.append(cal.accuracy)
    # more budget never buys less accuracy, and the full cost buys the final exit's accuracy
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(curve))
    assert curve[-1] >= calibrate_thresholds(
        probs, y, costs, CalibrationConfig(policy, budget=8.0)).final_accuracy - 1e-9
    # a budget below segment 0's cost cannot be met: reported, cheapest thresholds kept
    cal = calibrate_thresholds(probs, y, costs,
                               CalibrationConfig(policy, budget=0.5, weights=weights))
    assert not cal.feasible and abs(cal.expected_cost - 1.0) < 0.01
    with pytest.raises(ConfigError, match="budget"):
        calibrate_thresholds(probs, y, costs, CalibrationConfig(policy, budget=-1.0))


def test_budget_beats_the_margin_search_at_equal_cost():
    """At the cost the margin search reached, the budget search is at least as accurate."""
    probs, y = _four_exits(1)
    costs = [1.0, 1.0, 2.0, 4.0]
    by_margin = calibrate_thresholds(probs, y, costs,
                                     CalibrationConfig("max_prob", margin=2.0, confidence=0.0))
    by_budget = calibrate_thresholds(
        probs, y, costs, CalibrationConfig("max_prob", budget=by_margin.expected_cost))
    assert by_budget.expected_cost <= by_margin.expected_cost + 1e-9
    assert by_budget.accuracy >= by_margin.accuracy - 0.002


def test_pareto_curve_is_monotone_and_holds_its_margins():
    from edgeexit.calibrate import pareto_curve

    probs, y = _four_exits(2)
    costs = [1.0, 1.0, 2.0, 4.0]
    pts = pareto_curve(probs, y, costs, "max_prob")
    assert len(pts) >= 3
    cost = [p["expected_cost"] for p in pts]
    acc = [p["accuracy"] for p in pts]
    assert cost == sorted(cost) and all(b > a for a, b in itertools.pairwise(acc))  # no dominated point
    final = float((probs[-1].argmax(1) == y).mean())
    for p in pts:  # every point holds its pooled margin on this data
        assert 100 * (final - p["accuracy"]) <= p["margin"] + 1e-6
        assert abs(sum(p["exit_fractions"]) - 1) < 1e-3
    assert pts[-1]["cost_ratio"] <= 1.0 and pts[0]["cost_ratio"] < 0.5

"""Exit policies: the batch-1 path (plain floats) and the batch path (numpy) decide alike."""

import math

import numpy as np
import pytest

from edgeexit.errors import ConfigError
from edgeexit.runtime.policy import entropy, make_policy, softmax, softmax_list

# needs no torch or onnx: tools/aarch64_check.py runs it on the device install
pytestmark = pytest.mark.device_install

THRESHOLDS = {"max_prob": (0.7, 0.8, 0.9), "entropy": (0.6, 0.4, 0.2), "ensemble": (0.7, 0.75, 0.8)}


def _logits(seed, n=400, k=5, exits=4):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, k)) * rng.uniform(0.5, 4.0, (n, 1))).astype(np.float32)
            for _ in range(exits)]


def _batch(policy, logits):
    n = len(logits[0])
    exit_at, answer = np.full(n, -1), np.zeros((n, logits[0].shape[1]))
    alive, carry = np.arange(n), None
    for k, z in enumerate(logits):
        done, probs, carry = policy.decide(k, z[alive], carry)
        exit_at[alive[done]] = k
        answer[alive[done]] = probs[done]
        alive = alive[~done]
        carry = None if carry is None else carry[~done]
        if not len(alive):
            break
    return exit_at, answer


def _single(policy, logits, i):
    for k, z in enumerate(logits):
        p = policy.step(k, [float(v) for v in z[i]])
        if p is not None:
            return k, np.array(p)
    raise AssertionError("the last exit must decide")


@pytest.mark.parametrize("name", ["max_prob", "entropy", "ensemble", "weighted", "fixed"])
def test_step_and_decide_agree(name):
    logits = _logits(0)
    if name == "weighted":
        policy = make_policy("ensemble", 4, THRESHOLDS["ensemble"], weights=(1, 4, 9, 16))
    else:
        kw = {"exit_index": 2} if name == "fixed" else {"thresholds": THRESHOLDS[name]}
        policy = make_policy(name, 4, **kw)
    exit_at, answer = _batch(policy, logits)
    assert (exit_at >= 0).all()
    for i in range(len(exit_at)):
        k, p = _single(policy, logits, i)
        assert k == exit_at[i]
        np.testing.assert_allclose(p, answer[i], atol=1e-9)
        assert abs(p.sum() - 1) < 1e-9


def test_rules_match_their_definitions():
    logits = _logits(1)
    p = [softmax(z.astype(np.float64)) for z in logits]
    mp = _batch(make_policy("max_prob", 4, THRESHOLDS["max_prob"]), logits)[0]
    ent = _batch(make_policy("entropy", 4, THRESHOLDS["entropy"]), logits)[0]
    ens, ens_ans = _batch(make_policy("ensemble", 4, THRESHOLDS["ensemble"]), logits)
    mean = [np.mean(p[: k + 1], axis=0) for k in range(4)]
    for i in range(len(mp)):
        assert mp[i] == next((k for k in range(3) if p[k][i].max() >= THRESHOLDS["max_prob"][k]), 3)
        assert ent[i] == next((k for k in range(3) if entropy(p[k][i]) <= THRESHOLDS["entropy"][k]), 3)
        k = next((k for k in range(3) if mean[k][i].max() >= THRESHOLDS["ensemble"][k]), 3)
        assert ens[i] == k
        np.testing.assert_allclose(ens_ans[i], mean[k][i], atol=1e-12)  # the running mean


def test_weighted_ensemble_is_the_weighted_running_mean():
    logits = _logits(2)
    w = (1.0, 2.0, 3.0, 4.0)
    exit_at, ans = _batch(make_policy("ensemble", 4, None, weights=w), logits)
    assert (exit_at == 3).all()
    p = [softmax(z.astype(np.float64)) for z in logits]
    np.testing.assert_allclose(ans, sum(wk * pk for wk, pk in zip(w, p)) / sum(w), atol=1e-12)
    assert make_policy("ensemble", 4, None, weights=w).describe()["weights"] == list(w)
    with pytest.raises(ConfigError, match="positive"):
        make_policy("ensemble", 4, None, weights=(1, 0, 1, 1))
    with pytest.raises(ConfigError, match="4 positive"):
        make_policy("ensemble", 4, None, weights=(1, 1))


def test_ensemble_state_restarts_with_each_window():
    pol = make_policy("ensemble", 2, None)  # no thresholds: every exit runs and is averaged
    a = [3.0, 0.0, 0.0]
    b = [0.0, 0.0, 3.0]
    assert pol.step(0, a) is None
    first = pol.step(1, b)
    assert pol.step(0, b) is None
    second = pol.step(1, b)
    np.testing.assert_allclose(first, (np.array(softmax_list(a)) + softmax_list(b)) / 2)
    np.testing.assert_allclose(second, softmax_list(b))


def test_extreme_logits_and_thresholds():
    big = [1e4, -1e4, 0.0]
    assert softmax_list(big) == [1.0, 0.0, 0.0]
    assert make_policy("max_prob", 2, [2.0]).step(0, big) is None  # a threshold > 1: never
    assert make_policy("max_prob", 2, [0.0]).step(0, [0.0, 0.0, 0.0]) is not None  # 0: always
    h = make_policy("entropy", 2, [math.log(3) - 1e-9]).step(0, [0.0, 0.0, 0.0])
    assert h is None  # the uniform distribution's entropy is log 3
    with pytest.raises(ConfigError, match="finite"):
        make_policy("max_prob", 3, [0.5, float("nan")])
    with pytest.raises(ConfigError, match="2 thresholds"):
        make_policy("ensemble", 3, [0.5])


def test_energy_budget_stops_before_the_segment_that_would_overrun():
    costs = [1.0, 2.0, 3.0, 4.0]  # cumulative 1, 3, 6, 10
    logits = _logits(3)
    for limit, want in ((0.5, 0), (2.9, 0), (3.0, 1), (5.99, 1), (6.0, 2), (9.99, 2), (10.0, 3)):
        policy = make_policy("budget", 4, budget={"limit": limit, "unit": "mJ", "segment_costs": costs})
        exit_at, _ = _batch(policy, logits)
        assert (exit_at == want).all(), (limit, want)
        for i in range(0, 400, 37):  # the batch-1 path agrees and answers with that exit's softmax
            k, p = _single(policy, logits, i)
            assert k == want
            np.testing.assert_allclose(p, softmax(logits[want][i].astype(np.float64)), atol=1e-9)


def test_budget_with_thresholds_also_stops_at_a_confident_exit():
    logits = _logits(4)
    t = (0.7, 0.8, 0.9)
    policy = make_policy("budget", 4, t, budget={"limit": 6.0, "unit": "mJ", "segment_costs": [1, 2, 3, 4]})
    exit_at, _ = _batch(policy, logits)
    p0 = softmax(logits[0].astype(np.float64)).max(axis=1)
    p1 = softmax(logits[1].astype(np.float64)).max(axis=1)
    want = np.where(p0 >= 0.7, 0, np.where(p1 >= 0.8, 1, 2))
    np.testing.assert_array_equal(exit_at, want)
    for i in range(0, 400, 23):
        assert _single(policy, logits, i)[0] == want[i]


def test_latency_budget_reads_the_live_clock(monkeypatch):
    import edgeexit.runtime.policy as pol

    now = [0]
    monkeypatch.setattr(pol.time, "perf_counter_ns", lambda: now[0])
    policy = make_policy("budget", 4, budget={"limit": 100.0, "unit": "us", "segment_costs": [10, 20, 30, 40]})
    z = [0.0, 1.0, 2.0]
    policy.begin(0)
    now[0] = 15_000  # 15 us spent: 15 + 20 (segment 1) <= 100, go on
    assert policy.step(0, z) is None
    now[0] = 75_000  # 75 + 30 > 100: stop at exit 1, though the predicted costs (10 + 20) would go on
    assert policy.step(1, z) is not None
    policy.begin(0)
    now[0] = 10_000
    assert policy.step(0, z) is None
    now[0] = 30_000
    assert policy.step(1, z) is None  # 30 + 30 <= 100
    now[0] = 60_000
    assert policy.step(2, z) is None  # 60 + 40 <= 100
    assert policy.step(3, z) is not None  # the last exit always answers


@pytest.mark.parametrize("budget, match", [
    (None, "needs a limit"),
    ({"limit": 0, "unit": "us", "segment_costs": [1, 1, 1, 1]}, "positive"),
    ({"limit": 5, "unit": "W", "segment_costs": [1, 1, 1, 1]}, "unit"),
    ({"limit": 5, "unit": "us", "segment_costs": [1, 1, 1]}, "4 non-negative"),
    ({"limit": 5, "unit": "us", "segment_costs": [1, -1, 1, 1]}, "non-negative"),
])
def test_bad_budgets_are_refused(budget, match):
    with pytest.raises(ConfigError, match=match):
        make_policy("budget", 4, budget=budget)

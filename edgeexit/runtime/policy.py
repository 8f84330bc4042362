"""Exit policies: after each segment, decide which samples stop and what they answer.

Each policy is one small class with two ways to decide:

- ``step(k, z) -> probs | None``, the batch-1 path: ``z`` is exit k's logits as a list of Python
  floats; the result is the answer distribution (a list of floats) when the sample stops at exit
  ``k``, else None. It is ``stop(k, z)`` then ``answer(k, z)``: ``stop`` is the decision alone
  (a bool), ``answer`` the distribution. Where that is the softmax of the exit's logits
  (``answers_softmax``: every policy but ``ensemble``) :meth:`Engine.predict` calls only
  ``stop`` and makes the answer when it is read; ``ensemble`` answers with its running mean,
  so the engine calls its ``step``. It is plain arithmetic on a
  handful of floats: at batch 1 a chain of numpy calls on ``[1, K]`` arrays costs as much as a
  segment's inference (``tools/decision_overhead.py`` measures it). Policies with state
  (``ensemble``'s running sum) start afresh at ``k == 0``, so one policy object serves one stream
  of windows at a time.
- ``decide(k, z, carry) -> (done, probs, carry)``, the batch path of :meth:`Engine.predict_batch`:
  ``z`` is exit k's logits ``[n, K]`` for the samples still running, ``done`` a boolean mask of those
  that stop at ``k``, ``probs`` their answer distribution, and ``carry`` the policy's per-sample
  state (``ensemble``: the running sum of softmaxes; None for the others), which the engine keeps
  for the samples still running (``carry[keep]``).

Both paths compute in float64 and agree up to rounding; the last exit always stops every sample.

- ``max_prob``: exit when the max softmax probability of exit k is >= t_k.
- ``entropy``: exit when the entropy (nats) of exit k's softmax is <= t_k.
- ``ensemble``: early-exit ensemble (Qendro & Mascolo, EMBC 2022): the answer is the average
  softmax of exits 0..k, kept as a running sum; exit when its max is >= t_k. With no thresholds it
  runs every exit.
- ``fixed``: every sample answers at exit ``exit_index``.
- ``budget``: stop before a segment whose predicted cost would take the input past a latency
  (live clock) or energy (predicted per-segment energy) budget, and answer with the deepest exit
  run so far; with thresholds it also stops at a confident exit (as ``max_prob``).
"""

from __future__ import annotations

import time
from math import exp, isfinite, log

import numpy as np

from edgeexit.errors import ConfigError
from edgeexit.runtime.kinds import POLICY_NAMES

POLICIES = POLICY_NAMES  # kinds.PolicyName: the names; make_policy below: the class of each
BUDGET_UNITS = ("us", "mJ")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable, in the input's float dtype."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Row-wise entropy in nats."""
    return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=-1)


def _exp_sum(z: list[float]) -> float:
    """``sum(exp(v - max z))`` (max softmax = its inverse), added left to right as ``sum`` of the
    list does (CPython 3.11), in one loop: no list, no comprehension call."""
    m = max(z)
    s = 0.0
    for v in z:
        s += exp(v - m)
    return s


def softmax_list(z: list[float]) -> list[float]:
    """Softmax of one row of logits given as Python floats (the batch-1 path)."""
    m = max(z)
    e = [exp(v - m) for v in z]
    inv = 1.0 / sum(e)
    return [v * inv for v in e]


class Policy:
    """Base class: subclasses implement :meth:`step` and :meth:`decide`."""

    name = "base"
    begin = None  # a policy that needs the inference's start time sets a method here (budget)

    def __init__(self, num_exits: int) -> None:
        self.num_exits = num_exits
        self._last = num_exits - 1

    def last(self, k: int) -> bool:
        return k >= self._last

    answers_softmax = True  # answer(k, z) is softmax_list(z): a function of exit k's logits alone

    def stop(self, k: int, z: list[float]) -> bool:
        """Whether the sample stops at exit ``k`` (``z``: its logits as Python floats)."""
        raise NotImplementedError

    def answer(self, k: int, z: list[float]) -> list[float]:
        """The answer distribution at exit ``k``, after :meth:`stop` said the sample stops there."""
        return softmax_list(z)

    def step(self, k: int, z: list[float]) -> list[float] | None:
        """:meth:`answer` where :meth:`stop` says the sample stops at exit ``k``, else None."""
        return self.answer(k, z) if self.stop(k, z) else None

    def decide(self, k: int, z: np.ndarray, carry=None) -> tuple[np.ndarray, np.ndarray, object]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name}


class _Thresholded(Policy):
    def __init__(self, num_exits: int, thresholds) -> None:
        super().__init__(num_exits)
        if thresholds is not None:
            thresholds = tuple(float(t) for t in thresholds)
            if len(thresholds) != num_exits - 1:
                raise ConfigError(
                    f"policy {self.name} needs {num_exits - 1} thresholds (one per early exit), "
                    f"got {len(thresholds)}"
                )
            if not all(isfinite(t) for t in thresholds):
                raise ConfigError(f"policy {self.name}: thresholds must be finite, got {list(thresholds)}")
        self.thresholds = thresholds

    def describe(self) -> dict:
        return {"name": self.name, "thresholds": None if self.thresholds is None else list(self.thresholds)}


class MaxProb(_Thresholded):
    """Exit at k when max softmax(logits_k) >= t_k."""

    name = "max_prob"

    def __init__(self, num_exits: int, thresholds) -> None:
        if thresholds is None:
            raise ConfigError("policy max_prob needs thresholds (calibrated at export, or --thresholds)")
        super().__init__(num_exits, thresholds)
        # max softmax = 1 / sum(exp(z - max z)), so "max prob >= t" is "that sum <= 1 / t"
        self._sum_limit = tuple(1.0 / t if t > 0 else float("inf") for t in self.thresholds)

    def stop(self, k, z):
        if k >= self._last:
            return True
        return _exp_sum(z) <= self._sum_limit[k]

    def decide(self, k, z, carry=None):
        probs = softmax(z.astype(np.float64))
        if self.last(k):
            return np.ones(len(probs), bool), probs, None
        return probs.max(axis=-1) >= self.thresholds[k], probs, None


class Entropy(_Thresholded):
    """Exit at k when entropy(softmax(logits_k)) <= t_k (nats)."""

    name = "entropy"

    def __init__(self, num_exits: int, thresholds) -> None:
        if thresholds is None:
            raise ConfigError("policy entropy needs thresholds (calibrated at export, or --thresholds)")
        super().__init__(num_exits, thresholds)

    def stop(self, k, z):
        if k >= self._last:
            return True
        # H = log s - sum(e_i * d_i) / s  (d_i = z_i - max z, e_i = exp(d_i), s = sum e_i): no log
        # of a tiny probability; one loop (a list comprehension is a call of its own in 3.11)
        m = max(z)
        s = t = 0.0
        for v in z:
            d = v - m
            e = exp(d)
            s += e
            t += e * d
        return log(s) - t * (1.0 / s) <= self.thresholds[k]

    def decide(self, k, z, carry=None):
        probs = softmax(z.astype(np.float64))
        if self.last(k):
            return np.ones(len(probs), bool), probs, None
        return entropy(probs) <= self.thresholds[k], probs, None


class Ensemble(_Thresholded):
    """Average softmax of exits 0..k; exit when its max >= t_k (no thresholds: run every exit).

    The average is kept as a running sum of the exits' softmaxes (one add per exit), never
    re-averaged over the list of exits. ``weights`` (one per exit, positive; None: all equal)
    make it a weighted average, ``sum_j w_j p_j / sum_j w_j`` over the exits run so far: weights
    that grow with depth keep the answer close to the final exit's where the early exits are
    weaker (calibration chooses them, :func:`edgeexit.calibrate.calibrate_thresholds`).
    """

    name = "ensemble"

    def __init__(self, num_exits: int, thresholds, weights=None) -> None:
        super().__init__(num_exits, thresholds)
        if weights is not None:
            weights = tuple(float(w) for w in weights)
            if len(weights) != num_exits or not all(isfinite(w) and w > 0 for w in weights):
                raise ConfigError(
                    f"policy ensemble needs {num_exits} positive, finite weights (one per exit), "
                    f"got {list(weights)}"
                )
        self.weights = weights
        w = weights or (1.0,) * num_exits
        self._w = w
        self._wsum = tuple(sum(w[: k + 1]) for k in range(num_exits))
        # mean max >= t_k  <=>  running-sum max >= t_k * (sum of the weights so far)
        t = self.thresholds
        self._sum_limit = None if t is None else tuple(v * self._wsum[k] for k, v in enumerate(t))
        self._acc: list[float] = []

    answers_softmax = False  # the answer is the running mean over the exits run: the engine
    # calls step (the decision and the answer in one call), not stop then answer

    def step(self, k, z):
        m = max(z)
        e = [exp(v - m) for v in z]
        inv = self._w[k] / sum(e)
        if k == 0:
            acc = self._acc = [v * inv for v in e]
        else:
            acc = self._acc = [a + v * inv for a, v in zip(self._acc, e)]
        if k >= self._last or (self._sum_limit is not None and max(acc) >= self._sum_limit[k]):
            n = 1.0 / self._wsum[k]
            return [a * n for a in acc]
        return None

    def stop(self, k, z):
        return self.step(k, z) is not None

    def answer(self, k, z):
        n = 1.0 / self._wsum[k]
        return [a * n for a in self._acc]

    def decide(self, k, z, carry=None):
        p = softmax(z.astype(np.float64)) * self._w[k]
        acc = p if k == 0 or carry is None else carry + p
        probs = acc / self._wsum[k]
        if self.last(k):
            return np.ones(len(probs), bool), probs, acc
        if self.thresholds is None:
            return np.zeros(len(probs), bool), probs, acc
        return probs.max(axis=-1) >= self.thresholds[k], probs, acc

    def describe(self) -> dict:
        d = super().describe()
        if self.weights is not None:
            d["weights"] = list(self.weights)
        return d


class Fixed(Policy):
    """Every sample answers at exit ``exit_index`` (stages after it never run)."""

    name = "fixed"

    def __init__(self, num_exits: int, exit_index: int | None) -> None:
        super().__init__(num_exits)
        if exit_index is None:
            exit_index = num_exits - 1
        if not 0 <= exit_index < num_exits:
            raise ConfigError(f"fixed exit {exit_index} out of range 0..{num_exits - 1}")
        self.exit_index = int(exit_index)

    def stop(self, k, z):
        return k >= self.exit_index

    def decide(self, k, z, carry=None):
        probs = softmax(z.astype(np.float64))
        return np.full(len(probs), k >= self.exit_index, bool), probs, None

    def describe(self) -> dict:
        return {"name": self.name, "exit_index": self.exit_index}


class Budget(Policy):
    """Stop where the next segment would overrun a per-input budget; answer with the deepest exit.

    Args:
        num_exits: segments of the bundle.
        limit: the budget per input, in ``unit``.
        unit: ``us`` (latency: at batch 1 the engine's clock since the input arrived, plus the
            next segment's predicted cost, is compared with the limit, so a slow or loaded device
            stops earlier) or ``mJ`` (energy: the predicted energy of the segments run so far plus
            the next one; no meter reads a single inference).
        costs: the predicted cost of every segment on its own, in ``unit`` (an ``edgeexit
            bench`` report measures them: ``latency_us.segments`` / ``energy.per_segment``).
        thresholds: optional ``max_prob`` thresholds: stop earlier at a confident exit.

    Segment 0 always runs (an input gets an answer even when the budget is below its cost).
    The batch path (:meth:`decide`) compares the predicted costs only, for either unit.
    """

    name = "budget"

    def __init__(self, num_exits: int, limit: float, unit: str, costs, thresholds=None) -> None:
        super().__init__(num_exits)
        if unit not in BUDGET_UNITS:
            raise ConfigError(f"budget unit must be one of {', '.join(BUDGET_UNITS)}, got {unit!r}")
        limit = float(limit)
        if not (isfinite(limit) and limit > 0):
            raise ConfigError(f"the budget must be a positive number of {unit}, got {limit}")
        costs = tuple(float(c) for c in costs)
        if len(costs) != num_exits or not all(isfinite(c) and c >= 0 for c in costs):
            raise ConfigError(f"the budget policy needs {num_exits} non-negative segment costs in "
                              f"{unit} (one per segment), got {list(costs)}")
        if thresholds is not None:
            thresholds = tuple(float(t) for t in thresholds)
            if len(thresholds) != num_exits - 1 or not all(isfinite(t) for t in thresholds):
                raise ConfigError(f"policy budget takes {num_exits - 1} finite thresholds, "
                                  f"got {list(thresholds)}")
        self.limit, self.unit, self.costs, self.thresholds = limit, unit, costs, thresholds
        cum, total = [], 0.0
        for c in costs:
            total += c
            cum.append(total)
        # stop after segment k when the predicted spend through segment k + 1 exceeds the limit
        self._over = tuple(cum[k + 1] > limit for k in range(num_exits - 1)) + (True,)
        self._next_ns = tuple(c * 1e3 for c in costs[1:]) + (0.0,)
        self._limit_ns = limit * 1e3
        self._t0 = 0
        self._clocked = unit == "us"
        if self._clocked:
            self.begin = self._begin

    def _begin(self, t0_ns: int) -> None:
        self._t0 = t0_ns

    def stop(self, k, z):
        if k >= self._last:
            return True
        t = self.thresholds
        if t is not None and 1.0 / _exp_sum(z) >= t[k]:  # max softmax = 1 / sum(exp(z - max z))
            return True
        if self._clocked:
            return not (time.perf_counter_ns() - self._t0 + self._next_ns[k] <= self._limit_ns)
        return self._over[k]

    def decide(self, k, z, carry=None):
        probs = softmax(z.astype(np.float64))
        stop = np.full(len(probs), self.last(k) or self._over[k], bool)
        if self.thresholds is not None and not self.last(k):
            stop |= probs.max(axis=-1) >= self.thresholds[k]
        return stop, probs, None

    def describe(self) -> dict:
        d = {"name": self.name, "limit": self.limit, "unit": self.unit, "segment_costs": list(self.costs)}
        if self.thresholds is not None:
            d["thresholds"] = list(self.thresholds)
        return d


def make_policy(
    name: str, num_exits: int, thresholds=None, exit_index: int | None = None, weights=None,
    budget: dict | None = None,
) -> Policy:
    """Build policy ``name``; raises :class:`ConfigError` for unknown names or bad thresholds.

    ``weights``: the ``ensemble``'s per-exit weights (None: equal); ignored by other policies.
    ``budget``: the ``budget`` policy's ``{"limit", "unit", "segment_costs"}``.
    """
    if name == "budget":
        if not budget or "limit" not in budget or not budget.get("segment_costs"):
            raise ConfigError("policy budget needs a limit (--budget 40us or --budget 0.05mJ) and "
                              "per-segment costs (--costs BENCH.json from `edgeexit bench --json`)")
        return Budget(num_exits, budget["limit"], budget.get("unit", "us"), budget["segment_costs"],
                      thresholds)
    if name == "max_prob":
        return MaxProb(num_exits, thresholds)
    if name == "entropy":
        return Entropy(num_exits, thresholds)
    if name == "ensemble":
        return Ensemble(num_exits, thresholds, weights)
    if name == "fixed":
        return Fixed(num_exits, exit_index)
    raise ConfigError(f"unknown exit policy {name!r}; choose one of: {', '.join(POLICIES)}")


def exit_scores(name: str, probs_per_exit: list[np.ndarray], weights=None) -> list[np.ndarray]:
    """Per exit, the score compared with t_k (exit when score >= t_k).

    Used by threshold calibration. For ``entropy`` the score is the negative entropy, so that every
    policy reads "exit when score >= threshold" (the stored entropy threshold is ``-t``).
    ``weights``: the ensemble's per-exit weights (None: equal).
    """
    if name == "max_prob":
        return [p.max(axis=-1) for p in probs_per_exit]
    if name == "entropy":
        return [-entropy(p) for p in probs_per_exit]
    if name == "ensemble":
        return [p.max(axis=-1) for p in ensemble_probs(probs_per_exit, weights)]
    raise ConfigError(f"policy {name!r} has no thresholds to calibrate")


def ensemble_probs(probs_per_exit: list[np.ndarray], weights=None) -> list[np.ndarray]:
    """Running (weighted) mean of the softmax of exits 0..k, for every k."""
    w = weights or (1.0,) * len(probs_per_exit)
    out, acc, total = [], np.zeros_like(probs_per_exit[0]), 0.0
    for wk, p in zip(w, probs_per_exit):
        acc = acc + wk * p
        total += wk
        out.append(acc / total)
    return out

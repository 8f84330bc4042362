"""Exit-threshold calibration: the cheapest thresholds that keep accuracy near the final exit's.

Given every exit's answer distribution on held-out *validation* data (never test data), find one
threshold per early exit so that the policy's accuracy is at least the final exit's accuracy minus
``margin`` (accuracy points) at the lowest expected cost (mean MACs per inference, counting every
stage and exit head passed). The search is coordinate descent over candidate thresholds (quantiles
of each exit's confidence scores), starting from "never exit early", which is always feasible.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from edgeexit.errors import ConfigError
from edgeexit.runtime.policy import ensemble_probs, exit_scores

log = logging.getLogger(__name__)

NEVER = 2.0  # a score threshold no max-probability or negative entropy reaches


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate_thresholds` (accuracies are fractions, cost in the costs' unit).

    ``thresholds`` are in the policy's own terms (max probability, or entropy in nats for
    ``entropy``); ``exit_fractions`` is the share of validation samples answered at each exit.
    """

    policy: str
    thresholds: tuple[float, ...]
    accuracy: float
    final_accuracy: float
    margin: float
    expected_cost: float
    full_cost: float
    exit_fractions: tuple[float, ...]
    samples: int

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("accuracy", "final_accuracy", "expected_cost", "full_cost"):
            d[k] = round(float(d[k]), 6)
        d["thresholds"] = [round(float(t), 6) for t in self.thresholds]
        d["exit_fractions"] = [round(float(f), 6) for f in self.exit_fractions]
        d["cost_ratio"] = round(self.expected_cost / self.full_cost, 6)
        return d


def _evaluate(scores: np.ndarray, correct: np.ndarray, cum_cost: np.ndarray, t: np.ndarray):
    """Exit taken, accuracy and mean cost for thresholds ``t`` (scores/correct: [N, n_exits])."""
    n, m = scores.shape
    hit = np.concatenate([scores[:, :-1] >= t[None, :], np.ones((n, 1), bool)], axis=1)
    exit_idx = hit.argmax(axis=1)
    acc = correct[np.arange(n), exit_idx].mean()
    return exit_idx, float(acc), float(cum_cost[exit_idx].mean())


def calibrate_thresholds(
    probs_per_exit: list[np.ndarray],
    y: np.ndarray,
    costs: list[float],
    policy: str = "max_prob",
    margin: float = 0.5,
    candidates: int = 200,
    passes: int = 4,
) -> Calibration:
    """Thresholds for ``policy`` that keep accuracy within ``margin`` points of the final exit.

    Args:
        probs_per_exit: softmax of every exit on the validation samples, each ``[N, K]``.
        y: true labels ``[N]``.
        costs: cost of each exit on its own (stage + head, e.g. MACs); a sample leaving at exit k
            pays ``sum(costs[:k + 1])``.
        policy: ``max_prob``, ``entropy`` or ``ensemble``.
        margin: allowed accuracy loss versus the final exit, in percentage points.
        candidates: quantiles of each exit's scores tried as thresholds.
        passes: coordinate-descent sweeps over the exits.
    """
    m = len(probs_per_exit)
    if m < 2:
        raise ConfigError("calibration needs a model with at least two exits")
    if len(costs) != m:
        raise ConfigError(f"calibration needs one cost per exit ({m}), got {len(costs)}")
    if not 0.0 <= margin < 100.0:
        raise ConfigError(f"accuracy margin must lie in [0, 100) points, got {margin}")
    y = np.asarray(y)
    if len(y) == 0:
        raise ConfigError("calibration needs validation samples, got none")
    answers = ensemble_probs(probs_per_exit) if policy == "ensemble" else probs_per_exit
    scores = np.stack(exit_scores(policy, probs_per_exit), axis=1).astype(np.float64)
    correct = np.stack([a.argmax(axis=-1) == y for a in answers], axis=1)
    cum_cost = np.cumsum(np.asarray(costs, np.float64))
    final_acc = float(correct[:, -1].mean())
    target = final_acc - margin / 100.0 - 1e-12

    qs = np.linspace(0.0, 1.0, candidates)
    grids = [np.unique(np.concatenate([np.quantile(scores[:, k], qs), [NEVER]])) for k in range(m - 1)]
    t = np.full(m - 1, NEVER)
    _, best_acc, best_cost = _evaluate(scores, correct, cum_cost, t)
    for _ in range(passes):
        improved = False
        for k in range(m - 1):
            for c in grids[k]:
                trial = t.copy()
                trial[k] = c
                _, acc, cost = _evaluate(scores, correct, cum_cost, trial)
                if acc >= target and (cost < best_cost - 1e-9 or (abs(cost - best_cost) <= 1e-9 and acc > best_acc)):
                    t, best_acc, best_cost, improved = trial, acc, cost, True
        if not improved:
            break
    exit_idx, acc, cost = _evaluate(scores, correct, cum_cost, t)
    fractions = np.bincount(exit_idx, minlength=m) / len(y)
    stored = tuple(float(-v) if policy == "entropy" else float(v) for v in t)
    result = Calibration(
        policy=policy,
        thresholds=stored,
        accuracy=acc,
        final_accuracy=final_acc,
        margin=margin,
        expected_cost=cost,
        full_cost=float(cum_cost[-1]),
        exit_fractions=tuple(float(f) for f in fractions),
        samples=int(len(y)),
    )
    log.info(
        "calibrated %s thresholds %s: accuracy %.2f%% (final exit %.2f%%), cost %.1f%% of all exits",
        policy, [round(v, 4) for v in stored], 100 * acc, 100 * final_acc, 100 * cost / cum_cost[-1],
    )
    return result

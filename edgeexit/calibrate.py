"""Exit-threshold calibration: the cheapest thresholds whose accuracy loss holds across patients.

Given every exit's answer distribution on held-out data (never the training records, never the
test split), find one threshold per early exit at the lowest expected cost (mean MACs, or measured
microseconds, per inference) such that the policy's accuracy loss against the final exit stays
within ``margin`` points **with confidence**, not only on the pooled mean:

- with record (patient) ids, a bootstrap over records: the records are resampled with replacement
  ``bootstrap`` times, and the ``confidence`` quantile of the loss over those resamples must stay
  within the margin. Thresholds that only hold because most beats come from a few easy records
  fail this (with few records the bound is close to the worst record's loss, which is the honest
  answer for few records);
- without record ids, the normal bound on the mean per-beat loss (beats are then taken as
  independent, which overstates the confidence when they come from a few patients: give ids).

The search is coordinate descent over candidate thresholds (midpoints between neighbouring
confidence scores at quantiles of each exit's scores, so that no calibration sample sits exactly on
a threshold), starting from "never exit early", which is always feasible.

:func:`calibrate_bundle` recalibrates a written bundle on a user's own data from the target
population (``edgeexit calibrate``); it needs only the runtime (no torch).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist

import numpy as np

from edgeexit.errors import ConfigError, DataError
from edgeexit.fileio import atomic_write, pack_directory
from edgeexit.metrics import warn_one_class
from edgeexit.runtime.kinds import CALIBRATED_POLICIES
from edgeexit.runtime.policy import ensemble_probs, exit_scores, softmax

log = logging.getLogger(__name__)

NEVER = 2.0  # a score threshold no max-probability or negative entropy reaches
ENSEMBLE_WEIGHT_POWERS = (0, 1, 2, 3)  # weights = (k + 1) ** p tried by weights="auto"


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate_thresholds` (accuracies are fractions, cost in the costs' unit).

    ``thresholds`` are in the policy's own terms (max probability, or entropy in nats for
    ``entropy``); ``exit_fractions`` is the share of calibration samples answered at each exit.
    ``loss_points`` is the pooled accuracy loss versus the final exit (points), ``loss_interval``
    its two-sided ``confidence`` interval and ``loss_bound`` the upper end that was held within
    ``margin``; ``bound`` says how it was computed; ``records`` counts the distinct records (0:
    no record ids); ``worst_record_loss_points`` is the largest loss of any one record;
    ``feasible`` is False when no thresholds hold the bound (then the bound is the smallest found);
    ``weights`` are the ensemble's per-exit weights (None: equal).
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
    loss_points: float = 0.0
    loss_interval: tuple[float, float] = (0.0, 0.0)
    loss_bound: float = 0.0
    confidence: float = 0.9
    bound: str = ""
    records: int = 0
    worst_record_loss_points: float | None = None
    cost_unit: str = "MACs"
    feasible: bool = True
    weights: tuple[float, ...] | None = None
    budget: float | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("accuracy", "final_accuracy", "expected_cost", "full_cost", "loss_points", "loss_bound"):
            d[k] = round(float(d[k]), 6)
        d["thresholds"] = [round(float(t), 6) for t in self.thresholds]
        d["exit_fractions"] = [round(float(f), 6) for f in self.exit_fractions]
        d["loss_interval"] = [round(float(v), 4) for v in self.loss_interval]
        if self.worst_record_loss_points is not None:
            d["worst_record_loss_points"] = round(float(self.worst_record_loss_points), 4)
        d["cost_ratio"] = round(self.expected_cost / self.full_cost, 6)
        d["weights"] = None if self.weights is None else list(self.weights)
        return d


class _LossBound:
    """The accuracy loss (points) of a policy and its confidence interval, fast enough to call for
    every candidate threshold: per-record sums and a fixed matrix of bootstrap weights."""

    def __init__(self, groups, n: int, confidence: float, bootstrap: int, seed: int) -> None:
        self.confidence = confidence
        self.z = NormalDist().inv_cdf(0.5 + confidence / 2)
        if groups is None:
            self.codes, self.weights, self.records = None, None, 0
            self.bound = f"normal bound on the mean per-beat loss ({n} beats, no record ids)"
            return
        names, self.codes = np.unique(np.asarray(groups), return_inverse=True)
        self.records = len(names)
        self.count = np.bincount(self.codes, minlength=self.records).astype(np.float64)
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, self.records, (bootstrap, self.records))
        self.weights = np.stack([np.bincount(d, minlength=self.records) for d in draws]).astype(np.float64)
        self.bound = (f"bootstrap over records ({self.records} records, {bootstrap} resamples), "
                      f"{100 * confidence:g}% interval")

    def __call__(self, d: np.ndarray) -> tuple[float, float, float]:
        """(pooled loss, interval low, interval high) in points for per-sample losses ``d``."""
        mean = float(d.mean())
        if self.codes is None:
            half = self.z * float(d.std(ddof=1)) / np.sqrt(len(d)) if len(d) > 1 else 1.0
            return 100 * mean, 100 * (mean - half), 100 * (mean + half)
        per = np.bincount(self.codes, weights=d, minlength=self.records)
        boot = (self.weights @ per) / (self.weights @ self.count)
        lo, hi = np.quantile(boot, [0.5 - self.confidence / 2, 0.5 + self.confidence / 2])
        return 100 * mean, 100 * float(lo), 100 * float(hi)

    def worst(self, d: np.ndarray) -> float | None:
        if self.codes is None:
            return None
        per = np.bincount(self.codes, weights=d, minlength=self.records)
        return 100 * float((per / np.maximum(self.count, 1)).max())


def _candidates(scores: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` thresholds: midpoints between neighbouring distinct scores at quantiles."""
    u = np.unique(scores)
    if len(u) < 2:
        return np.array([NEVER])
    pos = np.unique(np.linspace(0, len(u) - 2, min(n, len(u) - 1)).round().astype(int))
    return np.concatenate([(u[pos] + u[pos + 1]) / 2, [NEVER]])


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """What :func:`calibrate_thresholds` holds and how it searches (see the module docstring).

    Attributes:
        policy: ``max_prob``, ``entropy`` or ``ensemble``.
        margin: allowed accuracy loss versus the final exit, in percentage points.
        confidence: two-sided level of the loss interval (its upper end is held within margin;
            0 holds the pooled loss itself).
        bootstrap: resamples of the records.
        candidates: thresholds tried per exit.
        passes: coordinate-descent sweeps over the exits.
        seed: seeds the bootstrap.
        weights: ``ensemble`` only: per-exit weights of its running mean (None: equal), or
            ``"auto"``: try equal weights and weights growing as ``(k + 1) ** p`` for p = 1, 2, 3
            and keep the cheapest whose bound holds (the first that comes closest, if none does):
            where the early exits are weaker, an equal average loses to the final exit itself.
            ``"auto"`` with another policy means None.
        budget: instead of the cheapest thresholds within ``margin``, the most accurate ones
            whose expected cost per inference stays within ``budget`` (in the costs' unit);
            ``feasible`` says whether the budget was met (with ``weights="auto"``: the most
            accurate of the weightings that meet it). The loss bound is reported, not held.

    Example:
        >>> CalibrationConfig("entropy", margin=1.0).confidence
        0.9
    """

    policy: str = "max_prob"
    margin: float = 0.5
    confidence: float = 0.9
    bootstrap: int = 200
    candidates: int = 200
    passes: int = 4
    seed: int = 0
    weights: tuple[float, ...] | str | None = None
    budget: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 100.0:
            raise ConfigError(f"accuracy margin must lie in [0, 100) points, got {self.margin}")
        if not 0.0 <= self.confidence < 1.0:
            raise ConfigError(f"confidence must lie in [0, 1), got {self.confidence}")
        if self.budget is not None and not (np.isfinite(self.budget) and self.budget > 0):
            raise ConfigError(f"the cost budget must be a positive number, got {self.budget}")
        if self.policy not in CALIBRATED_POLICIES:
            raise ConfigError(f"policy {self.policy!r} has no thresholds to calibrate; choose "
                              f"{', '.join(CALIBRATED_POLICIES)}")
        if isinstance(self.weights, str) and self.weights != "auto":
            raise ConfigError(f"ensemble weights must be 'auto', None or numbers, got {self.weights!r}")
        if self.weights is not None and not isinstance(self.weights, str):
            if self.policy != "ensemble":
                raise ConfigError(f"only the ensemble policy has weights, not {self.policy}")
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))


def calibrate_thresholds(
    probs_per_exit: list[np.ndarray],
    y: np.ndarray,
    costs: list[float],
    config: CalibrationConfig = CalibrationConfig(),
    groups: np.ndarray | None = None,
    cost_unit: str = "MACs",
) -> Calibration:
    """Thresholds for ``config.policy`` whose accuracy loss versus the final exit stays within
    ``config.margin`` points at the upper end of its ``config.confidence`` interval (see the
    module docstring), or the most accurate within ``config.budget``.

    Args:
        probs_per_exit: softmax of every exit on the calibration samples, each ``[N, K]``.
        y: true labels ``[N]``.
        costs: cost of each exit on its own (stage + head: MACs, or measured microseconds); a
            sample leaving at exit k pays ``sum(costs[:k + 1])``.
        config: the policy, margin or budget, and the search's settings.
        groups: record (patient) id of every sample, for the bootstrap over records; None: the
            normal bound over samples.
        cost_unit: what ``costs`` measure (recorded).

    Example:
        >>> cal = calibrate_thresholds(probs, y, [1.0, 1.0, 2.0], CalibrationConfig(margin=1.0))
        >>> cal.thresholds, cal.expected_cost / cal.full_cost
    """
    if config.weights == "auto":
        if config.policy == "ensemble":
            return _best_weighting(probs_per_exit, y, costs, config, groups, cost_unit)
        config = dataclasses.replace(config, weights=None)
    search = _ThresholdSearch(probs_per_exit, y, costs, config, groups)
    grids = [_candidates(search.scores[:, k], config.candidates) for k in range(search.m - 1)]
    if config.budget is None:
        t, best_excess = _cheapest_within_margin(search.evaluate, search.excess, grids,
                                                 config.passes, search.m)
        return search.result(t, best_excess == 0, cost_unit)
    pooled = dataclasses.replace(config, confidence=0.0, budget=None, bootstrap=200, seed=0)
    t = _most_accurate_within_budget(
        search.evaluate, grids, config.passes, config.budget, search.worst_loss_points(),
        lambda mg: calibrate_thresholds(probs_per_exit, y, costs,
                                        dataclasses.replace(pooled, margin=mg), cost_unit=cost_unit))
    _, _, cost = search.evaluate(t)
    return search.result(t, cost <= config.budget * (1 + 1e-9), cost_unit)


def _best_weighting(probs_per_exit, y, costs, config: CalibrationConfig, groups,
                    cost_unit: str) -> Calibration:
    """``weights="auto"``: calibrate with equal weights and with weights ``(k + 1) ** p``; keep
    the cheapest feasible one (with a budget: the most accurate within it)."""
    m = len(probs_per_exit)
    tried = []
    for p in ENSEMBLE_WEIGHT_POWERS:
        w = None if p == 0 else tuple(float((k + 1) ** p) for k in range(m))
        tried.append(calibrate_thresholds(probs_per_exit, y, costs,
                                          dataclasses.replace(config, weights=w), groups, cost_unit))
    feasible = [c for c in tried if c.feasible]
    if config.budget is not None:  # the most accurate weighting within the budget
        if feasible:
            return max(feasible, key=lambda c: (c.accuracy, -c.expected_cost))
        return min(tried, key=lambda c: c.expected_cost)
    if feasible:
        return min(feasible, key=lambda c: c.expected_cost)  # min keeps the first of ties
    return min(tried, key=lambda c: c.loss_bound)


class _ThresholdSearch:
    """The calibration samples as the search sees them: every exit's score and correctness, the
    final exit's correctness (the reference), the cumulative costs and the loss bound."""

    def __init__(self, probs_per_exit, y, costs, config: CalibrationConfig, groups) -> None:
        m = len(probs_per_exit)
        if m < 2:
            raise ConfigError("calibration needs a model with at least two exits")
        if len(costs) != m:
            raise ConfigError(f"calibration needs one cost per exit ({m}), got {len(costs)}")
        y = np.asarray(y)
        n = len(y)
        if n == 0:
            raise ConfigError("calibration needs samples, got none")
        if groups is not None and len(groups) != n:
            raise ConfigError(f"{len(groups)} record ids given for {n} samples")
        weights = config.weights
        if weights is not None and (len(weights) != m or not all(np.isfinite(weights))
                                    or min(weights) <= 0):
            raise ConfigError(f"ensemble weights must be {m} positive numbers, got {list(weights)}")
        policy = config.policy
        answers = ensemble_probs(probs_per_exit, weights) if policy == "ensemble" else probs_per_exit
        self.config, self.m, self.n = config, m, n
        self.scores = np.stack(exit_scores(policy, probs_per_exit, weights), axis=1).astype(np.float64)
        self.correct = np.stack([a.argmax(axis=-1) == y for a in answers], axis=1).astype(np.float64)
        # an ensemble's last answer is the mean of all exits; the reference is the final exit itself
        self.final = (probs_per_exit[-1].argmax(axis=-1) == y).astype(np.float64)
        self.cum_cost = np.cumsum(np.asarray(costs, np.float64))
        self.bound = _LossBound(groups, n, config.confidence, config.bootstrap, config.seed)
        self.rows = np.arange(n)

    def evaluate(self, t):
        """(exit per sample, loss per sample, mean cost) under the thresholds ``t``."""
        n = self.n
        hit = np.concatenate([self.scores[:, :-1] >= t[None, :], np.ones((n, 1), bool)], axis=1)
        idx = hit.argmax(axis=1)
        d = self.final - self.correct[self.rows, idx]
        return idx, d, float(self.cum_cost[idx].mean())

    def excess(self, d):
        """How far the loss bound lies beyond the margin (0: feasible)."""
        pooled, lo, hi = self.bound(d)
        return max(0.0, (hi if self.config.confidence > 0 else pooled) - self.config.margin - 1e-9)

    def worst_loss_points(self) -> float:
        """The pooled loss (points) of the weakest exit answering everything, plus a hair."""
        return 100 * max(0.0, float(self.final.mean() - self.correct.mean(axis=0).min())) + 0.01

    def result(self, t, feasible: bool, cost_unit: str) -> Calibration:
        """The :class:`Calibration` of thresholds ``t`` (in score terms), logged."""
        config, bound, n, m = self.config, self.bound, self.n, self.m
        policy, margin, confidence, budget = (config.policy, config.margin, config.confidence,
                                              config.budget)
        exit_idx, d, cost = self.evaluate(t)
        pooled, lo, hi = bound(d)
        if budget is not None and not feasible:
            log.warning("no %s thresholds meet the cost budget %g (cheapest found: %g)", policy,
                        budget, cost)
        elif budget is None and not feasible:
            log.warning(
                "no %s thresholds keep the accuracy loss within %.2f points (best bound %.2f "
                "points): the policy's answer at the last exit loses to the final exit itself; use "
                "max_prob", policy, margin, hi if confidence > 0 else pooled,
            )
        fractions = np.bincount(exit_idx, minlength=m) / n
        stored = tuple(float(-v) if policy == "entropy" else float(v) for v in t)
        result = Calibration(
            policy=policy,
            thresholds=stored,
            accuracy=float(self.correct[self.rows, exit_idx].mean()),
            final_accuracy=float(self.final.mean()),
            margin=margin,
            expected_cost=cost,
            full_cost=float(self.cum_cost[-1]),
            exit_fractions=tuple(float(f) for f in fractions),
            samples=int(n),
            loss_points=pooled,
            loss_interval=(lo, hi),
            loss_bound=hi if confidence > 0 else pooled,
            confidence=confidence,
            bound=bound.bound,
            records=bound.records,
            worst_record_loss_points=bound.worst(d),
            cost_unit=cost_unit,
            feasible=feasible,
            weights=config.weights,
            budget=None if budget is None else float(budget),
        )
        log.info(
            "calibrated %s thresholds %s: accuracy %.2f%% (final exit %.2f%%), loss %.2f points "
            "(interval %.2f..%.2f, %s), cost %.1f%% of all exits",
            policy, [round(v, 4) for v in stored], 100 * result.accuracy,
            100 * result.final_accuracy, pooled, lo, hi, bound.bound,
            100 * cost / self.cum_cost[-1],
        )
        return result


def _coordinate_descent(t: np.ndarray, grids, passes: int, accept) -> np.ndarray:
    """Coordinate descent over the candidate thresholds: for each early exit in turn, every
    candidate with the other thresholds fixed; ``accept(trial)`` says whether ``trial`` improves
    on the best so far (and records it as the best). Stops after ``passes`` sweeps, or after a
    sweep that changed nothing; returns the best thresholds."""
    for _ in range(passes):
        improved = False
        for k in range(len(t)):
            for c in grids[k]:
                if c == t[k]:
                    continue
                trial = t.copy()
                trial[k] = c
                if accept(trial):
                    t, improved = trial, True
        if not improved:
            break
    return t


def _cheapest_within_margin(evaluate, excess, grids, passes: int, m: int) -> tuple[np.ndarray, float]:
    """The margin search of :func:`calibrate_thresholds`: from "never exit early", the cheapest
    thresholds whose loss bound holds; returns them and the bound's excess (0: it holds)."""
    t = np.full(m - 1, NEVER)
    _, d, cost = evaluate(t)
    best = {"cost": cost, "loss": float(d.mean()), "excess": excess(d)}

    # "never exit early" is feasible unless the policy's own answer at the last exit is worse than
    # the final exit's (an ensemble of weak exits): then the bound's excess is minimised first
    def accept(trial) -> bool:
        _, d, cost = evaluate(trial)
        loss = float(d.mean())
        if best["excess"] > 0:
            ex = excess(d)
            better = ex < best["excess"] - 1e-9 or (abs(ex - best["excess"]) <= 1e-9
                                                    and cost < best["cost"] - 1e-9)
        else:
            better = cost < best["cost"] - 1e-9 or (abs(cost - best["cost"]) <= 1e-9
                                                    and loss < best["loss"])
            ex = excess(d) if better else 1.0  # the bound (a bootstrap) only where it matters
            better = better and ex == 0
        if better:
            best.update(cost=cost, loss=loss, excess=ex)
        return better

    t = _coordinate_descent(t, grids, passes, accept)
    return t, best["excess"]


def _most_accurate_within_budget(evaluate, grids, passes: int, budget: float, worst: float,
                                 at_margin) -> np.ndarray:
    """The budget search of :func:`calibrate_thresholds`.

    A bisection on the pooled-loss margin (``at_margin(margin)``: the margin search's
    calibration, up to ``worst`` points) finds the smallest margin whose cheapest thresholds fit
    the budget (the margin search is what finds good trade-offs; a greedy descent on the budget
    alone sends everything out at exit 0 first and stays there); coordinate descent on (cost
    beyond the budget, pooled loss, cost), compared in that order, then refines it."""
    lo, hi = 0.0, min(worst, 99.99)
    if at_margin(0.0).expected_cost <= budget:
        hi = 0.0
    for _ in range(12 if hi > 0 else 0):
        mid = (lo + hi) / 2
        if at_margin(mid).expected_cost <= budget:
            hi = mid
        else:
            lo = mid
    found = at_margin(hi)
    t = np.asarray(found.thresholds, np.float64)
    if found.policy == "entropy":
        t = -t  # stored as entropies; the search compares negative entropies

    def key(tt):
        _, d, cost = evaluate(tt)
        return (max(0.0, cost - budget), float(d.mean()), cost)

    best = [key(t)]

    def accept(trial) -> bool:
        k = key(trial)
        if k < best[0]:
            best[0] = k
            return True
        return False

    return _coordinate_descent(t, grids, passes, accept)


PARETO_MARGINS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0)


def pareto_curve(probs_per_exit: list[np.ndarray], y: np.ndarray, costs: list[float],
                 policy: str = "max_prob", weights=None, margins=PARETO_MARGINS,
                 candidates: int = 100) -> list[dict]:
    """The accuracy/cost trade-off on the calibration data: for every accuracy-loss margin in
    ``margins`` (points, on the pooled loss, no bound), the cheapest thresholds; dominated points
    are dropped. Each point: ``margin``, ``accuracy``, ``expected_cost``, ``cost_ratio``,
    ``thresholds``, ``exit_fractions``. Sorted by cost."""
    pts = []
    for mg in margins:
        c = calibrate_thresholds(probs_per_exit, y, costs,
                                 CalibrationConfig(policy, mg, confidence=0.0,
                                                   candidates=candidates, passes=3, weights=weights))
        pts.append({"margin": mg, "accuracy": round(c.accuracy, 6),
                    "expected_cost": round(c.expected_cost, 8),
                    "cost_ratio": round(c.expected_cost / c.full_cost, 6),
                    "thresholds": [round(t, 6) for t in c.thresholds],
                    "exit_fractions": [round(f, 4) for f in c.exit_fractions]})
    front, best = [], -1.0
    for p in sorted(pts, key=lambda p: (p["expected_cost"], -p["accuracy"])):
        if p["accuracy"] > best + 1e-12:  # more accurate than every cheaper point
            front.append(p)
            best = p["accuracy"]
    return front


def plot_pareto(pareto: list[dict], chosen: dict, unit: str, path: str | os.PathLike) -> Path | None:
    """A PNG of the calibration's accuracy/cost curve with the chosen thresholds marked (host side:
    None without matplotlib)."""
    from edgeexit.plots import pyplot, save_png

    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot([p["expected_cost"] for p in pareto], [100 * p["accuracy"] for p in pareto], "-o", ms=4,
            label="cheapest thresholds for each loss margin (calibration data)")
    for p in pareto:
        ax.annotate(f"{p['margin']:g}", (p["expected_cost"], 100 * p["accuracy"]), fontsize=6,
                    xytext=(3, -8), textcoords="offset points")
    ax.plot([chosen["expected_cost"]], [100 * chosen["accuracy"]], "*", ms=14, color="tab:red",
            label="written into the bundle")
    ax.set_xlabel(f"expected cost per inference, {unit}")
    ax.set_ylabel("accuracy, % (calibration data)")
    ax.set_title("accuracy vs cost of the exit thresholds (labels: loss margin, points)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_png(fig, path)


# -- recalibrating a bundle -------------------------------------------------------------------


COSTS = ("latency", "energy")


def segment_costs(manifest, bench: dict | None = None, cost: str = "latency") -> tuple[list[float], str]:
    """Per-segment costs for calibration: from a ``bench`` JSON report when given, its measured
    mean microseconds (``cost="latency"``: ``latency_us.segments``) or its energy above idle
    (``cost="energy"``: ``energy.per_segment_mj.above_idle``, in mJ); else the manifest's MACs."""
    if cost not in COSTS:
        raise ConfigError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
    if bench is None:
        if cost == "energy":
            raise ConfigError("calibrating for energy needs a bench report with energy: "
                              "`edgeexit bench BUNDLE --meter auto --json > bench.json`, then --bench")
        return [float(s.macs) for s in manifest.segments], "MACs"
    from edgeexit.runtime.profile import bench_segment_costs

    if cost == "energy":
        costs = bench_segment_costs(bench, "mJ", manifest.num_exits)
        if sum(costs) <= 0:
            raise ConfigError("the bench report's per-segment energy is all zero: bench longer "
                              "(--energy-seconds) or with another meter")
        kind = "measured" if bench["energy"].get("kind") == "measured" else "estimated"
        return costs, f"mJ above idle ({kind} by edgeexit bench, meter {bench['energy'].get('meter')})"
    return bench_segment_costs(bench, "us", manifest.num_exits), "us (measured by edgeexit bench)"


def choose_exits(
    probs_per_exit: list[np.ndarray],
    y: np.ndarray,
    segment_us: list[float],
    monolithic_us: float,
    all_exits_us: float,
    policy: str = "max_prob",
    margin: float = 0.5,
    groups: np.ndarray | None = None,
    confidence: float = 0.9,
    weights=None,
    decision_us: float = 0.0,
) -> dict:
    """Which early exits are worth their call, from latencies measured by ``edgeexit bench``.

    Every subset of the early exits (the final exit always kept; none at all = the monolithic
    model) is calibrated with :func:`calibrate_thresholds` under the same bound, costing each
    deployed segment as the measured segments it would merge, less a fixed cost per call it saves:
    ``(all_exits_us - monolithic_us) / (segments - 1)``, the chain's measured excess per extra
    call (boundaries, the interpreter's invoke, the early head), plus ``decision_us`` per segment
    run (the engine's own time on the early-exit path: input check, decision, result; see
    :func:`decision_overhead_us`). These merged costs are estimates: re-export with the chosen
    ``--exits`` and bench to measure them.

    Returns ``{"per_call_us", "options": [...], "best": {...}}``, options sorted by expected
    microseconds; each has ``exits`` (segment positions), ``expected_us``, ``thresholds``,
    ``feasible``.
    """
    m = len(probs_per_exit)
    if len(segment_us) != m:
        raise ConfigError(f"{len(segment_us)} segment latencies for {m} segments")
    per_call = max(0.0, (float(all_exits_us) - float(monolithic_us)) / max(m - 1, 1))
    options = []
    for mask in range(2 ** (m - 1)):
        kept = [k for k in range(m - 1) if mask >> k & 1] + [m - 1]
        if len(kept) == 1:
            options.append({"exits": kept, "expected_us": round(float(monolithic_us), 3),
                            "thresholds": [], "feasible": True, "loss_points": 0.0,
                            "note": "no early exit: the monolithic model"})
            continue
        costs, prev = [], -1
        for e in kept:
            costs.append(float(sum(segment_us[prev + 1 : e + 1])) - (e - prev - 1) * per_call
                         + decision_us)
            prev = e
        kept_weights = (weights if weights == "auto" or weights is None else
                        tuple(weights[k] for k in kept))
        cal = calibrate_thresholds([probs_per_exit[k] for k in kept], y, costs,
                                   CalibrationConfig(policy, margin, confidence=confidence,
                                                     weights=kept_weights),
                                   groups=groups, cost_unit="us (estimated)")
        options.append({"exits": kept, "expected_us": round(cal.expected_cost, 3),
                        "thresholds": [round(t, 6) for t in cal.thresholds],
                        "feasible": cal.feasible, "loss_points": round(cal.loss_points, 4),
                        "exit_fractions": [round(f, 4) for f in cal.exit_fractions]})
    options.sort(key=lambda o: (not o["feasible"], o["expected_us"]))
    return {"per_call_us": round(per_call, 3), "decision_us": round(float(decision_us), 3),
            "monolithic_us": round(float(monolithic_us), 3),
            "options": options, "best": options[0],
            "note": "merged-segment latencies are estimated from the measured segments"}


def decision_overhead_us(bench: dict) -> float:
    """The engine's own time per segment run on the early-exit path, from a ``bench`` report: the
    policy path's mean latency less the measured segments it ran (by its exit histogram), per
    segment run (0 when the report lacks the fields)."""
    try:
        seg = np.array([float(s["mean"]) for s in bench["latency_us"]["segments"]])
        hist = np.array(bench["exit_histogram"], np.float64)
        policy = float(bench["latency_us"]["policy"]["mean"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    if hist.sum() <= 0 or len(hist) != len(seg):
        return 0.0
    f = hist / hist.sum()
    runs = float((f * np.arange(1, len(f) + 1)).sum())
    return max(0.0, (policy - float((f * np.cumsum(seg)).sum())) / runs)


def _without_history(policy: dict) -> dict:
    """A policy record with its own ``previous`` dropped: one step of history, not a chain."""
    cal = policy.get("calibration")
    if isinstance(cal, dict) and "previous" in cal:
        policy = {**policy, "calibration": {k: v for k, v in cal.items() if k != "previous"}}
    return policy


@dataclasses.dataclass(frozen=True)
class BundleCalibrationConfig:
    """Options of :func:`calibrate_bundle`.

    Attributes:
        policy: ``max_prob``, ``entropy`` or ``ensemble``; None = the bundle's policy.
        margin, confidence: see :class:`CalibrationConfig`.
        weights: the ensemble's weights: ``auto`` (calibration chooses), None (equal) or a tuple.
        cost: with a ``bench`` report: minimise its measured ``latency`` or ``energy`` (above
            idle) per segment.
        budget: maximise accuracy with the expected cost per inference within this (in the
            costs' unit: us, mJ, or MACs without ``bench``) instead of holding ``margin``.
        backend: the backend whose files are run (``auto``: the target's preferred format).
        dry_run: compute and report, write nothing.
        pareto_plot: also write the accuracy/cost curve of the calibration data as this PNG.

    Example:
        >>> BundleCalibrationConfig(policy="entropy", margin=1.0, dry_run=True).cost
        'latency'
    """

    policy: str | None = None
    margin: float = 0.5
    confidence: float = 0.9
    weights: tuple[float, ...] | str | None = "auto"
    cost: str = "latency"
    budget: float | None = None
    backend: str = "auto"
    dry_run: bool = False
    pareto_plot: str | os.PathLike | None = None


def calibrate_bundle(
    bundle: str | os.PathLike,
    x: np.ndarray | None,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    config: BundleCalibrationConfig = BundleCalibrationConfig(),
    bench: dict | None = None,
    probs: list[np.ndarray] | None = None,
    source: str = "",
    provenance: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Recalibrate the thresholds of ``bundle`` on labelled windows ``x``/``y`` (e.g. the user's own
    records from the target population) with the bundle's own files, and write them into its
    manifest (atomically; ``BUNDLE.tar.gz`` beside it is packed again). Returns the report.

    Args:
        bundle: the bundle directory.
        x, y: windows ``[N, *input_shape]`` (float32, mV) and labels (class indices of the bundle).
        groups: record id per window (for the bootstrap over records), or None.
        config: the policy, margin or budget, the cost, the backend and what to write.
        bench: a ``bench --json`` report: calibrate against its measured per-segment latency.
        probs: every exit's softmax on the samples, computed elsewhere (cross-fitted models,
            :mod:`edgeexit.crossfit`), instead of running ``x`` through the bundle (``x`` None).
        source: where the windows came from (recorded in the manifest).
        provenance: recorded with the calibration (e.g. the cross-fit's folds).
        progress: called with ``(done, total)`` windows.

    The calibration record in the manifest keeps the per-segment costs (``segment_costs``, which
    the ``budget`` policy can use) and the accuracy/cost Pareto curve (``pareto``).

    Example:
        >>> r = calibrate_bundle("bundle", x, y, groups, BundleCalibrationConfig(margin=1.0))
        >>> r["policy"]["thresholds"]
    """
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.manifest import MANIFEST

    root = Path(bundle)
    engine = Engine.from_bundle(root, backend=config.backend, threads=1, policy="fixed")
    manifest = engine.manifest
    name = config.policy or manifest.policy.name
    if name not in CALIBRATED_POLICIES:
        raise ConfigError(f"policy {name!r} has no thresholds to calibrate; give --policy "
                          f"{'|'.join(CALIBRATED_POLICIES)}")
    y = np.asarray(y)
    warn_one_class(y, "calibration")
    probs = _bundle_probs(engine, x, y, probs, progress)
    costs, unit = segment_costs(manifest, bench, config.cost)
    cal = calibrate_thresholds(probs, y, costs,
                               CalibrationConfig(name, config.margin, confidence=config.confidence,
                                                 weights=config.weights, budget=config.budget),
                               groups=groups, cost_unit=unit)
    pareto = pareto_curve(probs, y, costs, name, weights=cal.weights)
    spec = _calibrated_policy(engine, cal, costs, pareto, bench, config, source, provenance)
    report = {"bundle": str(root), "backend": engine.backend, "policy": spec.to_dict(),
              "written": not config.dry_run}
    if config.pareto_plot is not None:
        kind = next((k for k in ("estimated", "measured") if k in unit), "")
        label = unit.split(" (")[0] + (f" ({kind})" if kind else "")
        png = plot_pareto(pareto, cal.to_dict(), label, config.pareto_plot)
        report["pareto_plot"] = None if png is None else str(png)
    if bench is not None and config.cost == "latency" and manifest.num_exits > 1:
        choice = _exit_choice(manifest, probs, y, groups, costs, bench, name, config)
        if choice is not None:
            report["exit_choice"] = choice
    if config.dry_run:
        return report
    report.update(_write_policy(root, manifest, spec))
    log.info("wrote %s thresholds %s into %s", name, list(spec.thresholds), root / MANIFEST)
    return report


def _bundle_probs(engine, x, y: np.ndarray, probs, progress) -> list[np.ndarray]:
    """Every exit's softmax on the windows ``x``, run through the bundle's own files in chunks
    (or ``probs`` given, checked against the bundle); labels checked against its classes."""
    manifest = engine.manifest
    if len(y) and (y.min() < 0 or y.max() >= len(manifest.classes)):
        raise DataError(f"labels must be class indices 0..{len(manifest.classes) - 1} of the bundle's "
                        f"classes {list(manifest.classes)}")
    if probs is not None:
        if len(probs) != manifest.num_exits or any(len(p) != len(y) for p in probs):
            raise DataError(f"give {manifest.num_exits} probability arrays of {len(y)} rows (one "
                            "per segment of the bundle)")
        return probs
    x = engine.check_input(np.asarray(x), batch=True)
    if len(x) != len(y):
        raise DataError(f"{len(x)} windows but {len(y)} labels")
    chunks, step = [], 512
    for i in range(0, len(x), step):
        chunks.append(engine.run_all(x[i : i + step])[0])
        if progress:
            progress(min(i + step, len(x)), len(x))
    return [softmax(np.concatenate([c[k] for c in chunks]).astype(np.float64))
            for k in range(manifest.num_exits)]


def _calibrated_policy(engine, cal: Calibration, costs, pareto, bench, config, source, provenance):
    """The bundle's new policy record: thresholds, weights and where they came from (the
    previous policy kept one step back)."""
    from edgeexit.runtime.backends import get_backend
    from edgeexit.runtime.manifest import CalibrationRecord, PolicySpec

    short = "MACs" if bench is None else ("mJ" if config.cost == "energy" else "us")
    return PolicySpec(
        name=cal.policy,
        thresholds=tuple(round(t, 6) for t in cal.thresholds),
        weights=cal.weights,
        calibration=CalibrationRecord.from_dict({
            **cal.to_dict(), "data": source, "split": "given to edgeexit calibrate",
            **(provenance or {}),
            "format": get_backend(engine.backend).file_format,
            "segment_costs": {"unit": short, "values": [round(c, 8) for c in costs]},
            "pareto": pareto,
            "previous": _without_history(engine.manifest.policy.to_dict())}),
    )


def _exit_choice(manifest, probs, y, groups, costs, bench: dict, name: str,
                 config: BundleCalibrationConfig) -> dict | None:
    """:func:`choose_exits` with the bench's measured paths, in the model's exit indices (None for
    a report without the monolithic path: no recommendation)."""
    lat = bench.get("latency_us", {})
    try:
        choice = choose_exits(probs, y, costs, float(lat["monolithic"]["mean"]),
                              float(lat["all_exits"]["mean"]), name, config.margin, groups,
                              config.confidence, config.weights,
                              decision_us=decision_overhead_us(bench))
    except (KeyError, TypeError, ValueError):
        return None
    for o in choice["options"]:  # segment positions -> the model's exit indices
        o["exits"] = [manifest.exits[k] for k in o["exits"]]
    return choice


def _write_policy(root: Path, manifest, spec) -> dict:
    """Write ``spec`` into the bundle's manifest (atomically), drop a signature of the old one and
    pack ``BUNDLE.tar.gz`` again where it exists; returns what it did, for the report."""
    from edgeexit.runtime.manifest import MANIFEST, manifest_bytes, read_manifest
    from edgeexit.runtime.signing import SIGNATURE

    done = {}
    data = manifest_bytes(dataclasses.replace(manifest, policy=spec))
    atomic_write(root / MANIFEST, lambda f: f.write(data))
    read_manifest(root)  # the written manifest parses
    if (root / SIGNATURE).exists():  # it signed the old manifest: a device that checks refuses it
        (root / SIGNATURE).unlink()
        done["signature_removed"] = True
        log.warning("%s signed the old manifest and was removed: sign the bundle again "
                    "(edgeexit sign %s --key KEY)", root / SIGNATURE, root)
    archive = root.with_name(root.name + ".tar.gz")
    if archive.exists():
        pack_directory(root, archive)
        done["archive"] = str(archive)
    return done

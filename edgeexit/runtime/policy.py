"""Exit policies: after each segment, decide which samples stop and what they answer.

Each policy is one small class with ``decide(k, logits) -> (done, probs)``: ``logits`` holds the
logits of exits ``0..k`` for the samples still running (each ``[n, K]``); ``done`` is a boolean
mask of the samples that stop at exit ``k`` and ``probs`` their answer distribution. The last exit
always stops every sample.

- ``max_prob``: exit when the max softmax probability of exit k is >= t_k.
- ``entropy``: exit when the entropy (nats) of exit k's softmax is <= t_k.
- ``ensemble``: early-exit ensemble (Qendro & Mascolo, EMBC 2022): the answer is the average
  softmax of exits 0..k; exit when its max is >= t_k. With no thresholds it runs every exit.
- ``fixed``: every sample answers at exit ``exit_index``.
"""

from __future__ import annotations

import numpy as np

from edgeexit.errors import ConfigError

POLICIES = ("max_prob", "entropy", "ensemble", "fixed")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable, float32 in float32 out."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Row-wise entropy in nats."""
    return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=-1)


class Policy:
    """Base class: subclasses implement :meth:`decide`."""

    name = "base"

    def __init__(self, num_exits: int) -> None:
        self.num_exits = num_exits

    def last(self, k: int) -> bool:
        return k >= self.num_exits - 1

    def decide(self, k: int, logits: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
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
            if not all(np.isfinite(thresholds)):
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

    def decide(self, k, logits):
        probs = softmax(logits[k])
        if self.last(k):
            return np.ones(len(probs), bool), probs
        return probs.max(axis=-1) >= self.thresholds[k], probs


class Entropy(_Thresholded):
    """Exit at k when entropy(softmax(logits_k)) <= t_k (nats)."""

    name = "entropy"

    def __init__(self, num_exits: int, thresholds) -> None:
        if thresholds is None:
            raise ConfigError("policy entropy needs thresholds (calibrated at export, or --thresholds)")
        super().__init__(num_exits, thresholds)

    def decide(self, k, logits):
        probs = softmax(logits[k])
        if self.last(k):
            return np.ones(len(probs), bool), probs
        return entropy(probs) <= self.thresholds[k], probs


class Ensemble(_Thresholded):
    """Average softmax of exits 0..k; exit when its max >= t_k (no thresholds: run every exit)."""

    name = "ensemble"

    def decide(self, k, logits):
        probs = np.mean([softmax(z) for z in logits[: k + 1]], axis=0)
        if self.last(k):
            return np.ones(len(probs), bool), probs
        if self.thresholds is None:
            return np.zeros(len(probs), bool), probs
        return probs.max(axis=-1) >= self.thresholds[k], probs


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

    def decide(self, k, logits):
        probs = softmax(logits[k])
        return np.full(len(probs), k >= self.exit_index, bool), probs

    def describe(self) -> dict:
        return {"name": self.name, "exit_index": self.exit_index}


def make_policy(
    name: str, num_exits: int, thresholds=None, exit_index: int | None = None
) -> Policy:
    """Build policy ``name``; raises :class:`ConfigError` for unknown names or bad thresholds."""
    if name == "max_prob":
        return MaxProb(num_exits, thresholds)
    if name == "entropy":
        return Entropy(num_exits, thresholds)
    if name == "ensemble":
        return Ensemble(num_exits, thresholds)
    if name == "fixed":
        return Fixed(num_exits, exit_index)
    raise ConfigError(f"unknown exit policy {name!r}; choose one of: {', '.join(POLICIES)}")


def exit_scores(name: str, probs_per_exit: list[np.ndarray]) -> list[np.ndarray]:
    """Per exit, the score compared with t_k (exit when score >= t_k) and the answer distribution.

    Used by threshold calibration. For ``entropy`` the score is the negative entropy, so that every
    policy reads "exit when score >= threshold" (the stored entropy threshold is ``-t``).
    """
    if name == "max_prob":
        return [p.max(axis=-1) for p in probs_per_exit]
    if name == "entropy":
        return [-entropy(p) for p in probs_per_exit]
    if name == "ensemble":
        return [p.max(axis=-1) for p in ensemble_probs(probs_per_exit)]
    raise ConfigError(f"policy {name!r} has no thresholds to calibrate")


def ensemble_probs(probs_per_exit: list[np.ndarray]) -> list[np.ndarray]:
    """Running mean of the softmax of exits 0..k, for every k."""
    out, acc = [], np.zeros_like(probs_per_exit[0])
    for k, p in enumerate(probs_per_exit):
        acc = acc + p
        out.append(acc / (k + 1))
    return out

"""What an attack maximises: a per-sample loss over the exits of a multi-exit model.

An objective maps the logits of exits ``0..k`` (``[B, K]`` each) and the labels to a loss per
sample, ``[B]``, that the attack drives up. It says how many exits it needs (``needs``), so the
attack runs ``model.forward_until`` and no further.

- :class:`ExitCE` (single-exit PGD): cross-entropy of one exit.
- :class:`MeanCE` (average-exit PGD, RDI-Nets' "avg"): mean cross-entropy over exits.
- :class:`SumCE`: summed cross-entropy over exits (max-average PGD keeps, per sample, the
  candidate with the largest of it).
- :class:`PolicyCE` (policy-aware PGD): cross-entropy of the answer the deployed exit policy gives:
  the (weighted) running average of softmaxes for ``ensemble``, and for ``max_prob``/``entropy``
  the softmax of the exit each sample would leave at, re-chosen at every evaluation (so as the
  attack proceeds). Mirrors :mod:`edgeexit.runtime.policy` on torch tensors.
- :class:`Slowdown` (DeepSloth, Hong et al., ICLR 2021, https://arxiv.org/abs/2010.02432): the
  negative cross-entropy between the uniform distribution and every early exit's softmax, so
  maximising it drives every early exit toward uniform and inputs skip the early exits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from edgeexit.errors import ConfigError
from edgeexit.runtime.kinds import CALIBRATED_POLICIES, PolicyName


class Objective:
    """Base class: ``objective(logits, y) -> [B]`` loss per sample, to be maximised.

    Attributes:
        needs: index of the last exit whose logits the objective reads (-1: the final one).
        name: short name used in reports.
    """

    needs: int = -1
    name: str = "objective"

    def __call__(self, logits: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name}


class ExitCE(Objective):
    """Cross-entropy of exit ``k`` (negative k counts from the end)."""

    def __init__(self, k: int = -1) -> None:
        self.k = int(k)
        self.needs = self.k
        self.name = f"exit{self.k}" if self.k >= 0 else "final"

    def __call__(self, logits, y):
        return F.cross_entropy(logits[self.k], y, reduction="none")

    def describe(self) -> dict:
        return {"name": "exit", "exit": self.k}


class MeanCE(Objective):
    """Mean cross-entropy over every exit (average-exit PGD)."""

    name = "mean"

    def __call__(self, logits, y):
        return torch.stack([F.cross_entropy(z, y, reduction="none") for z in logits]).mean(0)


class SumCE(Objective):
    """Summed cross-entropy over every exit (max-average's selection criterion)."""

    name = "sum"

    def __call__(self, logits, y):
        return torch.stack([F.cross_entropy(z, y, reduction="none") for z in logits]).sum(0)


class PolicyCE(Objective):
    """Cross-entropy of the answer an exit policy returns (policy-aware PGD).

    Args:
        policy: ``max_prob``, ``entropy``, ``ensemble`` or ``fixed`` (as in the bundle manifest).
        thresholds: one per early exit (``max_prob``/``ensemble``: exit when the max probability
            is >= t_k; ``entropy``: when the entropy in nats is <= t_k); None for ``ensemble``
            means every exit runs and the answer is the average of all of them.
        weights: the ``ensemble``'s per-exit weights (None: equal).
        exit_index: the ``fixed`` policy's exit (an index into ``exits`` when given).
        exits: the model exits the deployed segments answer at, in order (a bundle exported with
            ``--exits 0,3`` has two, ``manifest.exits``); None = every exit of the model.
    """

    name = "policy"

    def __init__(self, policy: str, thresholds=None, weights=None, exit_index=None,
                 exits=None) -> None:
        if policy not in (*CALIBRATED_POLICIES, PolicyName.FIXED):
            raise ConfigError(f"no policy-aware objective for policy {policy!r}")
        if policy in (PolicyName.MAX_PROB, PolicyName.ENTROPY) and thresholds is None:
            raise ConfigError(f"policy {policy} needs its thresholds to be attacked")
        self.policy = policy
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]
        self.weights = None if weights is None else [float(w) for w in weights]
        self.exit_index = exit_index
        self.exits = None if exits is None else [int(e) for e in exits]
        self.name = f"policy:{policy}"
        if self.exits is not None:
            self.needs = max(self.exits)
        elif policy == "fixed" and exit_index is not None:
            self.needs = int(exit_index)

    def answers(self, logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's answer distribution per sample ``[B, K]`` and the exit taken ``[B]`` (an
        index into ``exits`` when given)."""
        if self.exits is not None:
            logits = [logits[e] for e in self.exits]
        n = len(logits)
        probs = [F.softmax(z, dim=-1) for z in logits]
        if self.policy == "fixed":
            k = n - 1 if self.exit_index is None else int(self.exit_index)
            return probs[k], torch.full((len(probs[0]),), k, dtype=torch.long, device=probs[k].device)
        if self.policy == "ensemble":
            w = self.weights or [1.0] * n
            acc, tot, answers = 0.0, 0.0, []
            for wk, p in zip(w, probs):
                acc = acc + wk * p
                tot += wk
                answers.append(acc / tot)
        else:
            answers = probs
        stacked = torch.stack(answers)  # [E, B, K]
        with torch.no_grad():  # which exit each sample leaves at (a discrete choice, no gradient)
            if self.thresholds is None:
                taken = torch.full((stacked.shape[1],), n - 1, dtype=torch.long, device=stacked.device)
            else:
                t = torch.tensor(self.thresholds, dtype=stacked.dtype, device=stacked.device)
                if self.policy == "entropy":
                    h = -(stacked[:-1] * stacked[:-1].clamp_min(1e-12).log()).sum(-1)  # [E-1, B]
                    stop = h <= t[:, None]
                else:
                    stop = stacked[:-1].max(-1).values >= t[:, None]
                stop = torch.cat([stop, torch.ones_like(stop[:1])])  # the last exit stops all
                taken = stop.float().argmax(0)  # first exit that stops
        chosen = stacked[taken, torch.arange(stacked.shape[1], device=stacked.device)]
        return chosen, taken

    def __call__(self, logits, y):
        p, _ = self.answers(logits)
        return -p.gather(1, y[:, None]).squeeze(1).clamp_min(1e-12).log()

    def describe(self) -> dict:
        return {"name": "policy", "policy": self.policy, "thresholds": self.thresholds,
                "weights": self.weights, "exits": self.exits}


class Slowdown(Objective):
    """DeepSloth: ``-sum_{k < last} CE(uniform, softmax_k)``; labels are ignored.

    Its maximum, 0 minus the constant ``E*log K``, is reached when every early exit is uniform.
    """

    name = "slowdown"

    def __call__(self, logits, y):
        early = logits[:-1] if len(logits) > 1 else logits
        # CE(uniform, p) = -mean_j log p_j; maximise its negative
        return torch.stack([F.log_softmax(z, dim=-1).mean(-1) for z in early]).sum(0)


def make_objective(spec: str | int | Objective) -> Objective:
    """An :class:`Objective` from a short spec: ``final``, an exit index, ``mean``, ``sum``,
    ``slowdown``, or an :class:`Objective` (returned as is)."""
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, int) or (isinstance(spec, str) and spec.lstrip("-").isdigit()):
        return ExitCE(int(spec))
    table = {"final": lambda: ExitCE(-1), "mean": MeanCE, "sum": SumCE, "slowdown": Slowdown}
    if spec not in table:
        raise ConfigError(
            f"unknown attack objective {spec!r}; use final, an exit index, mean, sum or slowdown"
        )
    return table[spec]()


def uniform_ce(num_classes: int) -> float:
    """CE(uniform, uniform) = log K: the floor of DeepSloth's per-exit term."""
    return math.log(num_classes)

"""Gradient attacks: FGSM, PGD (Linf and L2, any exit objective) and max-average PGD.

- FGSM: Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015
  (https://arxiv.org/abs/1412.6572): one step of size eps along the gradient's sign.
- PGD: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018
  (https://arxiv.org/abs/1706.06083): random start, ``steps`` projected ascent steps; it keeps, per
  sample, the iterate with the highest loss.
- Single-exit, average-exit and policy-aware PGD are :class:`PGD` with the objective ``k``,
  ``mean`` or a :class:`~edgeexit.robust.attacks.objectives.PolicyCE`.
- Max-average PGD: Hu et al., "Triple Wins: Boosting Accuracy, Robustness and Efficiency Together
  by Enabling Input-Adaptive Inference" (RDI-Nets), ICLR 2020 (https://arxiv.org/abs/2002.10025):
  one single-exit PGD per exit, then per sample the candidate with the largest loss SUMMED over
  all exits (not the loss at the candidate's own exit).

Example:
    >>> attack = PGD(model, eps=0.1, steps=20)             # final exit, Linf 0.1 mV
    >>> x_adv = attack(x, y)
    >>> x_adv = MaxAvgPGD(model, eps=0.1, steps=20)(x, y)
"""

from __future__ import annotations

import torch

from edgeexit.errors import ConfigError
from edgeexit.robust.attacks.base import Attack
from edgeexit.robust.attacks.objectives import ExitCE, SumCE


class PGD(Attack):
    """Projected gradient ascent on the objective, inside the Linf or L2 ball.

    Args:
        model, eps, norm, objective, signal_channels, clip: see :class:`Attack`.
        steps: ascent steps.
        step_size: size of each step (None = ``2.5 * eps / steps``, Madry's choice); ``steps *
            step_size`` must reach ``eps``, or the attack could never use its budget.
        random_start: start from a random point in the ball (else from ``x``).
        restarts: independent random starts; the per-sample best is kept.
        seed: seeds the random starts (None = torch's global generator).
    """

    name = "pgd"

    def __init__(self, model, eps, *, steps: int = 20, step_size: float | None = None,
                 random_start: bool = True, restarts: int = 1, seed: int | None = 0,
                 **kwargs) -> None:
        super().__init__(model, eps, **kwargs)
        if steps < 1 or restarts < 1:
            raise ConfigError(f"PGD needs steps >= 1 and restarts >= 1, got {steps}, {restarts}")
        self.steps = int(steps)
        self.step_size = 2.5 * self.eps / self.steps if step_size is None else float(step_size)
        if self.step_size * self.steps < self.eps * (1 - 1e-9):
            raise ConfigError(
                f"PGD with {steps} steps of {self.step_size:g} never reaches eps {self.eps:g}: "
                "raise steps or step_size (steps * step_size >= eps)"
            )
        self.random_start = random_start
        self.restarts = int(restarts)
        self.seed = seed

    def describe(self) -> dict:
        return {**super().describe(), "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start, "restarts": self.restarts}

    def perturb(self, x, y):
        gen = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        best = x.clone()
        best_loss = torch.full((len(x),), -float("inf"), device=x.device)
        zero_grad = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for r in range(self.restarts):
            delta = self.random_init(x, gen) if self.random_start else torch.zeros_like(x)
            for i in range(self.steps):
                loss, g = self.gradient(x + delta, y)
                if r == 0 and i == 0:
                    zero_grad = (g * self.mask(g)).flatten(1).abs().amax(1) == 0
                best, best_loss = _keep_best(best, best_loss, x + delta, loss)
                delta = self.project(delta + self.step_size * self.ascent(g), x)
            with torch.no_grad():
                best, best_loss = _keep_best(best, best_loss, x + delta, self.losses(x + delta, y))
        self.stats = {"zero_grad_fraction": float(zero_grad.float().mean()),
                      "mean_loss": float(best_loss.mean())}
        return best


class FGSM(PGD):
    """One step of size ``eps`` along the gradient's sign (Linf) or direction (L2), from ``x``."""

    name = "fgsm"

    def __init__(self, model, eps, **kwargs) -> None:
        super().__init__(model, eps, steps=1, step_size=eps, random_start=False, **kwargs)

    def perturb(self, x, y):
        _, g = self.gradient(x, y)
        zero = (g * self.mask(g)).flatten(1).abs().amax(1) == 0
        self.stats = {"zero_grad_fraction": float(zero.float().mean())}
        return x + self.project(self.eps * self.ascent(g), x)


class MaxAvgPGD(Attack):
    """Max-average PGD: a single-exit PGD per exit, then per sample the candidate whose cross-
    entropy summed over ALL exits is largest.

    Args:
        model, eps, norm, signal_channels, clip: see :class:`Attack` (the objective is fixed).
        steps, step_size, random_start, restarts, seed: those of every single-exit :class:`PGD`.
    """

    name = "max_avg_pgd"

    def __init__(self, model, eps, *, steps: int = 20, step_size: float | None = None,
                 random_start: bool = True, restarts: int = 1, seed: int | None = 0,
                 norm: str = "linf", signal_channels: int | None = None, clip=None) -> None:
        super().__init__(model, eps, norm=norm, objective=SumCE(),
                         signal_channels=signal_channels, clip=clip)
        self.per_exit = [
            PGD(model, eps, steps=steps, step_size=step_size, random_start=random_start,
                restarts=restarts, seed=seed, norm=norm, objective=ExitCE(k),
                signal_channels=self.signal_channels, clip=clip)
            for k in range(model.num_exits)
        ]

    def describe(self) -> dict:
        p = self.per_exit[0]
        return {**super().describe(), "steps": p.steps, "step_size": p.step_size,
                "random_start": p.random_start, "restarts": p.restarts}

    def perturb(self, x, y):
        best = x.clone()
        best_loss = torch.full((len(x),), -float("inf"), device=x.device)
        chosen = torch.zeros(len(x), dtype=torch.long, device=x.device)
        zero = []
        for k, attack in enumerate(self.per_exit):
            cand = attack.perturb(x, y)
            zero.append(attack.stats["zero_grad_fraction"])
            with torch.no_grad():
                summed = self.losses(cand, y)  # SumCE over every exit
            better = summed > best_loss
            chosen[better] = k
            best, best_loss = _keep_best(best, best_loss, cand, summed)
        self.stats = {"zero_grad_fraction": max(zero), "mean_loss": float(best_loss.mean()),
                      "chosen_exit": torch.bincount(chosen, minlength=len(self.per_exit)).tolist()}
        return best


def _keep_best(best, best_loss, cand, loss):
    """Per sample, the candidate with the higher loss."""
    better = loss > best_loss
    best = torch.where(better.view(-1, 1, 1), cand.detach(), best)
    return best, torch.where(better, loss.detach(), best_loss)

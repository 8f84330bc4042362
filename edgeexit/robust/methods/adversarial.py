"""Shared settings and helpers of the adversarial training methods (``rdi``, ``neokd``).

:class:`AdversarialConfig` is the attack that crafts the training examples: a multi-exit PGD
within an Linf or L2 budget ``eps`` in mV on the signal channels (the RR-context channels are
never perturbed), either average-exit PGD (``avg``: maximise the mean cross-entropy over the exits)
or max-average PGD (``max-avg``: one single-exit PGD per exit, keep per sample the candidate with
the largest cross-entropy summed over all exits; Hu et al., ICLR 2020).

Defaults are chosen for cost on a CPU: ``eps`` 0.1 mV is the middle of the evaluation grid
(0.05 / 0.1 / 0.2 mV Linf), 5 steps of ``2.5 * eps / steps`` (Madry's step, so the iterates can
reach the budget), and ``avg``, which costs one PGD per batch where ``max-avg`` costs one per
exit (the papers' headline numbers use ``max-avg``: choose it when the budget allows).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from edgeexit.errors import ConfigError
from edgeexit.robust.attacks.base import NORMS, Attack
from edgeexit.robust.attacks.pgd import PGD, MaxAvgPGD
from edgeexit.robust.methods.base import MethodConfig, TrainContext
from edgeexit.robust.names import TRAIN_ATTACKS, TrainAttack


@dataclasses.dataclass(frozen=True)
class AdversarialConfig(MethodConfig):
    """The training attack of the adversarial methods.

    Attributes:
        eps: budget on the signal channels in mV (``linf``: per time step; ``l2``: the norm over
            the signal channels and the whole window, so scale a per-sample amplitude with
            :func:`edgeexit.robust.attacks.l2_eps`, e.g. 0.1 mV rms over 256 samples = 1.6).
        norm: ``linf`` or ``l2``.
        steps: PGD ascent steps per batch (each costs a forward and backward pass; ``max-avg``
            runs them once per exit).
        step_size: size of each step in mV; None = ``2.5 * eps / steps``. ``steps * step_size``
            must reach ``eps``.
        attack: ``avg`` (average-exit PGD) or ``max-avg`` (max-average PGD).
    """

    eps: float = 0.1
    norm: str = "linf"
    steps: int = 5
    step_size: float | None = None
    attack: str = TrainAttack.AVG.value  # a plain str: configs go into checkpoints (weights_only)

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not (
            math.isfinite(self.eps) and self.eps > 0
        ):
            raise ConfigError(
                f"eps must be a budget in mV > 0, got {self.eps!r} (the evaluation grid is "
                "0.05/0.1/0.2 mV Linf; use method 'standard' for no adversarial training)"
            )
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"attack steps must be an integer >= 1, got {self.steps!r}")
        if self.step_size is not None:
            if not (isinstance(self.step_size, (int, float)) and math.isfinite(self.step_size)
                    and self.step_size > 0):
                raise ConfigError(
                    f"attack step size must be a number of mV > 0 (or unset for 2.5*eps/steps), "
                    f"got {self.step_size!r}"
                )
            if self.step_size * self.steps < self.eps * (1 - 1e-9):
                raise ConfigError(
                    f"{self.steps} attack steps of {self.step_size:g} mV never reach eps "
                    f"{self.eps:g} mV: raise the steps or the step size (steps * step_size >= "
                    "eps), or leave the step size unset"
                )
        if self.attack not in TRAIN_ATTACKS:
            raise ConfigError(
                f"unknown training attack {self.attack!r}; choose one of "
                f"{', '.join(TRAIN_ATTACKS)} (avg: average-exit PGD, max-avg: max-average PGD)"
            )

    @property
    def resolved_step_size(self) -> float:
        """The step size in mV that PGD uses."""
        return 2.5 * self.eps / self.steps if self.step_size is None else float(self.step_size)


def rank_seed_generator(context: TrainContext) -> torch.Generator:
    """A generator for the attacks' random starts: seeded by torch's seed and the process rank
    (every rank draws its own starts; a rerun draws the same ones)."""
    rank = torch.distributed.get_rank() if context.world > 1 and torch.distributed.is_initialized() else 0
    return torch.Generator().manual_seed(torch.initial_seed() + 7919 * rank)


def attack_model(context: TrainContext) -> torch.nn.Module:
    """The model a training attack differentiates: the bare model, or, with a morphology
    context, the model that takes windows with their template channel and recomputes the
    morphology channels from the (perturbed) waveform."""
    return context.model if context.morph is None else context.morph.wrap(context.model)


def attack_input(context: TrainContext, x: torch.Tensor, template: torch.Tensor | None) -> torch.Tensor:
    """What a training attack perturbs: ``x``, with its template channel when the attacks
    recompute the morphology channels (see :func:`attacked`)."""
    if context.morph is None:
        return x
    if template is None:
        raise ConfigError("the training attacks recompute the morphology channels, and the batch "
                          "carries no template (Batch.template)")
    return context.morph.with_template(x, template)


def attacked(context: TrainContext, xa: torch.Tensor) -> torch.Tensor:
    """The model's input for attacked windows from :func:`attack_input`: with a morphology
    context, the channels recomputed from the perturbed waveform and the template dropped."""
    return xa if context.morph is None else context.morph.recompute_torch(xa).detach()


class TrainingAttack:
    """The attack of an :class:`AdversarialConfig` on the bare model, with fresh random starts
    every call (drawn from ``gen``); with a morphology context (:attr:`TrainContext.morph`) it
    differentiates through the recomputed morphology channels, as ``edgeexit evaluate`` does."""

    def __init__(self, config: AdversarialConfig, context: TrainContext) -> None:
        kwargs = {"steps": config.steps, "step_size": config.resolved_step_size,
                  "norm": config.norm, "signal_channels": context.signal_channels, "seed": 0}
        model = attack_model(context)
        if config.attack == TrainAttack.AVG:
            self.attack: Attack = PGD(model, config.eps, objective="mean", **kwargs)
            self._pgds = [self.attack]
        else:
            self.attack = MaxAvgPGD(model, config.eps, **kwargs)
            self._pgds = list(self.attack.per_exit)
        self.context = context
        self.gen = rank_seed_generator(context)

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 template: torch.Tensor | None = None) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.gen))
        for pgd in self._pgds:
            pgd.seed = seed
        xa = attack_input(self.context, x, template)
        return attacked(self.context, self.attack(xa, y))


def split_logits(logits: list[torch.Tensor], n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The logits of a ``cat([x, x_adv])`` forward pass split into (clean, adversarial)."""
    return [z[:n] for z in logits], [z[n:] for z in logits]


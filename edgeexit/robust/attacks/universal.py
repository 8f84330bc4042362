"""Universal perturbations and slowdown attacks: one delta for every input, and DeepSloth.

- Universal adversarial perturbation: Shafahi et al., "Universal Adversarial Training", AAAI 2020
  (https://arxiv.org/abs/1812.03705): a single ``delta`` for all inputs, crafted on training data
  by minibatch projected (signed-)gradient ascent on the mean loss over the batch. The original
  universal perturbation: Moosavi-Dezfooli et al., "Universal adversarial perturbations",
  CVPR 2017 (https://arxiv.org/abs/1610.08401).
- DeepSloth: Hong et al., "A Panda? No, It's a Sloth: Slowdown Attacks on Adaptive Multi-Exit
  Neural Network Inference", ICLR 2021 (https://arxiv.org/abs/2010.02432): push every early exit
  toward the uniform distribution, so no input is confident enough to leave early and the
  early-exit savings vanish. Per sample (:class:`DeepSloth`, PGD on the
  :class:`~edgeexit.robust.attacks.objectives.Slowdown` objective) and universal
  (:class:`UniversalDeepSloth`).

Example:
    >>> uap = UniversalPerturbation(model, eps=0.1, epochs=5)
    >>> delta = uap.fit(x_train, y_train)          # [1, C, L], zero off the signal channels
    >>> x_adv = uap(x_test)                        # x_test + delta, projected
    >>> x_slow = DeepSloth(model, eps=0.1, steps=20)(x_test)   # labels are not needed
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from edgeexit.errors import ConfigError
from edgeexit.robust.attacks.base import Attack, eval_mode
from edgeexit.robust.attacks.objectives import Objective, Slowdown
from edgeexit.robust.attacks.pgd import PGD

log = logging.getLogger(__name__)


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{what} must be a torch tensor or a numpy array, got {type(x).__name__}")
    return x


def _labels(y, n: int, objective: Objective) -> torch.Tensor:
    """``y`` as a long tensor ``[n]``; None is allowed (zeros) for the label-free Slowdown."""
    if y is None:
        if not isinstance(objective, Slowdown):
            raise ConfigError(
                f"the {objective.name} objective needs labels y; only the slowdown objective "
                "works without them"
            )
        return torch.zeros(n, dtype=torch.long)
    y = _as_tensor(y, "y").long()
    if y.shape != (n,):
        raise ConfigError(f"labels must have shape [{n}], got {tuple(y.shape)}")
    return y


class UniversalPerturbation(Attack):
    """One perturbation ``delta [1, C, L]`` for every input (Shafahi et al., AAAI 2020).

    :meth:`fit` crafts ``delta`` on training inputs: ``epochs`` passes over shuffled minibatches,
    each step ``delta <- project(delta + step_size * ascent(grad))`` where ``grad`` is the
    gradient of the objective averaged over the batch (its sign for ``linf``, its unit L2
    direction for ``l2``). Calling the attack then returns ``x + delta`` (projected; inside
    ``clip`` when given), whatever the input. Crafting runs the model in eval mode and restores
    its mode.

    Distance Measure: Linf or L2 (on the signal channels; zero on the RR-context channels).

    Args:
        model, eps, norm, objective, signal_channels, clip: see :class:`Attack`.
        epochs: passes over the training inputs in :meth:`fit`.
        batch_size: inputs per ascent step.
        step_size: size of each step; None = ``eps / 10``, so that ten steps (one epoch of 1,280
            inputs at the default batch size) can reach the edge of the budget and later steps
            move along it. A warning is logged when ``epochs * batches * step_size < eps``.
        seed: seeds the minibatch shuffling.

    Attributes:
        delta: the fitted perturbation ``[1, C, L]`` (None before :meth:`fit`).
        stats: ``steps`` taken and ``loss_history`` (mean objective per epoch, at the start of
            each step) of the last :meth:`fit`.

    Shape:
        fit: ``x [N, C, L]``, ``y [N]`` -> ``delta [1, C, L]``; call: ``x [B, C, L]`` ->
        ``[B, C, L]``.
    """

    name = "universal"

    def __init__(self, model, eps: float, *, norm: str = "linf",
                 objective: str | int | Objective = "final", epochs: int = 5,
                 batch_size: int = 128, step_size: float | None = None, seed: int = 0,
                 signal_channels: int | None = None, clip=None) -> None:
        super().__init__(model, eps, norm=norm, objective=objective,
                         signal_channels=signal_channels, clip=clip)
        if epochs < 1 or batch_size < 1:
            raise ConfigError(
                f"a universal perturbation needs epochs >= 1 and batch_size >= 1, got {epochs}, "
                f"{batch_size}"
            )
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.step_size = self.eps / 10 if step_size is None else float(step_size)
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ConfigError(f"step_size must be a finite number > 0, got {step_size}")
        self.seed = int(seed)
        self.delta: torch.Tensor | None = None

    def describe(self) -> dict:
        return {**super().describe(), "epochs": self.epochs, "batch_size": self.batch_size,
                "step_size": self.step_size, "seed": self.seed}

    # ------------------------------------------------------------------------------- crafting
    def fit(self, x, y=None) -> torch.Tensor:
        """Craft the universal ``delta`` on training inputs ``x [N, C, L]`` with labels ``y [N]``.

        Args:
            x: training inputs (torch tensor or numpy array), in the input's units.
            y: their labels; may be None only for the label-free slowdown objective.

        Returns:
            ``delta [1, C, L]`` (also stored as :attr:`delta`), detached, inside the budget.
        """
        x = _as_tensor(x, "x").detach().float()
        self.check_input(x)
        y = _labels(y, len(x), self.objective).to(x.device)
        n = len(x)
        batches = math.ceil(n / self.batch_size)
        if self.epochs * batches * self.step_size < self.eps * (1 - 1e-9):
            log.warning(
                "universal perturbation: %d steps of %g cannot reach eps %g; raise epochs or "
                "step_size", self.epochs * batches, self.step_size, self.eps,
            )
        gen = torch.Generator().manual_seed(self.seed)
        delta = torch.zeros(1, *x.shape[1:], device=x.device)
        history, steps = [], 0
        with eval_mode(self.model), torch.enable_grad():  # also when called under no_grad
            for epoch in range(self.epochs):
                order = torch.randperm(n, generator=gen)
                total = 0.0
                for start in range(0, n, self.batch_size):
                    idx = order[start : start + self.batch_size]
                    loss, g = self._batch_gradient(x[idx], y[idx], delta)
                    total += float(loss) * len(idx)
                    step = (delta + self.step_size * self.ascent(g)) * self.mask(delta)
                    delta = self.within_budget(step)  # clip is per sample: see _fit_to
                    steps += 1
                history.append(total / n)
                log.info("universal perturbation (%s): epoch %d/%d, mean loss %.4f",
                         self.objective.name, epoch + 1, self.epochs, history[-1])
        self.delta = delta.detach()
        self.stats = {"steps": steps, "loss_history": history}
        return self.delta

    def _batch_gradient(self, xb, yb, delta):
        """Mean objective over the batch at ``xb + delta`` and its gradient w.r.t. ``delta``."""
        d = delta.detach().requires_grad_(True)
        x_adv = xb + self._fit_to(d, xb)
        loss = self.losses(x_adv, yb).mean()
        (g,) = torch.autograd.grad(loss, d)
        return loss.detach(), g

    def _fit_to(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``delta`` broadcast to the batch, zero off the signal channels, ``x + delta`` inside
        ``clip`` (the clip differs per sample, so it is applied to the broadcast copy)."""
        return self.clip_range(delta.expand(len(x), -1, -1) * self.mask(x), x)

    # --------------------------------------------------------------------------------- the call
    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x + delta`` for ``x [B, C, L]`` (``y`` is not used); refuses before :meth:`fit`."""
        return super().__call__(x, y)

    def perturb(self, x, y):
        if self.delta is None:
            raise ConfigError(
                f"{type(self).__name__} is not fitted: call .fit(x_train, y_train) first to craft "
                "the perturbation"
            )
        if tuple(self.delta.shape[1:]) != tuple(x.shape[1:]):
            raise ConfigError(
                f"the perturbation was fitted on inputs [*, {', '.join(map(str, self.delta.shape[1:]))}]"
                f", got inputs {tuple(x.shape)}"
            )
        return x + self._fit_to(self.delta, x)


class UniversalDeepSloth(UniversalPerturbation):
    """Universal DeepSloth (Hong et al., ICLR 2021, https://arxiv.org/abs/2010.02432): one
    ``delta`` that drives every early exit toward uniform for all inputs; labels are not needed.

    Args:
        model, eps, norm, epochs, batch_size, step_size, seed, signal_channels, clip: see
            :class:`UniversalPerturbation` (the objective is
            :class:`~edgeexit.robust.attacks.objectives.Slowdown`).
    """

    name = "universal_deepsloth"

    def __init__(self, model, eps: float, **kwargs) -> None:
        if "objective" in kwargs:
            raise ConfigError("UniversalDeepSloth's objective is fixed (slowdown)")
        super().__init__(model, eps, objective=Slowdown(), **kwargs)


class DeepSloth(PGD):
    """DeepSloth slowdown attack per sample (Hong et al., "A Panda? No, It's a Sloth: Slowdown
    Attacks on Adaptive Multi-Exit Neural Network Inference", ICLR 2021,
    https://arxiv.org/abs/2010.02432): :class:`PGD` on the
    :class:`~edgeexit.robust.attacks.objectives.Slowdown` objective, which pushes the softmax of
    every early exit toward uniform so the confidence-based policies never stop early.

    Distance Measure: Linf or L2 (signal channels only). Labels are ignored (None is allowed).

    Args:
        model, eps, norm, signal_channels, clip: see :class:`Attack` (the objective is fixed).
        steps, step_size, random_start, restarts, seed: see :class:`PGD`.
    """

    name = "deepsloth"

    def __init__(self, model, eps: float, **kwargs) -> None:
        if "objective" in kwargs:
            raise ConfigError("DeepSloth's objective is fixed (slowdown)")
        super().__init__(model, eps, objective=Slowdown(), **kwargs)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The slowed-down inputs for ``x [B, C, L]`` (``y`` is ignored)."""
        return super().__call__(x, _labels(None, len(x), self.objective) if y is None else y)

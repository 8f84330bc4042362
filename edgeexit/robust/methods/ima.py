"""IMA: increasing-margin adversarial training with a margin per training sample.

Ma & Liang, "Increasing-Margin Adversarial (IMA) Training to Improve Adversarial Robustness of
Neural Networks" (https://arxiv.org/abs/2005.09147). Every training sample i keeps its own margin
``eps_i`` in mV (on the signal channels, Linf or L2), keyed by its stable index ``Batch.index``
and initialised small (``eps_init``). For every batch:

1. PGD on the bare model (eval mode) within each sample's own ``eps_i`` (:class:`MarginPGD`).
2. A correctly classified sample for which PGD found no adversarial example inside ``eps_i``
   grows its margin by ``eps_step`` (capped at ``eps_max``) and trains on the PGD point. Where
   PGD found one, the point on the decision boundary is located by bisection between ``x`` and
   ``x_adv`` (``bisection_steps`` halvings, :func:`bisect_boundary`), the sample trains on it, and
   its margin moves to the midpoint of the old margin and the boundary's distance. A sample that
   is misclassified already has distance 0: its margin halves and it trains on ``x`` itself.
3. ``loss = (1 - beta) * L(x) + beta * L(x_train)``, each the exit-weighted (class-weighted)
   cross-entropy over all exits; clean and training points go through ``net`` in one pass.

"Correct" for a multi-exit model (``criterion``): ``mean`` (default) = the argmax of the mean
softmax over the exits, the answer of the early-exit ensemble, so a margin describes the model as a
whole and the attack's objective (mean cross-entropy over the exits) matches its success test;
``final`` = the final exit only (the PGD then attacks the final exit). Requiring every exit to be
correct was rejected: the weak first exits would keep nearly every margin at zero.

Distributed (torchrun): every rank updates the margins of the samples it saw; at the end of each
epoch the updates are averaged over the ranks that touched a sample (an all-reduce of the values
and of a touched mask), so every rank holds the same margins. ``summary()`` reports the margins
(mean and quantiles in mV) and, under DDP, their largest difference between ranks (0 = identical).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from edgeexit.errors import ConfigError
from edgeexit.robust.attacks.base import NORMS, Attack, eval_mode
from edgeexit.robust.attacks.objectives import ExitCE, MeanCE
from edgeexit.robust.methods.adversarial import (
    attack_input,
    attack_model,
    attacked,
    rank_seed_generator,
    split_logits,
)
from edgeexit.robust.methods.base import (
    Batch,
    MethodConfig,
    TrainContext,
    TrainingMethod,
    register_method,
)

CRITERIA = ("mean", "final")


@dataclasses.dataclass(frozen=True)
class IMAConfig(MethodConfig):
    """IMA's settings (margins in mV on the signal channels).

    Attributes:
        eps_max: largest margin a sample may grow to (0.2 mV: the top of the evaluation grid).
        eps_step: growth of a margin per epoch in which no adversarial example was found (0.02:
            ``eps_max`` is reached in 10 epochs, a little less than the default 12).
        eps_init: every sample's initial margin; None = ``eps_step``.
        steps: PGD steps inside each margin (step ``2.5 * eps_i / steps``).
        bisection_steps: halvings of the segment x -> x_adv to place the training point on the
            decision boundary (it lands within ``2**-(bisection_steps+1)`` of the segment).
        beta: weight of the loss on the boundary points; ``1 - beta`` weighs the clean loss.
        norm: ``linf`` or ``l2`` (the margins are then L2 norms over the window).
        criterion: which answer counts as correct: ``mean`` (mean softmax of the exits) or
            ``final`` (the final exit).
    """

    eps_max: float = 0.2
    eps_step: float = 0.02
    eps_init: float | None = None
    steps: int = 5
    bisection_steps: int = 6
    beta: float = 0.5
    norm: str = "linf"
    criterion: str = "mean"

    def __post_init__(self) -> None:
        def positive(name: str, v) -> None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and v > 0
            ):
                raise ConfigError(f"IMA {name} must be a number of mV > 0, got {v!r}")

        positive("eps_max", self.eps_max)
        positive("eps_step", self.eps_step)
        if self.eps_step > self.eps_max:
            raise ConfigError(
                f"IMA eps_step {self.eps_step:g} mV exceeds eps_max {self.eps_max:g} mV: use a "
                "step of a fraction of the largest margin (e.g. eps_max / epochs)"
            )
        if self.eps_init is not None:
            positive("eps_init", self.eps_init)
            if self.eps_init > self.eps_max:
                raise ConfigError(
                    f"IMA eps_init {self.eps_init:g} mV exceeds eps_max {self.eps_max:g} mV"
                )
        for name in ("steps", "bisection_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"IMA {name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.beta, (int, float)) and 0.0 <= self.beta <= 1.0):
            raise ConfigError(
                f"IMA beta (weight of the boundary loss) must lie in [0, 1], got {self.beta!r}"
            )
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.criterion not in CRITERIA:
            raise ConfigError(
                f"unknown IMA criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}"
            )

    @property
    def initial_margin(self) -> float:
        return float(self.eps_step if self.eps_init is None else self.eps_init)


def predict(model: nn.Module, x: torch.Tensor, criterion: str = "mean") -> torch.Tensor:
    """The label the ``criterion`` reads from the model at ``x`` (no gradient), ``[B]``."""
    with torch.no_grad():
        return answer(model(x), criterion).argmax(-1)


def answer(logits: list[torch.Tensor], criterion: str) -> torch.Tensor:
    """The class scores the ``criterion`` compares: mean softmax of the exits, or the final's."""
    if criterion == "final":
        return logits[-1]
    return torch.stack([F.softmax(z, dim=-1) for z in logits]).mean(0)


def distance(delta: torch.Tensor, norm: str, signal_channels: int) -> torch.Tensor:
    """Size of ``delta`` on the signal channels per sample, ``[B]`` (Linf or L2, mV)."""
    d = delta[:, :signal_channels].flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def bisect_boundary(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                    steps: int, criterion: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The point on the segment ``x -> x_adv`` where the answer stops being ``y``.

    ``x`` must be answered ``y`` and ``x_adv`` not; after ``steps`` halvings the bracket
    ``[lo, hi]`` holds the crossing and the midpoint is returned, within ``2**-(steps+1)`` of it
    (as a fraction of the segment).

    Returns:
        ``(x_boundary [B, C, L], t [B])`` with ``x_boundary = x + t * (x_adv - x)``.
    """
    lo = torch.zeros(len(x), device=x.device)
    hi = torch.ones(len(x), device=x.device)
    d = x_adv - x
    with eval_mode(model):
        for _ in range(steps):
            mid = (lo + hi) / 2
            wrong = predict(model, x + mid.view(-1, 1, 1) * d, criterion) != y
            hi = torch.where(wrong, mid, hi)
            lo = torch.where(wrong, lo, mid)
    t = (lo + hi) / 2
    return (x + t.view(-1, 1, 1) * d).detach(), t


class MarginPGD(Attack):
    """PGD with its own budget per sample (``eps`` a ``[B]`` tensor in mV), step
    ``2.5 * eps_i / steps``; it keeps, per sample, the first iterate the ``criterion`` answers
    wrongly (``found``) and otherwise the last one.

    Attributes:
        found: bool ``[B]`` of the last call: an adversarial example was found inside eps_i.
    """

    name = "margin_pgd"

    def __init__(self, model: nn.Module, eps: torch.Tensor, *, steps: int, norm: str = "linf",
                 criterion: str = "mean", signal_channels: int | None = None,
                 gen: torch.Generator | None = None) -> None:
        eps = eps.detach().float().clamp_min(0.0)
        objective = MeanCE() if criterion == "mean" else ExitCE(-1)
        super().__init__(model, float(eps.max()) if eps.numel() else 0.0, norm=norm,
                         objective=objective, signal_channels=signal_channels)
        self.eps_per = eps.view(-1, 1, 1)
        self.steps = int(steps)
        self.criterion = criterion
        self.gen = gen
        self.found = torch.zeros(len(eps), dtype=torch.bool, device=eps.device)

    @property
    def budget(self) -> torch.Tensor:
        return self.eps_per  # the base projection and random start then use eps_i per sample

    def perturb(self, x, y):
        step = 2.5 * self.eps_per / self.steps
        delta = self.random_init(x, self.gen)
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        kept = x.clone()
        for _ in range(self.steps):
            xi = (x + delta).detach().requires_grad_(True)
            logits = self.model(xi)
            loss = self.objective(logits, y)
            (g,) = torch.autograd.grad(loss.sum(), xi)
            with torch.no_grad():
                new = (answer(logits, self.criterion).argmax(-1) != y) & ~found
                kept = torch.where(new.view(-1, 1, 1), xi.detach(), kept)
                found |= new
            delta = self.project(delta + step * self.ascent(g), x)
        last = (x + delta).detach()
        new = (predict(self.model, last, self.criterion) != y) & ~found
        found |= new
        kept = torch.where(found.view(-1, 1, 1), kept, last)
        kept = torch.where(new.view(-1, 1, 1), last, kept)
        self.found = found
        return kept


def update_margins(eps: torch.Tensor, correct: torch.Tensor, found: torch.Tensor,
                   dist: torch.Tensor, eps_step: float, eps_max: float) -> torch.Tensor:
    """IMA's margin rule: grow by ``eps_step`` (capped) where the sample is correct and nothing
    was found; elsewhere the midpoint of the old margin and the boundary's distance (0 for a
    misclassified sample)."""
    grown = (eps + eps_step).clamp(max=eps_max)
    to = torch.where(correct, dist, torch.zeros_like(dist))
    return torch.where(correct & ~found, grown, (eps + to) / 2)


@register_method("ima")
class IMA(TrainingMethod):
    """IMA training: per-sample margins, boundary points by bisection, mixed clean/boundary loss."""

    config_class = IMAConfig
    crafts_attacks = True

    def setup(self, context: TrainContext) -> None:
        super().setup(context)
        n, device = int(context.num_samples), self.device  # the margins live beside the model
        self.margins = torch.full((n,), self.config.initial_margin, device=device)
        self._epoch_start = self.margins.clone()
        self._touched = torch.zeros(n, dtype=torch.bool, device=device)
        self.gen = rank_seed_generator(context)
        self._attack_model = attack_model(context)
        self._counts = {"grown": 0, "shrunk": 0, "found": 0, "misclassified": 0, "seen": 0}
        self.epoch_counts: dict = {}

    def training_points(self, batch: Batch) -> torch.Tensor:
        """The training points of ``batch`` (boundary, PGD or clean), updating its margins."""
        cfg, s = self.config, self.context.signal_channels
        # With a morphology context the attack, the bisection and the answers all see windows
        # with their template channel, the morphology channels recomputed from the waveform.
        model = self._attack_model
        x = attack_input(self.context, batch.x.detach().float(), batch.template)
        y, idx = batch.y, batch.index.long().to(self.margins.device)
        eps = self.margins[idx]
        with eval_mode(model):
            correct = predict(model, x, cfg.criterion) == y
        attack = MarginPGD(model, eps, steps=cfg.steps, norm=cfg.norm,
                           criterion=cfg.criterion, signal_channels=s, gen=self.gen)
        x_pgd = attack(x, y)
        found = attack.found & correct
        x_train = torch.where(correct.view(-1, 1, 1), x_pgd, x)
        dist = torch.zeros(len(x), device=x.device)
        if found.any():
            f = found.nonzero().squeeze(1)
            x_bd, _ = bisect_boundary(model, x[f], x_pgd[f], y[f], cfg.bisection_steps,
                                      cfg.criterion)
            x_train[f] = x_bd
            dist[f] = distance(x_bd - x[f], cfg.norm, s)
        new = update_margins(eps, correct, found, dist, cfg.eps_step, cfg.eps_max)
        self.margins[idx] = new
        self._touched[idx] = True
        c = self._counts
        c["seen"] += len(x)
        c["grown"] += int((new > eps).sum())
        c["shrunk"] += int((new < eps).sum())
        c["found"] += int(found.sum())
        c["misclassified"] += int((~correct).sum())
        return attacked(self.context, x_train.detach())

    def loss(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        x_train = self.training_points(batch)
        clean, adv = split_logits(net(torch.cat([batch.x, x_train])), len(batch.x))
        beta = float(self.config.beta)
        return (1 - beta) * self.exit_losses(clean, batch.y) + beta * self.exit_losses(adv, batch.y)

    def _distributed(self) -> bool:
        return self._ctx.world > 1 and torch.distributed.is_initialized()

    def on_epoch_end(self, epoch: int) -> None:
        if self._distributed():
            touched = self._touched.float()
            values = torch.where(self._touched, self.margins, torch.zeros_like(self.margins))
            torch.distributed.all_reduce(values)
            torch.distributed.all_reduce(touched)
            self.margins = torch.where(touched > 0, values / touched.clamp_min(1.0),
                                       self._epoch_start)
            counts = torch.tensor([float(v) for v in self._counts.values()], device=self.margins.device)
            torch.distributed.all_reduce(counts)
            self._counts = {k: int(v) for k, v in zip(self._counts, counts.tolist())}
        self._epoch_start = self.margins.clone()
        self._touched.zero_()
        self.epoch_counts = {"epoch": epoch + 1, **self._counts}
        self._counts = dict.fromkeys(self._counts, 0)

    def summary(self) -> dict:
        m = self.margins
        q = torch.quantile(m, torch.tensor([0.1, 0.5, 0.9], device=m.device)).tolist()
        out = {
            "name": self.name,
            "criterion": self.config.criterion,
            "margins_mV": {
                "mean": float(m.mean()), "min": float(m.min()), "q10": q[0], "median": q[1],
                "q90": q[2], "max": float(m.max()),
                "at_eps_max": float((m >= self.config.eps_max - 1e-9).float().mean()),
            },
            "last_epoch": self.epoch_counts,
        }
        if self._distributed():
            hi, lo = m.clone(), m.clone()
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            out["rank_spread_mV"] = float((hi - lo).max())
        return out

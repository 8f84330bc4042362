"""NEO-KD: knowledge-distillation-based adversarial training of a multi-exit model.

Ham et al., "NEO-KD: Knowledge-Distillation-Based Adversarial Training for Robust Multi-Exit
Neural Networks", NeurIPS 2023 (https://arxiv.org/abs/2311.00428). On top of the RDI-Nets loss
(:mod:`edgeexit.robust.methods.rdi`)::

    loss = RDI + alpha * sum_i w_i * NKD_i + beta * sum_i w_i * EOKD_i

- Neighbour KD (NKD): exit i on ``x_adv`` (student) is pulled toward the mean clean softmax of
  exits i-1, i, i+1 (those that exist): ``NKD_i = KL(mean_{j in N(i)} p_j(x) || p_i(x_adv))``.
- Exit-wise orthogonal KD (EOKD): the non-true classes of every true class are split into
  disjoint subsets, one per exit; exit i distils its own clean prediction into its adversarial
  one over the true class and its own subset only (both renormalised over those classes), so the
  exits learn different ("orthogonal") soft labels and an attack on one transfers less to others.
  The split is drawn once per run from the training seed (every DDP rank draws the same); with
  fewer non-true classes than exits the last exits get empty subsets and no EOKD term.

Every teacher (the clean softmaxes) is detached; every KL is KL(teacher || student), averaged
over the batch, with a temperature T (softmax of logits / T, the KL scaled by T^2; the default
T = 1 is no softening). The exit-balancing weights ``w_i`` are the training's exit weights, one
per exit (checked). alpha = 3 and beta = 1 are the paper's weights.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from edgeexit.errors import ConfigError
from edgeexit.robust.methods.adversarial import AdversarialConfig
from edgeexit.robust.methods.base import Batch, register_method
from edgeexit.robust.methods.rdi import RDI


@dataclasses.dataclass(frozen=True)
class NEOKDConfig(AdversarialConfig):
    """NEO-KD's settings: the training attack (:class:`AdversarialConfig`) and the KD weights.

    Attributes:
        alpha: weight of the neighbour KD (the paper's 3).
        beta: weight of the exit-wise orthogonal KD (the paper's 1).
        temperature: softmax temperature of both KD terms (1 = none).
    """

    alpha: float = 3.0
    beta: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"NEO-KD {name} must be a weight >= 0, got {v!r}")
        t = self.temperature
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ConfigError(f"NEO-KD temperature must be > 0 (1 = no softening), got {t!r}")


def orthogonal_subsets(num_classes: int, num_exits: int,
                       gen: torch.Generator | None = None) -> torch.Tensor:
    """For every true class, a random split of the other classes into one subset per exit.

    Returns:
        bool ``[num_classes (true class), num_exits, num_classes]``: ``m[c, i, k]`` is True when
        exit i distils class k for samples of class c; for every c the subsets are disjoint, never
        hold c, and together cover every other class (as evenly as possible, earlier exits first).
    """
    m = torch.zeros(num_classes, num_exits, num_classes, dtype=torch.bool)
    for c in range(num_classes):
        others = torch.tensor([k for k in range(num_classes) if k != c])
        others = others[torch.randperm(len(others), generator=gen)]
        for i, chunk in enumerate(torch.tensor_split(others, num_exits)):
            m[c, i, chunk] = True
    return m


def kl_teacher_student(p_teacher: torch.Tensor, log_p_student: torch.Tensor,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(teacher || student)`` per sample ``[B]``, summed over the classes in ``keep``."""
    log_t = p_teacher.clamp_min(1e-12).log()
    if keep is not None:  # outside keep: p_teacher is 0 and log p_student is -inf
        log_p_student = torch.where(keep, log_p_student, torch.zeros_like(log_p_student))
    terms = p_teacher * (log_t - log_p_student)
    if keep is not None:
        terms = torch.where(keep, terms, torch.zeros_like(terms))
    return terms.sum(-1)


@register_method("neokd")
class NEOKD(RDI):
    """NEO-KD: RDI-Nets plus neighbour and exit-wise orthogonal knowledge distillation."""

    config_class = NEOKDConfig
    _subsets: torch.Tensor | None = None

    def subsets(self, num_classes: int, num_exits: int) -> torch.Tensor:
        """The exit-wise class split, drawn on first use from torch's seed (the training seed,
        the same on every rank), then fixed."""
        if self._subsets is None or self._subsets.shape[:2] != (num_classes, num_exits):
            gen = torch.Generator().manual_seed(torch.initial_seed())
            self._subsets = orthogonal_subsets(num_classes, num_exits, gen)
        return self._subsets

    def kd_terms(self, clean: list[torch.Tensor], adv: list[torch.Tensor],
                 y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(NKD, EOKD)`` per exit, ``[num_exits]`` each (batch means, scaled by T^2)."""
        n_exits, n_classes = len(clean), clean[0].shape[1]
        if self.exit_weights.numel() != n_exits:
            raise ConfigError(
                f"{self.exit_weights.numel()} exit weights for a model with {n_exits} exits "
                "(NEO-KD's exit balancing needs one per exit)"
            )
        t = float(self.config.temperature)
        teachers = [F.softmax(z.detach() / t, dim=-1) for z in clean]  # detached: no gradient
        subsets = self.subsets(n_classes, n_exits).to(y.device)
        nkd, eokd = [], []
        for i in range(n_exits):
            near = [teachers[j] for j in (i - 1, i, i + 1) if 0 <= j < n_exits]
            teacher = torch.stack(near).mean(0)
            nkd.append(kl_teacher_student(teacher, F.log_softmax(adv[i] / t, dim=-1)).mean())
            keep = subsets[y, i] | F.one_hot(y, n_classes).bool()  # [B, K]
            t_logits = (clean[i].detach() / t).masked_fill(~keep, -math.inf)
            s_logits = (adv[i] / t).masked_fill(~keep, -math.inf)
            eokd.append(kl_teacher_student(F.softmax(t_logits, dim=-1),
                                           F.log_softmax(s_logits, dim=-1), keep).mean())
        scale = t * t
        return torch.stack(nkd) * scale, torch.stack(eokd) * scale

    def neokd_loss(self, clean, adv, y) -> torch.Tensor:
        """RDI + alpha * sum_i w_i NKD_i + beta * sum_i w_i EOKD_i."""
        nkd, eokd = self.kd_terms(clean, adv, y)
        w = self.exit_weights
        return (self.rdi_loss(clean, adv, y) + self.config.alpha * (w * nkd).sum()
                + self.config.beta * (w * eokd).sum())

    def loss(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        clean, adv = self.forward_pair(net, batch)
        return self.neokd_loss(clean, adv, batch.y)

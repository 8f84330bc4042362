"""RDI-Nets adversarial training of a multi-exit model.

Hu et al., "Triple Wins: Boosting Accuracy, Robustness and Efficiency Together by Enabling
Input-Adaptive Inference", ICLR 2020 (https://arxiv.org/abs/2002.10025)::

    loss = sum_i w_i * 0.5 * [CE(f_i(x), y) + CE(f_i(x_adv), y)]

with class weights in the cross-entropy (as the ``standard`` method) and ``x_adv`` from a
multi-exit PGD on the bare model in eval mode: average-exit (``attack="avg"``) or max-average
(``attack="max-avg"``), within ``eps`` mV on the signal channels only
(:class:`~edgeexit.robust.methods.adversarial.AdversarialConfig`). Clean and adversarial inputs go
through ``net`` in ONE forward pass (DDP allows one forward per backward).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeexit.robust.methods.adversarial import AdversarialConfig, TrainingAttack, split_logits
from edgeexit.robust.methods.base import Batch, TrainContext, TrainingMethod, register_method


@register_method("rdi")
class RDI(TrainingMethod):
    """RDI-Nets: the mean of the clean and the adversarial weighted multi-exit cross-entropy."""

    config_class = AdversarialConfig
    crafts_attacks = True

    def setup(self, context: TrainContext) -> None:
        super().setup(context)
        self.attack = self.make_attack(context)
        self._attack_losses: list[float] = []
        self._zero_grad = 0.0

    def make_attack(self, context: TrainContext):
        """The training attack (``ctxadv`` makes its own)."""
        return TrainingAttack(self.config, context)

    def adversarial(self, batch: Batch) -> torch.Tensor:
        """The training attack's adversarial inputs for ``batch`` (detached)."""
        x_adv = self.attack(batch.x, batch.y, batch.template)
        stats = self.attack.attack.stats
        if "mean_loss" in stats:
            self._attack_losses.append(stats["mean_loss"])
        self._zero_grad = max(self._zero_grad, stats.get("zero_grad_fraction", 0.0))
        return x_adv

    def rdi_loss(self, clean: list[torch.Tensor], adv: list[torch.Tensor],
                 y: torch.Tensor) -> torch.Tensor:
        """``sum_i w_i * 0.5 * [CE(clean_i, y) + CE(adv_i, y)]`` on the logits of every exit."""
        return 0.5 * (self.exit_losses(clean, y) + self.exit_losses(adv, y))

    def forward_pair(self, net: nn.Module, batch: Batch):
        """One forward pass of ``cat([x, x_adv])``: the (clean, adversarial) logits per exit."""
        x_adv = self.adversarial(batch)
        return split_logits(net(torch.cat([batch.x, x_adv])), len(batch.x))

    def loss(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        clean, adv = self.forward_pair(net, batch)
        return self.rdi_loss(clean, adv, batch.y)

    def summary(self) -> dict:
        n = len(self._attack_losses)
        return {
            "name": self.name,
            "attack": self.attack.attack.describe(),
            "attack_mean_loss": None if n == 0 else float(sum(self._attack_losses) / n),
            "attack_zero_grad_fraction": self._zero_grad,
        }

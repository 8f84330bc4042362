"""Standard multi-exit training: a weighted sum of the cross-entropy of every exit.

Kaya et al., "Shallow-Deep Networks: Understanding and Mitigating Network Overthinking", ICML 2019
(https://arxiv.org/abs/1810.07052): every exit is trained jointly; later exits weigh more.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeexit.robust.methods.base import Batch, TrainingMethod, register_method


@register_method("standard")
class Standard(TrainingMethod):
    """``loss = sum_k w_k * CE(f_k(x), y)`` with optional class weights in the cross-entropy."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.exit_losses(model(batch.x), batch.y)

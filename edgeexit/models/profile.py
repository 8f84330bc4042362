"""Parameters and MACs of every stage and exit head, and the cumulative cost of reaching each exit.

MACs come from PyTorch's own ``FlopCounterMode`` (convolutions and matrix products; one MAC is two
FLOPs); element-wise layers (BatchNorm, ReLU, pooling) are not counted, as is customary.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgeexit.models.base import MultiExitNet


@dataclasses.dataclass(frozen=True)
class ExitCost:
    """Cost figures for one exit (per input window).

    Attributes:
        index: exit index k.
        stage_macs / stage_params: stage k alone.
        head_macs / head_params: exit head k alone.
        cumulative_macs: MACs of an inference that leaves at exit k: stages 0..k and heads 0..k
            (each exit passed is evaluated to decide whether to stop).
        feature_shape: ``[C, L]`` of the stage output features_k.
    """

    index: int
    stage_macs: int
    stage_params: int
    head_macs: int
    head_params: int
    cumulative_macs: int
    feature_shape: tuple[int, int]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["feature_shape"] = list(self.feature_shape)
        return d


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _macs(m: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    with FlopCounterMode(display=False) as counter:
        y = m(x)
    return counter.get_total_flops() // 2, y


@torch.no_grad()
def profile_model(model: MultiExitNet, input_shape: tuple[int, int]) -> list[ExitCost]:
    """Per-exit cost of ``model`` for one input window of shape ``(C, L)``.

    Returns:
        One :class:`ExitCost` per exit, in order.
    """
    was_training = model.training
    model.eval()
    try:
        h = torch.zeros(1, *input_shape)
        costs = []
        total = 0
        for k, (stage, head) in enumerate(zip(model.stages, model.exits)):
            s_macs, h = _macs(stage, h)
            h_macs, _ = _macs(head, h)
            total += s_macs + h_macs  # an early-exit run evaluates every head it passes
            costs.append(
                ExitCost(
                    index=k,
                    stage_macs=s_macs,
                    stage_params=_params(stage),
                    head_macs=h_macs,
                    head_params=_params(head),
                    cumulative_macs=total,
                    feature_shape=(int(h.shape[1]), int(h.shape[2])),
                )
            )
        return costs
    finally:
        model.train(was_training)

"""The multi-exit model contract, the model configuration, and the input normalisation layer.

A :class:`MultiExitNet` is a backbone cut into stages with a classifier ("exit") after each:

    stage k: features_{k-1} -> features_k   (stage 0 takes the raw input window, in mV)
    exit k:  features_k -> logits_k

Inputs are raw physical-unit windows ``[N, C, L]``; any normalisation is a layer inside stage 0
(:class:`InputNorm`), so attacks, perturbation budgets in mV and the device all see the same units.
A user brings their own model by passing their stages and heads to :class:`MultiExitNet`.

Example:
    >>> net = MultiExitNet([stage0, stage1], [head0, head1])
    >>> logits = net(x)             # [logits_0, logits_1], each [N, num_classes]
    >>> early = net.forward_until(x, 0)  # only stage 0 runs
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from edgeexit.config import EXIT_HEADS, dataclass_from_dict
from edgeexit.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a registered model (stored in every checkpoint).

    Attributes:
        family: registry name of the model family (see :func:`edgeexit.models.list_models`).
        in_channels: input channels C (signal channels first, then context channels).
        num_classes: number of output classes of every exit.
        input_length: window length L in samples.
        signal_channels: leading channels that are signal in physical units (centred per window
            by :class:`InputNorm`); the remaining channels are context (e.g. RR intervals).
        width: channel-width multiplier (1.0 = the family's default size).
        exit_heads: the early exits' classifiers: ``conv`` (a small convolutional adapter before
            pooling, SDN-style: more accurate early exits) or ``linear`` (global average pooling
            and a linear layer only: the cheapest exits, for when the early heads' cost matters
            more than their accuracy). The final exit is pooling + linear either way.
        context_fusion: pass the context channels' scalars on to every exit, which adds a linear
            term in them to its logits (:mod:`edgeexit.models.fusion`); needs context channels.
    """

    family: str
    in_channels: int
    num_classes: int
    input_length: int = 256
    signal_channels: int = 1
    width: float = 1.0
    exit_heads: str = "conv"
    context_fusion: bool = False

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.num_classes < 2 or self.input_length < 16:
            raise ConfigError(
                "a model needs in_channels >= 1, num_classes >= 2 and input_length >= 16, got "
                f"{self.in_channels}, {self.num_classes}, {self.input_length}"
            )
        if not 1 <= self.signal_channels <= self.in_channels:
            raise ConfigError(
                f"signal_channels must lie in 1..in_channels={self.in_channels}, "
                f"got {self.signal_channels}"
            )
        if not 0.0 < self.width <= 8.0:
            raise ConfigError(f"width multiplier must lie in (0, 8], got {self.width}")
        if self.exit_heads not in EXIT_HEADS:
            raise ConfigError(
                f"exit_heads must be one of {', '.join(EXIT_HEADS)}, got {self.exit_heads!r}"
            )

    def to_dict(self) -> dict:
        """A JSON-ready dict; :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        return dataclass_from_dict(cls, d, "model config keys")


class InputNorm(nn.Module):
    """Per-channel affine normalisation, with per-window centring of the signal channels.

    Signal channels have their window mean removed first (baseline offsets differ between leads,
    electrodes and patients), then every channel is standardised with statistics fitted on the
    training data by :meth:`fit`. Stored as buffers so they travel with the checkpoint and export.

    Shape:
        ``[N, C, L] -> [N, C, L]``
    """

    def __init__(self, channels: int, signal_channels: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.signal_channels = signal_channels
        self.register_buffer("mean", torch.zeros(1, channels, 1))
        self.register_buffer("inv_std", torch.ones(1, channels, 1))

    def _centre(self, x: torch.Tensor) -> torch.Tensor:
        s = self.signal_channels
        sig = x[:, :s] - x[:, :s].mean(dim=-1, keepdim=True)  # [N, s, L]
        return torch.cat([sig, x[:, s:]], dim=1) if s < self.channels else sig

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._centre(x) - self.mean) * self.inv_std

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set the statistics from training windows ``x [N, C, L]`` (raw units)."""
        if x.ndim != 3 or x.shape[1] != self.channels:
            raise ConfigError(f"InputNorm.fit expects [N, {self.channels}, L], got {tuple(x.shape)}")
        c = self._centre(x.float())
        self.mean.copy_(c.mean(dim=(0, 2), keepdim=True))
        std = c.std(dim=(0, 2), keepdim=True)
        self.inv_std.copy_(1.0 / std.clamp_min(1e-6))


class MultiExitNet(nn.Module):
    """A backbone cut into stages, with an exit classifier after each stage.

    Args:
        stages: stage k maps features_{k-1} to features_k (stage 0 takes the raw input).
        exits: exit k maps features_k to logits_k; one per stage.
        config: the :class:`ModelConfig` that rebuilds this model from the registry (None for a
            user's own model; such a model is saved with its state dict but rebuilt by the user).
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        exits: Sequence[nn.Module],
        config: ModelConfig | None = None,
    ) -> None:
        super().__init__()
        if len(stages) != len(exits) or not stages:
            raise ConfigError(
                f"a MultiExitNet needs one exit per stage, got {len(stages)} stages and "
                f"{len(exits)} exits"
            )
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(exits)
        self.config = config

    @property
    def num_exits(self) -> int:
        """Number of exits (== number of stages)."""
        return len(self.exits)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit, in order; each ``[N, num_classes]``."""
        return self.forward_until(x, self.num_exits - 1)

    def forward_until(self, x: torch.Tensor, k: int) -> list[torch.Tensor]:
        """Logits of exits ``0..k``; stages after ``k`` are not computed."""
        if not 0 <= k < self.num_exits:
            raise IndexError(f"exit index {k} out of range 0..{self.num_exits - 1}")
        logits = []
        h = x
        for stage, head in zip(self.stages[: k + 1], self.exits[: k + 1]):
            h = stage(h)
            logits.append(head(h))
        return logits

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (the tensors that cross segment boundaries on the device)."""
        feats = []
        h = x
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def fit_input_norm(self, x: torch.Tensor) -> None:
        """Fit every :class:`InputNorm` inside the model on raw training windows ``x``."""
        for m in self.modules():
            if isinstance(m, InputNorm):
                m.fit(x)

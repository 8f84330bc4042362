"""Late fusion of the context channels: every exit adds a linear term in the input's context.

The RR and morphology context are constant channels of the input window (see
:mod:`edgeexit.runtime.preprocess`). Without fusion only stage 0's first convolution sees them, and
the exits reach them through the whole convolutional path, where the network learns them
together with the training patients' waveforms. A linear classifier on the same ten scalars
(RR intervals and their ratios to the patient's rhythm, the beat against the patient's template)
is what the inter-patient literature builds on (de Chazal et al. 2004). With fusion
(``ModelConfig.context_fusion``):

- every stage passes the input's context scalars on beside its features, as ``K`` constant
  channels appended to its output (``[N, C_k + K, L_k]``), so that a segment on the device still
  takes and returns one tensor and needs nothing but its input;
- every exit answers ``head(features) + W_k @ context``: the head it would have anyway, plus a
  linear layer on the (normalised) context scalars.

The context is taken after stage 0's input normalisation (its own :class:`InputNorm`, fitted with
the others by ``fit_input_norm``), and it is the *last* ``K`` channels of every boundary, so that
pruning a stage's feature channels leaves it where it is.

Example:
    >>> net = create_model(ModelConfig("resnet1d", in_channels=11, num_classes=5,
    ...                                context_fusion=True))
    >>> [f.shape[1] for f in net.features(x)]   # 16 + 10, 32 + 10, 64 + 10, 128 + 10
"""

from __future__ import annotations

import torch
from torch import nn

from edgeexit.errors import ConfigError
from edgeexit.models.base import InputNorm, ModelConfig, MultiExitNet


class CarryContext(nn.Module):
    """A stage that passes the context scalars on beside its features.

    Stage 0 (``norm`` given) takes the raw window, runs the stage on all of it and appends the
    normalised context channels; a later stage runs on all but the last ``context`` channels of
    its input and appends those channels again, at its own output length.

    Shape:
        ``[N, C_in (+ K), L] -> [N, C_out + K, L_out]``
    """

    def __init__(self, stage: nn.Module, context: int, norm: InputNorm | None = None) -> None:
        super().__init__()
        self.stage = stage
        self.context = context
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.context
        if self.norm is not None:
            h = self.stage(x)
            # InputNorm leaves context channels uncentred, so normalising their window mean is
            # the normalised channels' mean; the signal channels need not be normalised again
            n = self.norm
            ctx = (x[:, -k:].mean(dim=-1, keepdim=True) - n.mean[:, -k:]) * n.inv_std[:, -k:]
        else:
            h = self.stage(x[:, :-k])
            ctx = x[:, -k:, :1]  # carried: constant over time already
        return torch.cat([h, ctx.expand(-1, -1, h.shape[-1])], dim=1)  # ctx [N, K, 1]


class ContextHead(nn.Module):
    """An exit that adds a linear term in the context scalars to its head's logits.

    Shape:
        ``[N, C + K, L] -> [N, num_classes]``
    """

    def __init__(self, head: nn.Module, context: int, num_classes: int) -> None:
        super().__init__()
        self.head = head
        self.context = context
        self.context_fc = nn.Linear(context, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.context
        return self.head(x[:, :-k]) + self.context_fc(x[:, -k:, 0])


def fuse_context(model: MultiExitNet, config: ModelConfig) -> MultiExitNet:
    """The same stages and heads with the context passed to every exit (see the module docstring).

    Raises:
        ConfigError: the input has no context channels (``in_channels == signal_channels``).
    """
    k = config.in_channels - config.signal_channels
    if k < 1:
        raise ConfigError(
            "context fusion needs context channels (RR or morphology) after the signal channels; "
            f"this input has {config.in_channels} channel(s), all signal: turn the context on "
            "(--rr-context / --morph-context) or leave --context-fusion off"
        )
    norm = InputNorm(config.in_channels, config.signal_channels)
    stages = [CarryContext(s, k, norm if i == 0 else None) for i, s in enumerate(model.stages)]
    heads = [ContextHead(h, k, config.num_classes) for h in model.exits]
    return MultiExitNet(stages, heads, config)


def without_context(model: MultiExitNet) -> MultiExitNet:
    """The fused model's own stages and heads, without the context path (the same modules and
    parameters, shared, not copied): what structured pruning traces, since the carried channels
    (a concatenation and slices) are not for it to prune. A model without fusion is returned as is.
    """
    if not all(isinstance(s, CarryContext) for s in model.stages):
        return model
    return MultiExitNet([s.stage for s in model.stages],
                        [h.head if isinstance(h, ContextHead) else h for h in model.exits])

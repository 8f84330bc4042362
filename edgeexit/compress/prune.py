"""Structured channel pruning of multi-exit models, with torch-pruning.

Channels are really removed (convolutions, batch norms and linear layers get smaller), so the
pruned model is smaller and faster on a CPU, not just sparser. torch-pruning traces the model's
dependency graph, so pruning a stage's output channels also removes the matching input channels
of the next stage, of the residual shortcuts and of that stage's exit head: every exit stays
consistent with its stage. Every exit's final classifier layer is left alone (its output is the
class count), and so is the input (its channels are the data's).

- ``ratio``: fraction of the channels of every prunable layer removed (``per-stage``), or of all
  channels together, ranked across layers (``global``: thin layers can lose more).
- ``stage_ratios``: one ratio per stage (stage k and its exit head k share it).
- ``importance``: ``magnitude`` (L2 norm of a channel's weights), ``bn-scale`` (|gamma| of the
  batch norm that follows: network slimming) or ``taylor`` (first-order Taylor estimate of the
  loss change, |w * dL/dw|, on a batch of training data).
- ``steps``: prune in that many equal steps; between steps a caller-supplied ``between(step)``
  fine-tunes the model (iterative pruning recovers accuracy better than one cut).

A user's own :class:`~edgeexit.models.MultiExitNet` prunes the same way; save its shapes with
:func:`edgeexit.models.plan.channel_plan` (checkpoints of registered models do it themselves).

Example:
    >>> report = prune_model(model, PruneConfig(ratio=0.75), example=x[:2])
    >>> report.macs_after / report.macs_before
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from edgeexit.config import dataclass_from_dict
from edgeexit.errors import ConfigError
from edgeexit.models import MultiExitNet, profile_model
from edgeexit.models.fusion import without_context

log = logging.getLogger(__name__)

IMPORTANCES = ("magnitude", "bn-scale", "taylor")
SCOPES = ("per-stage", "global")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """How to prune.

    Attributes:
        ratio: fraction of channels removed, in [0, 1) (0 = no pruning).
        scope: ``per-stage`` (every prunable layer loses ``ratio`` of its channels) or ``global``
            (channels ranked across all layers; at most ``max_layer_ratio`` from one layer).
        stage_ratios: one ratio per stage instead of ``ratio`` (stage k and exit head k share it).
        importance: ``magnitude``, ``bn-scale`` or ``taylor`` (see the module docstring).
        steps: equal pruning steps (fine-tuning in between, when the caller gives it).
        round_to: keep channel counts multiples of this (SIMD-friendly kernels on the device).
        max_layer_ratio: most any one layer may lose under ``global`` pruning.
        min_channels: ``per-stage``: no stage is pruned below this many output channels (its
            ratio is lowered to keep them). Very narrow layers save little and quantize badly:
            the quick-start model at 0.75 (stage 0 left with 4 channels) agreed with PyTorch on
            only 98.8% of test beats at exit 0 in int8, under every calibration recipe tried.
    """

    ratio: float = 0.5
    scope: str = "per-stage"
    stage_ratios: tuple[float, ...] | None = None
    importance: str = "magnitude"
    steps: int = 1
    round_to: int = 4
    max_layer_ratio: float = 0.9
    min_channels: int = 8

    def __post_init__(self) -> None:
        if self.stage_ratios is not None:
            object.__setattr__(self, "stage_ratios", tuple(float(r) for r in self.stage_ratios))
        for r in (self.ratio, *(self.stage_ratios or ())):
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not (
                math.isfinite(r) and 0.0 <= r < 1.0
            ):
                raise ConfigError(
                    f"a pruning ratio is the fraction of channels removed, in [0, 1), got {r!r}"
                )
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown pruning scope {self.scope!r}; choose {', '.join(SCOPES)}")
        if self.importance not in IMPORTANCES:
            raise ConfigError(
                f"unknown importance {self.importance!r}; choose one of {', '.join(IMPORTANCES)}"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"pruning steps must be an integer >= 1, got {self.steps!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to must be an integer >= 1, got {self.round_to!r}")
        if isinstance(self.min_channels, bool) or not isinstance(self.min_channels, int) or (
                self.min_channels < 1):
            raise ConfigError(f"min_channels must be an integer >= 1, got {self.min_channels!r}")
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise ConfigError(f"max_layer_ratio must lie in (0, 1), got {self.max_layer_ratio}")

    @property
    def active(self) -> bool:
        """Whether anything is pruned at all."""
        return self.ratio > 0 or any(r > 0 for r in self.stage_ratios or ())

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stage_ratios"] = None if self.stage_ratios is None else list(self.stage_ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PruneConfig:
        d = dict(d)
        if d.get("stage_ratios") is not None:
            d["stage_ratios"] = tuple(d["stage_ratios"])
        return dataclass_from_dict(cls, d, "prune config keys")


@dataclasses.dataclass(frozen=True)
class PruneReport:
    """What pruning did.

    Attributes:
        params_before / params_after: parameter counts.
        macs_before / macs_after: MACs to every exit (cumulative, per window).
        channels_before / channels_after: output channels of every stage.
        config: the :class:`PruneConfig`.
    """

    params_before: int
    params_after: int
    macs_before: tuple[int, ...]
    macs_after: tuple[int, ...]
    channels_before: tuple[int, ...]
    channels_after: tuple[int, ...]
    config: PruneConfig

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        for k in ("macs_before", "macs_after", "channels_before", "channels_after"):
            d[k] = list(d[k])
        d["macs_ratio"] = self.macs_after[-1] / max(self.macs_before[-1], 1)
        d["params_ratio"] = self.params_after / max(self.params_before, 1)
        return d


def classifier_layers(model: MultiExitNet) -> list[nn.Module]:
    """The layer of every exit that produces its logits (the last Linear or Conv1d of the head):
    never pruned, or the class count would change."""
    out = []
    for k, head in enumerate(model.exits):
        layers = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
        if not layers:
            raise ConfigError(f"exit {k} has no Linear or Conv1d layer to keep as its classifier")
        out.append(layers[-1])
    return out


def _importance(name: str):
    import torch_pruning as tp

    if name == "magnitude":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "bn-scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.TaylorImportance()


def _stage_channels(model: MultiExitNet, example: torch.Tensor) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(int(f.shape[1]) for f in model.features(example))


def _taylor_gradients(model: MultiExitNet, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Gradients of the summed exit cross-entropy on ``data`` (Taylor importance reads them)."""
    x, y = data
    was_training = model.training
    model.eval()  # batch-norm statistics stay as trained
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = sum(nn.functional.cross_entropy(z, y) for z in model(x))
        loss.backward()
    model.train(was_training)


def _stage_ratios(config: PruneConfig, channels: tuple[int, ...], stages: int) -> tuple[float, ...]:
    """Every stage's ratio: ``stage_ratios`` or ``ratio``, lowered where the stage would be left
    with fewer than ``min_channels`` output channels."""
    ratios = config.stage_ratios if config.stage_ratios is not None else (config.ratio,) * stages
    if len(ratios) != stages:
        raise ConfigError(f"{len(ratios)} stage ratios for a model with {stages} stages")
    out = []
    for k, (r, c) in enumerate(zip(ratios, channels)):
        if r > 0 and c * (1 - r) < config.min_channels:
            lowered = max(0.0, 1.0 - config.min_channels / c)
            log.info("stage %d: ratio %.2f would leave %d of %d channels; %.2f keeps %d "
                     "(min_channels)", k, r, round(c * (1 - r)), c, lowered, config.min_channels)
            r = lowered
        out.append(r)
    return tuple(out)


def prune_model(
    model: MultiExitNet,
    config: PruneConfig,
    example: torch.Tensor,
    *,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    between: Callable[[int], None] | None = None,
) -> PruneReport:
    """Prune ``model`` in place.

    Args:
        model: the multi-exit model (registered or a user's own).
        config: the :class:`PruneConfig`.
        example: a few input windows ``[N, C, L]`` (traced to find the layer dependencies).
        data: ``(x, y)`` training windows and labels; needed by ``taylor`` importance.
        between: called as ``between(step)`` after every pruning step but the last (fine-tune
            there); the model is in eval mode when it is called and when this returns.

    Returns:
        A :class:`PruneReport`.

    Raises:
        ConfigError: ``taylor`` without data, ``stage_ratios`` not one per stage, or a model that
            torch-pruning cannot trace.
    """
    shape = tuple(example.shape[1:])
    model.eval()
    before = profile_model(model, shape)
    params_before = sum(p.numel() for p in model.parameters())
    net = without_context(model)  # the context path (models.fusion) is not pruned
    channels_before = _stage_channels(net, example)
    if config.importance == "taylor" and data is None:
        raise ConfigError("taylor importance needs training data (x, y) to take gradients on")
    ratios = _stage_ratios(config, channels_before, model.num_exits)
    ratio_dict = None
    if config.scope == "per-stage" and ratios != (config.ratio,) * model.num_exits:
        ratio_dict = {(stage, head): r for stage, head, r in zip(net.stages, net.exits, ratios)}
    if config.active:
        pruner = _pruner(net, example, config, ratio_dict)
        for step in range(config.steps):
            if config.importance == "taylor":
                _taylor_gradients(model, data)
            pruner.step()
            model.zero_grad(set_to_none=True)
            model.eval()
            log.info("pruning step %d/%d: %d parameters", step + 1, config.steps,
                     sum(p.numel() for p in model.parameters()))
            if between is not None and step + 1 < config.steps:
                between(step)
                model.eval()
    after = profile_model(model, shape)
    report = PruneReport(
        params_before=params_before,
        params_after=sum(p.numel() for p in model.parameters()),
        macs_before=tuple(c.cumulative_macs for c in before),
        macs_after=tuple(c.cumulative_macs for c in after),
        channels_before=channels_before,
        channels_after=_stage_channels(net, example),
        config=config,
    )
    log.info("pruned to %.1f%% of the parameters and %.1f%% of the MACs (stage channels %s -> %s)",
             100 * report.params_after / max(params_before, 1),
             100 * report.macs_after[-1] / max(report.macs_before[-1], 1),
             list(channels_before), list(report.channels_after))
    return report


def _pruner(net, example: torch.Tensor, config: PruneConfig, ratio_dict):
    """torch-pruning's pruner of ``net``'s stages (the exit classifiers kept whole)."""
    import torch_pruning as tp

    try:
        return tp.pruner.BasePruner(
            net,
            example,
            importance=_importance(config.importance),
            pruning_ratio=config.ratio,
            pruning_ratio_dict=ratio_dict,
            global_pruning=config.scope == "global",
            max_pruning_ratio=config.max_layer_ratio,
            iterative_steps=config.steps,
            ignored_layers=classifier_layers(net),
            round_to=config.round_to,
        )
    except Exception as e:  # torch-pruning raises plain exceptions on graphs it cannot trace
        raise ConfigError(
            f"torch-pruning could not trace the model ({type(e).__name__}: {e}); "
            "a MultiExitNet of Conv1d/BatchNorm1d/Linear layers is supported"
        ) from e

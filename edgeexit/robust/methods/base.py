"""The training-method interface and its registry.

A training method turns one batch into a scalar loss for the whole multi-exit model. The training
loop (:func:`edgeexit.train.train`) owns everything else (data, optimiser, schedule, checkpoints,
distributed training), so adding a method from the literature is one small class with its own
frozen settings:

- ``config_class``: a frozen :class:`MethodConfig` dataclass (eps, steps, ...); the training
  config carries one (``TrainConfig.method_config``) and the checkpoint records it.
- :meth:`TrainingMethod.setup` receives a :class:`TrainContext` once before training: the bare
  model (not the DDP wrapper: attacks call ``forward_until`` and craft in eval mode on it), the
  exit and class weights, the training-set size (IMA sizes its per-sample margins from it) and
  which channels are signal (the attack budget applies to those only).
- :meth:`TrainingMethod.loss` receives ``net``, the module whose forward pass the optimiser's
  gradients must flow through (the DDP wrapper when distributed, so gradients are averaged across
  processes), and the batch. Call ``net`` once per step: DDP allows one forward per backward, so a
  method with clean and adversarial inputs concatenates them into one batch.

Example:
    >>> @dataclasses.dataclass(frozen=True)
    ... class MineConfig(MethodConfig):
    ...     eps: float = 0.1
    >>> @register_method("mine")
    ... class Mine(TrainingMethod):
    ...     config_class = MineConfig
    ...     def loss(self, net, batch):
    ...         return self.exit_losses(net(batch.x), batch.y)
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from edgeexit.config import dataclass_from_dict
from edgeexit.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Batch:
    """One training batch.

    Attributes:
        x: inputs in physical units, ``[B, C, L]``.
        y: labels, ``[B]``.
        index: stable, unique index of every sample in the training set, ``[B]`` (methods that
            keep per-sample state, such as IMA's margins, key it by this).
        template: every window's morphology template ``[B, L]`` (the median of its recording's
            previous beats, scaled like the augmented beat), when the training attacks recompute
            the morphology channels (:attr:`TrainContext.morph`); else None.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    template: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every training method's frozen settings (``standard`` has none).

    Subclasses add fields with defaults and validate them in ``__post_init__``.
    """

    def to_dict(self) -> dict:
        """A JSON-ready dict; :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MethodConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        return dataclass_from_dict(cls, dict(d), f"{cls.__name__} keys")


@dataclasses.dataclass(frozen=True)
class TrainContext:
    """What the training loop hands a method once, before the first batch.

    Attributes:
        model: the bare :class:`~edgeexit.models.MultiExitNet` (never the DDP wrapper).
        exit_weights: weight of every exit's loss, ``[num_exits]``.
        class_weights: cross-entropy weight of every class, ``[num_classes]``, or None.
        num_samples: size of the training set (``Batch.index`` lies in ``0..num_samples-1``).
        signal_channels: the leading input channels that are signal (attackable, in mV); the
            rest are RR context and are never perturbed.
        world: number of training processes (1 unless under torchrun).
        morph: the :class:`~edgeexit.robust.context.MorphContext` through which the training
            attacks recompute the morphology channels from the perturbed waveform, as the device
            does (every batch then carries its ``template``); None: the attacks hold them at
            the batch's values (data without morphology channels, or ``attack_morph="held"``).
        channels: the data's channel names (``ctxadv`` finds the RR channels by name), or None.
        fs: the data's sampling rate in Hz, or None.
    """

    model: nn.Module
    exit_weights: torch.Tensor
    class_weights: torch.Tensor | None
    num_samples: int
    signal_channels: int
    world: int = 1
    morph: Any = None
    channels: tuple[str, ...] | None = None
    fs: float | None = None


class TrainingMethod(abc.ABC):
    """Base class of training methods.

    Args:
        config: the method's settings, an instance of its ``config_class`` (None = defaults).
    """

    name: str = ""
    config_class: type[MethodConfig] = MethodConfig
    #: the method perturbs the waveform (its attacks then recompute the morphology channels)
    crafts_attacks: bool = False

    def __init__(self, config: MethodConfig | None = None) -> None:
        if config is None:
            config = self.config_class()
        if type(config) is not self.config_class:
            raise ConfigError(
                f"training method {self.name!r} takes a {self.config_class.__name__}, "
                f"got a {type(config).__name__}"
            )
        self.config = config
        self.context: TrainContext | None = None

    def setup(self, context: TrainContext) -> None:
        """Receive the bare model, the weights and the data size; called once before training.

        Subclasses that keep state (IMA's margins) extend it and call ``super().setup(context)``.
        """
        self.context = context

    @property
    def model(self) -> nn.Module:
        """The bare model (attacks run on it, in eval mode)."""
        return self._ctx.model

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (and the method's per-sample state goes)."""
        return next(self.model.parameters(), torch.empty(0)).device  # a parameter-free model: CPU

    @property
    def exit_weights(self) -> torch.Tensor:
        return self._ctx.exit_weights

    @property
    def class_weights(self) -> torch.Tensor | None:
        return self._ctx.class_weights

    @property
    def _ctx(self) -> TrainContext:
        if self.context is None:
            raise RuntimeError(f"{type(self).__name__}.setup(context) was not called")
        return self.context

    def exit_losses(self, logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Weighted sum over exits of the (class-weighted) cross-entropy; a scalar tensor."""
        if len(logits) != self.exit_weights.numel():
            raise ConfigError(
                f"{self.exit_weights.numel()} exit weights for a model with {len(logits)} exits"
            )
        per_exit = torch.stack(
            [nn.functional.cross_entropy(z, y, weight=self.class_weights) for z in logits]
        )  # [num_exits]
        return (self.exit_weights * per_exit).sum()

    @abc.abstractmethod
    def loss(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        """The scalar loss of ``batch``; the caller runs backward and the optimiser step.

        Args:
            net: the module to run for the loss (the DDP wrapper when distributed); it is in
                train mode. Craft attacks on :attr:`model` instead.
            batch: the (augmented) batch.
        """

    def on_epoch_end(self, epoch: int) -> None:
        """Called after every epoch (methods with schedules or per-sample state use it)."""

    def summary(self) -> dict:
        """JSON-ready facts about the method's state after training (recorded in the metrics)."""
        return {}


_METHODS: dict[str, type[TrainingMethod]] = {}


def register_method(name: str) -> Callable[[type[TrainingMethod]], type[TrainingMethod]]:
    """Class decorator that registers a :class:`TrainingMethod` under ``name``."""

    def wrap(cls: type[TrainingMethod]) -> type[TrainingMethod]:
        if name in _METHODS:
            raise ValueError(f"training method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def list_methods() -> list[str]:
    """Names of the registered training methods."""
    return sorted(_METHODS)


def check_method_name(name: str) -> None:
    """Raise :class:`ConfigError` listing the known methods if ``name`` is not registered."""
    if name not in _METHODS:
        raise ConfigError(f"unknown training method {name!r}; known: {', '.join(list_methods())}")


def method_config_class(name: str) -> type[MethodConfig]:
    """The frozen settings class of the registered method ``name``."""
    check_method_name(name)
    return _METHODS[name].config_class


def make_method_config(name: str, options: Mapping[str, Any] | None = None) -> MethodConfig:
    """The settings of method ``name`` from a dict of field values (missing ones default).

    Raises:
        ConfigError: an option the method does not take (the message lists the ones it does).
    """
    cls = method_config_class(name)
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "no options"
        raise ConfigError(
            f"training method {name!r} does not take {', '.join(unknown)} (it takes: {takes})"
        )
    return cls.from_dict(options)


def create_method(name: str, config: MethodConfig | None = None) -> TrainingMethod:
    """Instantiate the registered method ``name`` with its settings (None = defaults)."""
    check_method_name(name)
    return _METHODS[name](config)

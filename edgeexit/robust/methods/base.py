"""The training-method interface and its registry.

A training method turns one batch into a scalar loss for the whole multi-exit model. The training
loop (:func:`edgeexit.train.train`) owns everything else (data, optimiser, schedule, checkpoints,
distributed training), so adding a method from the literature is one small class.

Example:
    >>> @register_method("mine")
    ... class Mine(TrainingMethod):
    ...     def loss(self, model, batch):
    ...         ...
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from edgeexit.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Batch:
    """One training batch.

    Attributes:
        x: inputs in physical units, ``[B, C, L]``.
        y: labels, ``[B]``.
        index: stable, unique index of every sample in the training set, ``[B]`` (methods that
            keep per-sample state, such as IMA's margins, key it by this).
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor


class TrainingMethod(abc.ABC):
    """Base class of training methods.

    Args:
        exit_weights: weight of every exit's loss, ``[num_exits]``.
        class_weights: cross-entropy weight of every class, ``[num_classes]``, or None.
    """

    name: str = ""

    def __init__(self, exit_weights: torch.Tensor, class_weights: torch.Tensor | None = None):
        self.exit_weights = exit_weights
        self.class_weights = class_weights

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
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The scalar loss of ``batch``; the caller runs backward and the optimiser step."""

    def on_epoch_end(self, epoch: int) -> None:  # noqa: B027  (optional hook)
        """Called after every epoch (methods with schedules or per-sample state use it)."""


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


def create_method(
    name: str, exit_weights: torch.Tensor, class_weights: torch.Tensor | None = None
) -> TrainingMethod:
    """Instantiate the registered method ``name``."""
    check_method_name(name)
    return _METHODS[name](exit_weights, class_weights)

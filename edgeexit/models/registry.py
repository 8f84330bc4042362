"""The model registry: family name -> builder, as data rather than string dispatch.

Example:
    >>> cfg = ModelConfig("resnet1d", in_channels=6, num_classes=5)
    >>> net = create_model(cfg)
"""

from __future__ import annotations

from collections.abc import Callable

from edgeexit.errors import ConfigError
from edgeexit.models.base import ModelConfig, MultiExitNet
from edgeexit.models.fusion import fuse_context

Builder = Callable[[ModelConfig], MultiExitNet]
_REGISTRY: dict[str, Builder] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder(config) -> MultiExitNet`` under ``name``."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model family {name!r} registered twice")
        _REGISTRY[name] = builder
        _DESCRIPTIONS[name] = description
        return builder

    return wrap


def list_models() -> dict[str, str]:
    """Registered family names and their one-line descriptions, sorted by name."""
    return {k: _DESCRIPTIONS[k] for k in sorted(_REGISTRY)}


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` listing the known families if ``name`` is not registered."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")


def create_model(config: ModelConfig) -> MultiExitNet:
    """Build the registered model described by ``config`` (weights freshly initialised)."""
    check_model_name(config.family)
    model = _REGISTRY[config.family](config)
    if config.context_fusion:
        model = fuse_context(model, config)
    model.config = config
    return model

"""Helpers shared by the frozen configuration dataclasses (no torch: the device imports them)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from edgeexit.errors import ConfigError

# kinds of early exit a model family builds (ModelConfig.exit_heads); here, free of torch, so that
# the command line offers the same choices without importing the models
EXIT_HEADS = ("conv", "linear")

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], d: Any, what: str) -> T:
    """Build the dataclass ``cls`` from a dict, refusing keys that are not its fields.

    Args:
        cls: a dataclass type; its ``__post_init__`` validates the values.
        d: the dict (e.g. from JSON or TOML); missing keys keep their defaults.
        what: how the keys are called in the error message (e.g. ``"model config keys"``).

    Raises:
        ConfigError: ``d`` is not a dict, or holds keys that are not fields of ``cls``.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__} needs a table/dict, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(
            f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
        )
    return cls(**d)

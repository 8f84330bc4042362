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


class ConfigDict:
    """``to_dict`` / ``from_dict`` of a frozen config dataclass (a mixin); ``KEYS`` says what its
    keys are called in the error :func:`dataclass_from_dict` raises for unknown ones."""

    KEYS = "config keys"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return dataclass_from_dict(cls, d, cls.KEYS)


# the Python types a value read from TOML/JSON may have for a field annotated with each name
_ALLOWED = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
            "None": (type(None),), "tuple": (list, tuple), "list": (list, tuple), "dict": (dict,)}


def check_field_types(cls: type, d: dict, where: str) -> None:
    """Refuse values of the wrong type for the fields of the dataclass ``cls`` (e.g. a TOML
    ``epochs = "6"``), before its ``__post_init__`` compares them and fails with a TypeError.

    Only annotations made of the names above (``int``, ``float | None``, ``tuple[float, ...]``)
    are checked; other fields are left to the dataclass. An int is a float, a bool is no number.

    Raises:
        ConfigError: naming the key, the value and the type it should have.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in d.items():
        field = fields.get(key)
        if field is None or not isinstance(field.type, str):
            continue
        names = [part.strip().split("[", 1)[0] for part in field.type.split("|")]
        if not all(n in _ALLOWED for n in names):
            continue
        ok = any(isinstance(value, t) and not (isinstance(value, bool) and n in ("int", "float"))
                 for n in names for t in _ALLOWED[n])
        if not ok:
            raise ConfigError(f"{where}: {key} = {value!r} should be {field.type}")

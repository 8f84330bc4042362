"""Training recipes: what ``edgeexit train`` runs, as a TOML file (``--config FILE.toml``).

A recipe is the data (a :class:`~edgeexit.data.DataSpec`), the training config (a
:class:`~edgeexit.train.TrainConfig`) and, optionally, the number of cross-validation folds that
choose the epoch count. The files under ``recipes/`` are the ones the README's tables were made
with. Example (``recipes/mitdb-fused-cv.toml``)::

    cv = 4

    [data]
    source = "../shared/data/mitdb"
    morph_context = true

    [train]
    model = "resnet1d"
    context_fusion = true
    rr_scale = 0.3
    rr_augment = 0.5
    epochs = 16

    [train.method_config]   # the method's own settings (rdi: eps, steps, ...)

The one ``seed`` (in ``[train]``) seeds the data too, as ``edgeexit train --seed`` does.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from typing import Any

from edgeexit.config import check_field_types
from edgeexit.data import DataSpec
from edgeexit.errors import ConfigError
from edgeexit.robust.methods import method_config_class
from edgeexit.train import TrainConfig

_KEYS = ("cv", "data", "train")


@dataclasses.dataclass(frozen=True)
class TrainRecipe:
    """What to train on, how, and whether cross-validation chooses the epochs.

    Attributes:
        data: where the beats come from and how they are cut (its ``seed`` is ``train.seed``).
        train: the training config.
        cv: choose the epoch count by this many record folds first
            (:func:`edgeexit.train.run_training`'s ``cv_folds``); None = train once.
    """

    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    cv: int | None = None

    def __post_init__(self) -> None:
        if self.cv is not None and (isinstance(self.cv, bool) or not isinstance(self.cv, int)
                                    or self.cv < 2):
            raise ConfigError(f"cv is a number of folds (at least 2), got {self.cv!r}")
        if self.data.seed != self.train.seed:  # one seed, as on the command line
            object.__setattr__(self, "data", dataclasses.replace(self.data, seed=self.train.seed))

    def to_dict(self) -> dict:
        """A TOML-ready dict (no None: TOML has no null, a missing key is the default)."""
        data = {k: v for k, v in self.data.to_dict().items() if k != "seed"}
        return _drop_none({"cv": self.cv, "data": data, "train": self.train.to_dict()})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainRecipe:
        """The recipe :meth:`to_dict` wrote (or a TOML file's tables); unknown keys raise."""
        if not isinstance(d, dict):
            raise ConfigError(f"a training recipe is a table, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_KEYS))
        if unknown:
            raise ConfigError(f"unknown recipe keys {', '.join(map(repr, unknown))}; known: "
                              f"{', '.join(_KEYS)}")
        data, train = dict(d.get("data") or {}), dict(d.get("train") or {})
        if "seed" in data:
            raise ConfigError("the recipe's seed is [train] seed (it seeds the data too); "
                              "remove seed from [data]")
        check_field_types(DataSpec, data, "[data]")
        check_field_types(TrainConfig, train, "[train]")
        if isinstance(train.get("method_config"), dict):
            check_field_types(method_config_class(train.get("method", "standard")),
                              train["method_config"], "[train.method_config]")
        train_config = TrainConfig.from_dict(train)
        spec = DataSpec.from_dict({**data, "seed": train_config.seed})
        return cls(data=spec, train=train_config, cv=d.get("cv"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainRecipe:
        """Read a recipe from a TOML file."""
        try:
            with open(path, "rb") as f:
                d = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read the training recipe {path}: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def override(self, data: dict | None = None, train: dict | None = None,
                 method_options: dict | None = None, cv: int | None = None) -> TrainRecipe:
        """This recipe with some values replaced (e.g. the options given on the command line).

        Args:
            data: :class:`DataSpec` fields.
            train: :class:`TrainConfig` fields other than ``method_config``; a ``method`` other
                than the recipe's starts from that method's default settings.
            method_options: fields of the (resulting) method's settings.
            cv: the folds, if given.
        """
        t = {**self.train.to_dict(), **(train or {})}
        if t["method"] != self.train.method:
            t["method_config"] = {}
        t["method_config"] = {**t["method_config"], **(method_options or {})}
        d = {k: v for k, v in {**self.data.to_dict(), **(data or {})}.items() if k != "seed"}
        return TrainRecipe.from_dict(_drop_none({"cv": self.cv if cv is None else cv,
                                                 "data": d, "train": t}))


def _drop_none(d):
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d

"""Checkpoints that rebuild their model from the file alone.

A checkpoint stores the :class:`~edgeexit.models.ModelConfig`, the channel plan of a pruned model
(:mod:`edgeexit.models.plan`: the layers whose shape differs from a fresh build of the config), the
weights, the class names, the input specification (shape, sampling rate, units, channels) and how the model was trained. It is
loaded with ``torch.load(weights_only=True)``: plain tensors and Python literals only, so opening a
checkpoint from elsewhere cannot execute code.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from edgeexit.data import DataSpec
from edgeexit.errors import CheckpointError, ConfigError, DataError
from edgeexit.fileio import atomic_write
from edgeexit.models import ModelConfig, MultiExitNet, create_model
from edgeexit.models.payload import check_format, read_payload
from edgeexit.models.plan import apply_channel_plan, channel_plan

CHECKPOINT_FORMAT = "edgeexit.checkpoint"
CHECKPOINT_VERSION = 2
"""2 adds ``channel_plan`` (pruned models); version 1 files (no plan) still load."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        model: the rebuilt model, in eval mode.
        classes: class names, label order.
        input_spec: ``shape`` ``[C, L]``, ``fs``, ``units``, ``channels``, ``signal_channels``,
            ``window`` and ``r_offset`` (where the R peak sits), ``rr_context``, ``morph_context``.
        meta: everything else stored (training config, data description, metrics summary).
    """

    model: MultiExitNet
    classes: tuple[str, ...]
    input_spec: dict
    meta: dict

    def data_spec(self, source: str | DataSpec | None = None, needed: str = "") -> DataSpec:
        """The data to use with this model: ``source`` (a :class:`DataSpec` as is; a source
        string cut into the windows the model takes), or, when None, the spec training recorded.

        Raises:
            DataError: ``source`` is None and the checkpoint records no data; ``needed`` ends
                the message (what the data is needed for, and how to give it).
        """
        if isinstance(source, DataSpec):
            return source
        if source is not None:
            return DataSpec(
                source=source,
                window=int(self.input_spec.get("window", self.input_spec["shape"][-1])),
                rr_context=bool(self.input_spec.get("rr_context", True)),
                morph_context=bool(self.input_spec.get("morph_context", False)),
            )
        recorded = ((self.meta or {}).get("data") or {}).get("spec")
        if recorded is None:
            raise DataError(f"the checkpoint does not record its training data{needed}")
        return DataSpec.from_dict(recorded)


def save_checkpoint(
    path: str | os.PathLike,
    model: MultiExitNet,
    *,
    classes: tuple[str, ...],
    input_spec: dict,
    meta: dict | None = None,
) -> Path:
    """Write ``model`` and everything needed to rebuild it to ``path`` (atomically).

    A pruned model is saved with its channel plan, so it loads from the file alone.

    Raises:
        ConfigError: the model has no :class:`ModelConfig` (a user-built model that the registry
            cannot rebuild; save its ``state_dict`` and :func:`~edgeexit.models.plan.channel_plan`
            yourself).
    """
    if model.config is None:
        raise ConfigError("only registered models can be checkpointed (model.config is None)")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": model.config.to_dict(),
        "channel_plan": _plan(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "input_spec": dict(input_spec),
        "meta": dict(meta or {}),
    }
    path = Path(path)
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def _plan(model: MultiExitNet) -> dict:
    """The layers of ``model`` whose shape differs from a fresh build of its config."""
    with torch.random.fork_rng(devices=[]):  # the reference build must not move torch's RNG
        reference = create_model(model.config)
    return channel_plan(model, reference=reference)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Rebuild the model stored at ``path``.

    Raises:
        CheckpointError: missing file, not an edgeexit checkpoint, or a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    payload = read_payload(path, "a checkpoint (a model.pt written by `edgeexit train`)")
    check_format(path, payload, CHECKPOINT_FORMAT, CHECKPOINT_VERSION,
                 "an edgeexit checkpoint (written by `edgeexit train`)", "checkpoint version")
    model = create_model(ModelConfig.from_dict(payload["model_config"]))
    plan = payload.get("channel_plan") or {}
    if plan:
        try:
            apply_channel_plan(model, plan)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from e
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the stored model config: {e}") from e
    model.eval()
    return Checkpoint(
        model=model,
        classes=tuple(payload["classes"]),
        input_spec=dict(payload["input_spec"]),
        meta=dict(payload["meta"]),
    )

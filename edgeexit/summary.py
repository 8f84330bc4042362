"""Summaries of checkpoints, model families and the host, for `edgeexit info` and reports."""

from __future__ import annotations

from pathlib import Path

from edgeexit.errors import ConfigError
from edgeexit.runtime.preprocess import RR_FEATURES
from edgeexit.runtime.profile import machine_info  # noqa: F401 (re-exported: it lives with the runtime)

DEFAULT_INPUT_SHAPE = (1 + len(RR_FEATURES), 256)  # one ECG lead + RR context, 256 samples
DEFAULT_NUM_CLASSES = 5


def describe_models() -> dict[str, str]:
    """Registered model families and their descriptions."""
    from edgeexit.models import list_models

    return list_models()


def describe_target(target: str, exit_heads: str = "conv") -> dict:
    """Architecture, per-exit cost and (for checkpoints) classes and test metrics of ``target``.

    Args:
        target: a checkpoint path, or a registered model family name.
        exit_heads: the early exits a family is profiled with (a checkpoint has its own).

    Raises:
        ConfigError: ``target`` is neither an existing file nor a known family.
        CheckpointError: the file is not a readable edgeexit checkpoint.
    """
    from edgeexit.checkpoint import load_checkpoint
    from edgeexit.models import ModelConfig, create_model, list_models, profile_model

    if Path(target).is_file():
        ckpt = load_checkpoint(target)
        model, classes, spec = ckpt.model, list(ckpt.classes), ckpt.input_spec
        test = ckpt.meta.get("final_test")
        compression = ckpt.meta.get("compression")
    elif target in list_models():
        c, length = DEFAULT_INPUT_SHAPE
        model = create_model(ModelConfig(target, in_channels=c, num_classes=DEFAULT_NUM_CLASSES,
                                         input_length=length, exit_heads=exit_heads))
        classes, test, compression = None, None, None
        spec = {"shape": [c, length], "channels": ["ecg", *RR_FEATURES]}
    else:
        raise ConfigError(
            f"{target!r} is neither a checkpoint file nor a model family; "
            f"known families: {', '.join(list_models())}"
        )
    costs = profile_model(model, tuple(spec["shape"]))
    return {
        "name": target,
        "model": model.config.to_dict(),
        "classes": classes,
        "input_spec": spec,
        "params": sum(p.numel() for p in model.parameters()),
        "exits": [c.to_dict() for c in costs],
        "test": test,
        "compression": None if not compression else {
            k: compression.get(k) for k in ("source_checkpoint", "prune", "finetune", "pruning")},
        "architecture": str(model),
    }

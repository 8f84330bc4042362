"""Channel plans: the shape of every layer, so that a pruned model can be rebuilt from a file.

A registered model is rebuilt from its :class:`~edgeexit.models.ModelConfig` (family + width).
Structured pruning removes channels layer by layer, so the config alone no longer describes the
model: the **channel plan** records, for every ``Conv1d``, ``BatchNorm1d`` and ``Linear`` whose
shape differs from a fresh build, its channel counts (and a convolution's groups: pruning a
depthwise convolution changes them). :func:`apply_channel_plan` resizes a fresh build to the plan
(new, uninitialised layers with the recorded shapes, every other hyper-parameter kept), after
which the pruned weights load with ``load_state_dict``.

The same pair works for a user's own :class:`~edgeexit.models.MultiExitNet`: build it again,
apply the plan saved with :func:`channel_plan`, load the state dict.

Example:
    >>> plan = channel_plan(pruned, reference=create_model(pruned.config))
    >>> fresh = apply_channel_plan(create_model(pruned.config), plan)
    >>> fresh.load_state_dict(pruned.state_dict())
"""

from __future__ import annotations

from torch import nn

from edgeexit.errors import CheckpointError

PLANNED = (nn.Conv1d, nn.BatchNorm1d, nn.Linear)
"""Layer types whose channel counts a plan records (the ones structured pruning resizes)."""


def layer_shape(module: nn.Module) -> dict:
    """The channel counts of one planned layer, from its parameters (what pruning changed)."""
    if isinstance(module, nn.Conv1d):
        return {"type": "Conv1d", "in": int(module.weight.shape[1] * module.groups),
                "out": int(module.weight.shape[0]), "groups": int(module.groups)}
    if isinstance(module, nn.BatchNorm1d):
        n = module.running_mean if module.running_mean is not None else module.weight
        return {"type": "BatchNorm1d", "features": int(n.shape[0])}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in": int(module.weight.shape[1]),
                "out": int(module.weight.shape[0])}
    raise TypeError(f"no channel plan for {type(module).__name__}")


def channel_plan(model: nn.Module, reference: nn.Module | None = None) -> dict[str, dict]:
    """The shape of every planned layer of ``model``, by module name.

    Args:
        model: the (pruned) model.
        reference: a fresh build of the same architecture; when given, only the layers whose
            shape differs from it are recorded (an unpruned model has an empty plan).
    """
    ref = {} if reference is None else {
        name: layer_shape(m) for name, m in reference.named_modules() if isinstance(m, PLANNED)
    }
    plan = {}
    for name, m in model.named_modules():
        if isinstance(m, PLANNED):
            shape = layer_shape(m)
            if ref.get(name) != shape:
                plan[name] = shape
    return plan


def _resized(old: nn.Module, shape: dict, name: str) -> nn.Module:
    kind = type(old).__name__
    if shape.get("type") != kind:
        raise CheckpointError(
            f"channel plan says layer {name!r} is a {shape.get('type')}, the model has a {kind}: "
            "the plan belongs to another architecture"
        )
    if isinstance(old, nn.Conv1d):
        return nn.Conv1d(
            shape["in"], shape["out"], old.kernel_size, stride=old.stride, padding=old.padding,
            dilation=old.dilation, groups=shape["groups"], bias=old.bias is not None,
            padding_mode=old.padding_mode,
        )
    if isinstance(old, nn.BatchNorm1d):
        return nn.BatchNorm1d(
            shape["features"], eps=old.eps, momentum=old.momentum, affine=old.affine,
            track_running_stats=old.track_running_stats,
        )
    return nn.Linear(shape["in"], shape["out"], bias=old.bias is not None)


def apply_channel_plan(model: nn.Module, plan: dict[str, dict]) -> nn.Module:
    """Resize the layers of ``model`` named in ``plan`` (in place; returns ``model``).

    The resized layers are freshly initialised: load the pruned state dict afterwards.

    Raises:
        CheckpointError: the plan names a layer the model does not have, or of another type.
    """
    modules = dict(model.named_modules())
    for name, shape in plan.items():
        old = modules.get(name)
        if old is None or not isinstance(old, PLANNED):
            raise CheckpointError(
                f"channel plan names layer {name!r}, which the model does not have (or is not a "
                "Conv1d/BatchNorm1d/Linear): the plan belongs to another architecture"
            )
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        new = _resized(old, shape, name)
        if attr.isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList)):
            parent[int(attr)] = new
        else:
            setattr(parent, attr, new)
    return model

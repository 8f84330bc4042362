"""Split a :class:`MultiExitNet` into per-exit segments, the unit that export and the device run.

Segment k takes ``feat_{k-1}`` (segment 0 takes ``input``, the raw window in physical units) and
returns ``(feat_k, logits_k)``; the last segment returns ``logits_k`` only. Chaining the segments
computes exactly what ``model(x)`` computes, one exit at a time, so the device can stop after any
segment. :class:`Monolithic` is the whole model as one graph (input -> final logits, no early exit
heads), exported beside the segments for side-by-side benchmarks.

Only some exits can be deployed (``exits=(0, 3)``, the final exit always among them): segment j
then runs every stage after the previous deployed exit up to stage ``exits[j]`` as one graph, then
exit ``exits[j]``'s head; the heads of the other exits are in no segment. Tensor names keep the
MODEL's exit index (segment 1 of ``exits=(0, 3)`` takes ``feat_0`` and returns ``logits_3``), so a
name always says which model exit it comes from and segment j + 1's input is still segment j's
first output (what :func:`edgeexit.runtime.manifest.check_chain` checks). A segment's position in
the chain is its ``index``; the model exit it answers is its ``exit``.

Example:
    >>> segments = split_model(model)
    >>> specs = segment_specs(model, (8, 256))
    >>> feat, logits0 = segments[0](x)
    >>> merged = split_model(model, exits=(0, 3))   # 2 segments: stage 0 + head 0, stages 1-3 + head 3
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from edgeexit.errors import ConfigError
from edgeexit.models.base import MultiExitNet
from edgeexit.runtime.manifest import SegmentEntry

log = logging.getLogger(__name__)

INPUT_NAME = "input"


def feat_name(k: int) -> str:
    """Name of the tensor that stage ``k`` produces (crosses the boundary to segment ``k + 1``)."""
    return f"feat_{k}"


def logits_name(k: int) -> str:
    """Name of the logits tensor of exit ``k``."""
    return f"logits_{k}"


class Segment(nn.Module):
    """Stage k followed by exit k: ``feat_{k-1} -> (feat_k, logits_k)``, or ``logits_k`` if last.

    A merged segment's ``stage`` is an ``nn.Sequential`` of several stages (see the module
    docstring); ``exit`` is the model exit whose head it ends with, ``stages`` the stage indices
    it runs.
    """

    def __init__(self, stage: nn.Module, head: nn.Module, last: bool, exit: int | None = None,
                 stages: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.stage = stage
        self.head = head
        self.last = last
        self.exit = exit
        self.stages = stages if stages is not None else (() if exit is None else (exit,))

    def forward(self, x: torch.Tensor):
        h = self.stage(x)
        logits = self.head(h)
        return logits if self.last else (h, logits)


class Monolithic(nn.Module):
    """The whole model as one graph: input -> logits of the final exit (no early-exit heads)."""

    def __init__(self, model: MultiExitNet) -> None:
        super().__init__()
        self.stages = model.stages
        self.head = model.exits[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


# A segment's interface is the manifest's own record of it (names, per-sample shapes, MACs,
# parameters); export fills in its files (``artifacts``) once they are written.
SegmentSpec = SegmentEntry


def _check(model: nn.Module) -> MultiExitNet:
    if not isinstance(model, MultiExitNet):
        raise ConfigError(
            f"only a MultiExitNet can be split into exits, got {type(model).__name__}; build one "
            "from your stages and heads with edgeexit.models.MultiExitNet(stages, exits)"
        )
    return model


def check_exits(exits, num_exits: int) -> tuple[int, ...]:
    """The deployed exits as a sorted tuple: ``None`` = every exit; else unique integers in
    ``0..num_exits-1`` that include the final exit and at least one early exit (sorted here, so
    ``(3, 0)`` means ``(0, 3)``). Raises :class:`ConfigError` naming the problem."""
    if exits is None:
        return tuple(range(num_exits))
    try:
        vals = [int(k) for k in exits]
    except (TypeError, ValueError):
        raise ConfigError(f"exits must be integers (model exit indices), got {exits!r}") from None
    if any(isinstance(k, bool) or int(k) != k for k in exits):
        raise ConfigError(f"exits must be integers (model exit indices), got {exits!r}")
    if len(set(vals)) != len(vals):
        raise ConfigError(f"exits {vals} name an exit twice; give each model exit index once")
    bad = [k for k in vals if not 0 <= k < num_exits]
    if bad:
        raise ConfigError(
            f"exit(s) {bad} out of range: the model has {num_exits} exits, 0..{num_exits - 1}"
        )
    if num_exits - 1 not in vals:
        raise ConfigError(
            f"exits {sorted(vals)} leave out the final exit {num_exits - 1}: it answers whatever "
            f"no earlier exit decided, so it must be deployed (add {num_exits - 1})"
        )
    if len(vals) < 2:
        raise ConfigError(
            f"exits {vals} deploy no early exit: keep at least one besides the final exit "
            f"{num_exits - 1} (without early exits, run the monolithic graph)"
        )
    return tuple(sorted(vals))


def split_model(model: MultiExitNet, exits=None) -> list[Segment]:
    """One :class:`Segment` per deployed exit (``exits``: model exit indices, None = all; see
    :func:`check_exits`), sharing the model's modules (no copies); in eval mode.

    Segment j runs stages ``exits[j-1]+1 .. exits[j]`` then head ``exits[j]``; with every exit
    deployed that is stage k + head k, the stage module itself (not wrapped), as before.
    """
    model = _check(model).eval()
    keep = check_exits(exits, model.num_exits)
    segments, first = [], 0
    for j, k in enumerate(keep):
        idx = tuple(range(first, k + 1))
        mods = [model.stages[i] for i in idx]
        stage = mods[0] if len(mods) == 1 else nn.Sequential(*mods)
        segments.append(Segment(stage, model.exits[k], last=j == len(keep) - 1, exit=k, stages=idx).eval())
        first = k + 1
    return segments


def segment_inputs(model: MultiExitNet, x: torch.Tensor, exits=None) -> list[torch.Tensor]:
    """The tensor that reaches each segment for inputs ``x``: ``[x, feat_0, ..., feat_{n-2}]``
    (with ``exits``: ``[x, feat_{exits[0]}, ..., feat_{exits[-2]}]``).

    This is what each segment must be calibrated on for int8: the features that really reach it.
    """
    model = _check(model).eval()
    keep = check_exits(exits, model.num_exits)
    with torch.no_grad():
        feats = model.features(x)
    return [x, *(feats[k] for k in keep[:-1])]


def segment_specs(model: MultiExitNet, input_shape: tuple[int, ...], exits=None) -> list[SegmentSpec]:
    """Names, per-sample shapes, MACs and parameters of every segment, for the bundle manifest.

    A merged segment costs the MACs and parameters of all its stages plus its one head.
    """
    from edgeexit.models.profile import profile_model

    model = _check(model).eval()
    costs = profile_model(model, tuple(input_shape))
    specs = []
    h = torch.zeros(1, *input_shape)
    in_name = INPUT_NAME
    with torch.no_grad():
        for j, seg in enumerate(split_model(model, exits)):
            k = seg.exit
            in_shape = tuple(int(d) for d in h.shape[1:])
            out = seg(h)
            if seg.last:
                names, tensors = (logits_name(k),), (out,)
            else:
                names, tensors = (feat_name(k), logits_name(k)), out
                h = out[0]
            specs.append(
                SegmentSpec(
                    index=j,
                    input_name=in_name,
                    input_shape=in_shape,
                    output_names=names,
                    output_shapes=tuple(tuple(int(d) for d in t.shape[1:]) for t in tensors),
                    macs=sum(costs[i].stage_macs for i in seg.stages) + costs[k].head_macs,
                    params=sum(costs[i].stage_params for i in seg.stages) + costs[k].head_params,
                    artifacts=(),
                    exit=k,
                )
            )
            in_name = feat_name(k)
    return specs


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (eval mode) with every BatchNorm folded into the convolution before it.

    The TFLite converter keeps BatchNorm as separate multiply/add ops; folding them first made
    the resnet1d graphs about 17% faster in LiteRT (monolithic 58.5 -> 48.5 us, chain of four
    segments 72.1 -> 60.7 us; batch 1, one thread, this x86_64 host) and computes the same
    function up to float rounding (max logit difference 1.4e-6). Uses
    ``torch.fx``; a module that cannot be traced symbolically is returned unchanged (logged).
    """
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(module).eval())
    except Exception as e:  # noqa: BLE001 - torch.fx raises many types for untraceable code
        log.info("BatchNorm not folded in %s (not traceable by torch.fx: %s)", type(module).__name__, e)
        return module

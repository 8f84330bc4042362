"""Context-adversarial training (``ctxadv``): RDI-Nets whose attack also moves the R-peak timing.

RDI-Nets and NEO-KD craft their training examples on the waveform with the RR channels held, so
the model learns that the RR context is the part of the input nobody can move, and leans on it
(README, "Robustness": with the waveform flattened, ``rdi`` keeps 0.39-0.44 macro-F1). On the
device the detector computes that context from the attacked signal. This method trains with
the device's threat model instead:

    loss = sum_i w_i * 0.5 * [CE(f_i(x), y) + CE(f_i(x_adv), y)]        (RDI-Nets' loss)

where ``x_adv`` comes from one Linf PGD over the waveform (``eps`` mV) AND the timing of the
beat's detection and of its two neighbours (``timing_ms`` each,
:class:`~edgeexit.robust.timing.ContextPGD`), with the RR channels recomputed from the moved
detections as the device computes them, the window re-cut around the moved detection, and the
morphology channels recomputed from the attacked waveform
(:class:`~edgeexit.robust.timing.TimingContext`). A model trained so cannot rely on RR
differences smaller than the timing budget; premature beats (S) stay separable as long as their
prematurity is larger than what ``timing_ms`` can fake (at 72 bpm, 25 ms moves ``pre_rr_ratio``
by at most 0.06).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from edgeexit.errors import ConfigError
from edgeexit.robust.methods.adversarial import AdversarialConfig, attack_input, attack_model
from edgeexit.robust.methods.adversarial import rank_seed_generator
from edgeexit.robust.methods.base import TrainContext, register_method
from edgeexit.robust.methods.rdi import RDI
from edgeexit.robust.names import TrainAttack
from edgeexit.robust.timing import ContextPGD, TimingContext


@dataclasses.dataclass(frozen=True)
class ContextAdvConfig(AdversarialConfig):
    """:class:`AdversarialConfig` (Linf, average-exit PGD) plus the timing budget.

    Attributes:
        timing_ms: the largest move of one R-peak detection, in ms, that the training attack may
            make (the beat's and its two neighbours'); chosen by validation on DS1 (see
            ``recipes/mitdb-ctxadv.toml``).
        rhythm: how far the training attack may move the long rhythm (``avg_rr``, the mean of
            the last 256 RR intervals), as a fraction: the device's extra or missed detections
            (:class:`~edgeexit.robust.timing.TimingContext`); 0 (the default, and the MIT-BIH
            recipe's): held. The quick start fine-tunes with 0.15.
    """

    timing_ms: float = 25.0
    rhythm: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.rhythm
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (
                math.isfinite(r) and r >= 0):
            raise ConfigError(f"rhythm must be a fraction >= 0 (0.15: the long mean of the RR "
                              f"intervals moves by up to 15%), got {r!r}")
        t = self.timing_ms
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
            raise ConfigError(f"timing_ms must be a number of ms > 0, got {t!r} (use method 'rdi' "
                              "for an attack on the waveform alone)")
        if self.norm != "linf" or self.attack != TrainAttack.AVG:
            raise ConfigError("ctxadv's attack is average-exit Linf PGD (norm 'linf', attack "
                              f"'avg'), got norm {self.norm!r}, attack {self.attack!r}")


class ContextTrainingAttack:
    """The training attack of :class:`ContextAdversarial`: fresh random starts every call; the
    returned windows are the model's inputs (RR and morphology channels recomputed)."""

    def __init__(self, config: ContextAdvConfig, context: TrainContext) -> None:
        if context.channels is None or context.fs is None:
            raise ConfigError("ctxadv needs the data's channel names and sampling rate "
                              "(TrainContext.channels, fs)")
        self.timing = TimingContext(context.channels, context.fs, config.timing_ms, config.eps,
                                    context.signal_channels, config.rhythm)
        self.attack = ContextPGD(self.timing.wrap(attack_model(context)), config.eps,
                                 budget_ms=config.timing_ms, rhythm=config.rhythm,
                                 steps=config.steps,
                                 step_size=config.resolved_step_size, objective="mean",
                                 signal_channels=context.signal_channels, seed=0)
        self.context = context
        self.gen = rank_seed_generator(context)

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 template: torch.Tensor | None = None) -> torch.Tensor:
        self.attack.seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.gen))
        xa = self.attack(self.timing.with_timing(attack_input(self.context, x, template)), y)
        x_adv = self.timing.apply(xa)
        morph = self.context.morph
        return (x_adv if morph is None else morph.recompute_torch(x_adv)).detach()


@register_method("ctxadv")
class ContextAdversarial(RDI):
    """RDI-Nets' loss with examples from the waveform-and-timing attack (module docstring)."""

    config_class = ContextAdvConfig

    def make_attack(self, context: TrainContext) -> ContextTrainingAttack:
        return ContextTrainingAttack(self.config, context)

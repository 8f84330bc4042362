"""Exit-aware attacks on multi-exit models (one small class per attack over :class:`Attack`).

White-box (need the PyTorch model): :class:`FGSM`, :class:`PGD` (Linf/L2; single-exit, average-
exit or policy-aware through its objective), :class:`MaxAvgPGD`, :class:`UniversalPerturbation`,
:class:`DeepSloth` and :class:`UniversalDeepSloth` (slowdown). Objectives:
:mod:`edgeexit.robust.attacks.objectives`.

Black-box, numpy only (no torch): :class:`~edgeexit.robust.attacks.square.SquareAttack`; import it
from :mod:`edgeexit.robust.attacks.square` (this package imports torch).
"""

from edgeexit.robust.attacks.base import NORMS, Attack, eval_mode, l2_eps, signal_channels_of
from edgeexit.robust.attacks.objectives import (
    ExitCE,
    MeanCE,
    Objective,
    PolicyCE,
    Slowdown,
    SumCE,
    make_objective,
)
from edgeexit.robust.attacks.pgd import FGSM, PGD, MaxAvgPGD
from edgeexit.robust.attacks.universal import DeepSloth, UniversalDeepSloth, UniversalPerturbation

__all__ = [
    "FGSM",
    "NORMS",
    "PGD",
    "Attack",
    "DeepSloth",
    "ExitCE",
    "MaxAvgPGD",
    "MeanCE",
    "Objective",
    "PolicyCE",
    "Slowdown",
    "SumCE",
    "UniversalDeepSloth",
    "UniversalPerturbation",
    "eval_mode",
    "l2_eps",
    "make_objective",
    "signal_channels_of",
]

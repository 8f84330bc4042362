"""The attacks' names: one ``(str, Enum)`` and one registry each (no torch: the CLI lists them).

- :class:`EvalAttack`, what ``edgeexit evaluate --attacks`` runs, and :data:`EVAL_ATTACKS`, what
  each needs and at which budget it runs (:mod:`edgeexit.robust.evaluate` dispatches on them);
- :class:`TrainAttack`, the attack adversarial training methods craft their examples with
  (:mod:`edgeexit.robust.methods.adversarial`, ``edgeexit train --attack``).

Members are strings (``EvalAttack.MAX_AVG == "max_avg"``, and JSON writes ``"max_avg"``), so
reports and configs read the same as before.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum


class EvalAttack(StrEnum):
    """An attack of ``edgeexit evaluate``, in the order it runs and reports them."""

    MAX_AVG = "max_avg"  # max-average PGD (per window, white box)
    POLICY = "policy"  # PGD on the deployed exit policy's answer
    UNIVERSAL = "universal"  # one perturbation for every window, fitted on training windows
    SQUARE = "square"  # black-box Square attack through the deployed runtime
    SLOWDOWN = "slowdown"  # DeepSloth: pushes windows to later exits (the cost, not the label)
    UNIVERSAL_SLOWDOWN = "universal_slowdown"  # a universal DeepSloth
    ONMANIFOLD = "onmanifold"  # PGD in a VAE's latent space (on-manifold)


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """Where an evaluation attack runs.

    Attributes:
        budget: ``eps``: at every budget of ``--eps``; ``max_eps``: at the largest only (the cost
            attacks); ``eta``: at the latent budget ``--eta``.
        needs: ``train``: fitted on training windows; ``bundle``: queries the deployed runtime
            (skipped for a checkpoint); ``vae``: a VAE of the data (``--vae``); None: nothing more.
    """

    budget: str
    needs: str | None = None


EVAL_ATTACKS: dict[EvalAttack, AttackSpec] = {
    EvalAttack.MAX_AVG: AttackSpec("eps"),
    EvalAttack.POLICY: AttackSpec("eps"),
    EvalAttack.UNIVERSAL: AttackSpec("eps", needs="train"),
    EvalAttack.SQUARE: AttackSpec("eps", needs="bundle"),
    EvalAttack.SLOWDOWN: AttackSpec("max_eps"),
    EvalAttack.UNIVERSAL_SLOWDOWN: AttackSpec("max_eps", needs="train"),
    EvalAttack.ONMANIFOLD: AttackSpec("eta", needs="vae"),
}


class TrainAttack(StrEnum):
    """The multi-exit PGD that adversarial training methods (RDI-Nets, NEO-KD) craft with."""

    AVG = "avg"  # PGD on the mean cross-entropy over exits
    MAX_AVG = "max-avg"  # per-exit PGDs, keeping per sample the one that hurts the average most


TRAIN_ATTACKS: tuple[TrainAttack, ...] = tuple(TrainAttack)


class StreamAttack(StrEnum):
    """An attack on the continuous signal (``edgeexit evaluate --records``), in report order:
    the device finds the R peaks in the attacked signal and computes the context from them
    (:mod:`edgeexit.robust.stream.attacks`)."""

    TIMING = "timing"  # detector-matched bursts in diastole (mid or amplitude-aware, the strongest): extra R peaks
    TIMING_SHIFT = "timing_shift"  # every R peak's fiducial point moved within a timing budget
    PGD = "pgd"  # white-box PGD through the device path (craft, re-detect, repeat)
    SQUARE = "square"  # black-box Square attack through the runtime, on the stream
    SLOWDOWN = "slowdown"  # DeepSloth on the stream (latency and energy per beat)

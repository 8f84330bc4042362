"""Per-class logit offsets that give a fine-tuned model back a reference model's sensitivities.

Adversarial fine-tuning buys robustness with rare classes: on MIT-BIH the ``ctxadv`` defence
answers more beats ``N`` than the model it was fine-tuned from, and finds fewer S and V beats
(DS1 validation, final exit, seed 2: S 27% against 41% for its parent). An offset added to one
class's logits moves the decision towards that class without touching the features: here, for
every exit, the smallest offsets (on a grid, never negative) after which each named class's
validation sensitivity is at least the reference model's at the same exit. The offsets are
folded into the bias of each exit head's last linear layer, so the exported graphs and the device
are unchanged.

Example:
    >>> ref = predict_exits(parent, val.x)            # before fine-tuning
    >>> ...fine-tune model...
    >>> record = keep_sensitivity(model, val.x, val.y, ref, classes=[1, 2])
"""

from __future__ import annotations

import logging

import numpy as np

from edgeexit.errors import ConfigError

log = logging.getLogger(__name__)

STEP = 0.05
"""Grid step of the offsets (logits)."""
LIMIT = 4.0
"""Largest offset: a class still short of its reference there keeps this (and a warning)."""
PASSES = 3
"""Rounds over the classes: raising one class's offset takes beats from the others."""
MAX_LOSS = 2.0
"""Points of validation accuracy the offsets of one exit may cost (the other classes pay for
the named ones): beyond it the targets are scaled back towards the sensitivities the model
has. Naming every class but N on the quick start's synthetic patients, whose unpruned model
finds 95-100% of every class, took N sensitivity to 0-36% without it; on MIT-BIH (S, V) the
offsets changed validation accuracy by -0.9 to +5 points."""


def check_keep(keep, max_loss) -> tuple[str, ...]:
    """``keep`` (class names) as a tuple, after checking it and ``max_loss`` (points of
    accuracy, 0-100): the settings of :attr:`edgeexit.train.TrainConfig.keep_sensitivity`."""
    if isinstance(keep, str) or not all(isinstance(c, str) and c for c in keep):
        raise ConfigError(f"keep_sensitivity takes class names (e.g. ['S', 'V']), got {keep!r}")
    if not (isinstance(max_loss, (int, float)) and 0 <= max_loss <= 100):
        raise ConfigError(f"keep_max_loss is in points of accuracy, 0-100, got {max_loss!r}")
    return tuple(keep)


def sensitivity(logits: np.ndarray, y: np.ndarray, c: int,
                offsets: np.ndarray | None = None) -> float:
    """Share of the beats of class ``c`` that ``argmax(logits + offsets)`` labels ``c`` (NaN
    where there are none)."""
    m = y == c
    if not m.any():
        return float("nan")
    z = logits[m] if offsets is None else logits[m] + offsets
    return float((z.argmax(axis=1) == c).mean())


def fit_offsets(logits: np.ndarray, y: np.ndarray, want: dict[int, float], step: float = STEP,
                limit: float = LIMIT, passes: int = PASSES) -> tuple[np.ndarray, list[int]]:
    """``(offsets [K], classes left short)``: for each class ``c`` of ``want`` (class -> the
    sensitivity to reach), the smallest grid offset >= the one it has that reaches it, class by
    class, until a round changes nothing (at most ``passes`` rounds). Offsets only grow, so the
    classes reached early may fall back only through a later class's offset; a class still
    short at ``limit`` is listed."""
    k = logits.shape[1]
    grid = np.arange(int(round(limit / step)) + 1) * step
    b = np.zeros(k)
    for _ in range(passes):
        changed = False
        for c, target in want.items():
            if np.isnan(target) or sensitivity(logits, y, c, b) >= target:
                continue
            t = b.copy()
            for v in grid[grid > b[c]]:
                t[c] = v
                if sensitivity(logits, y, c, t) >= target:
                    break
            b, changed = t, True
        if not changed:
            break
    return b, _short(logits, y, want, b)


def _short(logits: np.ndarray, y: np.ndarray, want: dict[int, float], b: np.ndarray) -> list[int]:
    """The classes of ``want`` whose sensitivity under the offsets ``b`` is below their target."""
    return [c for c, target in want.items()
            if not np.isnan(target) and sensitivity(logits, y, c, b) < target]


def logit_bias(head, num_classes: int):
    """The bias added last to the logits ``head`` returns: its last ``Linear`` of
    ``num_classes`` outputs (an exit head's classifier, or a context head's linear term).

    Raises:
        ConfigError: no such layer with a bias (a head this module cannot shift).
    """
    from torch import nn

    last = None
    for m in head.modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes and m.bias is not None:
            last = m
    if last is None:
        raise ConfigError(f"exit head {type(head).__name__} has no linear layer with a bias of "
                          f"{num_classes} outputs: its logits cannot be offset per class")
    return last.bias


def _accuracy(z: np.ndarray, y: np.ndarray, b: np.ndarray) -> float:
    return float(((z + b).argmax(axis=1) == y).mean())


def _guarded(z: np.ndarray, y: np.ndarray, have: dict[int, float], want: dict[int, float],
             max_loss: float) -> tuple[np.ndarray, list[int], float]:
    """:func:`fit_offsets` towards ``want``, scaled back (the largest share ``a`` of the way from
    ``have`` to ``want``, by bisection) until the offsets cost at most ``max_loss`` points of
    accuracy on ``z, y``. Returns ``(offsets, classes short of want, a)``."""
    floor = _accuracy(z, y, np.zeros(z.shape[1])) - max_loss / 100.0
    b, short = fit_offsets(z, y, want)
    if _accuracy(z, y, b) >= floor:
        return b, short, 1.0

    def toward(a: float) -> dict[int, float]:
        return {c: w if np.isnan(w) or w <= have[c] else have[c] + a * (w - have[c])
                for c, w in want.items()}

    lo, best = 0.0, np.zeros(z.shape[1])
    hi = 1.0
    for _ in range(10):
        mid = 0.5 * (lo + hi)
        t, _ = fit_offsets(z, y, toward(mid))
        if _accuracy(z, y, t) >= floor:
            lo, best = mid, t
        else:
            hi = mid
    return best, _short(z, y, want, best), lo


def keep_sensitivity(model, x: np.ndarray, y: np.ndarray, reference: np.ndarray,
                     classes: list[int], names: list[str] | None = None,
                     max_loss: float = MAX_LOSS) -> list[dict]:
    """Fold into every exit head of ``model`` the offsets (:func:`fit_offsets`) after which the
    validation beats ``x, y`` of each class of ``classes`` are found at least as often as by
    ``reference`` (the reference model's logits on them, ``[exits, N, K]``), as far as that
    costs at most ``max_loss`` points of the exit's validation accuracy (:data:`MAX_LOSS`;
    beyond it each target is scaled back towards the sensitivity the model has: the record's
    ``share`` of the way).

    Returns per exit ``"offsets"`` (every class's, in class order), ``"kept_offsets"``,
    ``"reference"``, ``"before"``, ``"after"`` (by kept class name), ``"accuracy"`` (before and
    after the offsets), ``"share"`` (1: the full way) and ``"short"``: the classes not reached
    (scaled back, at :data:`LIMIT`, or taken back by another class's offset in the last of the
    :data:`PASSES` rounds). The model's logits are checked to move by exactly the offsets (a
    head whose bias is not added last raises)."""
    from edgeexit.training.evaluation import predict_exits

    before = predict_exits(model, x)
    if reference.shape != before.shape:
        raise ConfigError(f"the reference logits are {list(reference.shape)}, the model's "
                          f"{list(before.shape)}: keep a reference with the same exits and classes")
    k = before.shape[-1]
    names = names or [str(c) for c in range(k)]
    record, shifts = [], []
    for e, (z, ref) in enumerate(zip(before.astype(np.float64), reference.astype(np.float64))):
        want = {c: sensitivity(ref, y, c) for c in classes}
        have = {c: sensitivity(z, y, c) for c in classes}
        b, short, share = _guarded(z, y, have, want, max_loss)
        if share < 1.0:
            log.warning("exit %d: the offsets that keep %s cost more than %g points of validation "
                        "accuracy: %.0f%% of the way kept", e, ", ".join(names[c] for c in classes),
                        max_loss, 100 * share)
        if short:
            log.warning("exit %d: %s still below the reference's sensitivity after %d rounds "
                        "(offsets %s)", e, ", ".join(names[c] for c in short), PASSES,
                        ", ".join(f"{names[c]} {b[c]:g}" for c in classes))
        _shift(model.exits[e], b)
        shifts.append(b)
        record.append({
            "exit": e, "offsets": [round(float(v), 4) for v in b],
            "kept_offsets": {names[c]: round(float(b[c]), 4) for c in classes},
            "reference": {names[c]: _r(want[c]) for c in classes},
            "before": {names[c]: _r(have[c]) for c in classes},
            "after": {names[c]: _r(sensitivity(z, y, c, b)) for c in classes},
            "accuracy": [_r(_accuracy(z, y, np.zeros(k))), _r(_accuracy(z, y, b))],
            "share": round(share, 4), "short": [names[c] for c in short],
        })
    after = predict_exits(model, x[:64])
    moved = after - before[:, :64]
    if not np.allclose(moved, np.asarray(shifts)[:, None, :], atol=1e-3):
        for e, b in enumerate(shifts):  # undo: the model is left as it came
            _shift(model.exits[e], -b)
        raise ConfigError("the exit heads' logits did not move by the offsets: a head adds its "
                          "bias before a nonlinearity; keep_sensitivity cannot shift it")
    return record


def _shift(head, b: np.ndarray) -> None:
    """Add ``b`` to the logits ``head`` returns (its :func:`logit_bias`)."""
    import torch

    with torch.no_grad():
        bias = logit_bias(head, len(b))
        bias += torch.as_tensor(b, dtype=bias.dtype, device=bias.device)


def _r(v: float) -> float | None:
    return None if np.isnan(v) else round(v, 4)

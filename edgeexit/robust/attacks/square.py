"""Square Attack for 1-D signals: a score-based black-box Linf attack that needs only predictions.

Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial attack via random
search", ECCV 2020 (https://arxiv.org/abs/1912.00049), adapted to ``[N, C, L]`` biosignals: a
"square" is a contiguous window of time steps on the signal channels.

This module is numpy only (no torch import): it attacks whatever answers
``predict(x [B, C, L] float32) -> probabilities [B, K]``, e.g. a deployed bundle through the
torch-free runtime (:func:`engine_predict`), which is the end-to-end check of the threat model
(DESIGN.md section 6): the attacker sees only what the device answers, exit policy included.
Import it as ``edgeexit.robust.attacks.square``; note that the package ``edgeexit.robust.attacks``
itself imports the torch-based attacks, so on a torch-free install load this file directly.

Example:
    >>> from edgeexit.runtime.engine import Engine
    >>> engine = Engine.from_bundle("bundle/")
    >>> attack = SquareAttack(engine_predict(engine), eps=0.1, signal_channels=1, n_queries=500)
    >>> x_adv = attack(x, y)
    >>> attack.stats["success_rate"], attack.stats["queries_mean"]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from edgeexit.errors import ConfigError

log = logging.getLogger(__name__)

# The paper's schedule of the window fraction p over 10,000 iterations: p is halved after each of
# these iterations (rescaled to the query budget actually given).
_HALVING_AT = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_PROB_TOL = 1e-3  # how far a row of predict's output may sum from 1


def engine_predict(engine) -> Callable[[np.ndarray], np.ndarray]:
    """``predict`` for a runtime :class:`~edgeexit.runtime.Engine`: the probabilities its exit
    policy answers (``engine.predict_batch(x).probs``)."""

    def predict(x: np.ndarray) -> np.ndarray:
        return engine.predict_batch(np.ascontiguousarray(x, dtype=np.float32)).probs

    return predict


def p_schedule(p_init: float, iteration: int, n_iters: int) -> float:
    """The fraction of the window changed at ``iteration`` of ``n_iters`` (the paper's schedule:
    ``p_init`` halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000,
    rescaled to ``n_iters``)."""
    it = int(iteration / max(n_iters, 1) * 10000)
    halvings = sum(it > t for t in _HALVING_AT)
    return p_init / 2**halvings


def margin(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log p_y - max_{j != y} log p_j`` per sample (negative: misclassified). On softmax
    outputs this equals the logit margin ``z_y - max_{j != y} z_j``."""
    logp = np.log(np.clip(probs.astype(np.float64), 1e-30, None))
    rows = np.arange(len(y))
    own = logp[rows, y]
    logp[rows, y] = -np.inf
    return own - logp.max(axis=1)


class SquareAttack:
    """Score-based black-box Linf Square attack on 1-D signals (Andriushchenko et al., ECCV 2020,
    https://arxiv.org/abs/1912.00049).

    Random search on the vertices of the Linf ball: start from vertical stripes (every signal
    channel and time step at ``+eps`` or ``-eps``); then, per iteration and per sample still
    classified correctly, pick a random window of ``round(p * L)`` time steps and give each
    signal channel a fresh sign ``+-eps`` on it; keep the change if the margin loss
    ``log p_y - max_{j != y} log p_j`` goes down. A sample stops querying once misclassified.
    The RR-context channels (after the first ``signal_channels``) are never touched.

    Distance Measure: Linf (on the signal channels).

    Args:
        predict: ``predict(x [B, C, L] float32) -> [B, K]`` class probabilities (rows sum to 1).
        eps: Linf budget in the input's units (mV).
        signal_channels: leading channels that are signal (the attackable waveform).
        n_queries: queries per sample at most, the clean one included.
        p_init: the window's initial fraction of the signal length. The paper's square covers a
            fraction p of the image (it used 0.05 for Linf on ImageNet); on a 1-D window the same
            fraction is ``p * L`` contiguous time steps. 0.1 starts with windows of 26 samples
            (72 ms at 360 Hz for L = 256), about the width of a QRS complex, the part of the beat
            a classifier reads most; the schedule shrinks them to one or two samples late on.
        seed: seeds the stripes, the windows and the signs.
        clip: optional ``(low, high)`` physical range of the attacked signal channels.

    Attributes:
        stats: facts about the last call: ``queries_mean`` (queries per sample, the clean one
            included), ``queries_mean_success`` (over the samples the attack flipped),
            ``success_rate`` (fraction of the samples classified correctly on clean inputs that
            end misclassified; NaN when none was correct), ``accuracy_clean``, ``accuracy_adv``,
            ``margin_clean_mean``, ``margin_adv_mean``.

    Shape:
        ``x [B, C, L]`` float, ``y [B]`` int -> ``[B, C, L]`` float32.
    """

    name = "square"

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], eps: float, *,
                 signal_channels: int, n_queries: int = 500, p_init: float = 0.1,
                 seed: int = 0, clip: tuple[float, float] | None = None) -> None:
        if not callable(predict):
            raise ConfigError("predict must be a function x [B, C, L] -> probabilities [B, K]")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ConfigError(f"attack budget eps must be a finite number >= 0, got {eps}")
        if isinstance(signal_channels, bool) or int(signal_channels) < 1:
            raise ConfigError(f"signal_channels must be >= 1, got {signal_channels!r}")
        if int(n_queries) < 1:
            raise ConfigError(f"n_queries must be >= 1, got {n_queries}")
        if not 0.0 < p_init <= 1.0:
            raise ConfigError(f"p_init must lie in (0, 1], got {p_init}")
        if clip is not None and not clip[0] < clip[1]:
            raise ConfigError(f"clip must be (low, high) with low < high, got {clip}")
        self.predict = predict
        self.eps = float(eps)
        self.signal_channels = int(signal_channels)
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)
        self.seed = int(seed)
        self.clip = clip
        self.stats: dict = {}

    def describe(self) -> dict:
        """JSON-ready settings (for reports)."""
        return {"attack": self.name, "eps": self.eps, "norm": "linf",
                "n_queries": self.n_queries, "p_init": self.p_init, "seed": self.seed}

    # ---------------------------------------------------------------------------------- helpers
    def _query(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The margin of ``predict`` at ``x`` (checking that it answers probabilities)."""
        probs = np.asarray(self.predict(np.ascontiguousarray(x, dtype=np.float32)))
        if probs.ndim != 2 or probs.shape[0] != len(x):
            raise ConfigError(
                f"predict must return probabilities [{len(x)}, K], got shape {probs.shape}"
            )
        sums = probs.sum(axis=1)
        if not np.all(np.isfinite(probs)) or np.any(np.abs(sums - 1.0) > _PROB_TOL):
            raise ConfigError(
                "predict must return class probabilities (rows summing to 1), not logits: "
                "apply a softmax"
            )
        return margin(probs, y)

    def _apply(self, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """``x + delta`` on the signal channels, inside ``clip``; context channels untouched."""
        out = x.copy()
        s = self.signal_channels
        sig = x[:, :s] + delta
        if self.clip is not None:
            sig = np.clip(sig, *self.clip)
        out[:, :s] = sig
        return out

    # --------------------------------------------------------------------------------- the call
    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Adversarial inputs for ``x [B, C, L]`` with labels ``y [B]`` (float32 array)."""
        x, y = self._check(x, y)
        n, s, length = len(x), self.signal_channels, x.shape[-1]
        rng = np.random.default_rng(self.seed)
        queries = np.ones(n, dtype=np.int64)
        m_clean = self._query(x, y)
        # per-sample perturbation of the signal channels; samples already misclassified keep 0
        delta = np.zeros((n, s, length), dtype=np.float32)
        m_best = m_clean.copy()
        todo = np.flatnonzero(m_clean > 0)
        if self.n_queries > 1 and todo.size:  # start from vertical stripes of +-eps
            stripes = self.eps * rng.choice([-1.0, 1.0], size=(todo.size, s, length))
            stripes = self._budget(x[todo], stripes.astype(np.float32))
            m_init = self._query(self._apply(x[todo], stripes), y[todo])
            queries[todo] += 1
            delta[todo] = stripes
            m_best[todo] = m_init
        n_iters = self.n_queries - 2
        for it in range(max(n_iters, 0)):
            active = np.flatnonzero(m_best > 0)
            if active.size == 0:
                break
            proposal = self._propose(rng, x[active], delta[active], it, n_iters)
            m_new = self._query(self._apply(x[active], proposal), y[active])
            queries[active] += 1
            better = m_new < m_best[active]
            delta[active[better]] = proposal[better]
            m_best[active[better]] = m_new[better]
            if (it + 1) % 100 == 0:
                log.debug("square attack: iteration %d/%d, %d sample(s) left, mean margin %.3f",
                          it + 1, n_iters, active.size, float(m_best[active].mean()))
        self.stats = self._stats(queries, m_clean, m_best)
        log.info(
            "square attack (eps %g, %d queries): accuracy %.3f -> %.3f, success rate %.3f, "
            "%.1f queries per sample", self.eps, self.n_queries, self.stats["accuracy_clean"],
            self.stats["accuracy_adv"], self.stats["success_rate"], self.stats["queries_mean"],
        )
        return self._apply(x, delta)

    def _check(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """``x`` as float32 ``[N, C, L]`` and ``y`` as integer ``[N]``, or a ConfigError."""
        x = np.asarray(x)
        y = np.asarray(y)
        s = self.signal_channels
        if x.ndim != 3 or x.shape[1] < s or x.shape[0] == 0:
            raise ConfigError(
                f"the Square attack takes [N, C, L] inputs with at least {s} signal channel(s), "
                f"got {x.shape}"
            )
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(f"labels must be integers of shape [{len(x)}], got {y.dtype} {y.shape}")
        return x.astype(np.float32), y

    def _propose(self, rng: np.random.Generator, x: np.ndarray, cur: np.ndarray, it: int,
                 n_iters: int) -> np.ndarray:
        """Iteration ``it``'s proposals for the still-correct samples ``x`` with perturbations
        ``cur``: one window of ``p_schedule`` length set to +-eps per channel."""
        s, length = self.signal_channels, x.shape[-1]
        a = len(x)
        t = np.arange(length)
        h = min(max(round(p_schedule(self.p_init, it, n_iters) * length), 1), length)
        start = rng.integers(0, length - h + 1, size=a)
        window = (t[None, :] >= start[:, None]) & (t[None, :] < start[:, None] + h)  # [A, L]
        signs = rng.choice([-1.0, 1.0], size=(a, s)).astype(np.float32)
        # the sign each channel has now at the window's first step: a proposal equal to it on
        # every channel would change nothing, so flip one channel's sign there
        now = np.sign(cur[np.arange(a), :, start])  # [A, s]
        same = np.all(signs == now, axis=1)
        if same.any():
            flip = rng.integers(0, s, size=int(same.sum()))
            signs[np.flatnonzero(same), flip] *= -1
        proposal = np.where(window[:, None, :], self.eps * signs[:, :, None], cur)
        return self._budget(x, proposal)

    @staticmethod
    def _stats(queries: np.ndarray, m_clean: np.ndarray, m_best: np.ndarray) -> dict:
        correct = m_clean > 0
        flipped = correct & (m_best <= 0)
        return {
            "queries_mean": float(queries.mean()),
            "queries_mean_success": float(queries[flipped].mean()) if flipped.any() else math.nan,
            "success_rate": float(flipped.sum() / correct.sum()) if correct.any() else math.nan,
            "accuracy_clean": float(correct.mean()),
            "accuracy_adv": float((m_best > 0).mean()),
            "margin_clean_mean": float(m_clean.mean()),
            "margin_adv_mean": float(m_best.mean()),
        }

    def _budget(self, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """``delta`` as it lands after ``clip``, so the stored perturbation is the real one."""
        if self.clip is None:
            return delta
        s = self.signal_channels
        return (np.clip(x[:, :s] + delta, *self.clip) - x[:, :s]).astype(np.float32)

"""The RR context under a timing attack: R-peak detections moved within a budget in ms.

On the device the RR channels are not given: the detector finds the R peaks in the signal the
attacker touches, and :func:`~edgeexit.runtime.preprocess.rr_features` computes them from those
detections. A small pulse near a QRS shifts the detector's fiducial point, so the attacker moves
the RR context as well as the waveform. :class:`TimingContext` models that per beat:

- the detections of the beat and of its two neighbours each move by at most ``budget_ms``
  (three shifts ``d_prev, d_cur, d_next`` in seconds);
- the beat's RR channels are recomputed from the moved detections with the device's formulas:
  ``pre_rr += d_cur - d_prev``, ``post_rr += d_next - d_cur`` (at least one sample each), and the
  ratios ``pre_rr / local_rr``, ``post_rr / local_rr``, ``pre_rr / avg_rr`` from them. The local
  median (16 intervals) is held: moving three detections changes it by at most ``2 * budget``
  (the test checks the recomputation against ``rr_features`` on moved peaks within those bounds);
- the long mean (256 intervals) is held too, unless ``rhythm`` > 0: then it is scaled by a factor
  within ``[1 / (1 + rhythm), 1 + rhythm]`` (and ``pre_rr / avg_rr`` with it). Moving detections
  barely moves a mean of 256 intervals, but *adding* detections does: every extra detection that
  passes for a full-size beat adds one interval to the same span, so ``k`` bursts among ``n``
  beats lower it by ``n / (n + k)``, for the rest of the record (issue 27: the quick start's paced
  test patient, 3 unflagged bursts in its first 43 beats took ``avg_rr`` 7% down and its paced
  beats from Q to F);
- the window is cut again around the moved detection: the signal channels move by
  ``round(d_cur * fs)`` samples (the samples that leave one end come back at the other, as in
  :func:`edgeexit.training.augment.augment_signal`).

The attacks see the shifts as three trailing input channels (constant over the window: value
``v`` in ``[-eps, eps]`` is a shift of ``v / eps * budget``; with ``rhythm`` a fourth, ``v``
scaling the long mean by ``(1 + rhythm) ** (v / eps)``), so one Linf PGD
(:class:`ContextPGD`) searches the waveform and the timing together, and the model an attack
differentiates (:meth:`TimingContext.wrap`) recomputes the context from both. The gradient reaches
the shifts through the RR channels (the re-cut is a whole number of samples and has none).

Example:
    >>> timing = TimingContext.of(data, budget_ms=25.0, eps=0.1)
    >>> x_adv = context_attack(model, data, eps=0.1, budget_ms=25.0)   # [N, C, L], device-like
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edgeexit.data import BeatDataset
from edgeexit.errors import ConfigError
from edgeexit.robust.attacks.pgd import PGD
from edgeexit.robust.context import InputMapped, MorphContext, record_templates
from edgeexit.runtime.preprocess import RR_FEATURES

SHIFTS = 3
"""Trailing timing channels of an attack's input: the moves of the previous, this and the next
detection (then the long-rhythm channel, where :attr:`TimingContext.rhythm` > 0)."""

def timing_channels(rhythm: float) -> int:
    """Trailing channels of an attack's input: :data:`SHIFTS`, and the long rhythm's where the
    budget ``rhythm`` is > 0."""
    return SHIFTS + (rhythm > 0)


_NEEDED = ("pre_rr", "post_rr", "local_rr", "pre_rr_ratio", "post_rr_ratio", "avg_rr")


class TimingContext:
    """Recompute the RR channels (and re-cut the window) of ``[N, C, L]`` windows whose R-peak
    detections moved.

    Args:
        channels: the data's channel names (:data:`~edgeexit.runtime.preprocess.RR_FEATURES`
            among them).
        fs: sampling rate in Hz.
        budget_ms: the largest move of one detection, ms (> 0).
        eps: the attack's budget the timing channels are scaled to (a channel value ``eps`` is
            a move of ``budget_ms``).
        signal_channels: leading channels that are signal (re-cut with the detection).
        rhythm: how far the long mean ``avg_rr`` may move, as a fraction (extra or missed
            detections; module docstring); 0: held, and no fourth channel.

    Raises:
        ConfigError: the data has no RR channels, or a budget is not > 0 (``rhythm`` >= 0).
    """

    def __init__(self, channels, fs: float, budget_ms: float, eps: float,
                 signal_channels: int = 1, rhythm: float = 0.0) -> None:
        names = list(channels)
        if not set(_NEEDED) <= set(names):
            raise ConfigError("a timing attack moves the RR context, and the data has no RR "
                              "channels: train and evaluate with --rr-context")
        if not (budget_ms > 0 and eps > 0):
            raise ConfigError(f"the timing budget (ms) and eps must be > 0, got {budget_ms!r}, "
                              f"{eps!r}")
        if not (isinstance(rhythm, (int, float)) and 0 <= rhythm < float("inf")):
            raise ConfigError(f"the long-rhythm budget must be a fraction >= 0, got {rhythm!r}")
        self.rr = {n: names.index(n) for n in RR_FEATURES if n in names}
        self.fs = float(fs)
        self.budget_s = float(budget_ms) / 1000.0
        self.eps = float(eps)
        self.signal_channels = int(signal_channels)
        self.rhythm = float(rhythm)
        self.channels = timing_channels(self.rhythm)

    @classmethod
    def of(cls, data: BeatDataset, budget_ms: float, eps: float,
           rhythm: float = 0.0) -> TimingContext:
        return cls(data.channels or (), data.fs, budget_ms, eps, data.signal_channels, rhythm)

    def shifts(self, xa: torch.Tensor) -> torch.Tensor:
        """The detection moves in seconds ``[N, 3]`` read from an attack input's trailing
        channels (clamped to the budget)."""
        v = xa[:, -self.channels:, 0][:, :SHIFTS].clamp(-self.eps, self.eps)
        return v * (self.budget_s / self.eps)

    def rhythm_factor(self, xa: torch.Tensor) -> torch.Tensor | None:
        """What the long mean ``avg_rr`` is multiplied by, ``[N]``, from an attack input's last
        channel (within ``[1 / (1 + rhythm), 1 + rhythm]``); None when ``rhythm`` is 0."""
        if self.rhythm <= 0:
            return None
        v = xa[:, -1, 0].clamp(-self.eps, self.eps)
        return torch.exp(v * (math.log1p(self.rhythm) / self.eps))

    def recompute_rr(self, x: torch.Tensor, d: torch.Tensor,
                     k: torch.Tensor | None = None) -> torch.Tensor:
        """``x [N, C, L]`` with the RR channels of detections moved by ``d [N, 3]`` seconds (and
        the long mean multiplied by ``k [N]``, where given)."""
        r = self.rr
        one = 1.0 / self.fs
        pre = (x[:, r["pre_rr"], 0] + d[:, 1] - d[:, 0]).clamp_min(one)
        post = (x[:, r["post_rr"], 0] + d[:, 2] - d[:, 1]).clamp_min(one)
        local, avg = x[:, r["local_rr"], 0], x[:, r["avg_rr"], 0]
        new = {"pre_rr": pre, "post_rr": post, "pre_rr_ratio": pre / local,
               "post_rr_ratio": post / local}
        if k is not None:
            avg = avg * k
            new["avg_rr"] = avg
        if "pre_rr_avg_ratio" in r:
            new["pre_rr_avg_ratio"] = pre / avg
        out = x.clone()
        for name, v in new.items():
            out[:, r[name], :] = v.unsqueeze(-1).expand(-1, x.shape[-1])
        return out

    def recut(self, x: torch.Tensor, d_cur: torch.Tensor) -> torch.Tensor:
        """The signal channels of ``x`` cut again around detections moved by ``d_cur [N]``
        seconds (later detection: the beat moves earlier in its window)."""
        s, length = self.signal_channels, x.shape[-1]
        k = torch.round(d_cur.detach() * self.fs).long()  # [N] samples
        if not bool(k.any()):
            return x
        idx = (torch.arange(length, device=x.device)[None, :] + k[:, None]) % length  # [N, L]
        sig = x[:, :s].gather(-1, idx.unsqueeze(1).expand(-1, s, -1))
        return torch.cat([sig, x[:, s:]], dim=1)

    def apply(self, xa: torch.Tensor) -> torch.Tensor:
        """An attack input ``[N, C', L]`` (timing channels last) -> ``[N, C' -`` :attr:`channels`
        ``, L]``: the detections moved, the RR channels recomputed, the signal re-cut."""
        d = self.shifts(xa)
        x = xa[:, :-self.channels]
        return self.recut(self.recompute_rr(x, d, self.rhythm_factor(xa)), d[:, 1])

    def with_timing(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with :attr:`channels` zero timing channels appended (no move)."""
        return torch.cat([x, x.new_zeros(x.shape[0], self.channels, x.shape[-1])], dim=1)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` as a timing attack sees it: it takes inputs with the timing channels (the
        mode is ``model``'s)."""
        return InputMapped(model, self.apply)


class ContextPGD(PGD):
    """Linf PGD on the signal channels and on the trailing timing channels together (see the
    module docstring); everything else is :class:`~edgeexit.robust.attacks.PGD`'s."""

    name = "context_pgd"

    def __init__(self, model, eps, *, budget_ms: float, rhythm: float = 0.0, **kwargs) -> None:
        if kwargs.get("norm", "linf") != "linf":
            raise ConfigError("the context attack is Linf (a timing budget per detection)")
        super().__init__(model, eps, **kwargs)
        self.budget_ms = float(budget_ms)
        self.rhythm = float(rhythm)

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        m = super().mask(like)
        m[:, -timing_channels(self.rhythm):] = 1.0
        return m

    def describe(self) -> dict:
        extra = {"rhythm": self.rhythm} if self.rhythm > 0 else {}
        return {**super().describe(), "timing_ms": self.budget_ms, **extra}


def context_attack(model: nn.Module, data: BeatDataset, *, eps: float, budget_ms: float,
                   steps: int = 10, objective="mean", seed: int = 0, batch: int = 256,
                   templates: np.ndarray | None = None, rhythm: float = 0.0) -> np.ndarray:
    """Windows of ``data`` attacked on the waveform (``eps`` mV) and on the timing of their
    detections (``budget_ms``), with the context recomputed as the device would: the RR channels
    from the moved detections, the morphology channels (when the data has them) from the
    attacked, re-cut waveform against each window's template. Returns float32 ``[N, C, L]``.

    Args:
        model: the multi-exit model (eval mode is used while crafting).
        data: the windows (with RR channels).
        templates: every window's morphology template ``[N, L]``; None: rebuilt from ``data``.
        rhythm: the long-rhythm budget (:class:`TimingContext`); 0: the long mean held.
    """
    timing = TimingContext.of(data, budget_ms, eps, rhythm)
    morph = MorphContext.of(data)
    inner = model if morph is None else morph.wrap(model)
    x = torch.from_numpy(np.asarray(data.x, np.float32))
    if morph is not None:
        t = templates if templates is not None else record_templates(data, morph.r_offset)
        x = morph.with_template(x, torch.from_numpy(np.asarray(t, np.float32)))
    attack = ContextPGD(timing.wrap(inner), eps, budget_ms=budget_ms, rhythm=rhythm, steps=steps,
                        objective=objective, seed=seed,
                        signal_channels=data.signal_channels)
    y = torch.from_numpy(np.asarray(data.y))
    out = []
    for i in range(0, len(x), batch):
        xa = attack(timing.with_timing(x[i:i + batch]), y[i:i + batch])
        with torch.no_grad():
            xb = timing.apply(xa).numpy()
        out.append(xb if morph is None else morph.finish(xb))  # the device's own numpy code
    return np.concatenate(out).astype(np.float32)

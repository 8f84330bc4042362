"""Attacks on the continuous signal, through the device path (host side: torch for the gradients).

Every attack returns the attacked signal ``x + delta`` with ``|delta| <= eps`` (mV) on every raw
sample; the device then finds the R peaks in it and computes the RR and morphology context
from what it found, so the timing is in the attacker's reach (DESIGN.md section 6, device level).

- :class:`TimingAttack` (``mode="add"``): no model needed. In the diastole of every ``every``-th RR interval it
  adds a burst shaped for the detector: a +-eps square wave at the frequency where the QRS
  filter's band-pass-and-derivative gain peaks, as long as the moving-window integration, which
  is what maximises the detector's integrated energy under an Linf budget. Where the detector
  takes it for a beat, the RR context of the beats around it changes (a premature-looking beat
  after it, a false beat that is classified too). Knowing the detector's amplitude rule
  (:data:`~edgeexit.runtime.peaks.MIN_AMPLITUDE`), ``place="amplitude"`` puts each burst where the
  signal's own peak-to-peak amplitude is largest and ``shrink`` lowers every real beat's by 2 eps;
  ``place="best"`` (the ``timing`` attack) keeps the strongest of :data:`TIMING_VARIANTS` per
  record. ``mode="shift"`` moves every detected R peak instead, within a timing budget in ms
  (alternately later and earlier).
- :class:`StreamPGD`: white-box PGD through the device path, alternating: craft on the windows
  the device cut with the context it computed (RR held within a round, morphology recomputed
  differentiably from the attacked waveform against the device's template), write every beat's
  window back into the continuous signal (each sample taken from the window of its nearest R
  peak), re-detect and recompute the context by running the device, repeat; the round whose
  end-to-end accuracy is lowest is kept.
- :class:`StreamSquare`: the black-box Square attack (:class:`~edgeexit.robust.attacks.square.SquareAttack`)
  on the device's windows through the runtime (its policy's probabilities), written back into
  the signal and streamed again.
- :class:`StreamSlowdown`: DeepSloth (:class:`~edgeexit.robust.attacks.objectives.Slowdown`)
  through the same machinery: pushes beats to later exits (latency and energy per beat).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import torch

from edgeexit.errors import ConfigError
from edgeexit.robust.attacks.objectives import Objective, Slowdown
from edgeexit.robust.stream.device import DeviceRun, match, run_device
from edgeexit.robust.stream.records import StreamRecord
from edgeexit.runtime.peaks import INTEGRATION_S, T_WAVE_S, _bandpass_kernel
from edgeexit.runtime.preprocess import MORPH_FEATURES, BeatTemplate, morph_templates
from edgeexit.runtime.stream import MATCH_S

log = logging.getLogger(__name__)


def _check_eps(eps: float) -> float:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ConfigError(f"attack budget eps must be a number of mV > 0, got {eps!r}")
    return float(eps)


def within_budget(clean: np.ndarray, attacked: np.ndarray, eps: float) -> np.ndarray:
    """``attacked`` moved back inside ``clean +- eps`` (float64; guards every attack's output)."""
    return np.clip(np.asarray(attacked, np.float64), clean - eps, clean + eps)


# ---------------------------------------------------------------------------------- timing
def detector_frequency(fs: float) -> float:
    """The frequency (Hz) at which the detector's band-pass and derivative gain peaks."""
    bp = _bandpass_kernel(fs)
    deriv = np.array([1.0, 2.0, 0.0, -2.0, -1.0]) * fs / 8.0
    h = np.convolve(bp, deriv)
    n = 1 << 14
    f = np.fft.rfftfreq(n, 1.0 / fs)
    return float(f[int(np.argmax(np.abs(np.fft.rfft(h, n))))])


def detector_burst(eps: float, fs: float, seconds: float = INTEGRATION_S) -> np.ndarray:
    """+-eps square wave at :func:`detector_frequency`, ``seconds`` long (a whole number of
    half-cycles, so it starts and ends at zero crossings)."""
    f = detector_frequency(fs)
    half_cycles = max(2, int(round(2 * seconds * f)))
    t = np.arange(int(round(half_cycles / (2 * f) * fs))) / fs
    return eps * np.sign(np.sin(2 * np.pi * f * t + 1e-9))


TIMING_VARIANTS = (("mid", False, 2), ("amplitude", False, 2), ("amplitude", True, 2),
                   ("amplitude", True, 1))
"""What ``TimingAttack(place="best")`` tries, per record: (where each burst goes, whether the
real beats are shrunk, a burst in every how many RR intervals); the strongest is kept."""


@dataclasses.dataclass
class TimingAttack:
    """The device's R peaks moved or added, the waveform moved by at most ``eps`` (module
    docstring).

    Args:
        eps: Linf budget in mV.
        mode: ``add``: detector-matched bursts in diastole, taken for extra beats; ``shift``: each
            detected R peak's fiducial point moved by up to ``shift_ms`` (alternately later and
            earlier, so consecutive RR intervals grow and shrink by up to twice that), by lowering
            the QRS neighbourhood by eps and raising the target sample by eps, where the
            refinement's largest deflection then lands.
        every: ``add``: a burst in every ``every``-th RR interval (2: alternate intervals, so the
            RR ratios turn irregular; 1: every interval).
        shift_ms: ``shift``: the timing budget in ms.
        min_after_s: ``add``: earliest burst centre after the previous R peak (beyond the
            detector's T-wave test, :data:`~edgeexit.runtime.peaks.T_WAVE_S`).
        min_before_s: ``add``: the burst ends at least this long before the next R peak.
        place: ``add``: ``mid``: each burst in the middle of its diastole; ``amplitude``: knowing
            the detector's amplitude rule (:data:`~edgeexit.runtime.peaks.MIN_AMPLITUDE`: a beat's
            raw peak-to-peak amplitude against the recent beats'), where the signal's own
            peak-to-peak amplitude within the rule's window is largest (T-wave end, P wave), with
            +eps on its maximum and -eps on its minimum, so the burst adds 2 eps to what is there;
            ``best``: every variant of :data:`TIMING_VARIANTS`, the strongest kept (with a
            ``device``: the lowest end-to-end accuracy; without: the most detections).
        shrink: ``add`` with ``amplitude``: every real beat's peak-to-peak amplitude lowered by
            2 eps as well (its extremes moved towards each other), which lowers the rule's
            reference.
    """

    eps: float
    mode: str = "add"
    every: int = 2
    shift_ms: float = 20.0
    min_after_s: float = T_WAVE_S + 0.1
    min_before_s: float = 0.25
    place: str = "mid"
    shrink: bool = False
    name: str = "timing"

    def __post_init__(self) -> None:
        self.eps = _check_eps(self.eps)
        if self.mode not in ("add", "shift"):
            raise ConfigError(f"timing attack mode must be add or shift, got {self.mode!r}")
        if self.place not in ("mid", "amplitude", "best"):
            raise ConfigError(f"timing attack place must be mid, amplitude or best, got {self.place!r}")
        if self.every < 1 or not self.shift_ms > 0:
            raise ConfigError(f"every must be >= 1 and shift_ms > 0, got {self.every}, {self.shift_ms}")
        self.stats: dict = {}

    def __call__(self, record: StreamRecord, clean: DeviceRun, device=None) -> np.ndarray:
        """The attacked signal; ``clean``: the device's run on the clean signal (its peaks)."""
        if self.mode == "add" and self.place == "best":
            return self._best(record, clean, device)
        delta = (self._bursts if self.mode == "add" else self._shifts)(record.signal, record.fs,
                                                                       clean.peaks)
        return within_budget(record.signal, record.signal + delta, self.eps)

    def _best(self, record: StreamRecord, clean: DeviceRun, device) -> np.ndarray:
        """Every variant of :data:`TIMING_VARIANTS`; the strongest attacked signal."""
        from edgeexit.runtime.peaks import detect_r_peaks

        best = None
        for place, shrink, every in TIMING_VARIANTS:
            atk = dataclasses.replace(self, place=place, shrink=shrink, every=every)
            x = atk(record, clean)
            score = (_end_to_end_accuracy(record, device.run(x, capture=False)) if device is not None
                     else -float(detect_r_peaks(x, record.fs).size))
            if best is None or score < best[0]:
                name = f"{place}{'+shrink' if shrink else ''}/{every}"  # per record in the report
                best = (score, x, {**atk.stats, "variant": name})
        self.stats = best[2]
        return best[1]

    def _bursts(self, x: np.ndarray, fs: float, peaks: np.ndarray) -> np.ndarray:
        burst = detector_burst(self.eps, fs)
        half = burst.size // 2
        delta = np.zeros_like(x)
        placed = 0
        if self.shrink:
            _shrink(delta, x, peaks, fs, self.eps)
        for i in range(0, max(0, peaks.size - 1), self.every):
            a, b = int(peaks[i]), int(peaks[i + 1])
            lo, hi = a + int(self.min_after_s * fs), b - int(self.min_before_s * fs) - half
            c = max(lo, (a + b) // 2)
            if self.place == "amplitude" and hi > lo:
                c = _tallest(x, lo, hi, fs)
            if c > hi or c - half < 0 or c + half >= x.size:
                continue
            delta[c - half:c - half + burst.size] = burst
            if self.place == "amplitude":
                _add_to_extremes(delta, x, c, fs, self.eps)
            placed += 1
        self.stats = {"bursts": placed, "burst_hz": round(detector_frequency(fs), 2),
                      "burst_ms": round(1e3 * burst.size / fs, 1)}
        return delta

    def _shifts(self, x: np.ndarray, fs: float, peaks: np.ndarray) -> np.ndarray:
        from edgeexit.runtime.peaks import BASELINE_S, REFINE_S

        delta = np.zeros_like(x)
        half, bhalf, k_max = round(REFINE_S * fs), round(BASELINE_S * fs), round(self.shift_ms * 1e-3 * fs)
        moved, shifts = 0, []
        for i, r in enumerate(peaks.tolist()):
            if r - bhalf < 0 or r + bhalf >= x.size:
                continue
            sign = np.sign(x[r] - np.median(x[r - bhalf:r + bhalf + 1])) or 1.0
            dev = sign * (x[r - half:r + half + 1] - np.median(x[r - bhalf:r + bhalf + 1]))
            direction = 1 if i % 2 == 0 else -1
            # the farthest sample within the timing budget that can beat the peak by 2 eps
            ks = [k for k in range(1, k_max + 1) if dev[half + direction * k] + 2 * self.eps > dev[half]]
            if not ks:
                continue
            t = r + direction * max(ks)
            delta[r - half:r + half + 1] = -sign * self.eps
            delta[t] = sign * self.eps
            moved += 1
            shifts.append(max(ks) / fs * 1e3)
        self.stats = {"moved": moved, "mean_shift_ms": float(np.mean(shifts)) if shifts else 0.0}
        return delta


def _tallest(x: np.ndarray, lo: int, hi: int, fs: float) -> int:
    """The centre in ``[lo, hi]`` (every 10 ms) where ``x``'s peak-to-peak amplitude within the
    detector's amplitude window is largest."""
    from edgeexit.runtime.peaks import _amplitude_half, _amplitudes

    centres = np.arange(lo, hi + 1, max(1, int(0.01 * fs)))
    return int(centres[np.argmax(_amplitudes(x, centres, _amplitude_half(fs)))])


def _add_to_extremes(delta: np.ndarray, x: np.ndarray, c: int, fs: float, eps: float) -> None:
    """+eps on the maximum and -eps on the minimum of ``x`` within the amplitude window at ``c``."""
    from edgeexit.runtime.peaks import _amplitude_half

    h = _amplitude_half(fs)
    a, b = max(0, c - h), min(x.size, c + h + 1)
    delta[a + int(np.argmax(x[a:b]))] = eps
    delta[a + int(np.argmin(x[a:b]))] = -eps


def _shrink(delta: np.ndarray, x: np.ndarray, peaks: np.ndarray, fs: float, eps: float) -> None:
    """Every beat's peak-to-peak amplitude (the detector's amplitude window, with the refinement's
    reach) lowered by 2 eps: the samples above the midrange lowered by eps, those below raised."""
    from edgeexit.runtime.peaks import REFINE_S

    h = max(1, int(round(REFINE_S * fs)))
    for r in peaks.tolist():
        a, b = max(0, r - h), min(x.size, r + h + 1)
        w = x[a:b]
        delta[a:b] = -eps * np.sign(w - 0.5 * (w.max() + w.min()))


# ------------------------------------------------------------------------------ the device
class DevicePath:
    """What the model-aware attacks need: the runtime ``engine``, its source ``model`` (torch,
    eval mode) and the deployed policy's ``objective``; the window geometry of the bundle."""

    def __init__(self, engine, model: torch.nn.Module, objective: Objective, channels,
                 r_offset: int, fs: float, min_sqi: float | None = None) -> None:
        self.engine, self.model, self.objective = engine, model, objective
        self.min_sqi = min_sqi  # the device's signal-quality gate (run --stream --min-sqi)
        self.window = int(engine.input_shape[-1])
        self.r_offset, self.fs = int(r_offset), float(fs)
        from edgeexit.robust.context import MorphContext

        channels = list(channels or [])
        self._ctx = (MorphContext(channels, self.window, self.fs, self.r_offset)
                     if set(MORPH_FEATURES) <= set(channels) else None)
        self.morph_index = None if self._ctx is None else self._ctx.index
        self._beat = BeatTemplate(self.window, self.r_offset, self.fs)

    def run(self, signal: np.ndarray, capture: bool = True) -> DeviceRun:
        return run_device(self.engine, signal, self.fs, capture=capture, min_sqi=self.min_sqi)

    def templates(self, windows: np.ndarray) -> np.ndarray | None:
        """The morphology template each captured window was compared with (None: no morphology
        channels): the median of the previous beats' windows, as the device's stream keeps it."""
        if self.morph_index is None:
            return None
        return morph_templates(windows[:, 0], self.r_offset, self.fs)

    def finish(self, x: np.ndarray, templates: np.ndarray | None) -> np.ndarray:
        """Windows with their morphology channels recomputed from channel 0 (device code)."""
        if templates is None:
            return x
        x = np.array(x, np.float32, copy=True)
        for i in range(len(x)):
            x[i, self.morph_index, :] = self._beat.compare(x[i, 0], templates[i])[:, None]
        return x

    def model_input(self, sig: torch.Tensor, rest: torch.Tensor, templates) -> torch.Tensor:
        """``[B, C, L]`` model input from the signal channel ``sig [B, L]`` and the other channels
        ``rest [B, C-1, L]``; the morphology channels recomputed differentiably."""
        x = torch.cat([sig[:, None], rest], 1)
        if templates is None:
            return x
        f = self._ctx.features_torch(sig, templates)
        x = x.clone()
        x[:, self.morph_index, :] = f.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        return x


def _labels(record: StreamRecord, run: DeviceRun) -> np.ndarray:
    """The annotated class of every answered beat (-1: a false detection)."""
    m = match(record.ann_samples, run.r_samples, int(round(MATCH_S * record.fs)))
    return np.where(m >= 0, record.ann_labels[np.maximum(m, 0)], -1)


def _starts(run: DeviceRun, device: DevicePath) -> np.ndarray:
    return run.r_samples - device.r_offset


def _clean_windows(clean: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    idx = starts[:, None] + np.arange(length)[None, :]
    return clean[np.clip(idx, 0, clean.size - 1)]


def write_back(delta: np.ndarray, clean: np.ndarray, r: np.ndarray, starts: np.ndarray,
               sig: np.ndarray, rows: np.ndarray) -> None:
    """Write the attacked windows ``sig [B, L]`` (rows ``rows`` of the beats at ``r``) into the
    continuous ``delta``: each sample from the window of its nearest R peak."""
    length = sig.shape[1]
    mids = np.concatenate([[-(1 << 60)], (r[1:] + r[:-1]) // 2 + 1, [1 << 60]])
    for j, i in enumerate(rows.tolist()):
        a = max(int(starts[i]), int(mids[i]), 0)
        b = min(int(starts[i]) + length, int(mids[i + 1]), delta.size)
        if b > a:
            delta[a:b] = sig[j, a - starts[i]: b - starts[i]] - clean[a:b]


def _ascend(device: DevicePath, x: np.ndarray, clean_sig: np.ndarray, y: np.ndarray,
            templates, objective: Objective, eps: float, steps: int,
            batch: int = 256) -> np.ndarray:
    """Signed-gradient ascent of ``objective`` on the signal channel of windows ``x``, projected
    on ``clean_sig +- eps`` (the context channels held; morphology follows). ``[B, L]``."""
    step = 2.5 * eps / steps
    out = np.empty_like(clean_sig, dtype=np.float32)
    for s in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch], np.float32))
        lo = torch.from_numpy(clean_sig[s:s + batch].astype(np.float32)) - eps
        hi = lo + 2 * eps
        yb = torch.from_numpy(np.maximum(y[s:s + batch], 0))
        tb = None if templates is None else torch.from_numpy(templates[s:s + batch])
        sig, rest = xb[:, 0].clone(), xb[:, 1:]
        for _ in range(steps):
            sig.requires_grad_(True)
            loss = objective(device.model(device.model_input(sig, rest, tb)), yb).sum()
            (g,) = torch.autograd.grad(loss, sig)
            sig = torch.min(torch.max(sig.detach() + step * g.sign(), lo), hi)
        out[s:s + batch] = sig.numpy()
    return out


def _signal_ascent(device: DevicePath, clean: np.ndarray, delta: np.ndarray, run: DeviceRun,
                   y: np.ndarray, objective: Objective, eps: float, steps: int,
                   batch: int = 256) -> np.ndarray:
    """PGD on the continuous perturbation itself (``delta [T]``, projected on +-eps): every beat
    the device answered is cut from ``clean + delta`` at its detected R peak, its morphology
    template is the median of the previous :data:`TEMPLATE_BEATS` windows cut from the same
    attacked signal (as the stream keeps it), the RR channels are the run's; the gradients of all
    beats (overlapping windows included) add up on the signal. The peaks are held within the
    call (the caller re-detects)."""
    from edgeexit.runtime.preprocess import TEMPLATE_BEATS

    rows = np.flatnonzero(y >= 0) if not isinstance(objective, Slowdown) else np.arange(y.size)
    if rows.size == 0 or run.windows is None:
        return delta
    length = device.window
    starts = _starts(run, device)
    idx = torch.from_numpy(np.clip(starts[:, None] + np.arange(length)[None, :], 0, clean.size - 1))
    base = torch.from_numpy(clean)
    d = torch.from_numpy(delta.copy())
    rest = torch.from_numpy(np.ascontiguousarray(run.windows[:, 1:], np.float32))
    yt = torch.from_numpy(np.maximum(y, 0))
    step = 2.5 * eps / steps
    for _ in range(steps):
        d.requires_grad_(True)
        total = torch.zeros_like(d)
        for s in range(0, rows.size, batch):
            rb = torch.from_numpy(rows[s:s + batch])
            w = (base + d)[idx].float()  # every answered beat's window [B_all, L]
            tmpl = None
            if device.morph_index is not None:
                tmpl = _templates_torch(w, rb, TEMPLATE_BEATS)
            logits = device.model(device.model_input(w[rb], rest[rb], tmpl))
            (g,) = torch.autograd.grad(objective(logits, yt[rb]).sum(), d)
            total += g
        d = (d.detach() + step * total.sign()).clamp(-eps, eps)
    return d.numpy()


def _templates_torch(w: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """The morphology template of beats ``rows`` from the windows ``w [B, L]`` of every beat in
    order: the median of the previous ``n`` windows (the beat itself for the first)."""
    r = rows.numpy()
    out = torch.empty(r.size, w.shape[1], dtype=w.dtype)
    full = r >= n
    if full.any():  # np.median's midpoint of the previous n windows, all at once
        prev = torch.from_numpy(r[full][:, None] - np.arange(n, 0, -1)[None, :])
        out[torch.from_numpy(full)] = torch.quantile(w[prev].double(), 0.5, dim=1).to(w.dtype)
    for j in np.flatnonzero(~full).tolist():
        i = int(r[j])
        past = w[:i] if i else w[:1]
        out[j] = torch.quantile(past.double(), 0.5, dim=0).to(w.dtype)
    return out


@dataclasses.dataclass
class _Crafted:
    """One crafting pass on a device run's windows."""

    rows: np.ndarray  # the beats crafted on (rows of the run's windows)
    sig: np.ndarray  # their attacked signal channel [B, L]
    templates: np.ndarray | None


def _end_to_end_accuracy(record: StreamRecord, run: DeviceRun, beats: np.ndarray | None = None) -> float:
    """Accuracy over the annotated beats (or those of ``beats``), missed beats counted wrong."""
    m = match(record.ann_samples, run.peaks, int(round(MATCH_S * record.fs)))
    answer = np.full(record.ann_samples.size, -1)
    at = {int(r): i for i, r in enumerate(run.r_samples.tolist())}
    for p, a in zip(run.peaks.tolist(), m.tolist()):
        if a >= 0 and p in at:
            answer[a] = run.labels[at[p]]
    sel = np.arange(answer.size) if beats is None else beats
    return float(np.mean(answer[sel] == record.ann_labels[sel])) if sel.size else 0.0


class _Rounds:
    """Craft on the device's windows, write back, re-run the device; keep the strongest round.
    With ``joint``, the rounds after the first ascend on the continuous signal directly
    (:func:`_signal_ascent`) from the perturbation so far."""

    joint = False

    def __init__(self, eps: float, rounds: int) -> None:
        self.eps = _check_eps(eps)
        if rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {rounds}")
        self.rounds = int(rounds)
        self.stats: dict = {}

    def craft(self, record, run, device, y) -> _Crafted:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, record: StreamRecord, run: DeviceRun) -> float:
        return _end_to_end_accuracy(record, run)

    def __call__(self, record: StreamRecord, clean: DeviceRun, device: DevicePath) -> np.ndarray:
        x = record.signal
        delta = np.zeros_like(x)
        best, best_delta, run, history = self.score(record, clean), delta.copy(), clean, []
        for k in range(self.rounds):
            if run.windows is None:
                break
            y = _labels(record, run)
            if k == 0 or not self.joint:  # on the windows, written back into the signal
                c = self.craft(record, run, device, y)
                write_back(delta, x, run.r_samples, _starts(run, device), c.sig, c.rows)
                np.clip(delta, -self.eps, self.eps, out=delta)
                if k == 0:
                    self.first_pass(record, run, device, y, c)
            else:  # on the continuous signal, the device's peaks of the last round held
                delta = _signal_ascent(device, x, delta, run, y, self.objective or device.objective,
                                       self.eps, self.steps)
            run = device.run(x + delta)
            acc = self.score(record, run)
            history.append(round(acc, 4))
            if acc < best:
                best, best_delta = acc, delta.copy()
        self.stats = {**self.stats, "rounds": self.rounds, "score_by_round": history}
        return within_budget(x, x + best_delta, self.eps)

    def first_pass(self, record, run, device, y, c: _Crafted) -> None:
        """Hook after crafting on the clean run's windows (the window-level comparison)."""


class StreamPGD(_Rounds):
    """White-box PGD through the device path (module docstring).

    Args:
        eps: Linf budget (mV); steps: PGD steps per round (step ``2.5 eps / steps``);
        rounds: craft / re-detect rounds; objective: what to ascend (None: the device path's
        policy objective).

    After a call, ``window_held`` holds the labels the runtime gives the first round's crafted
    windows with their context held (today's window-level attack on the same beats), per
    answered beat of the clean run, and ``clean_beats`` the annotated beats they are.
    """

    name = "pgd"
    joint = True

    def __init__(self, eps: float, *, steps: int = 10, rounds: int = 2,
                 objective: Objective | None = None) -> None:
        super().__init__(eps, rounds)
        self.steps = int(steps)
        self.objective = objective
        self.window_held: dict | None = None

    def craft(self, record, run, device, y) -> _Crafted:
        rows = np.flatnonzero(y >= 0) if not isinstance(self.objective, Slowdown) else np.arange(y.size)
        x = run.windows[rows]
        starts = _starts(run, device)[rows]
        clean_sig = _clean_windows(record.signal, starts, device.window)
        tmpl = device.templates(run.windows)
        tmpl = None if tmpl is None else tmpl[rows]
        sig = _ascend(device, x, clean_sig, y[rows], tmpl, self.objective or device.objective,
                      self.eps, self.steps)
        return _Crafted(rows, sig, tmpl)

    def first_pass(self, record, run, device, y, c: _Crafted) -> None:
        x = np.array(run.windows[c.rows], np.float32, copy=True)
        x[:, 0] = c.sig
        res = device.engine.predict_batch(np.ascontiguousarray(device.finish(x, c.templates)))
        self.window_held = {"labels": res.labels, "y": y[c.rows],
                            "exits": res.exit_index, "rows": c.rows}


class StreamSlowdown(StreamPGD):
    """DeepSloth on the stream: PGD of :class:`~edgeexit.robust.attacks.objectives.Slowdown`
    through the device path (one round); scored by the share of beats leaving at the last exit."""

    name = "slowdown"

    def __init__(self, eps: float, *, steps: int = 10, rounds: int = 1) -> None:
        super().__init__(eps, steps=steps, rounds=rounds, objective=Slowdown())

    def score(self, record: StreamRecord, run: DeviceRun) -> float:
        # lower is stronger: minus the mean exit index the device took
        return -float(run.exits.mean()) if run.exits.size else 0.0


class StreamSquare(_Rounds):
    """The Square attack on the device's windows through the runtime (black box), written back
    into the signal and streamed again (module docstring)."""

    name = "square"

    def __init__(self, eps: float, *, queries: int = 100, rounds: int = 1, seed: int = 0) -> None:
        super().__init__(eps, rounds)
        self.queries, self.seed = int(queries), int(seed)

    def craft(self, record, run, device, y) -> _Crafted:
        from edgeexit.robust.attacks.square import SquareAttack

        rows = np.flatnonzero(y >= 0)
        tmpl = device.templates(run.windows)
        tmpl = None if tmpl is None else tmpl[rows]
        x = run.windows[rows]
        starts = _starts(run, device)[rows]
        clean_sig = _clean_windows(record.signal, starts, device.window).astype(np.float32)
        # the windows as the device cut them from the clean signal (the budget's centre)
        x0 = np.array(x, np.float32, copy=True)
        x0[:, 0] = clean_sig

        def predict(xa: np.ndarray) -> np.ndarray:
            return device.engine.predict_batch(
                np.ascontiguousarray(device.finish(xa, tmpl), np.float32)).probs

        sq = SquareAttack(predict, self.eps, signal_channels=1, n_queries=self.queries,
                          seed=self.seed)
        adv = sq(x0, y[rows]) if rows.size else x0
        self.stats = {k: v for k, v in sq.stats.items() if isinstance(v, (int, float))}
        return _Crafted(rows, adv[:, 0], tmpl)


def make_stream_attack(name: str, eps: float, *, steps: int = 10, rounds: int = 2,
                       queries: int = 100, seed: int = 0, shift_ms: float = 20.0):
    """The stream attack ``name`` (:class:`~edgeexit.robust.names.StreamAttack`) at ``eps``."""
    from edgeexit.robust.names import StreamAttack

    name = StreamAttack(name)
    if name == StreamAttack.TIMING:
        return TimingAttack(eps, place="best")
    if name == StreamAttack.TIMING_SHIFT:
        return TimingAttack(eps, mode="shift", shift_ms=shift_ms)
    if name == StreamAttack.PGD:
        return StreamPGD(eps, steps=steps, rounds=rounds)
    if name == StreamAttack.SQUARE:
        return StreamSquare(eps, queries=queries, seed=seed)
    return StreamSlowdown(eps, steps=steps)

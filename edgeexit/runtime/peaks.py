"""R-peak detection on the device (numpy only): a Pan-Tompkins QRS detector plus R-peak refinement.

Models are trained on windows cut around *annotated* R peaks (MIT-BIH) or generated ones
(synthetic). A device has no annotations, so it finds the R peaks itself and then cuts the very
same windows with :func:`edgeexit.runtime.preprocess.beat_windows`.

The detector follows Pan J, Tompkins WJ. A real-time QRS detection algorithm. IEEE Trans Biomed Eng
32(3):230-236 (1985):

1. band-pass ~5-15 Hz (where QRS energy lies, above baseline wander and T waves, below EMG noise),
2. derivative (QRS slopes are steep), squaring (rectify, emphasise large slopes),
3. moving-window integration over ~150 ms (about one wide QRS: one lump per beat),
4. adaptive thresholds from running signal / noise peak levels, a refractory period, a T-wave
   check on close detections, and a search-back with a lower threshold when an RR gap exceeds
   1.66 times the typical RR.

Departures from the paper, each measured on the MIT-BIH Arrhythmia Database:

- The filters are zero-phase (symmetric kernels, centred) rather than causal integer filters, so
  no group delay has to be undone; the whole signal is processed at once.
- The thresholds act on the *square root* of the integrated signal (amplitude units, not squared).
  In the squared domain a ventricular beat 3x taller than the normal ones is 9x larger, lifts the
  signal level and hides the normal beats after it (bigeminy: record 228 lost ~10 % of its beats).
- The typical RR is the median of the last 8 intervals, not the mean of the "regular" ones, whose
  average goes stale in atrial fibrillation.
- The initial levels come from the median over the first seconds (one artefact cannot set them),
  and after :data:`LOST_S` without a beat the levels halve (recovery from a gain drop).

Every detection is finally refined to the R peak: the largest deflection from the local baseline
of the original signal near the QRS (ventricular beats can be negative-going).

Example:
    >>> r = detect_r_peaks(ecg_mv, fs=360.0)
    >>> x, r_kept = windows_from_signal(ecg_mv, fs=360.0, window=256)
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from edgeexit.runtime.preprocess import beat_windows, small_median

__all__ = ["MIN_SECONDS", "IncrementalDetector", "Levels", "detect_beats", "detect_r_peaks",
           "detect_r_peaks_with_levels", "windows_from_signal"]

logger = logging.getLogger(__name__)

MIN_SECONDS = 2.0
"""Shortest signal accepted, in seconds: the thresholds learn from the first two seconds."""

BAND_HZ = (5.0, 15.0)
"""Pass band of the QRS filter in Hz (Pan & Tompkins 1985)."""

INTEGRATION_S = 0.150
"""Moving-window integration width in seconds (Pan & Tompkins 1985: about the widest QRS)."""

SEARCH_BACK_RR = 1.66
"""An RR gap above this multiple of the typical RR (median of the last 8) triggers a search-back."""

THRESHOLD_FRACTION = 0.25
"""Detection threshold: ``noise + THRESHOLD_FRACTION * (signal - noise)`` of the peak levels."""

SEARCH_BACK_FRACTION = 0.5
"""The search-back threshold as a fraction of the detection threshold (Pan & Tompkins: 0.5)."""

SEARCH_BACK_MIN_SIGNAL = 0.3
"""A beat found by the search-back must also reach this fraction of the median height of the
last 8 accepted beats (once 3 are known). In a long pause the noise level decays and Pan &
Tompkins' lower threshold falls to about an eighth of a QRS: a small pulse in the pause (an
attacker's, or an electrode's) then passes for a beat and moves the RR context. The median of
the beats themselves, not the running signal level, so that an artefact that inflated the level
does not stop the search-back from recovering real beats (issue 27: measured on DS2,
``tools/defence_detector.py``)."""

MIN_AMPLITUDE = 0.3
"""Every beat must reach this fraction of the lower median of the peak-to-peak amplitudes of the
last 8 accepted beats (once 3 are known), all measured on the raw signal within
+-:data:`AMPLITUDE_S` of the candidate; 0 turns the rule off. The thresholds act on the integrated
energy of the band-passed signal, which a burst of small pulses tuned to the QRS filter's pass
band fills as well as a QRS does: at 0.1 mV (+-eps) such a burst passed for a beat. Its
peak-to-peak amplitude is at most 2 eps above what the signal already has there, a fifth to a
tenth of a typical MIT-BIH QRS's. The lower median, not the median: in ventricular bigeminy the
median of the last 8 falls between the small normal and the large ventricular beats. Chosen on
MIT-BIH DS1 (streamed, ``tools/peaks_benchmark.py``): 0.3 costs 6 of its 51,021 beats (and drops
24 false detections); 0.45, which refuses the amplitude-aware burst on the 1 mV QRS of the quick
start's simulated patients too, costs 59 (issue 27). After :data:`LOST_S` without a beat the
reference halves with the levels (a gain drop)."""

SEARCH_BACK_MIN_AMPLITUDE = 0.3
"""The amplitude rule's fraction for a beat the search-back finds (a beat was missed)."""

MINOR_AMPLITUDE = 0.5
"""A beat below this fraction of the upper median of the peak-to-peak amplitudes of the last 8
full-size beats (once 3 are known) is a *minor* beat: the detector reports it (flagged) and the
device answers it, but its neighbours' RR intervals and the morphology template leave it out
(:func:`edgeexit.runtime.preprocess.rr_features`): a small pulse that passed for a beat then no
longer makes the next real beat look premature. An attacker who shrinks every beat by 2 eps to let
a small burst pass the :data:`MIN_AMPLITUDE` rule (issue 27's amplitude-aware timing attack) still
leaves the burst well under half of the beats it sits between. Minor beats do not join this
reference (an accepted burst would otherwise lower it); :data:`MINOR_RESET` minor beats in a row
make the reference theirs (the gain really dropped). The upper median, not the lower one of
:data:`MIN_AMPLITUDE`: bursts that passed as full-size (a record that starts under attack, before
3 beats set a reference; a patient's small sinus beats) are at most every other detection, so
they can make the lower median of 8 theirs and never the upper one (issue 27: the quick start's
seed-0 patients under the timing attack, 57.7 -> 69.8% accuracy). Its cost on MIT-BIH DS1: 131
of 51,021 real beats flagged instead of 89 (``tools/minor_beats.py mitdb``). 0 turns the flag
off."""

MINOR_RESET = 4
"""This many minor beats in a row become the reference of :data:`MINOR_AMPLITUDE` (the gain
dropped: the small beats are the beats). An attacker's burst between two beats is never followed
by three more: the refractory period and the T-wave test leave room for at most two in a normal
RR interval."""

AMPLITUDE_S = 0.05
"""Half-width (seconds) of the raw-signal window of :data:`MIN_AMPLITUDE` (about a narrow QRS)."""

LEARN_S = 8.0
"""At most this many seconds at the start set the initial signal and noise levels."""

LOST_S = 4.0
"""Without a beat for this long (seconds), halve the peak levels: recover from wrong levels."""

T_WAVE_S = 0.36
"""Detections closer than this to the previous QRS (seconds) must pass the T-wave slope test."""

REFINE_S = 0.075
"""Half-width (seconds) of the neighbourhood in which a detection is refined to the R peak."""

BASELINE_S = 0.25
"""Half-width (seconds) of the window whose median is the local baseline during refinement."""


class Levels(NamedTuple):
    """What the detector has learned, carried from one analysis window to the next (streaming)."""

    signal: float
    """Running signal peak level (SPKI; amplitude units of the square-rooted integrated signal)."""
    noise: float
    """Running noise peak level (NPKI)."""
    rr: tuple[float, ...]
    """The last (at most 8) RR intervals in samples; their median is the typical RR."""


def _check_signal(signal: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
    """Validate the inputs of :func:`detect_r_peaks`; return them as float64 array and float."""
    try:
        fs = float(fs)
    except (TypeError, ValueError):
        raise ValueError(f"fs must be a number in Hz, got {fs!r}") from None
    if not np.isfinite(fs) or fs <= 0:
        raise ValueError(f"fs must be a positive sampling rate in Hz, got {fs}")
    if fs < 3.0 * BAND_HZ[1]:
        raise ValueError(
            f"fs = {fs:g} Hz is too low for QRS detection: need at least {3.0 * BAND_HZ[1]:g} Hz"
        )
    x = np.asarray(signal)
    if x.ndim != 1:
        raise ValueError(f"signal must be a 1-D single-lead ECG, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"signal must be real numbers (mV), got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if x.size < MIN_SECONDS * fs:
        raise ValueError(
            f"signal too short for R-peak detection: {x.size} samples = {x.size / fs:.2f} s at "
            f"{fs:g} Hz, need at least {MIN_SECONDS:g} s"
        )
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ValueError(f"signal has {bad} non-finite samples (NaN or inf); fill or cut them")
    return x, fs


def _bandpass_kernel(fs: float) -> np.ndarray:
    """Zero-phase FIR band-pass (windowed sinc, Hamming), ``BAND_HZ`` at ``fs`` Hz, unit gain.

    0.5 s long at any ``fs``: -6 dB at 5 and 15 Hz, below -40 dB under 2 Hz (baseline wander,
    respiration) and over 18 Hz (muscle noise, 50/60 Hz mains).
    """
    half = max(4, int(round(0.25 * fs)))
    n = np.arange(-half, half + 1, dtype=np.float64)
    lo, hi = BAND_HZ[0] / fs, BAND_HZ[1] / fs  # cycles per sample
    # band-pass = difference of two ideal low-passes, tapered by a Hamming window
    h = 2.0 * hi * np.sinc(2.0 * hi * n) - 2.0 * lo * np.sinc(2.0 * lo * n)
    h *= np.hamming(n.size)
    # normalise to unit gain at the band centre so amplitudes stay in mV
    fc = 0.5 * (lo + hi)
    gain = np.abs(np.sum(h * np.exp(-2j * np.pi * fc * n)))
    return h / gain


def _filter_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Centred convolution of ``x`` with an odd-length kernel, reflecting ``x`` at both ends.

    Reflection rather than zero padding avoids a spurious step (and a false QRS) at the edges.
    """
    half = kernel.size // 2
    pad = min(half, x.size - 1)
    xp = np.pad(x, (pad, pad), mode="reflect")
    if pad < half:  # only for signals shorter than the kernel; zero-pad the rest
        xp = np.pad(xp, (half - pad, half - pad))
    return np.convolve(xp, kernel, mode="valid")


def _neighbourhood(centres: np.ndarray, half: int, size: int) -> np.ndarray:
    """Indices ``centre - half .. centre + half`` of every centre, clipped to ``0..size-1``.

    Shape:
        ``[B] -> [B, 2 * half + 1]``
    """
    return np.clip(centres[:, None] + np.arange(-half, half + 1)[None, :], 0, size - 1)


def _candidates(mwi: np.ndarray, half: int) -> np.ndarray:
    """Indices of the local maxima of ``mwi`` that are the largest within ``+-half`` samples."""
    inner = np.flatnonzero((mwi[1:-1] > mwi[:-2]) & (mwi[1:-1] >= mwi[2:])) + 1
    if inner.size == 0:
        return inner.astype(np.int64)
    # the integrated signal is smooth (a few local maxima per beat), so gathering a window per
    # local maximum is cheaper than a moving maximum over every sample
    idx = _neighbourhood(inner, half, mwi.size)
    return inner[mwi[inner] >= mwi[idx].max(axis=1)].astype(np.int64)


def _refine(x: np.ndarray, centres: np.ndarray, fs: float) -> np.ndarray:
    """Move every detection to its R peak in the original signal ``x``.

    The R peak is the sample of largest absolute deflection from the local baseline (median over
    ``+-BASELINE_S``) within ``+-REFINE_S`` of the detection; negative-going ventricular beats are
    found by the absolute value.
    """
    if centres.size == 0:
        return centres
    half = max(1, int(round(REFINE_S * fs)))
    bhalf = max(half, int(round(BASELINE_S * fs)))
    b_idx = _neighbourhood(centres, bhalf, x.size)
    base = np.median(x[b_idx], axis=1)  # [B] mV, robust to the QRS and T within the window
    r_idx = _neighbourhood(centres, half, x.size)
    dev = np.abs(x[r_idx] - base[:, None])  # [B, 2 half + 1]
    return r_idx[np.arange(centres.size), np.argmax(dev, axis=1)]


def detect_r_peaks(signal: np.ndarray, fs: float, *, refractory_s: float = 0.2) -> np.ndarray:
    """Find the R peaks of a single-lead ECG (Pan & Tompkins, IEEE TBME 32(3):230-236, 1985).

    Args:
        signal: one ECG lead in mV, shape ``[T]``, finite, at least :data:`MIN_SECONDS` long.
        fs: sampling rate in Hz (at least 45 Hz).
        refractory_s: refractory period in seconds: no two beats closer than this (physiological
            lower bound on the RR interval; 0.2 s allows up to 300 beats per minute).

    Returns:
        int64 sample indices of the R peaks, strictly increasing, shape ``[B]`` (possibly empty).

    Raises:
        ValueError: ``signal`` not 1-D, not finite, too short, or ``fs`` / ``refractory_s`` invalid.
    """
    return detect_r_peaks_with_levels(signal, fs, refractory_s=refractory_s)[0]


def detect_r_peaks_with_levels(
    signal: np.ndarray,
    fs: float,
    *,
    refractory_s: float = 0.2,
    levels: Levels | None = None,
    levels_at: int | None = None,
) -> tuple[np.ndarray, Levels | None]:
    """:func:`detect_r_peaks` that can start from, and reports, the learned levels (streaming).

    Args:
        signal, fs, refractory_s: as in :func:`detect_r_peaks`.
        levels: start from these levels (a previous call's ``levels_out``) instead of learning
            them from the first seconds of ``signal``; ``None``: learn them (the batch default).
        levels_at: sample of ``signal`` at which to report the levels (the start of the next
            analysis window); ``None``: at the end.

    Returns:
        ``(peaks, levels_out)``: the R peaks as :func:`detect_r_peaks` returns them, and the
        learned levels as they stood at sample ``levels_at`` (before the first candidate at or
        after it), to start the next, overlapping analysis window there; ``None`` when there was
        no QRS candidate and no ``levels`` were given.

    ``levels`` (from a previous call): start from these signal / noise levels and typical RR
    instead of learning them from the first seconds. A streaming detector that re-learns them in
    every short window learns too low a level when many seconds hold no beat (long pauses, 2:1
    block: record 231) and counts T / P waves; carrying them over keeps the levels of the whole
    record, as in the batch detector. With ``levels=None`` the results equal
    :func:`detect_r_peaks`.

    Raises:
        ValueError: as :func:`detect_r_peaks`.
    """
    peaks, _, snap = _detect(signal, fs, refractory_s, levels, levels_at)
    return peaks, snap


def detect_beats(signal: np.ndarray, fs: float, *, refractory_s: float = 0.2
                 ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`detect_r_peaks` with every peak's :data:`MINOR_AMPLITUDE` flag: ``(peaks, minor)``,
    int64 ``[B]`` and bool ``[B]``, what :func:`edgeexit.runtime.preprocess.beat_windows` takes
    to leave the minor beats out of their neighbours' context (as the device stream does)."""
    peaks, minor, _ = _detect(signal, fs, refractory_s, None, None)
    return peaks, minor


def _detect(signal, fs, refractory_s, levels: Levels | None, levels_at: int | None):
    """``(peaks, minor, levels_out)`` (see :func:`detect_r_peaks_with_levels`)."""
    x, fs = _check_signal(signal, fs)
    if not np.isfinite(refractory_s) or refractory_s <= 0:
        raise ValueError(f"refractory_s must be a positive number of seconds, got {refractory_s}")
    refractory = max(1, int(round(refractory_s * fs)))
    mwi, slope = _integrated_energy(x, fs)
    cand = _candidates(mwi, refractory)
    if cand.size == 0:
        logger.info("no QRS candidates in %.1f s of signal", x.size / fs)
        return np.zeros(0, dtype=np.int64), np.zeros(0, bool), levels  # nothing learned
    # QRS slope near each candidate, for the T-wave test (a T wave has a gentler slope)
    shalf = max(1, int(round(REFINE_S * fs)))
    slopes = slope[_neighbourhood(cand, shalf, x.size)].max(axis=1)
    decide = _Thresholds(fs, refractory, levels if levels is not None else _learned_levels(mwi, x.size, fs))
    amps = _amplitudes(x, cand, _amplitude_half(fs))
    qrs, snap = decide.run(cand, np.sqrt(mwi[cand]), slopes, amps, levels_at)
    if not qrs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, bool), snap
    peaks, kept = _refined_peaks(x, np.asarray(qrs, dtype=np.int64), fs, refractory)
    logger.debug("detected %d R peaks in %.1f s", peaks.size, x.size / fs)
    return peaks, np.isin(np.asarray(qrs)[kept], decide.minor_at), snap


def _integrated_energy(x: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-3 of Pan & Tompkins: band-pass, five-point derivative, squaring, moving-window
    integration (all centred); returns the integrated signal and the absolute slope."""
    bp = _filter_same(x - np.median(x), _bandpass_kernel(fs))
    deriv = np.zeros_like(bp)
    deriv[2:-2] = (2.0 * (bp[3:-1] - bp[1:-3]) + (bp[4:] - bp[:-4])) * (fs / 8.0)
    width = max(1, int(round(INTEGRATION_S * fs)))
    mwi = _filter_same(deriv * deriv, np.ones(width | 1) / (width | 1))
    return mwi, np.abs(deriv)


def _amplitude_half(fs: float) -> int:
    return max(1, int(round(AMPLITUDE_S * fs)))


def _amplitudes(x: np.ndarray, centres: np.ndarray, half: int, start: int = 0) -> np.ndarray:
    """Peak-to-peak amplitude of ``x`` within ``+-half`` samples of every centre (absolute sample
    indices; ``x[0]`` is sample ``start``), clipped to ``x``: what :data:`MIN_AMPLITUDE` compares.

    Shape:
        ``[B] -> [B]``
    """
    w = x[_neighbourhood(centres - start, half, x.size)]
    return w.max(axis=1) - w.min(axis=1)


def _amplitude_reference(amplitudes: list[float]) -> float:
    """What :data:`MIN_AMPLITUDE` is a fraction of: the lower median of the last beats' amplitudes
    (0 before 3 beats: an electrode pop taken for the first beat must not set it)."""
    return sorted(amplitudes)[(len(amplitudes) - 1) // 2] if len(amplitudes) >= 3 else 0.0


def _minor_reference(amplitudes: list[float]) -> float:
    """What :data:`MINOR_AMPLITUDE` is a fraction of: the upper median of the last full-size
    beats' amplitudes (0 before 3)."""
    return sorted(amplitudes)[len(amplitudes) // 2] if len(amplitudes) >= 3 else 0.0


def _learned_levels(mwi: np.ndarray, size: int, fs: float) -> Levels:
    """The learning phase (Pan & Tompkins: two seconds): the signal level is the typical largest
    lump per second, the noise level the typical lump; the median over the first seconds (up to
    LEARN_S) keeps one artefact from setting a threshold no QRS can reach. No RR seen yet."""
    n_learn = int(fs) * max(1, min(int(LEARN_S), int(size // fs)))
    blocks = np.sqrt(mwi[:n_learn]).reshape(-1, int(fs))  # [seconds, fs]
    return Levels(0.5 * float(np.median(blocks.max(axis=1))),
                  0.5 * float(np.median(blocks.mean(axis=1))), ())


class _Thresholds:
    """The decision phase of Pan & Tompkins over the QRS candidates, one after another
    (:meth:`step`): adaptive signal and noise levels, the T-wave test, the search-back for a
    missed beat, the amplitude rule (:data:`MIN_AMPLITUDE`), and the decay of both levels after
    seconds without a beat. A candidate is a tuple ``(sample, height, slope, amplitude)``;
    accepted beats are appended to :attr:`accepted` in increasing order (the minor ones,
    :data:`MINOR_AMPLITUDE`, to :attr:`minor_at` as well) and never revoked (the search-back only looks
    after the last accepted beat), so the batch detector and the incremental one
    (:class:`IncrementalDetector`) share this class."""

    def __init__(self, fs: float, refractory: int, levels: Levels) -> None:
        self.fs, self.refractory = fs, refractory
        self.t_wave_gap = int(round(T_WAVE_S * fs))
        self.accepted: list[int] = []  # samples of the accepted candidates, in order
        self.last: tuple[int, float, float, float] | None = None  # the last accepted candidate
        self.pending: list[tuple[int, float, float, float]] = []  # rejected since the last beat
        self.last_event = 0  # sample of the last beat or threshold decay
        self.heights: list[float] = []  # integrated heights of the last 8 accepted beats
        self.amplitudes: list[float] = []  # raw peak-to-peak amplitudes of the last 8 accepted beats
        self.amp_ref = 0.0  # their lower median (0 before 3 beats)
        self.minor_at: list[int] = []  # samples of the accepted minor beats (MINOR_AMPLITUDE)
        # amplitudes of the last 8 full-size beats and their upper median (_minor_reference);
        # None while none of the last 8 accepted beats was minor (then they are :attr:`amplitudes`)
        self.major_amps: list[float] | None = None
        self.major_ref = 0.0
        self.minor_run: list[float] = []  # amplitudes of the minor beats since the last full one
        self.full_run = 0  # full-size beats since the last minor one
        self.set_levels(levels)

    def set_levels(self, levels: Levels) -> None:
        self.spk, self.npk = float(levels.signal), float(levels.noise)
        self.rr_recent = [float(r) for r in levels.rr[-8:]]  # the last 8 RR intervals (samples)
        # typical RR: the median of the last 8 (one second until beats are seen). Pan & Tompkins
        # average the intervals within 92-116 % of the average; in atrial fibrillation that
        # average goes stale, and the median resists the odd missed or extra beat just as well.
        self.rr_typical = small_median(self.rr_recent) if self.rr_recent else self.fs

    def run(self, cand: np.ndarray, heights: np.ndarray, slopes: np.ndarray, amps: np.ndarray,
            levels_at: int | None) -> tuple[list[int], Levels]:
        """The accepted candidates' samples, and the levels at sample ``levels_at`` (None: at the
        end)."""
        snap: Levels | None = None
        for p, h, s, a in zip(cand.tolist(), heights.tolist(), slopes.tolist(), amps.tolist()):
            if snap is None and levels_at is not None and p >= levels_at:
                snap = self.levels()
            self.step(p, h, s, a)
        return self.accepted, snap if snap is not None else self.levels()

    def step(self, p: int, h: float, s: float, a: float) -> None:
        """Decide the candidate at sample ``p`` (integrated height ``h``, QRS slope ``s``, raw
        peak-to-peak amplitude ``a``)."""
        self._search_back(p)
        self._decay_if_lost(p)
        self._decide((p, h, s, a))

    def levels(self) -> Levels:
        return Levels(self.spk, self.npk, tuple(self.rr_recent))

    def _floor(self) -> float:
        """The search-back's floor (:data:`SEARCH_BACK_MIN_SIGNAL`; 0 before 3 beats)."""
        if len(self.heights) < 3 or SEARCH_BACK_MIN_SIGNAL <= 0:
            return 0.0
        return SEARCH_BACK_MIN_SIGNAL * small_median(self.heights)

    def _tall_enough(self, c: tuple[int, float, float, float], fraction: float) -> bool:
        """The amplitude rule (:data:`MIN_AMPLITUDE`, :data:`SEARCH_BACK_MIN_AMPLITUDE`)."""
        return c[3] >= fraction * self.amp_ref

    def _accept(self, c: tuple[int, float, float, float], searched_back: bool) -> None:
        h, a = c[1], c[3]
        if self.major_amps is None:  # no minor beat among the last 8: they are the reference
            ref = _minor_reference(self.amplitudes)
            if a < MINOR_AMPLITUDE * ref:
                self.major_amps, self.major_ref = self.amplitudes[:], ref
                self._minor_beat(c[0], a)
        elif a < MINOR_AMPLITUDE * self.major_ref:
            self._minor_beat(c[0], a)
        else:
            self._full_size(a)
        self.heights.append(float(h))
        del self.heights[:-8]
        self.amplitudes.append(float(c[3]))
        del self.amplitudes[:-8]
        self.amp_ref = _amplitude_reference(self.amplitudes)
        self.spk = 0.25 * h + 0.75 * self.spk if searched_back else 0.125 * h + 0.875 * self.spk
        if self.last is not None:
            self.rr_recent.append(float(c[0] - self.last[0]))
            del self.rr_recent[:-8]
            self.rr_typical = small_median(self.rr_recent)
        self.last = c
        self.accepted.append(c[0])

    def _minor_beat(self, p: int, a: float) -> None:
        """The beat at ``p`` (amplitude ``a``) is under :data:`MINOR_AMPLITUDE` of the full-size
        reference: minor, unless it is the :data:`MINOR_RESET`-th in a row (then the run becomes
        the reference: the gain dropped, the small beats are the beats)."""
        self.full_run = 0
        run = self.minor_run
        run.append(a)
        if len(run) < MINOR_RESET:
            self.minor_at.append(p)
            return
        self.major_amps, self.minor_run = run, []
        self.major_ref = _minor_reference(run)

    def _full_size(self, a: float) -> None:
        """A full-size beat joins the reference (kept apart since a minor beat)."""
        major = self.major_amps
        major.append(a)
        del major[:-8]
        if self.minor_run:
            self.minor_run = []
        self.major_ref = _minor_reference(major)
        self.full_run += 1
        if self.full_run >= 8:  # the last 8 accepted beats are all full-size: amplitudes again
            self.major_amps = None

    def _t_wave(self, c: tuple[int, float, float, float]) -> bool:
        """Candidate ``c`` is too close to the last beat, or close with a T wave's gentle slope."""
        last = self.last
        gap = c[0] - last[0]
        return gap < self.refractory or (gap < self.t_wave_gap and c[2] < 0.5 * last[2])

    def _search_back(self, p: int) -> None:
        """An RR gap of more than 1.66 typical RRs means a beat was probably missed: take the
        largest candidate in the gap above the lower threshold."""
        while self.last is not None and self.pending and p - self.last[0] > SEARCH_BACK_RR * self.rr_typical:
            thr2 = max(SEARCH_BACK_FRACTION * (self.npk + THRESHOLD_FRACTION * (self.spk - self.npk)),
                       self._floor())
            ok = [c for c in self.pending
                  if p - c[0] >= self.refractory and not self._t_wave(c)
                  and self._tall_enough(c, SEARCH_BACK_MIN_AMPLITUDE)]
            best = max(ok, key=lambda c: c[1], default=None)
            if best is None or best[1] <= thr2:
                break
            self._accept(best, searched_back=True)
            self.pending = [c for c in self.pending if c[0] > best[0]]

    def _decay_if_lost(self, p: int) -> None:
        """No beat for seconds although the search-back ran: the levels are likely too high (an
        artefact, or the amplitude dropped); decay both until beats pass again."""
        if p - max(self.last_event, self.last[0] if self.last is not None else 0) > LOST_S * self.fs:
            self.spk *= 0.5
            self.npk *= 0.5
            self.amp_ref *= 0.5
            self.amplitudes = [0.5 * a for a in self.amplitudes]
            if self.major_amps is not None:
                self.major_ref *= 0.5
                self.major_amps = [0.5 * a for a in self.major_amps]
            self.last_event = p
            logger.debug("no beat for %.1f s at %.1f s: halving the peak levels", LOST_S,
                         p / self.fs)

    def _decide(self, c: tuple[int, float, float, float]) -> None:
        """Candidate ``c`` above the upper threshold, tall enough and no T wave is a beat; else
        noise."""
        thr1 = self.npk + THRESHOLD_FRACTION * (self.spk - self.npk)
        if c[1] > thr1 and self._tall_enough(c, MIN_AMPLITUDE) and not (self.last is not None and self._t_wave(c)):
            self._accept(c, searched_back=False)
            self.pending = []
        else:
            self.npk = 0.125 * c[1] + 0.875 * self.npk
            self.pending.append(c)


class _Tail:
    """The recent samples of a growing signal in one preallocated float64 array, so that a step
    writes its new samples in place instead of concatenating buffers: absolute sample ``i`` is
    ``buf[i - base]``; ``start`` is the first sample still read (older ones stay until their room
    is needed), ``end`` one past the newest."""

    __slots__ = ("base", "buf", "end", "start")

    def __init__(self, capacity: int) -> None:
        self.buf = np.empty(max(16, int(capacity)))
        self.base = self.start = self.end = 0

    @property
    def size(self) -> int:
        return self.end - self.start

    def view(self, a: int | None = None, b: int | None = None) -> np.ndarray:
        """Samples ``[a, b)`` (absolute; default ``[start, end)``), a view into the buffer."""
        return self.buf[(self.start if a is None else a) - self.base:(self.end if b is None else b) - self.base]

    def room(self, n: int) -> np.ndarray:
        """A writable view for the next ``n`` samples ``[end, end + n)`` (``end`` moves on); the
        samples held move to the front of the buffer when it is full (every few steps)."""
        if self.end + n - self.base > self.buf.size:
            held = self.buf[self.start - self.base:self.end - self.base]
            if held.size + n > self.buf.size:  # more than was planned for: grow
                buf = np.empty(2 * (held.size + n))
                buf[:held.size] = held
                self.buf = buf
            else:
                self.buf[:held.size] = held  # overlapping copy: numpy buffers it
            self.base = self.start
        out = self.buf[self.end - self.base:self.end + n - self.base]
        self.end += n
        return out


class IncrementalDetector:
    """The detector of :func:`detect_r_peaks`, causal and incremental: every sample is filtered
    once, as it arrives, and a beat is final as soon as the decision phase accepts it.

    Each :meth:`process` of the samples :meth:`write` added extends, by as many samples, the
    absolute derivative of the band-pass (one FIR of both, by FFT overlap-save, centred: half the
    FIR's length late), the moving-window integral (running sums), the QRS candidates (final once
    ``refractory`` samples follow them; the largest within the refractory period, by one windowed
    maximum over the local maxima), their decision (:class:`_Thresholds`, shared with the batch
    detector) and the refinement of the beats it accepted to their R peaks (all of the step's at
    once). The levels are learned from the per-second maxima and means of the first
    :data:`LEARN_S` seconds, as in the batch detector; after ``relearn`` samples without a beat
    they are learned afresh from the last :data:`LEARN_S` seconds (an electrode pop set them
    above every QRS). The state is bounded: ``history`` samples of signal (at least the
    refinement's reach), up to ``2 LEARN_S`` seconds of the integrated signal (to learn the
    levels from) and a step of the derivative, each in a preallocated buffer, and the decision's
    few numbers.

    Results do not depend on how the samples are cut into steps when the caller processes them on
    a fixed grid of the signal (:class:`edgeexit.runtime.stream.StreamDetector` does); with the
    batch detector they agree but for the edges of the signal and the float rounding of the
    filters (FFT against direct convolution).

    Args:
        fs: sampling rate in Hz (checked by the caller: at least 45 Hz).
        refractory: refractory period in samples.
        relearn: samples without a beat after which the levels are learned afresh.
        history: samples of raw signal kept (for the caller's windows as well).
    """

    def __init__(self, fs: float, refractory: int, relearn: int, history: int) -> None:
        self.fs, self.refractory, self.relearn = float(fs), int(refractory), int(relearn)
        d = (fs / 8.0) * np.array([1.0, 2.0, 0.0, -2.0, -1.0])  # five-point derivative, as a kernel
        self._kernel = np.convolve(_bandpass_kernel(fs), d)  # band-pass and derivative in one FIR
        self.khalf = self._kernel.size // 2
        self._spectra: dict[int, np.ndarray] = {}
        self.mhalf = max(1, int(round(INTEGRATION_S * fs))) // 2  # integration: 2 mhalf + 1 samples
        self.shalf = max(1, int(round(REFINE_S * fs)))
        self.bhalf = max(self.shalf, int(round(BASELINE_S * fs)))
        self._base_rng = np.arange(-self.bhalf, self.bhalf + 1)
        # [start, stop) of a window around each index, relative: for np.maximum.reduceat
        self._ref_ends = np.array([-self.refractory, self.refractory + 1])
        self._slope_ends = np.array([-self.shalf, self.shalf + 1])
        self.ahalf = _amplitude_half(fs)
        self._amp_ends = np.array([-self.ahalf, self.ahalf + 1])
        self.sec = int(fs)  # the learning phase's one-second blocks
        self.history = max(int(history), 4 * self.bhalf + 2 * self.khalf)
        self._raw = _Tail(2 * self.history)  # the signal; read from raw_start (the last history)
        self.end = 0  # one past the last sample processed
        self._absd = _Tail(8 * self.sec)  # absolute derivative
        self._mwi = _Tail(4 * int(LEARN_S) * self.sec)  # integrated signal
        self._cums = np.empty(0)  # the integration's running sum (reused)
        self._cand_end = 1  # candidates before this sample are decided or queued
        self._queue: list[tuple[int, float, float, float]] = []  # candidates waiting for the levels
        self.decide: _Thresholds | None = None
        self._last_relearn = 0
        self._centres: list[int] = []  # beats accepted in this step, to refine
        self._minor_centres: set[int] = set()  # those of them that are minor beats
        self.peaks: list[int] = []  # refined R peaks not yet taken by the caller
        self.minor_peaks: set[int] = set()  # those of them that are minor (MINOR_AMPLITUDE)
        self.last_peak = -(1 << 62)

    @property
    def raw(self) -> np.ndarray:
        """The signal processed, its last ``history`` samples (a view; absolute ``raw_start``..)."""
        return self._raw.view(self._raw.start, self.end)

    @property
    def raw_start(self) -> int:
        return self._raw.start

    def write(self, x: np.ndarray) -> None:
        """Append the samples ``x`` (float64 mV, finite) without processing them yet."""
        self._raw.room(x.size)[:] = x

    def feed(self, x: np.ndarray, final: bool = False) -> None:
        """Append the samples ``x`` and process them (:meth:`write`, then :meth:`process`)."""
        self.write(x)
        self.process(final)

    def process(self, final: bool = False) -> None:
        """Detect what the samples written so far make final; ``final``: the signal ends here
        (its edge is reflected, everything left is decided)."""
        self.end = self._raw.end
        self._derivative(final)
        self._integrate(final)
        self._candidates(final)
        if final and self.decide is None:
            self._learn(0, int(LEARN_S) * self.sec)
        if self._centres:
            self._refine()
        self._trim()

    def _trim(self) -> None:
        """Forget what no later step reads (bounded state)."""
        raw, mwi, absd = self._raw, self._mwi, self._absd
        raw.start = max(raw.start, self.end - self.history)
        # the candidates' neighbourhoods, and LEARN_S seconds (and a margin) to learn from
        keep = min(self._cand_end - self.refractory - 2, mwi.end - 2 * int(LEARN_S) * self.sec)
        if self.decide is not None and keep > mwi.start:
            mwi.start = keep
        keep = min(mwi.end - self.mhalf, self._cand_end - self.shalf) - 1  # integral, slopes
        if keep > absd.start:
            absd.start = keep

    # -- filters ---------------------------------------------------------------------------------
    def _conv(self, x: np.ndarray) -> np.ndarray:
        """``np.convolve(x, kernel, 'valid')`` by FFT (overlap-save; rounding differs slightly)."""
        n = 1 << max(8, int(x.size - 1).bit_length())
        spec = self._spectra.get(n)
        if spec is None:
            spec = self._spectra[n] = np.fft.rfft(self._kernel, n)
        return np.fft.irfft(np.fft.rfft(x, n) * spec, n)[self._kernel.size - 1:x.size]

    def _derivative(self, final: bool) -> None:
        k, absd = self.khalf, self._absd
        upto = self.end if final else self.end - k
        if upto <= absd.end or self.end < 2 * k + 2:
            return
        lo = absd.end - k  # first input sample needed
        x = self._raw.view(max(lo, 0), self.end)
        if lo < 0 or final:
            raw = self.raw
            pre = raw[-lo:0:-1] if lo < 0 else raw[:0]  # reflect the start of the signal
            post = raw[-2:-2 - k:-1] if final else raw[:0]  # and its end
            x = np.concatenate([pre, x, post])
        d = self._conv(x)
        np.abs(d, out=absd.room(d.size))

    def _integrate(self, final: bool) -> None:
        h, absd, mwi = self.mhalf, self._absd, self._mwi
        upto = absd.end if final else absd.end - h
        if upto <= mwi.end:
            return
        lo = mwi.end - h
        d = absd.view(max(lo, absd.start))
        sq = d * d  # |d|^2 == d^2 exactly
        if lo < 0:
            sq = np.concatenate([sq[-lo:0:-1], sq])
        if final:
            sq = np.concatenate([sq, sq[-2:-2 - h:-1]])
        if self._cums.size < sq.size + 1:
            self._cums = np.empty(2 * sq.size + 2)
        c = self._cums[:sq.size + 1]
        c[0] = 0.0
        np.cumsum(sq, out=c[1:])
        w = 2 * h + 1
        m = mwi.room(sq.size + 1 - w)
        np.subtract(c[w:], c[:-w], out=m)
        m /= w
        if self.decide is None and mwi.end >= LEARN_S * self.sec:
            self._learn(0, int(LEARN_S) * self.sec)

    def _learn(self, start: int, stop: int) -> None:
        """Levels from the whole seconds of integrated signal in ``[start, stop)`` (absolute; as
        :func:`_learned_levels`: half the medians of the per-second maxima and means of its
        amplitude); the first time, decide the queued candidates."""
        mwi = self._mwi
        start = max(start, -(-mwi.start // self.sec) * self.sec)  # whole seconds held
        n = (min(stop, mwi.end) - start) // self.sec
        if n < 1:
            return
        blocks = np.sqrt(mwi.view(start, start + n * self.sec)).reshape(n, self.sec)
        levels = Levels(0.5 * small_median(blocks.max(axis=1).tolist()),
                        0.5 * small_median(blocks.mean(axis=1).tolist()), ())
        if self.decide is None:
            self.decide = _Thresholds(self.fs, self.refractory, levels)
            queue, self._queue = self._queue, []
            for c in queue:
                self._step(c)
        else:
            self.decide.set_levels(levels)

    # -- decisions -------------------------------------------------------------------------------
    def _candidates(self, final: bool) -> None:
        """The local maxima of the integrated signal that are the largest within the refractory
        period (as :func:`_candidates`), once the period after them is known; each with its QRS
        slope (the largest absolute derivative within ``REFINE_S``)."""
        ref, mwi = self.refractory, self._mwi
        m0 = mwi.start
        upto = mwi.end - 1 if final else mwi.end - ref
        lo = self._cand_end
        if upto <= lo:
            return
        self._cand_end = upto
        m = mwi.view()
        v = m[lo - 1 - m0:upto + 1 - m0]
        mid = v[1:-1]
        idx = ((mid > v[:-2]) & (mid >= v[2:])).nonzero()[0]
        if not idx.size:
            return
        idx += lo - m0  # rows of ``m``
        h = m[idx]
        idx = idx[h >= _window_max(m, idx, ref, self._ref_ends)]
        if not idx.size:
            return
        h = m[idx]
        cand = idx + m0
        absd = self._absd
        slopes = _window_max(absd.view(), cand - absd.start, self.shalf, self._slope_ends)
        raw = self.raw  # the candidates' raw peak-to-peak amplitudes (as :func:`_amplitudes`)
        pairs = _window_pairs(raw, cand - self._raw.start, self.ahalf, self._amp_ends)
        if pairs is None:
            amps = _amplitudes(raw, cand, self.ahalf, self._raw.start)
        else:
            amps = np.maximum.reduceat(raw, pairs)[::2] - np.minimum.reduceat(raw, pairs)[::2]
        for c in zip(cand.tolist(), np.sqrt(h).tolist(), slopes.tolist(), amps.tolist()):
            if self.decide is None:
                self._queue.append(c)
            else:
                self._step(c)

    def _step(self, c: tuple[int, float, float, float]) -> None:
        d = self.decide
        last = d.last[0] if d.last is not None else 0
        if c[0] - max(last, self._last_relearn) > self.relearn:
            logger.info("no beat for %.1f s before sample %d: the detector learns its levels "
                        "afresh", (c[0] - last) / self.fs, c[0])
            self._last_relearn = c[0]
            end = c[0] // self.sec * self.sec  # the last LEARN_S whole seconds before it
            self._learn(end - int(LEARN_S) * self.sec, end)
            d.last_event = c[0]
        d.step(*c)
        if d.accepted:  # emptied after every step
            self._centres += d.accepted
            d.accepted.clear()
            if d.minor_at:
                self._minor_centres.update(d.minor_at)
                d.minor_at.clear()

    def _refine(self) -> None:
        """The step's accepted beats moved to their R peaks (as :func:`_refine`); a peak closer
        than the refractory period to the previous one is dropped (as :func:`_refined_peaks`)."""
        raw, r0, bh, sh = self.raw, self._raw.start, self.bhalf, self.shalf
        centres, self._centres = self._centres, []
        if centres[0] - bh >= r0 and centres[-1] + bh < self.end:  # all inside: one gather
            c = np.array(centres)
            g = raw[(c - r0)[:, None] + self._base_rng]  # [B, 2 bh + 1], the beats' surroundings
            base = np.partition(g, bh, axis=1)[:, bh:bh + 1]  # the medians (an odd count)
            dev = np.abs(g[:, bh - sh:bh + sh + 1] - base)  # the refinement's reach, within it
            peaks = (dev.argmax(axis=1) + (c - sh)).tolist()
        else:  # the signal's edges: clip, as the batch detector does
            peaks = []
            for centre in centres:
                b = np.clip(np.arange(centre - bh, centre + bh + 1), r0, self.end - 1) - r0
                base = np.partition(raw[b], bh)[bh]  # the median (an odd count)
                r = np.clip(np.arange(centre - sh, centre + sh + 1), r0, self.end - 1)
                peaks.append(int(r[np.argmax(np.abs(raw[r - r0] - base))]))
        mc = self._minor_centres
        for i, peak in enumerate(peaks):
            if peak - self.last_peak >= self.refractory:
                self.peaks.append(peak)
                self.last_peak = peak
                if mc and centres[i] in mc:
                    self.minor_peaks.add(peak)
        if mc:
            mc.difference_update(centres)


def _window_pairs(v: np.ndarray, idx: np.ndarray, half: int, ends: np.ndarray) -> np.ndarray | None:
    """The ``[i + ends[0], i + ends[1])`` pairs of the windows ``i - half .. i + half`` of every
    ``i`` of ``idx`` (increasing), flat, for ``np.ufunc.reduceat`` (the reduction of every even
    slot is a window's); None when a window does not lie inside ``v``."""
    if idx[0] >= half and idx[-1] + half + 1 < v.size:
        return (idx[:, None] + ends).ravel()
    return None


def _window_max(v: np.ndarray, idx: np.ndarray, half: int, ends: np.ndarray) -> np.ndarray:
    """``max(v[i - half .. i + half])`` for every ``i`` of ``idx`` (increasing), the windows
    clipped to ``v``: one ``np.maximum.reduceat`` when they all lie inside (:func:`_window_pairs`),
    else a clipped gather."""
    pairs = _window_pairs(v, idx, half, ends)
    if pairs is not None:
        return np.maximum.reduceat(v, pairs)[::2]
    return v[_neighbourhood(idx, half, v.size)].max(axis=1)


def _refined_peaks(x: np.ndarray, beats: np.ndarray, fs: float, refractory: int
                   ) -> tuple[np.ndarray, list[int]]:
    """The beats moved to their R peaks (:func:`_refine`), and the indices into ``beats`` of
    those kept: refinement moves each by up to REFINE_S, so two may end up closer than the
    refractory period (or on one peak): the first of such pairs is kept."""
    peaks: list[int] = []
    kept: list[int] = []
    for i, r in enumerate(_refine(x, beats, fs).tolist()):
        if not peaks or r - peaks[-1] >= refractory:
            peaks.append(r)
            kept.append(i)
    return np.asarray(peaks, dtype=np.int64), kept


def windows_from_signal(
    signal: np.ndarray,
    fs: float,
    *,
    window: int = 256,
    r_offset: int | None = None,
    rr_context: bool = True,
    morph_context: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Detect the R peaks of a single-lead ECG and cut the model's input windows around them.

    Args:
        signal: one ECG lead in mV, shape ``[T]`` (see :func:`detect_r_peaks`).
        fs: sampling rate in Hz.
        window: samples per window.
        r_offset: samples before the R peak; defaults to
            :func:`edgeexit.runtime.preprocess.default_r_offset`.
        rr_context: append the RR-interval context channels
            (:data:`edgeexit.runtime.preprocess.RR_FEATURES`), computed from the detected peaks,
            the minor ones left out of their neighbours' intervals (:data:`MINOR_AMPLITUDE`).
        morph_context: append the morphology context channels
            (:data:`edgeexit.runtime.preprocess.MORPH_FEATURES`).

    Returns:
        ``(x, r_peaks)``: float32 windows ``[B, C, window]`` (C = 1, or 6 with RR context) and the
        sample indices (int64) of the R peaks of the kept beats (beats too close to either end of
        the signal are dropped).

    Raises:
        ValueError: invalid signal (see :func:`detect_r_peaks`), or fewer than two R peaks found
            when ``rr_context`` is set.
    """
    peaks, minor = detect_beats(signal, fs)
    if rr_context and peaks.size < 2:
        raise ValueError(
            f"found {peaks.size} R peak(s); RR context needs at least 2 (is this an ECG in mV?)"
        )
    x, kept = beat_windows(
        np.asarray(signal, dtype=np.float32), peaks, fs, window=window, r_offset=r_offset,
        rr_context=rr_context, morph_context=morph_context, minor=minor,
    )
    return x, peaks[kept]

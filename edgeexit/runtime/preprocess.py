"""Beat windows and RR-interval context, computed from a signal and its R peaks (numpy only).

The same functions cut training windows from MIT-BIH records and from the synthetic generator, and
cut windows on the device from a live signal, so the model sees identical inputs everywhere.

Supraventricular (S) beats differ from normal ones mostly in *timing* (they come early), which a
single-beat window cannot see. The RR context adds, for every beat, constant channels holding its
RR intervals in seconds and their ratios to the local rhythm:

====================  =======================================================================
``pre_rr``            seconds since the previous R peak
``post_rr``           seconds to the next R peak (one beat of latency on a device)
``local_rr``          median of the last :data:`LOCAL_RR_BEATS` RR intervals up to this beat
``pre_rr_ratio``      ``pre_rr / local_rr``  (< 1 for a premature beat)
``post_rr_ratio``     ``post_rr / local_rr`` (> 1 for a compensatory pause)
``avg_rr``            mean of the last :data:`LONG_RR_BEATS` RR intervals (minutes of rhythm)
``pre_rr_avg_ratio``  ``pre_rr / avg_rr``
====================  =======================================================================

The long average matters where premature beats outnumber normal ones (MIT-BIH record 232: the
local median then follows the premature rhythm, while the long mean still includes the pauses).

The morphology context (``morph_context``) compares every beat with the same patient's recent
beats: the template is the sample-wise median of the signal windows of the previous
:data:`TEMPLATE_BEATS` beats of the recording (causal: the device keeps those windows), and three
constant channels hold, in :data:`MORPH_FEATURES` order:

====================  =======================================================================
``qrs_corr``          Pearson correlation of the beat with the template over the QRS
                      (+-:data:`QRS_HALF_S` around the R peak): ~1 for the patient's usual beat
``qrs_amp_ratio``     the beat's QRS peak-to-peak amplitude over the template's
``beat_dev``          RMS of (beat - template) over the window, relative to the template's RMS
====================  =======================================================================

All three are invariant to the patient's gain and baseline, so a wide QRS that is the patient's
usual beat (bundle branch block: class N) reads like a normal beat, and an ectopic beat unlike
the patient's own reads unlike it, whoever the patient is. The first beat of a recording is its
own template (1, 1, 0).

Example:
    >>> x = beat_windows(ecg_mv, r_peaks, fs=360.0, window=256, rr_context=True)
    >>> x.shape  # (n_beats, 1 + len(RR_FEATURES), 256)
"""

from __future__ import annotations

import math

import numpy as np

RR_FEATURES: tuple[str, ...] = (
    "pre_rr",
    "post_rr",
    "local_rr",
    "pre_rr_ratio",
    "post_rr_ratio",
    "avg_rr",
    "pre_rr_avg_ratio",
)
"""Names of the RR context channels, in channel order after the signal channels."""

LOCAL_RR_BEATS = 16
"""How many past RR intervals the local rhythm (``local_rr``) is the median of."""

LONG_RR_BEATS = 256
"""How many past RR intervals the long-term rhythm (``avg_rr``) is the mean of."""

MORPH_FEATURES: tuple[str, ...] = ("qrs_corr", "qrs_amp_ratio", "beat_dev")
"""Names of the morphology context channels (after the RR channels, when both are on)."""

TEMPLATE_BEATS = 8
"""How many previous beats' windows the morphology template is the median of."""

QRS_HALF_S = 0.08
"""Half-width in seconds of the QRS region that ``qrs_corr`` and ``qrs_amp_ratio`` look at."""

MORPH_CLIP = 10.0  # ratios are clipped to [0, 10]: an electrode pop must not dominate


class BeatTemplate:
    """The morphology context of one recording, beat after beat (bounded state: the last
    :data:`TEMPLATE_BEATS` windows). The training data and the device stream both use it, so the
    features are the same bit for bit.

    Args:
        window: samples per window; r_offset: samples before the R peak; fs: Hz.
    """

    def __init__(self, window: int, r_offset: int, fs: float) -> None:
        half = max(2, int(round(QRS_HALF_S * float(fs))))
        self.qrs = slice(max(0, r_offset - half), min(window, r_offset + half))
        self.window = int(window)
        self._past = np.zeros((TEMPLATE_BEATS, self.window), np.float32)  # a ring, a row per beat
        # the same values sorted down every sample's column (rows 1..TEMPLATE_BEATS; +inf where
        # no beat is held yet), between a row of -inf and one of +inf: the median is read off
        # the middle rows, and a beat leaves and joins by a few whole-row comparisons (add)
        # instead of a partition per sample
        self._sorted = np.full((TEMPLATE_BEATS + 2, self.window), np.inf, np.float32)
        self._sorted[0] = -np.inf
        self._work = self._sorted[:-1].copy()  # -inf, the rows left after one leaves, +inf
        self._low = np.empty((TEMPLATE_BEATS, self.window), np.float32)
        self._lt = np.empty((TEMPLATE_BEATS - 1, self.window), bool)
        self._inf = self._sorted[-1]  # what leaves while fewer than TEMPLATE_BEATS are held
        self._m = np.empty((2, self.window))  # _morph's float64 rows
        self._n = 0  # windows held (at most TEMPLATE_BEATS)
        self._next = 0  # the row the next window goes to (a ring: the oldest is overwritten)

    def features(self, w: np.ndarray) -> np.ndarray:
        """This beat's :data:`MORPH_FEATURES` (float32 ``[3]``) against the template of the
        previous beats; then ``w`` (float32 ``[window]``) joins the template's beats. A window that
        is not finite is answered (1, 1, 0) and does not join."""
        return np.array(self.values(w), np.float32)

    def values(self, w: np.ndarray, join: bool = True) -> tuple[float, float, float]:
        """:meth:`features` before their float32 rounding (Python floats); ``join=False``: ``w``
        does not join the template (a minor beat, :data:`edgeexit.runtime.peaks.MINOR_AMPLITUDE`)."""
        w = np.asarray(w, dtype=np.float32)
        out = _morph_values(w, self.template(w), self.qrs, self._m, finite=True)
        if out is None:  # NaN or Inf somewhere in w
            return (1.0, 1.0, 0.0)
        if join:
            self.add(w)
        return out

    def template(self, w: np.ndarray) -> np.ndarray:
        """What beat ``w`` is compared with: the median of the previous beats' windows (``w``
        itself for the first beat); ``np.median`` of them, bit for bit."""
        n = self._n
        if not n:
            return np.asarray(w, np.float32)
        s = self._sorted
        if n % 2:
            return s[1 + n // 2].copy()
        return (s[n // 2] + s[n // 2 + 1]) / np.float32(2.0)

    def add(self, w: np.ndarray) -> None:
        """``w`` (finite, ``[window]``) joins the template's beats, the oldest leaving. Every
        column of :attr:`_sorted` stays sorted: the leaving value is dropped (the rows below it
        move up one), then ``w`` is inserted: row ``k`` becomes ``max(t[k - 1], min(t[k], w))``
        of the seven rows ``t`` left (``-inf`` above them, ``+inf`` below)."""
        s, t, lt, low = self._sorted, self._work, self._lt, self._low
        old = self._past[self._next] if self._n == TEMPLATE_BEATS else self._inf
        np.less(s[1:-2], old, out=lt)  # rows above the leaving value's (its first copy) stay
        t[1:-1] = s[2:-1]
        np.copyto(t[1:-1], s[1:-2], where=lt)
        np.minimum(t[1:], w, out=low)
        np.maximum(t[:-1], low, out=s[1:-1])
        self._past[self._next] = w
        self._next = (self._next + 1) % TEMPLATE_BEATS
        self._n = min(self._n + 1, TEMPLATE_BEATS)

    def compare(self, w: np.ndarray, template: np.ndarray) -> np.ndarray:
        """The :data:`MORPH_FEATURES` of ``w`` against a given ``template`` (no state change)."""
        return _morph(np.asarray(w, np.float32), np.asarray(template, np.float32), self.qrs, self._m)


def _morph(w: np.ndarray, t: np.ndarray, qrs: slice, m: np.ndarray | None = None) -> np.ndarray:
    """:data:`MORPH_FEATURES` of window ``w`` against template ``t`` (float32 ``[3]``)."""
    return np.array(_morph_values(w, t, qrs, m), np.float32)


def _morph_values(w: np.ndarray, t: np.ndarray, qrs: slice, m: np.ndarray | None = None,
                  finite: bool = False) -> tuple[float, float, float] | None:
    """:data:`MORPH_FEATURES` of ``w`` against ``t`` as Python floats, in float64 from the 2 x 2
    Gram matrices of the two (centred) windows and of their QRS parts: a stream pays this per
    beat, so it is a dozen numpy calls, not one per sum. ``m``: a float64 ``[2, L]`` buffer;
    ``finite``: return None when ``w`` holds a NaN or Inf (its sum is then not finite)."""
    if m is None:
        m = np.empty((2, w.shape[-1]))
    m[0] = w
    m[1] = t
    n = m.shape[1]
    sums = np.add.reduce(m, axis=1, keepdims=True)
    if finite and not math.isfinite(sums[0, 0]):
        return None
    m -= sums / n  # minus the means (as m.mean(axis=1))
    (ww, wt), (_, tt) = (m @ m.T).tolist()
    q = m[:, qrs]
    nq = q.shape[1]
    (qa, qab), (_, qb) = (q @ q.T).tolist()
    sa, sb = np.add.reduce(q, axis=1).tolist()
    amp_a, amp_t = (np.maximum.reduce(q, axis=1) - np.minimum.reduce(q, axis=1)).tolist()
    aa, bb = max(0.0, qa - sa * sa / nq), max(0.0, qb - sb * sb / nq)  # QRS parts centred
    den = math.sqrt(aa * bb)
    corr = (qab - sa * sb / nq) / den if den > 1e-12 else 1.0
    amp = amp_a / amp_t if amp_t > 1e-6 else 1.0
    rms_t = math.sqrt(max(0.0, tt) / n)
    dev = math.sqrt(max(0.0, ww + tt - 2.0 * wt) / n) / rms_t if rms_t > 1e-6 else 0.0
    return corr, min(amp, MORPH_CLIP), min(dev, MORPH_CLIP)


def morph_features(signal_windows: np.ndarray, r_offset: int, fs: float,
                   join: np.ndarray | None = None) -> np.ndarray:
    """:data:`MORPH_FEATURES` of consecutive beats of one recording: ``[B, L] -> [B, 3]``;
    ``join`` (bool ``[B]``, default all): which beats join the template after theirs."""
    sw = np.asarray(signal_windows, dtype=np.float32)
    tmpl = BeatTemplate(sw.shape[-1], r_offset, fs)
    if not len(sw):
        return np.zeros((0, len(MORPH_FEATURES)), np.float32)
    joins = [True] * len(sw) if join is None else [bool(j) for j in join]
    return np.array([tmpl.values(w, j) for w, j in zip(sw, joins)], np.float32)


def morph_templates(signal_windows: np.ndarray, r_offset: int, fs: float) -> np.ndarray:
    """The template each of consecutive beats of one recording is compared with by
    :func:`morph_features` (the median of its previous beats; non-finite windows do not join):
    ``[B, L] -> [B, L]``, float32."""
    sw = np.asarray(signal_windows, dtype=np.float32)
    tmpl = BeatTemplate(sw.shape[-1], r_offset, fs)
    out = np.empty_like(sw)
    for i, w in enumerate(sw):
        out[i] = tmpl.template(w)
        if np.isfinite(w).all():
            tmpl.add(w)
    return out


def small_median(values) -> float:
    """``float(np.median(values))`` of a few floats, bit for bit, without numpy's per-call cost
    (sorted, the middle one or the mean of the middle two)."""
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2.0


def default_r_offset(window: int) -> int:
    """Samples before the R peak in a window of ``window`` samples (3/8 of it: room for P and T)."""
    return (window * 3) // 8


def rr_features(r_peaks: np.ndarray, fs: float, minor: np.ndarray | None = None) -> np.ndarray:
    """RR-interval context for every beat of one continuous recording.

    Args:
        r_peaks: increasing sample indices of the R peaks of one recording, shape ``[B]``, B >= 2.
        fs: sampling rate in Hz.
        minor: bool ``[B]``, the detector's minor beats
            (:data:`edgeexit.runtime.peaks.MINOR_AMPLITUDE`; None: none). The other beats' RR
            intervals run from full-size beat to full-size beat, and their local and long rhythm
            is theirs alone; a minor beat gets its intervals to the peaks either side of it and
            the rhythm of the full-size beat before it. Minor beats before the first full-size
            one count as full-size.

    Returns:
        float32 array ``[B, len(RR_FEATURES)]`` in the order of :data:`RR_FEATURES`. The first beat
        uses its next interval as ``pre_rr`` and the last beat its previous one as ``post_rr``.

    Raises:
        ValueError: fewer than two peaks (or full-size peaks), or peaks not strictly increasing.
    """
    peaks = np.asarray(r_peaks, dtype=np.float64)
    if peaks.ndim != 1 or peaks.size < 2:
        raise ValueError(f"RR context needs at least 2 R peaks in one recording, got {peaks.size}")
    rr = np.diff(peaks) / float(fs)  # [B-1] seconds between consecutive peaks
    if np.any(rr <= 0):
        raise ValueError("R peaks must be strictly increasing sample indices")
    flags = minor_flags(minor, peaks.size)
    if flags is None:
        return np.stack(_rr_columns(rr), axis=1).astype(np.float32)
    major = np.flatnonzero(~flags)
    if major.size < 2:
        raise ValueError(f"RR context needs at least 2 full-size R peaks, got {major.size}")
    out = np.empty((peaks.size, len(RR_FEATURES)))
    out[major] = np.stack(_rr_columns(np.diff(peaks[major]) / float(fs)), axis=1)
    m = np.flatnonzero(flags)
    pre = rr[m - 1]  # a minor beat is never the first
    post = np.where(m < rr.size, rr[np.minimum(m, rr.size - 1)], pre)  # the last: its pre
    ref = out[major[np.searchsorted(major, m) - 1]]  # the full-size beat before it
    local, avg = ref[:, 2], ref[:, 5]
    out[m] = np.stack([pre, post, local, pre / local, post / local, avg, pre / avg], axis=1)
    return out.astype(np.float32)


def minor_flags(minor: np.ndarray | None, n: int) -> np.ndarray | None:
    """``minor`` (bool ``[n]``) as the context reads it: minor beats before the first full-size
    one count as full-size; None when no beat is minor."""
    if minor is None:
        return None
    flags = np.asarray(minor, bool)
    if flags.shape != (n,):
        raise ValueError(f"minor must hold one flag per R peak ({n}), got shape {flags.shape}")
    flags = flags & (np.cumsum(~flags) > 0)
    return flags if flags.any() else None


def _rr_columns(rr: np.ndarray) -> list[np.ndarray]:
    """The :data:`RR_FEATURES` columns (float64) of consecutive beats with intervals ``rr``."""
    pre = np.concatenate([rr[:1], rr])  # [B]
    post = np.concatenate([rr, rr[-1:]])  # [B]
    pre_l = pre.tolist()  # causal: only intervals that ended at or before this beat
    local = np.array([small_median(pre_l[max(0, i - LOCAL_RR_BEATS + 1) : i + 1])
                      for i in range(pre.size)])
    csum = np.concatenate([[0.0], np.cumsum(pre)])  # causal running mean over LONG_RR_BEATS
    idx = np.arange(pre.size)
    lo = np.maximum(0, idx - LONG_RR_BEATS + 1)
    avg = (csum[idx + 1] - csum[lo]) / (idx + 1 - lo)
    return [pre, post, local, pre / local, post / local, avg, pre / avg]


def beat_windows(
    signal: np.ndarray,
    r_peaks: np.ndarray,
    fs: float,
    window: int = 256,
    r_offset: int | None = None,
    rr_context: bool = False,
    morph_context: bool = False,
    minor: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one window per R peak from a continuous signal, optionally with RR context channels.

    Args:
        signal: the recording in physical units (mV), shape ``[T]`` or ``[C, T]``.
        r_peaks: sample indices of the R peaks, increasing, shape ``[B]``.
        fs: sampling rate in Hz.
        window: samples per window (default 256, 0.71 s at 360 Hz).
        r_offset: samples before the R peak; defaults to :func:`default_r_offset`.
        rr_context: append the :data:`RR_FEATURES` channels (constant over the window).
        morph_context: append the :data:`MORPH_FEATURES` channels (after the RR channels), from
            the first signal channel of the kept beats, in order (:class:`BeatTemplate`).
        minor: bool ``[B]``, the detector's minor beats (:func:`edgeexit.runtime.peaks.detect_beats`):
            left out of their neighbours' RR intervals (:func:`rr_features`) and of the
            morphology template; None: every beat is full-size (annotated peaks).

    Returns:
        ``(x, kept)``: float32 windows ``[B', C (+5), window]`` and the indices into ``r_peaks``
        of the beats kept (beats too close to either end of the signal are dropped; their RR
        context still counts for their neighbours).
    """
    sig = np.asarray(signal, dtype=np.float32)
    if sig.ndim == 1:
        sig = sig[None, :]
    if sig.ndim != 2:
        raise ValueError(f"signal must be [T] or [C, T], got shape {sig.shape}")
    peaks = np.asarray(r_peaks, dtype=np.int64)
    off = default_r_offset(window) if r_offset is None else int(r_offset)
    starts = peaks - off
    kept = np.flatnonzero((starts >= 0) & (starts + window <= sig.shape[1]))
    idx = starts[kept, None] + np.arange(window)[None, :]  # [B', window]
    x = np.transpose(sig[:, idx], (1, 0, 2))  # [B', C, window]
    if rr_context:
        feats = rr_features(peaks, fs, minor)[kept]  # [B', F]
        ctx = np.broadcast_to(feats[:, :, None], (kept.size, feats.shape[1], window))
        x = np.concatenate([x, ctx], axis=1)
    if morph_context:
        flags = minor_flags(minor, peaks.size)
        join = None if flags is None else ~flags[kept]
        feats = morph_features(x[:, 0], off, fs, join)  # [B', 3]
        ctx = np.broadcast_to(feats[:, :, None], (kept.size, feats.shape[1], window))
        x = np.concatenate([x, ctx], axis=1)
    return np.ascontiguousarray(x, dtype=np.float32), kept

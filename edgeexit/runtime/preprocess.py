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

Example:
    >>> x = beat_windows(ecg_mv, r_peaks, fs=360.0, window=256, rr_context=True)
    >>> x.shape  # (n_beats, 1 + len(RR_FEATURES), 256)
"""

from __future__ import annotations

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


def default_r_offset(window: int) -> int:
    """Samples before the R peak in a window of ``window`` samples (3/8 of it: room for P and T)."""
    return (window * 3) // 8


def rr_features(r_peaks: np.ndarray, fs: float) -> np.ndarray:
    """RR-interval context for every beat of one continuous recording.

    Args:
        r_peaks: increasing sample indices of the R peaks of one recording, shape ``[B]``, B >= 2.
        fs: sampling rate in Hz.

    Returns:
        float32 array ``[B, len(RR_FEATURES)]`` in the order of :data:`RR_FEATURES`. The first beat
        uses its next interval as ``pre_rr`` and the last beat its previous one as ``post_rr``.

    Raises:
        ValueError: fewer than two peaks, or peaks not strictly increasing.
    """
    peaks = np.asarray(r_peaks, dtype=np.float64)
    if peaks.ndim != 1 or peaks.size < 2:
        raise ValueError(f"RR context needs at least 2 R peaks in one recording, got {peaks.size}")
    rr = np.diff(peaks) / float(fs)  # [B-1] seconds between consecutive peaks
    if np.any(rr <= 0):
        raise ValueError("R peaks must be strictly increasing sample indices")
    pre = np.concatenate([rr[:1], rr])  # [B]
    post = np.concatenate([rr, rr[-1:]])  # [B]
    local = np.empty_like(pre)
    for i in range(pre.size):  # causal: only intervals that ended at or before this beat
        local[i] = np.median(pre[max(0, i - LOCAL_RR_BEATS + 1) : i + 1])
    csum = np.concatenate([[0.0], np.cumsum(pre)])  # causal running mean over LONG_RR_BEATS
    idx = np.arange(pre.size)
    lo = np.maximum(0, idx - LONG_RR_BEATS + 1)
    avg = (csum[idx + 1] - csum[lo]) / (idx + 1 - lo)
    feats = np.stack([pre, post, local, pre / local, post / local, avg, pre / avg], axis=1)
    return feats.astype(np.float32)


def beat_windows(
    signal: np.ndarray,
    r_peaks: np.ndarray,
    fs: float,
    window: int = 256,
    r_offset: int | None = None,
    rr_context: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one window per R peak from a continuous signal, optionally with RR context channels.

    Args:
        signal: the recording in physical units (mV), shape ``[T]`` or ``[C, T]``.
        r_peaks: sample indices of the R peaks, increasing, shape ``[B]``.
        fs: sampling rate in Hz.
        window: samples per window (default 256, 0.71 s at 360 Hz).
        r_offset: samples before the R peak; defaults to :func:`default_r_offset`.
        rr_context: append the :data:`RR_FEATURES` channels (constant over the window).

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
        feats = rr_features(peaks, fs)[kept]  # [B', F]
        ctx = np.broadcast_to(feats[:, :, None], (kept.size, feats.shape[1], window))
        x = np.concatenate([x, ctx], axis=1)
    return np.ascontiguousarray(x, dtype=np.float32), kept

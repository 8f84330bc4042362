"""A per-beat signal-quality index (numpy only): is this beat readable, or buried in noise?

A classifier answers every window it is given; a beat whose QRS is drowned in muscle artefact
gets a guess. :func:`beat_sqi` measures, per beat window, how far the QRS stands above the
window's high-frequency noise:

    SQI = peak-to-peak of the signal over the QRS (+-QRS_HALF_S around the R peak)
          / RMS of the high-frequency residual outside the QRS

where the residual is the signal minus its moving average over :data:`SMOOTH_S` (a low-pass
whose first zero is at 1 / SMOOTH_S = 40 Hz): P and T waves and baseline wander pass it, muscle
artefact and electrode noise stay in the residual. A clean MIT-BIH beat scores in the tens; a
beat under muscle noise at 0 dB scores a few. ``run --stream --min-sqi Q`` flags the beats
below ``Q`` as unreadable (their answer is kept, marked, and the scores count them apart);
``tools/defence_detector.py sqi`` measures how many beats each threshold flags, clean and
noisy.
"""

from __future__ import annotations

import numpy as np

from edgeexit.runtime.preprocess import QRS_HALF_S

SMOOTH_S = 0.025
"""Width in seconds of the moving average whose residual is the noise (first zero at 40 Hz)."""


def beat_sqi(window: np.ndarray, r_offset: int, fs: float) -> float:
    """The quality index of one beat's signal window ``[L]`` (mV), R peak at ``r_offset``.

    Returns:
        QRS peak-to-peak over the RMS of the high-frequency residual outside the QRS (0 for a
        window that is not finite or flat; large for a clean beat).
    """
    w = np.asarray(window, np.float64)
    if w.ndim != 1 or w.size < 8 or not np.isfinite(w).all():
        return 0.0
    half = max(2, int(round(QRS_HALF_S * fs)))
    lo, hi = max(0, r_offset - half), min(w.size, r_offset + half + 1)
    amp = float(w[lo:hi].max() - w[lo:hi].min()) if hi > lo else 0.0
    k = max(3, int(round(SMOOTH_S * fs)) | 1)  # odd
    csum = np.concatenate([[0.0], np.cumsum(w)])
    smooth = (csum[k:] - csum[:-k]) / k  # the moving average, valid part: w[k//2 : -k//2]
    resid = w[k // 2: k // 2 + smooth.size] - smooth
    keep = np.ones(resid.size, bool)
    keep[max(0, lo - k // 2): max(0, hi - k // 2)] = False
    noise = float(np.sqrt(np.mean(resid[keep] ** 2))) if keep.any() else 0.0
    if amp <= 0.0:
        return 0.0
    return amp / max(noise, 1e-4)  # 0.1 uV floor: a synthetic clean beat has no residual

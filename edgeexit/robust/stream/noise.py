"""Noise mixed into a continuous record at an SNR, as PhysioNet's ``nst`` mixes it.

:func:`edgeexit.robust.noise.add_noise` sets the SNR per beat window; here, as ``nst`` does, one
gain for the whole record (WFDB Applications Guide, nst(1)):

- ``S = A_pp**2 / 8`` with ``A_pp`` the QRS peak-to-peak amplitude: the 5%/5%-trimmed mean of
  the ranges of the first 300 normal (``N``) beats' QRS complexes, 50 ms either side of each
  annotation (``nst``'s ``sigamp``; every beat when the record has no normal beat);
- ``N`` the noise power of :func:`edgeexit.robust.noise.noise_power` (1-s chunks, RMS about each
  chunk's mean, 5%/5%-trimmed) over the noise segment added;
- the gain ``a`` solves ``SNR = 10 log10(S / (N a**2))``.

The noise is synthetic (:func:`edgeexit.robust.noise.synthetic_noise`) or taken from the nstdb
records (:class:`edgeexit.robust.noise.NoiseRecords`, ``--noise-dir``; a random start, wrapping
around the record's end as ``nst`` rewinds it).
"""

from __future__ import annotations

import math

import numpy as np

from edgeexit.errors import ConfigError, DataError
from edgeexit.robust.noise import TRIM, NoiseRecords, noise_power, synthetic_noise

QRS_HALF_S = 0.05  # nst's sigamp measures the range 50 ms either side of the annotation
SIGAMP_BEATS = 300  # ... of the first 300 normal beats


def qrs_amplitude(signal: np.ndarray, ann_samples: np.ndarray, ann_labels: np.ndarray | None,
                  fs: float, normal: int = 0) -> float:
    """``nst``'s ``A_pp`` (mV): the trimmed mean QRS range of the first 300 normal beats."""
    r = np.asarray(ann_samples, np.int64)
    if ann_labels is not None and np.any(np.asarray(ann_labels) == normal):
        r = r[np.asarray(ann_labels) == normal]
    half = max(1, int(round(QRS_HALF_S * fs)))
    r = r[(r >= half) & (r + half < signal.size)][:SIGAMP_BEATS]
    if r.size == 0:
        raise DataError("no annotated beat to measure the QRS amplitude (the SNR's signal) on")
    idx = r[:, None] + np.arange(-half, half + 1)[None, :]
    ranges = np.sort(np.ptp(signal[idx], axis=1))
    drop = math.floor(TRIM * ranges.size)
    return float(ranges[drop: ranges.size - drop].mean())


def stream_snr(clean: np.ndarray, noisy: np.ndarray, ann_samples: np.ndarray,
               ann_labels: np.ndarray | None, fs: float) -> float:
    """The SNR (dB) of ``noisy`` against ``clean``, as :func:`mix_noise` defines it."""
    a = qrs_amplitude(np.asarray(clean, np.float64), ann_samples, ann_labels, fs)
    n = float(noise_power(np.asarray(noisy, np.float64) - clean, fs))
    return 10.0 * math.log10(a * a / 8.0 / n) if n > 0 else math.inf


def mix_noise(signal: np.ndarray, ann_samples: np.ndarray, ann_labels: np.ndarray | None,
              kind: str, snr_db: float, *, fs: float, seed: int = 0,
              records: NoiseRecords | None = None) -> np.ndarray:
    """``signal`` (mV ``[T]``) with noise of ``kind`` (``bw``, ``ma``, ``em``) at ``snr_db``.

    Args:
        signal: one continuous lead in mV.
        ann_samples, ann_labels: its annotated beats (the QRS amplitude is measured on them).
        kind: the noise kind; snr_db: the SNR in dB (nst's definition, module docstring).
        fs: sampling rate in Hz.
        seed: seeds the synthetic noise, or the start in the noise record.
        records: take the noise from nstdb records (None: synthetic).

    Returns:
        float64 ``[T]``.
    """
    if not (isinstance(snr_db, (int, float, np.number)) and math.isfinite(snr_db)):
        raise ConfigError(f"snr_db must be a finite number of dB, got {snr_db!r}")
    x = np.asarray(signal, np.float64)
    if records is None:
        noise = synthetic_noise(kind, x.size, fs, seed=seed)
    else:
        rng = np.random.default_rng(seed)
        noise = records.segments(kind, 1, x.size, channels=1, fs=fs, rng=rng)[0, 0]
    noise = noise - noise.mean()
    n = float(noise_power(noise, fs))
    if n <= 0:
        raise DataError(f"the {kind} noise segment is flat (no power): use another record")
    a = qrs_amplitude(x, ann_samples, ann_labels, fs)
    gain = math.sqrt(a * a / 8.0 / (n * 10.0 ** (snr_db / 10.0)))
    return x + gain * noise

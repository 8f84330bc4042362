"""Realistic ECG noise (baseline wander, muscle artefact, electrode motion) mixed in at an SNR.

Numpy only (no torch; ``wfdb`` is imported only to read noise records), so it runs where the
bundle is deployed.

The three kinds are those of the MIT-BIH Noise Stress Test Database (nstdb,
https://physionet.org/content/nstdb/1.0.0/): ``bw`` baseline wander, ``ma`` muscle (EMG)
artefact, ``em`` electrode motion. :func:`add_noise` takes them from the real nstdb records
(:class:`NoiseRecords`) or, by default, from seeded synthetic generators of the same character
(:func:`synthetic_noise`), and scales them to a signal-to-noise ratio defined as PhysioNet's
``nst`` program defines it.

SNR, as ``nst`` defines it (WFDB Applications Guide, nst(1), section "Signal-to-noise ratios",
https://physionet.org/physiotools/wag/nst-1.htm; also ``doc/wag-src/nst.1`` of the WFDB sources)::

    SNR = 10 log10(S / N)
    S = A_pp**2 / 8     A_pp: peak-to-peak QRS amplitude (the power of a sinusoid of that
                        peak-to-peak amplitude)
    N = n**2            n: RMS noise amplitude: the noise is cut into 1-s chunks; in each chunk
                        the RMS difference between the noise and the chunk's own mean; the
                        largest 5% and smallest 5% of these are discarded and n is the mean of
                        the remaining 90%

and the noise gain ``a`` solves ``SNR = 10 log10(S / (N a**2))``. ``nst`` measures ``A_pp`` with
``sigamp`` as the trimmed mean (5% / 5%) of the ranges of the first 300 normal QRS complexes
(50 ms either side of each annotation), and ``N`` over the first 300 s of the noise record.

Here the SNR is set per beat window and per signal channel (each window gets its own gain):

- ``A_pp`` is the window's own range, ``max - min`` of the clean signal channel over the whole
  window. For a beat window cut around its R peak this is the QRS peak-to-peak amplitude when
  the QRS holds the window's extremes (the usual case for a clean beat); a tall T wave or a
  baseline drift inside the window makes it larger than nst's 100 ms QRS range.
- ``N`` is measured on the noise segment added to that window: 1-s chunks (the window's whole
  length when it is shorter than one second, e.g. 256 samples at 360 Hz), trimmed as above
  (``floor(5% of the chunks)`` dropped at each end, so none for fewer than 20 chunks); a
  trailing partial chunk is left out of the measurement when there is at least one full chunk.
- The noise segment's mean over the window is removed before scaling: ``N`` does not count it
  either, and nst likewise adds offsets that cancel the level step the noise would cause.

:func:`measure_snr` applies the same definition to a (clean, noisy) pair.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from edgeexit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

KINDS = ("bw", "ma", "em")
NST_FS = 360.0  # sampling rate of the nstdb records (and of MIT-BIH)
TRIM = 0.05  # nst discards the largest and the smallest 5% of the measurements

__all__ = [
    "KINDS",
    "NST_FS",
    "NoiseRecords",
    "add_noise",
    "measure_snr",
    "noise_power",
    "signal_power",
    "synthetic_noise",
]


# --------------------------------------------------------------------------------- the SNR
def signal_power(clean: np.ndarray) -> np.ndarray:
    """nst's ``S = A_pp**2 / 8`` of every window, ``A_pp`` = the window's range (last axis)."""
    clean = np.asarray(clean, dtype=np.float64)
    return np.ptp(clean, axis=-1) ** 2 / 8.0


def noise_power(noise: np.ndarray, fs: float) -> np.ndarray:
    """nst's ``N`` of every noise window (last axis): the square of the 5%/5%-trimmed mean, over
    1-s chunks, of the RMS difference between the noise and the chunk's mean (see the module
    docstring)."""
    noise = np.asarray(noise, dtype=np.float64)
    length = noise.shape[-1]
    chunk = max(int(np.rint(fs)), 1)
    k = length // chunk
    if k < 1:  # shorter than one second: the whole window is the one chunk
        chunk, k = length, 1
    pieces = noise[..., : k * chunk].reshape(*noise.shape[:-1], k, chunk)
    rms = np.sqrt(((pieces - pieces.mean(-1, keepdims=True)) ** 2).mean(-1))  # [..., k]
    drop = math.floor(TRIM * k)
    if drop:
        rms = np.sort(rms, axis=-1)[..., drop : k - drop]
    return rms.mean(-1) ** 2


def measure_snr(clean: np.ndarray, noisy: np.ndarray, *, fs: float = NST_FS,
                signal_channels: int = 1) -> np.ndarray:
    """The SNR in dB, as :func:`add_noise` defines it, of every window and signal channel.

    Args:
        clean: the clean windows ``[N, C, L]``.
        noisy: the same windows with noise added.
        fs: sampling rate in Hz (for the 1-s chunks of the noise measurement).
        signal_channels: leading channels that are signal.

    Returns:
        float64 ``[N, signal_channels]`` (inf where no noise was added).
    """
    clean = np.asarray(clean)
    noisy = np.asarray(noisy)
    if clean.shape != noisy.shape or clean.ndim != 3:
        raise ConfigError(f"clean and noisy must both be [N, C, L], got {clean.shape}, {noisy.shape}")
    s = int(signal_channels)
    sig = clean[:, :s].astype(np.float64)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(signal_power(sig) / noise_power(noisy[:, :s] - sig, fs))


# ------------------------------------------------------------------------ synthetic noise
def _band_limited(rng: np.random.Generator, n: int, fs: float, lo: float, hi: float) -> np.ndarray:
    """Gaussian noise with its spectrum kept only between ``lo`` and ``hi`` Hz (unit RMS)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / fs)
    spec[(f < lo) | (f > hi)] = 0.0
    out = np.fft.irfft(spec, n)
    return out / max(float(out.std()), 1e-12)


def _baseline_wander(rng, n, fs):
    """A few random sinusoids at 0.05-0.5 Hz plus a respiration-like one at 0.2-0.33 Hz."""
    t = np.arange(n) / fs
    out = np.zeros(n)
    for _ in range(3):
        f = rng.uniform(0.05, 0.5)
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    resp = rng.uniform(0.2, 0.33)  # 12-20 breaths per minute
    return out + 0.8 * np.sin(2 * np.pi * resp * t + rng.uniform(0, 2 * np.pi))


def _muscle(rng, n, fs):
    """EMG-like noise: Gaussian, band-limited to 5-100 Hz (below 0.45 fs), in slow bursts of
    muscle activity (amplitude modulated at 0.2-1 Hz)."""
    t = np.arange(n) / fs
    hi = min(100.0, 0.45 * fs)
    env = 1.0 + 0.6 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t + rng.uniform(0, 2 * np.pi))
    return _band_limited(rng, n, fs, 5.0, hi) * env


def _electrode_motion(rng, n, fs):
    """Electrode-motion-like artefact: baseline steps that relax back (exponential recovery,
    0.1-0.5 s), transient biphasic spikes 20-80 ms wide (they can mimic a QRS), on top of some
    baseline wander and muscle noise (nstdb's ``em`` record has both)."""
    dur = n / fs
    out = np.zeros(n)

    def add(t0: float, span: float, shape) -> None:  # an event, computed where it is not ~0
        i0, i1 = max(int(t0 * fs), 0), min(int((t0 + span) * fs) + 1, n)
        if i1 > i0:
            out[i0:i1] += shape(np.arange(i0, i1) / fs - t0)

    for _ in range(max(int(rng.poisson(0.6 * dur)), 1)):  # steps, at least one per segment
        t0, tau, amp = rng.uniform(0, dur), rng.uniform(0.1, 0.5), rng.normal(0, 1.5)
        add(t0, 8 * tau, lambda u, a=amp, tau=tau: a * np.exp(-np.clip(u, 0, None) / tau))
    for _ in range(max(int(rng.poisson(1.0 * dur)), 1)):  # biphasic spikes
        t0, w, amp = rng.uniform(0, dur), rng.uniform(0.02, 0.08) / 2, rng.normal(0, 2.0)
        add(t0 - 5 * w, 10 * w, lambda u, a=amp, w=w, c=5 * w: a * (u - c) / w
            * np.exp(-0.5 * ((u - c) / w) ** 2))
    return out + 0.3 * _baseline_wander(rng, n, fs) + 0.1 * _muscle(rng, n, fs)


_GENERATORS = {"bw": _baseline_wander, "ma": _muscle, "em": _electrode_motion}


def synthetic_noise(kind: str, n_samples: int, fs: float = NST_FS, seed: int = 0) -> np.ndarray:
    """A seeded synthetic noise stream of one kind (float64 ``[n_samples]``, arbitrary scale:
    :func:`add_noise` scales it to the SNR).

    - ``bw``: three random sinusoids at 0.05-0.5 Hz plus a respiration-like one at 0.2-0.33 Hz.
    - ``ma``: Gaussian noise band-limited to 5-100 Hz (surface EMG overlaps the ECG band and
      extends above it, as nstdb's ``ma`` does), amplitude-modulated at 0.2-1 Hz.
    - ``em``: baseline steps with exponential recovery and 20-80 ms biphasic spikes, plus some
      baseline wander and muscle noise.
    """
    _check_kind(kind)
    if n_samples < 1 or not fs > 0:
        raise ConfigError(f"synthetic noise needs n_samples >= 1 and fs > 0, got {n_samples}, {fs}")
    return _GENERATORS[kind](np.random.default_rng(seed), int(n_samples), float(fs))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown noise kind {kind!r}; choose one of {', '.join(KINDS)}")


# --------------------------------------------------------------------- the nstdb records
def _wfdb():
    # Imported lazily: the synthetic noise must work where wfdb is not installed.
    try:
        import wfdb
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataError(
            "reading WFDB noise records needs the 'wfdb' package: pip install wfdb "
            "(part of edgeexit[host]); or use the synthetic noise (records=None)"
        ) from e
    return wfdb


def _resample(x: np.ndarray, fs_from: float, fs_to: float) -> np.ndarray:
    """Band-limited (FFT) resampling of ``x [T, C]`` from ``fs_from`` to ``fs_to`` Hz."""
    n_to = max(int(np.rint(len(x) * fs_to / fs_from)), 1)
    spec = np.fft.rfft(x, axis=0)
    keep = n_to // 2 + 1
    if keep <= spec.shape[0]:
        spec = spec[:keep]
    else:
        spec = np.concatenate([spec, np.zeros((keep - spec.shape[0], x.shape[1]), spec.dtype)])
    return np.fft.irfft(spec, n_to, axis=0) * (n_to / len(x))


class NoiseRecords:
    """The nstdb noise records ``bw``, ``ma`` and ``em`` (WFDB format) in a directory.

    PhysioNet's MIT-BIH Noise Stress Test Database (https://physionet.org/content/nstdb/1.0.0/)
    holds them: 30 min each, 360 Hz, two channels, in mV, recorded on an active subject with the
    electrodes placed so that no ECG is visible. A record is read (``wfdb.rdrecord``) the first
    time it is needed and kept in memory. Segments wrap around the end of a record, as nst
    "rewinds" a noise record.

    Args:
        directory: where ``bw.hea``/``bw.dat`` etc. are.

    Raises:
        DataError: (on first use of a kind) the record is missing or unreadable.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._cache: dict[tuple[str, float], np.ndarray] = {}

    def __repr__(self) -> str:
        return f"NoiseRecords({str(self.directory)!r})"

    def signal(self, kind: str, fs: float = NST_FS) -> np.ndarray:
        """The record's samples ``[T, channels]`` (float64, physical units), at ``fs`` Hz
        (resampled when the record's own rate differs by more than 1%)."""
        _check_kind(kind)
        key = (kind, float(fs))
        if key in self._cache:
            return self._cache[key]
        base = self.directory / kind
        if not base.with_suffix(".hea").is_file():
            raise DataError(
                f"noise record {kind!r} not found: no {base.with_suffix('.hea')} (records bw, ma "
                f"and em of the MIT-BIH Noise Stress Test Database, nstdb, are expected in "
                f"{self.directory}); put them there, or use the synthetic noise (records=None)"
            )
        wfdb = _wfdb()
        try:
            rec = wfdb.rdrecord(str(base))
        except Exception as e:  # wfdb raises many kinds on a damaged or partial record
            raise DataError(
                f"noise record {kind!r} in {self.directory} is unreadable ({type(e).__name__}: "
                f"{e}); replace {kind}.hea and its signal file with intact copies from nstdb"
            ) from e
        sig = rec.p_signal
        if sig is None or sig.ndim != 2 or sig.shape[0] < 2:
            raise DataError(f"noise record {kind!r} in {self.directory} holds no signal samples")
        if not np.isfinite(sig).all():
            raise DataError(
                f"noise record {kind!r} in {self.directory} holds NaN/Inf samples (missing "
                "values); use an intact copy of the record"
            )
        sig = np.asarray(sig, dtype=np.float64)
        if abs(rec.fs - fs) > 0.01 * fs:
            log.info("noise record %s: resampling from %g Hz to %g Hz", kind, rec.fs, fs)
            sig = _resample(sig, float(rec.fs), float(fs))
        self._cache[key] = sig
        return sig

    def segments(self, kind: str, n: int, length: int, *, channels: int = 1,
                 fs: float = NST_FS, rng: np.random.Generator | None = None) -> np.ndarray:
        """``n`` random noise segments ``[n, channels, length]`` of one kind: each starts at a
        random sample; its channel ``c`` comes from record channel ``c`` (modulo the record's
        channels, as nst pairs them), starting at a random one of them."""
        rng = rng if rng is not None else np.random.default_rng(0)
        sig = self.signal(kind, fs)
        total, rec_channels = sig.shape
        starts = rng.integers(0, total, size=n)
        first = rng.integers(0, rec_channels, size=n)
        idx = (starts[:, None] + np.arange(length)[None, :]) % total  # [n, L], wrapping around
        out = np.empty((n, channels, length))
        for c in range(channels):
            out[:, c] = sig[idx, ((first + c) % rec_channels)[:, None]]
        return out


# ---------------------------------------------------------------------------- the entry
def add_noise(x: np.ndarray, kind: str, snr_db: float, *, fs: float, signal_channels: int,
              seed: int = 0, records: NoiseRecords | None = None) -> np.ndarray:
    """``x`` with noise of ``kind`` added to its signal channels at ``snr_db`` (nst's definition,
    per window and channel: see the module docstring).

    Args:
        x: beat windows ``[N, C, L]`` in physical units (mV).
        kind: ``bw`` (baseline wander), ``ma`` (muscle artefact) or ``em`` (electrode motion).
        snr_db: the SNR in dB (e.g. 12, 6, 0, -6 as in nstdb's records).
        fs: sampling rate of ``x`` in Hz (MIT-BIH: 360).
        signal_channels: leading channels that are signal; the RR-context channels after them
            are returned unchanged.
        seed: seeds which noise segment each window gets.
        records: take the noise from the nstdb records in a :class:`NoiseRecords` directory;
            None = the synthetic generators (:func:`synthetic_noise`).

    Returns:
        float32 ``[N, C, L]``. Windows whose signal is flat (range 0) have no SNR and are
        returned without noise.
    """
    x = np.asarray(x)
    _check_kind(kind)
    if x.ndim != 3 or x.shape[0] == 0:
        raise ConfigError(f"add_noise takes beat windows [N, C, L], got shape {x.shape}")
    s = int(signal_channels)
    if not 1 <= s <= x.shape[1]:
        raise ConfigError(f"signal_channels must lie in 1..{x.shape[1]}, got {signal_channels}")
    if not (isinstance(snr_db, (int, float, np.number)) and math.isfinite(snr_db)):
        raise ConfigError(f"snr_db must be a finite number of dB, got {snr_db!r}")
    if not (math.isfinite(fs) and fs > 0):
        raise ConfigError(f"fs must be a sampling rate > 0 in Hz, got {fs}")
    n, _, length = x.shape
    rng = np.random.default_rng(seed)
    if records is None:
        stream = synthetic_noise(kind, n * s * length, fs, seed=int(rng.integers(2**31)))
        noise = stream.reshape(n, s, length)
    else:
        noise = records.segments(kind, n, length, channels=s, fs=fs, rng=rng)
    noise = noise - noise.mean(-1, keepdims=True)
    sig = x[:, :s].astype(np.float64)
    S = signal_power(sig)  # [N, s]
    N = noise_power(noise, fs)
    if np.any(N <= 0):
        raise DataError(
            f"{int((N <= 0).sum())} noise segment(s) of kind {kind!r} are flat (no power): "
            "the noise record holds a constant stretch; use another record"
        )
    gain = np.sqrt(S / (N * 10.0 ** (snr_db / 10.0)))
    flat = S == 0
    if flat.any():
        log.warning("add_noise: %d flat window(s) (range 0) get no noise", int(flat.sum()))
    out = x.astype(np.float32, copy=True)
    out[:, :s] = (sig + gain[..., None] * noise).astype(np.float32)
    log.info("added %s noise at %g dB to %d window(s) (%s)", kind, snr_db, n,
             "synthetic" if records is None else records.directory)
    return out

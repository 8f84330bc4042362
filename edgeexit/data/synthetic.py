"""A seeded synthetic ECG generator for the five AAMI beat classes (the built-in default data).

The generator simulates *records*, not isolated beats: every simulated patient gets a heart rate
with sinus variability, a beat morphology of their own, an ectopic focus or two, and their own noise
levels. A beat sequence with a class per beat is laid out in time, the whole record is rendered as
one continuous signal in mV (a sum of Gaussians per P, Q, R, S and T wave, as in ECGSYN, but in
the time domain), noise is added, and the beat windows are cut with
:func:`edgeexit.runtime.preprocess.beat_windows`, exactly as for MIT-BIH and on the device. The RR
context channels therefore carry the timing of the simulated rhythm (premature beats, pauses).

Class morphology (AAMI EC57 classes):

=====  ==========================================================================================
``N``  sinus beat: P wave ~0.15 s before a narrow QRS (0.07-0.10 s), upright T (sometimes flat or
       inverted in a patient); RR follows the sinus rhythm (respiratory and slow variability).
``S``  supraventricular premature beat: 0.55-0.95 x the sinus RR, abnormal P (inverted, flat, or
       a short PR, often merged with the previous T), narrow QRS like N, a non-compensatory pause.
``V``  ventricular premature beat: early, no P, wide bizarre QRS (0.12-0.20 s), larger amplitude,
       T of opposite polarity, a compensatory pause (pre + post RR ~ 2 sinus RR).
``F``  fusion of a sinus and a ventricular beat: a weighted mix of the patient's N and V complexes,
       P usually present, on time or slightly early.
``Q``  paced beats (and fusions of paced and sinus beats): a sharp pacing spike before a wide QRS,
       in regular paced runs, in a few "paced" records, with more noise.
=====  ==========================================================================================

Noise (all scaled by :attr:`SyntheticECGConfig.noise`): baseline wander (a few sinusoids in
0.05-0.5 Hz plus a respiratory component), band-limited EMG with bursts, powerline interference
(50 or 60 Hz per record), electrode-motion transients, a DC offset, and respiratory amplitude
modulation. Per-beat jitter of every wave makes the classes overlap somewhat, so a small CNN
trained on one seed and tested on another lands in the 90s, not at 100% (see
``tools/synthetic_difficulty.py``).

Example:
    >>> data = generate_synthetic(SyntheticECGConfig(n_beats=600, seed=3))
    >>> data.x.shape  # (600, 8, 256): ECG + 7 RR channels
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np

from edgeexit.config import dataclass_from_dict
from edgeexit.data.dataset import AAMI_CLASSES, BeatDataset
from edgeexit.errors import ConfigError
from edgeexit.runtime.preprocess import (
    MORPH_FEATURES,
    RR_FEATURES,
    beat_windows,
    default_r_offset,
    morph_templates,
)

log = logging.getLogger(__name__)

_N, _S, _V, _F, _Q = range(5)

MIN_FS = 125.0
"""Lowest sampling rate in Hz: the powerline component (up to 60 Hz) must stay below Nyquist."""

MIN_WINDOW_S = 0.15
"""Shortest beat window in seconds: a window must at least hold a wide QRS complex."""

_LEAD_IN = 2  # sinus beats rendered before the first kept beat, so it has real RR context
_LEAD_OUT = 1  # one beat after the last kept beat, so its post-RR is a real interval
_PACED_SHARE = 0.4  # a paced record holds about this share of paced beats: sets how many are paced
_MIN_RR_S = 0.3  # no interval shorter than this (refractory period), in seconds

# Wave slots of one beat (sum of Gaussians). Normal slots carry the sinus complex, V slots the
# ventricular (or paced) complex; fusion beats weight both sets, so morphology mixes naturally.
_P, _QW, _R, _SW, _T1, _T2, _VM, _VN, _VT, _SPIKE = range(10)
_N_SLOTS = 10
_NORMAL_SLOTS = [_QW, _R, _SW, _T1, _T2]  # the sinus QRS-T, without P
_V_SLOTS = [_VM, _VN, _VT]


@dataclasses.dataclass(frozen=True)
class SyntheticECGConfig:
    """What :func:`generate_synthetic` simulates.

    Attributes:
        n_beats: total beats over all records (exact; class totals follow ``class_fractions``).
        n_records: simulated patients; each has its own heart rate, morphology and noise levels.
        fs: sampling rate in Hz (at least 125).
        window: samples per beat window (at least 0.15 s worth).
        seed: seed of the generator; the same seed gives bit-identical data.
        class_fractions: share of N, S, V, F, Q beats (non-negative, normalised to sum 1).
        rr_context: append the :data:`~edgeexit.runtime.preprocess.RR_FEATURES` channels.
        morph_context: append the :data:`~edgeexit.runtime.preprocess.MORPH_FEATURES` channels.
        noise: scale of every noise source (0 = clean signal, 1 = the default mix, 2 = twice).
    """

    n_beats: int = 6000
    n_records: int = 24
    fs: float = 360.0
    window: int = 256
    seed: int = 0
    class_fractions: tuple[float, ...] = (0.5, 0.15, 0.15, 0.1, 0.1)
    rr_context: bool = True
    noise: float = 1.0
    morph_context: bool = False

    def __post_init__(self) -> None:
        # TOML/JSON give lists and ints: accept them, but store the canonical types.
        fractions = self.class_fractions
        if isinstance(fractions, (str, bytes)) or not hasattr(fractions, "__len__"):
            raise ConfigError(
                f"class_fractions must be a list of {len(AAMI_CLASSES)} numbers "
                f"({', '.join(AAMI_CLASSES)}), got {fractions!r}"
            )
        if len(fractions) != len(AAMI_CLASSES):
            raise ConfigError(
                f"class_fractions needs {len(AAMI_CLASSES)} values, one per class "
                f"({', '.join(AAMI_CLASSES)}), got {len(fractions)}: {list(fractions)}"
            )
        try:
            values = tuple(float(f) for f in fractions)
        except (TypeError, ValueError):
            raise ConfigError(f"class_fractions must be numbers, got {list(fractions)}") from None
        if not all(math.isfinite(f) and f >= 0.0 for f in values) or sum(values) <= 0.0:
            raise ConfigError(
                f"class_fractions must be finite, >= 0 and not all zero, got {list(values)}; "
                "e.g. (0.5, 0.15, 0.15, 0.1, 0.1) for N, S, V, F, Q"
            )
        object.__setattr__(self, "class_fractions", values)
        for name in ("n_beats", "n_records", "window", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.n_beats <= 0:
            raise ConfigError(f"n_beats must be a positive number of beats, got {self.n_beats}")
        if self.n_records <= 0:
            raise ConfigError(f"n_records must be at least 1, got {self.n_records}")
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")
        for name in ("fs", "noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not math.isfinite(self.fs) or self.fs < MIN_FS:
            raise ConfigError(
                f"fs must be at least {MIN_FS:g} Hz (powerline noise up to 60 Hz must fit below "
                f"Nyquist), got {self.fs}; MIT-BIH uses 360 Hz"
            )
        min_window = math.ceil(MIN_WINDOW_S * self.fs)
        if self.window < min_window:
            raise ConfigError(
                f"window of {self.window} samples is too small: at {self.fs:g} Hz a window must "
                f"hold at least {MIN_WINDOW_S} s ({min_window} samples) to contain a QRS complex; "
                "256 is the default at 360 Hz"
            )
        if not math.isfinite(self.noise) or self.noise < 0.0:
            raise ConfigError(f"noise must be a finite scale >= 0 (0 = clean), got {self.noise}")
        if not isinstance(self.rr_context, (bool, np.bool_)):
            raise ConfigError(f"rr_context must be true or false, got {self.rr_context!r}")
        object.__setattr__(self, "rr_context", bool(self.rr_context))
        object.__setattr__(self, "morph_context", bool(self.morph_context))

    @property
    def fractions(self) -> np.ndarray:
        """``class_fractions`` normalised to sum to 1, float64 ``[5]``."""
        f = np.asarray(self.class_fractions, dtype=np.float64)
        return f / f.sum()

    def to_dict(self) -> dict:
        """A JSON/TOML-ready dict (``class_fractions`` as a list); :meth:`from_dict` reverses it."""
        d = dataclasses.asdict(self)
        d["class_fractions"] = list(self.class_fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticECGConfig:
        """Build a config from a dict (missing keys keep their defaults).

        Raises:
            ConfigError: on keys that are not fields, or on invalid values.
        """
        # __post_init__ turns a list of fractions into a tuple
        return dataclass_from_dict(cls, d, "synthetic data option(s)")


def generate_synthetic(config: SyntheticECGConfig = SyntheticECGConfig()) -> BeatDataset:
    """Simulate ``config.n_records`` ECG records and cut one window per beat.

    Args:
        config: what to simulate; the default gives 6000 beats of 24 records at 360 Hz.

    Returns:
        A :class:`BeatDataset`: ``x`` float32 ``[n_beats, C, window]`` (ECG in mV, then the RR
        context channels in seconds and ratios when ``config.rr_context``), labels in
        :data:`~edgeexit.data.dataset.AAMI_CLASSES` order, ``groups`` the record ids
        (``"syn000"``, ...), beats in record order and time order within a record.
    """
    started = time.perf_counter()
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    ts: list[np.ndarray] = []  # morphology templates, with morph_context
    rs: list[np.ndarray] = []  # R-peak times (s)
    for r, labels, signal, peaks in _records(config):
        x, kept = beat_windows(
            signal, peaks, config.fs, config.window, rr_context=config.rr_context,
            morph_context=config.morph_context,
        )
        if kept.size != peaks.size:  # the margins are sized from the window: cannot happen
            raise RuntimeError(f"record {r}: {peaks.size - kept.size} beats fell off its edges")
        xs.append(x[_LEAD_IN : _LEAD_IN + labels.size])  # drop the lead-in and lead-out beats
        if config.morph_context:  # what each beat's morphology channels were computed against
            ts.append(morph_templates(x[:, 0], default_r_offset(config.window), config.fs)
                      [_LEAD_IN : _LEAD_IN + labels.size])
        ys.append(labels.astype(np.int64))
        rs.append(peaks[_LEAD_IN : _LEAD_IN + labels.size] / config.fs)
        groups.append(np.full(labels.size, f"syn{r:03d}"))
    channels = (("ecg",) + (RR_FEATURES if config.rr_context else ())
                + (MORPH_FEATURES if config.morph_context else ()))
    data = BeatDataset(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        classes=AAMI_CLASSES,
        fs=config.fs,
        channels=channels,
        groups=np.concatenate(groups),
        signal_channels=1,
        units="mV",
        source=f"synthetic(seed={config.seed}, n_beats={config.n_beats})",
        templates=np.concatenate(ts) if config.morph_context else None,
        times=np.concatenate(rs).astype(np.float64),
    )
    log.info(
        "generated %d synthetic beats from %d records in %.2f s: %s",
        len(data),
        len(xs),
        time.perf_counter() - started,
        data.class_counts(),
    )
    return data


def _records(config: SyntheticECGConfig):
    """``(index, labels, signal, peaks)`` of every simulated record with beats: ``labels`` the
    classes of the kept beats, ``signal`` the continuous record (mV) and ``peaks`` the R peak of
    every beat, the :data:`_LEAD_IN` sinus beats before them and :data:`_LEAD_OUT` after included."""
    root = np.random.default_rng(config.seed)
    # One child generator for the allocation and one per record: a record's signal depends only
    # on the seed, its index and its beat counts, never on the order anything else was drawn in.
    alloc_rng, *record_rngs = root.spawn(config.n_records + 1)
    counts, paced = _allocate(alloc_rng, config)
    # Paced QRS polarity alternates over the (few) paced records, so that every data set holds
    # both kinds and a model must learn the pacing spike, not one patient's paced complex.
    polarity = np.where(np.cumsum(paced) % 2 == 1, -1.0, 1.0) * alloc_rng.choice([-1.0, 1.0])
    for r in range(config.n_records):
        if counts[r].sum() == 0:
            continue
        rng = record_rngs[r]
        labels = _beat_sequence(rng, counts[r])
        patient = _Patient.draw(rng, paced=bool(paced[r]), pace_polarity=float(polarity[r]))
        signal, peaks = _render_record(rng, patient, labels, config)
        yield r, labels, signal, peaks


def synthetic_records(config: SyntheticECGConfig = SyntheticECGConfig()) -> list[dict]:
    """The continuous records that :func:`generate_synthetic` cuts its windows from (streaming,
    stream-level evaluation): one dict per record, ``name`` (``"syn000"``, ...), ``signal``
    (float64 mV ``[T]``), ``fs``, ``r_peaks`` (int64, every beat) and ``labels`` (their AAMI class
    indices; the lead-in and lead-out beats are sinus, ``N``). The same seed gives the same
    signals as :func:`generate_synthetic`'s records."""
    out = []
    for r, labels, signal, peaks in _records(config):
        cls = np.concatenate([np.full(_LEAD_IN, _N), labels, np.full(_LEAD_OUT, _N)])
        out.append({"name": f"syn{r:03d}", "signal": signal, "fs": float(config.fs),
                    "r_peaks": peaks.astype(np.int64), "labels": cls.astype(np.int64)})
    return out


# ------------------------------------------------------------------------------ beat allocation


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum exactly to ``total``."""
    if total == 0 or weights.sum() <= 0:
        return np.zeros(weights.size, dtype=np.int64)
    share = total * weights / weights.sum()
    out = np.floor(share).astype(np.int64)
    rest = total - int(out.sum())
    if rest > 0:
        out[np.argsort(-(share - out), kind="stable")[:rest]] += 1
    return out


def _allocate(
    rng: np.random.Generator, config: SyntheticECGConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Beats per record and class ``[n_records, 5]`` (exact class totals) and the paced records."""
    totals = _largest_remainder(config.n_beats, config.fractions)
    n_rec = config.n_records
    counts = np.zeros((n_rec, len(AAMI_CLASSES)), dtype=np.int64)
    # Sinus beats are spread evenly; the ectopic burden varies between patients (several times the
    # average in some), but not so much that a record is mostly ectopic: the RR ratios compare a
    # beat with the median of the local rhythm, which a record of mostly ectopic beats would shift.
    shape = {_N: 6.0, _S: 2.5, _V: 2.5, _F: 2.5}
    for c, k in shape.items():
        counts[:, c] = _largest_remainder(int(totals[c]), rng.gamma(k, 1.0, n_rec))
    # Paced (Q) beats live in a few paced records, enough of them that each is ~40% paced.
    paced = np.zeros(n_rec, dtype=bool)
    if totals[_Q] > 0:
        q_share = config.fractions[_Q]
        n_paced = int(np.clip(round(n_rec * q_share / _PACED_SHARE), 1, n_rec))
        paced[rng.choice(n_rec, n_paced, replace=False)] = True
        weights = np.where(paced, rng.gamma(4.0, 1.0, n_rec), 0.0)
        counts[:, _Q] = _largest_remainder(int(totals[_Q]), weights)
    return counts, paced


def _beat_sequence(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """The labels of one record in time order: ectopic beats scattered, paced beats in runs."""
    others = np.concatenate([np.full(int(counts[c]), c) for c in (_N, _S, _V, _F)])
    others = rng.permutation(others).astype(np.int64)
    n_q = int(counts[_Q])
    if n_q == 0:
        return others
    n_runs = int(min(n_q, 1 + rng.integers(0, 1 + n_q // 40)))
    # split the paced beats into runs and place the runs at random points of the intrinsic rhythm
    cuts = np.sort(rng.choice(np.arange(1, n_q), n_runs - 1, replace=False)) if n_runs > 1 else []
    runs = np.split(np.full(n_q, _Q, dtype=np.int64), cuts)
    where = np.sort(rng.integers(0, others.size + 1, n_runs))
    parts = []
    prev = 0
    for at, run in zip(where, runs):
        parts += [others[prev:at], run]
        prev = at
    parts.append(others[prev:])
    return np.concatenate(parts)


# ------------------------------------------------------------------------------------ patients


@dataclasses.dataclass
class _Patient:
    """Everything that is fixed within one simulated record (times in s, amplitudes in mV)."""

    base_rr: float  # mean sinus RR interval
    rsa: float  # respiratory sinus arrhythmia, relative RR modulation
    lf: float  # slow (Mayer wave / drift) relative RR modulation
    f_lf: float
    hrv_jitter: float  # beat-to-beat relative RR jitter
    f_resp: float  # respiration frequency (Hz)
    resp_phase: float
    amp_mod: float  # respiratory amplitude modulation (relative)
    scale: float  # overall amplitude scale
    jitter: float  # per-beat morphology jitter scale
    normal: np.ndarray  # [10, 3] (amplitude, centre, sigma) of the sinus beat's wave slots
    v_foci: list[np.ndarray]  # each [10, 3]: the V complex of one ectopic focus
    s_p_kind: int  # dominant abnormal P of S beats: 0 inverted, 1 flat, 2 short PR
    s_prem: float  # mean prematurity (pre-RR / sinus RR) of S beats
    v_prem: float  # same for V beats
    paced: bool
    pace_rr: float  # paced rhythm interval
    pace: np.ndarray  # [10, 3]: spike + paced complex
    bw_amp: float  # baseline wander amplitude
    emg_std: float  # muscle noise standard deviation
    pl_amp: float  # powerline amplitude
    pl_freq: float
    motion_per_min: float  # electrode-motion transients per minute
    dc: float

    @classmethod
    def draw(cls, rng: np.random.Generator, paced: bool, pace_polarity: float = -1.0) -> _Patient:
        u = rng.uniform
        hr = u(50.0, 85.0) if paced else u(50.0, 110.0)  # paced: bradycardia, usually
        normal = np.zeros((_N_SLOTS, 3))
        normal[:, 2] = 0.01  # unused slots keep a harmless width
        normal[_P] = (u(0.05, 0.22), -u(0.13, 0.19), u(0.016, 0.028))
        normal[_QW] = (-u(0.0, 0.15), -u(0.022, 0.032), u(0.007, 0.011))
        normal[_R] = (u(0.8, 1.4), 0.0, u(0.0075, 0.0125))
        normal[_SW] = (-u(0.05, 0.4), u(0.022, 0.034), u(0.007, 0.012))
        t_amp = u(0.12, 0.4) * (-1.0 if rng.random() < 0.08 else 1.0)  # some patients: inverted T
        t_mu = u(0.21, 0.30)
        normal[_T1] = (t_amp, t_mu, u(0.04, 0.06))
        normal[_T2] = (t_amp * u(0.2, 0.5), t_mu + u(0.04, 0.07), u(0.025, 0.04))
        v_foci = [cls._ventricular(rng, t_mu) for _ in range(1 + int(rng.random() < 0.3))]
        pace = cls._ventricular(rng, t_mu, polarity=pace_polarity)
        # the spike comes a few ms before the paced QRS starts (~2 sigma before its peak)
        pace[_SPIKE] = (
            u(0.6, 3.0),
            -(2.2 * pace[_VM, 2] + u(0.005, 0.02)),
            u(0.0015, 0.003),
        )
        noise_boost = u(1.2, 2.0) if paced else 1.0  # paced records: "sometimes lower quality"
        return cls(
            base_rr=60.0 / hr,
            rsa=u(0.01, 0.07),
            lf=u(0.0, 0.05),
            f_lf=u(0.01, 0.1),
            hrv_jitter=u(0.005, 0.025),
            f_resp=u(0.15, 0.4),
            resp_phase=u(0.0, 2 * np.pi),
            amp_mod=u(0.02, 0.12),
            scale=float(np.exp(u(np.log(0.6), np.log(1.7)))),
            jitter=u(0.6, 1.4),
            normal=normal,
            v_foci=v_foci,
            s_p_kind=int(rng.integers(0, 3)),
            s_prem=u(0.6, 0.8),
            v_prem=u(0.58, 0.82),
            paced=paced,
            # a demand pacemaker captures when the sinus rate drops below its rate: pacing runs
            # are a little faster than the patient's own rhythm, at 55-90 bpm
            pace_rr=float(np.clip(60.0 / hr * u(0.88, 0.98), 60.0 / 90.0, 60.0 / 55.0)),
            pace=pace,
            bw_amp=u(0.05, 0.3),
            emg_std=u(0.005, 0.04) * noise_boost,
            pl_amp=u(0.003, 0.03),
            pl_freq=50.0 if rng.random() < 0.5 else 60.0,
            motion_per_min=u(0.0, 1.0) * noise_boost,
            dc=u(-0.2, 0.2),
        )

    @staticmethod
    def _ventricular(
        rng: np.random.Generator, t_mu: float, polarity: float | None = None
    ) -> np.ndarray:
        """A wide, bizarre QRS with discordant T (slots V*), as from one ectopic focus."""
        u = rng.uniform
        pol = polarity if polarity is not None else (1.0 if rng.random() < 0.55 else -1.0)
        w = np.zeros((_N_SLOTS, 3))
        w[:, 2] = 0.01
        main = pol * u(1.0, 2.0)
        w[_VM] = (main, 0.0, u(0.022, 0.04))  # ~0.12-0.20 s wide
        w[_VN] = (-main * u(0.15, 0.6), u(0.035, 0.065) * rng.choice([-1.0, 1.0]), u(0.014, 0.03))
        w[_VT] = (-main * u(0.2, 0.45), t_mu + u(0.03, 0.1), u(0.06, 0.09))
        return w


# ------------------------------------------------------------------------------------ rendering


def _timing(
    rng: np.random.Generator, p: _Patient, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """R-peak times (s) and classes of the lead-in beats, ``labels`` and the lead-out beats."""
    seq = np.concatenate([np.full(_LEAD_IN, _N), labels, np.full(_LEAD_OUT, _N)])
    two_pi = 2.0 * np.pi
    lf_phase = rng.uniform(0.0, two_pi)
    jit = rng.normal(0.0, 1.0, seq.size)
    prem = rng.normal(0.0, 1.0, seq.size)
    pause = rng.uniform(1.0, 1.15, seq.size)
    times = np.empty(seq.size)
    t = 0.0  # _render_record shifts the times to leave room for the first window
    prev_cls, prev_int = _N, p.base_rr
    for i, c in enumerate(seq):
        # the sinus rhythm: respiratory (RSA) and slow modulation plus beat-to-beat jitter
        rr = p.base_rr * (
            1.0
            + p.rsa * math.sin(two_pi * p.f_resp * t + p.resp_phase)
            + p.lf * math.sin(two_pi * p.f_lf * t + lf_phase)
        ) * (1.0 + p.hrv_jitter * jit[i])
        if c == _S:
            interval = rr * float(np.clip(p.s_prem + 0.05 * prem[i], 0.55, 0.95))
        elif c == _V:
            interval = rr * float(np.clip(p.v_prem + 0.05 * prem[i], 0.5, 0.9))
        elif c == _Q:
            interval = p.pace_rr * (1.0 + 0.004 * jit[i])  # a pacemaker is regular
        else:  # sinus-timed: N, and F (a sinus beat fused with a late ventricular one)
            if prev_cls == _V:  # compensatory pause: the sinus node was not reset
                interval = max(2.0 * rr - prev_int, rr) * (1.0 + 0.01 * jit[i])
            elif prev_cls == _S:  # non-compensatory: the sinus node was reset, a short pause
                interval = rr * pause[i]
            else:
                interval = rr
            if c == _F:
                interval *= float(np.clip(0.96 + 0.03 * prem[i], 0.88, 1.02))
        interval = max(interval, _MIN_RR_S)
        t += interval
        times[i] = t
        prev_cls, prev_int = c, interval
    return times, seq


def _beat_waves(
    rng: np.random.Generator, p: _Patient, seq: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amplitude (mV), centre (s, relative to R) and width (s) of every wave slot of every beat.

    Each class's complexes are drawn in turn (the order of the draws from ``rng`` is part of
    the data a seed gives), then every beat's T waves follow the rate and every wave jitters."""
    b = seq.size
    amp = np.zeros((b, _N_SLOTS))
    mu = np.zeros((b, _N_SLOTS))
    sig = np.full((b, _N_SLOTS), 0.01)
    waves = (amp, mu, sig)

    is_n, is_s, is_v, is_f, is_q = (seq == c for c in range(5))
    sinus = is_n | is_s | is_f  # these start from the patient's sinus complex
    amp[sinus] = p.normal[:, 0]
    mu[sinus] = p.normal[:, 1]
    sig[sinus] = p.normal[:, 2]
    _supraventricular_waves(rng, p, waves, is_s)
    # V: the complex of one of the patient's foci, no P, no sinus QRS-T
    focus = rng.integers(0, len(p.v_foci), b)
    for k, template in enumerate(p.v_foci):
        sel = is_v & (focus == k)
        amp[sel] = template[:, 0]
        mu[sel] = template[:, 1]
        sig[sel] = template[:, 2]
    _fusion_waves(rng, p, waves, is_f, focus)
    _paced_waves(rng, p, waves, is_q)
    _rate_and_jitter(rng, p, waves, times)
    return amp, mu, sig


def _supraventricular_waves(rng: np.random.Generator, p: _Patient, waves, is_s: np.ndarray) -> None:
    """S: abnormal P (mostly the patient's ectopic-atrial kind), QRS like N but sometimes
    aberrant (in place on the sinus complexes of ``waves``)."""
    amp, mu, sig = waves
    u, normal = rng.uniform, p.normal
    n_s = int(is_s.sum())
    kind = np.where(rng.random(n_s) < 0.75, p.s_p_kind, rng.integers(0, 3, n_s))
    p_amp = normal[_P, 0] * np.select(
        [kind == 0, kind == 1], [-u(0.15, 0.7, n_s), u(0.1, 0.5, n_s)], u(0.6, 1.1, n_s)
    )
    amp[is_s, _P] = p_amp
    mu[is_s, _P] = normal[_P, 1] + np.where(kind == 1, 0.0, u(0.0, 0.045, n_s))  # shorter PR
    aberrant = np.where(rng.random(n_s) < 0.06, u(1.4, 1.9, n_s), u(1.0, 1.2, n_s))
    sig[is_s, _R] *= aberrant
    amp[is_s, _R] *= u(0.85, 1.15, n_s)


def _fusion_waves(rng: np.random.Generator, p: _Patient, waves, is_f: np.ndarray,
                  focus: np.ndarray) -> None:
    """F: alpha * sinus complex + (1 - alpha) * ventricular complex, the V part slightly early."""
    amp, mu, sig = waves
    u = rng.uniform
    n_f = int(is_f.sum())
    alpha = u(0.35, 0.7, n_f)
    v_part = np.stack([p.v_foci[k] for k in focus[is_f]]) if n_f else np.zeros((0, _N_SLOTS, 3))
    keep_p = np.where(rng.random(n_f) < 0.85, 1.0, u(0.0, 0.5, n_f))
    f_amp = amp[is_f]
    f_amp[:, _NORMAL_SLOTS] *= alpha[:, None]
    f_amp[:, _P] *= keep_p
    f_amp[:, _V_SLOTS] = v_part[:, _V_SLOTS, 0] * (1.0 - alpha[:, None])
    f_mu = mu[is_f]
    f_mu[:, _V_SLOTS] = v_part[:, _V_SLOTS, 1] - u(0.0, 0.03, n_f)[:, None]
    f_sig = sig[is_f]
    f_sig[:, _V_SLOTS] = v_part[:, _V_SLOTS, 2]
    amp[is_f], mu[is_f], sig[is_f] = f_amp, f_mu, f_sig


def _paced_waves(rng: np.random.Generator, p: _Patient, waves, is_q: np.ndarray) -> None:
    """Q: pacing spike + paced complex; ~15% are fusions of paced and sinus beats."""
    amp, mu, sig = waves
    u, normal = rng.uniform, p.normal
    n_q = int(is_q.sum())
    amp[is_q] = p.pace[:, 0]
    mu[is_q] = p.pace[:, 1]
    sig[is_q] = p.pace[:, 2]
    fuse = rng.random(n_q) < 0.15
    beta = np.where(fuse, u(0.3, 0.7, n_q), 0.0)
    q_amp = amp[is_q]
    q_mu = mu[is_q]
    q_sig = sig[is_q]
    q_amp[:, _V_SLOTS] *= (1.0 - beta)[:, None]
    q_amp[:, _NORMAL_SLOTS] = normal[_NORMAL_SLOTS, 0] * beta[:, None]
    q_mu[:, _NORMAL_SLOTS] = normal[_NORMAL_SLOTS, 1]
    q_sig[:, _NORMAL_SLOTS] = normal[_NORMAL_SLOTS, 2]
    q_amp[:, _SPIKE] *= u(0.7, 1.3, n_q)  # spike height varies beat to beat (sampling, filters)
    amp[is_q], mu[is_q], sig[is_q] = q_amp, q_mu, q_sig


def _rate_and_jitter(rng: np.random.Generator, p: _Patient, waves, times: np.ndarray) -> None:
    """QT follows the rate, every wave jitters, respiration and the patient's scale modulate
    the amplitudes (in place on ``waves``)."""
    amp, mu, sig = waves
    # QT adapts to the rate: T waves move with sqrt(preceding RR / mean RR)
    pre = np.diff(times, prepend=times[0] - p.base_rr)
    qt = np.clip(np.sqrt(pre / p.base_rr), 0.8, 1.2)
    for slot in (_T1, _T2, _VT):
        mu[:, slot] *= qt

    # per-beat jitter of every wave, so beats of a class vary and classes overlap a little
    j = p.jitter
    amp *= 1.0 + 0.08 * j * rng.normal(0.0, 1.0, amp.shape)
    mu += np.where(np.arange(_N_SLOTS) == _R, 0.0, 0.004 * j * rng.normal(0.0, 1.0, mu.shape))
    sig *= np.clip(1.0 + 0.08 * j * rng.normal(0.0, 1.0, sig.shape), 0.6, 1.6)

    # respiration modulates the amplitude (chest impedance, heart axis), then the patient's scale
    resp = 1.0 + p.amp_mod * np.sin(2.0 * np.pi * p.f_resp * times + p.resp_phase + 0.7)
    amp *= (p.scale * resp)[:, None]


def _render_waves(
    n_samples: int, fs: float, centre: np.ndarray, amp: np.ndarray, sig: np.ndarray
) -> np.ndarray:
    """Sum of Gaussians ``amp * exp(-0.5 ((t - centre) / sig)^2)`` on ``n_samples`` samples."""
    out = np.zeros(n_samples)
    narrow = sig < 0.015
    for group in (narrow, ~narrow):  # two support lengths: spikes and QRS vs. P and T
        if not group.any():
            continue
        c, a, s = centre[group], amp[group], sig[group]
        half = int(math.ceil(5.0 * s.max() * fs))
        idx = np.round(c * fs).astype(np.int64)[:, None] + np.arange(-half, half + 1)[None, :]
        vals = a[:, None] * np.exp(-0.5 * ((idx / fs - c[:, None]) / s[:, None]) ** 2)
        ok = (idx >= 0) & (idx < n_samples)
        out += np.bincount(idx[ok], weights=vals[ok], minlength=n_samples)
    return out


def _noise(rng: np.random.Generator, p: _Patient, n: int, fs: float, scale: float) -> np.ndarray:
    """Baseline wander + EMG + powerline + electrode motion + DC offset, in mV."""
    t = np.arange(n) / fs
    two_pi = 2.0 * np.pi
    u = rng.uniform
    # baseline wander: a few slow sinusoids plus the respiratory one
    k = 4
    freqs = np.concatenate([u(0.05, 0.5, k - 1), [p.f_resp]])
    weights = u(0.3, 1.0, k)
    wander = sum(
        w * np.sin(two_pi * f * t + u(0.0, two_pi)) for w, f in zip(weights, freqs)
    ) * (p.bw_amp / weights.sum())
    # EMG: white noise band-limited to ~20-150 Hz, with bursts (a slow random envelope)
    # (filtered in the frequency domain on a power-of-two length: odd lengths make the FFT slow)
    n_fft = 1 << (n - 1).bit_length()
    f = np.fft.rfftfreq(n_fft, 1.0 / fs)
    band = 1.0 / (1.0 + (20.0 / np.maximum(f, 1e-3)) ** 4) / (1.0 + (f / 150.0) ** 4)
    emg = np.fft.irfft(np.fft.rfft(rng.normal(0.0, 1.0, n_fft)) * band, n_fft)[:n]
    emg /= emg.std() + 1e-12
    env_spec = np.fft.rfft(rng.normal(0.0, 1.0, n_fft)) * np.exp(-0.5 * (f / 0.1) ** 2)
    env = np.fft.irfft(env_spec, n_fft)[:n]
    env = np.exp(0.8 * env / (env.std() + 1e-12))
    emg *= env / env.mean() * p.emg_std
    # powerline: 50 or 60 Hz, slightly varying amplitude
    powerline = p.pl_amp * (1.0 + 0.2 * np.sin(two_pi * 0.05 * t)) * np.sin(
        two_pi * p.pl_freq * t + u(0.0, two_pi)
    )
    # electrode motion: a few transients (fast rise, slow decay) per minute
    motion = np.zeros(n)
    for _ in range(int(rng.poisson(p.motion_per_min * n / fs / 60.0))):
        t0, a = u(0.0, t[-1]), u(0.1, 0.6) * rng.choice([-1.0, 1.0])
        tau1, tau2 = u(0.3, 1.5), u(0.03, 0.1)
        dt = np.clip(t - t0, 0.0, None)
        motion += np.where(t > t0, a * (np.exp(-dt / tau1) - np.exp(-dt / tau2)), 0.0)
    return scale * (wander + emg + powerline + motion + p.dc)


def _render_record(
    rng: np.random.Generator, p: _Patient, labels: np.ndarray, config: SyntheticECGConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The continuous signal of one record (mV, ``[T]``) and the R-peak samples of every beat."""
    fs = config.fs
    times, seq = _timing(rng, p, labels)
    # margins so that every beat, lead-in included, gets a full window
    off = default_r_offset(config.window)
    before = off / fs + 0.5
    after = (config.window - off) / fs + 0.5
    times = times - times[0] + before
    amp, mu, sig = _beat_waves(rng, p, seq, times)
    n_samples = int(math.ceil((times[-1] + after) * fs))
    centre = (times[:, None] + mu).ravel()
    live = np.abs(amp.ravel()) > 1e-6
    ecg = _render_waves(n_samples, fs, centre[live], amp.ravel()[live], sig.ravel()[live])
    signal = ecg + _noise(rng, p, n_samples, fs, config.noise)
    peaks = np.round(times * fs).astype(np.int64)
    return signal, peaks

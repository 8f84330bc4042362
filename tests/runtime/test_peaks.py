"""Tests of the device-side R-peak detector (Pan & Tompkins 1985) and its windows.

Synthetic tests run everywhere. Tests marked ``mitdb`` read the first five minutes of a few real
records from ``../shared/data/mitdb`` and skip without it (or without ``wfdb``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import MITDB, REPO

from edgeexit.data.mitbih import AAMI_MAP
from edgeexit.runtime.peaks import (
    MIN_SECONDS,
    MINOR_AMPLITUDE,
    Levels,
    _Thresholds,
    detect_r_peaks,
    detect_r_peaks_with_levels,
    windows_from_signal,
)
from edgeexit.runtime.preprocess import RR_FEATURES, default_r_offset, rr_features

# needs no torch or onnx: tools/aarch64_check.py runs it on the device install
pytestmark = pytest.mark.device_install


def _bump(width: float, amplitude: float, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian of ``width`` seconds (sd) and ``amplitude`` mV: (sample offsets, values)."""
    half = int(np.ceil(5 * width * fs))
    k = np.arange(-half, half + 1)
    return k, amplitude * np.exp(-0.5 * (k / (width * fs)) ** 2)


def synthetic_ecg(
    fs: float = 360.0, seconds: float = 40.0, seed: int = 0, noise_mv: float = 0.03
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A train of QRS-like spikes with T waves, baseline wander and noise.

    Every 6th beat is a wide, negative-going (ventricular-like) one. Returns ``(signal_mv,
    r_peaks, inverted)``.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * fs)
    rr = rng.uniform(0.65, 1.05, size=int(seconds / 0.6))  # 57-92 bpm, irregular
    peaks = np.round((0.6 + np.cumsum(rr) - rr[0]) * fs).astype(np.int64)
    peaks = peaks[peaks < n - int(0.6 * fs)]
    inverted = (np.arange(peaks.size) % 6) == 5
    t = np.arange(n) / fs
    x = 0.4 * np.sin(2 * np.pi * 0.3 * t) + 0.2 * np.sin(2 * np.pi * 0.07 * t + 1.0)  # wander
    x += rng.normal(0.0, noise_mv, n)
    qrs, wide, twave = _bump(0.010, 1.2, fs), _bump(0.030, -1.6, fs), _bump(0.045, 0.3, fs)
    for p, inv in zip(peaks, inverted):
        k, v = wide if inv else qrs
        x[p + k] += v
        kt, vt = twave
        x[p + int(0.28 * fs) + kt] += vt  # T wave ~280 ms after R
    return x, peaks, inverted


def _match(det: np.ndarray, ref: np.ndarray, tol: int) -> tuple[int, int, int, np.ndarray]:
    """Match detections to reference beats within ``tol`` samples, each at most once.

    Returns ``(true positives, false negatives, false positives, offsets of the matches)``.
    """
    j = np.searchsorted(ref, det)
    pairs = []
    for k in (j - 1, j):  # each detection's nearest reference beat on either side
        ok = (k >= 0) & (k < ref.size)
        d = np.abs(det[ok] - ref[k[ok]])
        pairs += [(int(dd), int(a), int(b)) for dd, a, b in zip(d, np.flatnonzero(ok), k[ok])]
    used_det, used_ref, offsets = set(), set(), []
    for d, a, b in sorted(pairs):  # closest pairs first
        if d <= tol and a not in used_det and b not in used_ref:
            used_det.add(a)
            used_ref.add(b)
            offsets.append(det[a] - ref[b])
    tp = len(used_ref)
    return tp, ref.size - tp, det.size - tp, np.asarray(offsets)


@pytest.mark.parametrize("fs, seed", [(360.0, 0), (360.0, 1), (250.0, 2), (128.0, 3)])
def test_synthetic_train_found_exactly(fs, seed):
    x, peaks, inverted = synthetic_ecg(fs=fs, seed=seed)
    det = detect_r_peaks(x, fs)
    assert det.dtype == np.int64 and np.all(np.diff(det) > 0)
    tp, fn, fp, off = _match(det, peaks, tol=int(0.05 * fs))
    assert (fn, fp) == (0, 0), f"missed {fn}, extra {fp}"
    assert np.max(np.abs(off)) <= 2  # samples: the refined peak is the spike's apex
    assert inverted.sum() >= 5  # the wide negative beats were among those found


def test_inverted_beats_refined_to_their_trough():
    fs = 360.0
    x, peaks, inverted = synthetic_ecg(fs=fs, seed=4)
    det = detect_r_peaks(x, fs)
    found = det[np.abs(det[:, None] - peaks[inverted][None, :]).argmin(axis=0)]
    np.testing.assert_allclose(found, peaks[inverted], atol=3)
    assert np.all(x[found] < np.median(x) - 0.5)  # negative-going apex, not a positive lobe


def test_recovers_from_artefact_in_learning_phase_and_from_gain_drop():
    fs = 360.0
    x, peaks, _ = synthetic_ecg(fs=fs, seed=5, seconds=60.0)
    y = x.copy()
    y[int(0.9 * fs) : int(0.95 * fs)] += 25.0  # electrode pop inside the first seconds
    det = detect_r_peaks(y, fs)
    tp, fn, fp, _ = _match(det, peaks, tol=int(0.05 * fs))
    assert fp <= 1 and fn <= 2  # the pop itself, and the beat on either side that it swamps
    tp, fn, fp, _ = _match(det[det > 2 * fs - 20], peaks[peaks > 2 * fs], tol=int(0.05 * fs))
    assert fn == 0 and fp == 0  # the thresholds did not stay at the pop's level
    z = x.copy()
    z[int(20 * fs) :] *= 0.1  # the amplitude drops tenfold (electrode contact)
    det = detect_r_peaks(z, fs)
    late = peaks[peaks > 30 * fs]
    tp, fn, fp, _ = _match(det[det > 30 * fs - 20], late, tol=int(0.05 * fs))
    assert fn == 0 and fp == 0  # detection has resumed well within 10 s


def test_levels_default_equals_batch_and_carried_levels_are_used():
    x, _, _ = synthetic_ecg(360.0, seconds=60.0, seed=3)
    ref = detect_r_peaks(x, 360.0)
    peaks, lv = detect_r_peaks_with_levels(x, 360.0)
    assert np.array_equal(peaks, ref)
    assert isinstance(lv, Levels) and lv.signal > lv.noise > 0 and 0 < len(lv.rr) <= 8
    # levels reported mid-signal, then used to start on the rest: the same beats there
    at = 30 * 360
    _, mid = detect_r_peaks_with_levels(x, 360.0, levels_at=at)
    rest, _ = detect_r_peaks_with_levels(x[at:], 360.0, levels=mid)
    after = ref[ref >= at]
    assert np.intersect1d(rest + at, after).size >= after.size - 1 and rest.size <= after.size + 1
    # absurd carried levels change the result: they are really used
    none, _ = detect_r_peaks_with_levels(x, 360.0, levels=Levels(1e3, 1e3, ()))
    assert none.size < ref.size


def test_flat_signal_has_no_peaks():
    det = detect_r_peaks(np.zeros(3000), 360.0)
    assert det.dtype == np.int64 and det.size == 0


def test_a_thirty_minute_record():
    fs = 360.0
    x, peaks, _ = synthetic_ecg(fs=fs, seconds=1800.0, seed=6)  # 648 000 samples, ~0.2 s
    det = detect_r_peaks(x, fs)
    assert abs(det.size - peaks.size) <= 2


@pytest.mark.parametrize(
    "signal, fs, match",
    [
        (np.zeros((2, 3600)), 360.0, "1-D"),
        (np.r_[np.zeros(1000), np.nan, np.zeros(2000)], 360.0, "non-finite"),
        (np.r_[np.zeros(1000), np.inf, np.zeros(2000)], 360.0, "non-finite"),
        (np.zeros(3600), 0.0, "positive"),
        (np.zeros(3600), -360.0, "positive"),
        (np.zeros(3600), float("nan"), "positive"),
        (np.zeros(3600), 20.0, "too low"),
        (np.zeros(int(MIN_SECONDS * 360) - 1), 360.0, "too short"),
        (np.array(["a"] * 3600), 360.0, "real numbers"),
    ],
)
def test_invalid_inputs_raise_value_error(signal, fs, match):
    with pytest.raises(ValueError, match=match):
        detect_r_peaks(signal, fs)


def test_invalid_refractory_raises():
    with pytest.raises(ValueError, match="refractory"):
        detect_r_peaks(np.zeros(3600), 360.0, refractory_s=0.0)


@pytest.mark.parametrize("window, r_offset", [(256, None), (128, 40)])
def test_windows_from_signal_shapes_and_rr_context(window, r_offset):
    fs = 360.0
    x, _, _ = synthetic_ecg(fs=fs, seed=7, seconds=30.0)
    windows, r_kept = windows_from_signal(x, fs, window=window, r_offset=r_offset)
    det = detect_r_peaks(x, fs)
    off = default_r_offset(window) if r_offset is None else r_offset
    assert windows.dtype == np.float32 and r_kept.dtype == np.int64
    assert windows.shape == (r_kept.size, 1 + len(RR_FEATURES), window)
    assert r_kept.size >= det.size - 2  # only beats at the very edges are dropped
    np.testing.assert_allclose(windows[:, 0, off], x[r_kept].astype(np.float32))
    # the RR channels are rr_features of *all* detected peaks, taken at the kept beats
    kept = np.searchsorted(det, r_kept)
    np.testing.assert_array_equal(det[kept], r_kept)
    np.testing.assert_allclose(windows[:, 1:, 0], rr_features(det, fs)[kept], rtol=1e-6)
    assert np.all(windows[:, 1:, :] == windows[:, 1:, :1])


def test_windows_from_signal_without_context_and_without_beats():
    fs = 360.0
    x, _, _ = synthetic_ecg(fs=fs, seed=8, seconds=10.0)
    windows, r_kept = windows_from_signal(x, fs, window=64, rr_context=False)
    assert windows.shape == (r_kept.size, 1, 64)
    with pytest.raises(ValueError, match="at least 2"):
        windows_from_signal(np.zeros(3600), fs)


def test_module_imports_without_torch_or_scipy():
    code = (
        "import sys, edgeexit.runtime.peaks\n"
        "heavy = [m for m in ('torch', 'scipy', 'onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)



def test_incremental_detector_buffers_and_window_maxima():
    from edgeexit.runtime.peaks import _Tail, _window_max

    # the stream's buffer: samples written in steps, older ones forgotten, room made by moving
    # what is held to the front or (a step larger than planned for) by growing
    tail, x = _Tail(16), np.arange(200.0)
    bases = set()
    for a, b in [(a, a + 5) for a in range(0, 100, 5)] + [(100, 200)]:
        tail.room(b - a)[:] = x[a:b]
        tail.start = max(tail.start, tail.end - 8)
        bases.add(tail.base)
        assert np.array_equal(tail.view(), x[tail.start:tail.end]) and tail.end == b
    assert len(bases) > 5 and tail.buf.size > 100  # moved several times, then grown
    # the windowed maximum (np.maximum.reduceat over overlapping windows) equals the clipped
    # gather it replaces, inside the signal and at its edges
    rng = np.random.default_rng(0)
    v = rng.standard_normal(300)
    for idx in (np.array([20, 21, 50, 200, 279]), np.array([0, 3, 150, 299]), np.array([100])):
        half = 20
        ref = np.array([v[max(0, i - half):i + half + 1].max() for i in idx])
        got = _window_max(v, idx, half, np.array([-half, half + 1]))
        assert np.array_equal(got, ref)

# Measured with this detector on the first 5 minutes (MLII), 150 ms tolerance: 100 (normal sinus
# rhythm, 371 beats), 119 (ventricular bigeminy / trigeminy, 326), 200 (frequent multiform V beats,
# 433): Se = +P = 100 %, median |offset| to the annotated R 0, 2.8, 2.8 ms (0-1 sample at 360 Hz).
# Over all 44 non-paced records, whole: Se 99.84 %, +P 99.56 % (99.88 % without the detections
# inside the ventricular flutter of 207, which has no beat annotations), median |offset| 2.8 ms.
@pytest.mark.mitdb
@pytest.mark.skipif(not (MITDB / "100.hea").is_file(), reason=f"MIT-BIH not found at {MITDB}")
@pytest.mark.filterwarnings("ignore:The inplace keyword:Warning")
@pytest.mark.parametrize("record", ["100", "119", "200"])
def test_mitdb_first_five_minutes(record):
    wfdb = pytest.importorskip("wfdb")
    seconds = 300
    rec = wfdb.rdrecord(str(MITDB / record), sampto=int(seconds * 360))
    fs = float(rec.fs)
    x = rec.p_signal[:, rec.sig_name.index("MLII")]
    ann = wfdb.rdann(str(MITDB / record), "atr", sampto=x.size)
    beats = np.asarray([s for s, sym in zip(ann.sample, ann.symbol) if sym in AAMI_MAP])
    det = detect_r_peaks(x, fs)
    tp, fn, fp, off = _match(det, beats, tol=int(round(0.150 * fs)))  # AAMI EC57: 150 ms
    se, ppv = tp / (tp + fn), tp / (tp + fp)
    assert se >= 0.99 and ppv >= 0.99, f"{record}: Se {se:.4f}, +P {ppv:.4f}"
    median_ms = float(np.median(np.abs(off))) / fs * 1000.0
    assert median_ms <= 8.5, f"{record}: median |offset| {median_ms:.1f} ms"  # measured <= 2.8


def test_bursts_that_passed_for_beats_do_not_become_the_minor_reference():
    # the amplitude rule alone, fed accepted detections: a burst after every beat from the first
    # on; while the beats are small (0.6 mV) the bursts (0.4) pass for full-size beats, so half
    # the last 8 are bursts: their lower median would stay a burst's once the beats grow (1.25 mV,
    # issue 27: a patient's small sinus beats, then paced ones), the upper median does not
    decide = _Thresholds(360.0, 72, Levels(1.0, 0.1, ()))
    beats = [0.6] * 6 + [1.25] * 20
    for i, a in enumerate(beats):
        decide._accept((400 * i, 1.0, 1.0, a), searched_back=False)
        decide._accept((400 * i + 200, 0.5, 1.0, 0.4), searched_back=False)
    minor = set(decide.minor_at)
    bursts = [400 * i + 200 for i in range(len(beats))]
    assert 0.4 >= MINOR_AMPLITUDE * 0.6 and not minor & set(bursts[:6])  # passed, full-size
    assert set(bursts[10:]) <= minor and not minor & {400 * i for i in range(len(beats))}

"""Noise at a given SNR (nst's definition): the level is hit, the RR channels are untouched, the
generators are seeded and have the character of their kind, and nstdb-style WFDB records work."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgeexit.data import DataSpec, load_source
from edgeexit.errors import ConfigError, DataError
from edgeexit.robust.noise import (
    KINDS,
    NoiseRecords,
    add_noise,
    measure_snr,
    noise_power,
    signal_power,
    synthetic_noise,
)

FS = 360.0


@pytest.fixture(scope="module")
def beats():
    """60 synthetic beat windows (256 samples: ECG + 7 RR-context channels)."""
    return load_source("synthetic", DataSpec(n_beats=60, window=256, seed=4))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("snr", [12.0, 6.0, 0.0])
def test_noise_hits_the_snr_and_leaves_the_rr_channels(beats, kind, snr):
    x = beats.x
    noisy = add_noise(x, kind, snr, fs=FS, signal_channels=1, seed=1)
    assert noisy.dtype == np.float32 and noisy.shape == x.shape
    assert np.array_equal(noisy[:, 1:], x[:, 1:])
    measured = measure_snr(x, noisy, fs=FS, signal_channels=1)
    assert measured.shape == (len(x), 1)
    assert np.all(np.abs(measured - snr) < 0.5), (kind, snr, measured.min(), measured.max())
    # the noise is really there, at the size the SNR says: RMS = A_pp / sqrt(8 * 10^(snr/10))
    added = (noisy[:, 0] - x[:, 0]).astype(np.float64)
    want = np.ptp(x[:, 0], axis=1) / np.sqrt(8 * 10 ** (snr / 10))
    assert np.allclose(added.std(axis=1), want, rtol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_long_windows_use_trimmed_one_second_chunks(kind):
    """20-s windows: 20 one-second chunks, the largest and smallest dropped."""
    rng = np.random.default_rng(0)
    t = np.arange(int(20 * FS)) / FS
    clean = np.stack([np.sin(2 * np.pi * 1.2 * t) * a for a in (0.5, 1.0, 2.0)])[:, None]
    x = np.concatenate([clean, rng.normal(size=clean.shape)], axis=1).astype(np.float32)
    noisy = add_noise(x, kind, 6.0, fs=FS, signal_channels=1, seed=2)
    assert np.all(np.abs(measure_snr(x, noisy, fs=FS) - 6.0) < 0.5)
    assert np.array_equal(noisy[:, 1], x[:, 1])


def test_the_nst_definitions():
    t = np.arange(int(30 * FS)) / FS
    sine = 1.5 * np.sin(2 * np.pi * 5 * t)
    # S = A_pp^2 / 8 is the power of a sinusoid of that peak-to-peak amplitude
    assert signal_power(sine) == pytest.approx(np.mean(sine**2), rel=1e-3)
    rng = np.random.default_rng(0)
    white = rng.normal(0, 0.2, t.size)
    base = noise_power(white, FS)
    assert base == pytest.approx(0.04, rel=0.05)
    # the level of each 1-s chunk does not count (nst subtracts each chunk's mean)
    steps = np.repeat(rng.normal(0, 5, 30), int(FS))
    assert noise_power(white + steps, FS) == pytest.approx(base, rel=1e-6)
    # the largest 5% of the chunks are dropped: one huge second out of 30 changes nothing much
    burst = white.copy()
    burst[: int(FS)] *= 50
    assert noise_power(burst, FS) == pytest.approx(base, rel=0.05)
    # ...but without the trimming it would dominate
    assert np.mean(burst**2) > 50 * base


def test_noise_is_seeded(beats):
    a = add_noise(beats.x, "em", 6.0, fs=FS, signal_channels=1, seed=3)
    b = add_noise(beats.x, "em", 6.0, fs=FS, signal_channels=1, seed=3)
    c = add_noise(beats.x, "em", 6.0, fs=FS, signal_channels=1, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(synthetic_noise("bw", 1000, FS, seed=7), synthetic_noise("bw", 1000, FS, 7))


def _band_fraction(x, lo, hi):
    p = np.abs(np.fft.rfft(x - x.mean())) ** 2
    f = np.fft.rfftfreq(x.size, 1 / FS)
    return p[(f >= lo) & (f <= hi)].sum() / p.sum()


def test_each_kind_has_its_character():
    n = int(60 * FS)
    bw, ma, em = (synthetic_noise(k, n, FS, seed=1) for k in KINDS)
    assert _band_fraction(bw, 0, 1.0) > 0.95  # baseline wander: below 1 Hz
    assert _band_fraction(ma, 5.0, 100.0) > 0.95  # muscle: 5-100 Hz
    assert _band_fraction(ma, 0, 3.0) < 0.01
    # electrode motion: mostly low-frequency, with a share in the QRS band (its spikes)
    assert _band_fraction(em, 0, 2.0) > 0.3
    assert _band_fraction(em, 5.0, 40.0) > 0.05
    kurt = lambda v: np.mean((v - v.mean()) ** 4) / np.var(v) ** 2
    # spiky: heavy-tailed increments (steps, spikes), far from the (modulated) Gaussian muscle noise
    assert kurt(np.diff(em)) > 20
    assert kurt(np.diff(ma)) < 6


def test_bad_arguments_are_refused(beats):
    with pytest.raises(ConfigError, match="unknown noise kind"):
        add_noise(beats.x, "pl", 6.0, fs=FS, signal_channels=1)
    with pytest.raises(ConfigError, match="signal_channels"):
        add_noise(beats.x, "ma", 6.0, fs=FS, signal_channels=0)
    with pytest.raises(ConfigError, match="snr_db"):
        add_noise(beats.x, "ma", float("nan"), fs=FS, signal_channels=1)
    with pytest.raises(ConfigError, match=r"\[N, C, L\]"):
        add_noise(beats.x[0], "ma", 6.0, fs=FS, signal_channels=1)


# ------------------------------------------------------------------------ WFDB noise records
def write_records(directory, seconds=5.0, fs=FS, kinds=KINDS):
    wfdb = pytest.importorskip("wfdb")
    n = int(seconds * fs)
    for k, kind in enumerate(kinds):
        sig = np.stack([synthetic_noise(kind, n, fs, seed=10 + k),
                        synthetic_noise(kind, n, fs, seed=20 + k)], axis=1) * 0.2
        wfdb.wrsamp(kind, fs=fs, units=["mV", "mV"], sig_name=["noise1", "noise2"],
                    p_signal=sig, fmt=["16", "16"], write_dir=str(directory))
    return directory


def test_records_give_segments_of_the_record(tmp_path):
    records = NoiseRecords(write_records(tmp_path))
    sig = records.signal("ma")
    assert sig.shape == (int(5 * FS), 2)
    seg = records.segments("ma", 8, 256, channels=2, rng=np.random.default_rng(0))
    assert seg.shape == (8, 2, 256)
    for window in seg:  # each channel is a contiguous (wrapping) stretch of a record channel
        for c in range(2):
            hits = [
                ch for ch in range(2) for start in range(sig.shape[0])
                if np.allclose(window[c, :4], np.take(sig[:, ch], range(start, start + 4),
                                                      mode="wrap"))
            ]
            assert hits
    # the pair of channels comes from the two record channels, as nst pairs them
    assert not np.allclose(seg[:, 0], seg[:, 1])


@pytest.mark.parametrize("kind", KINDS)
def test_record_noise_hits_the_snr(tmp_path, beats, kind):
    records = NoiseRecords(write_records(tmp_path))
    noisy = add_noise(beats.x, kind, 0.0, fs=FS, signal_channels=1, seed=0, records=records)
    assert np.all(np.abs(measure_snr(beats.x, noisy, fs=FS) - 0.0) < 0.5)
    assert np.array_equal(noisy[:, 1:], beats.x[:, 1:])
    again = add_noise(beats.x, kind, 0.0, fs=FS, signal_channels=1, seed=0, records=records)
    assert np.array_equal(noisy, again)
    synthetic = add_noise(beats.x, kind, 0.0, fs=FS, signal_channels=1, seed=0)
    assert not np.allclose(noisy, synthetic)  # it did read the records


def test_records_at_another_rate_are_resampled(tmp_path):
    write_records(tmp_path, seconds=4.0, fs=250.0, kinds=("bw",))
    sig = NoiseRecords(tmp_path).signal("bw", fs=FS)
    assert sig.shape == (int(4 * FS), 2)


def test_a_missing_or_broken_record_says_what_to_do(tmp_path, beats):
    write_records(tmp_path, kinds=("bw", "ma"))
    records = NoiseRecords(tmp_path)
    with pytest.raises(DataError, match=r"noise record 'em' not found.*nstdb"):
        add_noise(beats.x, "em", 6.0, fs=FS, signal_channels=1, records=records)
    (tmp_path / "ma.dat").write_bytes(b"\x00\x01")  # truncated signal file
    with pytest.raises(DataError, match=r"noise record 'ma' .*unreadable"):
        records.signal("ma")
    add_noise(beats.x, "bw", 6.0, fs=FS, signal_channels=1, records=records)  # bw still works


def test_noise_module_does_not_import_torch():
    code = "import sys, edgeexit.robust.noise\nprint('torch' in sys.modules, 'wfdb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]

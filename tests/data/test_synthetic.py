"""The synthetic ECG generator: determinism, shapes, class mix, per-class physiology, config."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from edgeexit.data import DataSpec, load_source
from edgeexit.data.dataset import AAMI_CLASSES
from edgeexit.data.synthetic import SyntheticECGConfig, generate_synthetic
from edgeexit.errors import ConfigError
from edgeexit.runtime.preprocess import RR_FEATURES, default_r_offset

N, S, V, F, Q = range(5)
PRE_RATIO = 1 + RR_FEATURES.index("pre_rr_ratio")  # channel index (after the ECG channel)


@pytest.fixture(scope="module")
def small():
    """600 beats, the default class mix: shared by the read-only tests of this module."""
    return generate_synthetic(SyntheticECGConfig(n_beats=600, seed=7))


def _qrs(x: np.ndarray, fs: float, half_s: float = 0.1) -> np.ndarray:
    """The ECG of every window within ``half_s`` of the R peak, minus the window's median."""
    off = default_r_offset(x.shape[-1])
    h = int(half_s * fs)
    ecg = x[:, 0, :]
    return ecg[:, off - h : off + h + 1] - np.median(ecg, axis=1, keepdims=True)


def test_same_seed_is_bit_identical_and_other_seed_differs():
    cfg = SyntheticECGConfig(n_beats=600, seed=3)
    a, b = generate_synthetic(cfg), generate_synthetic(cfg)
    assert a.x.tobytes() == b.x.tobytes()
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.groups, b.groups)
    c = generate_synthetic(dataclasses.replace(cfg, seed=4))
    assert c.x.shape != a.x.shape or not np.array_equal(c.x, a.x)
    assert not np.array_equal(c.x[:50, 0], a.x[:50, 0])


def test_global_random_state_is_untouched():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    generate_synthetic(SyntheticECGConfig(n_beats=100, seed=1))
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_shapes_dtypes_channels_and_groups(small):
    assert small.x.shape == (600, 1 + len(RR_FEATURES), 256)
    assert small.x.dtype == np.float32 and small.y.dtype == np.int64
    assert small.classes == AAMI_CLASSES
    assert small.channels == ("ecg",) + RR_FEATURES
    assert small.signal_channels == 1 and small.units == "mV" and small.fs == 360.0
    assert small.source == "synthetic(seed=7, n_beats=600)"
    assert all(re.fullmatch(r"syn\d{3}", g) for g in np.unique(small.groups))
    assert 2 <= np.unique(small.groups).size <= 24
    # beats of one record are contiguous and in time order: a beat's post-RR is the next pre-RR
    for g in np.unique(small.groups):
        idx = np.flatnonzero(small.groups == g)
        assert np.all(np.diff(idx) == 1)
        rr = small.x[idx, 1:3, 0]  # pre_rr, post_rr
        np.testing.assert_allclose(rr[1:, 0], rr[:-1, 1], rtol=1e-6)


def test_rr_context_off_gives_the_same_ecg_in_one_channel(small):
    plain = generate_synthetic(SyntheticECGConfig(n_beats=600, seed=7, rr_context=False))
    assert plain.x.shape == (600, 1, 256) and plain.channels == ("ecg",)
    np.testing.assert_array_equal(plain.x[:, 0], small.x[:, 0])
    np.testing.assert_array_equal(plain.y, small.y)


def test_class_counts_follow_fractions_and_n_beats():
    fractions = (0.6, 0.2, 0.1, 0.05, 0.05)
    data = generate_synthetic(
        SyntheticECGConfig(n_beats=1000, n_records=10, seed=2, class_fractions=fractions)
    )
    assert abs(len(data) - 1000) <= 50
    counts = np.bincount(data.y, minlength=5) / len(data)
    np.testing.assert_allclose(counts, fractions, atol=0.02)


def test_fractions_are_normalised_and_may_leave_classes_out():
    data = generate_synthetic(
        SyntheticECGConfig(n_beats=300, seed=0, class_fractions=(3, 0, 1, 0, 0))
    )
    assert data.class_counts() == {"N": 225, "S": 0, "V": 75, "F": 0, "Q": 0}
    paced = generate_synthetic(
        SyntheticECGConfig(n_beats=200, seed=0, class_fractions=(0, 0, 0, 0, 1))
    )
    assert set(np.unique(paced.y)) == {Q} and len(paced) == 200


def test_fewer_beats_than_records():
    data = generate_synthetic(SyntheticECGConfig(n_beats=7, n_records=24, seed=5))
    assert len(data) == 7 and np.unique(data.groups).size <= 7


@pytest.mark.parametrize(("fs", "window"), [(250.0, 128), (360.0, 512), (500.0, 100)])
def test_other_rates_and_windows(fs, window):
    data = generate_synthetic(SyntheticECGConfig(n_beats=120, fs=fs, window=window, seed=1))
    assert data.x.shape == (120, 1 + len(RR_FEATURES), window) and data.fs == fs
    assert np.isfinite(data.x).all()


def test_values_are_finite_and_in_a_plausible_mv_range(small):
    assert np.isfinite(small.x).all()
    ecg = small.x[:, 0]
    assert np.abs(ecg).max() < 10.0  # a surface ECG stays within a few mV
    assert 0.1 < ecg.std() < 2.0
    # sinus R waves: a clear positive peak of 0.3-3 mV at the window's R offset
    r = _qrs(small.x[small.y == N], small.fs, half_s=0.0)[:, 0]
    assert 0.3 < np.median(r) < 3.0
    rr = small.x[:, 1, 0]  # pre_rr in seconds: heart rates of 30-200 bpm
    assert rr.min() >= 0.3 and rr.max() < 2.5


def test_premature_beats_come_early(small):
    ratio = small.x[:, PRE_RATIO, 0]
    n, s, v = (ratio[small.y == c].mean() for c in (N, S, V))
    assert s < n - 0.1 and v < n - 0.1
    assert 0.5 < s < 0.95


def test_ventricular_beats_are_wider_and_larger_than_normal(small):
    qrs = np.abs(_qrs(small.x, small.fs))
    energy = (qrs**2).mean(axis=1)
    width = (qrs > 0.5 * qrs.max(axis=1, keepdims=True)).sum(axis=1)  # samples above half peak
    assert energy[small.y == V].mean() > 2.0 * energy[small.y == N].mean()
    assert np.median(width[small.y == V]) > 1.5 * np.median(width[small.y == N])
    # fusion beats lie in between
    assert np.median(width[small.y == N]) < np.median(width[small.y == F]) < np.median(
        width[small.y == V]
    )


def test_paced_beats_have_a_pacing_spike(small):
    off = default_r_offset(small.x.shape[-1])
    before = small.x[:, 0, off - int(0.15 * small.fs) : off - 5]  # up to ~14 ms before R
    slope = np.abs(np.diff(before, axis=1)).max(axis=1)  # mV per sample
    assert np.median(slope[small.y == Q]) > 3.0 * np.median(slope[small.y == N])


def test_noise_scale(small):
    def roughness(data):  # high-frequency content of the sinus beats, mV per sample
        return np.median(np.abs(np.diff(data.x[data.y == N, 0], axis=1)))

    clean = generate_synthetic(SyntheticECGConfig(n_beats=600, seed=7, noise=0.0))
    noisy = generate_synthetic(SyntheticECGConfig(n_beats=600, seed=7, noise=3.0))
    np.testing.assert_array_equal(clean.y, small.y)  # noise changes the signal, not the beats
    assert roughness(clean) < roughness(small) < roughness(noisy)


def test_data_source_synthetic_uses_the_generator():
    data = load_source("synthetic", DataSpec(n_beats=200, seed=4, window=128, rr_context=False))
    assert data.x.shape == (200, 1, 128) and data.source.startswith("synthetic(seed=4")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_fractions": (0.5, 0.5)}, "5 values"),
        ({"class_fractions": (0.5, -0.1, 0.2, 0.2, 0.2)}, ">= 0"),
        ({"class_fractions": (0, 0, 0, 0, 0)}, "not all zero"),
        ({"class_fractions": (float("nan"), 1, 1, 1, 1)}, "finite"),
        ({"class_fractions": ("a", 1, 1, 1, 1)}, "numbers"),
        ({"class_fractions": "NSVFQ"}, "list of 5"),
        ({"window": 16}, "too small"),
        ({"n_beats": 0}, "n_beats"),
        ({"n_beats": -5}, "n_beats"),
        ({"n_beats": 10.5}, "integer"),
        ({"n_records": 0}, "n_records"),
        ({"seed": -1}, "seed"),
        ({"fs": 50.0}, "fs"),
        ({"noise": -1.0}, "noise"),
        ({"noise": float("inf")}, "noise"),
        ({"rr_context": "yes"}, "rr_context"),
    ],
)
def test_invalid_config_raises_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SyntheticECGConfig(**kwargs)


def test_to_dict_from_dict_round_trip():
    cfg = SyntheticECGConfig(n_beats=1234, n_records=5, seed=9, class_fractions=(1, 1, 1, 1, 1),
                             rr_context=False, noise=0.5)
    assert SyntheticECGConfig.from_dict(cfg.to_dict()) == cfg
    assert SyntheticECGConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SyntheticECGConfig.from_dict({}) == SyntheticECGConfig()
    assert cfg.class_fractions == (1.0, 1.0, 1.0, 1.0, 1.0)
    np.testing.assert_allclose(cfg.fractions, 0.2)


def test_from_dict_names_unknown_keys():
    with pytest.raises(ConfigError, match="'n_beat'.*'speed'"):
        SyntheticECGConfig.from_dict({"n_beat": 10, "speed": 2})

import numpy as np
import pytest

from edgeexit.runtime.preprocess import (
    LOCAL_RR_BEATS,
    LONG_RR_BEATS,
    RR_FEATURES,
    beat_windows,
    default_r_offset,
    rr_features,
)

# needs no torch or onnx: tools/aarch64_check.py runs it on the device install
pytestmark = pytest.mark.device_install


def test_rr_features_of_a_premature_beat():
    fs = 360.0
    peaks = np.array([0, 360, 720, 1000, 1440, 1800])  # beat 3 comes early (0.78 s), then a pause
    f = rr_features(peaks, fs)
    assert f.shape == (6, len(RR_FEATURES))
    pre, post, local, pre_ratio, post_ratio, avg, avg_ratio = f.T
    assert pre[3] == pytest.approx(280 / 360) and post[3] == pytest.approx(440 / 360)
    assert local[3] == pytest.approx(1.0)  # median of 1, 1, 1, 0.78
    assert pre_ratio[3] < 0.8 and post_ratio[3] > 1.2
    assert pre[0] == pytest.approx(1.0) and post[-1] == pytest.approx(1.0)  # edges mirror
    assert avg[3] == pytest.approx((3 * 360 + 280) / 4 / 360)  # running mean of intervals so far
    assert avg_ratio[3] == pytest.approx(pre[3] / avg[3])


def test_rr_local_window_is_causal():
    peaks = np.cumsum(np.r_[0, np.full(40, 300), np.full(40, 200)])
    f = rr_features(peaks, 300.0)
    # the local rhythm follows the new rate only after half the window has the new interval
    assert f[40, 2] == pytest.approx(1.0)
    assert f[41 + LOCAL_RR_BEATS, 2] == pytest.approx(200 / 300)


@pytest.mark.parametrize("bad", [np.array([5]), np.array([10, 10, 20])])
def test_rr_features_refuses_bad_peaks(bad):
    with pytest.raises(ValueError):
        rr_features(bad, 360.0)


def test_beat_windows_cut_around_r_and_drop_edges():
    fs, window = 360.0, 64
    sig = np.arange(1000, dtype=np.float32)
    peaks = np.array([10, 200, 400, 600, 990])
    x, kept = beat_windows(sig, peaks, fs, window=window, rr_context=True)
    assert kept.tolist() == [1, 2, 3]
    assert x.shape == (3, 1 + len(RR_FEATURES), window) and x.dtype == np.float32
    off = default_r_offset(window)
    assert x[0, 0, off] == 200.0  # the R peak sits at the offset
    # RR context uses the dropped neighbours too: beat 1 is 190 samples after beat 0
    assert x[0, 1, 0] == pytest.approx(190 / fs)
    assert np.all(x[:, 1:, :] == x[:, 1:, :1])  # context is constant over the window


def test_beat_windows_multichannel_and_no_context():
    sig = np.random.default_rng(0).normal(size=(2, 500)).astype(np.float32)
    x, kept = beat_windows(sig, np.array([100, 250, 400]), 250.0, window=32)
    assert x.shape == (3, 2, 32)
    np.testing.assert_array_equal(x[1], sig[:, 250 - 12 : 250 + 20])


def test_rr_long_average_window():
    peaks = np.cumsum(np.r_[0, np.full(LONG_RR_BEATS, 100), np.full(LONG_RR_BEATS, 50)])
    f = rr_features(peaks, 100.0)
    assert f[LONG_RR_BEATS, 5] == pytest.approx(1.0)
    assert f[2 * LONG_RR_BEATS, 5] == pytest.approx(0.5)  # the old rhythm has left the window


def test_morphology_context_compares_each_beat_with_the_same_patients_previous_beats():
    from edgeexit.runtime.preprocess import MORPH_FEATURES, TEMPLATE_BEATS, BeatTemplate, morph_features

    fs, length = 360.0, 256
    off = default_r_offset(length)
    t = np.arange(length)
    normal = np.exp(-0.5 * ((t - off) / 4.0) ** 2).astype(np.float32)  # narrow QRS
    ectopic = (-1.5 * np.exp(-0.5 * ((t - off - 6) / 14.0) ** 2)).astype(np.float32)  # wide, inverted
    beats = np.stack([normal] * 10 + [ectopic] + [normal * 2.0])
    f = morph_features(beats, off, fs)
    assert f.shape == (12, len(MORPH_FEATURES))
    assert np.allclose(f[0], [1, 1, 0]) and np.allclose(f[1:10], [1, 1, 0], atol=1e-5)
    assert f[10, 0] < 0 and f[10, 1] > 1.2 and f[10, 2] > 1.0  # unlike the patient's own beats
    assert np.isclose(f[11, 0], 1, atol=1e-5) and np.isclose(f[11, 1], 2.0, rtol=1e-4)
    # gain and baseline of the whole recording do not matter
    g = morph_features(beats * 3.0 + 0.7, off, fs)
    assert np.allclose(f, g, atol=1e-4)
    # the template holds TEMPLATE_BEATS windows; a non-finite window neither counts nor breaks it
    tmpl = BeatTemplate(length, off, fs)
    for _ in range(3 * TEMPLATE_BEATS):
        tmpl.features(normal)
    bad = normal.copy()
    bad[5] = np.nan
    assert np.array_equal(tmpl.features(bad), [1, 1, 0])
    assert np.allclose(tmpl.features(normal), [1, 1, 0], atol=1e-5)
    # beat_windows appends them after the RR channels
    sig = np.concatenate([np.zeros(200, np.float32), np.tile(normal, 6), np.zeros(200, np.float32)])
    peaks = 200 + off + length * np.arange(6)
    x, kept = beat_windows(sig, peaks, fs, window=length, rr_context=True, morph_context=True)
    assert x.shape == (6, 1 + len(RR_FEATURES) + 3, length)
    assert np.allclose(x[:, -3, 0], 1.0, atol=1e-5)


def test_template_is_the_median_of_the_previous_beats_bit_for_bit():
    # the template is kept sorted incrementally (one beat leaves, one joins): it must equal
    # np.median of the previous TEMPLATE_BEATS windows, while filling up and with many ties
    from edgeexit.runtime.preprocess import TEMPLATE_BEATS, BeatTemplate

    rng = np.random.default_rng(7)
    beats = np.round(rng.standard_normal((40, 64)) * 4).astype(np.float32) / np.float32(8)
    beats[5] = beats[4]  # a repeated beat
    tmpl = BeatTemplate(64, 24, 360.0)
    for i, w in enumerate(beats):
        expect = w if i == 0 else np.median(beats[max(0, i - TEMPLATE_BEATS):i], axis=0)
        assert np.array_equal(tmpl.template(w), expect.astype(np.float32)), i
        tmpl.features(w)

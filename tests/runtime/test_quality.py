"""The per-beat signal-quality index: high for a clean beat, low for one buried in noise (the
stream's flagging, ``run --stream --min-sqi``, is tested in test_stream.py)."""

from __future__ import annotations

import numpy as np
import pytest
from test_peaks import synthetic_ecg

from edgeexit.runtime.preprocess import default_r_offset
from edgeexit.runtime.quality import beat_sqi

FS = 360.0


@pytest.fixture(scope="module")
def noisy_ecg():
    x, peaks, _ = synthetic_ecg(FS, seconds=60.0, seed=3)
    noisy = slice(int(25 * FS), int(40 * FS))  # 15 s of heavy broadband noise (muscle-like)
    y = x.copy()
    y[noisy] += np.random.default_rng(0).normal(0.0, 1.0, noisy.stop - noisy.start)
    return y, peaks, noisy


def test_sqi_is_high_for_a_clean_beat_and_low_under_noise(noisy_ecg):
    x, peaks, noisy = noisy_ecg
    off = default_r_offset(256)
    clean = [beat_sqi(x[p - off:p - off + 256], off, FS) for p in peaks[3:20]]
    buried = [beat_sqi(x[p - off:p - off + 256], off, FS) for p in peaks
              if noisy.start + 256 < p < noisy.stop - 256]
    assert min(clean) > 15 and np.median(buried) < 6 and max(buried) < 10
    assert beat_sqi(np.zeros(256), off, FS) == 0.0
    assert beat_sqi(np.full(256, np.nan), off, FS) == 0.0

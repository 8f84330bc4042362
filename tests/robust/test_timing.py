"""The timing attack's context (edgeexit.robust.timing) and the ctxadv training method: the RR
channels are recomputed from moved detections as the device computes them, every move stays in
its budget, and the training step of ``ctxadv`` moves the context within it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeexit.data import DataSpec, load_source
from edgeexit.errors import ConfigError
from edgeexit.models import ModelConfig, create_model
from edgeexit.robust.methods import TrainContext, create_method, make_method_config
from edgeexit.robust.timing import SHIFTS, ContextPGD, TimingContext, context_attack
from edgeexit.runtime.preprocess import LOCAL_RR_BEATS, rr_features

FS = 360.0


@pytest.fixture(scope="module")
def data():
    return load_source("synthetic", DataSpec(n_beats=120, morph_context=True, seed=0))


@pytest.fixture(scope="module")
def model(data):
    torch.manual_seed(0)
    c, length = data.input_shape
    net = create_model(ModelConfig("resnet1d", in_channels=c, num_classes=len(data.classes),
                                   input_length=length, width=0.25, context_fusion=True))
    net.fit_input_norm(torch.from_numpy(data.x))
    return net.eval()


def rr_index(channels):
    return {n: list(channels).index(n) for n in ("pre_rr", "post_rr", "local_rr", "pre_rr_ratio",
                                                 "post_rr_ratio", "avg_rr", "pre_rr_avg_ratio")}


def test_recomputed_rr_is_the_devices_on_moved_peaks():
    rng = np.random.default_rng(0)
    peaks = np.cumsum(rng.integers(250, 330, size=60)).astype(np.int64)
    clean = rr_features(peaks, FS)
    names = ("ecg", "pre_rr", "post_rr", "local_rr", "pre_rr_ratio", "post_rr_ratio", "avg_rr",
             "pre_rr_avg_ratio")
    timing = TimingContext(names, FS, budget_ms=30.0, eps=0.1)
    i = 40
    for moves in ([9, -10, 7], [-10, 10, -10], [0, 5, 0]):  # samples: within 30 ms (10.8)
        moved = peaks.copy()
        moved[i - 1 : i + 2] += np.array(moves)
        device = rr_features(moved, FS)[i]
        x = torch.zeros(1, len(names), 8)
        x[0, 1:] = torch.from_numpy(clean[i])[:, None]
        d = torch.tensor([moves], dtype=torch.float32) / FS
        got = timing.recompute_rr(x, d)[0, 1:, 0].numpy()
        idx = [0, 1, 3, 4, 6]  # pre, post and the three ratios: exact up to the held means
        np.testing.assert_allclose(got[[0, 1]], device[[0, 1]], rtol=1e-5)
        bound = 2 * 30e-3  # the 16-beat median moves by at most twice the budget
        assert abs(device[2] - clean[i][2]) <= bound + 1e-6
        assert abs(device[5] - clean[i][5]) <= bound / min(i + 1, 256) + 1e-6
        np.testing.assert_allclose(got[idx], device[idx], rtol=bound / clean[i][2] + 1e-3)
        assert LOCAL_RR_BEATS == 16


def test_timing_channels_scale_to_the_budget_and_recut_the_window(data):
    timing = TimingContext.of(data, budget_ms=25.0, eps=0.1)
    x = torch.from_numpy(data.x[:4])
    xa = timing.with_timing(x)
    assert xa.shape[1] == x.shape[1] + SHIFTS
    np.testing.assert_allclose(timing.apply(xa).numpy(), x.numpy(), rtol=1e-6)  # no move
    xa[:, -SHIFTS:] = 0.5  # beyond eps: clamped to the budget
    np.testing.assert_allclose(timing.shifts(xa).numpy(), 0.025, rtol=1e-6)
    xa[:, -SHIFTS:] = torch.tensor([0.0, 0.1, 0.0]).view(1, 3, 1)  # this beat's detection +25 ms
    out = timing.apply(xa)
    k = round(0.025 * data.fs)
    np.testing.assert_array_equal(out[:, 0].numpy(), np.roll(data.x[:4, 0], -k, axis=-1))
    pre = rr_index(data.channels)["pre_rr"]
    np.testing.assert_allclose(out[:, pre].numpy(), data.x[:4, pre] + 0.025, rtol=1e-5)


def test_the_long_rhythm_channel_scales_the_long_mean_as_extra_detections_do(data):
    # the device: k detections added among beat n's first n + 1 lower its long mean (the same
    # span of time over more intervals) by (n + 1) / (n + 1 + k)
    rng = np.random.default_rng(1)
    peaks = np.cumsum(rng.integers(250, 330, size=61)).astype(np.int64)
    n, k = 60, 6
    extra = (peaks[11:11 + k] + peaks[10:10 + k]) // 2  # mid-diastole in k intervals
    moved = np.sort(np.concatenate([peaks, extra]))
    clean_avg = rr_features(peaks, FS)[n][5]
    got = rr_features(moved, FS)[n + k][5]
    np.testing.assert_allclose(got, clean_avg * (n + 1) / (n + 1 + k), rtol=1e-5)
    # ... which a 15% budget covers: the fourth channel at -eps is a factor 1 / 1.15
    timing = TimingContext.of(data, budget_ms=25.0, eps=0.1, rhythm=0.15)
    assert clean_avg / got <= 1.15 and timing.channels == SHIFTS + 1
    x = torch.from_numpy(data.x[:4])
    xa = timing.with_timing(x)
    assert xa.shape[1] == x.shape[1] + SHIFTS + 1
    np.testing.assert_allclose(timing.apply(xa).numpy(), x.numpy(), rtol=1e-6)  # no move
    xa[:, -1] = -0.5  # beyond eps: clamped to the budget
    out = timing.apply(xa).numpy()
    r = rr_index(data.channels)
    avg = data.x[:4, r["avg_rr"]]
    np.testing.assert_allclose(out[:, r["avg_rr"]], avg / 1.15, rtol=1e-5)
    np.testing.assert_allclose(out[:, r["pre_rr_avg_ratio"]],
                               data.x[:4, r["pre_rr"]] / (avg / 1.15), rtol=1e-5)
    rest = [i for i in range(x.shape[1]) if i not in (r["avg_rr"], r["pre_rr_avg_ratio"])]
    np.testing.assert_allclose(out[:, rest], data.x[:4, rest], rtol=1e-6)  # ratios recomputed
    assert TimingContext.of(data, budget_ms=25.0, eps=0.1).channels == SHIFTS  # 0: held


def test_context_attack_stays_in_its_budgets_and_moves_the_context(data, model):
    eps, ms = 0.1, 25.0
    sub = data.subset(np.arange(40, 56))
    adv = context_attack(model, sub, eps=eps, budget_ms=ms, steps=2)
    r = rr_index(data.channels)
    d_pre = adv[:, r["pre_rr"], 0] - sub.x[:, r["pre_rr"], 0]
    d_post = adv[:, r["post_rr"], 0] - sub.x[:, r["post_rr"], 0]
    assert np.abs(d_pre).max() <= 2 * ms / 1000 + 1e-5 and np.abs(d_post).max() <= 2 * ms / 1000 + 1e-5
    assert np.abs(d_pre).max() > 1e-3  # the attack did move detections
    np.testing.assert_array_equal(adv[:, r["local_rr"]], sub.x[:, r["local_rr"]])
    # the waveform is within eps of the clean beat cut around some detection within the budget
    kmax = int(round(ms / 1000 * data.fs))
    for a, c in zip(adv[:, 0], sub.x[:, 0]):
        best = min(np.abs(a - np.roll(c, -k)).max() for k in range(-kmax, kmax + 1))
        assert best <= eps + 1e-5
    assert adv.shape == sub.x.shape


def test_ctxadv_training_step_perturbs_the_context_within_its_budget(data, model):
    from edgeexit.robust.context import MorphContext, record_templates

    config = make_method_config("ctxadv", {"eps": 0.05, "steps": 1, "timing_ms": 20.0})
    method = create_method("ctxadv", config)
    morph = MorphContext.of(data)
    method.setup(TrainContext(model=model, exit_weights=torch.ones(model.num_exits),
                              class_weights=None, num_samples=len(data),
                              signal_channels=data.signal_channels, morph=morph,
                              channels=tuple(data.channels), fs=data.fs))
    sub = slice(40, 72)
    x = torch.from_numpy(data.x[sub])
    t = torch.from_numpy(record_templates(data, morph.r_offset)[sub])
    torch.manual_seed(0)
    adv = method.attack(x, torch.from_numpy(data.y[sub]), t).numpy()
    r = rr_index(data.channels)
    for name in ("pre_rr", "post_rr"):
        d = adv[:, r[name], 0] - data.x[sub][:, r[name], 0]
        assert np.abs(d).max() <= 2 * 0.020 + 1e-5 and np.abs(d).max() > 1e-3, name
    ratio = adv[:, r["pre_rr_ratio"], 0]
    np.testing.assert_allclose(ratio, adv[:, r["pre_rr"], 0] / adv[:, r["local_rr"], 0], rtol=1e-5)
    m = morph.index  # the morphology channels follow the attacked waveform
    assert np.abs(adv[:, m] - data.x[sub][:, m]).max() > 1e-4


def test_ctxadv_with_a_rhythm_budget_moves_the_long_mean_within_it(data, model):
    config = make_method_config("ctxadv", {"eps": 0.05, "steps": 1, "timing_ms": 20.0,
                                           "rhythm": 0.2})
    method = create_method("ctxadv", config)
    method.setup(TrainContext(model=model, exit_weights=torch.ones(model.num_exits),
                              class_weights=None, num_samples=len(data),
                              signal_channels=data.signal_channels, morph=None,
                              channels=tuple(data.channels), fs=data.fs))
    sub = slice(40, 72)
    torch.manual_seed(0)
    adv = method.attack(torch.from_numpy(data.x[sub]), torch.from_numpy(data.y[sub])).numpy()
    r = rr_index(data.channels)
    log_k = np.log(adv[:, r["avg_rr"], 0] / data.x[sub][:, r["avg_rr"], 0])
    assert np.abs(log_k).max() <= np.log1p(0.2) + 1e-5 and np.abs(log_k).max() > 1e-3
    np.testing.assert_allclose(adv[:, r["pre_rr_avg_ratio"], 0],
                               adv[:, r["pre_rr"], 0] / adv[:, r["avg_rr"], 0], rtol=1e-5)


def test_ctxadv_refuses_bad_settings():
    with pytest.raises(ConfigError, match="timing_ms"):
        make_method_config("ctxadv", {"timing_ms": 0})
    with pytest.raises(ConfigError, match="rhythm"):
        make_method_config("ctxadv", {"rhythm": -0.1})
    with pytest.raises(ConfigError, match="long-rhythm"):
        TimingContext(("ecg", *rr_index(("pre_rr", "post_rr", "local_rr", "pre_rr_ratio",
                                        "post_rr_ratio", "avg_rr", "pre_rr_avg_ratio"))),
                      FS, 25.0, 0.1, rhythm=-1)
    with pytest.raises(ConfigError, match="linf"):
        make_method_config("ctxadv", {"norm": "l2", "eps": 1.0})
    with pytest.raises(ConfigError, match="RR"):
        TimingContext(("ecg",), FS, 25.0, 0.1)
    with pytest.raises(ConfigError, match="Linf"):
        ContextPGD(torch.nn.Identity(), 0.1, budget_ms=25.0, norm="l2", signal_channels=1)

"""The morphology channels follow the attacked waveform: rebuilt templates, torch = device code."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgeexit.data.dataset import check_templates
from edgeexit.errors import ConfigError, DataError
from edgeexit.robust.attacks import PGD
from edgeexit.robust.context import MorphContext, record_templates
from edgeexit.runtime.preprocess import MORPH_FEATURES, TEMPLATE_BEATS


@pytest.fixture(scope="module")
def morph_data():
    from edgeexit.data import DataSpec, load_source

    return load_source("synthetic", DataSpec(n_beats=600, morph_context=True, seed=0))


def test_templates_rebuilt_from_the_data_give_back_the_stored_features(morph_data):
    ctx = MorphContext.of(morph_data)
    assert ctx is not None and len(ctx.index) == len(MORPH_FEATURES)
    t = record_templates(morph_data, ctx.r_offset)
    assert t.shape == (len(morph_data), morph_data.x.shape[-1])
    # clean windows: recomputed by the device's code, every channel as stored (past the first
    # TEMPLATE_BEATS of each record, whose templates had the generator's lead-in beats behind them)
    g = morph_data.groups
    first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    settled = np.ones(len(g), bool)
    for s in first:
        settled[s : s + TEMPLATE_BEATS] = False
    assert settled.sum() > 100
    again = ctx.finish(ctx.attach(morph_data, t))
    np.testing.assert_allclose(again[settled], morph_data.x[settled], atol=1e-5)
    np.testing.assert_array_equal(again[:, : ctx.index[0]], morph_data.x[:, : ctx.index[0]])
    # the loader's own templates: exact for every window (the lead-in beats were behind them)
    np.testing.assert_array_equal(t, morph_data.templates)
    check_templates(morph_data, morph_data.templates, ctx.r_offset)
    np.testing.assert_allclose(ctx.finish(ctx.attach(morph_data, morph_data.templates)),
                               morph_data.x, atol=1e-5)
    # a sample keeps them (and so can be attacked); without them it cannot be rebuilt
    half = morph_data.subset(np.arange(0, len(morph_data), 2))
    np.testing.assert_array_equal(record_templates(half, ctx.r_offset), morph_data.templates[::2])
    bare = dataclasses.replace(morph_data, templates=None)
    rebuilt = record_templates(bare, ctx.r_offset)  # rebuilt: exact past each record's start
    np.testing.assert_allclose(rebuilt[settled], morph_data.templates[settled], atol=1e-6)
    assert not np.allclose(rebuilt[~settled], morph_data.templates[~settled], atol=1e-6)
    shuffled = bare.subset(np.random.default_rng(0).permutation(len(morph_data)))
    with pytest.raises(DataError, match="not contiguous"):
        record_templates(shuffled, ctx.r_offset)
    with pytest.raises(DataError, match="do not give the stored features"):
        record_templates(bare.subset(np.arange(0, len(morph_data), 2)), ctx.r_offset)
    with pytest.raises(DataError, match="do not give the stored features"):  # wrong templates
        record_templates(dataclasses.replace(half, templates=half.templates[::-1].copy()),
                         ctx.r_offset)


def test_torch_features_match_the_device_code_and_have_finite_gradients(morph_data):
    ctx = MorphContext.of(morph_data)
    t = record_templates(morph_data, ctx.r_offset)
    rng = np.random.default_rng(1)
    w = morph_data.x[:40, 0] + rng.uniform(-0.3, 0.3, (40, morph_data.x.shape[-1])).astype(np.float32)
    w[0] = t[0]  # a beat equal to its template (a recording's first beat): deviation 0
    wt = torch.tensor(w, requires_grad=True)
    f = ctx.features_torch(wt, torch.from_numpy(t[:40]))
    expected = np.stack([ctx._beat.compare(w[i], t[i]) for i in range(40)])
    np.testing.assert_allclose(f.detach().numpy(), expected, atol=1e-5)
    f.sum().backward()
    assert torch.isfinite(wt.grad).all() and wt.grad.abs().sum() > 0


class _MorphOnly(nn.Module):
    """Answers from ``qrs_corr`` alone: class 0 when the beat looks like the patient's own."""

    def __init__(self, corr_channel: int) -> None:
        super().__init__()
        self.c = corr_channel

    num_exits = 1

    def forward(self, x):
        corr = x[:, self.c].mean(-1)
        return [torch.stack([20 * (corr - 0.9), -20 * (corr - 0.9)], 1)]

    def forward_until(self, x, k):
        return self.forward(x)


def test_a_model_reading_only_the_morphology_falls_only_when_it_follows_the_waveform(morph_data):
    ctx = MorphContext.of(morph_data)
    model = _MorphOnly(ctx.index[0]).eval()
    xa = torch.from_numpy(ctx.attach(morph_data, record_templates(morph_data, ctx.r_offset)))
    x = torch.from_numpy(morph_data.x)
    y = model(x)[0].argmax(1)  # its own clean answers: accuracy 1 before the attack
    fixed = PGD(model, 0.3, steps=10, signal_channels=1)(x, y)
    assert (model(fixed)[0].argmax(1) == y).all()  # the clean-context threat model: untouchable
    follows = PGD(ctx.wrap(model), 0.3, steps=10, signal_channels=1)(xa, y)
    assert (follows[:, -1] == xa[:, -1]).all()  # the template channel is never perturbed
    assert (follows[:, 1:-1] == xa[:, 1:-1]).all()  # nor the context channels themselves
    scored = torch.from_numpy(ctx.finish(follows.numpy()))
    acc = (model(scored)[0].argmax(1) == y).float().mean().item()
    assert acc < 0.5, acc  # 0.3 mV moves the QRS correlation of most beats


@pytest.mark.parametrize("method,options", [
    ("rdi", {"eps": 0.3, "steps": 10}),
    ("neokd", {"eps": 0.3, "steps": 10, "attack": "max-avg"}),
    ("ima", {"eps_step": 0.3, "eps_max": 0.3, "steps": 10, "bisection_steps": 4}),
])
def test_training_attacks_move_the_morphology_channels_as_the_device_would(morph_data, method, options):
    from edgeexit.robust.methods import Batch, TrainContext, create_method, make_method_config

    ctx = MorphContext.of(morph_data)
    t = torch.from_numpy(record_templates(morph_data, ctx.r_offset))
    model = _MorphOnly(ctx.index[0])
    x = torch.from_numpy(morph_data.x)
    y = model(x)[0].argmax(1)
    batch = Batch(x=x, y=y, index=torch.arange(len(x)), template=t)

    def training_inputs(morph):
        m = create_method(method, make_method_config(method, options))
        m.setup(TrainContext(model=model, exit_weights=torch.ones(1), class_weights=None,
                             num_samples=len(x), signal_channels=1, morph=morph))
        out = m.training_points(batch) if method == "ima" else m.adversarial(batch)
        return out, m

    held, _ = training_inputs(None)
    assert (model(held)[0].argmax(1) == y).all()  # the channels held: nothing to gain
    follows, m = training_inputs(ctx)
    assert follows.shape == x.shape and not follows.requires_grad
    assert model.training  # the attack ran in eval mode and gave the mode back
    # what the model trains on: the channels the device computes from the perturbed waveform
    device = ctx.finish(np.concatenate([follows.numpy(), t.numpy()[:, None]], axis=1))
    np.testing.assert_allclose(follows.numpy(), device, atol=1e-5)
    assert (follows[:, 1:] != x[:, 1:]).any()
    if method == "ima":
        assert m._counts["found"] > len(x) / 2
    else:
        acc = (model(follows)[0].argmax(1) == y).float().mean().item()
        assert acc < 0.5, acc
    with pytest.raises(ConfigError, match="carries no template"):
        m.loss(model, Batch(x=x, y=y, index=torch.arange(len(x))))


def test_training_with_the_morphology_following_the_attack_differs_from_held(tmp_path):
    from edgeexit.data import DataSpec, load_split
    from edgeexit.robust.methods import make_method_config
    from edgeexit.train import TrainConfig, train

    beats = load_split(DataSpec(source="synthetic", n_beats=300, seed=0, morph_context=True), "train")
    tiny = {"model": "resnet1d", "width": 0.25, "epochs": 1, "batch_size": 64, "threads": 1,
            "patience": 0}

    def loss(method, attack_morph):
        options = {"eps": 0.1, "steps": 2} if method == "rdi" else {}
        config = TrainConfig(method=method, method_config=make_method_config(method, options),
                             attack_morph=attack_morph, **tiny)
        return train(beats, config).metrics["history"][0]["loss"]

    follows, held = loss("rdi", "follows"), loss("rdi", "held")
    assert math.isfinite(follows) and math.isfinite(held) and follows != held
    assert loss("standard", "follows") == loss("standard", "held")  # no attack: ignored

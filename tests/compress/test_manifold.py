"""The signal VAE, the on-manifold latent attack, label preservation, the `onmanifold` training
method and the on-manifold attack of `edgeexit evaluate`.

The VAE is trained for a few epochs on the separable test beats (one signal channel, five RR-like
context channels, 256 samples), the same windows the session's tiny checkpoint learnt.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_separable

from edgeexit.checkpoint import load_checkpoint
from edgeexit.cli import main
from edgeexit.compress.manifold import (
    LatentPGD,
    SignalVAE,
    VAEConfig,
    label_preserved,
    latent_predict,
    load_vae,
    onmanifold_accuracy,
    save_vae,
    train_vae,
)
from edgeexit.errors import CheckpointError, ConfigError
from edgeexit.models import ModelConfig, create_model
from edgeexit.robust.evaluate import EvalConfig, evaluate, format_markdown
from edgeexit.robust.methods import Batch, TrainContext, create_method, make_method_config

SMALL_VAE = VAEConfig(latent=8, channels=8, epochs=6, batch_size=64, lr=5e-3, seed=0)


@pytest.fixture(scope="module")
def beats():
    return make_separable(n=800, seed=3)


@pytest.fixture(scope="module")
def vae(beats):
    torch.set_num_threads(1)
    return train_vae(beats.x, beats.y, SMALL_VAE, signal_channels=1, num_classes=5)


@pytest.fixture(scope="module")
def vae_file(vae, tmp_path_factory):
    meta = {"classes": list("NSVFQ"), "fs": np.float64(360.0), "counts": np.array([3, 4])}
    return save_vae(tmp_path_factory.mktemp("vae") / "vae.pt", vae, meta=meta)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint).model


@pytest.fixture(scope="module")
def batch(beats):
    return torch.from_numpy(beats.x[:64]), torch.from_numpy(beats.y[:64])


# ------------------------------------------------------------------------------------- the VAE
def test_config_round_trips_and_refuses_bad_values():
    c = VAEConfig(latent=4, beta=0.5)
    assert VAEConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="latent"):
        VAEConfig(latent=0)
    with pytest.raises(ConfigError, match="lr"):
        VAEConfig(lr=0.0)
    with pytest.raises(ConfigError, match="beta"):
        VAEConfig(beta=-1.0)
    with pytest.raises(ConfigError, match="unknown VAE config keys 'latnet'"):
        VAEConfig.from_dict({"latnet": 3})


def test_vae_learns_the_signal_and_its_classes(vae, beats):
    assert vae.context_channels == 5  # the latent classifier also reads the RR context
    last = vae.history[-1]
    # reconstruction in mV, far below the centred signal's own RMS; the latent classifier works.
    # Trained here (a test of training: the numbers differ across CPUs); over VAE seeds 0-4:
    # RMS ratio 0.49-0.58, latent accuracy 0.94-1.00, last/first loss 0.29-0.40
    assert last["val_recon_rms_mV"] < 0.75 * last["val_signal_rms_mV"]
    assert last["val_latent_accuracy"] > 0.8
    assert vae.history[-1]["loss"] < 0.7 * vae.history[0]["loss"]
    x = torch.from_numpy(beats.x[:16])
    with torch.no_grad():
        rec = vae.reconstruct(x)
        # the decoder answers in mV around the window's own offset (no [0, 1] squashing)
        shifted = vae.reconstruct(x + torch.tensor([5.0, 0, 0, 0, 0, 0]).view(1, 6, 1))
    assert rec.shape == (16, 1, 256)
    assert torch.allclose(shifted, rec + 5.0, atol=1e-4)
    assert float(rec.min()) < -0.5 and float(rec.max()) > 0.5


def test_training_is_deterministic_and_leaves_the_global_rng(beats):
    cfg = dataclasses.replace(SMALL_VAE, epochs=1)
    torch.manual_seed(123)
    a = train_vae(beats.x[:200], beats.y[:200], cfg, signal_channels=1, num_classes=5)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = train_vae(beats.x[:200], beats.y[:200], cfg, signal_channels=1, num_classes=5)
    assert torch.equal(torch.rand(1), after)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    with pytest.raises(ConfigError, match="labels must lie"):
        train_vae(beats.x[:20], beats.y[:20] + 5, cfg, signal_channels=1, num_classes=5)


def test_save_load_round_trip(vae, vae_file, batch):
    x, _ = batch
    again = load_vae(vae_file)
    payload = torch.load(vae_file, weights_only=True)  # plain tensors and a config
    assert payload["config"] == SMALL_VAE.to_dict()
    assert again.config == vae.config and again.meta["classes"] == list("NSVFQ")
    assert again.meta["fs"] == 360.0 and again.meta["counts"] == [3, 4]  # numpy made plain
    assert len(again.history) == len(vae.history)
    with torch.no_grad():
        mu_a, lv_a = vae.encode(x)
        mu_b, lv_b = again.encode(x)
        assert torch.equal(mu_a, mu_b) and torch.equal(lv_a, lv_b)
        assert torch.equal(vae.decode(mu_a), again.decode(mu_b))
        assert torch.equal(vae.latent_logits(x), again.latent_logits(x))


def test_bad_vae_files_raise_typed_errors(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="VAE file not found"):
        load_vae(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00 definitely not a torch file")
    with pytest.raises(CheckpointError, match="cannot read .* as a VAE file"):
        load_vae(junk)
    with pytest.raises(CheckpointError, match="is not a VAE file"):
        load_vae(tiny_checkpoint)  # a model checkpoint is no VAE
    bad = tmp_path / "bad.pt"
    torch.save({"format": "edgeexit-vae", "version": 1, "config": {"latent": 4},
                "signal_channels": 1, "num_classes": 5, "input_length": 256,
                "state_dict": {"scale": torch.ones(1, 1, 1)}}, bad)
    with pytest.raises(CheckpointError, match="damaged VAE file"):
        load_vae(bad)


# ---------------------------------------------------------------------------------- the attack
def test_latent_attack_stays_in_budget_accumulates_and_raises_the_loss(model, vae, batch):
    x, y = batch
    eta, k = 0.6, 8
    model.train()  # the attack crafts in eval mode and restores the mode it found
    bn_before = {n: b.clone() for n, b in model.named_buffers()}
    attack = LatentPGD(model, vae, eta, steps=k, step_size=eta / 4)
    x_adv = attack(x, y)
    assert model.training and not vae.training
    assert all(torch.equal(b, bn_before[n]) for n, b in model.named_buffers())
    model.eval()
    zeta = attack.zeta
    assert zeta.shape == (64, SMALL_VAE.latent)
    assert float(zeta.abs().max()) <= eta + 1e-6
    # the steps accumulate: |zeta|_inf grows by up to a step each time until it meets the box
    # (exactly a step while some coordinate keeps its gradient's sign: steps 1-3 on every VAE
    # seed 0-4, step 4 on four of them)
    per_step = attack.stats["zeta_linf_per_step"]
    assert per_step[:3] == pytest.approx([eta / 4, eta / 2, 3 * eta / 4], abs=1e-5)
    assert all(b >= a - 1e-6 for a, b in zip(per_step, per_step[1:]))
    assert per_step[-1] == pytest.approx(eta)
    # most coordinates at the edge (0.90-0.98 over seeds 0-4)
    assert float((zeta.abs() > eta - 1e-6).float().mean()) > 0.5
    moved = attack.stats["delta_linf_per_step"]
    assert moved[-1] > 2.0 * moved[0]  # k steps move the signal farther than one (3.95-4.5x)
    assert attack.stats["mean_loss"] > attack.stats["clean_loss"] + 0.05  # +0.11-0.29
    # residual rule: the signal change is exactly decode(z0 + zeta) - decode(z0); context untouched
    with torch.no_grad():
        z0, _ = vae.encode(x)
        want = vae.decode(z0 + zeta) - vae.decode(z0)
    assert torch.allclose(x_adv[:, :1] - x[:, :1], want, atol=1e-5)
    assert torch.equal(x_adv[:, 1:], x[:, 1:])
    assert torch.equal(attack.preserved, label_preserved(vae, x_adv, y))


def test_zero_budget_gives_back_the_window_and_bad_settings_refused(model, vae, batch):
    x, y = batch
    assert torch.equal(LatentPGD(model, vae, 0.0, steps=2)(x, y), x)  # the real beat, not a blur
    decoded = LatentPGD(model, vae, 0.0, steps=2, mode="decoded")(x, y)
    assert not torch.equal(decoded[:, :1], x[:, :1]) and torch.equal(decoded[:, 1:], x[:, 1:])
    with pytest.raises(ConfigError, match="never reach eta"):
        LatentPGD(model, vae, 0.5, steps=2, step_size=0.1)
    with pytest.raises(ConfigError, match="mode"):
        LatentPGD(model, vae, 0.5, mode="sampled")
    with pytest.raises(ConfigError, match="signal channel"):
        LatentPGD(model, vae, 0.5, signal_channels=2)


def test_label_preservation_drops_what_changed_class_and_keeps_what_did_not(vae, beats):
    x = torch.from_numpy(beats.x)
    y = torch.from_numpy(beats.y)
    pred = latent_predict(vae, x)
    right = pred == y
    zeros = x[right & (y == 0)][:20]
    twos = x[right & (y == 2)][:20]
    assert len(zeros) == 20 and len(twos) == 20
    label0 = torch.zeros(20, dtype=torch.long)
    # a class-2 beat presented as a perturbed class-0 beat has changed class: dropped
    assert not label_preserved(vae, twos, label0).any()
    # a class-0 beat with a small change (noise the data has anyway): kept
    noisy = zeros + 0.02 * torch.randn(zeros.shape, generator=torch.Generator().manual_seed(0))
    assert label_preserved(vae, noisy, label0).all()


def test_larger_latent_budgets_keep_fewer_windows_and_hurt_more(model, vae, beats):
    x, y = beats.x[:160], beats.y[:160]
    small = onmanifold_accuracy(model, vae, x, y, eta=0.2, steps=5, classes=tuple("NSVFQ"))
    big = onmanifold_accuracy(model, vae, x, y, eta=3.0, steps=5, classes=tuple("NSVFQ"))
    assert small["windows"] == 160 and 0 < big["kept"] <= small["kept"] <= 160
    assert big["kept_fraction"] < small["kept_fraction"]
    assert big["mean_loss"] > small["mean_loss"] > small["clean_loss"]
    assert big["delta_linf_mV"] > small["delta_linf_mV"] > 0
    assert len(small["exits"]) == model.num_exits == len(small["clean_exits"])
    for r in (small, big):
        for e in r["exits"] + r["clean_exits"]:
            assert 0.0 <= e["accuracy"] <= 1.0 and 0.0 <= e["macro_f1"] <= 1.0
    assert big["exits"][-1]["accuracy"] <= big["clean_exits"][-1]["accuracy"]


# --------------------------------------------------------------------------- the training method
def _context(model):
    return TrainContext(model=model, exit_weights=torch.tensor([0.25, 0.5, 0.75, 1.0]),
                        class_weights=torch.tensor([1.0, 2.0, 2.0, 3.0, 3.0]), num_samples=64,
                        signal_channels=1)


def test_onmanifold_method_trains_a_step(vae_file, batch):
    torch.manual_seed(0)
    model = create_model(ModelConfig("test_resnet1d", in_channels=6, num_classes=5))
    method = create_method("onmanifold", make_method_config(
        "onmanifold", {"vae": str(vae_file), "eps": 0.3, "steps": 2, "eta": 0.5,
                       "latent_steps": 3}))
    method.setup(_context(model))
    x, y = batch
    model.train()
    loss = method.loss(model, Batch(x=x, y=y, index=torch.arange(len(x))))
    assert loss.ndim == 0 and math.isfinite(float(loss))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    s = method.summary()
    assert 0.0 <= s["kept_fraction"] <= 1.0 and s["latent_attack"]["eta"] == 0.5
    assert math.isfinite(s["attack_mean_loss"]) and math.isfinite(s["latent_attack_mean_loss"])


def test_masked_loss_counts_only_the_kept_windows(vae_file):
    model = create_model(ModelConfig("test_resnet1d", in_channels=6, num_classes=5))
    method = create_method("onmanifold", make_method_config("onmanifold", {"vae": str(vae_file)}))
    method.setup(_context(model))
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(8, 5, generator=g) for _ in range(4)]
    y = torch.randint(0, 5, (8,), generator=g)
    keep = torch.tensor([True, False, True, True, False, False, True, True])
    got = method.masked_exit_losses(logits, y, keep)
    want = method.exit_losses([z[keep] for z in logits], y[keep])
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert float(method.masked_exit_losses(logits, y, torch.zeros(8, dtype=torch.bool))) == 0.0


def test_onmanifold_method_refuses_a_missing_or_unfit_vae(tmp_path, beats):
    model = create_model(ModelConfig("test_resnet1d", in_channels=6, num_classes=5))
    with pytest.raises(ConfigError, match="needs a trained VAE"):
        create_method("onmanifold").setup(_context(model))
    missing = create_method("onmanifold", make_method_config(
        "onmanifold", {"vae": str(tmp_path / "gone.pt")}))
    with pytest.raises(ConfigError, match="cannot use its vae: VAE file not found"):
        missing.setup(_context(model))
    short = train_vae(beats.x[:100, :, :128], beats.y[:100], dataclasses.replace(SMALL_VAE, epochs=1),
                      signal_channels=1, num_classes=5)
    path = save_vae(tmp_path / "short.pt", short)
    with pytest.raises(ConfigError, match="128"):
        create_method("onmanifold", make_method_config("onmanifold", {"vae": str(path)})).setup(
            _context(model))
    with pytest.raises(ConfigError, match="never reach eta"):
        make_method_config("onmanifold", {"vae": "x", "eta": 1.0, "latent_steps": 2,
                                          "latent_step_size": 0.1})
    with pytest.raises(ConfigError, match="eta"):
        make_method_config("onmanifold", {"eta": 0})


def test_train_runs_the_onmanifold_method_end_to_end(vae_file, tmp_path):
    from edgeexit.train import TrainConfig, recorded_train_config, train

    data = make_separable(n=200, seed=5)
    config = TrainConfig(model="test_resnet1d", epochs=1, batch_size=64, threads=1, patience=0,
                         method="onmanifold", method_config=make_method_config(
                             "onmanifold", {"vae": str(vae_file), "eps": 0.3, "steps": 2,
                                            "latent_steps": 2}))
    result = train(data, config, out_dir=tmp_path)
    m = result.metrics
    assert all(math.isfinite(h["loss"]) for h in m["history"])
    assert m["method"]["name"] == "onmanifold" and 0 < m["method"]["kept_fraction"] <= 1
    assert recorded_train_config(load_checkpoint(tmp_path / "model.pt").meta) == config


# -------------------------------------------------------------------------------- evaluate
def test_evaluate_cli_runs_the_onmanifold_attack(tiny_checkpoint, vae_file, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", str(tiny_checkpoint), "--out", str(tmp_path / "ev"),
                               "--attacks", "onmanifold", "--vae", str(vae_file), "--eta", "1",
                               "--eps", "1", "--sanity-eps", "0", "--noise", "", "--limit", "40",
                               "--steps", "4", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    (entry,) = r["attacks"]
    assert entry["attack"] == "onmanifold" and entry["eta"] == 1.0
    st = entry["stats"]
    assert 0 < st["kept"] <= 40 and st["kept_fraction"] == pytest.approx(st["kept"] / 40)
    assert entry["kept"] == st["kept"] and entry["kept_fraction"] == st["kept_fraction"]
    assert st["mean_loss"] > st["clean_loss"] and st["delta_linf_mV"] > 0
    assert len(entry["exits"]) == len(entry["clean_on_kept"]["exits"]) == 4
    assert entry["exits"][-1]["accuracy"] <= entry["clean_on_kept"]["exits"][-1]["accuracy"]
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "onmanifold (eta, kept" in md and "latent units, not mV" in md
    assert md == format_markdown(r)


def test_evaluate_without_a_vae(tiny_checkpoint, tmp_path):
    res = CliRunner().invoke(main, ["evaluate", str(tiny_checkpoint), "--out", str(tmp_path / "e"),
                                    "--attacks", "onmanifold", "--noise", ""])
    assert res.exit_code == 1 and "needs the VAE" in res.output and "--vae" in res.output
    assert "onmanifold" in EvalConfig().attacks  # the default list: skipped, with a note
    with pytest.raises(ConfigError, match="needs the VAE"):
        EvalConfig(attacks=("max_avg", "onmanifold"))
    with pytest.raises(ConfigError, match="eta"):
        EvalConfig(eta=-1.0)
    res = CliRunner().invoke(main, ["evaluate", str(tiny_checkpoint), "--out", str(tmp_path / "j"),
                                    "--attacks", "onmanifold", "--vae", str(tiny_checkpoint)])
    assert res.exit_code == 1 and "not a VAE file" in res.output


def test_evaluate_bundle_crafts_on_its_checkpoint(bundle_dir, vae_file, tmp_path):
    cfg = EvalConfig(eps=(1.0,), sanity_eps=None, attacks=("onmanifold",), vae=str(vae_file),
                     eta=1.0, steps=4, noise=(), limit=40, latency_samples=5)
    r = evaluate(bundle_dir, config=cfg, out_dir=tmp_path / "b").report
    (entry,) = r["attacks"]
    assert r["target"]["kind"] == "bundle" and entry["attack"] == "onmanifold"
    assert sum(entry["exit_histogram"]) == pytest.approx(1.0) and entry["latency_us"] > 0
    assert 0 < entry["stats"]["kept"] <= 40
    assert np.isfinite(entry["policy"]["accuracy"]) and r["notes"] == []


def test_evaluate_refuses_a_vae_of_other_windows(tiny_checkpoint, beats, tmp_path):
    other = train_vae(beats.x[:100, :, :128], beats.y[:100], dataclasses.replace(SMALL_VAE, epochs=1),
                      signal_channels=1, num_classes=5)
    path = save_vae(tmp_path / "other.pt", other)
    cfg = EvalConfig(eps=(1.0,), sanity_eps=None, attacks=("onmanifold",), vae=str(path),
                     noise=(), limit=20)
    with pytest.raises(ConfigError, match="train a VAE on its data"):
        evaluate(tiny_checkpoint, config=cfg)


def test_signal_vae_shapes_odd_lengths_and_context():
    vae = SignalVAE(VAEConfig(latent=3, channels=4), signal_channels=2, num_classes=3,
                    input_length=100, context_channels=2)
    x = torch.randn(5, 4, 100)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, 3)
    assert vae.decode(mu).shape == (5, 2, 100)
    assert vae.latent_logits(x).shape == (5, 3)
    assert vae.classify(mu, vae.context_features(x)).shape == (5, 3)
    with pytest.raises(ConfigError, match="RR context"):
        vae.classify(mu)
    with pytest.raises(ConfigError, match="takes"):
        vae.encode(torch.randn(5, 1, 100))
    with pytest.raises(ConfigError, match="2 context channel"):
        vae.latent_logits(torch.randn(5, 5, 100))
    # the latent classifier's answer depends on the context, the code does not
    x2 = x.clone()
    x2[:, 2:] += 3.0
    assert torch.equal(vae.encode(x2)[0], mu)
    assert not torch.allclose(vae.latent_logits(x2), vae.latent_logits(x))


def test_waveform_only_classifier_when_asked(beats):
    cfg = dataclasses.replace(SMALL_VAE, epochs=1, classifier_context=False)
    vae = train_vae(beats.x[:100], beats.y[:100], cfg, signal_channels=1, num_classes=5)
    assert vae.context_channels == 0
    x = torch.from_numpy(beats.x[:10])
    assert torch.equal(vae.latent_logits(x), vae.latent_logits(x[:, :1]))

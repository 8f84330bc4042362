"""The robust training methods: rdi (RDI-Nets), neokd (NEO-KD), ima (IMA).

End to end: each trains a tiny model for one epoch on a few hundred synthetic beats and the
checkpoint records its settings; unit tests check the losses on fixed logits, NEO-KD's detached
teachers and class split, and IMA's margin rule and bisection on a toy model whose decision
boundary is known. The two-process (DDP) runs are in tests/test_distributed.py.
"""

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F

from edgeexit.checkpoint import load_checkpoint
from edgeexit.cli import main
from edgeexit.data import DataSpec, load_split
from edgeexit.errors import ConfigError
from edgeexit.robust.methods import (
    Batch,
    TrainContext,
    create_method,
    make_method_config,
)
from edgeexit.robust.methods.adversarial import AdversarialConfig
from edgeexit.robust.methods.ima import IMAConfig, bisect_boundary, update_margins
from edgeexit.robust.methods.neokd import NEOKDConfig, orthogonal_subsets
from edgeexit.train import TrainConfig, recorded_train_config, train

TINY = {"model": "resnet1d", "width": 0.25, "epochs": 1, "batch_size": 64, "threads": 1,
        "patience": 0}


@pytest.fixture(scope="module")
def beats():
    return load_split(DataSpec(source="synthetic", n_beats=300, seed=0), "train")


# ------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("method,options", [
    ("rdi", {"eps": 0.05, "steps": 2}),
    ("rdi", {"eps": 0.1, "steps": 2, "attack": "max-avg", "norm": "l2"}),
    ("neokd", {"eps": 0.05, "steps": 2, "alpha": 2.0, "temperature": 2.0}),
    ("ima", {"eps_step": 0.05, "steps": 2, "bisection_steps": 4}),
    ("ctxadv", {"eps": 0.05, "steps": 2, "timing_ms": 30.0}),
])
def test_method_trains_and_the_checkpoint_records_its_settings(beats, tmp_path, method, options):
    config = TrainConfig(method=method, method_config=make_method_config(method, options), **TINY)
    result = train(beats, config, out_dir=tmp_path)
    m = result.metrics
    assert all(math.isfinite(h["loss"]) for h in m["history"])
    assert m["method"]["name"] == method
    meta = load_checkpoint(tmp_path / "model.pt").meta
    assert meta["train_config"]["method_config"] == config.method_config.to_dict()
    rebuilt = recorded_train_config(meta)
    assert rebuilt == config and type(rebuilt.method_config) is type(config.method_config)
    if method == "ima":
        margins = m["method"]["margins_mV"]
        assert 0 < margins["min"] <= margins["median"] <= margins["max"] <= 0.2
        assert m["method"]["last_epoch"]["seen"] > 0


def test_configs_refuse_bad_settings():
    with pytest.raises(ConfigError, match="eps must be"):
        AdversarialConfig(eps=0.0)
    with pytest.raises(ConfigError, match="never reach eps"):
        AdversarialConfig(eps=0.1, steps=2, step_size=0.01)
    with pytest.raises(ConfigError, match="avg, max-avg"):
        AdversarialConfig(attack="max")
    with pytest.raises(ConfigError, match="linf, l2"):
        IMAConfig(norm="l1")
    with pytest.raises(ConfigError, match="exceeds eps_max"):
        IMAConfig(eps_step=0.5, eps_max=0.2)
    with pytest.raises(ConfigError, match="beta"):
        IMAConfig(beta=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        NEOKDConfig(temperature=0)
    with pytest.raises(ConfigError, match="does not take alpha"):
        make_method_config("rdi", {"alpha": 3})
    assert AdversarialConfig(eps=0.1, steps=5).resolved_step_size == pytest.approx(0.05)


# ------------------------------------------------------------------------------- loss maths
def _context(model=None, exit_weights=(0.4, 1.0), class_weights=(1.0, 2.0, 0.5)):
    return TrainContext(model=model or nn.Identity(), exit_weights=torch.tensor(exit_weights),
                        class_weights=None if class_weights is None else torch.tensor(class_weights),
                        num_samples=8, signal_channels=1)


def _logits(y, wrong=(), classes=3):
    """Logits that answer ``y`` with certainty, except the samples ``wrong``: uniform (CE = log C)."""
    z = torch.full((len(y), classes), -50.0)
    z[torch.arange(len(y)), y] = 50.0
    z[list(wrong)] = 0.0
    return z


def test_rdi_loss_halves_clean_and_adversarial_and_weights_exits_and_classes():
    """Behaviour from first principles: a certain right answer costs 0, a uniform one log C; the
    clean and the adversarial half count 0.5 each, exit i counts w_i, a class-c beat w_c."""
    rdi = create_method("rdi")
    rdi.context = _context()  # exit weights (0.4, 1.0), class weights (1, 2, 0.5); no attack
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    right, lost = _logits(y), _logits(y, wrong=range(6))
    log3 = math.log(3)
    assert float(rdi.rdi_loss([right, right], [right, right], y)) == pytest.approx(0.0, abs=1e-6)
    assert float(rdi.rdi_loss([lost, lost], [lost, lost], y)) == pytest.approx(1.4 * log3)
    # a lost adversarial half costs half of a lost clean-and-adversarial pair; clean and
    # adversarial count alike
    assert float(rdi.rdi_loss([right, right], [lost, lost], y)) == pytest.approx(0.7 * log3)
    assert float(rdi.rdi_loss([lost, lost], [right, right], y)) == pytest.approx(0.7 * log3)
    # exit 0 counts 0.4, exit 1 counts 1.0
    assert float(rdi.rdi_loss([lost, right], [lost, right], y)) == pytest.approx(0.4 * log3)
    assert float(rdi.rdi_loss([right, lost], [right, lost], y)) == pytest.approx(1.0 * log3)
    # one lost class-1 beat (weight 2) costs 4 times one lost class-2 beat (weight 0.5)
    one_s = rdi.rdi_loss([_logits(y, [1])] * 2, [_logits(y, [1])] * 2, y)
    one_q = rdi.rdi_loss([_logits(y, [2])] * 2, [_logits(y, [2])] * 2, y)
    assert float(one_s) == pytest.approx(4 * float(one_q), rel=1e-5)
    with pytest.raises(ConfigError, match="2 exit weights for a model with 3 exits"):
        rdi.rdi_loss([right] * 3, [right] * 3, y)


def test_neokd_teachers_are_detached_and_the_kl_runs_teacher_to_student():
    neo = create_method("neokd")
    neo.context = _context(exit_weights=(0.5, 0.75, 1.0), class_weights=None)
    g = torch.Generator().manual_seed(1)
    clean = [torch.randn(5, 4, generator=g).requires_grad_(True) for _ in range(3)]
    adv = [torch.randn(5, 4, generator=g).requires_grad_(True) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 3, 0])
    nkd, eokd = neo.kd_terms(clean, adv, y)
    (nkd.sum() + eokd.sum()).backward()
    nkd, eokd = nkd.detach(), eokd.detach()
    assert all(z.grad is None for z in clean)  # no gradient into the teachers
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in adv)
    # exit 0's neighbours are exits 0 and 1; the last exit's are 1 and 2; KL(teacher || student)
    for i, near in ((0, (0, 1)), (1, (0, 1, 2)), (2, (1, 2))):
        t = torch.stack([F.softmax(clean[j].detach(), -1) for j in near]).mean(0)
        s = F.log_softmax(adv[i].detach(), -1)
        assert float(nkd[i]) == pytest.approx(float((t * (t.log() - s)).sum(-1).mean()), rel=1e-5)
    # the full loss: RDI + alpha * sum w NKD + beta * sum w EOKD
    w = neo.exit_weights
    with torch.no_grad():
        total = neo.rdi_loss(clean, adv, y) + 3.0 * (w * nkd).sum() + 1.0 * (w * eokd).sum()
        assert float(neo.neokd_loss(clean, adv, y)) == pytest.approx(float(total), rel=1e-6)


def test_neokd_eokd_reads_only_the_true_class_and_its_own_subset():
    neo = create_method("neokd")
    neo.context = _context(exit_weights=(0.5, 1.0), class_weights=None)
    g = torch.Generator().manual_seed(2)
    clean = [torch.randn(4, 5, generator=g) for _ in range(2)]
    adv = [torch.randn(4, 5, generator=g) for _ in range(2)]
    y = torch.tensor([0, 1, 2, 3])
    _, eokd = neo.kd_terms(clean, adv, y)
    subsets = neo.subsets(5, 2)
    # push up a class that exit 0 does not distil for sample 0 (neither true nor in its subset)
    foreign = next(k for k in range(5) if k != 0 and not subsets[0, 0, k])
    moved = [z.clone() for z in adv]
    moved[0][0, foreign] += 5.0
    _, eokd2 = neo.kd_terms(clean, moved, y)
    assert float(eokd2[0]) == pytest.approx(float(eokd[0]), rel=1e-6)
    assert float(eokd2[1]) == pytest.approx(float(eokd[1]), rel=1e-6)
    with pytest.raises(ConfigError, match="one per exit"):
        neo.kd_terms(clean + [clean[0]], adv + [adv[0]], y)


@pytest.mark.parametrize("classes,exits", [(5, 4), (5, 3), (10, 3), (3, 4)])
def test_neokd_orthogonal_subsets_are_disjoint_and_cover_the_non_true_classes(classes, exits):
    m = orthogonal_subsets(classes, exits, torch.Generator().manual_seed(0))
    assert m.shape == (classes, exits, classes)
    for c in range(classes):
        counts = m[c].sum(0)  # how many exits distil each class
        assert counts[c] == 0
        assert all(int(counts[k]) == 1 for k in range(classes) if k != c)
        sizes = m[c].sum(1).tolist()
        assert max(sizes) - min(sizes) <= 1


# ----------------------------------------------------------------------------------------- IMA
class Toy(nn.Module):
    """Two identical exits over the mean of the signal channel: class 1 iff mean(x[:, 0]) > 0."""

    num_exits = 2

    def forward_until(self, x, k):
        s = x[:, 0].mean(-1)
        z = torch.stack([torch.zeros_like(s), 4.0 * s], dim=1)
        return [z] * (k + 1)

    def forward(self, x):
        return self.forward_until(x, 1)


def test_ima_margin_rule():
    eps = torch.tensor([0.10, 0.19, 0.10, 0.10])
    correct = torch.tensor([True, True, True, False])
    found = torch.tensor([False, False, True, False])
    dist = torch.tensor([0.0, 0.0, 0.04, 0.0])
    new = update_margins(eps, correct, found, dist, eps_step=0.02, eps_max=0.2)
    assert new.tolist() == pytest.approx([0.12, 0.2, 0.07, 0.05])


def test_ima_bisection_lands_on_the_boundary():
    s0 = torch.tensor([-0.3, -0.05, -0.9])
    x = torch.zeros(3, 2, 32) + s0.view(-1, 1, 1)
    x[:, 1] = 0.7  # a context channel
    x_adv = x.clone()
    x_adv[:, 0] += 1.0  # crosses the boundary at t* = -s0
    y = torch.zeros(3, dtype=torch.long)
    for steps in (3, 8):
        x_bd, t = bisect_boundary(Toy(), x, x_adv, y, steps)
        assert (t - (-s0)).abs().max() <= 2.0 ** -(steps + 1) + 1e-6
        assert x_bd[:, 0].mean(-1).abs().max() <= 2.0 ** -(steps + 1) + 1e-6
        assert torch.equal(x_bd[:, 1], x[:, 1])


def test_ima_grows_a_safe_margin_and_shrinks_one_with_an_adversarial_example():
    toy = Toy()
    ima = create_method("ima", make_method_config("ima", {"eps_step": 0.02, "eps_max": 0.2,
                                                         "steps": 5, "bisection_steps": 10}))
    ima.setup(TrainContext(model=toy, exit_weights=torch.tensor([0.5, 1.0]), class_weights=None,
                           num_samples=6, signal_channels=1))
    ima.margins[:] = 0.1
    # sample 0 sits 0.5 mV from the boundary, sample 1 0.04 mV, sample 2 is on the wrong side
    s0 = torch.tensor([-0.5, -0.04, 0.3])
    x = torch.zeros(3, 2, 32) + s0.view(-1, 1, 1)
    y = torch.zeros(3, dtype=torch.long)
    batch = Batch(x=x, y=y, index=torch.tensor([4, 1, 2]))
    x_train = ima.training_points(batch)
    m = ima.margins
    assert float(m[4]) == pytest.approx(0.12)  # correct, nothing inside its margin: grows
    # PGD found an example inside 0.1 mV: the margin moves to the midpoint of 0.1 and the Linf
    # distance of the boundary point on the segment x -> x_adv (at least the true 0.04 mV)
    found = float((x_train[1, 0] - x[1, 0]).abs().max())
    assert 0.04 - 1e-3 <= found <= 0.1 + 1e-6
    assert float(m[1]) == pytest.approx((0.1 + found) / 2, abs=1e-6)
    assert float(m[2]) == pytest.approx(0.05)  # misclassified: distance 0
    assert float(m[0]) == float(m[3]) == float(m[5]) == pytest.approx(0.1)  # untouched
    assert abs(float(x_train[1, 0].mean())) < 1e-3  # the training point is on the boundary
    assert torch.equal(x_train[2], x[2])  # a misclassified sample trains on itself
    assert torch.equal(x_train[:, 1], x[:, 1])  # context channels never move
    summary = ima.summary()
    assert summary["margins_mV"]["max"] == pytest.approx(0.12)
    assert summary["margins_mV"]["min"] == pytest.approx(0.05)
    assert math.isfinite(float(ima.loss(toy, batch)))


# ----------------------------------------------------------------------------------------- CLI
CLI_FAST = ["--n-beats", "300", "--model", "resnet1d", "--width", "0.25", "--epochs", "1",
            "--batch-size", "64", "--threads", "1", "--no-progress"]


def test_cli_passes_the_method_options_given(tmp_path):
    out = tmp_path / "rdi"
    r = CliRunner().invoke(main, ["train", "--out", str(out), "--method", "rdi", "--eps", "0.05",
                                  "--attack-steps", "2", *CLI_FAST], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "method: rdi (eps=0.05, norm=linf, steps=2" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_config"]["method"] == "rdi"
    assert m["train_config"]["method_config"] == {"eps": 0.05, "norm": "linf", "steps": 2,
                                                  "step_size": None, "attack": "avg"}


@pytest.mark.parametrize("args,flag", [(["--method", "standard", "--eps", "0.1"], "--eps"),
                                       (["--method", "ima", "--kd-beta", "2"], "--kd-beta"),
                                       (["--method", "neokd", "--ima-beta", "0.3"], "--ima-beta")])
def test_cli_refuses_an_option_the_method_does_not_take(tmp_path, args, flag):
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "x"), *args, *CLI_FAST])
    assert r.exit_code != 0
    assert f"does not take {flag}" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()

"""Structured pruning: channels really removed, exits consistent, pruned checkpoints that reload,
export and run in the runtime, and a user's own MultiExitNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeexit.checkpoint import load_checkpoint, save_checkpoint
from edgeexit.compress.prune import PruneConfig, classifier_layers, prune_model
from edgeexit.errors import CheckpointError, ConfigError
from edgeexit.models import ModelConfig, MultiExitNet, create_model
from edgeexit.models.plan import apply_channel_plan, channel_plan


def _model(family="test_resnet1d", seed=0, width=2.0) -> MultiExitNet:
    """A tiny model whose batch-norm scales differ (a fresh build has them all 1: every channel
    ties under bn-scale importance)."""
    torch.manual_seed(seed)
    m = create_model(ModelConfig(family, in_channels=6, num_classes=5, width=width))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.weight.uniform_(0.2, 1.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _x(n=8, seed=0) -> torch.Tensor:
    return torch.randn(n, 6, 256, generator=torch.Generator().manual_seed(seed))


def _convs(m):
    return {n: tuple(mod.weight.shape) for n, mod in m.named_modules() if isinstance(mod, nn.Conv1d)}


@pytest.mark.parametrize("family", ["test_resnet1d", "test_mobilenet1d", "resnet1d"])
def test_pruning_removes_channels_and_keeps_every_exit(family):
    m = _model(family, width=1.0 if family == "resnet1d" else 2.0)
    x = _x()
    before = _convs(m)
    n_params = sum(p.numel() for p in m.parameters())
    report = prune_model(m, PruneConfig(ratio=0.5, min_channels=1), x[:2])
    after = _convs(m)
    assert sum(p.numel() for p in m.parameters()) == report.params_after < n_params
    assert report.macs_after[-1] < 0.5 * report.macs_before[-1]
    shrunk = [n for n in before if after[n][0] < before[n][0]]
    assert len(shrunk) >= len(before) // 2  # output channels really gone, not masked
    for k in range(m.num_exits):
        assert report.channels_after[k] < report.channels_before[k]
    with torch.no_grad():
        logits = m(x)
        early = m.forward_until(x, 1)
    assert [tuple(z.shape) for z in logits] == [(8, 5)] * m.num_exits
    assert torch.allclose(early[1], logits[1], atol=1e-5)
    assert all(layer.out_features == 5 for layer in classifier_layers(m))


def test_ratio_075_leaves_under_30_percent_of_the_macs():
    m = _model("resnet1d", width=1.0)
    report = prune_model(m, PruneConfig(ratio=0.75), _x()[:2])
    assert report.macs_after[-1] <= 0.3 * report.macs_before[-1]
    assert report.to_dict()["macs_ratio"] == pytest.approx(report.macs_after[-1] / report.macs_before[-1])


def test_no_stage_is_pruned_below_min_channels():
    m = _model("resnet1d", width=1.0)  # stage channels 16, 32, 64, 128
    report = prune_model(m, PruneConfig(ratio=0.75, min_channels=8), _x()[:2])
    assert report.channels_after == (8, 8, 16, 32)  # stage 0 keeps 8, not 4
    assert report.macs_after[-1] <= 0.3 * report.macs_before[-1]
    m = _model("resnet1d", width=1.0)
    assert prune_model(m, PruneConfig(ratio=0.75, min_channels=1), _x()[:2]).channels_after == (
        4, 8, 16, 32)
    with pytest.raises(ConfigError, match="min_channels"):
        PruneConfig(min_channels=0)


def test_stage_ratios_prune_each_stage_by_its_own_ratio():
    m = _model("resnet1d", width=1.0)
    report = prune_model(m, PruneConfig(stage_ratios=(0.0, 0.0, 0.5, 0.75)), _x()[:2])
    assert report.channels_after[:2] == report.channels_before[:2]
    assert report.channels_after[2] == report.channels_before[2] // 2
    assert report.channels_after[3] == report.channels_before[3] // 4
    with pytest.raises(ConfigError, match="4 stages"):
        prune_model(_model(), PruneConfig(stage_ratios=(0.5, 0.5)), _x()[:2])


@pytest.mark.parametrize("importance", ["magnitude", "bn-scale", "taylor"])
@pytest.mark.parametrize("scope", ["per-stage", "global"])
def test_importance_criteria_and_scopes(importance, scope):
    m = _model("resnet1d", width=1.0)
    x = _x(32)
    y = torch.arange(32) % 5
    report = prune_model(m, PruneConfig(ratio=0.5, importance=importance, scope=scope), x[:2],
                         data=(x, y))
    assert report.macs_after[-1] < 0.7 * report.macs_before[-1]
    assert all(p.grad is None for p in m.parameters())  # taylor's gradients are not left behind


def test_criteria_choose_different_channels():
    kept = {}
    for importance in ("magnitude", "bn-scale"):
        m = _model(width=2.0)
        prune_model(m, PruneConfig(ratio=0.5, importance=importance), _x()[:2])
        kept[importance] = m.stages[3][0].conv2.weight.detach().clone()
    assert kept["magnitude"].shape == kept["bn-scale"].shape
    assert not torch.equal(kept["magnitude"], kept["bn-scale"])


def test_taylor_needs_data_and_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="training data"):
        prune_model(_model(), PruneConfig(importance="taylor"), _x()[:2])
    for bad in ({"ratio": 1.0}, {"ratio": -0.1}, {"importance": "l7"}, {"scope": "local"},
                {"steps": 0}, {"stage_ratios": (0.5, 1.2)}):
        with pytest.raises(ConfigError):
            PruneConfig(**bad)
    assert PruneConfig.from_dict(PruneConfig(stage_ratios=(0.1, 0.2)).to_dict()) == PruneConfig(
        stage_ratios=(0.1, 0.2))


def test_iterative_pruning_calls_between_after_every_step_but_the_last():
    m = _model()
    calls = []

    def between(step):
        assert not m.training
        calls.append((step, sum(p.numel() for p in m.parameters())))
        m.train()  # a fine-tuning step leaves the model in train mode; prune_model resets it

    report = prune_model(m, PruneConfig(ratio=0.5, steps=3), _x()[:2], between=between)
    assert [c[0] for c in calls] == [0, 1]
    assert calls[0][1] > calls[1][1] > report.params_after  # each step removes more
    assert not m.training


def test_zero_ratio_changes_nothing():
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    report = prune_model(m, PruneConfig(ratio=0.0), _x()[:2])
    assert report.params_after == report.params_before
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_pruned_checkpoint_reloads_from_the_file_alone(tmp_path):
    m = _model("test_mobilenet1d")  # depthwise convolutions: pruning changes their groups
    prune_model(m, PruneConfig(ratio=0.5), _x()[:2])
    path = save_checkpoint(tmp_path / "p.pt", m, classes=tuple("NSVFQ"),
                           input_spec={"shape": [6, 256]})
    ck = load_checkpoint(path)
    x = _x()
    with torch.no_grad():
        for a, b in zip(m(x), ck.model(x)):
            assert torch.equal(a, b)
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == 2 and raw["channel_plan"]
    groups = [s["groups"] for s in raw["channel_plan"].values() if s["type"] == "Conv1d"]
    assert any(g > 1 for g in groups)
    # an unpruned model stores an empty plan
    path2 = save_checkpoint(tmp_path / "u.pt", _model(), classes=tuple("NSVFQ"),
                            input_spec={"shape": [6, 256]})
    assert torch.load(path2, weights_only=True)["channel_plan"] == {}


def test_a_plan_for_another_architecture_is_refused(tmp_path):
    m = _model()
    prune_model(m, PruneConfig(ratio=0.5), _x()[:2])
    plan = channel_plan(m, reference=_model())
    with pytest.raises(CheckpointError, match="another architecture"):
        apply_channel_plan(_model("test_mobilenet1d"), plan)
    payload = torch.load(save_checkpoint(tmp_path / "p.pt", m, classes=tuple("NSVFQ"),
                                         input_spec={"shape": [6, 256]}), weights_only=True)
    payload["channel_plan"] = {"stages.9.conv": {"type": "Conv1d", "in": 4, "out": 4, "groups": 1}}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt.*does not have"):
        load_checkpoint(tmp_path / "bad.pt")


class _UserNet(MultiExitNet):
    """A user's own two-exit model: plain convolutions, a 1x1-convolution classifier head."""

    def __init__(self):
        stages = [
            nn.Sequential(nn.Conv1d(6, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU()),
            nn.Sequential(nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.BatchNorm1d(32), nn.ReLU()),
        ]
        exits = [
            nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Conv1d(16, 3, 1), nn.Flatten()),
            nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 3)),
        ]
        super().__init__(stages, exits)


def test_a_users_own_multiexitnet_prunes_and_rebuilds_from_its_plan():
    torch.manual_seed(0)
    m = _UserNet().eval()
    x = _x()
    report = prune_model(m, PruneConfig(ratio=0.5, min_channels=1), x[:2])
    assert report.channels_after == (8, 16)
    with torch.no_grad():
        out = m(x)
    assert [tuple(z.shape) for z in out] == [(8, 3), (8, 3)]
    fresh = apply_channel_plan(_UserNet(), channel_plan(m, reference=_UserNet()))
    fresh.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(out, fresh.eval()(x)))


def test_pruned_model_exports_and_runs_in_the_runtime(tiny_checkpoint, tmp_path):
    from edgeexit.export.bundle import ExportConfig, export_bundle
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.verify import verify_bundle

    ck = load_checkpoint(tiny_checkpoint)
    m = ck.model
    x = torch.from_numpy(np.load(tiny_checkpoint.parent.parent / "beats.npz")["x"][:16])
    prune_model(m, PruneConfig(ratio=0.5), x[:2])
    path = save_checkpoint(tmp_path / "pruned.pt", m, classes=ck.classes,
                           input_spec=ck.input_spec, meta=ck.meta)
    out = tmp_path / "bundle"
    export_bundle(path, out, ExportConfig(target="x86_64", formats=("onnx",), golden_samples=8,
                                          calibration_samples=64, monolithic=False))
    assert verify_bundle(out).ok
    engine = Engine.from_bundle(out, backend="onnxruntime", threads=1)
    with torch.no_grad():
        want = m(x)
    got, _ = engine.run_all(x.numpy())
    for k in range(m.num_exits):
        np.testing.assert_allclose(got[k], want[k].numpy(), atol=1e-4)
    result = engine.predict(x[0].numpy())
    assert result.label == int(want[result.exit_index][0].argmax())

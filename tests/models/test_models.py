import pytest
import torch
from torch import nn

from edgeexit.errors import ConfigError
from edgeexit.models import (
    InputNorm,
    ModelConfig,
    MultiExitNet,
    create_model,
    list_models,
    profile_model,
)

FAMILIES = sorted(list_models())
MIN_EXITS = {"resnet1d": 4, "mobilenet1d": 3}


def _cfg(name, c=6, k=5, length=256):
    return ModelConfig(name, in_channels=c, num_classes=k, input_length=length)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_returns_logits_of_every_exit(name):
    torch.manual_seed(0)
    model = create_model(_cfg(name)).eval()
    x = torch.randn(3, 6, 256)
    out = model(x)
    assert len(out) == model.num_exits >= 3
    assert all(o.shape == (3, 5) for o in out)
    for k in range(model.num_exits):
        early = model.forward_until(x, k)
        assert len(early) == k + 1
        torch.testing.assert_close(early[-1], out[k])


@pytest.mark.parametrize("name", ["resnet1d", "mobilenet1d"])
def test_full_size_families_have_enough_exits(name):
    assert create_model(_cfg(name)).num_exits >= MIN_EXITS[name]


def test_mobilenet_uses_depthwise_convolutions():
    model = create_model(_cfg("mobilenet1d"))
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv1d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels for m in depthwise)


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_until_does_not_compute_later_stages(name):
    model = create_model(_cfg(name)).eval()
    ran = []
    for k, stage in enumerate(model.stages):
        stage.register_forward_hook(lambda *_, k=k: ran.append(k))
    model.forward_until(torch.randn(1, 6, 256), 1)
    assert ran == [0, 1]


@pytest.mark.parametrize("name", FAMILIES)
def test_profile_costs_grow_with_every_exit(name):
    model = create_model(_cfg(name))
    costs = profile_model(model, (6, 256))
    assert len(costs) == model.num_exits
    cum = [c.cumulative_macs for c in costs]
    assert all(a < b for a, b in zip(cum, cum[1:])), cum
    assert all(c.stage_macs > 0 and c.head_macs > 0 for c in costs)
    assert sum(c.stage_params + c.head_params for c in costs) == sum(
        p.numel() for p in model.parameters()
    )
    assert cum[-1] == sum(c.stage_macs + c.head_macs for c in costs)


def test_profile_counts_a_known_convolution():
    stage = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1, bias=False))
    head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 10, 3))
    costs = profile_model(MultiExitNet([stage], [head]), (2, 10))
    assert costs[0].stage_macs == 10 * 4 * 2 * 3
    assert costs[0].head_macs == 40 * 3
    assert costs[0].feature_shape == (4, 10)


def test_input_norm_centres_signal_and_standardises():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 50) * torch.tensor([2.0, 0.1, 5.0]).view(1, 3, 1) + 7.0
    norm = InputNorm(3, signal_channels=1)
    norm.fit(x)
    y = norm(x)
    assert y.mean(dim=(0, 2)).abs().max() < 1e-4
    assert (y.std(dim=(0, 2)) - 1).abs().max() < 1e-2
    # the signal channel is centred per window: a baseline offset changes nothing
    torch.testing.assert_close(norm(x + torch.tensor([3.0, 0, 0]).view(1, 3, 1))[:, 0], y[:, 0])


def test_user_model_contract():
    stages = [nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU()), nn.Sequential(nn.Conv1d(4, 4, 3))]
    exits = [nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2)) for _ in range(2)]
    net = MultiExitNet(stages, exits)
    assert [o.shape for o in net(torch.randn(2, 1, 20))] == [(2, 2), (2, 2)]
    with pytest.raises(ConfigError):
        MultiExitNet(stages, exits[:1])
    with pytest.raises(IndexError):
        net.forward_until(torch.randn(2, 1, 20), 2)


def test_unknown_model_and_bad_config():
    with pytest.raises(ConfigError, match="known models"):
        create_model(_cfg("resnet9000"))
    with pytest.raises(ConfigError):
        ModelConfig("resnet1d", in_channels=0, num_classes=5)
    with pytest.raises(ConfigError, match="unknown model config keys"):
        ModelConfig.from_dict({"family": "resnet1d", "in_channels": 1, "num_classes": 2, "x": 1})
    cfg = _cfg("resnet1d")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_width_multiplier_scales_parameters():
    small = create_model(ModelConfig("resnet1d", 6, 5, width=0.5))
    big = create_model(ModelConfig("resnet1d", 6, 5, width=1.0))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters()) / 2


@pytest.mark.parametrize("name", FAMILIES)
def test_linear_exit_heads_are_cheaper_and_keep_the_final_exit(name):
    conv = create_model(_cfg(name))
    lin = create_model(ModelConfig(name, 6, 5, exit_heads="linear"))
    c_costs, l_costs = profile_model(conv, (6, 256)), profile_model(lin, (6, 256))
    for c, ln in zip(c_costs[:-1], l_costs[:-1]):
        assert ln.stage_macs == c.stage_macs and ln.head_macs < c.head_macs
        # pooling + linear: C x classes MACs and C x classes + classes parameters
        assert ln.head_params == ln.feature_shape[0] * 5 + 5
    assert l_costs[-1].head_macs == c_costs[-1].head_macs  # the final exit is the same
    out = lin.eval()(torch.randn(2, 6, 256))
    assert len(out) == conv.num_exits and all(o.shape == (2, 5) for o in out)


def test_exit_heads_is_checked_and_old_configs_default_to_conv():
    with pytest.raises(ConfigError, match="exit_heads must be one of conv, linear"):
        ModelConfig("resnet1d", 6, 5, exit_heads="mlp")
    old = {"family": "resnet1d", "in_channels": 6, "num_classes": 5}  # a checkpoint from before
    assert ModelConfig.from_dict(old).exit_heads == "conv"
    cfg = ModelConfig("resnet1d", 6, 5, exit_heads="linear")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg

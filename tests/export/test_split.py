"""Splitting a MultiExitNet into segments computes exactly what the model computes."""

import pytest
import torch
from torch import nn

from edgeexit.errors import ConfigError
from edgeexit.export.split import Monolithic, segment_inputs, segment_specs, split_model
from edgeexit.models import ModelConfig, MultiExitNet, create_model, list_models
from tests.conftest import chain_segments


@pytest.mark.parametrize("family", list(list_models()))
def test_segments_chain_to_the_model_for_every_family(family):
    torch.manual_seed(0)
    model = create_model(ModelConfig(family, in_channels=8, num_classes=5)).eval()
    x = torch.randn(3, 8, 256)
    with torch.no_grad():
        ref = model(x)
        got = chain_segments(split_model(model), x)[1]
        mono = Monolithic(model)(x)
    assert len(got) == model.num_exits
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(mono, ref[-1], rtol=0, atol=0)
    specs = segment_specs(model, (8, 256))
    assert specs[0].input_name == "input" and specs[0].input_shape == (8, 256)
    for k, s in enumerate(specs[1:], 1):
        assert s.input_name == f"feat_{k - 1}" and s.input_shape == specs[k - 1].output_shapes[0]
    assert specs[-1].output_names == (f"logits_{model.num_exits - 1}",)
    assert sum(s.params for s in specs) == sum(p.numel() for p in model.parameters())
    assert [t.shape[1:] for t in segment_inputs(model, x)] == [torch.Size(s.input_shape) for s in specs]


def test_a_users_own_model_splits():
    stages = [nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU()), nn.Conv1d(4, 6, 3, stride=2)]
    heads = [nn.Sequential(nn.Flatten(), nn.Linear(4 * 32, 3)),
             nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 3))]
    model = MultiExitNet(stages, heads).eval()
    specs = segment_specs(model, (2, 32))
    assert [s.output_shapes for s in specs] == [((4, 32), (3,)), ((3,),)]
    x = torch.randn(2, 2, 32)
    with torch.no_grad():
        for a, b in zip(chain_segments(split_model(model), x)[1], model(x)):
            torch.testing.assert_close(a, b)


def test_only_multi_exit_nets_split():
    with pytest.raises(ConfigError, match="MultiExitNet"):
        split_model(nn.Linear(3, 3))

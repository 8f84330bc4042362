"""Late fusion of the context channels (models.fusion): wiring, pruning, checkpoint and bundle."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgeexit.checkpoint import load_checkpoint
from edgeexit.compress.prune import PruneConfig, prune_model
from edgeexit.errors import ConfigError
from edgeexit.export.split import split_model
from edgeexit.models import ModelConfig, create_model
from edgeexit.models.base import InputNorm
from edgeexit.models.fusion import CarryContext, ContextHead
from edgeexit.models.plan import apply_channel_plan, channel_plan
from tests.conftest import chain_segments, make_separable

K = 5  # context channels of make_separable(channels=6)


def _fused(family: str = "test_resnet1d", width: float = 1.0) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    data = make_separable(n=64, seed=1)
    x = torch.from_numpy(data.x)
    x[:, 1:] = x[:, 1:, :1]  # context channels are constant over a window
    model = create_model(ModelConfig(family, in_channels=1 + K, num_classes=5, width=width,
                                     context_fusion=True))
    model.fit_input_norm(x)
    return model.eval(), x


@pytest.mark.parametrize("family", ["test_resnet1d", "test_mobilenet1d"])
def test_every_boundary_carries_the_normalised_context(family):
    model, x = _fused(family)
    norm = next(m for m in model.modules() if isinstance(m, InputNorm))
    assert isinstance(model.stages[0], CarryContext) and all(isinstance(h, ContextHead) for h in model.exits)
    with torch.no_grad():
        want = norm(x)[:, -K:, :1]  # [N, K, 1]
        plain = [s.stage for s in model.stages]
        h = x
        for k, feat in enumerate(model.features(x)):
            h = plain[k](h if k == 0 else h[:, :-K])
            assert feat.shape == (len(x), h.shape[1] + K, h.shape[2])
            torch.testing.assert_close(feat[:, :-K], h)
            torch.testing.assert_close(feat[:, -K:], want.expand(-1, -1, h.shape[2]))
            h = feat


def test_every_exit_adds_a_linear_term_in_the_context():
    model, x = _fused()
    norm = next(m for m in model.modules() if isinstance(m, InputNorm))
    with torch.no_grad():
        for h in model.exits:  # silence the convolutional heads: only the context term is left
            last = [m for m in h.head.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.zero_()
            last.bias.zero_()
        ctx = norm(x)[:, -K:, 0]
        for k, logits in enumerate(model(x)):
            torch.testing.assert_close(logits, model.exits[k].context_fc(ctx))
        x2 = x.clone()
        x2[:, 1:] += 0.5  # another rhythm: every exit's answer moves
        assert all((a - b).abs().max() > 1e-3 for a, b in zip(model(x), model(x2)))


def test_segments_chain_to_the_model():
    model, x = _fused()
    _, logits = chain_segments(split_model(model), x)
    with torch.no_grad():
        for a, b in zip(logits, model(x)):
            torch.testing.assert_close(a, b)


def test_fusion_without_context_channels_is_refused():
    with pytest.raises(ConfigError, match="context fusion needs context channels"):
        create_model(ModelConfig("test_resnet1d", in_channels=1, num_classes=5, context_fusion=True))


def test_pruning_removes_feature_channels_and_keeps_the_context_path():
    model, x = _fused(width=4.0)
    fc_before = [h.context_fc.weight.clone() for h in model.exits]
    channels = [f.shape[1] for f in model.features(x)]
    pruned = copy.deepcopy(model)
    report = prune_model(pruned, PruneConfig(ratio=0.5), example=x[:2])
    assert report.macs_after[-1] < 0.5 * report.macs_before[-1]
    with torch.no_grad():
        after = [f.shape[1] for f in pruned.features(x)]
        assert all(a < c for a, c in zip(after, channels))
        assert [int(c) for c in report.channels_after] == [a - K for a in after]
        for h, w in zip(pruned.exits, fc_before):
            torch.testing.assert_close(h.context_fc.weight, w)
        _, logits = chain_segments(split_model(pruned), x)
        for a, b in zip(logits, pruned(x)):
            torch.testing.assert_close(a, b)
        fresh = apply_channel_plan(create_model(model.config), channel_plan(pruned, create_model(model.config)))
        fresh.load_state_dict(pruned.state_dict())
        torch.testing.assert_close(fresh.eval()(x)[-1], pruned(x)[-1])


def test_trained_fused_model_saves_exports_and_runs_on_the_device(tmp_path):
    from edgeexit.data import DataSpec
    from edgeexit.export.bundle import ExportConfig, export_bundle
    from edgeexit.runtime.backends import get_backend
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.verify import verify_bundle
    from edgeexit.train import TrainConfig, train

    data = make_separable(n=160, seed=3)
    npz = tmp_path / "beats.npz"
    data.save_npz(npz)
    result = train(data, TrainConfig(model="test_resnet1d", context_fusion=True, epochs=1,
                                     batch_size=32, threads=1, seed=0),
                   out_dir=tmp_path / "run", data_spec=DataSpec(source=str(npz)))
    model = load_checkpoint(result.checkpoint).model.eval()
    assert model.config.context_fusion and isinstance(model.exits[-1], ContextHead)
    out = tmp_path / "bundle"
    # two segments (exits 1 and 3): a boundary that carries the context, and a merged segment
    export_bundle(result.checkpoint, out, ExportConfig(target="x86_64", precision="fp32", exits=(1, 3),
                                                       golden_samples=8, calibration_samples=32,
                                                       monolithic=False))
    report = verify_bundle(out)
    assert report.ok, report.to_dict()
    with np.load(out / "golden.npz") as z:
        x = z["inputs"]
    with torch.no_grad():
        want = [lg.numpy() for lg in model(torch.from_numpy(x))]
    ran = 0
    for backend in ("onnxruntime", "litert"):
        if not get_backend(backend).available():
            continue
        logits, _ = Engine.from_bundle(out, backend=backend, threads=1).run_all(x)
        assert len(logits) == 2
        for a, k in zip(logits, (1, 3)):
            np.testing.assert_allclose(a, want[k], atol=1e-3)
        ran += 1
    assert ran >= 1

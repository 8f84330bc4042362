"""Deploying only chosen exits (``--exits``): merged segments, their costs, the bundle, old manifests."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgeexit.checkpoint import load_checkpoint
from edgeexit.cli import main
from edgeexit.errors import ConfigError
from edgeexit.export.bundle import ExportConfig, export_bundle
from edgeexit.export.split import check_exits, segment_inputs, segment_specs, split_model
from edgeexit.models import ModelConfig, create_model, list_models
from edgeexit.models.profile import profile_model
from edgeexit.runtime.backends import get_backend
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.manifest import BundleError, Manifest, load_manifest
from edgeexit.runtime.verify import verify_bundle
from tests.conftest import chain_segments

EXITS = (1, 3)  # both segments merged: stages 0-1 + head 1, stages 2-3 + head 3


@pytest.mark.parametrize("family", list(list_models()))
def test_merged_segments_compute_the_model_exits(family):
    torch.manual_seed(0)
    model = create_model(ModelConfig(family, in_channels=8, num_classes=5)).eval()
    n = model.num_exits
    exits = (0, n - 1) if n > 2 else (0, 1)
    x = torch.randn(3, 8, 256)
    with torch.no_grad():
        ref = model(x)
        feats = model.features(x)
        segs = split_model(model, exits)
        got_feats, got = chain_segments(segs, x)
    assert [s.exit for s in segs] == list(exits) and segs[-1].stages == tuple(range(exits[0] + 1, n))
    for k, z in zip(exits, got):
        torch.testing.assert_close(z, ref[k], rtol=0, atol=0)
    for k, h in zip(exits, got_feats):
        torch.testing.assert_close(h, feats[k], rtol=0, atol=0)
    specs = segment_specs(model, (8, 256), exits)
    assert [s.index for s in specs] == list(range(len(exits))) and [s.exit for s in specs] == list(exits)
    assert [t.shape[1:] for t in segment_inputs(model, x, exits)] == [torch.Size(s.input_shape) for s in specs]


def test_merged_segment_names_shapes_and_costs():
    torch.manual_seed(0)
    model = create_model(ModelConfig("test_resnet1d", in_channels=6, num_classes=5)).eval()
    costs = profile_model(model, (6, 256))
    specs = segment_specs(model, (6, 256), (3, 1))  # sorted
    assert [(s.input_name, s.output_names) for s in specs] == [
        ("input", ("feat_1", "logits_1")), ("feat_1", ("logits_3",))]
    full = segment_specs(model, (6, 256))
    assert specs[1].input_shape == full[2].input_shape == specs[0].output_shapes[0]
    assert specs[0].macs == costs[0].stage_macs + costs[1].stage_macs + costs[1].head_macs
    assert specs[1].macs == costs[2].stage_macs + costs[3].stage_macs + costs[3].head_macs
    stage_macs = sum(c.stage_macs for c in costs)
    assert sum(s.macs for s in specs) == stage_macs + costs[1].head_macs + costs[3].head_macs
    assert sum(s.params for s in specs) == sum(c.stage_params for c in costs) + sum(
        costs[k].head_params for k in (1, 3))
    # every exit = today's split: one stage per segment, exit == index, the stage module itself
    assert [s.exit for s in full] == [0, 1, 2, 3]
    assert all(seg.stage is model.stages[k] for k, seg in enumerate(split_model(model)))


@pytest.mark.parametrize("exits, match", [
    ((0, 2), "final exit 3"), ((3,), "no early exit"), ((0, 0, 3), "twice"), ((0, 4), "out of range"),
    ((-1, 3), "out of range"), (("a", 3), "integers"), ((0.5, 3), "integers"),
])
def test_check_exits_refuses_bad_choices(exits, match):
    with pytest.raises(ConfigError, match=match):
        check_exits(exits, 4)


def test_check_exits_sorts_and_defaults_to_all():
    assert check_exits(None, 4) == (0, 1, 2, 3)
    assert check_exits([3, 0], 4) == (0, 3)


def test_export_config_validates_exits(tiny_checkpoint, tmp_path):
    assert ExportConfig(exits=[3, 1]).exits == (1, 3)
    assert ExportConfig().to_dict()["exits"] is None
    for bad, match in [((), "empty"), ((3,), "no early exit"), ((1, 1, 3), "twice"), ((-1, 3), ">= 0"),
                       ("0,3", "sequence")]:
        with pytest.raises(ConfigError, match=match):
            ExportConfig(exits=bad)
    for bad, match in [((0, 2), "final exit 3"), ((0, 7), "out of range")]:
        with pytest.raises(ConfigError, match=match):
            export_bundle(tiny_checkpoint, tmp_path / "b", ExportConfig(target="x86_64", exits=bad))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arg, match", [("a,3", "comma-separated"), ("", "comma-separated"),
                                         ("-1,3", ">= 0"), ("0,2", "final exit 3"), ("1,1,3", "twice")])
def test_cli_export_rejects_bad_exits(tiny_checkpoint, tmp_path, arg, match):
    r = CliRunner().invoke(main, ["export", str(tiny_checkpoint), "--target", "x86_64", "--out",
                                  str(tmp_path / "b"), "--exits", arg])
    assert r.exit_code != 0 and match in r.output, r.output
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def exits_bundle(tiny_checkpoint, tmp_path_factory):
    """fp32 ONNX + TFLite bundle of the tiny 4-exit model with exits 1 and 3, written by the CLI."""
    out = tmp_path_factory.mktemp("exits") / "b13"
    r = CliRunner().invoke(main, ["export", str(tiny_checkpoint), "--target", "x86_64", "--precision",
                                  "fp32", "--golden-samples", "16", "--calibration-samples", "64",
                                  "--exits", "3,1", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "exits deployed 1,3 of the model's 4" in r.output
    return out


def test_exits_bundle_manifest(exits_bundle, bundle_dir):
    m = load_manifest(exits_bundle)
    assert m.exits == (1, 3) and m.num_exits == 2 and m.model.num_exits == 4
    assert sorted(p.name for p in exits_bundle.iterdir()) == sorted(
        ["manifest.json", "golden.npz", "monolithic.onnx", "monolithic.tflite"]
        + [f"segment_{j}.{f}" for j in range(2) for f in ("onnx", "tflite")])
    assert [s.output_names for s in m.segments] == [("feat_1", "logits_1"), ("logits_3",)]
    assert m.segments[1].input_name == "feat_1"
    full = load_manifest(bundle_dir)
    assert full.exits == (0, 1, 2, 3)
    assert m.segments[0].macs == full.segments[0].macs + full.segments[1].macs - _head_macs(bundle_dir, 0)
    assert sum(s.macs for s in m.segments) < sum(s.macs for s in full.segments)
    assert m.monolithic.macs == full.monolithic.macs
    assert len(m.policy.thresholds) == 1
    assert m.provenance.export_config["exits"] == [1, 3]
    cal = m.policy.calibration
    assert cal.cost_ratio <= 1.0 and len(cal.exit_fractions) == 2
    for fmt in ("onnx", "tflite"):
        par = m.provenance.parity[fmt]["exits"]
        assert [(e["segment"], e["exit"]) for e in par] == [(0, 1), (1, 3)]
        assert all(e["max_abs_err"] < 1e-3 for e in par)
    d = json.loads((exits_bundle / "manifest.json").read_text())
    assert [s["exit"] for s in d["segments"]] == [1, 3]


def _head_macs(bundle_dir, k):
    m = load_manifest(bundle_dir)
    ckpt_costs = profile_model(_model(bundle_dir), tuple(m.input_shape))
    return ckpt_costs[k].head_macs


def _model(bundle_dir):
    return load_checkpoint(load_manifest(bundle_dir).provenance.checkpoint).model.eval()


def test_exits_bundle_runs_with_both_backends(exits_bundle):
    model = _model(exits_bundle)
    with np.load(exits_bundle / "golden.npz") as z:
        x, ref = z["inputs"], [z["logits_0"], z["logits_1"]]
        assert "logits_2" not in z.files
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    np.testing.assert_allclose(ref[0], want[1].numpy(), atol=1e-5)
    np.testing.assert_allclose(ref[1], want[3].numpy(), atol=1e-5)
    for backend in ("onnxruntime", "litert"):
        if not get_backend(backend).available():
            continue
        engine = Engine.from_bundle(exits_bundle, backend=backend, threads=1)
        logits, times = engine.run_all(x)
        assert len(logits) == len(times) == 2
        for a, b in zip(logits, ref):
            np.testing.assert_allclose(a, b, atol=1e-3)
        b = engine.predict_batch(x)
        assert set(b.exit_index.tolist()) <= {0, 1} and len(b.segment_ns) in (1, 2)
        for i in range(4):
            r = engine.predict(x[i])
            assert r.exit_index in (0, 1) and r.label == b.labels[i]
        always_last = Engine.from_bundle(exits_bundle, backend=backend, threads=1, policy="fixed")
        assert always_last.predict(x[0]).exit_index == 1
        np.testing.assert_array_equal(always_last.predict_batch(x).labels, ref[1].argmax(-1))


def test_verify_passes_on_an_exits_bundle(exits_bundle):
    report = verify_bundle(exits_bundle)
    assert report.ok, report.to_dict()
    r = CliRunner().invoke(main, ["verify", str(exits_bundle)])
    assert r.exit_code == 0, r.output


def _old_style(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    for s in d["segments"]:
        s.pop("exit")
    d["monolithic"].pop("exit")
    d["provenance"]["export_config"].pop("exits", None)
    return d


def test_an_old_manifest_without_exit_fields_loads(bundle_dir, tmp_path):
    d = json.loads((bundle_dir / "manifest.json").read_text())
    old = _old_style(d)
    m = Manifest.from_dict(old)
    assert m.exits == (0, 1, 2, 3) and [s.exit for s in m.segments] == [0, 1, 2, 3]
    # a default export differs from the old layout only by the new fields
    assert _old_style(m.to_dict()) == old
    root = tmp_path / "old"
    shutil.copytree(bundle_dir, root)
    (root / "manifest.json").write_text(json.dumps(old, indent=2))
    engine = Engine.from_bundle(root, backend="onnxruntime", threads=1)
    assert engine.manifest.exits == (0, 1, 2, 3) and len(engine.sessions) == 4
    assert verify_bundle(root, backend="onnxruntime").ok


def test_manifest_refuses_exits_out_of_order(exits_bundle, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(exits_bundle, root)
    d = json.loads((root / "manifest.json").read_text())
    d["segments"][0]["exit"] = 3
    (root / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="not increasing"):
        load_manifest(root)
    d["segments"][0]["exit"], d["segments"][1]["exit"] = 1, 2
    (root / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="final exit is 3"):
        load_manifest(root)

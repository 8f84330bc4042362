"""`edgeexit compress`: prune + fine-tune a checkpoint into a directory and report before vs
after; the compressed checkpoint exports and runs like any other."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeexit.checkpoint import load_checkpoint
from edgeexit.cli import main
from edgeexit.compress.run import CompressConfig, format_markdown
from edgeexit.errors import ConfigError


@pytest.fixture(scope="module")
def compressed(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "c"
    r = CliRunner().invoke(main, [
        "compress", str(tiny_checkpoint), "--out", str(out), "--prune", "0.5",
        "--finetune", "onmanifold", "--epochs", "1", "--attack-steps", "2", "--eval-limit", "60",
        "--eval-eps", "0.2", "--vae-epochs", "2", "--formats", "onnx", "--no-progress", "--json",
        "--keep-sensitivity", "S,V",
    ])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.output)


def test_report_compares_both_models(compressed, tiny_checkpoint):
    out, report = compressed
    a, b = report["original"], report["compressed_model"]
    assert b["params"] < a["params"] and b["macs"][-1] < a["macs"][-1]
    assert b["files"]["onnx"]["segments_bytes"] < a["files"]["onnx"]["segments_bytes"]
    assert b["files"]["onnx"]["monolithic_bytes"] < a["files"]["onnx"]["monolithic_bytes"]
    lat = report["latency"]["onnx"]
    assert lat["median_us"]["compressed"] > 0 and lat["ratio"]["original"] == 1.0
    for side in (a, b):
        assert 0.0 <= side["clean"]["accuracy"] <= 1.0
        names = {x["attack"] for x in side["attacks"]}
        assert names == {"max_avg", "onmanifold"}
        assert {n["snr_db"] for n in side["noise"]} == {6.0, 0.0}
    pgd = next(x for x in a["attacks"] if x["attack"] == "max_avg")
    assert pgd["accuracy"] < a["clean"]["accuracy"]  # the attack bites (0.34-0.67 lower)
    assert report["pruning"]["channels_after"] != report["pruning"]["channels_before"]
    md = (out / "report.md").read_text()
    assert md == format_markdown(report) and "| parameters |" in md
    for name in ("model.pt", "metrics.json", "vae.pt", "report.json",
                 "evaluate-original/report.json", "evaluate-compressed/report.json"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_compressed_checkpoint_records_its_provenance_and_exports(compressed, tiny_checkpoint,
                                                                   tmp_path):
    from edgeexit.export.bundle import ExportConfig, export_bundle
    from edgeexit.runtime.verify import verify_bundle

    out, report = compressed
    ck = load_checkpoint(out / "model.pt")
    comp = ck.meta["compression"]
    assert comp["source_checkpoint"] == str(tiny_checkpoint)
    assert comp["finetune"]["kind"] == "onmanifold" and comp["prune"]["ratio"] == 0.5
    assert ck.meta["train_config"]["method"] == "onmanifold"
    kept = ck.meta["class_offsets"]  # against the unpruned model, after the fine-tuning
    assert comp["finetune"]["keep_sensitivity"] == ["S", "V"] and kept["classes"] == ["S", "V"]
    assert len(kept["exits"]) == ck.model.num_exits
    assert all(min(e["offsets"]) >= 0 and e["offsets"][0] == 0 for e in kept["exits"])
    assert report["class_offsets"] == kept
    md = (out / "report.md").read_text()
    assert "Kept S, V at the original model's validation sensitivity" in md
    assert sum(p.numel() for p in ck.model.parameters()) == report["compressed_model"]["params"]
    r = CliRunner().invoke(main, ["info", str(out / "model.pt")])
    assert r.exit_code == 0 and f"compressed from {tiny_checkpoint}: pruned 0.5" in r.output
    assert f"{report['compressed_model']['params']:,} parameters" in r.output
    export_bundle(out / "model.pt", tmp_path / "b",
                  ExportConfig(target="x86_64", formats=("onnx",), golden_samples=8,
                               calibration_samples=64))
    assert verify_bundle(tmp_path / "b").ok


def test_vae_is_reused_and_foreign_directories_are_refused(compressed, tiny_checkpoint, tmp_path):
    out, _ = compressed
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    r = CliRunner().invoke(main, ["compress", str(tiny_checkpoint), "--out", str(foreign),
                                  "--no-progress"])
    assert r.exit_code == 1 and "did not write" in r.output
    assert (foreign / "notes.txt").read_text() == "keep me"
    r = CliRunner().invoke(main, [
        "compress", str(tiny_checkpoint), "--out", str(tmp_path / "again"), "--prune", "0.25",
        "--finetune", "none", "--vae", str(out / "vae.pt"), "--eval-limit", "30",
        "--eval-eps", "0.1", "--formats", "onnx", "--no-progress", "--json",
    ])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["vae"] == str(out / "vae.pt") and not (tmp_path / "again" / "vae.pt").exists()
    assert rep["compressed_model"]["params"] < rep["original"]["params"]


def test_bad_settings_are_refused(tiny_checkpoint, tmp_path):
    r = CliRunner().invoke(main, ["compress", str(tiny_checkpoint), "--out", str(tmp_path / "x"),
                                  "--prune", "1.5", "--no-progress"])
    assert r.exit_code == 1 and "fraction of channels" in r.output
    junk = tmp_path / "vae.pt"
    junk.write_bytes(b"not a vae")
    r = CliRunner().invoke(main, ["compress", str(tiny_checkpoint), "--out", str(tmp_path / "y"),
                                  "--vae", str(junk), "--no-progress"])
    assert r.exit_code == 1 and "Error:" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "y").exists()  # refused before the data was read or OUT made
    r = CliRunner().invoke(main, ["compress", str(tiny_checkpoint), "--out", str(tmp_path / "z"),
                                  "--finetune", "ctxadv", "--keep-sensitivity", "S,X",
                                  "--no-progress"])
    assert r.exit_code == 1 and "names X, not classes of the model" in r.output
    assert not (tmp_path / "z").exists()
    with pytest.raises(ConfigError, match="formats must be onnx and/or tflite"):
        CompressConfig(formats=("pb",))


def test_train_takes_the_onmanifold_method_with_a_vae(compressed, separable_npz, tmp_path):
    out, _ = compressed
    vae = str(out / "vae.pt")
    r = CliRunner().invoke(main, [
        "train", "--data", separable_npz, "--model", "test_resnet1d", "--epochs", "1",
        "--method", "onmanifold", "--vae", vae, "--eta", "0.3", "--latent-steps", "2",
        "--attack-steps", "2", "--threads", "1", "--out", str(tmp_path / "t"), "--no-progress",
        "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["train_config"]["method_config"]["vae"] == vae
    assert m["train_config"]["method_config"]["eta"] == 0.3
    assert 0.0 <= m["method"]["kept_fraction"] <= 1.0
    r = CliRunner().invoke(main, ["train", "--data", separable_npz, "--method", "rdi", "--vae", vae,
                                  "--out", str(tmp_path / "u")])
    assert r.exit_code == 1 and "does not take --vae" in r.output


def test_iterative_pruning_fine_tunes_between_steps(tiny_checkpoint, tmp_path):
    from edgeexit.compress.finetune import FinetuneConfig
    from edgeexit.compress.prune import PruneConfig
    from edgeexit.compress.run import compress

    stages = []
    config = CompressConfig(prune=PruneConfig(ratio=0.5, steps=2, min_channels=1),
                            finetune=FinetuneConfig("standard", epochs=1, threads=1),
                            onmanifold=False, eval_limit=30, eval_eps=(0.1,), formats=("onnx",),
                            latency_runs=20)
    result = compress(tiny_checkpoint, tmp_path / "it", config, progress=stages.append)
    assert stages.index("fine-tuning after pruning step 1/2") < stages.index(
        "fine-tuning (standard, 1 epochs)")
    assert "fine-tuning after pruning step 2/2" not in stages  # not after the last step
    report = result.report
    assert report["pruning"]["config"]["steps"] == 2
    assert report["vae"] is None and not (tmp_path / "it" / "vae.pt").exists()
    assert {a["attack"] for a in report["original"]["attacks"]} == {"max_avg"}

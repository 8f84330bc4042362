"""`edgeexit quickstart`: every stage runs, the summary is written and matches a separate bench."""

import json

import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.data.bench import bench_data
from edgeexit.errors import ConfigError
from edgeexit.quickstart import QuickstartConfig, run_quickstart
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.profile import bench_engine


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs"
    seen = []
    config = QuickstartConfig(model="test_resnet1d", epochs=1, threads=1, bench_backend="onnxruntime",
                              exits=None, finetune_epochs=1, meter="estimate", stream_beats=60)
    s = run_quickstart(out, config, on_stage=lambda name, r: seen.append(name))
    assert seen == ["train", "compress", "export", "verify", "calibrate", "bench", "evaluate"]
    for name in ("model.pt", "metrics.json", "compressed/model.pt", "bundle/manifest.json",
                 "bundle.tar.gz", "summary.md", "evaluate/report.json", "evaluate/robustness.png",
                 "evaluate-standard/report.json", "evaluate/stream/report.json",
                 "evaluate-standard/stream/report.json", "bundle-standard/manifest.json",
                 "report/report.md", "report/report.json", "report/accuracy_vs_energy.png",
                 "report/exit_histogram.png", "report/segment_latency.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text()) == s
    st = s["stages"]
    assert st["train"]["width"] == 1.0 and "width 1," in (out / "summary.md").read_text()
    # the deployed model is the pruned, fine-tuned one, shown next to the original
    cs = st["compress"]
    assert cs["params"][1] < cs["params"][0] and cs["macs"][1] < cs["macs"][0]
    # ... fine-tuned robustly by default: ctxadv, its attack recorded in the checkpoint
    assert cs["finetune"] == "ctxadv" and cs["finetune_attack"]["timing_ms"] > 0
    from edgeexit.checkpoint import load_checkpoint

    meta = load_checkpoint(out / "compressed" / "model.pt").meta
    assert meta["train_config"]["method"] == "ctxadv"
    assert meta["train_config"]["method_config"]["timing_ms"] == cs["finetune_attack"]["timing_ms"]
    # ... and the long rhythm (the stream's extra detections lower avg_rr), in the summary too
    assert meta["train_config"]["method_config"]["rhythm"] == cs["finetune_attack"]["rhythm"] > 0
    assert "long rhythm +-" in (out / "summary.md").read_text()
    assert cs["latency_us"][1] > 0 and cs["latency_ratio"] == pytest.approx(
        cs["latency_us"][1] / cs["latency_us"][0])
    prov = json.loads((out / "bundle" / "manifest.json").read_text())["provenance"]
    assert prov["checkpoint"].endswith("compressed/model.pt")
    # calibrated on 6000 beats of 48 new simulated patients (one per 125 beats)
    assert st["verify"]["ok"] and st["calibrate"]["records"] == 48
    choice = st["calibrate"]["exit_choice"]  # measured costs: which exits are worth their call
    assert len(choice["options"]) == 8 and choice["best_exits"][-1] == 3
    assert choice["decision_us"] >= 0 and choice["per_call_us"] >= 0
    assert st["calibrate"]["thresholds"] == json.loads(
        (out / "bundle" / "manifest.json").read_text())["policy"]["thresholds"]
    md = (out / "summary.md").read_text()
    assert "## Bench" in md and "## Evaluate" in md and "## Compress" in md
    # the bench's energy: the CPU-time estimate (asked for, so that a host with a meter gives the
    # same answer), labelled so, in the report
    en = st["bench"]["energy"]
    assert en["kind"] == "estimated" and "ESTIMATE" in en["label"]
    assert en["per_inference_mj"]["policy"]["above_idle"] > 0 and "report/report.md" in md
    assert json.loads((out / "report" / "report.json").read_text())["energy"] == en
    assert s["machine"]["cpu"] in md
    # the short robustness check: clean, policy-aware PGD at 0.1 mV, muscle noise at 6 dB on
    # windows, and clean, noise, the timing attack and PGD end to end on the continuous signal,
    # for the standard model training produced and the robust one deployed, side by side
    ev = st["evaluate"]
    inputs = ["windows: clean", "windows: policy-aware PGD 0.1 mV (RR held)",
              "windows: muscle noise 6 dB", "stream: clean", "stream: muscle noise 6 dB",
              "stream: timing attack 0.1 mV end to end", "stream: PGD 0.1 mV end to end"]
    assert [r["input"] for r in ev["rows"]] == inputs * 2
    assert [r["model"].split()[0] for r in ev["rows"]] == ["standard"] * 7 + ["robust"] * 7
    report = json.loads((out / "evaluate" / "report.json").read_text())
    assert ev["rows"][7]["accuracy"] == report["clean"]["policy"]["accuracy"]
    standard = json.loads((out / "evaluate-standard" / "report.json").read_text())
    assert ev["rows"][0]["accuracy"] == standard["clean"]["policy"]["accuracy"]
    stream = json.loads((out / "evaluate" / "stream" / "report.json").read_text())
    assert [r["accuracy"] for r in ev["rows"][12:]] == [a["accuracy"] for a in stream["attacks"]]
    assert stream["config"]["attacks"] == ["timing", "pgd"] and stream["attacks"][0]["eps"] == 0.1
    assert ev["stream_patients"] == len(stream["records"]["list"]) == 4  # several patients
    assert ev["rows"][1]["accuracy"] < ev["rows"][0]["accuracy"]  # the attack bites
    assert ev["rows"][6]["accuracy"] < ev["rows"][3]["accuracy"]  # end to end too
    assert ev["rows"][5]["detection_ppv"] < ev["rows"][3]["detection_ppv"]  # bursts taken for beats
    assert all(0 < r["detection_ppv"] <= 1 for r in ev["rows"] if r["input"].startswith("stream"))
    assert "| standard (trained model, fp32 ONNX) | windows: clean |" in md
    assert "| robust (deployed bundle) | stream: PGD 0.1 mV end to end |" in md
    # a separate bench of the same bundle on the same (test) windows gives the same answers
    engine = Engine.from_bundle(out / "bundle", backend="onnxruntime", load_monolithic=True)
    x, y, desc = bench_data(engine)
    again = bench_engine(engine, x, y, warmup=5).to_dict()
    assert desc == st["bench"]["data"] and desc["beats"] == st["train"]["test_beats"]
    assert again["accuracy"] == st["bench"]["accuracy"]
    assert again["exit_histogram"] == st["bench"]["exit_histogram"]
    # a second run reuses the directory; a directory of someone else's files is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        run_quickstart(tmp_path / "other", config)
    r = CliRunner().invoke(main, ["quickstart", "--out", str(tmp_path / "other")])
    assert r.exit_code == 1 and "did not write" in r.output
    r = CliRunner().invoke(main, ["quickstart", "--out", str(tmp_path / "new"), "--exits", "0,9"])
    assert r.exit_code == 1 and "out of range" in r.output
    assert not (tmp_path / "new" / "model.pt").exists()  # refused before training
    r = CliRunner().invoke(main, ["quickstart", "--out", str(tmp_path / "new"), "--meter", "watts"])
    assert r.exit_code == 1 and "unknown energy meter" in r.output
    assert not (tmp_path / "new" / "model.pt").exists()
    r = CliRunner().invoke(main, ["quickstart", "--out", str(tmp_path / "new"), "--prune", "1"])
    assert r.exit_code == 1 and "fraction of channels" in r.output
    assert not (tmp_path / "new" / "model.pt").exists()


def test_quickstart_width_per_family(tmp_path):
    """The quick start trains resnet1d at width 2 and mobilenet1d at width 4 (so the pruned model's
    compute outweighs a segment call's fixed cost); --width overrides; a bad width is refused
    before anything is trained."""
    from edgeexit.quickstart import quickstart_width

    assert quickstart_width(QuickstartConfig()) == 2.0
    assert quickstart_width(QuickstartConfig(model="mobilenet1d")) == 4.0
    assert quickstart_width(QuickstartConfig(model="test_resnet1d")) == 1.0
    assert quickstart_width(QuickstartConfig(model="mobilenet1d", width=1.5)) == 1.5
    r = CliRunner().invoke(main, ["quickstart", "--out", str(tmp_path / "new"), "--width", "0"])
    assert r.exit_code == 1 and "width multiplier" in r.output
    assert not (tmp_path / "new" / "model.pt").exists()


def test_quickstart_refuses_an_unknown_finetuning_before_training(tmp_path):
    from edgeexit.quickstart import finetune_epochs

    with pytest.raises(ConfigError, match="unknown fine-tuning 'adv'"):
        run_quickstart(tmp_path / "qs", QuickstartConfig(finetune="adv"))
    assert not (tmp_path / "qs" / "model.pt").exists()
    assert finetune_epochs(QuickstartConfig()) == 3  # robust by default, fewer epochs
    assert finetune_epochs(QuickstartConfig(finetune="standard")) == 8
    assert finetune_epochs(QuickstartConfig(finetune_epochs=2)) == 2

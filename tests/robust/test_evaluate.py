"""`edgeexit evaluate`: attacks measured on the deployed bundle and on a checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.errors import ConfigError
from edgeexit.robust.evaluate import EvalConfig, evaluate, format_markdown

# the separable test beats carry 2 mV bumps in 0.3 mV noise: budgets of that order break them
SMALL = dict(eps=(0.3, 1.0), sanity_eps=4.0, steps=5, limit=60, universal_limit=120,
             universal_epochs=2, square_queries=40, latency_samples=10, noise=("ma",),
             snr_db=(0.0,), threads=1)


@pytest.fixture(scope="module")
def bundle_report(bundle_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "bundle"
    return evaluate(bundle_dir, config=EvalConfig(**SMALL), out_dir=out), out


def _entry(report, attack, eps):
    return next(a for a in report["attacks"] if a["attack"] == attack and a["eps"] == eps)


def test_bundle_report_is_complete_and_attacks_bite(bundle_report):
    result, out = bundle_report
    r = result.report
    assert r["target"]["kind"] == "bundle"
    names = {a["attack"] for a in r["attacks"]}
    assert names == {"max_avg", "policy", "universal", "square", "slowdown",
                     "universal_slowdown", "pgd_final_sanity"}
    clean = r["clean"]
    n_exits = len(r["target"]["exits"])
    for m in [clean, *r["attacks"], *r["noise"]]:
        assert len(m["exits"]) == n_exits
        assert 0.0 <= m["policy"]["accuracy"] <= 1.0 and 0.0 <= m["policy"]["macro_f1"] <= 1.0
        assert sum(m["exit_histogram"]) == pytest.approx(1.0)
        assert m["latency_us"] > 0 and m["mean_macs"] > 0
        assert set(m["policy"]["sensitivity"]) <= set(r["data"]["test"]["class_counts"])
    # the white-box attacks lower macro-F1 of the final exit, more at the larger budget
    f_small = _entry(r, "max_avg", 0.3)["exits"][-1]["macro_f1"]
    f_big = _entry(r, "max_avg", 1.0)["exits"][-1]["macro_f1"]
    assert f_big < clean["exits"][-1]["macro_f1"] - 0.2  # 0.60-0.89 lower over fixture seeds 0-4
    assert f_big <= f_small + 1e-9
    assert _entry(r, "policy", 1.0)["policy"]["accuracy"] < clean["policy"]["accuracy"]
    assert _entry(r, "pgd_final_sanity", 4.0)["exits"][-1]["accuracy"] < 0.2  # 0.00-0.03
    checks = {f["check"].split(" at ")[0].split(" (")[0] for f in r["sanity"]}
    assert {"black-box does not beat white-box", "accuracy falls toward 0",
            "input gradients are non-zero"} <= checks
    assert r["noise"][0]["noise"] == "ma" and r["noise"][0]["snr_db"] == 0.0
    # the separable beats carry their class in the signal channel only: flattened, it is gone
    ctx = r["context_only"]
    assert len(ctx["exits"]) == n_exits
    assert ctx["exits"][-1]["accuracy"] < clean["exits"][-1]["accuracy"] - 0.3  # 0.44-0.70 lower


def test_bundle_report_files_load(bundle_report):
    result, out = bundle_report
    assert {p.name for p in result.files} == {"report.json", "report.md", "robustness.png",
                                              "exits.png"}
    assert json.loads((out / "report.json").read_text())["clean"] == result.report["clean"]
    md = (out / "report.md").read_text()
    assert md == format_markdown(result.report)
    assert "| max_avg | 1 |" in md and "Sanity checks" in md
    for png in ("robustness.png", "exits.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bundle_refuses_another_checkpoint(bundle_dir, tmp_path):
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the model this bundle came from")
    with pytest.raises(ConfigError, match="not the checkpoint"):
        evaluate(bundle_dir, checkpoint=other, config=EvalConfig(**SMALL))


def test_bundle_finds_its_checkpoint_or_says_how(bundle_dir, tmp_path):
    moved = tmp_path / "tiny"
    shutil.copytree(bundle_dir, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["provenance"]["checkpoint"] = str(tmp_path / "gone" / "model.pt")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="--checkpoint"):
        evaluate(moved, config=EvalConfig(**SMALL))


def test_checkpoint_has_white_box_figures_only(tiny_checkpoint, tmp_path):
    cfg = EvalConfig(**{**SMALL, "attacks": ("max_avg", "policy", "square"), "noise": ()})
    r = evaluate(tiny_checkpoint, config=cfg, out_dir=tmp_path / "ev").report
    assert r["target"]["kind"] == "checkpoint"
    assert r["target"]["policy"] == "ensemble (all exits)"
    assert {a["attack"] for a in r["attacks"]} == {"max_avg", "policy", "pgd_final_sanity"}
    assert "exit_histogram" not in r["clean"]
    big = _entry(r, "max_avg", 1.0)
    assert big["exits"][-1]["macro_f1"] < r["clean"]["exits"][-1]["macro_f1"]
    assert (tmp_path / "ev" / "robustness.png").is_file()


def test_config_refuses_bad_settings():
    with pytest.raises(ConfigError, match="unknown attack"):
        EvalConfig(attacks=("pgd-of-doom",))
    with pytest.raises(ConfigError, match="eps"):
        EvalConfig(eps=(0.1, -0.2))
    with pytest.raises(ConfigError, match="noise"):
        EvalConfig(noise=("hum",))


def test_cli_json_and_errors(bundle_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", str(bundle_dir), "--out", str(tmp_path / "ev"),
                               "--attacks", "max_avg", "--eps", "1", "--sanity-eps", "4",
                               "--noise", "", "--limit", "30", "--steps", "3", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert [a["attack"] for a in r["attacks"]] == ["pgd_final_sanity", "max_avg"]
    assert np.isfinite(r["clean"]["latency_us"])
    res = runner.invoke(main, ["evaluate", str(bundle_dir), "--out", str(tmp_path / "e2"),
                               "--eps", "0.1,big"])
    assert res.exit_code == 1 and "comma-separated" in res.output
    archive = bundle_dir.parent / "tiny.tar.gz"
    if archive.is_file():
        res = runner.invoke(main, ["evaluate", str(archive), "--out", str(tmp_path / "e3")])
        assert res.exit_code == 1 and "unpack" in res.output


def test_morphology_channels_follow_the_attacked_waveform(tmp_path):
    from edgeexit.data import DataSpec, load_split
    from edgeexit.train import TrainConfig, train

    spec = DataSpec(source="synthetic", n_beats=600, morph_context=True, seed=0)
    r = train(load_split(spec, "train"), TrainConfig(model="test_resnet1d", epochs=2,
              batch_size=32, threads=1, seed=0), out_dir=tmp_path / "run", data_spec=spec)
    cfg = dict(SMALL, attacks=("max_avg", "universal", "slowdown"), eps=(0.3,), sanity_eps=None,
               limit=40, universal_limit=60)
    follows = evaluate(r.checkpoint, config=EvalConfig(**cfg)).report
    fixed = evaluate(r.checkpoint, config=EvalConfig(**cfg, morph_follows=False)).report
    assert follows["config"]["morph_follows"] and not fixed["config"]["morph_follows"]
    assert any("morphology channels recomputed" in n for n in follows["notes"])
    assert not any("morphology" in n for n in fixed["notes"])
    # clean windows scored through the device's recomputation: the very same answers
    assert follows["clean"] == fixed["clean"]
    # attacked and noisy windows are scored as the device sees them: their morphology channels
    # moved with the waveform (this seeded model answers differently for both)
    attacked = _entry(follows, "max_avg", 0.3)
    assert attacked["exits"] != _entry(fixed, "max_avg", 0.3)["exits"]
    assert follows["noise"] != fixed["noise"]

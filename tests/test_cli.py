import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeexit.cli import main

FAST = ["--model", "test_resnet1d", "--epochs", "2", "--batch-size", "32", "--threads", "1",
        "--no-progress"]


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_lists_the_verbs():
    r = run("--help")
    assert r.exit_code == 0
    for verb in ("train", "info", "data", "targets", "export", "run", "verify", "bench"):
        assert verb in r.output


@pytest.mark.parametrize("cmd", [["train"], ["info"], ["data"], ["data", "inspect"],
                                 ["data", "generate"], ["targets"], ["export"], ["run"],
                                 ["verify"], ["bench"]])
def test_every_command_has_help(cmd):
    r = run(*cmd, "--help")
    assert r.exit_code == 0 and "Usage:" in r.output and len(r.output.splitlines()) > 3


def test_train_then_info(separable_npz, tmp_path):
    out = tmp_path / "run"
    r = run("train", "--data", separable_npz, "--out", str(out), "--json", *FAST)
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert len(m["exits"]) == 4 and "test" in m["exits"][0]
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()
    r = run("info", str(out / "model.pt"), "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["model"]["family"] == "test_resnet1d" and len(d["exits"]) == 4
    assert d["classes"] == ["N", "S", "V", "F", "Q"]
    r = run("info", str(out / "model.pt"))
    assert r.exit_code == 0 and "MACs to exit" in r.output


def test_train_prints_a_per_exit_table(separable_npz, tmp_path):
    r = run("train", "--data", separable_npz, "--out", str(tmp_path / "r"), *FAST)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["exit", "MACs"])
    assert [line.split()[0] for line in lines[header + 1 : header + 5]] == ["0", "1", "2", "3"]


def test_train_with_linear_exit_heads(separable_npz, tmp_path):
    out = tmp_path / "lin"
    r = run("train", "--data", separable_npz, "--out", str(out), "--exit-heads", "linear",
            "--json", *FAST)
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["model"]["exit_heads"] == "linear"
    r = run("info", str(out / "model.pt"), "--json")
    assert json.loads(r.output)["model"]["exit_heads"] == "linear"  # the checkpoint rebuilds it
    r = run("train", "--data", separable_npz, "--out", str(tmp_path / "x"), "--exit-heads", "mlp")
    assert r.exit_code != 0 and "mlp" in r.output


def test_info_lists_models_and_profiles_a_family():
    r = run("info", "--models")
    assert r.exit_code == 0 and "resnet1d" in r.output and "mobilenet1d" in r.output
    r = run("info", "mobilenet1d", "--json")
    assert r.exit_code == 0 and len(json.loads(r.output)["exits"]) == 3


def test_data_inspect_and_generate_roundtrip(separable_npz, tmp_path):
    r = run("data", "inspect", separable_npz, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["beats"] == 600 and d["class_counts"] == {c: 120 for c in "NSVFQ"}
    r = run("data", "inspect", separable_npz)
    assert r.exit_code == 0 and "600 beats" in r.output


def _one_line_error(r, *fragments):
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    err = r.output.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error:"), r.output
    for f in fragments:
        assert f in err[0], err[0]


def test_error_missing_file(tmp_path):
    _one_line_error(run("train", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path)),
                    "not found")
    _one_line_error(run("info", str(tmp_path / "nope.pt")), "neither a checkpoint")
    _one_line_error(run("data", "inspect", str(tmp_path / "x.npz")), "not found")


def test_error_unknown_model(separable_npz, tmp_path):
    _one_line_error(run("train", "--data", separable_npz, "--out", str(tmp_path / "run"), "--model", "vgg"),
                    "unknown model 'vgg'", "resnet1d")


def test_error_nan_in_data(tmp_path):
    x = np.zeros((10, 1, 64), dtype=np.float32)
    x[3, 0, 5] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x=x, y=np.zeros(10, dtype=np.int64))
    _one_line_error(run("data", "inspect", str(path)), "NaN", "beat 3")
    _one_line_error(run("train", "--data", str(path), "--out", str(tmp_path / "o")), "NaN")


def test_error_wrong_shape(tmp_path):
    path = tmp_path / "shape.npz"
    np.savez(path, x=np.zeros((10, 2, 3, 4), dtype=np.float32), y=np.zeros(10, dtype=np.int64))
    _one_line_error(run("data", "inspect", str(path)), "[N, C, L]")
    path2 = tmp_path / "labels.npz"
    np.savez(path2, x=np.zeros((10, 1, 64), dtype=np.float32), y=np.zeros(7, dtype=np.int64))
    _one_line_error(run("data", "inspect", str(path2)), "labels")


def test_error_bad_file_type(tmp_path):
    path = tmp_path / "beats.txt"
    path.write_text("hello")
    _one_line_error(run("data", "inspect", str(path)), ".npz or .csv")


def test_data_generate_writes_a_loadable_npz(tmp_path):
    out = tmp_path / "syn.npz"
    r = run("data", "generate", "--out", str(out), "--n-beats", "300", "--seed", "3", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["beats"] == 300 and d["written"] == str(out)
    r = run("data", "inspect", str(out), "--json")
    assert json.loads(r.output)["class_counts"] == d["class_counts"]
    bad = run("data", "generate", "--out", str(tmp_path / "syn.txt"))
    assert bad.exit_code == 1 and "must end in .npz" in bad.output
    assert not (tmp_path / "syn.txt").exists()


def test_train_on_builtin_synthetic_data(tmp_path):
    r = run("train", "--out", str(tmp_path / "syn"), "--n-beats", "500", "--json", *FAST)
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["data"]["test"]["source"].startswith("synthetic(seed=1000")
    assert m["data"]["train"]["input_shape"][0] == 8  # ECG + 7 RR context channels

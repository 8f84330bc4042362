"""An int8 bundle end to end: exported (ONNX and TFLite, int8), ``edgeexit
verify`` replays its golden beats, ``edgeexit run`` answers windows with each backend, as the
model computes them (the conftest's ``int8_bundle``: an untrained tiny model, the same on every CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.errors import ExitStatus

BACKENDS = ("onnxruntime", "litert")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def answers(r) -> list[dict]:
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    return [v for v in lines if "index" in v]  # not --batch's segment timings (stderr)


def test_int8_export_writes_int8_onnx_and_tflite_segments(int8_bundle):
    m = json.loads((int8_bundle / "manifest.json").read_text())
    assert m["precision"] == "int8" and len(m["segments"]) == 2
    for seg in m["segments"]:
        arts = {a["format"]: a for a in seg["artifacts"]}
        assert set(arts) == {"onnx", "tflite"}
        assert all(a["precision"] == "int8" and (int8_bundle / a["file"]).is_file()
                   for a in arts.values())
    assert (int8_bundle.parent / "bundle.tar.gz").is_file()


@pytest.mark.parametrize("where", ["dir", "archive"])
def test_int8_bundle_verifies_with_both_backends(int8_bundle, where):
    path = int8_bundle if where == "dir" else int8_bundle.parent / "bundle.tar.gz"
    r = cli("verify", path, "--backend", "all", "--strict", "--json")
    report = json.loads(r.output)
    assert r.exit_code == 0 and report["ok"] and report["unchecked"] == [], r.output
    replayed = {c["check"] for c in report["checks"] if c["check"].startswith("golden[")}
    assert replayed == {f"golden[{b}]" for b in BACKENDS}


def threshold_between(p: np.ndarray) -> float:
    """A threshold in the widest gap between the middle values of ``p`` (none of them near it)."""
    q = np.sort(p)[len(p) // 4: len(p) - len(p) // 4 + 1]
    i = int(np.argmax(np.diff(q)))
    return float((q[i] + q[i + 1]) / 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_bundle_runs_every_exit_and_the_policy(int8_bundle, tmp_path, backend):
    m = json.loads((int8_bundle / "manifest.json").read_text())
    fmt = {"onnxruntime": "onnx", "litert": "tflite"}[backend]
    tol = m["golden"]["tolerance"][fmt]
    golden = np.load(int8_bundle / "golden.npz")
    x = golden["inputs"].astype(np.float32)
    np.save(tmp_path / "x.npy", x)

    def run(*args):
        return answers(cli("run", int8_bundle, "--input", tmp_path / "x.npy", "--backend", backend,
                           "--threads", 1, *args))

    fixed = []
    for k in range(2):  # segment k answers the model's exit (1, 3)[k]; golden.npz: by segment
        lines = run("--policy", "fixed", "--exit", k)
        assert [v["index"] for v in lines] == list(range(len(x))) and {v["exit"] for v in lines} == {k}
        probs = np.asarray([v["probs"] for v in lines])
        assert [v["label"] for v in lines] == [m["classes"][i] for i in probs.argmax(1)]
        # softmax moves at most half as much as its logits: the golden tolerance bounds it
        want = softmax(golden[f"logits_{k}"].astype(np.float64))
        assert np.abs(probs - want).max() <= tol / 2
        fixed.append(probs)

    # max_prob: a window leaves at segment 0 exactly when that exit's answer is confident
    # enough, and then with that exit's answer; the others get the last exit's
    p0 = fixed[0].max(1)
    t = threshold_between(p0)
    lines = run("--policy", "max_prob", "--thresholds", t)
    exits = [v["exit"] for v in lines]
    assert exits == [int(p < t) for p in p0] and 0 < sum(exits) < len(x)
    for i, v in enumerate(lines):
        assert v["probs"] == pytest.approx(fixed[v["exit"]][i].tolist(), abs=2e-6)
    # --batch: the same answers, each segment run only on the windows still undecided
    batch = run("--policy", "max_prob", "--thresholds", t, "--batch")
    assert [v["exit"] for v in batch] == exits
    assert [v["label"] for v in batch] == [v["label"] for v in lines]


def test_thresholds_out_of_the_policys_range_are_refused(int8_bundle, tmp_path):
    """95 for 0.95 would never exit early: a usage error naming the range, not a silent run."""
    x = np.load(int8_bundle / "golden.npz")["inputs"][:2].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for args, words in ((("--thresholds", "95"), "did you mean 0.95"),  # the bundle's max_prob
                        (("--policy", "ensemble", "--thresholds", "-0.1"), "from 0 to 1"),
                        (("--policy", "entropy", "--thresholds", "-1"), "at least 0")):
        r = cli("run", int8_bundle, "--input", tmp_path / "x.npy", "--backend", "onnxruntime", *args)
        assert r.exit_code == 1 and words in r.output and "Traceback" not in r.output, r.output
    r = cli("run", int8_bundle, "--input", tmp_path / "x.npy", "--backend", "onnxruntime",
            "--policy", "entropy", "--thresholds", "0.5")
    assert r.exit_code == 0, r.output
    # a bundle given as its .tar.gz: checked against the policy inside it, and run
    archive = int8_bundle.with_name(int8_bundle.name + ".tar.gz")
    for t, code in (("95", 1), ("0.9", 0)):
        r = cli("run", archive, "--input", tmp_path / "x.npy", "--backend", "onnxruntime",
                "--thresholds", t)
        assert r.exit_code == code and "Traceback" not in r.output, r.output


def test_a_tampered_int8_file_fails_verify(int8_bundle, tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(int8_bundle, bad)
    path = bad / "segment_1.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = cli("verify", bad, "--json")
    assert r.exit_code == ExitStatus.MISMATCH
    report = json.loads(r.output)
    assert not report["ok"] and any("segment_1.tflite" in json.dumps(c) for c in report["checks"]
                                    if not c["ok"])

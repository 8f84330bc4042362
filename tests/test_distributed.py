"""Training on two processes with PyTorch's own launcher (torchrun, DDP over gloo on CPU)."""

import json
import os
import subprocess
import sys

import pytest

from edgeexit.checkpoint import load_checkpoint


@pytest.mark.slow
def test_torchrun_two_processes(separable_npz, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "edgeexit", "train", "--data", separable_npz, "--out", str(out),
        "--model", "test_resnet1d", "--epochs", "5", "--batch-size", "32", "--threads", "1",
        "--patience", "0", "--no-progress", "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["processes"] == 2
    assert len(m["history"]) == 5
    assert m["history"][-1]["loss"] < m["history"][0]["loss"]
    assert m["exits"][-1]["test"]["accuracy"] > 0.8
    # only rank 0 reported: exactly one JSON document on stdout
    assert json.loads(r.stdout)["processes"] == 2
    assert load_checkpoint(out / "model.pt").model.num_exits == 4

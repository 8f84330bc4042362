"""Where torch computes (edgeexit.torchdevice): the --device resolver and its errors, bf16
autocast, and checkpoints of GPU-trained models loading on this CPU-only machine.

The CUDA branches run where a GPU is (tools/gpu_check.py); here the resolver is checked against
a faked device count (it only asks torch.cuda how many GPUs there are) and the training path on
the CPU."""

import json
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgeexit.checkpoint import load_checkpoint
from edgeexit.cli import main
from edgeexit.errors import ConfigError
from edgeexit.torchdevice import autocast, check_amp, distributed_backend, resolve_device
from edgeexit.train import TrainConfig, train


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused_in_one_line(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="sees no CUDA GPU.*use --device cpu or auto") as e:
            resolve_device(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("cuda:x")


def test_auto_and_cuda_take_the_gpu_of_the_local_rank(two_gpus, monkeypatch):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")  # the second process of a node under torchrun
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("CUDA") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="GPU 2 asked for, 2 visible"):
        resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "2")  # a third process on a node with two GPUs
    with pytest.raises(ConfigError, match="GPU 2 asked for, 2 visible.*--nproc-per-node"):
        resolve_device("auto")
    assert distributed_backend(torch.device("cuda", 0)) == "nccl"
    assert distributed_backend(torch.device("cpu")) == "gloo"


def test_train_config_checks_device_and_amp_names():
    with pytest.raises(ConfigError, match="unknown device"):
        TrainConfig(model="test_resnet1d", device="gpu0")
    with pytest.raises(ConfigError, match="unknown amp"):
        TrainConfig(model="test_resnet1d", amp="fp16")
    with pytest.raises(ConfigError, match="unknown --amp"):
        check_amp("fp8", torch.device("cpu"))
    assert TrainConfig(model="test_resnet1d", device="cuda:3").device == "cuda:3"  # checked when used


def test_train_device_cuda_without_a_gpu_is_one_error_line_and_writes_nothing(
        no_gpu, separable_npz, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["train", "--data", separable_npz, "--out", str(out), "--model",
                                  "test_resnet1d", "--epochs", "1", "--device", "cuda"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].startswith("Error: --device cuda: PyTorch sees no")
    assert "Traceback" not in r.output
    assert not out.exists()


@pytest.mark.parametrize("command", [["evaluate"], ["compress", "--prune", "0.5"]])
def test_evaluate_and_compress_refuse_cuda_without_a_gpu_before_any_work(no_gpu, tiny_checkpoint,
                                                                        tmp_path, command):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, [*command, str(tiny_checkpoint), "--out", str(out), "--device",
                                  "cuda:0"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].startswith("Error: --device cuda:0: PyTorch sees no")
    assert not (out / "report.json").exists() and not (out / "model.pt").exists()


def test_bf16_autocast_trains_on_the_cpu_and_the_run_records_its_device(separable_npz, tmp_path,
                                                                       monkeypatch):
    """Also: the loop resolves config.device once and moves every batch there."""
    import edgeexit.training.distributed as distributed
    import edgeexit.training.loop as loop
    from edgeexit.data import load_source

    asked, moved = [], []
    real_resolve, real_move = distributed.resolve_device, loop.to_device
    monkeypatch.setattr(distributed, "resolve_device",
                        lambda spec: asked.append(spec) or real_resolve(spec))
    monkeypatch.setattr(loop, "to_device",
                        lambda t, dev: moved.append((t is None, dev)) or real_move(t, dev))

    data = load_source(separable_npz)
    data = data.subset(np.arange(300))
    x = torch.ones(2, 3)
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.nn.functional.linear(x, torch.ones(4, 3)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "none"):
        assert torch.nn.functional.linear(x, torch.ones(4, 3)).dtype == torch.float32
    cfg = TrainConfig(model="test_resnet1d", epochs=2, batch_size=32, lr=0.01, patience=0,
                      threads=1, device="cpu", amp="bf16")
    r = train(data, cfg, out_dir=tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    losses = [h["loss"] for h in m["history"]]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert m["device"] == "cpu" and m["amp"] == "bf16" and "bitwise" in m["determinism"]
    assert len(m["rank_weight_digests"]) == 1
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in r.model.parameters())
    assert asked == ["cpu"]
    assert moved and all(dev == torch.device("cpu") for _, dev in moved)
    assert sum(not none for none, _ in moved) >= 3 * 2 * 2  # x, y, index of every batch


def test_a_checkpoint_with_gpu_tensors_loads_on_a_cpu_only_machine(tiny_checkpoint, tmp_path, no_gpu):
    """A model.pt whose tensors are tagged cuda:0 (as torch.save writes a GPU model's) opens
    here: the loader maps every tensor to the CPU."""
    src, dst = tiny_checkpoint, tmp_path / "gpu-model.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):  # the pickled storages' location strings
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info, data)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(dst, weights_only=True)  # what a plain load does with it on this machine
    ck = load_checkpoint(dst)
    ref = load_checkpoint(src)
    for (k, a), b in zip(ck.model.state_dict().items(), ref.model.state_dict().values()):
        assert a.device.type == "cpu" and torch.equal(a, b), k

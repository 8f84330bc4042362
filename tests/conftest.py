"""Shared fixtures: small seeded data sets that a tiny model can learn in a second or two, and
tiny trained models loaded from files (trained by tools/make_test_fixtures.py, not in the tests:
training comes out differently on different CPUs)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeexit.data import AAMI_CLASSES, BeatDataset

REPO = Path(__file__).resolve().parents[1]
MITDB = REPO.parent / "shared" / "data" / "mitdb"  # development copy; tests that need it skip without
# the committed fixtures; point EDGEEXIT_TEST_FIXTURES at fixtures of another seed to check margins
FIXTURES = Path(os.environ.get("EDGEEXIT_TEST_FIXTURES") or REPO / "tests" / "data" / "fixtures")


def fixture_path(name: str) -> Path:
    """The committed tiny model ``name`` (an edgeexit checkpoint; see tools/make_test_fixtures.py)."""
    path = FIXTURES / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: make it with `python tools/make_test_fixtures.py {name}`")
    return path


def pytest_configure(config):
    """Under pytest-xdist (one worker per core) each worker's torch / OpenMP / BLAS keep to one
    thread: a thread per core in every worker would put cores x workers threads on the cores.
    Set before any test module imports torch (this conftest does not)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, "1")


# The modules that take longest (measured with --durations), heaviest first. pytest-xdist's
# --dist loadfile hands out whole files in collection order: started first, they run beside the
# many short ones instead of being left to one worker at the end while the other idles.
LONGEST_FIRST = (
    "tests/export/test_tflite.py",
    "tests/compress/test_compress_run.py",
    "tests/export/test_precision_auto.py",
    "tests/test_quickstart.py",
    "tests/test_tools.py",
    "tests/runtime/test_install.py",
    "tests/models/test_fusion.py",
    "tests/export/test_bundle.py",
    "tests/export/test_exits.py",
    "tests/runtime/test_hardening.py",
)


def pytest_collection_modifyitems(config, items):
    """The longest modules first (:data:`LONGEST_FIRST`), every other in its usual order; the
    order within a module is kept."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item):
        path = Path(str(item.fspath)).resolve()
        try:
            name = path.relative_to(REPO).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(name, len(rank))

    items.sort(key=key)  # stable


def make_separable(n: int = 600, seed: int = 0, channels: int = 6, length: int = 256) -> BeatDataset:
    """Noise windows in which every class adds a bump of its own width and sign: easy to learn."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(AAMI_CLASSES)
    rng.shuffle(y)
    x = rng.normal(0.0, 0.3, (n, channels, length)).astype(np.float32)
    t = np.arange(length)
    for c in range(len(AAMI_CLASSES)):
        bump = (-1.0) ** c * 2.0 * np.exp(-0.5 * ((t - length / 2) / (3.0 + 6.0 * c)) ** 2)
        x[y == c, 0, :] += bump.astype(np.float32)
    names = ("ecg",) + tuple(f"ctx{i}" for i in range(channels - 1))
    groups = np.asarray([f"rec{i % 10}" for i in range(n)])
    return BeatDataset(x=x, y=y.astype(np.int64), classes=AAMI_CLASSES, channels=names,
                       groups=groups, source=f"separable(seed={seed})")


def chain_segments(segments, x):
    """Run split segments one after another: (features handed on, logits of every segment)."""
    feats, logits, h = [], [], x
    for seg in segments:
        out = seg(h)
        if seg.last:
            logits.append(out)
        else:
            h, z = out
            feats.append(h)
            logits.append(z)
    return feats, logits


@pytest.fixture
def separable() -> BeatDataset:
    return make_separable()


@pytest.fixture
def separable_npz(tmp_path) -> str:
    path = tmp_path / "beats.npz"
    make_separable().save_npz(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny 4-exit model trained for two epochs on separable beats, loaded from its committed file
    (tools/make_test_fixtures.py); the data spec it records is those beats, written here."""
    from edgeexit.checkpoint import load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    npz = root / "beats.npz"
    make_separable(n=800, seed=3).save_npz(npz)
    ck = load_checkpoint(fixture_path("tiny_checkpoint"))
    meta = dict(ck.meta)
    meta["data"] = {**meta["data"], "spec": {**meta["data"]["spec"], "source": str(npz)}}
    return save_checkpoint(root / "run" / "model.pt", ck.model, classes=ck.classes,
                           input_spec=ck.input_spec, meta=meta)


@pytest.fixture(scope="session")
def bundle_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """An fp32 bundle of the tiny model with ONNX and TFLite files (read-only: copy to alter it)."""
    from edgeexit.export.bundle import ExportConfig, export_bundle

    config = ExportConfig(target="x86_64", precision="fp32", golden_samples=16, calibration_samples=64)
    return built_once(tmp_path_factory, "bundle_dir",
                      lambda root: export_bundle(tiny_checkpoint, root / "tiny", config)) / "tiny"


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(dir)`` once per test run, even when pytest-xdist runs several workers: the first
    worker to get here builds it (under a file lock, in the run's temporary directory that every
    worker shares) and the others wait for it and reuse it. Returns ``dir``; treat it as read-only.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-USER/pytest-N: shared by this run's workers
    out = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.is_dir():
            tmp = root / f"{name}.partial-{os.getpid()}"
            tmp.mkdir()
            build(tmp)
            tmp.rename(out)  # complete or absent: a failed build is retried by the next caller
    return out


def _fixed_checkpoint(root: Path) -> None:
    """A 4-exit test_resnet1d as initialised from seed 0, never trained (so the same weights on
    every CPU, up to the rounding of a mean), recording 300 synthetic beats of 128 samples (one ECG
    lead and 7 RR channels) as its data."""
    import torch

    from edgeexit.checkpoint import save_checkpoint
    from edgeexit.data import DataSpec, load_source
    from edgeexit.models import ModelConfig, create_model

    spec = DataSpec(n_beats=300, window=128, seed=0)
    data = load_source("synthetic", spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(ModelConfig("test_resnet1d", in_channels=data.x.shape[1], num_classes=5,
                                         input_length=128, signal_channels=data.signal_channels))
    # no gradient step; the input normalisation and the batch-norm statistics set from the data
    # (one pass), so that the exits' answers vary from beat to beat as a trained model's do
    x = torch.from_numpy(data.x)
    model.fit_input_norm(x)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(x)
    save_checkpoint(root / "model.pt", model.eval(), classes=data.classes, input_spec={
        "shape": list(data.input_shape), "fs": data.fs, "units": data.units,
        "channels": list(data.channels), "signal_channels": data.signal_channels, "window": 128,
        "rr_context": True, "morph_context": False}, meta={"data": {"spec": spec.to_dict()}})


@pytest.fixture(scope="session")
def fixed_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model's checkpoint (no training: identical on every CPU)."""
    return built_once(tmp_path_factory, "fixed_checkpoint", _fixed_checkpoint) / "model.pt"


@pytest.fixture(scope="session")
def int8_bundle(fixed_checkpoint, tmp_path_factory) -> Path:
    """An int8 export of the fixed model: ONNX and TFLite files of two segments (exits 1 and 3),
    8 golden beats (read-only: copy to alter it)."""
    from edgeexit.export.bundle import ExportConfig, export_bundle

    # an untrained model's top-1 hangs on small margins that int8 moves (~90 % agreement, not
    # the 97 % asked of a real model): the bound here only guards against a broken quantization
    config = ExportConfig(target="x86_64", precision="int8", formats=("onnx", "tflite"), exits=(1, 3),
                          golden_samples=8, calibration_samples=32, monolithic=False,
                          int8_min_agreement=0.6)
    return built_once(tmp_path_factory, "int8_bundle",
                      lambda root: export_bundle(fixed_checkpoint, root / "bundle", config)) / "bundle"

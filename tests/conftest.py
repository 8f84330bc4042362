"""Shared fixtures: small seeded data sets that a tiny model can learn in a second or two, and
tiny trained models loaded from files (trained by tools/make_test_fixtures.py, not in the tests:
training comes out differently on different CPUs)."""

from __future__ import annotations

import os
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
    """A tiny 4-exit model trained for two epochs on separable beats (the data spec is recorded)."""
    from edgeexit.data import DataSpec
    from edgeexit.train import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny")
    npz = root / "beats.npz"
    make_separable(n=800, seed=3).save_npz(npz)
    spec = DataSpec(source=str(npz))
    data = make_separable(n=800, seed=3)
    config = TrainConfig(model="test_resnet1d", epochs=2, batch_size=32, threads=1, seed=0)
    result = train(data, config, out_dir=root / "run", data_spec=spec)
    return result.checkpoint


@pytest.fixture(scope="session")
def bundle_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """An fp32 bundle of the tiny model with ONNX and TFLite files (read-only: copy to alter it)."""
    from edgeexit.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_bundle(tiny_checkpoint, out, ExportConfig(target="x86_64", precision="fp32",
                                                     golden_samples=16, calibration_samples=64))
    return out

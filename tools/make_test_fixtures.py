"""Train the tiny models that the tests load instead of training them (tests/data/fixtures/).

Training is not reproducible across CPUs: a few hundred Adam steps amplify the last-bit
differences of the CPU's float kernels (AVX2 vs AVX-512, Intel vs AMD), so a model trained inside
a test came out different on every host, and thresholds on it failed on some. The tests load
these files instead (edgeexit checkpoints, loaded with ``weights_only=True``); what they compute
from them (attacks, exports) moves only by rounding.

Every fixture is trained from a seed. The tests' thresholds were set from the values measured on
fixtures of seeds 0-4 (the range is written beside each assert), with a margin inside the worst
seed, so that a fixture trained on another CPU passes too; the few asserts on a property of the
committed model itself say so beside them. Regenerate (e.g. after a change to a model family's
layers or to the synthetic data), from the repository root:

    PYTHONPATH=. .venv/bin/python tools/make_test_fixtures.py            # seed 0, all fixtures
    PYTHONPATH=. .venv/bin/python tools/make_test_fixtures.py attack_resnet1d

and check that the tests still pass on fixtures of other seeds:

    PYTHONPATH=. .venv/bin/python tools/make_test_fixtures.py --seed 3 --out /tmp/fx3
    EDGEEXIT_TEST_FIXTURES=/tmp/fx3 .venv/bin/python -m pytest tests/robust/test_attacks.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from edgeexit.checkpoint import save_checkpoint
from edgeexit.data import DataSpec, load_source
from edgeexit.models import ModelConfig, create_model

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "fixtures"


def attack_resnet1d(out: Path, seed: int) -> Path:
    """The attack tests' model: a 4-exit resnet1d (width 0.25) trained 80 Adam steps of 64 on the
    first 600 of 900 synthetic beats (128 samples, one ECG channel and 7 RR-context channels)."""
    data = load_source("synthetic", DataSpec(n_beats=900, window=128, seed=0))
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    torch.manual_seed(seed)
    model = create_model(ModelConfig("resnet1d", in_channels=x.shape[1], num_classes=5,
                                     input_length=128, signal_channels=1, width=0.25))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(80):
        idx = torch.randint(0, 600, (64,), generator=gen)
        loss = sum(F.cross_entropy(z, y[idx]) for z in model(x[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return save_checkpoint(
        out / "attack_resnet1d.pt", model, classes=data.classes,
        input_spec={"shape": list(data.input_shape), "fs": data.fs, "units": data.units,
                    "channels": list(data.channels), "signal_channels": data.signal_channels,
                    "window": 128},
        meta={"fixture": "attack_resnet1d", "seed": seed,
              "made_by": "tools/make_test_fixtures.py"})


def tiny_checkpoint(out: Path, seed: int) -> Path:
    """The ``tiny_checkpoint`` session fixture of tests/conftest.py: a 4-exit test_resnet1d trained
    two epochs (``edgeexit.train.train``) on 800 separable beats (tests/conftest.py's
    ``make_separable(n=800, seed=3)``). Its recorded data source is ``beats.npz``: the fixture
    writes those beats and records their path."""
    from conftest import make_separable  # tests/ is on sys.path (main)

    from edgeexit.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(model="test_resnet1d", epochs=2, batch_size=32, threads=1, seed=seed)
        result = train(make_separable(n=800, seed=3), config, out_dir=tmp,
                       data_spec=DataSpec(source="beats.npz"))
        path = out / "tiny_checkpoint.pt"
        shutil.copyfile(result.checkpoint, path)
    return path


def _export_model(family: str, out: Path, seed: int) -> Path:
    """The export tests' model of ``family`` (8 channels, 256 samples, 5 classes): its input
    normalisation fitted on 1000 synthetic beats (seed 0), then 80 Adam steps of 64 on them, so
    its logits separate classes (a random model predicts one class everywhere, and an int8
    agreement test on it would pass trivially)."""
    from edgeexit.data.synthetic import SyntheticECGConfig, generate_synthetic

    data = generate_synthetic(SyntheticECGConfig(n_beats=1000, seed=0))
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    torch.manual_seed(seed)
    model = create_model(ModelConfig(family, 8, 5))
    model.fit_input_norm(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(80):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = sum(F.cross_entropy(z, y[idx]) for z in model(x[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    name = f"export_{family}"
    return save_checkpoint(
        out / f"{name}.pt", model, classes=data.classes,
        input_spec={"shape": list(data.input_shape), "fs": data.fs, "units": data.units,
                    "channels": list(data.channels), "signal_channels": data.signal_channels,
                    "window": 256},
        meta={"fixture": name, "seed": seed, "made_by": "tools/make_test_fixtures.py"})


FIXTURES: dict[str, Callable[[Path, int], Path]] = {
    "attack_resnet1d": attack_resnet1d,
    "tiny_checkpoint": tiny_checkpoint,
    "export_test_resnet1d": lambda out, seed: _export_model("test_resnet1d", out, seed),
    "export_test_mobilenet1d": lambda out, seed: _export_model("test_mobilenet1d", out, seed),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"fixtures to make (default all: {', '.join(FIXTURES)})")
    p.add_argument("--seed", type=int, default=0, help="training seed (the committed files: 0)")
    p.add_argument("--out", type=Path, default=OUT, help="output directory (default %(default)s)")
    a = p.parse_args(argv)
    unknown = sorted(set(a.names) - set(FIXTURES))
    if unknown:
        p.error(f"unknown fixture(s) {', '.join(unknown)}; known: {', '.join(FIXTURES)}")
    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO / "tests"))  # the tests' own data makers (conftest.py)
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.names or FIXTURES:
        path = FIXTURES[name](a.out, a.seed)
        print(f"{path}  {path.stat().st_size // 1024} KiB", file=sys.stderr)


if __name__ == "__main__":
    main()

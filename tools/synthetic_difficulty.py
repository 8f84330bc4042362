"""How hard is the synthetic ECG? Train a small 1-D CNN on one seed, test it on another.

The synthetic data must be learnable but not trivially separable: this plain CNN (no multi-exit,
no robustness tricks) trained on seed ``--seed`` and tested on other simulated patients
(``--test-seed``, default ``--seed + 1``) should land around 90-97% accuracy, not at 100%.

Usage:
    PYTHONPATH=. python tools/synthetic_difficulty.py --n-beats 6000 --epochs 8
    PYTHONPATH=. python tools/synthetic_difficulty.py --no-rr-context   # S gets much harder

Prints the generation time, the accuracy per epoch, and at the end the test accuracy, the
per-class sensitivity (recall) and the confusion matrix (rows: true class, columns: predicted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from edgeexit.data.synthetic import SyntheticECGConfig, generate_synthetic  # noqa: E402


class SmallCNN(nn.Module):
    """Four conv layers (16-32 channels) + BatchNorm + ReLU, global average pooling, a linear head.

    The per-channel input normalisation (mean/std of the training data) is a fixed buffer, so the
    model takes raw windows in mV (and RR context in seconds/ratios).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, n_classes: int) -> None:
        super().__init__()
        c_in = mean.size
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1))

        def block(c_i: int, c_o: int, k: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [
                nn.Conv1d(c_i, c_o, k, padding=k // 2, bias=False),
                nn.BatchNorm1d(c_o),
                nn.ReLU(),
            ]
            return layers + ([nn.MaxPool1d(2)] if pool else [])

        self.features = nn.Sequential(
            # kernels of 9 with 3 poolings: a receptive field of ~120 samples (0.33 s at 360 Hz),
            # enough to relate a P wave to its QRS and a T wave to the QRS before it
            *block(c_in, 16, 9, True),
            *block(16, 32, 9, True),
            *block(32, 32, 9, True),
            *block(32, 32, 9, False),
        )
        self.head = nn.Linear(32, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features((x - self.mean) / self.std)  # [N, 32, L/8]
        return self.head(h.mean(dim=2))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> dict:
    """Accuracy, per-class sensitivity and the confusion matrix of ``model`` on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xb).argmax(1) for xb in torch.split(x, 1024)]).numpy()
    true = y.numpy()
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (true, pred), 1)
    support = cm.sum(axis=1)
    sens = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return {"accuracy": float((pred == true).mean()), "sensitivity": sens, "confusion": cm}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-beats", type=int, default=6000, help="training beats (seed --seed)")
    ap.add_argument("--test-beats", type=int, default=None, help="test beats (default: --n-beats)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="generator seed of the training data")
    ap.add_argument("--test-seed", type=int, default=None, help="default: --seed + 1")
    ap.add_argument("--noise", type=float, default=1.0, help="SyntheticECGConfig.noise")
    ap.add_argument("--no-rr-context", dest="rr_context", action="store_false",
                    help="ECG channel only (no RR-interval context)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--torch-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    ap.add_argument("--json", action="store_true", help="print the final result as JSON")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.torch_seed)
    test_seed = args.seed + 1 if args.test_seed is None else args.test_seed
    test_beats = args.n_beats if args.test_beats is None else args.test_beats

    t0 = time.perf_counter()
    train = generate_synthetic(SyntheticECGConfig(
        n_beats=args.n_beats, seed=args.seed, rr_context=args.rr_context, noise=args.noise))
    gen_s = time.perf_counter() - t0
    test = generate_synthetic(SyntheticECGConfig(
        n_beats=test_beats, seed=test_seed, rr_context=args.rr_context, noise=args.noise))
    print(f"generated {len(train)} training beats in {gen_s:.2f} s (seed {args.seed}); "
          f"{len(test)} test beats (seed {test_seed}); channels {list(train.channels)}")
    print(f"train classes {train.class_counts()}  test classes {test.class_counts()}")

    mean = train.x.mean(axis=(0, 2))
    std = train.x.std(axis=(0, 2)) + 1e-6
    n_classes = len(train.classes)
    model = SmallCNN(mean, std, n_classes)
    x_tr, y_tr = torch.from_numpy(train.x), torch.from_numpy(train.y)
    x_te, y_te = torch.from_numpy(test.x), torch.from_numpy(test.y)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.torch_seed)
    for epoch in range(args.epochs):
        model.train()
        t_ep = time.perf_counter()
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        for idx in torch.split(order, args.batch_size):
            opt.zero_grad()
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        sched.step()
        res_tr = evaluate(model, x_tr, y_tr, n_classes)
        res_te = evaluate(model, x_te, y_te, n_classes)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(train):.4f}  "
              f"train acc {res_tr['accuracy']:.4f}  test acc {res_te['accuracy']:.4f}  "
              f"({time.perf_counter() - t_ep:.1f} s)")

    res = evaluate(model, x_te, y_te, n_classes)
    sens = {c: round(float(s), 4) for c, s in zip(train.classes, res["sensitivity"])}
    if args.json:
        print(json.dumps({
            "accuracy": res["accuracy"], "sensitivity": sens,
            "confusion": res["confusion"].tolist(),
            "rr_context": args.rr_context, "n_beats": args.n_beats, "seed": args.seed,
            "test_seed": test_seed, "epochs": args.epochs, "generation_s": gen_s,
        }))
        return 0
    print(f"\ntest accuracy {res['accuracy']:.4f} (train seed {args.seed}, test seed {test_seed}, "
          f"rr_context={args.rr_context})")
    print("sensitivity " + "  ".join(f"{c}={s:.3f}" for c, s in sens.items()))
    print("confusion (rows true, columns predicted): " + " ".join(train.classes))
    for c, row in zip(train.classes, res["confusion"]):
        print(f"  {c} " + " ".join(f"{v:5d}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

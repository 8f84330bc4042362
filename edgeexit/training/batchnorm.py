"""Precise BatchNorm statistics (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm")."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def recalibrate_batchnorm(model: nn.Module, x: np.ndarray, batches: int, batch_size: int,
                          seed: int = 0, transform=None) -> int:
    """Recompute every BatchNorm layer's running statistics of ``model`` as the exact average
    over ``batches`` batches of ``x`` (a seeded sample without replacement, in index order), each
    passed through ``transform`` first if given (training's augmentation), with the weights
    untouched; returns the number of windows used (0: the model has no BatchNorm).

    The running averages left by training reflect its last few steps, and augmented ones; these
    reflect the data (precise BN).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not len(x):
        return 0
    n = min(len(x), batches * batch_size)
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    momenta = [b.momentum for b in bns]
    was_training = model.training
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative average: each batch counts alike
    model.train()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                b = torch.from_numpy(np.ascontiguousarray(x[idx[i:i + batch_size]], np.float32))
                model((b if transform is None else transform(b)).to(device))
    finally:
        for b, m in zip(bns, momenta):
            b.momentum = m
        model.train(was_training)
    return n

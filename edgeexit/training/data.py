"""What training makes of its data: the validation split, the class weights, the batch loader."""

from __future__ import annotations

import numpy as np
import torch

from edgeexit.data import BeatDataset
from edgeexit.data.splits import ValidationSplit


def split_validation(data: BeatDataset, config) -> tuple[BeatDataset, BeatDataset]:
    """The (training, validation) split that :func:`edgeexit.train.train` makes of ``data``
    under ``config`` (a :class:`~edgeexit.train.TrainConfig`: ``val_split``, ``val_fraction``,
    ``seed``): :class:`edgeexit.data.splits.ValidationSplit`, which export rebuilds from the
    checkpoint (never on test data)."""
    return ValidationSplit(config.val_split, config.val_fraction, config.seed).apply(data)


def class_weights(y: np.ndarray, num_classes: int, mode: str, cap: float) -> np.ndarray | None:
    """Cross-entropy weights per class (``mode``: ``none``, ``sqrt`` or ``balanced``), or None."""
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    power = 0.5 if mode == "sqrt" else 1.0
    w = np.where(counts > 0, (counts.max() / np.maximum(counts, 1.0)) ** power, 1.0)
    return np.minimum(w, cap).astype(np.float32)


def make_loader(train_set: BeatDataset, templates: np.ndarray | None, config, dist):
    """``(loader, sampler)``: shuffled batches of ``(x, y, index[, template])``; under torchrun a
    :class:`~torch.utils.data.DistributedSampler` (returned, so that every epoch sets its seed)
    gives each rank its share, else the sampler is None.

    On a GPU (``dist.device``) the batches come in pinned memory, so that the loop copies them
    asynchronously, from ``config.loader_workers`` worker processes (0: this one; the beats are
    in memory already, so workers pay off only when augmentation is the bottleneck)."""
    dataset = torch.utils.data.TensorDataset(
        torch.from_numpy(train_set.x),
        torch.from_numpy(train_set.y),
        torch.arange(len(train_set)),
        *([] if templates is None else [torch.from_numpy(templates)]),
    )
    per_rank_batch = max(2, config.batch_size // dist.world)
    sampler = None
    gen = torch.Generator().manual_seed(config.seed)
    if dist.world > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=config.seed
        )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=per_rank_batch,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(dataset) > per_rank_batch,  # BatchNorm cannot train on a batch of one
        generator=gen,
        pin_memory=dist.device.type == "cuda",
        num_workers=config.loader_workers,
        persistent_workers=config.loader_workers > 0,
    )
    return loader, sampler

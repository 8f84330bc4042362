"""Every exit's answers on a data set: logits, and one classification report per exit."""

from __future__ import annotations

import numpy as np
import torch

from edgeexit.data import BeatDataset
from edgeexit.metrics import classification_report
from edgeexit.models import MultiExitNet


@torch.no_grad()
def predict_exits(model: MultiExitNet, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of every exit for ``x [N, C, L]``: float32 ``[num_exits, N, num_classes]``,
    computed on the model's device (in float32, also after mixed-precision training)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        chunks = [
            torch.stack(model(torch.from_numpy(x[i : i + batch_size]).to(device))).float().cpu().numpy()
            for i in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was_training)
    return np.concatenate(chunks, axis=1)


def evaluate_exits(model: MultiExitNet, data: BeatDataset, batch_size: int = 512) -> list[dict]:
    """:func:`edgeexit.metrics.classification_report` of every exit on ``data``."""
    logits = predict_exits(model, data.x, batch_size)
    return [classification_report(data.y, z.argmax(axis=1), data.classes) for z in logits]

"""Reading torch files of plain tensors and literals (``weights_only``: no code runs on load):
checkpoints (:mod:`edgeexit.checkpoint`) and VAE files (:mod:`edgeexit.models.vae`)."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeexit.errors import CheckpointError


def read_payload(path: Path, what: str):
    """``torch.load(weights_only=True)`` of ``path`` (plain tensors and literals: no code runs).

    Raises:
        CheckpointError: one line naming ``path``, ``what`` it should be and torch's error type
            with the first line of its message (torch's own runs to a page of advice).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        lines = str(e).strip().splitlines()
        raise CheckpointError(
            f"cannot read {path} as {what}: {type(e).__name__}: {lines[0] if lines else ''}"
        ) from e

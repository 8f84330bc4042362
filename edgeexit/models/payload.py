"""Reading torch files of plain tensors and literals (``weights_only``: no code runs on load):
checkpoints (:mod:`edgeexit.checkpoint`) and VAE files (:mod:`edgeexit.models.vae`), and the
format/version gate both apply to what they read."""

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
        first = lines[0] if lines else ""
        if "weights_only" in str(e):  # torch's advice to unpickle with code: unsafe for a file of unknown origin
            first = "not a file of plain tensors that can be read safely (edgeexit never unpickles code)"
        raise CheckpointError(f"cannot read {path} as {what}: {type(e).__name__}: {first[:200]}") from e


def check_format(path: Path, payload, fmt: str, newest: int, what: str, label: str) -> None:
    """Refuse a ``payload`` that is not a dict tagged ``format == fmt`` (``"{path} is not {what}"``)
    or whose ``version`` is above ``newest`` (``label`` names that version in the message).

    Raises:
        CheckpointError: one line naming ``path``.
    """
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path} is not {what}")
    if payload.get("version", 0) > newest:
        raise CheckpointError(
            f"{path} has {label} {payload['version']}; this edgeexit reads up to "
            f"{newest}: upgrade edgeexit"
        )

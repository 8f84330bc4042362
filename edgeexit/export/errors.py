"""Errors of the export step (host side): a model that cannot be written as an ONNX/TFLite file."""

from __future__ import annotations

from edgeexit.errors import EdgeExitError


class ExportError(EdgeExitError):
    """A model could not be exported, checked or quantized; the message says why and what to try."""


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, shortened: converters' messages run to pages."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Errors of the export step (host side): a model that cannot be written as an ONNX/TFLite file."""

from __future__ import annotations

from edgeexit.errors import EdgeExitError


class ExportError(EdgeExitError):
    """A model could not be exported, checked or quantized; the message says why and what to try."""

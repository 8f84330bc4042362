"""Errors of the export step (host side): a model that cannot be written as an ONNX/TFLite file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgeexit.errors import EdgeExitError

if TYPE_CHECKING:
    from edgeexit.export.validate import Failure


class ExportError(EdgeExitError):
    """A model could not be exported, checked or quantized; the message says why and what to try."""


class ValidationError(ExportError):
    """Exported files do not compute what the PyTorch model computes, within the tolerances of
    :mod:`edgeexit.export.validate`. ``failures`` holds every failed check (file, format, what was
    measured, the bound); the message lists them all."""

    def __init__(self, failures: Sequence[Failure]) -> None:
        self.failures = tuple(failures)
        if not self.failures:
            raise ValueError("ValidationError needs at least one failure")
        msgs = [f.message for f in self.failures]
        listed = "\n".join(f"- {m}" for m in msgs)
        super().__init__(msgs[0] if len(msgs) == 1 else
                         f"{len(msgs)} checks against PyTorch failed:\n{listed}")

    def __reduce__(self):
        return type(self), (self.failures,)


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, shortened: converters' messages run to pages."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

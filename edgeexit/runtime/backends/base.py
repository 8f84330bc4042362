"""The backend interface: load one model file, run it on a float32 batch, return its outputs.

A backend never imports torch or onnx. ``Session.run`` takes ``x`` of shape ``[N, *input_shape]``
(float32, C-contiguous) and returns the outputs in the order of ``output_names`` as float32 arrays
with the same leading batch dimension N.
"""

from __future__ import annotations

import importlib
import os
from typing import Protocol

import numpy as np

from edgeexit.errors import EdgeExitError
from edgeexit.runtime.kinds import FORMAT_BACKEND, Format


class BackendError(EdgeExitError):
    """A backend is not installed, or a model file cannot be loaded or run by it."""


class Session(Protocol):
    """One loaded model file."""

    input_name: str
    output_names: tuple[str, ...]
    # dimensions after the batch one, as the file records them (None: a symbolic dimension)
    input_shape: tuple[int | None, ...]
    output_shapes: tuple[tuple[int | None, ...] | None, ...]

    def run(self, x: np.ndarray, copy: bool = True) -> list[np.ndarray]:
        """Outputs for the batch ``x`` ``[N, ...]``, in ``output_names`` order.

        ``copy=False`` lets a backend return views of its own output buffers, valid until the
        session runs again (the engine chains segments this way); True: arrays the caller owns.
        """
        ...


class Backend(Protocol):
    """An inference engine that loads files of one format."""

    name: str
    file_format: Format  # the files it loads (runtime/kinds.py: FORMAT_BACKEND)

    def available(self) -> bool:
        """True if the engine's Python package can be imported here."""
        ...

    def load(self, path: str | os.PathLike, threads: int | None = None) -> Session:
        """Load ``path``; ``threads`` = intra-op threads (None: the engine's default)."""
        ...


# backend name -> (module, class): imported on first use so a device needs only its own engine;
# which format each runs is kinds.FORMAT_BACKEND
BACKENDS: dict[str, tuple[str, str]] = {
    FORMAT_BACKEND[Format.ONNX]: ("edgeexit.runtime.backends.onnxruntime", "OnnxRuntimeBackend"),
    FORMAT_BACKEND[Format.TFLITE]: ("edgeexit.runtime.backends.litert", "LiteRTBackend"),
}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; raises :class:`BackendError` naming the known ones."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)()


def backend_for_format(file_format: str) -> Backend:
    """The backend that runs files of ``file_format`` (``onnx`` or ``tflite``)."""
    if file_format not in FORMAT_BACKEND:
        raise BackendError(f"no backend runs {file_format!r} files; known formats: {', '.join(FORMAT_BACKEND)}")
    return get_backend(FORMAT_BACKEND[Format(file_format)])

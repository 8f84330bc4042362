"""Inference backends of the device runtime: one small class per engine (numpy in, numpy out).

``onnxruntime`` runs ``.onnx`` segments; ``litert`` runs ``.tflite`` segments with
``ai_edge_litert`` (falling back to ``tflite_runtime``). Each backend module imports its engine
lazily, so this package imports with numpy alone.
"""

from edgeexit.runtime.backends.base import (
    BACKENDS,
    Backend,
    Session,
    backend_for_format,
    get_backend,
)

__all__ = ["BACKENDS", "Backend", "Session", "backend_for_format", "get_backend"]

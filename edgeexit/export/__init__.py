"""Export a multi-exit model for the device: per-exit segments, ONNX/TFLite files, the bundle.

Host side only (imports torch). The device reads what this writes through ``edgeexit.runtime``.
"""

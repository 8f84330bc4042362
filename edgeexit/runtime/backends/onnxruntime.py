"""The onnxruntime backend: runs ``.onnx`` segments on the CPU.

``onnxruntime`` is imported only inside the methods, so this module imports with numpy alone (and
never imports torch or the ``onnx`` package). Sessions are set up for low-latency batch-1 work on
a small CPU: the CPU execution provider, ``threads`` intra-op threads, one inter-op thread,
sequential execution and every graph optimisation (which also folds BatchNorm into convolutions
and fuses int8 QDQ patterns into integer kernels).

Example:
    >>> session = OnnxRuntimeBackend().load("seg0.onnx", threads=1)
    >>> feat, logits = session.run(x)  # x: float32 [N, 8, 256]
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np

from edgeexit.runtime.backends.base import BackendError
from edgeexit.runtime.kinds import Format

log = logging.getLogger(__name__)

_INSTALL_HINT = "pip install onnxruntime"
_ORT_ERROR_LEVEL = 3  # onnxruntime's own log: errors only (its warnings go to stderr otherwise)


def _import_ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(
            f"the onnxruntime backend needs the onnxruntime package ({exc}); {_INSTALL_HINT}"
        ) from exc
    return onnxruntime


def _per_sample(shape) -> tuple[int | None, ...] | None:
    """A graph tensor's dimensions after the batch one (None where symbolic), or None."""
    if shape is None or len(shape) == 0:
        return None
    return tuple(d if isinstance(d, int) and d > 0 else None for d in list(shape)[1:])


class OnnxRuntimeSession:
    """One ``.onnx`` file loaded into an ``onnxruntime.InferenceSession``.

    Attributes:
        path: the file loaded.
        input_name: name of the single graph input.
        input_shape: the input's dimensions after the batch dimension (None where symbolic).
        output_names: names of the graph outputs, in the order :meth:`run` returns them.
        output_shapes: each output's dimensions after the batch dimension (None where symbolic;
            None for the whole shape where the file does not record its rank).
    """

    def __init__(self, session, path: Path) -> None:
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(
                f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an "
                "edgeexit segment has exactly one"
            )
        if inputs[0].type != "tensor(float)":
            raise BackendError(f"{path}: input {inputs[0].name!r} is {inputs[0].type}, not float32")
        self.path = path
        self.input_name: str = inputs[0].name
        shape = list(inputs[0].shape)
        self._rank = len(shape)
        self.input_shape: tuple[int | None, ...] = tuple(
            d if isinstance(d, int) and d > 0 else None for d in shape[1:]
        )
        outputs = session.get_outputs()
        self.output_names: tuple[str, ...] = tuple(o.name for o in outputs)
        self.output_shapes: tuple[tuple[int | None, ...] | None, ...] = tuple(
            _per_sample(o.shape) for o in outputs
        )
        self._session = session
        self._run = session.run  # bound once: run() is on the latency path
        self._outputs = list(self.output_names)

    def _bad_input(self, x: object) -> BackendError:
        want = ", ".join(["N", *("?" if d is None else str(d) for d in self.input_shape)])
        got = (
            f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        )
        return BackendError(
            f"{self.path.name}: input {self.input_name!r} must be a float32 array [{want}], "
            f"got {got}"
        )

    def run(self, x: np.ndarray, copy: bool = True) -> list[np.ndarray]:
        """Outputs for the batch ``x`` ``[N, ...]`` (float32), in ``output_names`` order.

        Args:
            x: float32 input batch; made C-contiguous if it is not.
            copy: part of the backend interface; onnxruntime returns new arrays either way.

        Returns:
            One float32 array per output, each with leading dimension N.

        Raises:
            BackendError: ``x`` has the wrong type, dtype, rank or shape, or the engine failed.
        """
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != self._rank:
            raise self._bad_input(x)
        for got, want in zip(x.shape[1:], self.input_shape):
            if want is not None and got != want:
                raise self._bad_input(x)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        try:
            return self._run(self._outputs, {self.input_name: x})
        except Exception as exc:  # onnxruntime's own exception types (Fail, InvalidArgument, ...)
            raise BackendError(f"onnxruntime failed to run {self.path.name}: {exc}") from exc


    def link(self, source: np.ndarray | None = None):
        """The batch-1 buffers for :class:`~edgeexit.runtime.engine.Engine`'s chain of segments,
        through onnxruntime's IO binding: ``(input, outputs, run)`` where ``input`` is the array
        the graph reads (``source`` itself when given: the previous segment's features, shared,
        not copied), ``outputs`` the arrays it writes and ``run()`` one bound run; None where a
        dimension is symbolic (the engine then calls :meth:`run`)."""
        shapes = (self.input_shape, *self.output_shapes)
        if any(sh is None or None in sh for sh in shapes):
            return None
        binding = self._session.io_binding()
        shape = (1, *self.input_shape)
        if source is None or source.shape != shape or source.dtype != np.float32:
            source = np.zeros(shape, np.float32)
        binding.bind_cpu_input(self.input_name, source)
        outputs = []
        for name, sh in zip(self.output_names, self.output_shapes):
            out = np.zeros((1, *sh), np.float32)
            binding.bind_output(name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
            outputs.append(out)
        return source, tuple(outputs), functools.partial(self._session.run_with_iobinding, binding)


class OnnxRuntimeBackend:
    """Runs ``.onnx`` files with onnxruntime's CPU execution provider."""

    name = "onnxruntime"
    file_format = Format.ONNX

    def available(self) -> bool:
        """True if the ``onnxruntime`` package can be imported here."""
        try:
            _import_ort()
        except BackendError:
            return False
        return True

    def load(self, path: str | os.PathLike, threads: int | None = None) -> OnnxRuntimeSession:
        """Load the ONNX file ``path`` into a CPU session.

        Args:
            path: an ``.onnx`` file (weights embedded).
            threads: intra-op threads (None: onnxruntime's default, one per physical core).

        Returns:
            The loaded session.

        Raises:
            BackendError: onnxruntime is missing, ``threads`` is invalid, or the file is missing
                or is not a model onnxruntime can load.
        """
        ort = _import_ort()
        path = Path(path)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise BackendError(f"threads must be a positive integer or None, got {threads!r}")
        if not path.is_file():
            raise BackendError(f"no ONNX model file at {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 0 if threads is None else threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = _ORT_ERROR_LEVEL
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # InvalidProtobuf, Fail, NotImplemented, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(
                f"onnxruntime cannot load {path}: it is not a valid ONNX model it can run "
                f"({first}); export it again from the model"
            ) from exc
        log.debug("loaded %s with onnxruntime %s (threads=%s)", path, ort.__version__, threads)
        return OnnxRuntimeSession(session, path)

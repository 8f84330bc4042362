"""The LiteRT backend: runs ``.tflite`` segments with ``ai_edge_litert`` (or ``tflite_runtime``).

The interpreter package is imported only inside the methods, so this module imports with numpy
alone (never torch, onnx or tensorflow). ``ai_edge_litert`` is preferred; the older
``tflite_runtime`` wheel (same ``Interpreter`` API) is the fallback.

Files are converted at batch 1 (:func:`edgeexit.export.tflite.export_tflite`). A batch of N
resizes the input to ``[N, ...]`` and re-allocates the tensors once, when N changes; the current
size is cached, so a stream of batch-1 calls never resizes. Where a file cannot be resized (an op
with the batch-1 shape baked in: every file litert-torch 0.10 writes has such reshapes, and its
dynamic-batch conversion fails), the first larger batch finds out, and from then on the session
runs larger batches one sample at a time (batch 1 is the device's case anyway).

Output order: :meth:`LiteRTSession.run` returns the outputs in the order of the subgraph's output
list, which the converter writes in the order the PyTorch module returns them (``[feat_k,
logits_k]``); ``output_names`` are the signature names of those tensors, in that order. (The
signature's own name list is sorted alphabetically by the runtime, so it is not used for order.)
The exporter checks this order against PyTorch for every file it writes.

Example:
    >>> session = LiteRTBackend().load("segment_0.tflite", threads=1)
    >>> feat, logits = session.run(x)  # x: float32 [N, 8, 256]
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeexit.runtime.backends.base import BackendError
from edgeexit.runtime.kinds import Format

log = logging.getLogger(__name__)

_INSTALL_HINT = "pip install ai-edge-litert"
_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
_F32 = np.dtype(np.float32)


def _import_interpreter():
    """The ``Interpreter`` class of the first LiteRT package that imports, and its module name."""
    errors = []
    for name in _MODULES:
        try:
            return importlib.import_module(name).Interpreter, name
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise BackendError(
        f"the litert backend needs a LiteRT interpreter ({'; '.join(errors)}); {_INSTALL_HINT}"
    )


def _tensor_name(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


class LiteRTSession:
    """One ``.tflite`` file loaded into a LiteRT ``Interpreter``.

    Attributes:
        path: the file loaded.
        input_name: name of the single signature input.
        input_shape: the input's dimensions after the batch dimension.
        output_names: signature names of the outputs, in the order :meth:`run` returns them.
        output_shapes: each output's dimensions after the batch dimension (as converted).
    """

    def __init__(self, interpreter, path: Path) -> None:
        self.path = path
        self._it = interpreter
        inputs = interpreter.get_input_details()
        if len(inputs) != 1:
            raise BackendError(
                f"{path} has {len(inputs)} inputs; an edgeexit segment has exactly one"
            )
        inp = inputs[0]
        outputs = interpreter.get_output_details()
        for d in (inp, *outputs):
            if np.dtype(d["dtype"]) != np.float32:
                raise BackendError(
                    f"{path.name}: tensor {_tensor_name(d['name'])!r} is {np.dtype(d['dtype'])}, "
                    "not float32; edgeexit files have float32 inputs and outputs (int8 files "
                    "quantize inside), export it again with edgeexit.export.tflite"
                )
        self._in = int(inp["index"])
        self._out = [int(d["index"]) for d in outputs]
        names = {}
        # {signature: {"inputs": {name: tensor index}, "outputs": {...}}}: what the interpreter's
        # own SignatureRunner reads (ai_edge_litert and tflite_runtime alike)
        full = getattr(interpreter, "_get_full_signature_list", None)
        sigs = full() if full is not None else {}
        if len(sigs) == 1:
            sig = next(iter(sigs.values()))
            names = {int(i): n for n, i in {**sig["inputs"], **sig["outputs"]}.items()}
        self.input_name: str = names.get(self._in, _tensor_name(inp["name"]))
        self.output_names: tuple[str, ...] = tuple(
            names.get(i, _tensor_name(d["name"])) for i, d in zip(self._out, outputs)
        )
        self.output_shapes: tuple[tuple[int, ...], ...] = tuple(
            tuple(int(v) for v in d["shape"][1:]) for d in outputs
        )
        shape = [int(d) for d in inp["shape"]]
        self._rank = len(shape)
        self.input_shape: tuple[int, ...] = tuple(shape[1:])
        self._base_batch = shape[0]  # the batch the file was converted at
        self._batch = shape[0]  # the batch the tensors are allocated for now ...
        self._alloc_shape = tuple(shape)  # ... and the input shape that goes with it
        self._resizable = True
        # bound once: run() is on the latency path
        self._set = interpreter.set_tensor
        self._get = interpreter.get_tensor
        self._invoke = interpreter.invoke
        self._bind()

    # -- zero-copy buffers -------------------------------------------------------------------------
    #
    # ``set_tensor``/``get_tensor`` each cost a Python -> C++ call and a copy; at batch 1 they were
    # the larger part of a segment's fixed cost (``tools/segment_overhead.py``). So the session
    # keeps numpy views of the input and output buffers (``Interpreter.tensor``, the interpreter's
    # documented zero-copy access) and runs the wrapped native interpreter's ``Invoke`` directly:
    # the public ``invoke()`` refuses to run while such views exist, a guard against buffers being
    # re-allocated under them. Here nothing re-allocates while they exist: :meth:`_unbind` drops
    # every view (and the bound ``Invoke``, which holds a reference too) before a resize, and
    # :meth:`_bind` takes new ones after it. An interpreter without that native handle (another
    # package's API) runs through ``set_tensor``/``invoke``/``get_tensor``.

    def _bind(self) -> None:
        native = getattr(self._it, "_interpreter", None)
        invoke = getattr(native, "Invoke", None)
        if invoke is None:
            self._fast = None
            return
        try:
            in_view = self._it.tensor(self._in)()
            out_views = [self._it.tensor(i)() for i in self._out]
            for v in out_views:
                v.flags.writeable = False  # handed out by run(copy=False)
        except Exception as exc:  # an interpreter whose buffers cannot be viewed: the copying path
            log.debug("%s: no zero-copy buffers (%s)", self.path.name, exc)
            self._fast = None
            return
        self._fast = (in_view, tuple(out_views), invoke)

    def _unbind(self) -> None:
        self._fast = None

    def _bad_input(self, x: object) -> BackendError:
        want = ", ".join(["N", *(str(d) for d in self.input_shape)])
        got = (
            f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        )
        return BackendError(
            f"{self.path.name}: input {self.input_name!r} must be a float32 array [{want}], "
            f"got {got}"
        )

    def _resize(self, n: int) -> bool:
        """Allocate the tensors for batch ``n``; False (back at the base batch) if impossible."""
        it = self._it
        self._unbind()
        try:
            it.resize_tensor_input(self._in, [n, *self.input_shape], strict=False)
            it.allocate_tensors()
            ok = all(len(d["shape"]) and int(d["shape"][0]) == n for d in it.get_output_details())
        except Exception as exc:  # RuntimeError / ValueError from the interpreter's Prepare
            log.debug("%s cannot be resized to batch %d (%s)", self.path.name, n, exc)
            ok = False
        if ok:
            self._batch, self._alloc_shape = n, (n, *self.input_shape)
            self._bind()
            return True
        try:
            it.resize_tensor_input(self._in, [self._base_batch, *self.input_shape], strict=False)
            it.allocate_tensors()
        except Exception as exc:
            raise BackendError(
                f"LiteRT failed to restore {self.path.name} to its batch: {exc}"
            ) from exc
        self._batch, self._alloc_shape = self._base_batch, (self._base_batch, *self.input_shape)
        self._bind()
        return False

    def _invoke_one(self, x: np.ndarray, copy: bool = True) -> Sequence[np.ndarray]:
        fast = self._fast
        if fast is None:
            self._set(self._in, x)
            self._invoke()
            return [self._get(i) for i in self._out]  # get_tensor copies
        in_view, out_views, invoke = fast
        in_view[...] = x
        invoke()
        return [v.copy() for v in out_views] if copy else out_views

    def run(self, x: np.ndarray, copy: bool = True) -> Sequence[np.ndarray]:
        """Outputs for the batch ``x`` ``[N, ...]`` (float32), in ``output_names`` order.

        Args:
            x: float32 input batch; made C-contiguous if it is not.
            copy: False returns, where the interpreter allows it, read-only views of the
                output buffers instead of copies: valid only until this session runs or
                resizes again, and no resize may happen while one is held. The engine
                uses this to hand a segment's features straight to the next segment.

        Returns:
            One float32 array per output, each with leading dimension N (copies unless
            ``copy=False``).

        Raises:
            BackendError: ``x`` has the wrong type, dtype, rank or shape, or the engine failed.
        """
        # the latency path: a float32 batch of the size the tensors are allocated for
        if type(x) is np.ndarray and x.dtype is _F32 and x.shape == self._alloc_shape:
            fast = self._fast
            try:
                if fast is None:
                    return self._invoke_one(x)
                fast[0][...] = x  # _invoke_one inlined: this runs once per segment per window
                fast[2]()
            except Exception as exc:  # RuntimeError / ValueError from the interpreter
                raise BackendError(f"LiteRT failed to run {self.path.name}: {exc}") from exc
            return [v.copy() for v in fast[1]] if copy else fast[1]
        return self._run_general(x)

    def link(self, source: np.ndarray | None = None):
        """The batch-1 buffers for :class:`~edgeexit.runtime.engine.Engine`'s chain of segments:
        ``(input, outputs, run)`` where ``input`` is the interpreter's own input buffer (write the
        sample into it), ``outputs`` read-only views of its output buffers and ``run()`` the
        native ``Invoke``; None where the interpreter offers no such buffers (the engine then
        calls :meth:`run`). ``source`` (the previous segment's features) cannot be shared: the
        engine copies it into ``input``. Valid until the session resizes: the engine drops them
        before any batch run (a held view makes a resize fail, never write into freed memory).
        """
        if self._batch != 1 and not (self._resizable and self._resize(1)):
            return None
        if self._fast is None:
            return None
        in_view, out_views, invoke = self._fast
        return in_view, out_views, invoke

    def _run_general(self, x: np.ndarray) -> list[np.ndarray]:
        """:meth:`run` for any valid input: checks it, resizes or loops over the batch."""
        if (
            not isinstance(x, np.ndarray)
            or x.dtype != np.float32
            or x.ndim != self._rank
            or x.shape[1:] != self.input_shape
            or x.shape[0] < 1
        ):
            raise self._bad_input(x)
        x = np.ascontiguousarray(x)
        n = x.shape[0]
        try:
            if n == self._batch:
                return self._invoke_one(x)
            if self._resizable and self._resize(n):
                return self._invoke_one(x)
            if self._resizable:
                self._resizable = False
                log.debug(
                    "%s cannot change its batch size (shapes fixed at conversion): running "
                    "batches of %d one sample at a time", self.path.name, n,
                )
            b = self._base_batch
            if n % b:
                raise BackendError(
                    f"{self.path.name} runs only batches that are multiples of {b}, got {n}"
                )
            parts = [self._invoke_one(x[i : i + b]) for i in range(0, n, b)]
            return [np.concatenate([p[j] for p in parts]) for j in range(len(self._out))]
        except BackendError:
            raise
        except Exception as exc:  # RuntimeError / ValueError from the interpreter
            raise BackendError(f"LiteRT failed to run {self.path.name}: {exc}") from exc


class LiteRTBackend:
    """Runs ``.tflite`` files with the LiteRT ``Interpreter`` (XNNPACK CPU kernels)."""

    name = "litert"
    file_format = Format.TFLITE

    def available(self) -> bool:
        """True if ``ai_edge_litert`` or ``tflite_runtime`` can be imported here."""
        try:
            _import_interpreter()
        except BackendError:
            return False
        return True

    def load(self, path: str | os.PathLike, threads: int | None = None) -> LiteRTSession:
        """Load the TFLite file ``path`` and allocate its tensors (for batch 1).

        Args:
            path: a ``.tflite`` file with one float32 input and float32 outputs.
            threads: CPU threads of the interpreter (None: LiteRT's default).

        Returns:
            The loaded session.

        Raises:
            BackendError: no LiteRT interpreter is installed, ``threads`` is invalid, or the file
                is missing or is not a model LiteRT can load.
        """
        interpreter_cls, module = _import_interpreter()
        path = Path(path)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise BackendError(f"threads must be a positive integer or None, got {threads!r}")
        if not path.is_file():
            raise BackendError(f"no TFLite model file at {path}")
        try:
            kwargs = {} if threads is None else {"num_threads": threads}
            interpreter = interpreter_cls(model_path=str(path), **kwargs)
            interpreter.allocate_tensors()
        except Exception as exc:  # ValueError / RuntimeError for a bad flatbuffer
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(
                f"LiteRT cannot load {path}: it is not a valid TFLite model it can run ({first}); "
                "export it again from the model"
            ) from exc
        log.debug("loaded %s with %s (threads=%s)", path, module, threads)
        return LiteRTSession(interpreter, path)

"""The LiteRT backend on small hand-built ``.tflite`` files: no torch, no converter needed.

The files are written with the TFLite flatbuffer schema that ``ai_edge_litert`` ships, so these
tests run wherever the device runtime runs. (Files converted from the real models are covered in
``tests/export/test_tflite.py``.)
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert.interpreter")
flatbuffers = pytest.importorskip("flatbuffers")
from ai_edge_litert import schema_py_generated as fb  # noqa: E402

from edgeexit.runtime.backends import get_backend  # noqa: E402
from edgeexit.runtime.backends.base import BackendError, backend_for_format  # noqa: E402
from edgeexit.runtime.backends.litert import LiteRTBackend  # noqa: E402

# needs no torch or onnx: tools/aarch64_check.py runs it on the device install
pytestmark = pytest.mark.device_install

SHAPE = (3, 4)  # per-sample input shape [C, L]
BIAS = np.arange(12, dtype=np.float32).reshape(1, *SHAPE) / 10.0


def _buffer(data: np.ndarray | None = None):
    b = fb.BufferT()
    if data is not None:
        b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
    return b


def _tensor(name: str, shape, buffer: int, dtype=fb.TensorType.FLOAT32):
    t = fb.TensorT()
    t.name, t.shape, t.type, t.buffer = name, list(shape), dtype, buffer
    return t


def _opcode(code: int):
    oc = fb.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
    return oc


def _op(opcode: int, inputs, outputs, options_type=0, options=None):
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, list(inputs), list(outputs)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def _write(path, tensors, buffers, opcodes, ops, sig_in: dict, sig_out: dict, outputs) -> None:
    """One subgraph, one ``serving_default`` signature; ``outputs`` fixes the subgraph's order."""
    sg = fb.SubGraphT()
    sg.tensors, sg.operators, sg.name = tensors, ops, "main"
    sg.inputs, sg.outputs = list(sig_in.values()), list(outputs)
    sig = fb.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = "serving_default", 0

    def tmap(name, index):
        tm = fb.TensorMapT()
        tm.name, tm.tensorIndex = name, index
        return tm

    sig.inputs = [tmap(n, i) for n, i in sig_in.items()]
    sig.outputs = [tmap(n, i) for n, i in sig_out.items()]
    model = fb.ModelT()
    model.version, model.description = 3, "edgeexit test model"
    model.operatorCodes, model.subgraphs, model.buffers = opcodes, [sg], [fb.BufferT(), *buffers]
    model.signatureDefs = [sig]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory):
    """``x [1, 3, 4] -> (zz_feat = x + BIAS [1, 3, 4], aa_logits = mean(x, -1) [1, 3])``.

    The outputs are named so that they sort the other way round from the subgraph's order: the
    session must return the subgraph's (= the module's) order. Elementwise ops: resizable.
    """
    path = tmp_path_factory.mktemp("litert") / "two_outputs.tflite"
    tensors = [
        _tensor("x", (1, *SHAPE), 0),
        _tensor("bias", (1, *SHAPE), 1),
        _tensor("feat", (1, *SHAPE), 0),
        _tensor("axis", (1,), 2, fb.TensorType.INT32),
        _tensor("logits", (1, SHAPE[0]), 0),
    ]
    buffers = [_buffer(BIAS), _buffer(np.array([2], dtype=np.int32))]
    add_opts = fb.AddOptionsT()
    mean_opts = fb.ReducerOptionsT()
    mean_opts.keepDims = False
    ops = [
        _op(0, [0, 1], [2], fb.BuiltinOptions.AddOptions, add_opts),
        _op(1, [0, 3], [4], fb.BuiltinOptions.ReducerOptions, mean_opts),
    ]
    opcodes = [_opcode(fb.BuiltinOperator.ADD), _opcode(fb.BuiltinOperator.MEAN)]
    _write(path, tensors, buffers, opcodes, ops, {"input": 0},
           {"zz_feat": 2, "aa_logits": 4}, outputs=[2, 4])
    return path


@pytest.fixture(scope="module")
def fixed_batch(tmp_path_factory):
    """``x [1, 3, 4] -> reshape to [1, 12]`` with the target shape a constant: not resizable."""
    path = tmp_path_factory.mktemp("litert") / "fixed_batch.tflite"
    tensors = [
        _tensor("x", (1, *SHAPE), 0),
        _tensor("shape", (2,), 1, fb.TensorType.INT32),
        _tensor("flat", (1, 12), 0),
    ]
    opts = fb.ReshapeOptionsT()
    opts.newShape = [1, 12]
    ops = [_op(0, [0, 1], [2], fb.BuiltinOptions.ReshapeOptions, opts)]
    _write(path, tensors, [_buffer(np.array([1, 12], dtype=np.int32))],
           [_opcode(fb.BuiltinOperator.RESHAPE)], ops, {"input": 0}, {"flat": 2}, outputs=[2])
    return path


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)


def test_backend_is_registered_for_tflite():
    assert isinstance(get_backend("litert"), LiteRTBackend)
    assert isinstance(backend_for_format("tflite"), LiteRTBackend)
    b = LiteRTBackend()
    assert (b.name, b.file_format) == ("litert", "tflite") and b.available()


def test_outputs_come_in_subgraph_order_not_name_order(two_outputs):
    sess = LiteRTBackend().load(two_outputs, threads=1)
    assert sess.input_name == "input"
    assert sess.output_names == ("zz_feat", "aa_logits")
    assert sess.input_shape == SHAPE
    x = _x(1)
    feat, logits = sess.run(x)
    assert feat.shape == (1, *SHAPE) and logits.shape == (1, SHAPE[0])
    assert feat.dtype == np.float32 and logits.dtype == np.float32
    np.testing.assert_allclose(feat, x + BIAS, rtol=1e-6)
    np.testing.assert_allclose(logits, x.mean(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 5, 2])
def test_any_batch_size_by_resizing(two_outputs, n):
    sess = LiteRTBackend().load(two_outputs, threads=1)
    for m in (n, 5, 1, n):  # changing sizes back and forth re-allocates each time
        x = _x(m, seed=m)
        feat, logits = sess.run(x)
        assert feat.shape == (m, *SHAPE) and logits.shape == (m, SHAPE[0])
        np.testing.assert_allclose(feat, x + BIAS, rtol=1e-6)
        np.testing.assert_allclose(logits, x.mean(-1), rtol=1e-5, atol=1e-6)
    assert sess._resizable


def test_a_file_that_cannot_be_resized_runs_sample_by_sample(fixed_batch, caplog):
    sess = LiteRTBackend().load(fixed_batch, threads=1)
    x = _x(5)
    (flat,) = sess.run(x)
    assert flat.shape == (5, 12)
    np.testing.assert_array_equal(flat, x.reshape(5, 12))
    assert not sess._resizable
    (one,) = sess.run(x[:1])  # and batch 1 still takes the direct path
    np.testing.assert_array_equal(one, x[:1].reshape(1, 12))
    (again,) = sess.run(x[1:4])
    np.testing.assert_array_equal(again, x[1:4].reshape(3, 12))


def test_outputs_are_copies_that_survive_the_next_call(two_outputs):
    sess = LiteRTBackend().load(two_outputs, threads=1)
    first = sess.run(_x(1, seed=1))
    kept = [o.copy() for o in first]
    sess.run(_x(1, seed=2))
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)


def test_views_are_read_only_and_match_the_copies(two_outputs):
    sess = LiteRTBackend().load(two_outputs, threads=1)
    assert sess._fast is not None  # ai_edge_litert has the native handle: the zero-copy path
    x = _x(1, seed=3)
    views = sess.run(x, copy=False)
    np.testing.assert_allclose(views[0], x + BIAS, rtol=1e-6)
    np.testing.assert_allclose(views[1], x.mean(-1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        views[0][...] = 0.0  # read-only: a caller cannot corrupt the interpreter's buffers
    y = _x(1, seed=4)
    sess.run(y)
    np.testing.assert_allclose(views[0], y + BIAS, rtol=1e-6)  # views follow the next run
    del views


def test_resizing_drops_and_retakes_the_views(two_outputs):
    sess = LiteRTBackend().load(two_outputs, threads=1)
    for m in (1, 4, 1, 3, 1):  # resizes in between; the public API refuses while views exist
        x = _x(m, seed=10 + m)
        feat, logits = sess.run(x, copy=False)
        np.testing.assert_allclose(feat, x + BIAS, rtol=1e-6)
        np.testing.assert_allclose(logits, x.mean(-1), rtol=1e-5, atol=1e-6)
        del feat, logits
    assert sess._fast is not None and sess._alloc_shape == (1, *SHAPE)


class _PublicOnly:
    """An interpreter with the public ``Interpreter`` API only (no native ``_interpreter``)."""

    def __init__(self, it):
        self._wrapped = it

    def __getattr__(self, name):
        if name == "_interpreter":
            raise AttributeError(name)
        return getattr(self._wrapped, name)


def test_an_interpreter_without_the_native_handle_runs_through_the_public_api(two_outputs):
    from ai_edge_litert.interpreter import Interpreter

    from edgeexit.runtime.backends.litert import LiteRTSession

    it = Interpreter(model_path=str(two_outputs), num_threads=1)
    it.allocate_tensors()
    sess = LiteRTSession(_PublicOnly(it), two_outputs)
    assert sess._fast is None
    for m in (1, 3, 1):
        x = _x(m, seed=20 + m)
        feat, logits = sess.run(x, copy=False)
        np.testing.assert_allclose(feat, x + BIAS, rtol=1e-6)
        np.testing.assert_allclose(logits, x.mean(-1), rtol=1e-5, atol=1e-6)


def test_non_contiguous_and_subclass_inputs_are_accepted(two_outputs):
    sess = LiteRTBackend().load(two_outputs, threads=1)
    big = _x(4)
    x = big[::2]  # a strided view
    assert not x.flags.c_contiguous
    np.testing.assert_allclose(sess.run(x)[0], x + BIAS, rtol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 3, 5), np.float32),  # wrong length
        np.zeros((1, 4, 4), np.float32),  # wrong channels
        np.zeros((3, 4), np.float32),  # no batch dimension
        np.zeros((1, 3, 4), np.float64),  # wrong dtype
        np.zeros((0, 3, 4), np.float32),  # empty batch
        [[0.0] * 4] * 3,  # not an array
    ],
)
def test_wrong_input_is_a_clear_backend_error(two_outputs, bad):
    sess = LiteRTBackend().load(two_outputs, threads=1)
    with pytest.raises(BackendError, match=r"must be a float32 array \[N, 3, 4\]"):
        sess.run(bad)


def test_missing_and_garbage_files_are_backend_errors(tmp_path):
    backend = LiteRTBackend()
    with pytest.raises(BackendError, match="no TFLite model file"):
        backend.load(tmp_path / "missing.tflite")
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(BackendError, match="not a valid TFLite model"):
        backend.load(garbage)
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(BackendError, match="not a valid TFLite model"):
        backend.load(empty)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_invalid_threads_are_rejected(two_outputs, threads):
    with pytest.raises(BackendError, match="threads"):
        LiteRTBackend().load(two_outputs, threads=threads)


def test_threads_none_uses_the_engine_default(two_outputs):
    sess = LiteRTBackend().load(two_outputs)
    assert sess.run(_x(2))[0].shape == (2, *SHAPE)


def test_missing_engine_says_what_to_install(two_outputs, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    backend = LiteRTBackend()
    assert not backend.available()
    with pytest.raises(BackendError, match="pip install ai-edge-litert"):
        backend.load(two_outputs)


def test_int8_boundaries_are_refused_with_a_hint(tmp_path):
    path = tmp_path / "int8_io.tflite"
    q = fb.QuantizationParametersT()
    q.scale, q.zeroPoint = [0.1], [0]
    tensors = [_tensor("x", (1, *SHAPE), 0, fb.TensorType.INT8),
               _tensor("y", (1, *SHAPE), 0, fb.TensorType.INT8)]
    for t in tensors:
        t.quantization = q
    ops = [_op(0, [0], [1])]
    _write(path, tensors, [], [_opcode(fb.BuiltinOperator.RELU)], ops, {"input": 0}, {"y": 1},
           outputs=[1])
    with pytest.raises(BackendError, match="not float32"):
        LiteRTBackend().load(path)


def test_module_and_session_import_without_torch_or_tensorflow(two_outputs):
    code = (
        "import sys, numpy as np\n"
        "from edgeexit.runtime.backends.litert import LiteRTBackend\n"
        "heavy = [m for m in ('torch', 'onnx', 'tensorflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        f"s = LiteRTBackend().load({str(two_outputs)!r}, threads=1)\n"
        "s.run(np.zeros((2, 3, 4), np.float32))\n"
        "heavy = [m for m in ('torch', 'onnx', 'tensorflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

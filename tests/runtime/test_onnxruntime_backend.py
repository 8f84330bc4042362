"""The onnxruntime backend: numpy in, numpy out, clear errors; imports without torch or onnx."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")  # only to build the test model; the backend never imports it

from onnx import TensorProto, helper

from edgeexit.runtime.backends import backend_for_format, get_backend
from edgeexit.runtime.backends.base import BackendError
from edgeexit.runtime.backends.onnxruntime import OnnxRuntimeBackend

C, L = 3, 16


def _reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the test graph computes: ``feat = relu(2x - 1)``, ``logits = mean over time``."""
    feat = np.maximum(2.0 * x - 1.0, 0.0)
    return feat, feat.mean(axis=2)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A segment-like graph ``feat_0 [batch, 3, 16] -> (feat_1, logits_1)`` (onnx.helper)."""
    inp = helper.make_tensor_value_info("feat_0", TensorProto.FLOAT, ["batch", C, L])
    feat = helper.make_tensor_value_info("feat_1", TensorProto.FLOAT, ["batch", C, L])
    logits = helper.make_tensor_value_info("logits_1", TensorProto.FLOAT, ["batch", C])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Mul", ["feat_0", "two"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "one"], ["shifted"]),
        helper.make_node("Relu", ["shifted"], ["feat_1"]),
        helper.make_node("ReduceMean", ["feat_1", "axes"], ["logits_1"], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "segment", [inp], [feat, logits], [two, one, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path_factory.mktemp("ort") / "seg1.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def session(model_path):
    return OnnxRuntimeBackend().load(model_path, threads=1)


def test_backend_identity_and_registry():
    backend = OnnxRuntimeBackend()
    assert backend.name == "onnxruntime" and backend.file_format == "onnx"
    assert backend.available()
    assert isinstance(get_backend("onnxruntime"), OnnxRuntimeBackend)
    assert isinstance(backend_for_format("onnx"), OnnxRuntimeBackend)


def test_session_names_and_shape(session):
    assert session.input_name == "feat_0"
    assert session.output_names == ("feat_1", "logits_1")
    assert session.input_shape == (C, L)


@pytest.mark.parametrize("batch", [1, 5])
def test_run_returns_outputs_in_order(session, batch):
    x = np.random.default_rng(batch).normal(size=(batch, C, L)).astype(np.float32)
    feat, logits = session.run(x)
    ref_feat, ref_logits = _reference(x)
    assert feat.shape == (batch, C, L) and logits.shape == (batch, C)
    assert feat.dtype == np.float32 and logits.dtype == np.float32
    np.testing.assert_allclose(feat, ref_feat, atol=1e-6)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-6)


def test_run_accepts_non_contiguous_input(session):
    x = np.random.default_rng(0).normal(size=(4, L, C)).astype(np.float32).transpose(0, 2, 1)
    assert not x.flags.c_contiguous
    np.testing.assert_allclose(session.run(x)[1], _reference(x)[1], atol=1e-6)


@pytest.mark.parametrize("bad, what", [
    (np.zeros((2, C, L), np.float64), "float64"),
    (np.zeros((C, L), np.float32), "shape"),
    (np.zeros((2, C + 1, L), np.float32), "shape"),
    (np.zeros((2, C, L - 1), np.float32), "shape"),
    ([[0.0] * L] * C, "list"),
])
def test_run_refuses_wrong_input(session, bad, what):
    with pytest.raises(BackendError, match=r"must be a float32 array \[N, 3, 16\]") as err:
        session.run(bad)
    assert what in str(err.value)


def test_load_refuses_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00 this is not an ONNX model \xff" * 10)
    with pytest.raises(BackendError, match="cannot load .*garbage.onnx.*not a valid ONNX model"):
        OnnxRuntimeBackend().load(garbage)
    with pytest.raises(BackendError, match="no ONNX model file"):
        OnnxRuntimeBackend().load(tmp_path / "missing.onnx")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_load_refuses_bad_thread_counts(model_path, threads):
    with pytest.raises(BackendError, match="threads"):
        OnnxRuntimeBackend().load(model_path, threads=threads)


def test_default_threads_load(model_path):
    x = np.ones((1, C, L), np.float32)
    np.testing.assert_allclose(OnnxRuntimeBackend().load(model_path).run(x)[1], np.ones((1, C)))


def test_missing_engine_says_what_to_install(model_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    backend = OnnxRuntimeBackend()
    assert not backend.available()
    with pytest.raises(BackendError, match="pip install onnxruntime"):
        backend.load(model_path)


def test_module_imports_without_torch_onnx_or_the_engine():
    code = (
        "import sys\n"
        "import edgeexit.runtime.backends.onnxruntime as m\n"
        "assert m.OnnxRuntimeBackend().name == 'onnxruntime'\n"
        "print(','.join(sorted(k for k in ('torch', 'onnx', 'onnxruntime') if k in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

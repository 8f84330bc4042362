"""Write a segment (or the monolithic model) as a LiteRT/TFLite ``.tflite`` file, fp32 or int8.

:func:`export_tflite` converts an eval-mode :class:`~edgeexit.export.split.Segment` or
:class:`~edgeexit.export.split.Monolithic` with ``litert-torch`` at batch 1 (the device resizes the
batch dimension at load, see :mod:`edgeexit.runtime.backends.litert`). The file has one input and
the outputs in the order the module returns them (``[feat_k, logits_k]``, or ``[logits_k]``).

int8 is full-integer post-training quantization with PT2E (``torchao`` ``prepare_pt2e`` /
``convert_pt2e`` driven by ``litert_torch``'s ``PT2EQuantizer``): per-channel symmetric int8
weights and per-tensor affine int8 activations, calibrated by running ``calibration`` -- the
tensors that really reach this segment (:func:`edgeexit.export.split.segment_inputs`, or what the
int8 segment before it outputs). Our annotation pass completes ``litert_torch``'s own where its
pattern matcher misses: a residual ``add -> relu`` whose ReLU module is shared within a block,
``conv -> ReLU6``, and every tensor the module returns gets its own observed range (the converter
would otherwise borrow a neighbour's scale and clip the boundary features).

Design decision "float boundaries": an int8 file still takes and returns **float32** tensors. The
converter (litert-torch 0.10, PT2E static mode) makes int8 graph inputs and outputs, so
:func:`finalize_flatbuffer` puts a ``QUANTIZE`` op right after the input and a ``DEQUANTIZE`` op
before every output back into the flatbuffer. Segments are quantized one by one, so the scale of
``feat_k`` chosen for segment k's output differs from the one segment k+1 chose for its input;
float boundaries let them chain anyway, let the engine hand any exit's logits to numpy as they
are, and let an fp32 and an int8 segment be mixed. Measured cost (``tools/tflite_latency.py``,
full-size ``resnet1d``, batch 1, one LiteRT thread, XNNPACK, 2-core x86 Xeon host, 2000
interleaved runs): the four int8 segments take 49.9 us with float boundaries and 49.1 us with the
converter's int8 boundaries (+0.7 us, +1.5 %, within run-to-run noise of about 1 us). For scale:
monolithic int8 34.1 us vs fp32 84.5 us; the int8 chain of four files (every exit head computed)
53.1 us vs fp32 103.9 us.

Every file is written to a temporary file in the target directory and renamed into place only
after it was checked (loaded, run on ``example``, output order and shapes compared with PyTorch,
fp32 values too): a failure never leaves a partial file behind.

Example:
    >>> seg = split_model(model)[1]
    >>> feats = segment_inputs(model, x_calib)
    >>> export_tflite(seg, feats[1][:1], "segment_1.tflite", int8=True, calibration=feats[1])
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeexit.export.errors import ExportError, ValidationError, describe
from edgeexit.export.validate import Failure, tolerance
from edgeexit.fileio import atomic_path

log = logging.getLogger(__name__)

_INSTALL_HINT = "pip install litert-torch ai-edge-litert"

MAX_CALIBRATION = 2048
"""At most this many calibration windows are run (evenly spaced over the ones given)."""

CALIBRATION_BATCH = 64
"""Windows per calibration call (the PT2E histogram observers cost per call)."""


# -- helpers ---------------------------------------------------------------------------------------





def _import_litert_torch():
    """``litert_torch`` (imported on first use: it is large and host-only)."""
    try:
        return importlib.import_module("litert_torch")
    except ImportError as exc:
        raise ExportError(
            f"TFLite export needs the litert-torch package ({exc}); {_INSTALL_HINT}"
        ) from exc


def _flatbuffer_tools():
    """``ai_edge_litert``'s flatbuffer helpers and TFLite schema (litert-torch depends on it)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError as exc:
        raise ExportError(
            f"TFLite export needs ai_edge_litert's flatbuffer tools ({exc}); {_INSTALL_HINT}"
        ) from exc
    return schema, flatbuffer_utils


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide litert-torch's progress lines (unless the user set ``LITERT_TORCH_SHOW_PROGRESS``)."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    if key in os.environ:
        yield
        return
    os.environ[key] = "n"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _default_names(n_out: int) -> list[str]:
    return [f"output_{i}" for i in range(n_out)]


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class _Named(nn.Module):
    """``module`` with a dict output: the keys become the output names of the file's signature.

    ``litert_torch`` names each output after its dict key, in insertion order (the order
    ``module`` returns them). The input is positional (``args_0`` in the converted file, renamed
    afterwards by :func:`finalize_flatbuffer`): a keyword input cannot take a dynamic batch
    dimension in ``torch.export``, which the int8 calibration uses.
    """

    def __init__(self, module: nn.Module, output_names: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.output_names = tuple(output_names)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.output_names, _as_tuple(self.module(x))))


# -- int8: PT2E ------------------------------------------------------------------------------------


def _complete_annotation(gm: torch.fx.GraphModule, config) -> None:
    """Annotate what ``litert_torch``'s PT2E pattern matcher leaves float in our models.

    * ``relu`` after an un-annotated ``add`` (the residual join; the matcher skips it when one
      ``nn.ReLU`` module is called twice in a block): int8 inputs of the add, int8 out of the relu.
    * ``relu``/``hardtanh`` (ReLU6) right after an annotated conv/linear/add: the activation takes
      over the producer's output range (so the converter fuses it into the conv).
    * every tensor the graph returns gets an observed output range of its own.
    """
    from torch.fx import Node
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    aten = torch.ops.aten
    acts = {aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default}
    adds = {aten.add.Tensor, aten.add_.Tensor}
    act_in, act_out = config.input_activation, config.output_activation
    key = "quantization_annotation"

    def annotated(n: Node) -> bool:
        a = n.meta.get(key)
        return a is not None and a._annotated

    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in acts or annotated(n):
            continue
        prev = n.args[0]
        if not isinstance(prev, Node) or prev.op != "call_function" or len(prev.users) != 1:
            continue
        if not annotated(prev):
            if prev.target not in adds:
                continue
            prev.meta[key] = QuantizationAnnotation(
                input_qspec_map={a: act_in for a in prev.args[:2] if isinstance(a, Node)},
                _annotated=True,
            )
        else:
            prev.meta[key].output_qspec = None  # the activation carries the range (fused)
        n.meta[key] = QuantizationAnnotation(output_qspec=act_out, _annotated=True)

    output = next(n for n in gm.graph.nodes if n.op == "output")
    for r in output.all_input_nodes:
        if r.op != "call_function":
            continue
        ann = r.meta.get(key)
        if ann is None or not ann._annotated:
            r.meta[key] = QuantizationAnnotation(output_qspec=act_out, _annotated=True)
        elif ann.output_qspec is None:
            ann.output_qspec = act_out


def _keep_input_norm_float(gm: torch.fx.GraphModule) -> None:
    """Leave the ops of :class:`~edgeexit.models.base.InputNorm` in float.

    Its input mixes units (the ECG in mV, RR intervals in seconds, ratios near 1), which one
    per-tensor int8 scale resolves badly; after the per-channel standardisation every channel is
    near N(0, 1), so quantizing there (at the first convolution's input) loses far less. Measured
    on the quick-start model, exit 0's top-1 agreement with PyTorch on its test split rose from
    98.15% to 98.9% (ONNX, which keeps this prefix float too: 99.05%).
    """
    key = "quantization_annotation"
    for n in gm.graph.nodes:
        stack = n.meta.get("nn_module_stack") or {}
        if any("InputNorm" in str(v) for v in stack.values()):
            n.meta.pop(key, None)


def _quantizer():
    """A ``litert_torch`` ``PT2EQuantizer`` (static, per-channel weights) with our completion."""
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.pt2e_quantizer_utils import propagate_annotation

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)

    class _FullInt8Quantizer(pt2e_quantizer.PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            _complete_annotation(model, config)
            _keep_input_norm_float(model)
            propagate_annotation(model)
            return model

    return _FullInt8Quantizer().set_global(config)


def _capture(named: _Named, calibration: torch.Tensor) -> tuple[torch.fx.GraphModule, int]:
    """``torch.export`` graph of ``named`` for calibration, and the batch it runs.

    The batch dimension is exported dynamic so calibration runs :data:`CALIBRATION_BATCH` windows
    per call (the observers cost per call, not per window); a module that cannot be exported so
    is exported at batch 1 and calibrated one window at a time.
    """
    sample = calibration[:2] if len(calibration) >= 2 else torch.cat([calibration] * 2)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        ep = torch.export.export(named, (sample,), dynamic_shapes=({0: batch},))
        return ep.module(), CALIBRATION_BATCH
    except Exception as exc:  # a batch-dependent op: fall back to the static graph
        log.debug("no dynamic batch for calibration (%s); calibrating one window at a time",
                  describe(exc))
        return torch.export.export(named, (calibration[:1],)).module(), 1


def _quantize_pt2e(named: _Named, calibration: torch.Tensor):
    """PT2E: export ``named``, insert observers, run ``calibration``, convert to Q/DQ form.

    Returns:
        The quantized graph module (eval mode) and the quantizer (the converter needs both).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

    n = min(len(calibration), MAX_CALIBRATION)
    if n < len(calibration):
        idx = torch.linspace(0, len(calibration) - 1, n).round().long()  # spread over the set
        calibration = calibration[idx]
    gm, batch = _capture(named, calibration)
    quantizer = _quantizer()
    with contextlib.redirect_stdout(io.StringIO()) as chatter:  # the annotators print()
        gm = quantize_pt2e.prepare_pt2e(gm, quantizer)
    if chatter.getvalue().strip():
        log.debug("PT2E annotation: %s", " | ".join(chatter.getvalue().split("\n")).strip(" |"))
    with torch.no_grad():
        for i in range(0, n, batch):
            gm(calibration[i : i + batch])
    gm = quantize_pt2e.convert_pt2e(gm, fold_quantize=False)
    move_exported_model_to_eval(gm)
    for m in gm.modules():  # graph modules refuse .eval(); batch norm is folded, no dropout left
        m.training = False
    return gm, quantizer


def _float_boundaries(fb, utils, model, sg, input_name: str) -> dict[int, int]:
    """Put a ``QUANTIZE`` op after an int8 graph input and a ``DEQUANTIZE`` op after every int8
    graph output of ``sg`` (float32 twins take their places), name the input ``input_name``.

    Returns:
        Old tensor index -> the float32 twin's index, for the signature entries to follow.
    """
    remap: dict[int, int] = {}
    head, tail = [], []
    sg.inputs, sg.outputs = [int(i) for i in sg.inputs], [int(i) for i in sg.outputs]
    idx = sg.inputs[0]
    if _quantized(fb, sg.tensors[idx]):
        new = _float_twin(fb, model, sg, sg.tensors[idx], input_name)
        head.append(_op(fb, _opcode(fb, utils, model, fb.BuiltinOperator.QUANTIZE, 2), new, idx))
        sg.inputs[0] = remap[idx] = new
    else:
        sg.tensors[idx].name = input_name
    for pos, idx in enumerate(list(sg.outputs)):
        if _quantized(fb, sg.tensors[idx]):
            new = _float_twin(fb, model, sg, sg.tensors[idx], _tname(sg.tensors[idx]))
            code = _opcode(fb, utils, model, fb.BuiltinOperator.DEQUANTIZE, 2)
            tail.append(_op(fb, code, idx, new))
            sg.outputs[pos] = remap[idx] = new
    sg.operators = head + list(sg.operators) + tail
    return remap


def _opcode(fb, utils, model, builtin: int, version: int) -> int:
    """Index of an operator code for ``builtin`` at ``version`` or later (appended if missing)."""
    for i, oc in enumerate(model.operatorCodes):
        if utils.get_builtin_code_from_operator_code(oc) == builtin and oc.version >= version:
            return i
    oc = fb.OperatorCodeT()
    oc.builtinCode = builtin
    oc.deprecatedBuiltinCode = min(builtin, 127)  # the legacy int8 field saturates at 127
    oc.version = version  # 2: the int8 kernels of QUANTIZE / DEQUANTIZE
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def _quantized(fb, t) -> bool:
    """``t`` is an int8 tensor with quantization parameters."""
    q = t.quantization
    has_scale = q is not None and q.scale is not None and len(q.scale) >= 1
    return t.type == fb.TensorType.INT8 and has_scale


def _float_twin(fb, model, sg, t, name: str) -> int:
    """Append a float32 runtime tensor shaped like ``t`` named ``name`` (``t`` becomes
    ``name_int8``); return its index."""
    new = fb.TensorT()
    new.shape = None if t.shape is None else [int(d) for d in t.shape]
    sig_shape = t.shapeSignature
    new.shapeSignature = None if sig_shape is None else [int(d) for d in sig_shape]
    new.type = fb.TensorType.FLOAT32
    new.name = name
    model.buffers.append(fb.BufferT())  # an empty buffer: a runtime tensor
    new.buffer = len(model.buffers) - 1
    t.name = name + "_int8"
    sg.tensors.append(new)
    return len(sg.tensors) - 1


def _op(fb, code: int, src: int, dst: int):
    """A one-input, one-output operator ``src -> dst`` of operator code ``code``."""
    o = fb.OperatorT()
    o.opcodeIndex, o.inputs, o.outputs = code, [src], [dst]
    return o


def _tname(t) -> str:
    """A tensor's name as str (the flatbuffer object API gives bytes)."""
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def finalize_flatbuffer(model_bytes: bytes, input_name: str) -> bytes:
    """Name the signature input, and give int8 inputs/outputs float32 boundaries.

    The converter names the input ``args_0`` (we convert a positional input) and, for a PT2E
    model, makes int8 graph inputs and outputs. Here the input is renamed ``input_name``; every
    graph input of type int8 with quantization parameters becomes a float32 tensor of the same
    shape followed by a ``QUANTIZE`` op into the old int8 tensor, and every such output gets a
    ``DEQUANTIZE`` op into a new float32 tensor that takes over its signature entry. The order of
    inputs and outputs is kept; float boundaries are left as they are.

    Args:
        model_bytes: a TFLite flatbuffer with one subgraph and one signature.
        input_name: the signature name of the (single) input.

    Returns:
        The rewritten flatbuffer.
    """
    fb, utils = _flatbuffer_tools()
    model = utils.read_model_from_bytearray(bytearray(model_bytes))
    if len(model.subgraphs) != 1 or len(model.signatureDefs or []) != 1:
        raise ExportError(
            f"expected a TFLite model with one subgraph and one signature, got "
            f"{len(model.subgraphs)} and {len(model.signatureDefs or [])}"
        )
    sg, sig = model.subgraphs[0], model.signatureDefs[0]
    if len(sg.inputs) != 1 or len(sig.inputs) != 1:
        raise ExportError(f"expected one input in the converted model, got {len(sg.inputs)}")
    remap = _float_boundaries(fb, utils, model, sg, input_name)
    for tm in list(sig.inputs) + list(sig.outputs):
        tm.tensorIndex = remap.get(int(tm.tensorIndex), int(tm.tensorIndex))
    sig.inputs[0].name = input_name
    return bytes(utils.convert_object_to_bytearray(model))


# -- the check after writing -----------------------------------------------------------------------


def _check_file(path: Path, example: torch.Tensor, ref: tuple[torch.Tensor, ...],
                input_name: str, names: list[str], int8: bool) -> None:
    """Load ``path`` with the device backend, run ``example``, compare with PyTorch's ``ref``.

    Checks names and order of inputs/outputs, float32 at the boundary, the output shapes in the
    module's order, and for fp32 the values (``example_rel_err`` of
    :func:`edgeexit.export.validate.tolerance`). Skipped (with a warning) where no
    LiteRT interpreter is installed on the host.
    """
    from edgeexit.runtime.backends.base import BackendError
    from edgeexit.runtime.backends.litert import LiteRTBackend

    backend = LiteRTBackend()
    if not backend.available():
        log.warning("no LiteRT interpreter installed: %s was not checked after export", path.name)
        return
    try:
        sess = backend.load(path, threads=1)
        outs = sess.run(example.numpy())
    except BackendError as exc:
        raise ExportError(f"the converted file cannot be run: {exc}") from exc
    if sess.input_name != input_name or list(sess.output_names) != names:
        raise ExportError(
            f"the converted file has the signature {sess.input_name} -> {list(sess.output_names)}, "
            f"expected {input_name} -> {names}: litert-torch changed how it orders or names "
            "outputs (report this with the litert-torch version)"
        )
    for i, (got, want) in enumerate(zip(outs, ref)):
        want_np = want.detach().numpy()
        if got.shape != want_np.shape:
            raise ExportError(
                f"output {i} ({names[i]}) of the converted file has shape {got.shape}, PyTorch "
                f"returns {want_np.shape}: outputs out of order (report this with the litert-torch "
                "version)"
            )
        if not np.isfinite(got).all():
            raise ExportError(f"output {i} ({names[i]}) of the converted file is not finite")
        tol = tolerance("tflite", "int8" if int8 else "fp32").example_bound(
            float(np.abs(want_np).max(initial=0.0)))
        if tol is not None:
            err = float(np.abs(got - want_np).max(initial=0.0))
            if not err <= tol:
                raise ValidationError([Failure(
                    path.name, "tflite", "max_abs_err", err, tol,
                    f"output {i} ({names[i]}) of the {'int8' if int8 else 'fp32'} file differs "
                    f"from PyTorch by {err:.3g} (> {tol:.3g}): the conversion does not compute "
                    "what the module computes")])


# -- the export ------------------------------------------------------------------------------------


def _batch_of_one(example) -> torch.Tensor:
    """The first sample of ``example`` as a contiguous float32 batch of one."""
    if not isinstance(example, torch.Tensor) or example.ndim < 2 or len(example) < 1:
        got = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__
        raise ExportError(f"example must be a tensor [N, ...] with at least one sample, got {got}")
    return example[:1].detach().to(torch.float32).contiguous()


def _calibration_for(example: torch.Tensor, calibration, int8: bool) -> torch.Tensor | None:
    """``calibration`` checked against ``example`` and made contiguous float32 (int8); as given
    (and ignored) for fp32."""
    if not int8:
        if calibration is not None:
            log.debug("calibration is ignored for an fp32 export")
        return calibration
    usable = isinstance(calibration, torch.Tensor) and calibration.ndim >= 2
    if not usable or not len(calibration):
        raise ExportError(
            "int8 TFLite export needs calibration inputs: the tensors that reach this module "
            "(edgeexit.export.split.segment_inputs), a few hundred windows"
        )
    if tuple(calibration.shape[1:]) != tuple(example.shape[1:]):
        raise ExportError(
            f"calibration windows have shape {tuple(calibration.shape[1:])}, the example "
            f"{tuple(example.shape[1:])}: calibrate on the tensors that reach this module"
        )
    return calibration.detach().to(torch.float32).contiguous()


def _reference_outputs(module: nn.Module, example: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What the eval-mode ``module`` returns on ``example``: the outputs the file must match."""
    try:
        with torch.no_grad():
            ref = _as_tuple(module(example))
    except Exception as exc:  # whatever the module raises on a wrong input
        raise ExportError(
            f"{type(module).__name__} fails on the example of shape {tuple(example.shape)} "
            f"({describe(exc)}): give an input that reaches this module"
        ) from exc
    if not all(isinstance(t, torch.Tensor) for t in ref):
        raise ExportError(f"{type(module).__name__} must return a tensor or a tuple of tensors")
    return ref


def _output_names(ref: tuple[torch.Tensor, ...], input_name: str,
                  output_names: Sequence[str] | None) -> list[str]:
    """The signature's output names: one distinct identifier per output, none the input's."""
    names = _default_names(len(ref)) if output_names is None else [str(n) for n in output_names]
    if len(names) != len(ref) or len(set(names)) != len(names) or input_name in names:
        raise ExportError(
            f"output_names {names} must name each of the module's {len(ref)} outputs once, and "
            f"differ from the input name {input_name!r}"
        )
    if not input_name.isidentifier() or not all(n.isidentifier() for n in names):
        raise ExportError(
            f"TFLite signature names must be identifiers, got {input_name!r} -> {names}"
        )
    return names


def _convert(litert_torch, named: nn.Module, module: nn.Module, example: torch.Tensor,
             calibration: torch.Tensor | None, input_name: str, int8: bool) -> bytes:
    """The flatbuffer of ``named`` (``module`` with named outputs; fp32, or PT2E int8 calibrated
    on ``calibration``) with named signature and float boundaries (:func:`finalize_flatbuffer`)."""
    try:
        with _quiet_progress():
            if int8:
                from litert_torch.quantize import quant_config

                gm, quantizer = _quantize_pt2e(named, calibration)
                edge = litert_torch.convert(
                    gm, (example,), quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)
                )
            else:
                edge = litert_torch.convert(named, (example,))
            return finalize_flatbuffer(edge.model_content(), input_name)
    except ExportError:
        raise
    except Exception as exc:  # torch.export, PT2E and MLIR errors of many types
        raise ExportError(
            f"litert-torch could not convert {type(module).__name__} to TFLite"
            f"{' int8' if int8 else ''} ({describe(exc)})"
        ) from exc


def export_tflite(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    *,
    int8: bool = False,
    calibration: torch.Tensor | None = None,
    input_name: str = "input",
    output_names: Sequence[str] | None = None,
) -> Path:
    """Convert ``module`` to a ``.tflite`` file at batch 1 (fp32, or full-integer int8).

    Args:
        module: a :class:`~edgeexit.export.split.Segment` or
            :class:`~edgeexit.export.split.Monolithic` (any module with one tensor input that
            returns a tensor or a tuple of tensors); put in eval mode here.
        example: an input batch ``[N, ...]`` float32; its first sample fixes the input shape (the
            file is converted at batch 1; the runtime resizes the batch dimension).
        path: the file to write (parent directories are created; an existing file is replaced).
        int8: quantize weights and activations to int8 (PT2E, static) with float32 boundaries.
        calibration: int8 only, required: inputs ``[M, ...]`` that really reach this module
            (at most :data:`MAX_CALIBRATION` of them, evenly spaced, are used).
        input_name: name of the signature input (e.g. ``input`` or ``feat_{k-1}``).
        output_names: names of the outputs in the order the module returns them (e.g.
            ``["feat_k", "logits_k"]``); None: ``output_0``, ``output_1``, ...

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: litert-torch is missing, the arguments are invalid, the conversion or
            quantization fails, or the written file does not reproduce the module's outputs.
    """
    path = Path(path)
    if not isinstance(module, nn.Module):
        raise ExportError(f"export_tflite needs a torch.nn.Module, got {type(module).__name__}")
    example = _batch_of_one(example)
    calibration = _calibration_for(example, calibration, int8)
    module = module.eval()
    ref = _reference_outputs(module, example)
    names = _output_names(ref, input_name, output_names)
    litert_torch = _import_litert_torch()
    named = _Named(module, names).eval()
    start = time.perf_counter()
    content = _convert(litert_torch, named, module, example, calibration, input_name, int8)
    log.debug(
        "converted %s to %s%s in %.1f s (%d bytes)", type(module).__name__, path.name,
        " (int8)" if int8 else "", time.perf_counter() - start, len(content),
    )
    with atomic_path(path, ".tmp.tflite") as tmp:
        tmp.write_bytes(content)
        _check_file(tmp, example, ref, input_name, names, int8)
    return path

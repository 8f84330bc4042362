"""Write a segment (or the monolithic model) as an ONNX file, and quantize it to int8.

:func:`export_onnx` uses the ``torch.export``-based exporter (``dynamo=True``, the default of
``torch.onnx.export``) and falls back to the legacy TorchScript exporter when that fails. Either
way the file has:

* one input and the outputs named exactly as given (``input`` / ``feat_k`` / ``logits_k``, see
  :mod:`edgeexit.export.split`), so the device chains segments by name;
* a symbolic batch dimension ``batch`` on the input and on every output (the other dimensions are
  fixed), so one file runs batch 1 on the device and any batch on the host;
* the weights inside the one file (no external-data side file) and a passing
  ``onnx.checker.check_model(path, full_check=True)``.

:func:`quantize_onnx_int8` turns an fp32 file into a static int8 file in QDQ format with
onnxruntime's quantization tools, calibrated on the tensors that really reach the segment (see
:func:`edgeexit.export.split.segment_inputs`). Graph inputs and outputs stay float32, so segments
quantized one by one still chain at float boundaries.

Every file is written to a temporary file in the target directory and renamed into place only
after it passed the checks: a failure never leaves a partial file behind.

Example:
    >>> seg = split_model(model)[0]
    >>> export_onnx(seg, x[:2], "seg0.onnx", input_name="input",
    ...             output_names=["feat_0", "logits_0"])
    >>> quantize_onnx_int8("seg0.onnx", x_calib.numpy(), "seg0.int8.onnx")
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from edgeexit.export.errors import ExportError, describe
from edgeexit.fileio import atomic_path

log = logging.getLogger(__name__)

MIN_OPSET = 18
"""Lowest ONNX opset we write (the dynamo exporter's own minimum; onnxruntime >= 1.17 runs it)."""

BATCH_DIM = "batch"
"""Name of the symbolic batch dimension on the input and every output."""

ACTIVATION_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}
"""Activation types of :func:`quantize_onnx_int8` -> onnxruntime ``QuantType`` member names."""

CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
"""Calibration methods of :func:`quantize_onnx_int8` -> onnxruntime ``CalibrationMethod`` names."""

CALIBRATION_BATCH = 32
"""Windows per calibration batch fed to onnxruntime (the graphs have a dynamic batch)."""





def _check_arguments(
    example: torch.Tensor, input_name: str, output_names: Sequence[str], opset: int
) -> list[str]:
    if not isinstance(example, torch.Tensor) or example.ndim < 2:
        raise ExportError(
            "export_onnx needs an example input tensor [N, ...] with a batch dimension, got "
            f"{type(example).__name__} of shape {tuple(getattr(example, 'shape', ()))}"
        )
    if not example.is_floating_point():
        raise ExportError(f"the example input must be a float tensor, got {example.dtype}")
    if isinstance(output_names, str):
        output_names = [output_names]
    names = [str(n) for n in output_names]
    if not names or not input_name:
        raise ExportError("export_onnx needs an input name and at least one output name")
    if len(set(names)) != len(names) or input_name in names:
        raise ExportError(
            f"tensor names must be unique, got input {input_name!r} and outputs {names}"
        )
    if int(opset) < MIN_OPSET:
        raise ExportError(f"ONNX opset {opset} is too old; use opset >= {MIN_OPSET}")
    return names


def _dynamo_export(
    module: nn.Module, example: torch.Tensor, tmp: Path, input_name: str, names: list[str],
    opset: int,
) -> None:
    from torch.export import Dim

    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[input_name],
        output_names=names,
        dynamic_shapes=({0: Dim(BATCH_DIM)},),
        external_data=False,
        optimize=True,
        verbose=False,
    )
    if program is None:  # pragma: no cover - torch returns the program when f is not given
        raise ExportError("torch.onnx.export(dynamo=True) returned no program")
    program.save(tmp, external_data=False)


def _legacy_export(
    module: nn.Module, example: torch.Tensor, tmp: Path, input_name: str, names: list[str],
    opset: int,
) -> None:
    axes = {n: {0: BATCH_DIM} for n in [input_name, *names]}
    with warnings.catch_warnings():
        # the exporter warns that it is deprecated; we chose it on purpose (and logged why)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=names,
            dynamic_axes=axes,
            do_constant_folding=True,
            export_params=True,
        )


def _check_file(path: Path, input_name: str, names: list[str]) -> None:
    """Run the ONNX checker on ``path`` and verify names, float I/O and the symbolic batch dim."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError / ...
        raise ExportError(f"the exported ONNX model fails the checker: {describe(exc)}") from exc
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    got_in = [i.name for i in inputs]
    got_out = [o.name for o in graph.output]
    if got_in != [input_name] or got_out != names:
        raise ExportError(
            f"the exported graph has inputs {got_in} and outputs {got_out}, expected "
            f"[{input_name!r}] and {names}"
        )
    for value in [*inputs, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"graph tensor {value.name!r} is not float32")
        dims = tensor.shape.dim
        if not dims or dims[0].HasField("dim_value") or not dims[0].dim_param:
            raise ExportError(
                f"graph tensor {value.name!r} has a fixed batch dimension; the export must keep "
                "dimension 0 dynamic"
            )


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    *,
    input_name: str,
    output_names: Sequence[str],
    opset: int = MIN_OPSET,
    dynamo: bool = True,
) -> Path:
    """Export ``module`` (one tensor in, one tensor or a tuple of tensors out) to ``path``.

    Args:
        module: the module to export, e.g. a :class:`~edgeexit.export.split.Segment`; exported
            in eval mode (its training flag is restored afterwards).
        example: an example input ``[N, ...]`` (float). Its batch size does not matter: the
            batch dimension is exported as the symbolic ``batch`` (a batch of 1 is repeated to 2:
            ``torch.export`` may treat a size-1 dimension as a constant).
        path: the ``.onnx`` file to write (parent directories are created).
        input_name: name of the graph input (``input`` or ``feat_{k-1}``).
        output_names: names of the graph outputs, in the order the module returns them.
        opset: ONNX opset version (>= 18).
        dynamo: use the ``torch.export``-based exporter (default). If it fails, the legacy
            TorchScript exporter is tried, with a logged warning naming the error. ``False``
            uses the legacy exporter directly.

    Returns:
        The path written.

    Raises:
        ExportError: bad arguments, both exporters failed, or the file fails the ONNX checker
            (no file is left behind in either case).
    """
    path = Path(path)
    names = _check_arguments(example, input_name, output_names, opset)
    example = example.detach().float()
    if example.shape[0] == 1:
        example = example.repeat(2, *([1] * (example.ndim - 1)))
    was_training = module.training
    module.eval()
    try:
        with atomic_path(path, ".tmp.onnx") as tmp:
            used = "legacy"
            if dynamo:
                try:
                    _dynamo_export(module, example, tmp, input_name, names, opset)
                    used = "dynamo"
                except Exception as exc:  # the exporter raises many types; fall back on any
                    log.warning(
                        "dynamo ONNX export of %s failed (%s); falling back to the legacy "
                        "TorchScript exporter", type(module).__name__, describe(exc),
                    )
                    log.debug("dynamo export error", exc_info=True)
            if used == "legacy":
                try:
                    _legacy_export(module, example, tmp, input_name, names, opset)
                except Exception as exc:
                    raise ExportError(
                        f"ONNX export of {type(module).__name__} to {path} failed: {describe(exc)}"
                    ) from exc
            _check_file(tmp, input_name, names)
    finally:
        module.train(was_training)
    log.debug("exported %s to %s (%s exporter, opset %d)", type(module).__name__, path, used, opset)
    return path


class _ArrayReader:
    """A ``CalibrationDataReader`` over an array: batches of ``{input_name: x[i:i+b]}``."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self.input_name = input_name
        self.x = x
        self.batch = batch
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.x):
            return None
        chunk = self.x[self._start : self._start + self.batch]
        self._start += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self._start = 0


def _graph_io(path: Path) -> tuple[str, list[int | None], list[str]]:
    """Input name, input dims (None where symbolic) and output names of an ONNX file."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"cannot read ONNX model {path}: {describe(exc)}") from exc
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(f"{path} has {len(inputs)} inputs; int8 quantization expects one")
    shape = inputs[0].type.tensor_type.shape.dim
    dims = [d.dim_value if d.HasField("dim_value") else None for d in shape]
    return inputs[0].name, dims, [o.name for o in model.graph.output]


def _head_ops(exported: Path, prepared: Path) -> list[str]:
    """Names of the nodes of ``prepared`` that compute the exit head.

    The dynamo exporter records each node's module path (``pkg.torch.onnx.name_scopes``, the
    first entry below the root being the segment's attribute: ``head``); the legacy exporter
    names nodes ``/head/...``. Read from the exported file (pre-processing drops the metadata
    but keeps the node names)."""
    import onnx

    heads = set()
    for node in onnx.load(str(exported), load_external_data=False).graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"),
                      "")
        if scopes.startswith("['', 'head'") or node.name.startswith("/head/"):
            heads.add(node.name)
    present = {n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node}
    return sorted(heads & present)


_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _input_ops(path: Path) -> list[str]:
    """Names of the nodes that come before the first weighted op in topological order."""
    import onnx

    names = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in _WEIGHTED_OPS:
            return names
        if node.name:
            names.append(node.name)
    return []  # no weighted op at all: nothing worth keeping apart


def _drop_unused_domains(path: Path) -> None:
    """Remove opset imports that no node uses (onnxruntime's optimiser stamps every domain it
    knows, some at versions an older onnxruntime on the device would refuse)."""
    import onnx

    model = onnx.load(str(path))
    used = {n.domain for n in model.graph.node} | {""}
    for f in model.functions:
        used |= {n.domain for n in f.node} | {f.domain}
    keep = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
        onnx.save(model, str(path))


def _check_quant_options(method: str, activations: str) -> None:
    """Refuse an unknown calibration method or activation type before any work is done."""
    if method not in CALIBRATION_METHODS:
        raise ExportError(
            f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )
    if activations not in ACTIVATION_TYPES:
        raise ExportError(
            f"activations must be one of {', '.join(ACTIVATION_TYPES)}, got {activations!r}"
        )


def _quantization_tools() -> SimpleNamespace:
    """onnxruntime's quantization entry points (imported here: onnxruntime is optional)."""
    try:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ExportError(
            f"int8 quantization needs onnxruntime's quantization tools ({describe(exc)}); "
            "pip install onnxruntime"
        ) from exc
    return SimpleNamespace(CalibrationMethod=CalibrationMethod, QuantFormat=QuantFormat,
                           QuantType=QuantType, quantize_static=quantize_static,
                           quant_pre_process=quant_pre_process)


def _calibration_array(calibration: np.ndarray, input_name: str,
                       dims: list[int | None]) -> np.ndarray:
    """``calibration`` as contiguous float32, after checking it fits the model's input."""
    x = np.asarray(calibration)
    if x.dtype.kind != "f" or x.ndim != len(dims) or len(x) == 0:
        raise ExportError(
            f"calibration data must be a non-empty float array of rank {len(dims)} for input "
            f"{input_name!r}, got {x.dtype} of shape {x.shape}"
        )
    if any(d is not None and d != s for d, s in zip(dims[1:], x.shape[1:])):
        raise ExportError(
            f"calibration data of shape {x.shape} do not fit input {input_name!r} of shape "
            f"{['N', *dims[1:]]}; pass segment_inputs(model, x)[k] for segment k"
        )
    if not np.all(np.isfinite(x)):
        raise ExportError("calibration data hold NaN or Inf values")
    return np.ascontiguousarray(x, dtype=np.float32)


def _pre_process(tools: SimpleNamespace, fp32_path: Path, prepared: Path) -> Path:
    """Shape inference and graph optimisation (folds BatchNorm into the convolutions) into
    ``prepared``; on failure the model as exported (the step is only an optimisation)."""
    try:
        tools.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
    except Exception as exc:  # pre-processing is an optimisation: quantize the original
        log.warning("quant_pre_process failed on %s (%s); quantizing the model as exported",
                    fp32_path, describe(exc))
        return fp32_path
    return prepared


def _quantize_static(tools: SimpleNamespace, prepared: Path, tmp: Path, reader: _ArrayReader,
                     fp32_path: Path, *, per_channel: bool, activations: str, method: str,
                     exclude: list[str]) -> None:
    """Run onnxruntime's ``quantize_static`` (QDQ, int8 weights) from ``prepared`` into ``tmp``."""
    try:
        tools.quantize_static(
            str(prepared),
            str(tmp),
            reader,
            quant_format=tools.QuantFormat.QDQ,
            activation_type=getattr(tools.QuantType, ACTIVATION_TYPES[activations]),
            weight_type=tools.QuantType.QInt8,
            per_channel=per_channel,
            nodes_to_exclude=exclude,
            calibrate_method=getattr(tools.CalibrationMethod, CALIBRATION_METHODS[method]),
        )
    except Exception as exc:
        raise ExportError(
            f"int8 quantization of {fp32_path} failed: {describe(exc)}"
        ) from exc


def _check_quantized_file(tmp: Path, fp32_path: Path, input_name: str,
                          output_names: list[str]) -> None:
    """The quantized file keeps the fp32 file's interface and runs (:func:`_check_file`)."""
    got_in, _, got_out = _graph_io(tmp)
    if got_in != input_name or got_out != output_names:
        raise ExportError(
            f"quantization changed the graph interface of {fp32_path}: "
            f"{got_in}->{got_out}, expected {input_name}->{output_names}"
        )
    _check_file(tmp, input_name, output_names)


def quantize_onnx_int8(
    fp32_path: str | os.PathLike,
    calibration: np.ndarray,
    out_path: str | os.PathLike,
    *,
    per_channel: bool = True,
    activations: str = "int8",
    float_input_ops: bool = True,
    method: str = "minmax",
    float_heads: bool = False,
) -> Path:
    """Static int8 quantization (QDQ format, int8 activations and weights) of an fp32 ONNX file.

    The model is first pre-processed with onnxruntime's ``quant_pre_process`` (shape inference
    and graph optimisation, which folds any BatchNorm the exporter left into the convolutions, so
    the folded weights are quantized), then quantized with ``quantize_static`` using min/max
    calibration on ``calibration``. Graph inputs and outputs stay float32.

    Args:
        fp32_path: the fp32 ONNX file (e.g. from :func:`export_onnx`).
        calibration: ``[N, ...]`` windows or features that really reach this model's input
            (for segment k: ``segment_inputs(model, x)[k]``); a few hundred are plenty.
        out_path: the int8 ``.onnx`` file to write.
        per_channel: one scale per output channel of every weight (better accuracy).
        activations: ``int8`` (signed activations: what ARM CPUs such as the Raspberry Pi run
            natively) or ``uint8`` (U8S8: what onnxruntime's x86 build fuses into integer
            kernels everywhere; with ``int8`` its x86 build leaves the convolutions whose input
            feeds several nodes in float). Weights are int8 either way.
        float_input_ops: keep the ops in front of the first convolution or matrix product in
            float (for segment 0 and the monolithic model: the :class:`InputNorm` centring and
            standardisation). Quantizing them would put raw ECG millivolts and RR seconds on one
            int8 scale; the first convolution then quantizes the normalised tensor instead.
        method: activation range calibration: ``minmax``, ``percentile`` (99.999th, clips rare
            outliers) or ``entropy`` (onnxruntime's calibrators).
        float_heads: keep the exit head in float (the nodes the exporter scoped under the
            segment's ``head`` module): the stage stays int8, the few head MACs decide the
            label. Measured on the quick-start model (test split, 2000 beats): exit 0's top-1
            agreement with PyTorch 98.85% -> 99.10%.

    Returns:
        The path written.

    Raises:
        ExportError: onnxruntime is missing, the calibration data do not fit the model's input,
            or quantization failed (no file is left behind).
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    _check_quant_options(method, activations)
    tools = _quantization_tools()
    if not fp32_path.is_file():
        raise ExportError(f"no ONNX model at {fp32_path}")
    input_name, dims, output_names = _graph_io(fp32_path)
    x = _calibration_array(calibration, input_name, dims)

    with tempfile.TemporaryDirectory(prefix="edgeexit-quant-") as work:
        prepared = _pre_process(tools, fp32_path, Path(work) / "prepared.onnx")
        exclude = _input_ops(prepared) if float_input_ops else []
        if float_heads:
            exclude += _head_ops(fp32_path, prepared)
        if exclude:
            log.debug("kept in float (input ops): %s", ", ".join(exclude))
        with atomic_path(out_path, ".tmp.onnx") as tmp:
            _quantize_static(tools, prepared, tmp, _ArrayReader(input_name, x), fp32_path,
                             per_channel=per_channel, activations=activations, method=method,
                             exclude=exclude)
            _drop_unused_domains(tmp)
            _check_quantized_file(tmp, fp32_path, input_name, output_names)
    log.info("quantized %s to int8 (QDQ, %s activations, per_channel=%s, %s, %d float nodes, %d "
             "calibration windows): %s", fp32_path, activations, per_channel, method, len(exclude),
             len(x), out_path)
    return out_path

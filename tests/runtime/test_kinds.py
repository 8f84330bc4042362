"""runtime/kinds.py: formats, precisions and policy names, one registry each, used everywhere."""

import json

import click
import pytest

from edgeexit.errors import ConfigError
from edgeexit.runtime.backends import backend_for_format
from edgeexit.runtime.backends.base import BACKENDS, BackendError
from edgeexit.runtime.kinds import (
    CALIBRATED_POLICIES,
    FORMAT_BACKEND,
    Format,
    PolicyName,
    Precision,
    parse,
)


def test_members_are_their_strings_in_json_formatting_and_lookups():
    # manifests written with members are byte for byte the ones written with strings
    with_members = {"format": Format.TFLITE, "precision": [Precision.INT8],
                    "policy": PolicyName.MAX_PROB}
    assert json.dumps(with_members) == json.dumps({"format": "tflite", "precision": ["int8"],
                                                   "policy": "max_prob"})
    assert f"segment_0.{Format.ONNX}" == "segment_0.onnx" and f"{Precision.FP32:>5}" == " fp32"
    assert {"onnx": 1}[Format.ONNX] == 1 and Format("tflite") is Format.TFLITE


def test_every_format_has_one_backend_that_loads_it():
    assert set(FORMAT_BACKEND) == set(Format) and set(BACKENDS) == set(FORMAT_BACKEND.values())
    for fmt in Format:
        backend = backend_for_format(fmt)
        assert backend.name == fmt.backend and backend.file_format == fmt
        assert Format.of_backend(backend.name) is fmt
    with pytest.raises(BackendError, match="known formats: onnx, tflite"):
        backend_for_format("pt")
    with pytest.raises(ValueError, match="unknown backend"):
        Format.of_backend("tensorrt")


def test_targets_read_the_same_registry():
    from edgeexit.targets import RuntimeSpec, list_targets, load_target

    for t in list_targets():
        spec = load_target(t.id).runtime
        assert spec.backend == FORMAT_BACKEND[spec.format] and spec.precision in Precision
    with pytest.raises(ConfigError, match="use backend = 'litert'"):
        RuntimeSpec(format="tflite", backend="onnxruntime")
    assert RuntimeSpec(format="onnx", backend="onnxruntime").format is Format.ONNX


def test_calibrated_policies_are_what_export_calibrate_and_the_cli_take():
    from edgeexit import calibrate
    from edgeexit.cli import main
    from edgeexit.export.bundle import ExportConfig

    assert set(CALIBRATED_POLICIES) < set(PolicyName)
    assert calibrate.CALIBRATED_POLICIES is CALIBRATED_POLICIES  # what calibration refuses others by
    assert [p.calibrated for p in PolicyName] == [p in CALIBRATED_POLICIES for p in PolicyName]
    for name in ("export", "calibrate"):
        option = next(o for o in main.get_command(None, name).params if o.name == "policy")
        assert isinstance(option.type, click.Choice)
        assert list(option.type.choices) == [str(p) for p in CALIBRATED_POLICIES]
    for p in PolicyName:
        if p.calibrated:
            assert ExportConfig(policy=str(p)).policy is p
        else:
            with pytest.raises(ConfigError, match="export calibrates the policy"):
                ExportConfig(policy=str(p))



def test_parse_names_the_choices():
    assert parse(Precision, "int8", "precision") is Precision.INT8
    with pytest.raises(ConfigError, match="unknown precision 'fp16'; choose one of: fp32, int8"):
        parse(Precision, "fp16", "precision")
    with pytest.raises(ConfigError, match="choose one of: max_prob, entropy, ensemble"):
        parse(PolicyName, "fixed", "calibrated policy", CALIBRATED_POLICIES)

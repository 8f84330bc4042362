"""export/validate.py: the tolerance table, every file checked, every failure reported."""

import shutil

import numpy as np
import pytest

from edgeexit.export import validate
from edgeexit.export.errors import ExportError, ValidationError
from edgeexit.export.validate import (
    TOLERANCES,
    References,
    Tolerance,
    check_parity,
    tolerance,
    validate_segments,
)
from edgeexit.runtime.kinds import Format, Precision
from edgeexit.runtime.manifest import GOLDEN, read_manifest


def test_one_tolerance_per_format_and_precision():
    assert set(TOLERANCES) == {(f, p) for f in Format for p in Precision}
    for (fmt, prec), tol in TOLERANCES.items():
        # fp32 files are held to an error bound, int8 files to a top-1 agreement floor
        assert (tol.max_rel_err is not None) == (prec == Precision.FP32)
        assert (tol.min_agreement is not None) == (prec == Precision.INT8)
    # the per-export override replaces int8's floor only
    assert tolerance("onnx", "int8", 0.5).min_agreement == 0.5
    assert tolerance("onnx", "fp32", 0.5) == TOLERANCES[(Format.ONNX, Precision.FP32)]
    assert Tolerance(max_rel_err=1e-3).error_bound(9.0) == pytest.approx(1e-2)


def test_check_parity_reports_every_exit_and_holds_fp32_after_int8_to_int8():
    rng = np.random.default_rng(0)
    ref = [rng.normal(size=(50, 5)).astype(np.float32) for _ in range(3)]
    got = [r.copy() for r in ref]
    got[0] += 0.5  # fp32 segment 0: far beyond 1e-3 x (1 + scale), same argmax
    got[2] = -got[2]  # segment 2 is fp32 after an int8 one: held to int8's agreement
    files = ["s0.onnx", "s1.onnx", "s2.onnx"]
    parity, failures = check_parity("onnxruntime", "onnx", got, ref, ["fp32", "int8", "fp32"],
                                    (0, 2, 3), files)
    assert [r["exit"] for r in parity["exits"]] == [0, 2, 3] and parity["samples"] == 50
    assert [(f.file, f.check) for f in failures] == [("s0.onnx", "max_abs_err"),
                                                     ("s2.onnx", "top1_agreement")]
    assert "exceeds the fp32 tolerance" in failures[0].message
    assert ("onnxruntime int8 exit 3 (segment 2) agrees with PyTorch's top-1 on only"
            in failures[1].message)
    # one ValidationError lists them all
    err = ValidationError(failures)
    assert isinstance(err, ExportError) and err.failures == tuple(failures)
    assert "2 checks against PyTorch failed" in str(err)
    assert all(f.message in str(err) for f in failures)


def _golden_refs(root) -> References:
    """PyTorch's logits as export stored them: golden.npz serves as parity and golden beats."""
    with np.load(root / GOLDEN) as g:
        x = g["inputs"]
        logits = [g[f"logits_{j}"] for j in range(len(read_manifest(root).segments))]
    return References(x, logits, x, logits)


def _tamper_onnx(path) -> None:
    """Negate and scale the largest weight of an ONNX file: it still loads and runs."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(-3.0 * numpy_helper.to_array(init), init.name))
    onnx.save(model, str(path))


def test_validate_segments_checks_every_file_and_reports_every_failure(bundle_dir, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(bundle_dir, root)
    manifest = read_manifest(root)
    refs = _golden_refs(root)
    clean = validate_segments(manifest, root, refs)
    assert clean.ok and set(clean.parity) == {"onnx", "tflite"}
    assert all("monolithic_max_abs_err" in p for p in clean.parity.values())

    _tamper_onnx(root / "segment_1.onnx")
    _tamper_onnx(root / "monolithic.onnx")
    report = validate_segments(manifest, root, refs)
    failed = {f.file for f in report.failures}
    assert {"segment_1.onnx", "monolithic.onnx"} <= failed
    assert "segment_0.onnx" not in failed  # before the tampered file: still PyTorch's
    assert all(f.format == "onnx" for f in report.failures)
    # the TFLite files were still checked, and pass
    assert len(report.parity["tflite"]["exits"]) == len(manifest.segments)
    with pytest.raises(ValidationError) as e:
        report.raise_failures()
    assert len(e.value.failures) == len(report.failures) >= 2
    assert "monolithic graph differs from PyTorch" in str(e.value)


def test_export_refuses_listing_every_file_out_of_tolerance(tiny_checkpoint, tmp_path, monkeypatch):
    from edgeexit.export.bundle import ExportConfig, export_bundle

    # a bound no file can meet: every ONNX file fails, and the export names all of them
    monkeypatch.setitem(TOLERANCES, (Format.ONNX, Precision.FP32), Tolerance(max_rel_err=-1.0))
    out = tmp_path / "b"
    with pytest.raises(ValidationError) as e:
        export_bundle(tiny_checkpoint, out, ExportConfig(target="x86_64", formats=("onnx",),
                                                         precision="fp32", golden_samples=8,
                                                         max_val_samples=64))
    files = {f.file for f in e.value.failures}
    assert files == {f"segment_{k}.onnx" for k in range(4)} | {"monolithic.onnx"}
    assert not out.exists() and not list(tmp_path.iterdir())
    assert validate.TOLERANCES is TOLERANCES

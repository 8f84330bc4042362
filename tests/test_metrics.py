import numpy as np
import pytest

from edgeexit.metrics import classification_report, confusion_matrix

# needs no torch or onnx: tools/aarch64_check.py runs it on the device install
pytestmark = pytest.mark.device_install


def test_confusion_matrix_counts():
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_report_values_by_hand():
    classes = ("N", "S", "V", "F", "Q")
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2, 0])
    r = classification_report(y_true, y_pred, classes)
    assert r["accuracy"] == pytest.approx(5 / 8)
    n = r["per_class"]["N"]
    assert n["sensitivity"] == pytest.approx(3 / 4)
    assert n["precision"] == pytest.approx(3 / 5)
    s = r["per_class"]["S"]
    assert s["sensitivity"] == pytest.approx(0.5) and s["precision"] == pytest.approx(0.5)
    f1 = [2 * 0.75 * 0.6 / 1.35, 0.5, 1.0, 0.0]
    assert r["macro_f1_nsvf"] == pytest.approx(np.mean(f1))
    # Q has no support: left out of macro_f1 but reported
    assert r["macro_f1"] == pytest.approx(np.mean(f1))
    assert r["per_class"]["Q"]["support"] == 0


def test_report_without_aami_classes_has_no_nsvf():
    r = classification_report(np.array([0, 1]), np.array([0, 1]), ("a", "b"))
    assert r["accuracy"] == 1.0 and "macro_f1_nsvf" not in r

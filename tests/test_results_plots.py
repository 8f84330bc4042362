"""tools/results_plots.py draws the docs' plots from the tables in results/."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_plots", REPO / "tools" / "results_plots.py")
plots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plots)


def test_cells_parse_to_their_macro_f1_figures():
    assert plots._numbers("0.433 ± 0.036 (82.7%)") == [0.433]
    assert plots._numbers("0.411 / 0.284 / 0.140 (25.8%)") == [0.411, 0.284, 0.140]
    assert plots._numbers(0.569) == [0.569]


def test_robustness_curves_are_drawn_from_the_committed_tables(tmp_path):
    files = plots.robustness_curves(tmp_path)
    assert sorted(f.name for f in files) == ["robustness-6epoch.png", "robustness-ranked-first.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)

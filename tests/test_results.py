"""Measured tables kept as data (edgeexit.results): written with provenance, read back, refused
when malformed."""

import json
from pathlib import Path

import numpy as np
import pytest

from edgeexit.errors import ConfigError
from edgeexit.results import read_table, to_markdown, write_table


def test_round_trip_with_provenance(tmp_path):
    path = write_table(tmp_path / "t.json", title="T", columns=["a", "b"],
                       rows=[[np.float32(0.5), 1], ["x", float("nan")]], command="edgeexit x --y")
    table = read_table(path)
    assert table.rows == [[0.5, 1], ["x", None]]
    assert table.provenance["command"] == "edgeexit x --y"
    for key in ("cpu", "cpus", "date", "commit", "torch"):
        assert table.provenance[key] is not None
    md = to_markdown(table)
    assert md.startswith("| a | b |") and "| x | - |" in md and "edgeexit x --y" in md


def test_refuses_ragged_rows_and_foreign_files(tmp_path):
    with pytest.raises(ConfigError, match="row 0 has 1 cells"):
        write_table(tmp_path / "t.json", title="T", columns=["a", "b"], rows=[[1]])
    (tmp_path / "bad.json").write_text(json.dumps({"schema": 1, "title": "T"}))
    with pytest.raises(ConfigError, match="without"):
        read_table(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("[1, 2")
    with pytest.raises(ConfigError, match="not a readable"):
        read_table(tmp_path / "junk.json")


def test_every_committed_table_loads_under_its_own_name():
    """A table is looked up by name (docs' results-table marks, superseded_by): a file copied in
    from a run's --out keeps the name of that run's file unless it is set."""
    tables = sorted((Path(__file__).resolve().parents[1] / "results").glob("*.json"))
    assert tables
    for path in tables:
        table = read_table(path)
        assert table.name == path.stem, f"{path.name}: name {table.name!r}"

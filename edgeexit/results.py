"""Measured tables kept as data: one JSON file per table under ``results/``, with where and how it
was measured (CPU, date, commit, the exact command), so the docs render from the data and a reader
can re-run the command.

A file holds::

    {"schema": 1, "name": "...", "title": "...",
     "provenance": {"cpu": ..., "cpus": ..., "machine": ..., "python": ..., "torch": ...,
                    "date": "YYYY-MM-DD", "commit": "<sha>[-dirty]", "command": "..."},
     "columns": ["record", "macro_f1", ...], "rows": [[...], ...],
     "notes": "...", "superseded_by": null | "<name of the table that replaced it>"}

``write_table`` writes it atomically; ``read_table`` loads and checks it; ``to_markdown`` renders
it (the docs' results pages and ``tools/*`` summaries use it).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgeexit.errors import ConfigError
from edgeexit.runtime.atomic import atomic_write

SCHEMA = 1

__all__ = ["ResultTable", "provenance", "read_table", "to_markdown", "write_table"]


@dataclass(frozen=True)
class ResultTable:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    provenance: dict[str, Any]
    notes: str = ""
    superseded_by: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _commit(repo: Path) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def provenance(command: str | Sequence[str] | None = None) -> dict[str, Any]:
    """Where and how a table was measured. ``command`` defaults to this process's command line."""
    from edgeexit.runtime.profile import machine_info

    info = dict(machine_info())
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - the host always has torch
        info["torch"] = None
    if command is None:
        command = [Path(sys.argv[0]).name if sys.argv[0].endswith("edgeexit") else sys.argv[0],
                   *sys.argv[1:]]
    if not isinstance(command, str):
        command = shlex.join(str(c) for c in command)
    info["date"] = _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    info["commit"] = _commit(Path(__file__).resolve().parent.parent)
    info["command"] = command
    return info


def _plain(value: Any) -> Any:
    """JSON-safe cell: numpy scalars to Python, non-finite floats to None."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_table(path: str | Path, *, title: str, columns: Sequence[str],
                rows: Sequence[Sequence[Any]], command: str | Sequence[str] | None = None,
                notes: str = "", superseded_by: str | None = None,
                extra: dict[str, Any] | None = None,
                measured: dict[str, Any] | None = None) -> Path:
    """Write ``rows`` (each as long as ``columns``) to ``path`` (``.json``), atomically.

    ``measured`` overrides provenance fields, for a table measured earlier than it is written
    (e.g. ``{"date": "2026-12-02", "commit": "2515a11", "cpu": "Intel(R) Xeon(R) Processor"}``
    for a table moved from the README); the command must still be the one that reproduces it."""
    path = Path(path)
    if path.suffix != ".json":
        raise ConfigError(f"{path}: a results table is a .json file")
    columns = [str(c) for c in columns]
    clean = []
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise ConfigError(f"{path}: row {i} has {len(row)} cells for {len(columns)} columns")
        clean.append([_plain(v) for v in row])
    prov = provenance(command)
    prov.update(measured or {})
    doc = {"schema": SCHEMA, "name": path.stem, "title": title, "provenance": prov,
           "columns": columns, "rows": clean, "notes": notes, "superseded_by": superseded_by}
    if extra:
        doc["extra"] = json.loads(json.dumps(extra, default=_plain))
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, default=_plain) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def read_table(path: str | Path) -> ResultTable:
    """Load a table written by :func:`write_table`; :class:`ConfigError` on anything else."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable results table ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ConfigError(f"{path}: not a results table of schema {SCHEMA}")
    try:
        columns, rows, prov = list(doc["columns"]), list(doc["rows"]), dict(doc["provenance"])
        title = str(doc["title"])
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{path}: results table without {e}") from None
    for key in ("cpu", "date", "commit", "command"):
        if key not in prov:
            raise ConfigError(f"{path}: provenance lacks {key!r}")
    if any(not isinstance(r, list) or len(r) != len(columns) for r in rows):
        raise ConfigError(f"{path}: a row's length differs from the columns'")
    return ResultTable(name=str(doc.get("name", path.stem)), title=title, columns=columns,
                       rows=rows, provenance=prov, notes=str(doc.get("notes") or ""),
                       superseded_by=doc.get("superseded_by"), extra=dict(doc.get("extra") or {}))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def to_markdown(table: ResultTable, *, provenance_line: bool = True) -> str:
    """The table as Markdown, with its provenance under it."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
    if provenance_line:
        p = table.provenance
        lines += ["", f"Measured on {p.get('cpu')} ({p.get('cpus')} CPUs), {p.get('date')}, "
                      f"commit {str(p.get('commit'))[:12]}, with `{p.get('command')}`."]
    if table.superseded_by:
        lines += ["", f"Superseded by `{table.superseded_by}`."]
    if table.notes:
        lines += ["", table.notes]
    return "\n".join(lines) + "\n"

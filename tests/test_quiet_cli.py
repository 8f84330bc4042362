"""A quiet command line: run as a user would (a separate process, real file descriptors), a command
prints its own progress and results and no line of the libraries underneath; those go to the log
file it names, -v shows them, -q prints results only, and errors still reach the terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what the libraries print: glog-style lines (torch's W1207 ..., absl's I0000 ...), their own
# INFO:/WARNING: lines (TFLite, absl), Python warnings, loggers other than edgeexit's
THIRD_PARTY = re.compile(
    r"^[IWEF]\d{4} |^(INFO|WARNING|ERROR):? (?!edgeexit)|Warning\b|warnings\.warn|XNNPACK|torchao"
    r"|absl|TensorFlow|torchvision|^\s+return |Traceback", re.M)


def _edgeexit(*args: str, log: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "default"}  # every warning the libraries raise is printed, if let through
    return subprocess.run([sys.executable, "-m", "edgeexit", "--log-file", str(log), *args],
                          capture_output=True, text=True, env=env, timeout=1200)


def _noise(r: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in (r.stdout + r.stderr).splitlines() if THIRD_PARTY.search(ln)]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    log = root / "export.log"
    r = _edgeexit("export", str(tiny_checkpoint), "--target", "x86_64", "--out", str(root / "b"),
                  "--exits", "0,3", "--no-monolithic", "--golden-samples", "8", log=log)
    return root, log, r


def test_export_prints_no_library_line_and_names_the_log(exported):
    root, log, r = exported
    assert r.returncode == 0, r.stderr
    assert not _noise(r), _noise(r)
    assert "bundle" in r.stdout and (root / "b" / "manifest.json").is_file()
    # the converters did speak (torch.onnx, torchao, LiteRT): into the log, which is named
    assert log.is_file() and log.read_text().strip()
    assert str(log) in r.stderr


def test_quiet_prints_results_only_and_verbose_shows_the_libraries(exported):
    root, _, _ = exported
    q = _edgeexit("-q", "verify", str(root / "b"), log=root / "verify-q.log")
    assert q.returncode == 0, q.stderr
    assert q.stdout.strip() and not q.stderr.strip() and not _noise(q)
    v = _edgeexit("-v", "verify", str(root / "b"), log=root / "verify-v.log")
    assert v.returncode == 0 and "XNNPACK" in v.stderr  # LiteRT's native line, shown with -v
    assert not (root / "verify-v.log").exists()


def test_errors_still_reach_the_terminal(tmp_path):
    r = _edgeexit("targets", "no-such-board", log=tmp_path / "x.log")
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and len(r.stderr.splitlines()) == 1


_ROUTING = """
import logging, os, sys, warnings
from edgeexit.cli.quiet import LibraryOutput
with LibraryOutput("t", log_file=sys.argv[1]) as out:
    logging.getLogger("edgeexit.x").info("stage detail")
    logging.getLogger("torch.x").warning("library noise")
    warnings.warn("a library's FutureWarning", FutureWarning)
    os.write(2, b"native noise\\n")
    print("result")
    out.details_to_log()
    logging.getLogger("edgeexit.x").info("detail for the log")
    logging.getLogger("edgeexit.x").warning("a warning")
"""


def test_each_kind_of_output_goes_where_it_belongs(tmp_path):
    log = tmp_path / "t.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _ROUTING, str(log)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "result\n"
    assert "stage detail" in r.stderr and "a warning" in r.stderr and str(log) in r.stderr
    text = log.read_text()
    for line in ("library noise", "FutureWarning", "native noise", "detail for the log"):
        assert line not in r.stderr and line in text, line


def _old_logs(directory, n):
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = directory / f"run-20260101-0000{i:02d}-{i}.log"
        p.write_text("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.utime(p, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))  # log i is the i-th oldest


def test_prune_logs_keeps_the_newest_and_only_touches_logs(tmp_path):
    from edgeexit.cli.quiet import prune_logs

    _old_logs(tmp_path, 12)
    (tmp_path / "notes.txt").write_text("not a log")
    assert prune_logs(tmp_path, keep=5) == 7
    left = sorted(p.name for p in tmp_path.glob("*.log"))
    assert left == [f"run-20260101-0000{i:02d}-{i}.log" for i in range(7, 12)]
    assert (tmp_path / "notes.txt").exists()
    assert prune_logs(tmp_path / "missing", keep=5) == 0


_DEFAULT_LOG = """
import os
from edgeexit.cli.quiet import LibraryOutput
with LibraryOutput("run") as out:
    os.write(2, b"native noise\\n")
print(out.path)
"""


def test_a_command_prunes_the_default_log_directory_but_not_a_chosen_log(tmp_path):
    from edgeexit.cli.quiet import KEEP_LOGS

    logs = tmp_path / "edgeexit"
    _old_logs(logs, KEEP_LOGS + 10)
    env = {**os.environ, "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _DEFAULT_LOG], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    new = Path(r.stdout.strip())
    assert new.parent == logs and new.read_text() == "native noise\n"
    names = {p.name for p in logs.glob("*.log")}
    assert len(names) == KEEP_LOGS and new.name in names
    assert "run-20260101-000010-10.log" not in names and "run-20260101-000011-11.log" in names
    mine = tmp_path / "mine"  # --log-file elsewhere: that directory is the user's, left alone
    _old_logs(mine, KEEP_LOGS + 5)
    chosen = _DEFAULT_LOG.replace('("run")', f'("run", log_file={str(mine / "x.log")!r})')
    r = subprocess.run([sys.executable, "-c", chosen], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(list(mine.glob("*.log"))) == KEEP_LOGS + 6

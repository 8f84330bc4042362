"""The command line stays thin: every command body is short, its options are grouped in --help,
and its exit codes come from ExitStatus."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgeexit.cli import load_all, main
from edgeexit.cli.app import Failure, GroupedCommand
from edgeexit.errors import ExitStatus

REPO = Path(__file__).resolve().parents[1]


def _commands(group=main, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


load_all()
COMMANDS = dict(_commands())


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_body_is_short(path):
    lines, _ = inspect.getsourcelines(inspect.unwrap(COMMANDS[path].callback))
    body = lines[next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("def ")):]
    assert len(body) <= 60, f"edgeexit {' '.join(path)}: {len(body)} lines; move the thinking out"


@pytest.mark.parametrize("path", [p for p, c in COMMANDS.items()
                                  if isinstance(c, GroupedCommand) and c.option_groups], ids=" ".join)
def test_grouped_help_shows_every_heading_and_option(path):
    cmd = COMMANDS[path]
    out = CliRunner().invoke(main, [*path, "--help"]).output
    for title, _ in cmd.option_groups:
        assert f"{title}:" in out
    for p in cmd.params:
        if isinstance(p, click.Option):
            assert p.opts[0] in out, p.opts[0]


def test_a_group_naming_an_unknown_option_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown parameters"):
        GroupedCommand("x", params=[click.Option(["--a"])], option_groups=[("A", ["b"])])


def test_exit_codes_come_from_exit_status(tmp_path):
    assert Failure("x").exit_code == ExitStatus.ERROR
    r = CliRunner().invoke(main, ["info", str(tmp_path / "missing.pt")])
    assert r.exit_code == ExitStatus.ERROR and r.output.startswith("Error: ")
    assert CliRunner().invoke(main, ["train"]).exit_code == ExitStatus.USAGE  # --out is required


def test_the_lazy_command_map_names_every_command_and_its_module():
    from edgeexit.cli import COMMAND_MODULES

    assert set(main.commands) == set(COMMAND_MODULES)  # load_all above imported every module
    for name, module in COMMAND_MODULES.items():
        cmd = main.commands[name]
        callback = cmd.callback if cmd.callback is not None else next(
            c.callback for c in cmd.commands.values())
        assert inspect.unwrap(callback).__module__ == module, name


def test_a_command_imports_only_its_own_module(tmp_path):
    code = ("import sys\nfrom edgeexit.cli import main\n"
            "try:\n    main(['run', '--help'], prog_name='edgeexit')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('edgeexit.cli.')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = r.stdout.strip().splitlines()[-1]
    assert "'edgeexit.cli.device'" in loaded and "--stream" in r.stdout
    for other in ("robust", "train", "adapt", "quickstart", "export", "keys", "inspect"):
        assert f"'edgeexit.cli.{other}'" not in loaded, loaded

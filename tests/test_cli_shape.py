"""The command line stays thin: every command body is short, its options are grouped in --help,
and its exit codes come from ExitStatus."""

import inspect

import click
import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.cli.app import Failure, GroupedCommand
from edgeexit.errors import ExitStatus


def _commands(group=main, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


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

"""The docs site builds with warnings as errors, names every guide, and every command shown in the
README or the docs still parses: `edgeexit` commands against the click commands (unknown options,
missing arguments, bad choices fail), `tools/*.py` scripts against their own options."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from edgeexit.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
_BLOCK = re.compile(r"^[ \t]*```(?:bash|sh|shell|console)[ \t]*\n(.*?)^[ \t]*```", re.S | re.M)
_SEPARATORS = {"&&", "||", ";", "|", "&"}


def shell_commands(text: str) -> list[list[str]]:
    """Every simple command of the ```bash blocks of ``text``, as argument lists."""
    out = []
    for block in _BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lex.whitespace_split, lex.commenters = True, "#"
            current: list[str] = []
            for token in [*lex, ";"]:
                if token in _SEPARATORS:
                    out.append(current)
                    current = []
                else:
                    current.append(token)
    return [c for c in out if c]


def _edgeexit_args(cmd: list[str]) -> list[str] | None:
    """The arguments after the `edgeexit` program (or `python -m edgeexit`), else None."""
    while cmd and re.fullmatch(r"[A-Z_]+=.*", cmd[0]):
        cmd = cmd[1:]
    if cmd and Path(cmd[0]).name == "edgeexit":
        return cmd[1:]
    if "-m" in cmd and cmd.index("-m") + 1 < len(cmd) and cmd[cmd.index("-m") + 1] == "edgeexit":
        return cmd[cmd.index("-m") + 2:]
    return None


def _tool(cmd: list[str]) -> tuple[Path, list[str]] | None:
    if cmd and Path(cmd[0]).name.startswith("python") and len(cmd) > 1 and cmd[1].startswith("tools/"):
        return REPO / cmd[1], cmd[2:]
    return None


def _check_edgeexit(args: list[str], monkeypatch) -> None:
    convert = click.Path.convert

    def no_exists(self, value, param, ctx):  # the docs' paths are the user's, not this checkout's
        saved, self.exists = self.exists, False
        try:
            return convert(self, value, param, ctx)
        finally:
            self.exists = saved

    monkeypatch.setattr(click.Path, "convert", no_exists)
    cmd, name, parent = main, "edgeexit", None
    while True:
        try:
            ctx = cmd.make_context(name, list(args), parent=parent)
        except click.exceptions.Exit:
            return  # --help, --version
        if not isinstance(cmd, click.Group):
            return
        rest = [*ctx._protected_args, *ctx.args]
        assert rest, f"`edgeexit ... {name}` needs a command"
        name, sub, args = cmd.resolve_command(ctx, rest)
        cmd, parent = sub, ctx


def _commands_of_pages():
    for page in PAGES:
        for cmd in shell_commands(page.read_text(encoding="utf-8")):
            yield page.relative_to(REPO).as_posix(), cmd


COMMANDS = list(_commands_of_pages())


def test_the_pages_show_commands():
    shown = [c for _, c in COMMANDS if _edgeexit_args(c) is not None]
    assert len(shown) >= 20 and any(_tool(c) for _, c in COMMANDS)


@pytest.mark.parametrize("page,cmd", COMMANDS, ids=[f"{p}: {shlex.join(c)[:70]}" for p, c in COMMANDS])
def test_every_shown_command_parses(page, cmd, monkeypatch):
    assert "sudo" not in cmd, f"{page}: commands run without sudo (the tools ask for what they need)"
    args = _edgeexit_args(cmd)
    if args is not None:
        try:
            _check_edgeexit(args, monkeypatch)
        except click.ClickException as e:
            pytest.fail(f"{page}: `{shlex.join(cmd)}`: {e.format_message()}")
        return
    tool = _tool(cmd)
    if tool is not None:
        script, targs = tool
        assert script.is_file(), f"{page}: {script.relative_to(REPO)} does not exist"
        source = script.read_text(encoding="utf-8")
        unknown = [a.split("=")[0] for a in targs
                   if a.startswith("--") and f'"{a.split("=")[0]}"' not in source]
        assert not unknown, f"{page}: {script.name} has no option {unknown}"


def test_every_guide_is_in_the_nav():
    from mkdocs.config import load_config

    sys.path.insert(0, str(DOCS))
    try:
        import _hooks
    finally:
        sys.path.remove(str(DOCS))
    config = _hooks.on_config(load_config(str(REPO / "mkdocs.yml")))
    named = _hooks._nav_uris(config.nav)
    missing = [p.name for p in (DOCS / "guides").glob("*.md") if f"guides/{p.name}" not in named]
    assert not missing
    assert (DOCS / "guides" / "runtime.md").is_file() and "guides/runtime.md" in named


def test_docs_build_with_warnings_as_errors(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                        str(tmp_path / "site")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "edgeexit export" in cli and "--target" in cli  # generated from the click commands
    assert "Exit thresholds:" in cli and "Device path" in cli  # with --help's option groups
    assert "edgeexit data generate" in cli  # and the subcommands of a group
    manifest = (site / "reference" / "manifest" / "index.html").read_text()
    assert "bundle_version" in manifest and "abs_max" in manifest  # from runtime/manifest.py
    energy = (site / "results" / "energy" / "index.html").read_text()
    assert "results-table" not in energy and "tools/energy_study.py" in energy  # rendered data


def test_every_python_example_compiles():
    blocks = [(p, b) for p in PAGES for b in re.findall(r"```python\n(.*?)```", p.read_text(), re.S)]
    assert blocks
    for page, block in blocks:
        compile(block, str(page), "exec")

"""The README stays true: its two commands are what CI runs, and every command is documented."""

import re
from pathlib import Path

from click.testing import CliRunner

from edgeexit.cli import load_all, main

REPO = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, flags=re.S)
    return [b.strip() for b in blocks]


def test_readme_opens_with_exactly_two_commands():
    cmds = _quick_start_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds), cmds
    setup, tests = cmds
    assert "-c constraints.txt" in setup and "edgeexit quickstart" in setup
    assert "pytest" in tests


def test_ci_installs_and_tests_as_the_readme_says():
    setup, tests = _quick_start_commands()
    ci = (REPO / ".ci" / "run").read_text()
    install = next(part.strip() for part in setup.split("&&") if "pip install" in part)
    assert install in ci
    assert tests in ci.splitlines()


def test_every_command_is_documented():
    """In the README's table or a docs page (the CLI reference is generated from the code)."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    text = "\n".join(p.read_text() for p in pages)
    load_all()
    group = main
    names = []
    for name, cmd in group.commands.items():
        names.append(name)
        names += [f"{name} {sub}" for sub in getattr(cmd, "commands", {})]
    missing = [n for n in names if f"edgeexit {n}" not in text]
    assert not missing, f"commands in neither README.md nor docs/: {missing}"
    assert CliRunner().invoke(main, ["--help"]).exit_code == 0


def test_readme_is_short_and_stays_inside_the_repository():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)#]+)", text) + re.findall(r"`(\.\./[^`]*)`", text)
    outside = [t for t in targets if not (REPO / t).resolve().is_relative_to(REPO)]
    missing = [t for t in targets if "://" not in t and not (REPO / t).exists()]
    assert not outside and not missing, (outside, missing)

"""MkDocs hooks of the documentation site (mkdocs.yml names this file).

- Every page under ``docs/guides/`` that the nav does not name is added to the "Guides" section
  (titled by its first heading), so a guide written by anyone is in the site.
- ``<!-- results-table: NAME -->`` in a page is replaced by ``results/NAME.json`` rendered with
  :func:`edgeexit.results.to_markdown` (with its CPU, date, commit and command); a missing or
  malformed file fails the build.
- Generated pages: ``results/tables.md`` (every table of ``results/``, superseded ones last) and
  ``reference/manifest.md`` (the bundle manifest's keys, from the dataclasses of
  ``edgeexit/runtime/manifest.py``); ``results/plots/*.png`` are served under the same path.
- ``<!-- cli-reference -->`` is replaced by every command's ``--help``, as the terminal shows it
  (option groups included), under one heading per command.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
MARK = re.compile(r"<!--\s*results-table:\s*([\w.-]+)\s*-->")
CLI_MARK = "<!-- cli-reference -->"
HELP_WIDTH = 100
GUIDES_SECTION = "Guides"


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("-", " ").capitalize()


def _nav_uris(items) -> set[str]:
    uris: set[str] = set()
    for item in items or []:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            uris |= _nav_uris(value)
        else:
            uris.add(value)
    return uris


def on_config(config, **_):
    guides = Path(config.docs_dir) / "guides"
    section = next((item[GUIDES_SECTION] for item in config.nav or []
                    if isinstance(item, dict) and GUIDES_SECTION in item), None)
    if section is None:
        raise PluginError(f"mkdocs.yml: the nav has no {GUIDES_SECTION!r} section")
    named = _nav_uris(config.nav)
    for page in sorted(guides.glob("*.md")):
        uri = f"guides/{page.name}"
        if uri not in named:
            section.append({_title(page): uri})
    return config


def _table(name: str, *, heading: str | None = None) -> str:
    from edgeexit.errors import EdgeExitError
    from edgeexit.results import read_table, to_markdown

    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise PluginError(f"results table {name!r}: {path} does not exist")
    try:
        table = read_table(path)
    except EdgeExitError as e:
        raise PluginError(str(e)) from None
    body = to_markdown(table)
    return f"{heading}\n\n{body}" if heading else body


def _cli_reference() -> str:
    """Each command's ``--help`` (``GroupedCommand`` formats the option groups), depth first in
    the order ``edgeexit --help`` lists them."""
    import click

    from edgeexit.cli import main

    out: list[str] = []

    def walk(cmd: click.Command, ctx: click.Context, level: int) -> None:
        out.append(f"{'#' * level} `{ctx.command_path}`\n\n```text\n{cmd.get_help(ctx)}\n```\n")
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, click.Context(sub, info_name=name, parent=ctx,
                                            max_content_width=HELP_WIDTH, terminal_width=HELP_WIDTH),
                         min(level + 1, 4))

    walk(main, click.Context(main, info_name="edgeexit", max_content_width=HELP_WIDTH,
                             terminal_width=HELP_WIDTH), 2)
    return "\n".join(out)


def on_page_markdown(markdown: str, page, **_) -> str:
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, _cli_reference())
    return MARK.sub(lambda m: _table(m.group(1)), markdown)


def _all_tables_page() -> str:
    from edgeexit.results import read_table

    tables = [read_table(p) for p in sorted(RESULTS.glob("*.json"))]
    current = [t for t in tables if not t.superseded_by]
    old = [t for t in tables if t.superseded_by]
    out = ["# All measured tables", "",
           "Every file of `results/`, rendered from the data (one JSON file per table, written by "
           "`edgeexit.results.write_table`). The pages before this one explain them; tables that a "
           "newer measurement replaced are listed last.", ""]
    for title, group in (("Current", current), ("Superseded", old)):
        if not group:
            continue
        out += [f"## {title}", ""]
        for t in group:
            out += [f"### {t.title}", "", f"`results/{t.name}.json`", "",
                    _table(t.name), ""]
    return "\n".join(out) + "\n"


def _type_name(tp) -> str:
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _section_rows(cls, prefix: str, seen: set, out: list[str], hints_of) -> None:
    if cls in seen:
        return
    seen.add(cls)
    hints = hints_of(cls)
    nested = []
    out += [f"### `{prefix or 'manifest.json'}`", ""]
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    if doc:
        out += [" ".join(doc.split()), ""]
    out += ["| key | type | default |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in ("extra", "_keys"):
            continue
        tp = hints.get(f.name, f.type)
        if f.default is not dataclasses.MISSING:
            default = f"`{f.default!r}`"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"`{f.default_factory()!r}`"
        else:
            default = "required"
        out.append(f"| `{f.name}` | `{_type_name(tp)}` | {default} |")
        for arg in [tp, *typing.get_args(tp), *[a for t in typing.get_args(tp)
                                                for a in typing.get_args(t)]]:
            if dataclasses.is_dataclass(arg):
                nested.append((arg, f"{prefix}.{f.name}" if prefix else f.name))
    out.append("")
    for sub, path in nested:
        _section_rows(sub, path, seen, out, hints_of)


def _manifest_page() -> str:
    from edgeexit.runtime import manifest as m

    def hints_of(cls):
        return typing.get_type_hints(cls, vars(m))

    out = ["# Bundle manifest", "",
           "Generated from `edgeexit/runtime/manifest.py`, the one module that reads and writes "
           f"`manifest.json` (`format` = `{m.FORMAT}`, `schema_version` = {m.SCHEMA_VERSION}). "
           "Shapes are per sample (no batch dimension). A section keeps keys it does not know "
           "(`extra`), so newer manifests load in older runtimes of the same schema version.", "",
           "## The bundle directory", "", "```text", (m.__doc__ or "").split("::", 1)[1]
           .split("\n\n", 2)[1].strip("\n"), "```", "", "## Keys", ""]
    _section_rows(m.Manifest, "", set(), out, hints_of)
    example = REPO / "tests" / "data" / "bundle_v1" / "manifest.json"
    if example.is_file():
        text = json.dumps(json.loads(example.read_text()), indent=1)
        out += ["## Example", "", "The committed test bundle `tests/data/bundle_v1/manifest.json`:",
                "", "```json", text, "```", ""]
    out += ["## Python API", "", "::: edgeexit.runtime.manifest", "    options:",
            "      show_root_heading: false", "      members: [Manifest, load_manifest, "
            "read_manifest, verify_hashes, check_chain, BundleError]", ""]
    return "\n".join(out)


def on_files(files, config, **_):
    files.append(File.generated(config, "results/tables.md", content=_all_tables_page()))
    files.append(File.generated(config, "reference/manifest.md", content=_manifest_page()))
    for png in sorted((RESULTS / "plots").glob("*.png")):
        files.append(File.generated(config, f"results/plots/{png.name}", abs_src_path=str(png)))
    return files

"""The ``edgeexit`` group, its error handling and exit codes, and what the commands share: option
groups in ``--help``, JSON output, list parsing, progress bars and common options.

Imports neither torch nor onnx (a test checks it): the device installs only the runtime, and
``edgeexit --help`` must work there.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import sys
from collections.abc import Callable, Iterable, Sequence

import click

from edgeexit import __version__
from edgeexit.cli.quiet import LibraryOutput
from edgeexit.errors import EdgeExitError, ExitStatus

# Packages of the [host] extra: a device with only [runtime] installed lacks them.
_HOST_MODULES = {"torch", "wfdb", "tqdm", "onnx", "onnxscript", "torch_pruning", "litert_torch"}


class Failure(click.ClickException):
    """A one-line ``Error: ...`` and :attr:`ExitStatus.ERROR`."""

    exit_code = ExitStatus.ERROR


class GroupedCommand(click.Command):
    """A command whose ``--help`` lists its options under headings.

    Click has no option groups of its own; this formatter is all ``edgeexit`` needs of them
    (cloup and click-option-group offer more, at the price of a dependency on the device).

    Args:
        option_groups: ``(heading, (parameter name, ...))`` pairs, in the order shown; options in
            no group are listed last, under "Other options".
    """

    def __init__(self, *args, option_groups: Sequence[tuple[str, Sequence[str]]] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.option_groups = tuple((title, tuple(names)) for title, names in option_groups)
        known = {p.name for p in self.params}
        unknown = [n for _, names in self.option_groups for n in names if n not in known]
        if unknown:
            raise ValueError(f"{self.name}: option groups name unknown parameters {unknown}")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx)
                   if not isinstance(p, click.Argument)}
        # one column width for every section, so that the groups line up as one table
        width = min(max((len(r[0]) for r in records.values() if r), default=0), 30)
        records = {n: (r[0].ljust(width), r[1]) if r else r for n, r in records.items()}
        placed: set[str] = set()
        for title, names in self.option_groups:
            placed.update(names)
            rows = [records[n] for n in names if records.get(n)]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rest = [r for n, r in records.items() if r and n not in placed]
        if rest:
            with formatter.section("Other options" if self.option_groups else "Options"):
                formatter.write_dl(rest)


class FiniteFloat(click.ParamType):
    """A finite number (``nan``, ``inf`` and overflowing text refused); ``positive``: > 0;
    ``nonzero``: not 0."""

    name = "number"

    def __init__(self, positive: bool = False, nonzero: bool = False) -> None:
        self.positive, self.nonzero = positive, nonzero

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(f"{one_line(str(value), 40)!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if (self.positive and v <= 0) or (self.nonzero and v == 0):
            self.fail(f"{value!r} must be {'> 0' if self.positive else 'non-zero'}", param, ctx)
        return v


def one_line(text: str, limit: int = 400) -> str:
    """``text`` as one printable line of at most ``limit`` characters: line breaks become spaces,
    other control characters (a NUL byte read from a file) escapes, and a long text is cut."""
    text = " ".join(str(text).split())
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(message: str, status: ExitStatus) -> None:
    click.echo(f"Error: {one_line(message)}", err=True)
    sys.exit(status)


class EdgeExitGroup(click.Group):
    """The CLI's error contract: every error ends in one ``Error: what was wrong, what to do``
    line on stderr, never a traceback. Bad input (an :class:`EdgeExitError`) and a malformed
    command line exit 1; a missing host package says how to install it; Ctrl-C exits 130 (what
    was being written is left as it was: every write is atomic); anything else is a bug, reported
    in one line (its traceback with ``-v``) with exit 1."""

    command_class = GroupedCommand
    lazy_commands: dict[str, str] = {}  # name -> the module whose import registers it

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        """A command, its module imported on first use: ``edgeexit run`` loads the device
        commands' module only, not every command's (the start-up a device pays per call)."""
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            importlib.import_module(self.lazy_commands[cmd_name])
        return self.commands.get(cmd_name)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # a bare group: its help, as asked
            click.echo(e.ctx.get_help())
            sys.exit(ExitStatus.OK)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "edgeexit"
            _fail(f"{e.format_message()} (see '{where} --help')", ExitStatus.USAGE)
        except click.ClickException as e:
            _fail(e.format_message(), ExitStatus(e.exit_code) if e.exit_code in set(ExitStatus)
                  else ExitStatus.ERROR)
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted; nothing was left half-written (run the command again)",
                  ExitStatus.INTERRUPTED)
        except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback with -v
            if logging.getLogger("edgeexit").isEnabledFor(logging.DEBUG):
                raise
            _fail(f"internal error ({type(e).__name__}: {e}); this is a bug in edgeexit: rerun "
                  "with -v for the traceback and report it", ExitStatus.ERROR)
        sys.exit(ExitStatus.OK)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeExitError as e:
            raise Failure(str(e)) from None
        except ModuleNotFoundError as e:
            if e.name not in _HOST_MODULES:
                raise
            raise Failure(
                f"this command needs {e.name}, part of the host install (the device install has "
                "only the runtime): pip install -c constraints.txt 'edgeexit[host]'"
            ) from None


EdgeExitGroup.group_class = EdgeExitGroup


@click.group(cls=EdgeExitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeexit")
@click.option("-v", "--verbose", is_flag=True,
              help="Log debug messages too, and show what the libraries underneath print.")
@click.option("-q", "--quiet", is_flag=True,
              help="Print results only (and warnings and errors): no progress, no stage lines.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Where the libraries' messages go (default: a file under the temporary "
                   "directory, named when the command ends).")
def main(verbose: bool, quiet: bool, log_file: str | None) -> None:
    """edgeexit: robust multi-exit ECG classifiers, from training to Raspberry Pi-class devices.

    Train a multi-exit model on the built-in synthetic ECG or on MIT-BIH records, inspect data
    sets and checkpoints. Results go to stdout (human text, or JSON with --json), progress and
    edgeexit's own log to stderr, and what the libraries underneath print (converters, LiteRT,
    XNNPACK) to a log file.
    """
    ctx = click.get_current_context()
    ctx.meta["edgeexit.output"] = ctx.with_resource(
        LibraryOutput(ctx.invoked_subcommand, verbose=verbose, quiet=quiet, log_file=log_file))


def quiet_mode() -> bool:
    """Whether the command runs under ``edgeexit -q``."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("quiet"))


def exit_with(status: ExitStatus) -> None:
    """End the command with ``status`` (after its report was printed)."""
    sys.exit(status)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2))


def echo_result(as_json: bool, obj, text: Callable[[], str | None]) -> None:
    """Print ``obj`` as JSON, or the text ``text()`` makes of it (nothing for None)."""
    if as_json:
        echo_json(obj)
        return
    out = text()
    if out is not None:
        click.echo(out)


def stage_printer(enabled: bool = True) -> Callable[[str], None] | None:
    """``... stage`` lines on stderr, or None when ``enabled`` is false."""
    return (lambda s: click.echo(f"... {s}", err=True)) if enabled and not quiet_mode() else None


def names(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: a comma-separated option, blanks dropped."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def floats(text: str) -> tuple[float, ...]:
    """``"0.05,0.1"`` -> ``(0.05, 0.1)``; anything else is a bad parameter."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


def parse_exits(text: str | None) -> tuple[int, ...] | None:
    """``--exits 0,2,3`` -> (0, 2, 3); None -> None (all). Range and the final exit are checked
    against the model by the export."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        vals = tuple(int(p) for p in parts if p)
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated model exit indices, e.g. 0,3",
                                 param_hint="--exits") from None
    if not vals or any(v < 0 for v in vals):
        raise click.BadParameter(f"{text!r}: give comma-separated model exit indices >= 0, e.g. 0,3",
                                 param_hint="--exits")
    return vals


def read_json_file(path: str, option: str):
    """The JSON report at ``path``, or a bad-parameter error naming ``option``."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise click.BadParameter(f"not a JSON report ({e})", param_hint=option)


class ProgressBars:
    """tqdm bars on stderr, one per name, made on first use; nothing when not ``enabled`` (e.g.
    stderr is not a terminal). Use as a context manager, so that the bars close."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict = {}

    def ticker(self, name: str, unit: str = "it") -> Callable[[int, int], None]:
        """A ``(done, total)`` callback that moves bar ``name``."""
        def tick(done: int, total: int) -> None:
            self.update(name, done, total, unit)
        return tick

    def update(self, name: str, done: int, total: int, unit: str = "it", note: str | None = None):
        if not self.enabled:
            return
        if name not in self.bars:
            from tqdm import tqdm

            self.bars[name] = tqdm(total=total, desc=name, unit=unit, leave=False)
        bar = self.bars[name]
        if note is not None:
            bar.set_postfix_str(note)
        bar.update(done - bar.n)

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc) -> None:
        for b in self.bars.values():
            b.close()


def apply(options: Iterable[Callable]) -> Callable:
    """A decorator applying ``options`` (click option decorators) in the order listed."""
    options = list(options)

    def decorate(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return decorate


def interactive(progress: bool) -> bool:
    """Draw progress bars only when asked and stderr is a terminal."""
    return progress and not quiet_mode() and sys.stderr.isatty()

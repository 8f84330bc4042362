"""A quiet command line: a command prints its own progress and results, and what the libraries
underneath say goes to a log file.

The noise comes three ways, and each is caught where it starts:

- Python warnings (``FutureWarning`` from torch's pytree, ...) are routed into logging
  (:func:`logging.captureWarnings`) and written to the log file.
- Python loggers of other packages (torchao, onnxscript, absl) propagate to the root logger,
  which gets a handler that writes to the log file. torch attaches its own ``StreamHandler`` to
  ``sys.stderr`` when it is imported (the ``W1207 ... torch/onnx/...`` lines), so ``sys.stderr``
  becomes a thin proxy that sends what a ``logging.StreamHandler`` writes to the log file and
  everything else (click's messages, progress bars, tracebacks) to the terminal.
- Native code (TFLite's "Created TensorFlow Lite XNNPACK delegate", absl's C++ logging, torchao
  loading its CUDA libraries) writes to file descriptor 2 itself, so fd 2 is pointed at the log
  file for the command's duration, and the terminal is reached through a duplicate of it.

edgeexit's own log messages (logger ``edgeexit``) still reach the terminal (warnings and errors
only with ``-q``), and the root logger (pytest's ``caplog``), not the log file; an empty log file
is removed. ``-v`` captures nothing, nor does a command whose stderr is not the process's
file descriptor 2 (click's test runner). Errors are never
swallowed: the command's ``Error: ...`` line and any traceback are printed after everything is put
back, a crash in native code prints its traceback to the terminal (:mod:`faulthandler`), and a
command that fails names the log file.

The default log files live in ``$TMPDIR/edgeexit``; each command that opens one there removes the
oldest beyond :data:`KEEP_LOGS`, so a device that runs ``edgeexit run`` every minute does not fill
its disk with them (a ``--log-file`` elsewhere is the user's own and never removed).
"""

from __future__ import annotations

import faulthandler
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

FORMAT = "%(levelname)s %(name)s: %(message)s"
KEEP_LOGS = 50  # default log files kept in $TMPDIR/edgeexit, the newest
_EMIT = logging.StreamHandler.emit.__code__


def default_log_path(command: str | None) -> Path:
    """``$TMPDIR/edgeexit/<command>-<time>-<pid>.log``: never the working directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / "edgeexit" / f"{command or 'edgeexit'}-{stamp}-{os.getpid()}.log"


def prune_logs(directory: Path, keep: int = KEEP_LOGS) -> int:
    """Remove the oldest ``*.log`` files of ``directory`` beyond the newest ``keep`` (by
    modification time); return how many went. Files that vanish meanwhile (another command
    pruning at the same moment) or cannot be removed are skipped."""
    try:
        logs = [(e.stat().st_mtime_ns, e.path) for e in os.scandir(directory)
                if e.name.endswith(".log") and e.is_file(follow_symlinks=False)]
    except OSError:
        return 0
    removed = 0
    for _, path in sorted(logs, reverse=True)[keep:]:
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            pass
    return removed


def _is_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


class _Stderr(io.TextIOBase):
    """``sys.stderr`` while a command runs: a logging handler's writes go to the log file, all
    other writes to the terminal."""

    def __init__(self, terminal, log) -> None:
        super().__init__()
        self.terminal, self.log = terminal, log

    def write(self, text: str) -> int:
        caller = sys._getframe(1).f_code
        target = self.log if caller is _EMIT and self.log is not None else self.terminal
        if target is None or getattr(target, "closed", False):  # after the command: stderr again
            target = sys.__stderr__ if sys.stderr is self else sys.stderr
        return target.write(text)

    def flush(self) -> None:
        for s in (self.terminal, self.log):
            if s is not None and not getattr(s, "closed", False):
                s.flush()

    def isatty(self) -> bool:
        return bool(self.terminal is not None and self.terminal.isatty())

    def fileno(self) -> int:
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.terminal, "encoding", "utf-8")


class LibraryOutput:
    """Context manager around one command: see the module docstring.

    Args:
        command: the command's name (for the default log file name).
        verbose: capture nothing, log debug messages to stderr (``edgeexit -v``).
        quiet: edgeexit's own warnings and errors only, no closing line unless it failed.
        log_file: where the libraries' output goes (default: :func:`default_log_path`).
    """

    def __init__(self, command: str | None, *, verbose: bool = False, quiet: bool = False,
                 log_file: str | os.PathLike | None = None) -> None:
        self.command, self.verbose, self.quiet = command, verbose, quiet
        self.path = Path(log_file) if log_file else default_log_path(command)
        self._own_directory = not log_file  # $TMPDIR/edgeexit: old logs are pruned there
        self._log = self._terminal = self._stderr = self._saved_fd = None
        self._passive = False
        self._handlers: list[tuple[logging.Logger, logging.Handler]] = []

    def __enter__(self) -> LibraryOutput:
        own = logging.getLogger("edgeexit")
        if self.verbose or not _is_fd2(sys.stderr):
            # -v, or stderr is not the process's (click's test runner): log as the CLI always
            # did, to stderr, and capture nothing
            logging.basicConfig(level=logging.DEBUG if self.verbose else logging.WARNING,
                                format=FORMAT, stream=sys.stderr)
            own.setLevel(logging.DEBUG if self.verbose else
                         logging.WARNING if self.quiet else logging.INFO)
            self._passive = True  # nothing to undo
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._own_directory:
            prune_logs(self.path.parent, KEEP_LOGS - 1)  # room for this command's own
        self._log = open(self.path, "a", encoding="utf-8", errors="backslashreplace", buffering=1)
        self._stderr = sys.stderr
        self._terminal = self._redirect_fd2()
        sys.stderr = _Stderr(self._terminal, self._log)
        to_file = logging.StreamHandler(self._log)
        to_file.setFormatter(logging.Formatter("%(asctime)s " + FORMAT))
        to_file.addFilter(lambda record: not record.name.startswith("edgeexit"))
        to_terminal = logging.StreamHandler(self._terminal)
        to_terminal.setFormatter(logging.Formatter(FORMAT))
        to_terminal.setLevel(logging.WARNING if self.quiet else logging.INFO)
        root = logging.getLogger()
        self._root_level = root.level
        root.setLevel(logging.INFO)
        own.setLevel(logging.INFO)
        for logger, handler in ((root, to_file), (own, to_terminal)):
            logger.addHandler(handler)
            self._handlers.append((logger, handler))
        logging.captureWarnings(True)
        return self

    def details_to_log(self) -> None:
        """edgeexit's own INFO messages to the log file, not the terminal (warnings and errors
        still show): for a command that runs other commands' stages and prints its own summary
        of each (``edgeexit quickstart``). Nothing under -v or click's test runner."""
        if self._passive or self._log is None:
            return
        own = logging.getLogger("edgeexit")
        for logger, handler in self._handlers:
            if logger is own:
                handler.setLevel(logging.WARNING)
        to_file = logging.StreamHandler(self._log)
        to_file.setFormatter(logging.Formatter("%(asctime)s " + FORMAT))
        own.addHandler(to_file)
        self._handlers.append((own, to_file))

    def _redirect_fd2(self):
        """Point fd 2 at the log file; return the terminal, reached through a duplicate."""
        self._stderr.flush()
        self._saved_fd = os.dup(2)
        os.dup2(self._log.fileno(), 2)
        terminal = open(self._saved_fd, "w", buffering=1, closefd=False,
                        encoding=getattr(self._stderr, "encoding", None) or "utf-8",
                        errors="backslashreplace")
        faulthandler.enable(terminal)
        return terminal

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._passive:
            return False
        logging.captureWarnings(False)
        for logger, handler in self._handlers:
            logger.removeHandler(handler)
        root, own = logging.getLogger(), logging.getLogger("edgeexit")
        root.setLevel(self._root_level)
        own.setLevel(logging.WARNING if self.quiet else logging.INFO)  # as -v leaves it at DEBUG
        sys.stderr.flush()
        faulthandler.enable(sys.__stderr__) if sys.__stderr__ else faulthandler.disable()
        os.dup2(self._saved_fd, 2)
        self._terminal.close()
        os.close(self._saved_fd)
        sys.stderr = self._stderr
        self._log.close()
        self._close_note(failed=exc_type is not None and not (
            exc_type is SystemExit and exc is not None and exc.code in (0, None)))
        return False

    def _close_note(self, failed: bool) -> None:
        """Drop an empty log; otherwise name it, unless -q and all went well."""
        with self.path.open(encoding="utf-8", errors="replace") as f:
            lines = sum(1 for _ in f)
        if not lines:
            self.path.unlink(missing_ok=True)
            return
        if failed or not self.quiet:
            sys.stderr.write(f"(what the libraries said, {lines} lines: {self.path}; "
                             "edgeexit -v prints it here)\n")

"""Errors that carry a message meant for the user: what was wrong and what to do about it.

The CLI turns every :class:`EdgeExitError` into a one-line message and a non-zero exit status,
without a traceback. Library code raises them for bad input; anything else is a bug.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Exit codes of the ``edgeexit`` command."""

    OK = 0
    ERROR = 1  # bad input or configuration: the message says what to fix
    USAGE = 1  # a malformed command line: bad input like any other (one line, no usage block)
    MISMATCH = 3  # a verification ran and found a difference
    INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it


class EdgeExitError(Exception):
    """Base class of every error meant for the user."""


class DataError(EdgeExitError):
    """A data set or data file is missing, malformed, or holds values we refuse (NaN, Inf)."""


class ConfigError(EdgeExitError):
    """An unknown name (model, method, target) or an invalid option value."""


class CheckpointError(EdgeExitError):
    """A checkpoint file is missing, unreadable, or was written by an incompatible version."""


class RecipeError(ConfigError):
    """A calibration recipe (``calibration/*.toml``) is missing, malformed or cannot be filled."""

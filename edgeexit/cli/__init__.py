"""The ``edgeexit`` command line: each command parses, makes one library call, and prints.

One module per group of commands, imported when one of its commands is asked for
(:data:`COMMAND_MODULES`; ``edgeexit --help`` imports them all, ``edgeexit run`` only
:mod:`~edgeexit.cli.device`); :func:`load_all` registers every command on :data:`main` (the entry
point, ``edgeexit.cli:main``):

- :mod:`~edgeexit.cli.app`: the group, errors and exit codes (:class:`~edgeexit.errors.ExitStatus`),
  option groups in ``--help``, shared helpers; :mod:`~edgeexit.cli.options`: shared options;
  :mod:`~edgeexit.cli.formats`: the text of every result (``--json`` prints the result itself).
- :mod:`~edgeexit.cli.train`: ``train`` (``--config FILE.toml`` recipes).
- :mod:`~edgeexit.cli.inspect`: ``info``, ``data inspect|generate``, ``targets``.
- :mod:`~edgeexit.cli.export`: ``export``, ``calibrate``.
- :mod:`~edgeexit.cli.device`: ``run``, ``verify``, ``bench``, ``report``.
- :mod:`~edgeexit.cli.keys`: ``keygen``, ``sign``, ``install``, ``rollback``, ``status``.
- :mod:`~edgeexit.cli.robust`: ``evaluate``, ``compress``.
- :mod:`~edgeexit.cli.adapt`: ``adapt`` (patient adaptation).
- :mod:`~edgeexit.cli.quickstart`: ``quickstart``.

Nothing here imports torch or onnx at module level (a test checks it): the device side installs
only numpy and an inference engine, and ``edgeexit --help`` must work there.
"""

from __future__ import annotations

import importlib

from edgeexit.cli.app import main

COMMAND_MODULES = {
    "adapt": "edgeexit.cli.adapt",
    "bench": "edgeexit.cli.device", "report": "edgeexit.cli.device",
    "run": "edgeexit.cli.device", "verify": "edgeexit.cli.device",
    "calibrate": "edgeexit.cli.export", "export": "edgeexit.cli.export",
    "data": "edgeexit.cli.inspect", "info": "edgeexit.cli.inspect", "targets": "edgeexit.cli.inspect",
    "install": "edgeexit.cli.keys", "keygen": "edgeexit.cli.keys", "rollback": "edgeexit.cli.keys",
    "sign": "edgeexit.cli.keys", "status": "edgeexit.cli.keys",
    "quickstart": "edgeexit.cli.quickstart",
    "compress": "edgeexit.cli.robust", "evaluate": "edgeexit.cli.robust",
    "train": "edgeexit.cli.train",
}
"""Every top-level command and the module that registers it when imported (a test checks that
the modules register exactly these)."""

main.lazy_commands = COMMAND_MODULES


def load_all() -> None:
    """Import every command module, so that :data:`main`'s ``commands`` holds them all."""
    for module in sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(module)


__all__ = ["COMMAND_MODULES", "load_all", "main"]

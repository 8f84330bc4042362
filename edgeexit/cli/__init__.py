"""The ``edgeexit`` command line: each command parses, makes one library call, and prints.

One module per group of commands; importing this package registers them all on :data:`main`
(the entry point, ``edgeexit.cli:main``):

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

from edgeexit.cli import adapt, device, export, inspect, keys, quickstart, robust, train  # noqa: F401
from edgeexit.cli.app import main

__all__ = ["main"]

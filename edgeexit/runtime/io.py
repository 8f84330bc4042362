"""Reading input windows on the device: ``.npy``, ``.npz``, ``.csv`` or CSV text on stdin.

- ``.npy``: ``[N, C, L]`` or one window ``[C, L]``.
- ``.npz``: the array ``x`` (a data set written by ``edgeexit data generate``) or ``inputs``
  (a bundle's ``golden.npz``).
- ``.csv`` / ``-`` (stdin): one window per line, ``C * L`` comma-separated numbers, channel after
  channel (the signal channel first, then the context channels); ``#`` lines are skipped.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np

from edgeexit.errors import DataError


def _from_csv_text(text: str, source: str, shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape))
    rows = []
    for n, line in enumerate(io.StringIO(text), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            row = np.array([float(v) for v in line.split(",")], np.float32)
        except ValueError as e:
            raise DataError(f"{source} line {n}: not a list of numbers ({e})") from None
        if row.size != size:
            raise DataError(
                f"{source} line {n} has {row.size} values; a window of shape {list(shape)} needs {size} "
                "(channel after channel, comma-separated)"
            )
        rows.append(row.reshape(shape))
    if not rows:
        raise DataError(f"{source} holds no windows")
    return np.stack(rows)


def read_windows(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """Windows from ``path`` (``-`` = CSV text on stdin) as float32 ``[N, *shape]``."""
    shape = tuple(int(v) for v in shape)
    if str(path) == "-":
        return _from_csv_text(sys.stdin.read(), "stdin", shape)
    p = Path(path)
    if not p.is_file():
        raise DataError(f"input file not found: {p}")
    if p.suffix == ".npy":
        try:
            x = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise DataError(f"{p} is not a readable .npy file ({e})") from None
    elif p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            key = next((k for k in ("x", "inputs") if k in z.files), None)
            if key is None:
                raise DataError(f"{p} holds no array 'x' or 'inputs' (it has {', '.join(z.files)})")
            x = z[key]
    elif p.suffix == ".csv":
        return _from_csv_text(p.read_text(), str(p), shape)
    else:
        raise DataError(f"unsupported input file {p}: use .npy, .npz, .csv, or - for CSV on stdin")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{p} holds {x.dtype} values; windows must be floating point (mV)")
    if x.shape == shape:
        x = x[None]
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise DataError(f"{p} holds an array of shape {list(x.shape)}; the bundle takes [N, {', '.join(map(str, shape))}]")
    return np.ascontiguousarray(x, dtype=np.float32)

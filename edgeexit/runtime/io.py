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
import zipfile
from pathlib import Path

import numpy as np

from edgeexit.errors import DataError

_F32_MAX = float(np.finfo(np.float32).max)


def _from_csv_text(text: str, source: str, shape: tuple[int, ...],
                   errors: dict[int, str] | None) -> np.ndarray:
    size = int(np.prod(shape))
    rows = []
    for n, line in enumerate(io.StringIO(text), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        problem = None
        try:
            row64 = np.array([float(v) for v in line.split(",")], np.float64)
        except ValueError as e:
            problem = f"{source} line {n}: not a list of numbers ({str(e)[:80]})"
        else:
            big = np.abs(row64[np.isfinite(row64)])
            row = row64.astype(np.float32) if not big.size or big.max() <= _F32_MAX else None
            if row is None:
                problem = (f"{source} line {n} holds {big.max():.3g}, beyond float32's range "
                           f"(|x| <= {_F32_MAX:.3g}); no ECG window holds that")
            elif row.size != size:
                problem = (f"{source} line {n} has {row.size} values; a window of shape "
                           f"{list(shape)} needs {size} (channel after channel, comma-separated)")
        if problem is not None:
            if errors is None:
                raise DataError(problem)
            errors[len(rows)] = problem
            row = np.full(size, np.nan, np.float32)  # a placeholder keeps the window numbering
        rows.append(row.reshape(shape))
    if not rows:
        raise DataError(f"{source} holds no windows")
    return np.stack(rows)


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{p} is not UTF-8 text (byte {e.start}: {e.reason}); save the CSV as UTF-8 (plain "
            "numbers, comma-separated)"
        ) from None


def read_windows(path: str | os.PathLike, shape: tuple[int, ...],
                 errors: dict[int, str] | None = None) -> np.ndarray:
    """Windows from ``path`` (``-`` = CSV text on stdin) as float32 ``[N, *shape]``.

    Args:
        errors: a dict to collect the CSV lines that are not windows (window index -> message;
            that window is filled with NaN so the numbering holds); None: raise on the first.

    Raises:
        DataError: the file is missing, unreadable, of the wrong kind, or holds no windows.
    """
    shape = tuple(int(v) for v in shape)
    if str(path) == "-":
        return _from_csv_text(sys.stdin.read(), "stdin", shape, errors)
    p = Path(path)
    if p.is_dir():
        raise DataError(f"--input {p} is a directory; give a .npy, .npz or .csv file of windows "
                        "(a WFDB record streams with --stream)")
    if not p.is_file():
        raise DataError(f"input file not found: {p}")
    if p.suffix == ".npy":
        try:
            x = np.load(p, allow_pickle=False)
        except (ValueError, EOFError, OSError) as e:
            raise DataError(f"{p} is not a readable .npy file ({type(e).__name__}: {e or 'empty'}); "
                            "write it with numpy.save") from None
    elif p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                key = next((k for k in ("x", "inputs") if k in z.files), None)
                if key is None:
                    raise DataError(
                        f"{p} holds no array 'x' or 'inputs' (it has {', '.join(z.files)})")
                x = z[key]
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
            raise DataError(f"{p} is not a readable .npz file ({type(e).__name__}: {e}); write it "
                            "with numpy.savez or `edgeexit data generate`") from None
    elif p.suffix == ".csv":
        return _from_csv_text(_read_text(p), str(p), shape, errors)
    else:
        raise DataError(f"unsupported input file {p}: use .npy, .npz, .csv, or - for CSV on stdin")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{p} holds {x.dtype} values; windows must be floating point (mV)")
    if x.shape == shape:
        x = x[None]
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise DataError(f"{p} holds an array of shape {list(x.shape)}; the bundle takes [N, {', '.join(map(str, shape))}]")
    if len(x) == 0:
        raise DataError(f"{p} holds no windows (an array of shape {list(x.shape)})")
    return np.ascontiguousarray(x, dtype=np.float32)

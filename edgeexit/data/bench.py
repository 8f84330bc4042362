"""The windows a bundle is benchmarked on (``edgeexit bench``, the quick start): the data the
bundle records, another source cut the same way, or a file of windows."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from edgeexit.data import DataSpec, load_source, load_split
from edgeexit.errors import DataError
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.io import read_windows


def bench_data(engine: Engine, source: str | None = None, split: str = "test",
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """The windows ``edgeexit bench`` runs: ``(x, y or None, description)``.

    Args:
        engine: the bundle's engine (its manifest records the data the model was trained on).
        source: None = the ``split`` side of the data recorded in the bundle; ``synthetic`` or a
            WFDB directory (that side of it, cut as recorded); an ``.npz``/``.csv`` data set (all
            of it); an ``.npy`` of windows (no labels).
        split: ``test`` or ``train`` side of a synthetic/WFDB source.
        limit: a seeded random sample of this many windows (None: all).
    """
    if source is not None and source.endswith(".npy"):
        x, y, desc = read_windows(source, engine.input_shape), None, {"source": source}
    else:
        recorded = engine.manifest.provenance.data
        spec = DataSpec.from_dict(recorded) if recorded else None
        if source is None:
            if spec is None:
                raise DataError("the bundle records no data; give --data")
            ds = load_split(spec, split)
        elif source == "synthetic" or os.path.isdir(source):
            ds = load_split(dataclasses.replace(spec or DataSpec(), source=source, test_source=None), split)
        else:
            ds = load_source(source)
        if tuple(ds.classes) != tuple(engine.classes):
            raise DataError(f"data classes {list(ds.classes)} differ from the bundle's {list(engine.classes)}")
        x, y = ds.x.astype(np.float32), ds.y
        whole_file = source is not None and source.endswith((".npz", ".csv"))
        desc = {"source": ds.source, "split": None if whole_file else split, "beats": len(ds)}
    if limit is not None and limit < len(x):
        idx = np.sort(np.random.default_rng(0).choice(len(x), size=limit, replace=False))
        x, y = x[idx], None if y is None else y[idx]
        desc["limit"] = limit
    return np.ascontiguousarray(x), y, desc

"""The labelled beats a deployed bundle's exit thresholds are recalibrated on (``edgeexit
calibrate``): the user's own data, or cross-fitted answers for the training records.

Either way the result is a :class:`Labelled` set that :func:`edgeexit.calibrate.calibrate_bundle`
takes: windows to run through the bundle's own files, or every exit's probabilities computed
elsewhere (models that never saw the record).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from edgeexit.data import BeatDataset, DataSpec, load_source, load_split
from edgeexit.errors import DataError


@dataclasses.dataclass(frozen=True)
class Labelled:
    """Labelled beats to calibrate on.

    Attributes:
        y: class index per beat (the bundle's classes).
        groups: record id per beat (the bootstrap over records), or None.
        source: where they came from, as recorded in the manifest.
        x: the windows ``[N, C, L]`` (float32, mV), run through the bundle; None with ``probs``.
        probs: per deployed exit, the softmax ``[N, K]`` computed elsewhere; None with ``x``.
        provenance: recorded with the calibration (e.g. the cross-fit's folds).
    """

    y: np.ndarray
    groups: np.ndarray | None
    source: str
    x: np.ndarray | None = None
    probs: list[np.ndarray] | None = None
    provenance: dict | None = None


def labelled_data(manifest, source: str, records: list[str] | None = None) -> Labelled:
    """The beats of ``source`` (``synthetic``: new simulated patients; a WFDB directory, with
    ``records``; an ``.npz``/``.csv`` data set), cut as the bundle's model was trained.

    Raises:
        DataError: the data is the model's own training and test data (without ``records``), its
            classes differ from the bundle's, or ``records`` is given for a file.
    """
    ds = _load(manifest, source, records)
    if tuple(ds.classes) != tuple(manifest.classes):
        raise DataError(f"data classes {list(ds.classes)} differ from the bundle's "
                        f"{list(manifest.classes)}")
    return Labelled(y=ds.y, groups=ds.groups, source=ds.source, x=ds.x.astype(np.float32))


def _load(manifest, source: str, records: list[str] | None) -> BeatDataset:
    recorded = manifest.provenance.data
    spec = DataSpec.from_dict(recorded) if recorded else DataSpec()
    if source == "synthetic":
        return load_split(dataclasses.replace(spec, source="synthetic", test_source=None), "calibration")
    if os.path.isdir(source):
        from edgeexit.data.mitbih import load_mitbih

        if records is None and recorded and os.path.realpath(recorded.get("source", "")) == os.path.realpath(source):
            raise DataError(
                f"{source} is the data this model was trained and tested on: calibrating on all of "
                "it would use training and test records; give --records with records training "
                "never saw (e.g. the validation records listed in the bundle's provenance)"
            )
        return load_mitbih(source, records, window=spec.window, rr_context=spec.rr_context,
                           morph_context=spec.morph_context)
    if records is not None:
        raise DataError("--records applies to a WFDB directory only")
    return load_source(source)


def cross_fitted(manifest, folds: int, checkpoint: str | os.PathLike, threads: int | None = None,
                 progress: Callable[[str], None] | None = None) -> Labelled:
    """Out-of-fold answers for every training record: ``folds`` models trained with the
    checkpoint's recipe, each without one group of records (:func:`edgeexit.crossfit.cross_fit`),
    kept for the exits the bundle deploys."""
    from edgeexit.crossfit import cross_fit

    cf = cross_fit(checkpoint, folds, threads=threads, progress=progress)
    return Labelled(y=cf.y, groups=cf.groups, source=cf.source,
                    probs=[cf.probs[k] for k in manifest.exits],
                    provenance={"cross_fit": cf.describe(), "checkpoint": str(checkpoint)})

"""Classifying a file of windows with an engine: one answer (or one refusal) per window.

What ``edgeexit run --input`` does between reading the windows and printing them: a window the
bundle cannot answer (NaN/Inf, far outside the training range, a CSV line that is not a window)
gets its own error and every other window is answered, one by one or as one batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from edgeexit.runtime.engine import Engine, InputError

NOT_FINITE = "the model's answer is not finite"


class WindowAnswers:
    """Iterate to classify ``x`` with ``engine``: yields, in window order, ``{"index": i, **answer}``
    (:meth:`ExitResult.to_dict`; in a batch without ``segment_us``) or ``{"index": i, "error": why}``.

    Args:
        engine: the :class:`~edgeexit.runtime.engine.Engine`.
        x: the windows ``[N, C, L]``.
        problems: ``{index: why}`` of windows already known to be bad (e.g. unreadable CSV lines);
            filled in with the windows the engine refuses.
        batch: classify every good window as one batch (each segment runs only on the undecided
            ones); the bad windows are set aside first, so that one cannot refuse the batch.
        fail_fast: stop after the first refused window (in a batch, answer none after it).

    Attributes:
        refused: the indices answered with an error, filled while iterating.
        segments: with ``batch``, after iterating: ``{"segment_us": [...], "segment_samples":
            [...]}``, the batch's per-segment totals (None when nothing ran).
    """

    def __init__(self, engine: Engine, x: np.ndarray, problems: dict[int, str] | None = None, *,
                 batch: bool = False, fail_fast: bool = False) -> None:
        self.engine, self.x, self.batch, self.fail_fast = engine, x, batch, fail_fast
        self.problems = {} if problems is None else problems
        self.refused: list[int] = []
        self.segments: dict | None = None

    def __iter__(self) -> Iterator[dict]:
        answers = self._predict_batch() if self.batch else {}
        for i in range(len(self.x)):
            if i not in self.problems and not self.batch:
                try:
                    answer = self.engine.predict(self.x[i]).to_dict()
                except InputError as e:
                    self.problems[i] = str(e)
            if i in self.problems:
                self.refused.append(i)
                yield {"index": i, "error": self.problems[i]}
                if self.fail_fast:
                    return
                continue
            if self.batch:
                answer = answers[i]
            if not _finite(answer):  # never hand out NaN as an answer
                self.refused.append(i)
                yield {"index": i, "error": NOT_FINITE}
                continue
            yield {"index": i, **answer}

    def _predict_batch(self) -> dict[int, dict]:
        """Every good window's answer, from one batch (the bad ones set aside first)."""
        e, x = self.engine, self.x
        for i in range(len(x)):
            if i not in self.problems:
                why = e.input_problem(x[i])
                if why is not None:
                    self.problems[i] = why
        good = np.array([i for i in range(len(x)) if i not in self.problems], np.int64)
        if self.fail_fast and self.problems:
            good = good[good < min(self.problems)]
        if not len(good):
            return {}
        r = e.predict_batch(x[good])
        self.segments = {"segment_us": [round(t / 1e3, 1) for t in r.segment_ns],
                         "segment_samples": list(r.segment_samples)}
        return {int(i): {"label": e.classes[int(r.labels[j])], "label_index": int(r.labels[j]),
                         "exit": int(r.exit_index[j]),
                         "probs": [round(float(p), 6) for p in r.probs[j]]}
                for j, i in enumerate(good)}


def _finite(answer: dict) -> bool:
    return all(math.isfinite(v) for key in ("probs", "segment_us") for v in answer.get(key, ()))

"""Per-segment precision (``edgeexit export --precision auto``): int8 only where it pays.

int8 is not always faster (a Cortex-A72 has no dot-product instructions; onnxruntime's int8 with
signed activations ran 1.07x fp32 here; LiteRT's int8 segment 0 was slower than fp32) and not
always accurate enough, so each segment is measured: its fp32 and its int8 file, batch 1,
timed alternately on the machine the export runs on (or taken from ``edgeexit bench --json``
reports made on the device), and its exit's top-1 agreement with PyTorch on validation beats,
with the segments before it as chosen. :func:`choose_precision` is the rule, a pure function.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeexit.errors import ConfigError
from edgeexit.runtime.kinds import FORMAT_BACKEND, Format, Precision
from edgeexit.runtime.manifest import PrecisionChoice


@dataclasses.dataclass(frozen=True)
class PrecisionRule:
    """Keep int8 for a segment only if both hold.

    Attributes:
        margin_points: int8's top-1 agreement with PyTorch may fall at most this many points
            below the fp32 file's agreement (same inputs, same beats).
        min_speedup: int8's median latency must be below fp32's divided by this (1.0: faster).
    """

    margin_points: float = 1.0
    min_speedup: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.margin_points < 100:
            raise ConfigError(f"the int8 agreement margin must lie in [0, 100) points, got "
                              f"{self.margin_points}")
        if self.min_speedup <= 0:
            raise ConfigError(f"min_speedup must be > 0, got {self.min_speedup}")

    def describe(self) -> str:
        return (f"int8 where its median batch-1 latency < fp32's / {self.min_speedup:g} and its "
                f"top-1 agreement with PyTorch >= fp32's - {self.margin_points:g} points")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "rule": self.describe()}


def choose_precision(fmt: str, fp32_us: float, int8_us: float, fp32_agreement: float,
                     int8_agreement: float, rule: PrecisionRule = PrecisionRule(),
                     timing: str = "") -> PrecisionChoice:
    """The precision one segment keeps under ``rule``, with the reason.

    Example:
        >>> choose_precision("tflite", 11.4, 14.3, 1.0, 0.999).precision
        'fp32'
    """
    faster = int8_us < fp32_us / rule.min_speedup
    close = int8_agreement >= fp32_agreement - rule.margin_points / 100.0 - 1e-12
    if faster and close:
        why = "int8 is faster and agrees within the margin"
    elif not faster and not close:
        why = "int8 is not faster and falls outside the agreement margin"
    elif not faster:
        why = "int8 is not faster"
    else:
        why = "int8 falls outside the agreement margin"
    return PrecisionChoice(
        format=fmt, precision=(Precision.INT8 if faster and close else Precision.FP32).value,
        fp32_us=round(float(fp32_us), 3), int8_us=round(float(int8_us), 3),
        fp32_agreement=round(float(fp32_agreement), 6),
        int8_agreement=round(float(int8_agreement), 6), reason=why, timing=timing,
    )


def time_pair(fp32_session, int8_session, x: np.ndarray, seconds: float = 0.25,
              warmup: int = 20) -> tuple[float, float]:
    """Median batch-1 microseconds of two sessions, timed alternately on the same window ``x``.

    Runs until ``seconds`` have passed (at least 50 pairs), so noise of the host hits both."""
    x = np.ascontiguousarray(x[:1])
    for _ in range(warmup):
        fp32_session.run(x)
        int8_session.run(x)
    clock = time.perf_counter_ns
    a: list[int] = []
    b: list[int] = []
    end = time.perf_counter() + seconds
    while len(a) < 50 or time.perf_counter() < end:
        first, second, ta, tb = ((fp32_session, int8_session, a, b) if len(a) % 2 == 0
                                 else (int8_session, fp32_session, b, a))
        t0 = clock()
        first.run(x)
        t1 = clock()
        second.run(x)
        t2 = clock()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return float(np.median(a)) / 1e3, float(np.median(b)) / 1e3


@dataclasses.dataclass(frozen=True)
class BenchTimings:
    """Per-segment median latencies read from ``edgeexit bench --json`` reports.

    ``us[(format, precision)]`` holds one value per segment; ``sources`` the files read."""

    us: dict
    sources: tuple[str, ...]

    def get(self, fmt: str, precision: str, segment: int) -> float | None:
        vals = self.us.get((fmt, precision))
        return None if vals is None else vals[segment]


def read_bench_timings(paths: Sequence[str | os.PathLike], num_segments: int,
                       exits: Sequence[int]) -> BenchTimings:
    """Per-segment p50 latencies from bench reports (one per format and precision, e.g. the
    bench of an fp32 and of an int8 bundle on the device; a mixed bundle's report counts for the
    precision of each of its segments).

    Raises:
        ConfigError: a file that is not a bench report, or one made for other segments.
    """
    us: dict = {}
    for p in paths:
        path = Path(p)
        try:
            r = json.loads(path.read_text())
            segs = [float(s["p50"]) for s in r["latency_us"]["segments"]]
            backend = r["backend"]
            precs = r.get("segment_precisions") or [r["precision"]] * len(segs)
        except FileNotFoundError:
            raise ConfigError(f"timings file {path} not found; give `edgeexit bench --json` "
                              "reports") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not an `edgeexit bench --json` report ({type(e).__name__}: "
                              f"{e}); bench the fp32 and the int8 bundle on the device with --json "
                              "and give those files") from e
        if backend not in FORMAT_BACKEND.values():
            raise ConfigError(f"{path}: unknown backend {backend!r} in the bench report")
        got = r.get("model_exits") or list(range(len(segs)))
        if len(segs) != num_segments or list(got) != list(exits):
            raise ConfigError(f"{path} times segments of model exits {list(got)}, this export "
                              f"deploys {list(exits)}: bench a bundle exported with the same --exits")
        for k, (prec, v) in enumerate(zip(precs, segs)):
            us.setdefault((Format.of_backend(backend), prec), [None] * num_segments)[k] = v
    return BenchTimings(us, tuple(str(p) for p in paths))

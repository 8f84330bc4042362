"""``edgeexit bench``: accuracy, per-segment latency and early-exit savings, measured side by side.

Every input window is classified (batch 1, as on a device that classifies beats as they arrive)
by three paths, block by block: each path runs over a block of windows, then the next path over
the same block, in an order that rotates from block to block, so that machine noise hits all three
alike and none gains from running second, while each keeps its own data warm in the caches within a
block, as on a device that runs only one of them:

- ``policy``: :meth:`Engine.predict` with the bundle's exit policy (real early termination);
- ``all_exits``: every segment runs (the segmented path with no early exit);
- ``monolithic``: the whole model as one graph (the reference a user would deploy without exits).

Latencies are wall-clock (``time.perf_counter_ns``) after ``warmup`` untimed runs of each path.
Ratios of means compare the paths measured in the same run on the same samples. Energy is an
estimate from the target's power model (idle watts + active watts per core x threads x latency),
never a measurement, and is labelled so.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np

from edgeexit.errors import EdgeExitError
from edgeexit.runtime.engine import Engine

log = logging.getLogger(__name__)


def _stats_us(ns: np.ndarray) -> dict:
    us = np.asarray(ns, np.float64) / 1e3
    return {
        "mean": round(float(us.mean()), 2),
        "p50": round(float(np.percentile(us, 50)), 2),
        "p95": round(float(np.percentile(us, 95)), 2),
        "p99": round(float(np.percentile(us, 99)), 2),
    }


@dataclasses.dataclass(frozen=True)
class BenchReport:
    """Everything ``edgeexit bench`` prints (``to_dict`` is the JSON form)."""

    data: dict

    def to_dict(self) -> dict:
        return self.data


def bench_engine(
    engine: Engine,
    x: np.ndarray,
    y: np.ndarray | None = None,
    warmup: int = 50,
    progress: Callable[[int, int], None] | None = None,
    block: int = 32,
) -> BenchReport:
    """Benchmark ``engine`` (loaded with ``load_monolithic=True``) on windows ``x [N, ...]``.

    Args:
        engine: the bundle's engine, with its policy and the monolithic reference graph.
        x: input windows, float32; ``y``: their labels (class indices) for accuracy, or None.
        warmup: untimed runs of every path before timing.
        progress: called with ``(done, total)`` after every block.
        block: windows per block: each path classifies a block, then the next path the same
            block, in an order that rotates from block to block.
    """
    if engine.monolithic is None:
        raise EdgeExitError("bench needs the bundle's monolithic graph (re-export without --no-monolithic)")
    x = engine.check_input(np.asarray(x), batch=True)
    n, m = len(x), engine.manifest.num_exits
    for i in range(warmup):
        xi = x[i % n]
        engine.predict(xi)
        engine.run_all(xi[None])
        engine.run_monolithic(xi[None])

    t_policy = np.zeros(n, np.int64)
    t_all = np.zeros(n, np.int64)
    t_mono = np.zeros(n, np.int64)
    seg_ns = np.zeros((n, m), np.int64)
    exits = np.zeros(n, np.int64)
    pred_policy = np.zeros(n, np.int64)
    pred_exit = np.zeros((n, m), np.int64)
    pred_mono = np.zeros(n, np.int64)
    clock = time.perf_counter_ns

    def run_policy(i):
        t0 = clock()
        r = engine.predict(x[i])
        t_policy[i] = clock() - t0
        exits[i], pred_policy[i] = r.exit_index, r.label

    def run_all(i):
        xb = x[i : i + 1]
        t0 = clock()
        logits, seg = engine.run_all(xb)
        t_all[i] = clock() - t0
        seg_ns[i] = seg
        pred_exit[i] = [int(z[0].argmax()) for z in logits]

    def run_mono(i):
        xb = x[i : i + 1]
        t0 = clock()
        z = engine.run_monolithic(xb)
        t_mono[i] = clock() - t0
        pred_mono[i] = int(z[0].argmax())

    paths = (run_policy, run_all, run_mono)
    for b, start in enumerate(range(0, n, block)):
        idx = range(start, min(start + block, n))
        for j in range(3):
            path = paths[(b + j) % 3]
            for i in idx:
                path(i)
        if progress:
            progress(idx[-1] + 1, n)

    mono_mean = float(t_mono.mean())
    hist = np.bincount(exits, minlength=m)
    macs = [s.macs for s in engine.manifest.segments]
    cum_macs = np.cumsum(macs)
    report: dict = {
        "samples": n,
        "backend": engine.backend,
        "threads": engine.threads,
        "precision": engine.manifest.precision,
        # per segment: what each file run here is (a --precision auto bundle mixes them)
        "segment_precisions": _segment_precisions(engine),
        "policy": engine.policy.describe(),
        "warmup": warmup,
        "block": block,
        "latency_us": {
            "policy": _stats_us(t_policy),
            "all_exits": _stats_us(t_all),
            "monolithic": _stats_us(t_mono),
            "segments": [_stats_us(seg_ns[:, k]) for k in range(m)],
        },
        "ratios": {
            "all_exits_vs_monolithic": round(float(t_all.mean()) / mono_mean, 4),
            "policy_vs_monolithic": round(float(t_policy.mean()) / mono_mean, 4),
            "policy_vs_all_exits": round(float(t_policy.mean()) / float(t_all.mean()), 4),
            "all_exits_vs_monolithic_p50": round(float(np.median(t_all)) / float(np.median(t_mono)), 4),
        },
        "model_exits": list(engine.manifest.exits),  # the model exit each segment answers
        "exit_histogram": [int(v) for v in hist],
        "exit_fractions": [round(float(v) / n, 6) for v in hist],
        "expected_macs": int(round(float(cum_macs[exits].mean()))),
        "all_exits_macs": int(cum_macs[-1]),
        "monolithic_macs": int(engine.manifest.monolithic.macs) if engine.manifest.monolithic else None,
    }
    power = engine.manifest.target.get("power") or {}
    if "active_w_per_core" in power:
        active = float(power["active_w_per_core"]) * engine.threads
        idle = float(power.get("idle_w", 0.0))
        report["energy_estimate_mj"] = {
            "kind": "estimate from the target's power model, not a measurement",
            "source": power.get("source"),
            "above_idle": {k: round(active * float(t.mean()) * 1e-6, 6)
                           for k, t in (("policy", t_policy), ("all_exits", t_all), ("monolithic", t_mono))},
            "gross": {k: round((active + idle) * float(t.mean()) * 1e-6, 6)
                      for k, t in (("policy", t_policy), ("all_exits", t_all), ("monolithic", t_mono))},
        }
    if y is not None:
        y = np.asarray(y)
        acc = {
            "policy": float((pred_policy == y).mean()),
            "final_exit": float((pred_exit[:, -1] == y).mean()),
            "monolithic": float((pred_mono == y).mean()),
            "exits": [float((pred_exit[:, k] == y).mean()) for k in range(m)],
        }
        acc["policy_loss_points"] = round(100 * (acc["final_exit"] - acc["policy"]), 3)
        report["accuracy"] = {k: (round(v, 6) if isinstance(v, float) else [round(a, 6) for a in v])
                              if k != "policy_loss_points" else v for k, v in acc.items()}
    log.info("bench: %s", report["ratios"])
    return BenchReport(report)


def _segment_precisions(engine: Engine) -> list[str]:
    from edgeexit.runtime.backends import get_backend

    fmt = get_backend(engine.backend).file_format
    return [s.artifact(fmt).precision for s in engine.manifest.segments]


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
    import os

    from edgeexit.errors import DataError

    if source is not None and source.endswith(".npy"):
        from edgeexit.runtime.io import read_windows

        x, y, desc = read_windows(source, engine.input_shape), None, {"source": source}
    else:
        from edgeexit.data import DataSpec, load_source, load_split

        recorded = engine.manifest.provenance.get("data")
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

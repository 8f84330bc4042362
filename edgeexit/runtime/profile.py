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
Ratios of means compare the paths measured in the same run on the same samples.

Energy (:func:`measure_energy`, with a meter of :mod:`edgeexit.runtime.energy`) is a second phase:
no meter resolves one inference of tens of microseconds, so each path runs on its own for a
metered window (``seconds`` in all, split over ``rounds`` in an order that rotates from round to
round): the policy, the monolithic model, and every prefix of the chain (segments 0..k, with the
engine's own input check and decision, as a ``fixed`` exit k): per-segment energy is the
difference of neighbouring prefixes. With a real meter, idle power is measured in the same run (a
metered sleep) and energy above idle is ``gross - idle W x seconds``; the CPU-time estimate takes
the target preset's idle watts and says so. Every figure is labelled measured or estimated.

The report also holds a threshold sweep (:func:`threshold_sweep`): accuracy and mean latency /
energy as one shared threshold varies, from every exit's answers and the measured per-segment
costs, for the accuracy-vs-cost plot of ``edgeexit bench --report``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np

from edgeexit.errors import ConfigError, EdgeExitError
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.kinds import CALIBRATED_POLICIES, PolicyName
from edgeexit.runtime.policy import Fixed, ensemble_probs, exit_scores, softmax

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


SEGMENT_QUANTILES = (1, 5, 25, 50, 75, 95, 99)  # per-segment latency distribution in the report


def bench_engine(
    engine: Engine,
    x: np.ndarray,
    y: np.ndarray | None = None,
    warmup: int = 50,
    progress: Callable[[int, int], None] | None = None,
    block: int = 32,
    meter=None,
    energy_seconds: float = 0.5,
    energy_rounds: int = 3,
    energy_progress: Callable[[int, int], None] | None = None,
) -> BenchReport:
    """Benchmark ``engine`` (loaded with ``load_monolithic=True``) on windows ``x [N, ...]``.

    Args:
        engine: the bundle's engine, with its policy and the monolithic reference graph.
        x: input windows, float32; ``y``: their labels (class indices) for accuracy, or None.
        warmup: untimed runs of every path before timing.
        progress: called with ``(done, total)`` after every block.
        block: windows per block: each path classifies a block, then the next path the same
            block, in an order that rotates from block to block.
        meter: an energy meter (:func:`edgeexit.runtime.energy.make_meter`), or None: no energy
            phase. ``energy_seconds``, ``energy_rounds``, ``energy_progress``: see
            :func:`measure_energy`.
    """
    if engine.monolithic is None:
        raise EdgeExitError("bench needs the bundle's monolithic graph (re-export without --no-monolithic)")
    x = engine.check_input(np.asarray(x), batch=True)
    n = len(x)
    for i in range(warmup):
        xi = x[i % n]
        engine.predict(xi)
        engine.run_all(xi[None])
        engine.run_monolithic(xi[None])
    timed = _time_paths(engine, x, block, progress)
    report = _latency_report(engine, timed, warmup, block)
    if meter is not None:
        report["energy"] = measure_energy(engine, x, meter, energy_seconds, energy_rounds,
                                          progress=energy_progress)
    if y is not None:
        y = np.asarray(y)
        report["accuracy"] = _accuracy_report(timed, y)
        report["threshold_sweep"] = threshold_sweep(
            engine, list(timed.probs_exit.transpose(1, 0, 2)), y,
            [float(v) for v in timed.seg_ns.mean(axis=0) / 1e3],
            _per_segment_energy(report.get("energy")))
    log.info("bench: %s", report["ratios"])
    return BenchReport(report)


@dataclasses.dataclass
class _Timed:
    """What the three paths measured and answered on every window (see :func:`_time_paths`)."""

    t_policy: np.ndarray  # [N] ns
    t_all: np.ndarray  # [N] ns
    t_mono: np.ndarray  # [N] ns
    seg_ns: np.ndarray  # [N, M] ns, the all-exits path's segments
    exits: np.ndarray  # [N] exit the policy took
    pred_policy: np.ndarray  # [N]
    probs_exit: np.ndarray  # [N, M, K] softmax of every exit
    pred_mono: np.ndarray  # [N]


def _time_paths(engine: Engine, x: np.ndarray, block: int, progress) -> _Timed:
    """Every window through the policy, all exits and the monolithic graph, block by block in a
    rotating order (the module docstring), each call timed alone."""
    n, m = len(x), engine.manifest.num_exits
    t_policy = np.zeros(n, np.int64)
    t_all = np.zeros(n, np.int64)
    t_mono = np.zeros(n, np.int64)
    seg_ns = np.zeros((n, m), np.int64)
    exits = np.zeros(n, np.int64)
    pred_policy = np.zeros(n, np.int64)
    probs_exit = np.zeros((n, m, len(engine.classes)), np.float32)
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
        for k, z in enumerate(logits):
            probs_exit[i, k] = z[0]

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
    return _Timed(t_policy, t_all, t_mono, seg_ns, exits, pred_policy,
                  softmax(probs_exit.astype(np.float64)), pred_mono)


def _latency_report(engine: Engine, t: _Timed, warmup: int, block: int) -> dict:
    """The report's host, bundle, latency, ratio, exit and MACs fields."""
    n, m = len(t.exits), engine.manifest.num_exits
    mono_mean = float(t.t_mono.mean())
    machine = machine_info()
    hist = np.bincount(t.exits, minlength=m)
    macs = [s.macs for s in engine.manifest.segments]
    cum_macs = np.cumsum(macs)
    seg_ns = t.seg_ns
    return {
        "host": {"cpu": machine["cpu"], "machine": machine["machine"], "cores": machine["cpus"]},
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
            "policy": _stats_us(t.t_policy),
            "all_exits": _stats_us(t.t_all),
            "monolithic": _stats_us(t.t_mono),
            "segments": [_stats_us(seg_ns[:, k]) for k in range(m)],
        },
        "segment_quantiles_us": {
            "q": list(SEGMENT_QUANTILES),
            "segments": [[round(float(v), 2) for v in np.percentile(seg_ns[:, k] / 1e3, SEGMENT_QUANTILES)]
                         for k in range(m)],
        },
        "ratios": {
            "all_exits_vs_monolithic": round(float(t.t_all.mean()) / mono_mean, 4),
            "policy_vs_monolithic": round(float(t.t_policy.mean()) / mono_mean, 4),
            "policy_vs_all_exits": round(float(t.t_policy.mean()) / float(t.t_all.mean()), 4),
            "all_exits_vs_monolithic_p50": round(float(np.median(t.t_all)) / float(np.median(t.t_mono)), 4),
        },
        "model_exits": list(engine.manifest.exits),  # the model exit each segment answers
        "exit_histogram": [int(v) for v in hist],
        "exit_fractions": [round(float(v) / n, 6) for v in hist],
        "expected_macs": int(round(float(cum_macs[t.exits].mean()))),
        "all_exits_macs": int(cum_macs[-1]),
        "monolithic_macs": int(engine.manifest.monolithic.macs) if engine.manifest.monolithic else None,
    }


def _accuracy_report(t: _Timed, y: np.ndarray) -> dict:
    """Accuracy of the policy, the final exit, the monolithic graph and every exit."""
    pred_exit = t.probs_exit.argmax(axis=-1)
    acc = {
        "policy": float((t.pred_policy == y).mean()),
        "final_exit": float((pred_exit[:, -1] == y).mean()),
        "monolithic": float((t.pred_mono == y).mean()),
        "exits": [float((pred_exit[:, k] == y).mean()) for k in range(pred_exit.shape[1])],
    }
    acc["policy_loss_points"] = round(100 * (acc["final_exit"] - acc["policy"]), 3)
    return {k: (round(v, 6) if isinstance(v, float) else [round(a, 6) for a in v])
            if k != "policy_loss_points" else v for k, v in acc.items()}


def _per_segment_energy(energy: dict | None) -> list[float] | None:
    if not energy or "per_segment_mj" not in energy:
        return None
    return [float(v) for v in energy["per_segment_mj"]["above_idle"]]


def threshold_sweep(engine: Engine, probs_per_exit: list[np.ndarray], y: np.ndarray,
                    segment_us: list[float], segment_mj: list[float] | None = None,
                    points: int = 41) -> dict:
    """Accuracy, exit fractions and mean latency / energy of the bundle's policy as one shared
    threshold varies (every early exit gets the same one), with costs summed from the measured
    per-segment means: the data of the accuracy-vs-cost plot. Nothing is fitted to ``y``. The
    last point (threshold None) exits early nowhere.

    ``max_prob``/``ensemble`` (and ``fixed`` and ``budget``, swept as ``max_prob``): the
    threshold is a probability from 1/K to 1; ``entropy``: nats, from log K down to 0.
    """
    name = engine.policy.name
    kind = name if name in CALIBRATED_POLICIES else PolicyName.MAX_PROB
    weights = getattr(engine.policy, "weights", None)
    answers = ensemble_probs(probs_per_exit, weights) if kind == "ensemble" else probs_per_exit
    scores = np.stack(exit_scores(kind, probs_per_exit, weights), axis=1)
    correct = np.stack([a.argmax(axis=-1) == y for a in answers], axis=1)
    n, m = scores.shape
    k_classes = probs_per_exit[0].shape[-1]
    # the last point is "no early exit": a saturated softmax reaches max 1.0 (entropy 0) exactly
    if kind == "entropy":
        grid = -np.linspace(np.log(k_classes), 0.0, points)  # scores are negative entropies
        grid = np.append(grid, np.nextafter(0.0, 1.0))
    else:
        grid = np.append(np.linspace(1.0 / k_classes, 1.0, points), np.nextafter(1.0, 2.0))
    cum_us = np.cumsum(segment_us)
    cum_mj = None if segment_mj is None else np.cumsum(segment_mj)
    rows = []
    for t in grid:
        hit = np.concatenate([scores[:, :-1] >= t, np.ones((n, 1), bool)], axis=1)
        idx = hit.argmax(axis=1)
        never = t == grid[-1]
        row = {"threshold": None if never else round(float(-t if kind == "entropy" else t), 6),
               "accuracy": round(float(correct[np.arange(n), idx].mean()), 6),
               "latency_us": round(float(cum_us[idx].mean()), 3),
               "exit_fractions": [round(float(f), 6) for f in np.bincount(idx, minlength=m) / n]}
        if cum_mj is not None:
            row["energy_mj"] = round(float(cum_mj[idx].mean()), 8)
        if never:
            row["note"] = "no early exit"
        rows.append(row)
    return {"policy": kind, "shared_threshold": True,
            "cost": "sums of the measured per-segment means (the engine's time between segments "
                    "is in them; energy: above idle)",
            "points": rows}


def measure_energy(engine: Engine, x: np.ndarray, meter, seconds: float = 0.5, rounds: int = 3,
                   idle_seconds: float | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Energy per inference of the policy, the monolithic model and every prefix of the chain.

    Args:
        engine: loaded with the monolithic graph.
        x: windows, cycled through (in one seeded shuffle) for as long as each path's metered
            time lasts; ``windows_covered`` in the result says how many each path saw.
        meter: an :class:`edgeexit.runtime.energy.Meter`.
        seconds: metered time per path, split over ``rounds``.
        rounds: the paths run in an order that rotates from round to round.
        idle_seconds: a real meter's metered sleep for idle power (default ``seconds / rounds``,
            at least 0.2 s).
        progress: called with ``(done, total)`` metered windows.

    Returns the report's ``energy`` section (mJ per inference, gross and above idle). A meter that
    fails mid-run (:class:`edgeexit.runtime.energy.MeterError`) gives ``{"error": ...}`` and a
    warning: the latency results are kept.
    """
    from edgeexit.runtime.energy import MeterError

    if not seconds > 0 or rounds < 1:
        raise EdgeExitError(f"energy seconds must be > 0 and rounds >= 1, got {seconds}, {rounds}")
    m = engine.manifest.num_exits
    own_policy = engine.policy
    # name -> (the policy the engine runs, or None for the monolithic graph)
    paths = {"policy": own_policy, "monolithic": None}
    paths.update({f"prefix_{k}": Fixed(m, k) for k in range(m)})
    runs = _MeteredRuns(engine, x, meter, list(paths), progress,
                        rounds * len(paths) + (0 if meter.idle_w is not None else 1))
    base = {"meter": meter.name, "kind": meter.kind, "description": meter.description}
    slot = seconds / rounds
    try:
        idle_w, idle_note = runs.idle_power(slot, idle_seconds)
        for rnd in range(rounds):
            order = runs.names[rnd % len(runs.names):] + runs.names[: rnd % len(runs.names)]
            for name in order:
                runs.run(name, paths[name], slot)
    except MeterError as e:
        log.warning("energy not measured: %s", e)
        return {**base, "error": str(e)}
    finally:
        engine.policy = own_policy
    return {**base, **runs.report(idle_w, idle_note, seconds, rounds)}


class _MeteredRuns:
    """The metered windows of :func:`measure_energy`: each path's joules, seconds, CPU seconds and
    inferences, summed over its rounds, and where in the windows it stopped."""

    def __init__(self, engine: Engine, x: np.ndarray, meter, names: list[str], progress,
                 steps: int) -> None:
        self.engine, self.meter, self.names, self.progress = engine, meter, names, progress
        self.n = len(x)
        # every path walks one seeded shuffle of the windows, resuming where its last window
        # stopped: a path that gets through only part of the data gets a random part, not the
        # first records
        perm = np.random.default_rng(0).permutation(self.n)
        self.windows = [x[i] for i in perm]
        self.batches = [x[i : i + 1] for i in perm]
        self.total_j = dict.fromkeys(names, 0.0)
        self.total_s = dict.fromkeys(names, 0.0)
        self.total_cpu = dict.fromkeys(names, 0.0)
        self.count = dict.fromkeys(names, 0)
        self.cursor = dict.fromkeys(names, 0)
        self.steps, self.done = steps, 0

    def _step(self) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.steps)

    def idle_power(self, slot: float, idle_seconds: float | None) -> tuple[float, str]:
        """Idle watts and where they come from: the meter's preset, or a metered sleep."""
        meter = self.meter
        if meter.idle_w is not None:
            return float(meter.idle_w), "the target preset's idle power (not measured here)"
        wait = max(0.2, slot) if idle_seconds is None else float(idle_seconds)
        meter.start()
        time.sleep(wait)
        r = meter.stop()
        self._step()
        return r.watts, f"measured in this run: a metered {r.seconds:.2f} s sleep before the paths"

    def run(self, name: str, pol, slot: float) -> None:
        """Path ``name`` (policy ``pol``, or None: the monolithic graph) for ``slot`` metered
        seconds, 16 windows between looks at the clock."""
        engine, meter, n = self.engine, self.meter, self.n
        i, c = self.cursor[name], 0
        if pol is None:
            go, items = engine.run_monolithic, self.batches
        else:
            engine.policy = pol
            go, items = engine.predict, self.windows
        meter.start()
        t_end = time.perf_counter() + slot
        while True:
            for _ in range(16):
                go(items[i])
                i = i + 1 if i + 1 < n else 0
            c += 16
            if time.perf_counter() >= t_end:
                break
        r = meter.stop()
        self.cursor[name] = i
        self.total_j[name] += r.joules
        self.total_s[name] += r.seconds
        self.total_cpu[name] += r.cpu_seconds or 0.0
        self.count[name] += c
        self._step()

    def report(self, idle_w: float, idle_note: str, seconds: float, rounds: int) -> dict:
        """The energy section: mJ per inference (gross and above idle) per path and segment."""
        meter, names, count, total_s = self.meter, self.names, self.count, self.total_s

        def per_inference(name):
            gross = 1e3 * self.total_j[name] / count[name]
            above = 1e3 * (self.total_j[name] - idle_w * total_s[name]) / count[name]
            return {"gross": round(gross, 8), "above_idle": round(above, 8)}

        per = {name: per_inference(name) for name in names}
        m = len(names) - 2
        prefix = [per[f"prefix_{k}"] for k in range(m)]
        seg = {key: [round(max(0.0, prefix[k][key] - (prefix[k - 1][key] if k else 0.0)), 8)
                     for k in range(m)] for key in ("gross", "above_idle")}
        mono, pol, alle = per["monolithic"], per["policy"], prefix[-1]

        def ratio(a, b):
            return round(a / b, 4) if b > 0 else None

        return {
            "label": (f"MEASURED: {meter.description}" if meter.kind == "measured" else
                      meter.description if meter.description.upper().startswith("ESTIMATE") else
                      f"ESTIMATED: {meter.description}"),
            "idle_w": round(idle_w, 4),
            "idle": idle_note,
            "seconds_per_path": seconds,
            "rounds": rounds,
            "per_inference_mj": {"policy": pol, "all_exits": alle, "monolithic": mono},
            "prefix_mj": prefix,
            "per_segment_mj": {**seg, "note": "differences of neighbouring prefixes (segments "
                                              "0..k), clipped at 0"},
            "inferences": count,
            "windows_covered": {name: min(count[name], self.n) for name in names},
            "metered_seconds": {name: round(total_s[name], 6) for name in names},
            "cpu_fraction": {name: round(self.total_cpu[name] / total_s[name], 4)
                             if total_s[name] else None
                             for name in names} if meter.kind == "estimated" else None,
            "ratios": {
                "policy_vs_monolithic": ratio(pol["above_idle"], mono["above_idle"]),
                "policy_vs_monolithic_gross": ratio(pol["gross"], mono["gross"]),
                "policy_vs_all_exits": ratio(pol["above_idle"], alle["above_idle"]),
            },
        }


def machine_info() -> dict:
    """The CPU and platform the figures were measured on (results differ across machines)."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    return {"cpu": cpu, "cpus": cpus, "machine": platform.machine(), "python": platform.python_version()}


def parse_budget(text: str) -> tuple[float, str]:
    """``"40us"`` -> ``(40.0, "us")``, ``"0.05mJ"`` -> ``(0.05, "mJ")`` (also ``ms``, ``uJ``, ``J``)."""
    import re

    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(us|ms|s|uJ|mJ|J)\s*", text or "")
    scale = {"us": (1.0, "us"), "ms": (1e3, "us"), "s": (1e6, "us"),
             "uJ": (1e-3, "mJ"), "mJ": (1.0, "mJ"), "J": (1e3, "mJ")}
    try:
        value = float(m.group(1)) if m else float("nan")
    except ValueError:
        value = float("nan")
    if not m or not value > 0 or value == float("inf"):
        raise EdgeExitError(f"budget {text!r}: give a positive number and a unit, e.g. 40us, 0.1ms, "
                            "0.05mJ or 50uJ")
    f, unit = scale[m.group(2)]
    return value * f, unit


def bench_segment_costs(bench, unit: str, num_exits: int, what: str = "the bench report") -> list[float]:
    """Every segment's cost from a ``bench --json`` report ``bench`` (``what`` names it in
    errors): mean microseconds for ``unit="us"`` (``latency_us.segments``), mJ above idle for
    ``unit="mJ"`` (``energy.per_segment_mj.above_idle``). Raises :class:`ConfigError` saying what
    is missing, or that the report has another number of segments than the bundle."""
    if unit == "mJ":
        e = (bench.get("energy") if isinstance(bench, dict) else None) or {}
        if "error" in e:
            raise ConfigError(f"{what}'s energy was not measured ({e['error']})")
        try:
            costs = [float(v) for v in e["per_segment_mj"]["above_idle"]]
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{what} has no per-segment energy: bench with --meter (auto, "
                              "estimate, rapl, ...)") from None
    else:
        try:
            costs = [float(s["mean"]) for s in bench["latency_us"]["segments"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{what} has no per-segment latencies ({e}); give the JSON of "
                              "`edgeexit bench --json`") from e
    if len(costs) != num_exits:
        raise ConfigError(f"{what} has {len(costs)} segments, the bundle {num_exits}: bench this "
                          "bundle")
    return costs


def budget_costs(unit: str, bench: dict | None, manifest) -> list[float]:
    """Per-segment costs in ``unit`` for the budget policy: a bench report's measured means
    (:func:`bench_segment_costs`), else the costs recorded by ``edgeexit calibrate --bench`` in
    the bundle."""
    m = manifest.num_exits
    if bench is not None:
        return bench_segment_costs(bench, unit, m, "the --costs report")
    cal = manifest.policy.calibration
    rec = None if cal is None else cal.segment_costs
    if rec is not None and rec.unit == unit and len(rec.values) == m:
        return list(rec.values)
    raise EdgeExitError(f"the budget policy needs every segment's cost in {unit}: give --costs "
                        "BENCH.json (`edgeexit bench BUNDLE --json`; energy needs a --meter)")


def _segment_precisions(engine: Engine) -> list[str]:
    from edgeexit.runtime.backends import get_backend

    fmt = get_backend(engine.backend).file_format
    return [s.artifact(fmt).precision for s in engine.manifest.segments]

"""What an exit statistic computed inside the segment graph would save the engine (issue 31).

``Engine.predict`` spends 5-9 us per segment of its own beside the native inference, most of it
Python that runs right after LiteRT's ``Invoke`` with cold caches: the input check (one dot
product), reading the exit's logits, the policy's loop over them (``exp`` per class), the clock
reads. This study measures, side by side in one run, the engine as it is against a prototype
of the design issue 31 names, before any change to the bundle format:

* ``native``: the bundle's segments, ``Invoke`` only (the floor);
* ``predict``: :meth:`Engine.predict` as shipped;
* ``lean``: the same segments in a leaner loop (one clock read per segment, the policy's
  ``stop`` on the logits, the dot-product check): what restructuring the loop alone gives;
* per statistic (``--stats``, :data:`STATS`) the same segments re-exported (fp32 TFLite, from
  the bundle's checkpoint) with it as a third output: ``full`` = ``[max softmax, entropy, sum of
  squares of the segment's input]``, ``maxp`` = ``[max softmax]``, ``probe`` = ``[max logit]``
  (one reduction: the least a third output costs). Timed natively (``Invoke`` only: what the
  statistic costs inside the graph) and, but for ``probe``, in the lean loop deciding with one
  comparison of the statistic with the threshold (``full``: the range check one comparison of
  segment 0's sum of squares with its limit; ``maxp``: still the dot product).

Exits and labels of every statistic's loop are checked against ``predict`` on every window
(float32 in the graph against float64 in Python could split a tie at a threshold; the count is
reported).
Reported per variant: microseconds per window (per window the median over rounds, then the mean
over windows), the engine's own time per segment run (variant less its native, over the
segments run) and the ratio to the floor (variant over ``native``). The bundle's policy must be
``max_prob`` or ``entropy``; LiteRT, one thread.

    .venv/bin/python tools/exit_stat_study.py runs/quickstart/bundle --quick
    .venv/bin/python tools/exit_stat_study.py BUNDLE --checkpoint model.pt --repeat 3 \\
        --out results/exit-stat-study-NAME.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeexit.data.bench import bench_data  # noqa: E402
from edgeexit.errors import EdgeExitError  # noqa: E402
from edgeexit.runtime.engine import Engine, ExitResult  # noqa: E402

STATS = {
    "full": "[max softmax, entropy, sum of squares of the input]: decides, and checks the range",
    "maxp": "[max softmax]: decides max_prob (the range check stays a dot product in Python)",
    "probe": "[max logit]: one reduction, the least a third output costs (timed natively only)",
}


def _stat_segments(checkpoint: Path, exits: tuple[int, ...], x: np.ndarray, out: Path,
                   kind: str) -> list[Path]:
    """The bundle's segments as fp32 TFLite files with the statistic ``kind`` as a third
    output (:data:`STATS`)."""
    import torch
    from torch import nn

    from edgeexit.checkpoint import load_checkpoint
    from edgeexit.export.split import fold_batchnorm, split_model
    from edgeexit.export.tflite import export_tflite

    class WithStat(nn.Module):
        def __init__(self, seg: nn.Module) -> None:
            super().__init__()
            self.seg = seg

        def forward(self, h):
            feat, z = self.seg(h)
            if kind == "probe":
                return feat, z, z.amax(dim=-1, keepdim=True)
            if kind == "maxp":
                return feat, z, torch.softmax(z, dim=-1).amax(dim=-1, keepdim=True)
            lp = torch.log_softmax(z, dim=-1)
            p = lp.exp()
            stat = [p.amax(dim=-1, keepdim=True), -(p * lp).sum(dim=-1, keepdim=True),
                    (h * h).flatten(1).sum(dim=-1, keepdim=True)]
            return feat, z, torch.cat(stat, dim=-1)

    torch.set_num_threads(1)
    model = load_checkpoint(checkpoint).model.eval()
    h = torch.from_numpy(x[:8])
    paths = []
    for k, seg in enumerate(split_model(model, exits)):
        path = out / f"{kind}_{k}.tflite"
        src = "input" if k == 0 else f"feat_in_{k}"
        if seg.last:
            export_tflite(fold_batchnorm(seg), h[:1], path, input_name=src, output_names=["logits"])
        else:
            export_tflite(WithStat(fold_batchnorm(seg)), h[:1], path, input_name=src,
                          output_names=[f"feat_out_{k}", "logits", "stat"])
            with torch.no_grad():
                h = seg(h)[0]
        paths.append(path)
    return paths


def _chain(sessions) -> list:
    """Per segment ``(input, logits, run, source, stat)`` on the sessions' batch-1 buffers."""
    links, prev = [], None
    for sess in sessions:
        inp, outs, run = sess.link(prev)
        stat = outs[2][0] if len(outs) == 3 else None
        logits = outs[1][0] if len(outs) >= 2 else outs[0][0]
        links.append((inp, logits, run, None if prev is None else prev, stat))
        prev = outs[0]
    return links


def measure(bundle: str, checkpoint: str | None, data: str | None, limit: int, rounds: int,
            kinds: tuple[str, ...] = tuple(STATS), repeat: int = 1) -> dict:
    """The study's report: every variant timed side by side (module docstring), ``repeat``
    times (``runs``: one report per repetition)."""
    from edgeexit.runtime.backends import get_backend

    engine = Engine.from_bundle(bundle, backend="litert", threads=1)
    pol = engine.policy
    if pol.name not in ("max_prob", "entropy"):
        raise EdgeExitError(f"the bundle's policy is {pol.name}: this study covers max_prob and "
                            "entropy (export with --policy max_prob)")
    if pol.name == "entropy" and "maxp" in kinds:
        kinds = tuple(k for k in kinds if k != "maxp")  # max softmax decides max_prob only
    prov = engine.manifest.provenance
    ckpt = Path(checkpoint or (prov.checkpoint if prov is not None else None) or "")
    if not ckpt.is_file():
        raise EdgeExitError(f"the bundle's checkpoint {str(ckpt)!r} is not here: give --checkpoint")
    if data == "golden":
        with np.load(Path(bundle) / "golden.npz") as z:
            x = np.ascontiguousarray(z["inputs"][:limit], np.float32)
    else:
        x = bench_data(engine, data, "test", limit)[0]
    exits = tuple(int(s.exit) for s in engine.manifest.segments)
    be = get_backend("litert")
    with tempfile.TemporaryDirectory(prefix="edgeexit-exit-stat-") as tmp:
        chains = {k: _chain([be.load(f, 1) for f in _stat_segments(ckpt, exits, x, Path(tmp), k)])
                  for k in kinds}
        runs = [_measure(engine, chains, x, rounds) for _ in range(repeat)]
    return {"bundle": bundle, "checkpoint": str(ckpt), "kinds": {k: STATS[k] for k in kinds},
            "runs": runs}


def _measure(engine: Engine, chains: dict[str, list], x: np.ndarray, rounds: int) -> dict:
    pol = engine.policy
    col = 0 if pol.name == "max_prob" else 1
    sign = 1.0 if col == 0 else -1.0  # entropy: stop when H <= t, i.e. -H >= -t
    engine.predict(x[0])
    links = engine._links
    limits = [sign * t for t in pol.thresholds] + [None]
    first, flat = engine._first
    shape, limit, classes = engine.input_shape, engine._energy_limit, engine.classes
    f32, clock, stop = np.dtype(np.float32), time.perf_counter_ns, pol.stop

    def lean(xi):
        if type(xi) is np.ndarray and xi.dtype is f32 and xi.shape == shape:
            first[...] = xi
            if not flat.dot(flat) <= limit:
                engine.check_input(xi, False)
        else:
            first[...] = engine.check_input(xi, False)[0]
        k, times, t0 = 0, [], clock()
        for inp, logits, run, src, _ in links_lean:
            if src is not None:
                inp[...] = src
            run()
            t1 = clock()
            times.append(t1 - t0)
            t0 = t1
            z = logits.tolist()
            if stop(k, z):
                break
            k += 1
        label = z.index(max(z))
        return ExitResult(label, classes[label], None, k, tuple(times), z)

    def stat_loop(stat_links: list, checked: bool):
        """The lean loop deciding on the statistic; ``checked``: the range check is segment 0's
        sum of squares (else the dot product, as :meth:`Engine.predict`)."""
        chain = [(*link, t) for link, t in zip(stat_links, limits)]
        s_first = stat_links[0][0][0]
        s_flat = stat_links[0][0].reshape(-1)
        stat0 = stat_links[0][4]

        def run_one(xi):
            if type(xi) is np.ndarray and xi.dtype is f32 and xi.shape == shape:
                s_first[...] = xi
                if not checked and not s_flat.dot(s_flat) <= limit:
                    engine.check_input(xi, False)
            else:
                s_first[...] = engine.check_input(xi, False)[0]
            k, times, t0 = 0, [], clock()
            for inp, logits, run, src, st, t in chain:
                if src is not None:
                    inp[...] = src
                run()
                t1 = clock()
                times.append(t1 - t0)
                t0 = t1
                if t is None or sign * st.item(col) >= t:
                    break
                k += 1
            if checked and not stat0.item(2) <= limit:
                engine.check_input(xi, False)
            z = logits.tolist()
            label = z.index(max(z))
            return ExitResult(label, classes[label], None, k, tuple(times), z)

        return run_one

    links_lean = [(*link, None) for link in links]
    ref = [engine.predict(xi) for xi in x]
    runs = [r.exit_index for r in ref]

    def same(f) -> int:
        return sum(a.exit_index != b.exit_index or a.label != b.label
                   for a, b in zip(ref, (f(xi) for xi in x)))

    if same(lean):
        raise AssertionError("the lean loop answers differently from Engine.predict")

    def native_of(chain):
        def native(i):
            for link in chain[: runs[i] + 1]:
                link[2]()
        return native

    variants = {"native": native_of(links), "predict": lambda i: engine.predict(x[i]),
                "lean": lambda i: lean(x[i])}
    differ = {}
    for kind, chain in chains.items():
        variants[f"native_{kind}"] = native_of(chain)
        if kind != "probe":
            f = stat_loop(chain, kind == "full")
            differ[kind] = same(f)
            variants[kind] = (lambda g: lambda i: g(x[i]))(f)
    n, names = len(x), list(variants)
    ns = {k: np.zeros((rounds, n)) for k in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            f, row = variants[name], ns[name][r]
            for i in range(n):
                t0 = clock()
                f(i)
                row[i] = clock() - t0
    us = {k: float(np.median(v, axis=0).mean()) / 1e3 for k, v in ns.items()}
    segs = float(np.mean(runs)) + 1.0
    rows = {"predict": ("native", "predict"), "lean": ("native", "lean")}
    rows |= {k: (f"native_{k}", k if k != "probe" else None) for k in chains}
    table = {}
    for k, (nat, loop) in rows.items():
        table[k] = {
            "native_us": round(us[nat], 3),
            "window_us": None if loop is None else round(us[loop], 3),
            "stat_in_graph_us": round(us[nat] - us["native"], 3),
            "engine_own_us_per_segment": None if loop is None else
            round((us[loop] - us[nat]) / segs, 3),
            "over_floor": None if loop is None else round(us[loop] / us["native"], 4),
            "answers_differ": differ.get(k, 0),
        }
    return {"policy": pol.name, "windows": n, "rounds": rounds,
            "segments_per_window": round(segs, 4), "variants": table}


COLUMNS = ("run", "variant", "segments_per_window", "native_us", "window_us",
           "stat_in_graph_us", "engine_own_us_per_segment", "over_floor", "answers_differ")


def rows_of(res: dict) -> list[list]:
    """One row per run and variant (:data:`COLUMNS`)."""
    return [[i, k, r["segments_per_window"], v["native_us"], v["window_us"], v["stat_in_graph_us"],
             v["engine_own_us_per_segment"], v["over_floor"], v["answers_differ"]]
            for i, r in enumerate(res["runs"]) for k, v in r["variants"].items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", help="bundle directory (policy max_prob or entropy)")
    ap.add_argument("--checkpoint", default=None,
                    help="the bundle's model.pt (default: the one its manifest records)")
    ap.add_argument("--data", default=None,
                    help="windows as for `edgeexit bench --data` (default: the test side of the "
                         "data recorded in the bundle), or 'golden' (the bundle's golden.npz)")
    ap.add_argument("--limit", type=int, default=300, help="windows at most (seeded sample)")
    ap.add_argument("--rounds", type=int, default=11, help="timed rounds per variant")
    ap.add_argument("--repeat", type=int, default=1, help="independent measurements")
    ap.add_argument("--stats", default=",".join(STATS),
                    help="statistics to try, comma-separated: " + "; ".join(
                        f"{k}: {v}" for k, v in STATS.items()))
    ap.add_argument("--quick", action="store_true", help="150 windows, 7 rounds")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--out", default=None,
                    help="also write the results table (.json, with provenance) here")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # the converter's, not ours
    kinds = tuple(k.strip() for k in a.stats.split(",") if k.strip())
    bad = [k for k in kinds if k not in STATS]
    if bad or not kinds or a.repeat < 1 or a.rounds < 1 or a.limit < 1:
        ap.error(f"--stats takes {', '.join(STATS)}; --repeat, --rounds, --limit must be >= 1")
    if a.quick:
        a.limit, a.rounds = min(a.limit, 150), min(a.rounds, 7)
    try:
        res = measure(a.bundle, a.checkpoint, a.data, a.limit, a.rounds, kinds, a.repeat)
    except EdgeExitError as e:
        raise SystemExit(f"Error: {e}") from None
    if a.out:
        from edgeexit.results import write_table

        write_table(a.out, title="An exit statistic inside the segment graph against the engine's "
                    "Python decision (LiteRT, batch 1, us)", columns=COLUMNS, rows=rows_of(res),
                    command=sys.argv,
                    notes=f"bundle {a.bundle}; policy {res['runs'][0]['policy']}; "
                    + "; ".join(f"{k}: {v}" for k, v in res["kinds"].items()))
    if a.json:
        print(json.dumps(res, indent=2))
        return
    first = res["runs"][0]
    print(f"{res['bundle']}: {first['windows']} windows, policy {first['policy']}, "
          f"{first['segments_per_window']:.2f} segments per window, LiteRT, 1 thread")
    print(f"{'run':>3} {'variant':8} {'native':>8} {'window':>8} {'in graph':>9} "
          f"{'own/seg':>8} {'/floor':>7} {'differ':>6}   (us)")
    for row in rows_of(res):
        print(f"{row[0]:3d} {row[1]:8} " + " ".join(
            f"{'-':>{w}}" if v is None else f"{v:{w}.{p}f}"
            for v, w, p in zip(row[3:8], (8, 8, 9, 8, 7), (2, 2, 2, 2, 3)))
              + f" {row[8]:6d}")


if __name__ == "__main__":
    main()

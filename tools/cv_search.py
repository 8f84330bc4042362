"""Choose an MIT-BIH recipe by cross-validation on DS1 only, then test it on DS2 once per seed.

Stage 1 (``--candidates``): every candidate recipe (TrainConfig overrides, below or ``--recipe
NAME:key=value,...``) is cross-validated by record on the DS1 training records
(:func:`edgeexit.cv.cross_validate`, ``--folds`` folds, ``--epochs`` epochs, seed ``--cv-seed``);
the table ranks them by the mean over folds of the final exit's macro-F1 (N/S/V/F) at each one's
best epoch count. DS2 is not loaded in this stage.

Stage 2 (``--final-seeds``): the best candidate (or ``--choose NAME``) is trained on DS1 with the
epoch count its cross-validation chose (keeping the last epoch) for each seed, and DS2 is
evaluated once per seed: per seed, mean and spread of the final exit's macro-F1 and S / V
sensitivity and precision, and every exit of the first seed.

With ``--average-with NAME,...`` (the same recipe cross-validated with other ``--cv-seed``
values, saved under other names), the final seeds train for the epoch count whose score is best
on the mean of those curves and the chosen recipe's: the best epoch of one seed's curve is partly
where that seed's batch order left the BatchNorm statistics (README, "Later checks on DS1").

Runs ``--workers`` candidates (or seeds) side by side, one torch thread each; results go to
``--out`` as one JSON per candidate / seed, so an interrupted search resumes where it stopped.

    .venv/bin/python tools/cv_search.py --mitdb ../shared/data/mitdb --out runs/cv-search \\
        --candidates base,rraug --final-seeds 0,1,2,3,4
    .venv/bin/python tools/cv_search.py --out runs/cv-search --table-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from edgeexit.summary import machine_info

CANDIDATES: dict[str, dict] = {
    "base": {},
    "rraug": {"rr_augment": 0.5},
    "balanced": {"class_weighting": "balanced", "max_class_weight": 10.0},
    "rraug-balanced": {"rr_augment": 0.5, "class_weighting": "balanced", "max_class_weight": 10.0},
    "narrow": {"width": 0.5},
    "ema": {"ema": 0.998},
    "rraug-ema": {"rr_augment": 0.5, "ema": 0.998},
    "warp": {"time_warp": 0.15},
    "warp-ema": {"time_warp": 0.15, "ema": 0.998},
    "rrscale": {"rr_scale": 0.3},
    "rrscale-warp": {"rr_scale": 0.3, "time_warp": 0.15},
    "morph": {"morph_context": True},
    "morph-rrscale": {"morph_context": True, "rr_scale": 0.3},
}
"""Named recipes: overrides of TrainConfig(model="resnet1d") for this search."""


DATA_KEYS = ("rr_context", "morph_context")
"""Overrides that choose the input (load_mitbih_split's options), not TrainConfig fields."""


def _config(overrides: dict, epochs: int, seed: int):
    from edgeexit.train import TrainConfig

    train_keys = {k: v for k, v in overrides.items() if k not in DATA_KEYS}
    return TrainConfig(**{"model": "resnet1d", "epochs": epochs, "seed": seed, "threads": 1,
                          **train_keys})


def _load(mitdb: str, test: bool, overrides: dict):
    from edgeexit.data.mitbih import DS1, load_mitbih, load_mitbih_split

    data_keys = {k: v for k, v in overrides.items() if k in DATA_KEYS}
    if not test:
        return load_mitbih(mitdb, DS1, **data_keys), None
    return load_mitbih_split(mitdb, **data_keys)


def _cv_job(name: str, overrides: dict, a: dict) -> dict:
    import torch

    from edgeexit.cv import cross_validate

    torch.set_num_threads(1)
    train, _ = _load(a["mitdb"], False, overrides)
    t0 = time.perf_counter()
    cv = cross_validate(train, _config(overrides, a["epochs"], a["cv_seed"]), a["folds"])
    d = cv.to_dict()
    d.update(name=name, overrides=overrides, elapsed_s=round(time.perf_counter() - t0, 1))
    return d


def _final_job(name: str, overrides: dict, epochs: int, schedule: int, seed: int, a: dict) -> dict:
    import torch

    from edgeexit.cv import compact_report
    from edgeexit.train import train

    torch.set_num_threads(1)
    train_set, test_set = _load(a["mitdb"], True, overrides)
    t0 = time.perf_counter()
    from edgeexit.data import DataSpec

    # the folds' learning-rate schedule (laid out over the CV's epochs), stopped at the chosen one
    cfg = dataclasses.replace(_config(overrides, epochs, seed), select="last", schedule_epochs=schedule)
    spec = DataSpec(source=a["mitdb"], seed=seed, **{k: v for k, v in overrides.items() if k in DATA_KEYS})
    r = train(train_set, cfg, test=test_set, out_dir=Path(a["out"]) / f"final-{name}-seed{seed}",
              data_spec=spec)  # model.pt for export and bench
    return {"name": name, "seed": seed, "epochs": epochs, "overrides": overrides,
            "elapsed_s": round(time.perf_counter() - t0, 1),
            "exits": [compact_report(e["test"]) for e in r.metrics["exits"]]}


def _sp(r: dict, c: str) -> str:
    v = r.get(c)
    return "-" if v is None else f"{100 * v['se']:.1f} / {100 * v['ppv']:.1f}"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def cv_table(results: list[dict]) -> str:
    rows = sorted(results, key=lambda d: -d["best_mean_score"])
    out = ["| recipe | overrides | epochs chosen / tried | mean macro-F1 (folds) | min - max | pooled macro-F1 | pooled S se / ppv % | pooled V se / ppv % | run time |",
           "|---|---|---|---|---|---|---|---|---|"]
    for d in rows:
        e = d["best_epoch"]
        p = d["pooled"][e - 1][-1]
        s = d["fold_scores_at_best"]
        ov = ", ".join(f"{k}={v}" for k, v in d["overrides"].items()) or "(defaults)"
        out.append(f"| {d['name']} | {ov} | {e} / {d['config']['epochs']} | **{d['best_mean_score']:.3f}** | {min(s):.3f} - {max(s):.3f} "
                   f"| {p['score']:.3f} | {_sp(p, 'S')} | {_sp(p, 'V')} | {_minutes(d.get('elapsed_s'))} |")
    return "\n".join(out) + "\n"


def final_table(results: list[dict]) -> str:
    import numpy as np

    rows = sorted(results, key=lambda d: d["seed"])
    out = ["| seed | epochs | accuracy | macro-F1 (NSVF) | N se / ppv % | S se / ppv % | V se / ppv % | F se / ppv % | train time |",
           "|---|---|---|---|---|---|---|---|---|"]
    for d in rows:
        r = d["exits"][-1]
        out.append(f"| {d['seed']} | {d['epochs']} | {100 * r['accuracy']:.1f}% | {r['score']:.3f} | {_sp(r, 'N')} "
                   f"| {_sp(r, 'S')} | {_sp(r, 'V')} | {_sp(r, 'F')} | {d['elapsed_s']:.0f} s |")
    if rows:
        f1 = np.array([d["exits"][-1]["score"] for d in rows])

        def m(c, k):
            return np.mean([d["exits"][-1].get(c, {}).get(k, 0.0) for d in rows]) * 100

        out.append(f"| **mean** | | {np.mean([d['exits'][-1]['accuracy'] for d in rows]) * 100:.1f}% "
                   f"| **{f1.mean():.3f}** (max - min {f1.max() - f1.min():.3f}) | {m('N', 'se'):.1f} / {m('N', 'ppv'):.1f} "
                   f"| {m('S', 'se'):.1f} / {m('S', 'ppv'):.1f} | {m('V', 'se'):.1f} / {m('V', 'ppv'):.1f} "
                   f"| {m('F', 'se'):.1f} / {m('F', 'ppv'):.1f} | |")
        first = rows[0]
        out += ["", f"Every exit, seed {first['seed']}:", "",
                "| exit | accuracy | macro-F1 (NSVF) | S se / ppv % | V se / ppv % |", "|---|---|---|---|---|"]
        for k, r in enumerate(first["exits"]):
            out.append(f"| {k} | {100 * r['accuracy']:.1f}% | {r['score']:.3f} | {_sp(r, 'S')} | {_sp(r, 'V')} |")
    return "\n".join(out) + "\n"


def seed_averaged_best(results: list[dict]) -> tuple[int, float, list[float]]:
    """The epoch count (1-based) whose mean score over ``results`` (one recipe's CV curves, one
    per CV seed, all of one length) is best, that mean, and the averaged curve."""
    curves = [d["mean_score_per_epoch"] for d in results]
    if not curves or len({len(c) for c in curves}) != 1:
        raise ValueError("seed averaging needs CV curves of one length, got lengths "
                         f"{[len(c) for c in curves]}")
    mean = [sum(v) / len(v) for v in zip(*curves)]
    best = max(range(len(mean)), key=mean.__getitem__)
    return best + 1, mean[best], mean


def _read(out: Path, prefix: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob(f"{prefix}*.json")) if p.is_file()]


def _write(path: Path, d: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(d, indent=1))
    os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mitdb", default="../shared/data/mitdb")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--candidates", default="", help="comma-separated names (" + ", ".join(CANDIDATES) + ")")
    p.add_argument("--recipe", action="append", default=[],
                   help="NAME:key=value,key=value (TrainConfig fields), added to the candidates")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10, help="epochs every fold trains (the curve's length)")
    p.add_argument("--cv-seed", type=int, default=0)
    p.add_argument("--final-seeds", default="", help="comma-separated seeds: train the chosen recipe, test on DS2")
    p.add_argument("--choose", default=None, help="the recipe for the final seeds (default: best CV mean)")
    p.add_argument("--average-with", default="",
                   help="comma-separated CV results of the chosen recipe with other --cv-seed's: "
                        "the final seeds' epoch count is the best of the averaged curve")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--table-only", action="store_true")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    recipes = {}
    for name in filter(None, a.candidates.split(",")):
        if name not in CANDIDATES:
            p.error(f"unknown candidate {name!r}; known: {', '.join(CANDIDATES)} (or give --recipe)")
        recipes[name] = CANDIDATES[name]
    for spec in a.recipe:
        name, _, kv = spec.partition(":")
        ov = {}
        for item in filter(None, kv.split(",")):
            k, _, v = item.partition("=")
            ov[k] = json.loads(v) if v[:1].isdigit() or v[:1] in "-[{" or v in ("true", "false") else v
        recipes[name] = ov
    if not a.table_only:  # refuse a bad recipe or directory here, not in a worker's traceback
        from edgeexit.errors import EdgeExitError

        if not Path(a.mitdb, "100.hea").is_file():
            p.error(f"--mitdb {a.mitdb}: no MIT-BIH records there (100.hea not found)")
        for name, ov in recipes.items():
            try:
                _config(ov, a.epochs, a.cv_seed)
            except (TypeError, EdgeExitError) as e:
                p.error(f"recipe {name}: {e}")
    args = {"mitdb": a.mitdb, "epochs": a.epochs, "folds": a.folds, "cv_seed": a.cv_seed, "out": str(a.out)}
    m = machine_info()
    print(f"host CPU: {m['cpu']}; {m['cpus']} cores; one torch thread per job", file=sys.stderr)
    if not a.table_only:
        todo = {n: ov for n, ov in recipes.items() if not (a.out / f"cv-{n}.json").exists()}
        with ProcessPoolExecutor(max_workers=a.workers) as pool:
            futs = {n: pool.submit(_cv_job, n, ov, args) for n, ov in todo.items()}
            for n, f in futs.items():
                d = f.result()
                _write(a.out / f"cv-{n}.json", d)
                print(f"cv {n}: best epoch {d['best_epoch']}, mean {d['best_mean_score']:.3f} "
                      f"({d['elapsed_s'] / 60:.1f} min)", file=sys.stderr, flush=True)
    cvs = _read(a.out, "cv-")
    if cvs:
        print("## Cross-validation on DS1 (never DS2)\n")
        print(cv_table(cvs))
    seeds = [int(s) for s in a.final_seeds.split(",") if s.strip()]
    if seeds and not a.table_only:
        by_name = {d["name"]: d for d in cvs}
        name = a.choose or max(cvs, key=lambda d: d["best_mean_score"])["name"]
        if name not in by_name:
            p.error(f"--choose {name}: no cross-validation result for it in {a.out}")
        chosen = by_name[name]
        epochs = chosen["best_epoch"]
        others = [n.strip() for n in a.average_with.split(",") if n.strip()]
        if others:
            missing = [n for n in others if n not in by_name]
            if missing:
                p.error(f"--average-with {','.join(missing)}: no cross-validation result in {a.out}")
            try:
                epochs, score, _ = seed_averaged_best([chosen] + [by_name[n] for n in others])
            except ValueError as e:
                p.error(f"--average-with: {e}")
            print(f"{name}: best epoch of the curve averaged with {', '.join(others)}: {epochs} "
                  f"(mean {score:.3f})", file=sys.stderr)
        done = {s: json.loads(f.read_text()) for s in seeds
                if (f := a.out / f"final-{name}-seed{s}.json").is_file()}
        stale = [s for s, d in done.items() if d["epochs"] != epochs]
        if stale:  # resuming must not mix seeds trained for another epoch count
            p.error(f"final seeds {stale} of {name} in {a.out} were trained for "
                    f"{done[stale[0]]['epochs']} epochs, not {epochs}: move them away first")
        todo = [s for s in seeds if s not in done]
        with ProcessPoolExecutor(max_workers=a.workers) as pool:
            futs = {s: pool.submit(_final_job, name, chosen["overrides"], epochs,
                                   chosen["config"]["epochs"], s, args)
                    for s in todo}
            for s, f in futs.items():
                _write(a.out / f"final-{name}-seed{s}.json", f.result())
                print(f"final {name} seed {s} done", file=sys.stderr, flush=True)
    finals = _read(a.out, "final-")
    for name in sorted({d["name"] for d in finals}):
        print(f"## {name}: DS1 -> DS2, once per seed\n")
        print(final_table([d for d in finals if d["name"] == name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

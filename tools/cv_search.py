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

Every candidate (and every final seed) is one trial of an Optuna study
(:func:`edgeexit.search.run_grid`): ``--workers`` processes take them side by side, one torch
thread each. The study lives in ``--storage`` (default: the SQLite file ``OUT/search.db``; a
PostgreSQL or MySQL URL spreads the trials over every machine that runs this same command, see
docs/guides/scale-out.md); results also go to ``--out`` as one JSON per candidate / seed. An
interrupted search resumes where it stopped.

    .venv/bin/python tools/cv_search.py --mitdb ../shared/data/mitdb --out runs/cv-search \\
        --candidates base,rraug --final-seeds 0,1,2,3,4
    .venv/bin/python tools/cv_search.py --out runs/cv-search --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edgeexit.search import Job, cv_trial, default_storage, final_trial, recipe_config, run_grid
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


def _cv_stage(p, a, recipes: dict, args: dict, storage: str) -> None:
    """Stage 1: every candidate's cross-validation, one trial each; OUT/cv-NAME.json."""
    jobs = [Job(f"cv-{n}", {**args, "name": n, "overrides": ov}) for n, ov in recipes.items()
            if not (a.out / f"cv-{n}.json").exists()]
    grid = run_grid(jobs, cv_trial, storage=storage, workers=a.workers, score="best_mean_score",
                    study=f"cv-search-e{a.epochs}-f{a.folds}-s{a.cv_seed}")
    for key, d in grid.results.items():
        _write(a.out / f"{key}.json", d)
        print(f"cv {d['name']}: best epoch {d['best_epoch']}, mean {d['best_mean_score']:.3f} "
              f"({d['elapsed_s'] / 60:.1f} min, {grid.workers[key]})", file=sys.stderr, flush=True)
    if grid.pending:
        p.error(f"trials not done (failed, or running elsewhere): {', '.join(grid.pending)}; "
                "see the log, then rerun to retry them")


def _final_stage(p, a, cvs: list[dict], seeds: list[int], args: dict, storage: str) -> None:
    """Stage 2: the chosen recipe trained once per seed and tested on DS2, one trial each."""
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
    jobs = [Job(f"final-{name}-seed{s}", {**args, "name": name, "overrides": chosen["overrides"],
                                          "epochs": epochs, "seed": s,
                                          "schedule": chosen["config"]["epochs"]})
            for s in seeds if s not in done]
    grid = run_grid(jobs, final_trial, storage=storage, workers=a.workers,
                    study=f"cv-search-final-{name}-e{epochs}-of{chosen['config']['epochs']}")
    for key, d in grid.results.items():
        _write(a.out / f"{key}.json", d)
        print(f"final {name} seed {d['seed']} done", file=sys.stderr, flush=True)
    if grid.pending:
        p.error(f"trials not done: {', '.join(grid.pending)}; see the log, then rerun")


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
    p.add_argument("--workers", type=int, default=2, help="processes taking trials on this machine")
    p.add_argument("--storage", default=None,
                   help="the Optuna study's database: default sqlite:///OUT/search.db (one "
                        "machine); a postgresql:// or mysql:// URL shared by several machines")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (every trial)")
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
                recipe_config(ov, a.epochs, a.cv_seed, a.device)
            except (TypeError, EdgeExitError) as e:
                p.error(f"recipe {name}: {e}")
    args = {"mitdb": a.mitdb, "epochs": a.epochs, "folds": a.folds, "cv_seed": a.cv_seed,
            "out": str(a.out.resolve()), "device": a.device}
    storage = a.storage or default_storage(a.out)
    m = machine_info()
    print(f"host CPU: {m['cpu']}; {m['cpus']} cores; one torch thread per job", file=sys.stderr)
    if not a.table_only:
        _cv_stage(p, a, recipes, args, storage)
    cvs = _read(a.out, "cv-")
    if cvs:
        print("## Cross-validation on DS1 (never DS2)\n")
        print(cv_table(cvs))
    seeds = [int(s) for s in a.final_seeds.split(",") if s.strip()]
    if seeds and not a.table_only:
        _final_stage(p, a, cvs, seeds, args, storage)
    finals = _read(a.out, "final-")
    for name in sorted({d["name"] for d in finals}):
        print(f"## {name}: DS1 -> DS2, once per seed\n")
        print(final_table([d for d in finals if d["name"] == name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Robustness benchmark on MIT-BIH (DS1 train, DS2 test): standard, rdi, neokd, ima, and the
early-exit ensemble policy on the standard model, three seeds each, through `edgeexit evaluate`.

For every (method, seed): train on DS1 (the library's `train`), export an ONNX bundle for rpi4
with the max_prob policy (thresholds calibrated on the validation records training held out),
and evaluate the bundle (`edgeexit.robust.evaluate.evaluate`): max-average PGD, policy-aware PGD,
the universal perturbation and the black-box Square attack at 0.05 / 0.1 / 0.2 mV (Linf, the
waveform only), synthetic muscle noise at 6 and 0 dB, and the DeepSloth slowdown (exit histogram
and batch-1 latency of the deployed bundle, clean vs attacked). The standard model is exported a
second time with the `ensemble` policy and evaluated the same way.

Every (method, seed) is one trial of an Optuna study (:func:`edgeexit.search.run_grid`):
``--workers`` processes take them side by side; the study lives in ``--storage`` (default the
SQLite file OUT/search.db; a PostgreSQL or MySQL URL spreads the trials over every machine that
runs this same command with OUT on a shared file system, docs/guides/scale-out.md). Every run
writes into OUT/<method>-seed<N>/ and is skipped when its report exists, so an interrupted run
resumes, and runs split by hand (`--methods rdi --seeds 1` in one shell, ...) merge with
`--table-only`. The table (OUT/table.md, OUT/table.json) gives mean +- spread (population std)
over the seeds present, and says which settings were reduced (`--quick`).

    .venv/bin/python tools/robust_benchmark.py --mitdb ../shared/data/mitdb --out runs/robust --quick
    .venv/bin/python tools/robust_benchmark.py --mitdb ../shared/data/mitdb --out runs/robust

Full: 6 epochs on all of DS1, 1000 attacked DS2 windows (class-stratified sample), 20 PGD steps,
300 Square queries. Quick: a third of the DS1 beats of every record (seeded), 3 epochs, 2-step
training attacks, 300 attacked windows, 10 PGD steps, 100 Square queries.

``--recipe ranked-first`` trains every method with the MIT-BIH recipe that cross-validation on
DS1 ranked first (README, "MIT-BIH, inter-patient"): the morphology context channels,
``rr_scale`` 0.3 and ``rr_augment`` 0.5, 10 epochs of a 16-epoch learning-rate schedule, the last
epoch kept (``--quick``: 3 epochs on a 3-epoch schedule). ``default`` is the TrainConfig
defaults with the plan's epochs (6), as before.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("robust_benchmark")

METHODS = ("standard", "rdi", "neokd", "ima")

RECIPES: dict[str, dict] = {
    "default": {},
    "ranked-first": {"morph_context": True, "rr_scale": 0.3, "rr_augment": 0.5, "epochs": 10,
                     "schedule_epochs": 16, "select": "last"},
}
"""Training recipes: TrainConfig overrides, plus ``morph_context`` (the input's channels)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    epochs: int
    train_fraction: float
    train_steps: int
    eval_limit: int
    eval_steps: int
    square_queries: int
    universal_limit: int
    train_eps: float
    recipe: str = "default"
    attack_morph: str = "follows"

    @classmethod
    def make(cls, quick: bool, train_eps: float, recipe: str = "default",
             attack_morph: str = "follows") -> Plan:
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        if quick:
            return cls(3, 1 / 3, 2, 300, 10, 100, 1000, train_eps, recipe, attack_morph)
        return cls(6, 1.0, 5, 1000, 20, 300, 2000, train_eps, recipe, attack_morph)

    @property
    def morph_context(self) -> bool:
        return bool(RECIPES[self.recipe].get("morph_context", False))

    def train_overrides(self) -> dict:
        """TrainConfig fields of the recipe; a quick plan keeps its own (short) epoch count."""
        ov = {k: v for k, v in RECIPES[self.recipe].items() if k != "morph_context"}
        ov["attack_morph"] = self.attack_morph
        ov.setdefault("epochs", self.epochs)
        if self.train_fraction < 1.0:  # quick
            ov["epochs"] = self.epochs
            ov.pop("schedule_epochs", None)
        return ov

    def describe(self) -> str:
        if self.recipe == "default":
            return f"{self.epochs} epochs"
        ov = self.train_overrides()
        extra = ", ".join(f"{k} {v}" for k, v in ov.items()
                          if k not in ("epochs", "schedule_epochs", "select", "attack_morph"))
        sched = f" of a {ov['schedule_epochs']}-epoch schedule" if "schedule_epochs" in ov else ""
        morph = ""
        if self.morph_context:
            morph = ("morphology context (the training attacks recompute it), "
                     if self.attack_morph == "follows" else
                     "morphology context (held by the training attacks), ")
        return f"recipe {self.recipe}: {morph}{extra}, {ov['epochs']} epochs{sched}"


def _data(mitdb: Path, out: Path, plan: Plan) -> tuple[Path, Path]:
    """DS1 (or a per-record subsample of it) and DS2 as .npz files, written once."""
    from edgeexit.data import load_mitbih
    from edgeexit.data.mitbih import DS1, DS2

    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    morph = {"morph_context": True} if plan.morph_context else {}
    tag = "-morph" if morph else ""
    train_path = d / f"ds1-{plan.train_fraction:.3f}{tag}.npz"
    test_path = d / f"ds2{tag}.npz"
    if not test_path.is_file():
        load_mitbih(mitdb, DS2, **morph).save_npz(test_path)
    if not train_path.is_file():
        ds1 = load_mitbih(mitdb, DS1, **morph)
        if plan.train_fraction < 1.0:
            rng = np.random.default_rng(12345)
            keep = np.zeros(len(ds1), bool)
            for g in np.unique(ds1.groups):
                idx = np.flatnonzero(ds1.groups == g)
                keep[rng.choice(idx, size=max(1, round(plan.train_fraction * len(idx))),
                                replace=False)] = True
            ds1 = ds1.subset(keep)
        ds1.save_npz(train_path)
    return train_path, test_path


def _method_config(method: str, plan: Plan):
    from edgeexit.robust.methods import make_method_config

    if method == "standard":
        return make_method_config(method, {})
    budget = {"eps_max": 2 * plan.train_eps} if method == "ima" else {"eps": plan.train_eps}
    return make_method_config(method, {**budget, "steps": plan.train_steps})


DEFAULT_TRAIN_EPS = 0.1


def run_name(method: str, plan: Plan) -> str:
    """``rdi``, or ``rdi-eps0.2`` for a training budget other than the default; ``-trainheld``
    when its training attacks held the morphology channels (``--train-morph held``)."""
    if method == "standard":
        return method
    name = method if plan.train_eps == DEFAULT_TRAIN_EPS else f"{method}-eps{plan.train_eps:g}"
    if plan.morph_context and plan.attack_morph == "held":
        name += "-trainheld"
    return name


def run_one(method: str, seed: int, policy: str, train_path: Path, test_path: Path, out: Path,
            plan: Plan, threads: int, morph_follows: bool = True, device: str = "auto") -> Path:
    """Train (or reuse), export and evaluate one (method, seed); returns the report path."""
    from edgeexit.cv import run_training
    from edgeexit.data import DataSpec
    from edgeexit.export.bundle import ExportConfig, export_bundle
    from edgeexit.robust.evaluate import EvalConfig, evaluate
    from edgeexit.train import TrainConfig

    run = out / f"{run_name(method, plan)}-seed{seed}"
    eval_dir = run / (f"eval-{policy}" if morph_follows else f"eval-{policy}-held")
    report_path = eval_dir / "report.json"
    if report_path.is_file():
        log.info("%s exists: skipped", report_path)
        return report_path
    t0 = time.perf_counter()
    if not (run / "model.pt").is_file():
        spec = DataSpec(source=str(train_path), test_source=str(test_path), seed=seed)
        config = TrainConfig(**{"model": "resnet1d", "method": method,
                                "method_config": _method_config(method, plan), "seed": seed,
                                "threads": threads, "device": device,
                                **plan.train_overrides()})
        run_training(spec, config, run)
        log.info("%s seed %d trained in %.0f s", method, seed, time.perf_counter() - t0)
    bundle = run / f"bundle-{policy}"
    if not (bundle / "manifest.json").is_file():
        export_bundle(run / "model.pt", bundle, ExportConfig(target="rpi4", formats=("onnx",),
                                                             policy=policy, monolithic=False))
    ec = EvalConfig(limit=plan.eval_limit, steps=plan.eval_steps,
                    square_queries=plan.square_queries, universal_limit=plan.universal_limit,
                    noise=("ma",), snr_db=(6.0, 0.0), backend="onnxruntime", threads=threads,
                    seed=seed, morph_follows=morph_follows)
    evaluate(bundle, config=ec, out_dir=eval_dir)
    log.info("%s seed %d %s: done in %.0f s", method, seed, policy, time.perf_counter() - t0)
    return report_path


def run_trial(p: dict) -> dict:
    """One trial of the grid: every policy of one (method, seed) in turn (they share its model),
    :func:`run_one` each; returns the report paths."""
    import torch

    torch.set_num_threads(p["threads"])
    plan = Plan(**p["plan"])
    paths = [run_one(p["method"], p["seed"], policy, Path(p["train"]), Path(p["test"]),
                     Path(p["out"]), plan, p["threads"], p["morph_follows"], p["device"])
             for policy in p["policies"]]
    return {"reports": [str(r) for r in paths]}


def grid(methods: list[str], seeds: list[int], ensemble: bool, base: dict) -> list:
    """The trials: one per (method, seed), the standard model's with the ensemble policy too."""
    from edgeexit.search import Job

    return [Job(f"{run_name(m, Plan(**base['plan']))}-seed{s}",
                {**base, "method": m, "seed": s,
                 "policies": ["max_prob", *(["ensemble"] if m == "standard" and ensemble else [])]})
            for s in seeds for m in methods]


# -- the table -----------------------------------------------------------------------------------


def _ms(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    v = np.asarray(values, float) * scale
    if v.size == 0:
        return "-"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if v.size > 1 else f"{v[0]:.{digits}f}"


def collect(out: Path) -> dict:
    """Every report under OUT, grouped by (method, policy)."""
    groups: dict[str, list[dict]] = {}
    for p in sorted(out.glob("*-seed*/eval-*/report.json")):
        method = p.parent.parent.name.rsplit("-seed", 1)[0]
        policy = p.parent.name.removeprefix("eval-")
        r = json.loads(p.read_text())
        r["_seed"] = int(p.parent.parent.name.rsplit("-seed", 1)[1])
        groups.setdefault(f"{method} / {policy}", []).append(r)

    def order(name: str):
        method, policy = name.split(" / ")
        base = method.split("-eps")[0]
        return (METHODS.index(base) if base in METHODS else len(METHODS), method,
                policy != "max_prob", policy)

    return {k: groups[k] for k in sorted(groups, key=order)}


def _find(r: dict, attack: str, eps: float) -> dict | None:
    for a in r["attacks"]:
        if a["attack"] == attack and abs(a["eps"] - eps) < 1e-9:
            return a
    return None


def _pick(m: dict, where: str) -> dict:
    return m["policy"] if where == "policy" else m["exits"][-1]


def _cell(ms: list[dict]) -> str:
    """macro-F1 mean ± std and accuracy mean, of figures from several seeds."""
    if not ms:
        return "-"
    return f"{_ms([m['macro_f1'] for m in ms], 1, 3)} ({_ms([m['accuracy'] for m in ms], 100, 1)}%)"


def table(out: Path, note: str) -> str:
    groups = collect(out)
    if not groups:
        return "no reports yet\n"
    any_r = next(iter(groups.values()))[0]
    eps = sorted({a["eps"] for a in any_r["attacks"] if a["attack"] == "max_avg"})
    lines = [f"Robustness on MIT-BIH DS2 ({note}); host {any_r['host']['cpu']}, "
             f"{any_r['host']['threads']} thread(s). Mean ± std over seeds (n = seeds): macro-F1 "
             "over N/S/V/F, accuracy in brackets; Linf budgets in mV on the waveform, RR context "
             "untouched.", ""]

    def block(title, cols, cell):
        lines.extend([f"**{title}**", "", "| method / policy | n | " + " | ".join(cols) + " |",
                      "|" + "---|" * (2 + len(cols))])
        for name, rs in groups.items():
            lines.append(f"| {name} | {len(rs)} | " + " | ".join(cell(rs, c) for c in cols) + " |")
        lines.append("")

    block("Clean", ["final exit", "deployed policy"],
          lambda rs, c: _cell([_pick(r["clean"], "final" if c == "final exit" else "policy")
                               for r in rs]))

    def attacked(attack, where):
        def cell(rs, c):
            found = [_find(r, attack, float(c.split(" ")[0])) for r in rs]
            return _cell([_pick(a, where) for a in found if a is not None])
        return cell

    cols = [f"{e:g} mV" for e in eps]
    block("Max-average PGD, final exit", cols, attacked("max_avg", "final"))
    block("Max-average PGD, deployed policy", cols, attacked("max_avg", "policy"))
    block("Policy-aware PGD, deployed policy", cols, attacked("policy", "policy"))
    block("Universal perturbation (fitted on DS1), deployed policy", cols,
          attacked("universal", "policy"))
    block("Square attack (black-box, through the runtime), deployed policy", cols,
          attacked("square", "policy"))

    classes = ("N", "S", "V", "F")

    def sens(rs, c):
        where, _, cls = c.partition(" ")
        ms = [_pick(r["clean"], "final") if where == "clean" else
              _pick(_find(r, "max_avg", max(eps)), "final") for r in rs]
        return _ms([m["sensitivity"].get(cls, float("nan")) for m in ms], 100, 0)

    block(f"Per-class sensitivity (%) of the final exit, clean and under max-average PGD at "
          f"{max(eps):g} mV", [f"clean {c}" for c in classes] + [f"attacked {c}" for c in classes],
          sens)

    def noise(rs, c):
        snr = float(c.split(" ")[0])
        return _cell([n["policy"] for r in rs for n in r["noise"] if n["snr_db"] == snr])

    block("Synthetic muscle noise (nst SNR), deployed policy", ["6 dB", "0 dB"], noise)

    def cost(rs, c):
        slow = [next(a for a in r["attacks"] if a["attack"] == "slowdown") for r in rs]
        if c == "latency clean":  # timed alternately with the attacked windows, one loop
            return _ms([a["latency_clean_us"] for a in slow], 1, 0)
        if c == "latency slowdown":
            return _ms([a["latency_us"] for a in slow], 1, 0)
        if c == "ratio":
            return _ms([a["latency_ratio"] for a in slow], 1, 2)
        if c == "MACs ratio":
            return _ms([a["mean_macs"] / r["clean"]["mean_macs"] for a, r in zip(slow, rs)], 1, 2)
        src = [r["clean"] for r in rs] if c == "exits clean" else slow
        hs = np.array([m["exit_histogram"] for m in src])
        return " / ".join(f"{100 * v:.0f}" for v in hs.mean(0))

    block(f"Deployed cost, clean vs DeepSloth at {max(eps):g} mV (batch-1 latency in us through "
          "onnxruntime, clean and attacked windows timed alternately in one loop; exits taken "
          "in %, mean over seeds)",
          ["latency clean", "latency slowdown", "ratio", "MACs ratio", "exits clean",
           "exits slowdown"], cost)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mitdb", type=Path, default=Path("../shared/data/mitdb"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--quick", action="store_true", help="the reduced settings (see above)")
    ap.add_argument("--train-eps", type=float, default=DEFAULT_TRAIN_EPS,
                    help="training attack budget (mV) of rdi/neokd (ima: its largest margin, x2); "
                         "runs with another value are named METHOD-epsE")
    ap.add_argument("--no-ensemble", action="store_true",
                    help="skip the standard model's ensemble-policy bundle")
    ap.add_argument("--recipe", choices=tuple(RECIPES), default="default",
                    help="how every model is trained (see above); give each recipe its own --out")
    ap.add_argument("--morph", choices=("follows", "held"), default="follows",
                    help="the morphology channels under attack and noise: recomputed from the "
                         "waveform (follows, as the device does) or held at their clean values; "
                         "held reports go to eval-POLICY-held/ (table rows POLICY-held)")
    ap.add_argument("--train-morph", choices=("follows", "held"), default="follows",
                    help="with --recipe ranked-first: the training attacks of rdi/neokd/ima "
                         "recompute the morphology channels from the perturbed waveform "
                         "(follows) or hold them (held; runs named METHOD-trainheld)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1,
                    help="processes taking (method, seed) trials side by side on this machine")
    ap.add_argument("--storage", default=None,
                    help="the Optuna study's database: default sqlite:///OUT/search.db; a "
                         "postgresql:// or mysql:// URL shared by several machines")
    ap.add_argument("--device", default="auto", help="training: auto, cpu, cuda or cuda:N")
    ap.add_argument("--table-only", action="store_true", help="only (re)write the table")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    plan = Plan.make(args.quick, args.train_eps, args.recipe, args.train_morph)
    note = ("QUICK: a third of the DS1 beats of every record, " + plan.describe() + ", 2-step "
            "training attacks, 300 attacked windows, 10 PGD steps, 100 Square queries" if args.quick else
            "full: all of DS1, " + plan.describe() + ", 5-step training attacks, 1000 attacked "
            "windows, 20 PGD steps, 300 Square queries") + (
            f"; training eps {DEFAULT_TRAIN_EPS:g} mV (ima: margins up to "
            f"{2 * DEFAULT_TRAIN_EPS:g} mV) unless the name says -epsE")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        if not (args.mitdb / "RECORDS").is_file() and not any(args.mitdb.glob("*.hea")):
            print(f"error: no MIT-BIH records in {args.mitdb} (give --mitdb)", file=sys.stderr)
            return 2
        from edgeexit.search import default_storage, run_grid

        train_path, test_path = _data(args.mitdb, args.out, plan)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        base = {"train": str(train_path.resolve()), "test": str(test_path.resolve()),
                "out": str(args.out.resolve()), "plan": dataclasses.asdict(plan),
                "threads": args.threads, "morph_follows": args.morph == "follows",
                "device": args.device}
        jobs = grid(methods, [int(s) for s in args.seeds.split(",")], not args.no_ensemble, base)
        done = run_grid(jobs, run_trial, storage=args.storage or default_storage(args.out),
                        study=f"robust-benchmark-{args.recipe}-{args.morph}"
                              + ("-quick" if args.quick else ""),
                        workers=args.workers)
        if done.pending:
            print(f"error: trials not done: {', '.join(done.pending)} (see the log; rerun to "
                  "retry them)", file=sys.stderr)
            return 1
    text = table(args.out, note)
    (args.out / "table.md").write_text(text)
    (args.out / "table.json").write_text(json.dumps(
        {k: [{"seed": r["_seed"], "clean": r["clean"], "attacks": r["attacks"],
              "noise": r["noise"], "sanity": r["sanity"]} for r in v]
         for k, v in collect(args.out).items()}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

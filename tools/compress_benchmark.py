"""Compression-robustness benchmark on MIT-BIH (DS1 train, DS2 test).

Pruning ratios x fine-tuning {standard, adv, onmanifold} of one standard model, each measured on
the same DS2 windows: clean accuracy and macro-F1 (N/S/V/F), max-average PGD at 0.1 and 0.2 mV
(Linf, the waveform only; the RR context is never attacked), the on-manifold latent attack (scored
on the windows whose latent label it keeps), synthetic muscle noise at 6 and 0 dB, MACs, and the
batch-1 LiteRT latency of the exported bundle (fp32, rpi4 preset, max_prob thresholds calibrated
on the DS1 validation records): the monolithic graph and the early-exit policy. All latencies of
the table are measured at the end in ONE run: every bundle in turn, round after round, so the
machine's noise hits every row alike; medians over the rounds.

Steps: the base model (``--checkpoint``, or trained here on DS1: 6 epochs, seed 0) -> the VAE of
the DS1 signal (``OUT/vae.pt``, shared by every row) -> for every (ratio, fine-tuning): prune,
fine-tune, evaluate, export (``OUT/r<ratio>-<finetune>/``; skipped when its files exist, so a run
can be resumed or split across shells and merged with ``--table-only``) -> the latency round ->
``OUT/table.md`` and ``OUT/table.json``. The rows are trials of an Optuna study
(:func:`edgeexit.search.run_grid`): ``--workers`` processes take them side by side; the study
lives in ``--storage`` (default the SQLite file OUT/search.db; a PostgreSQL or MySQL URL spreads
them over every machine that runs this same command with OUT on a shared file system; each
waits until every row is done, then times all bundles itself: compare latency tables of one
machine only, docs/guides/scale-out.md).

    .venv/bin/python tools/compress_benchmark.py --mitdb ../shared/data/mitdb --out runs/compress --quick
    .venv/bin/python tools/compress_benchmark.py --mitdb ../shared/data/mitdb --out runs/compress \\
        --checkpoint runs/robust-full/standard-seed0/model.pt

Default (subsampled to fit ~90 minutes on 2 cores): fine-tuning seeds 0, 1, 2 of the same base
model on 12,000 class-stratified DS1 beats for 3 epochs (adv/onmanifold: 0.1 mV, 5-step PGD),
800 attacked DS2 windows (class-stratified), 20 PGD steps, VAE on 10,000 beats; rows give mean
± std over the seeds, and the latency of the first seed's bundle. Quick: ratios 0 and 0.75, one
seed, 3,000 beats, 2 epochs, 2-step training attacks, 200 windows, 10 PGD steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("compress_benchmark")

FINETUNES = ("standard", "adv", "onmanifold")


@dataclasses.dataclass(frozen=True)
class Plan:
    ratios: tuple[float, ...]
    seeds: tuple[int, ...]
    train_limit: int
    epochs: int
    attack_steps: int
    eval_limit: int
    eval_steps: int
    vae_limit: int
    latency_rounds: int
    latency_windows: int

    @classmethod
    def make(cls, quick: bool, ratios: tuple[float, ...] | None,
             seeds: tuple[int, ...] | None) -> Plan:
        if quick:
            return cls(ratios or (0.0, 0.75), seeds or (0,), 3000, 2, 2, 200, 10, 3000, 3, 200)
        return cls(ratios or (0.0, 0.5, 0.75, 0.9), seeds or (0, 1, 2), 12000, 3, 5, 800, 20,
                   10000, 5, 400)

    def describe(self) -> str:
        return (f"fine-tuning seeds {', '.join(map(str, self.seeds))} (mean ± std over them; "
                f"latency of the first seed's bundles) on {self.train_limit} class-stratified "
                f"DS1 beats for {self.epochs} "
                f"epochs ({self.attack_steps}-step PGD at 0.1 mV for adv/onmanifold), "
                f"{self.eval_limit} class-stratified DS2 windows attacked, {self.eval_steps} PGD "
                f"steps, VAE on {self.vae_limit} DS1 beats; latency: {self.latency_rounds} rounds "
                f"of {self.latency_windows} DS2 windows per bundle")



def base_model(args, out: Path) -> Path:
    """The model to compress: given, or trained here on DS1 (standard, 6 epochs, seed 0)."""
    if args.checkpoint is not None:
        return args.checkpoint
    path = out / "base" / "model.pt"
    if path.is_file():
        return path
    from edgeexit.cv import run_training
    from edgeexit.data import DataSpec
    from edgeexit.train import TrainConfig

    log.info("training the base model on DS1 (standard resnet1d, 6 epochs)")
    run_training(DataSpec(source=str(args.mitdb)),
                 TrainConfig(model="resnet1d", epochs=6, seed=0, threads=args.threads), path.parent)
    return path


def _eval_config(plan: Plan, vae: Path, threads: int):
    from edgeexit.robust.evaluate import EvalConfig

    return EvalConfig(eps=(0.1, 0.2), sanity_eps=None, attacks=("max_avg", "onmanifold"),
                      steps=plan.eval_steps, vae=str(vae), noise=("ma",), snr_db=(6.0, 0.0),
                      limit=plan.eval_limit, threads=threads, seed=0)


def _export(ckpt: Path, bundle: Path) -> None:
    from edgeexit.export.bundle import ExportConfig, export_bundle

    if not (bundle / "manifest.json").is_file():
        export_bundle(ckpt, bundle, ExportConfig(target="rpi4", formats=("tflite",),
                                                 precision="fp32"))


def run_row(name: str, ratio: float | None, finetune: str | None, base: Path, vae: Path, spec,
            train_set, plan: Plan, out: Path, threads: int, seed: int = 0,
            bundle: bool = True, device: str = "auto") -> Path:
    """Prune + fine-tune (or take the base as is), evaluate and export one row."""
    import torch

    from edgeexit.checkpoint import load_checkpoint
    from edgeexit.compress.finetune import FinetuneConfig
    from edgeexit.compress.finetune import finetune as run_finetune
    from edgeexit.compress.prune import PruneConfig, prune_model
    from edgeexit.robust.evaluate import evaluate

    row = out / name
    report = row / "evaluate" / "report.json"
    t0 = time.perf_counter()
    ckpt = base
    if finetune is not None:
        ckpt = row / "model.pt"
        if not ckpt.is_file():
            ck = load_checkpoint(base)
            pconf = PruneConfig(ratio=ratio)
            pruned = prune_model(ck.model, pconf, torch.from_numpy(train_set.x[:2]))
            fconf = FinetuneConfig(finetune, epochs=plan.epochs, attack_steps=plan.attack_steps,
                                   seed=seed, threads=threads, device=device)
            run_finetune(ck.model, train_set, fconf, meta=ck.meta, vae=vae, out_dir=row,
                         data_spec=spec, extra_meta={"compression": {
                             "source_checkpoint": str(base), "prune": pconf.to_dict(),
                             "finetune": fconf.to_dict(), "pruning": pruned.to_dict()}})
            log.info("%s: pruned and fine-tuned in %.0f s", name, time.perf_counter() - t0)
    if not report.is_file():
        evaluate(ckpt, data=spec, config=_eval_config(plan, vae, threads), out_dir=row / "evaluate")
    if bundle:
        _export(ckpt, row / "bundle")
    log.info("%s: done in %.0f s", name, time.perf_counter() - t0)
    return row


def row_trial(p: dict) -> dict:
    """One trial of the grid: :func:`run_row` of one (ratio, fine-tuning, seed), on the
    fine-tuning beats the main process wrote to ``p["train"]``."""
    import torch

    from edgeexit.data import DataSpec
    from edgeexit.data.dataset import load_npz

    torch.set_num_threads(p["threads"])
    row = run_row(p["name"], p["ratio"], p["finetune"], Path(p["base"]), Path(p["vae"]),
                  DataSpec.from_dict(p["spec"]), load_npz(p["train"]), Plan(**p["plan"]),
                  Path(p["out"]), p["threads"], p["seed"], p["bundle"], p["device"])
    return {"row": str(row)}


def latency_round(rows: list[Path], x: np.ndarray, plan: Plan, threads: int) -> dict:
    """Every bundle's policy and monolithic batch-1 latency, bundle after bundle, round after
    round, in this one process; medians over the rounds of each bundle's per-round means."""
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.profile import bench_engine

    engines = {r.name: Engine.from_bundle(r / "bundle", backend="litert", threads=threads,
                                          load_monolithic=True) for r in rows}
    per: dict[str, dict[str, list]] = {n: {"policy": [], "monolithic": [], "exits": []}
                                       for n in engines}
    for k in range(plan.latency_rounds):
        for n, engine in engines.items():
            b = bench_engine(engine, x, warmup=20).to_dict()
            per[n]["policy"].append(b["latency_us"]["policy"]["mean"])
            per[n]["monolithic"].append(b["latency_us"]["monolithic"]["mean"])
            per[n]["exits"].append(b["exit_fractions"])
        log.info("latency round %d/%d done", k + 1, plan.latency_rounds)
    return {n: {"policy_us": statistics.median(v["policy"]),
                "monolithic_us": statistics.median(v["monolithic"]),
                "exit_fractions": np.mean(v["exits"], axis=0).tolist(),
                "rounds": plan.latency_rounds, "windows": len(x)}
            for n, v in per.items()}


# -- the table -----------------------------------------------------------------------------------


def _final(m: dict) -> tuple[float, float]:
    e = m["exits"][-1]
    return e["accuracy"], e["macro_f1"]


def _find(r: dict, attack: str, eps: float | None = None) -> dict | None:
    for a in r["attacks"]:
        if a["attack"] == attack and (eps is None or abs(a["eps"] - eps) < 1e-9):
            return a
    return None


def _cell(ms: list[dict]) -> str:
    """macro-F1 mean ± std (accuracy mean) of the final exit over the seeds' figures."""
    ms = [m for m in ms if m is not None]
    if not ms:
        return "-"
    f1 = np.array([_final(m)[1] for m in ms])
    acc = np.mean([_final(m)[0] for m in ms])
    spread = f" ± {f1.std():.3f}" if len(ms) > 1 else ""
    return f"{f1.mean():.3f}{spread} ({100 * acc:.1f}%)"


def group_name(row_name: str) -> str:
    """``r0.75-adv-s1`` -> ``r0.75-adv`` (the seeds of one setting form one table row)."""
    head, sep, tail = row_name.rpartition("-s")
    return head if sep and tail.isdigit() else row_name


def collect(out: Path) -> dict[str, list[dict]]:
    """Every row's evaluate report under OUT, grouped by setting, in table order."""
    groups: dict[str, list[dict]] = {}
    for p in sorted(out.glob("*/evaluate/report.json")):
        row = p.parent.parent
        groups.setdefault(group_name(row.name), []).append(
            {"name": row.name, "dir": row, "report": json.loads(p.read_text())})

    def order(name: str):
        if name == "original":
            return (-1.0, 0)
        ratio, _, ft = name[1:].partition("-")
        return (float(ratio), FINETUNES.index(ft) if ft in FINETUNES else len(FINETUNES))

    return {k: groups[k] for k in sorted(groups, key=order)}


def table(out: Path, note: str, latency: dict | None) -> str:
    groups = collect(out)
    if not groups:
        return "no rows yet\n"
    host = next(iter(groups.values()))[0]["report"]["host"]
    lines = [
        (f"Compression and robustness on MIT-BIH DS2 ({note}); host {host['cpu']}, "
         f"{host['threads']} thread(s). Final exit: macro-F1 over N/S/V/F, mean ± std over the "
         "fine-tuning seeds (n), accuracy in brackets. Budgets: Linf mV on the waveform (RR "
         "context untouched); on-manifold: latent Linf eta 0.5, scored on the windows whose latent "
         "label is kept (kept share in brackets). MACs of the model as one graph. Latency: LiteRT "
         "fp32, batch 1, us, medians over rounds, every bundle measured in the same run; policy: "
         "max_prob thresholds calibrated on the DS1 validation records, exits taken in %."),
        "",
        ("| model | n | MACs | clean | PGD 0.1 mV | PGD 0.2 mV | on-manifold | noise 6 dB | "
         "noise 0 dB | monolithic | policy | policy exits |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_macs = _macs(out / "original")
    for name, rows in groups.items():
        reports = [r["report"] for r in rows]
        first = rows[0]
        macs = _macs(first["dir"])
        macs_txt = "-" if macs is None else f"{macs:,}" + (
            "" if base_macs in (None, macs) else f" ({100 * macs / base_macs:.0f}%)")
        onm = [_find(r, "onmanifold") for r in reports]
        kept = [a.get("kept_fraction", 0.0) for a in onm if a is not None]
        noise = [{n["snr_db"]: n for n in r["noise"]} for r in reports]
        lat = (latency or {}).get(first["name"])
        lat_txt = "- | - | -" if lat is None else (
            f"{lat['monolithic_us']:.1f} | {lat['policy_us']:.1f} | "
            + " / ".join(f"{100 * f:.0f}" for f in lat["exit_fractions"]))
        lines.append(
            f"| {name} | {len(rows)} | {macs_txt} | {_cell([r['clean'] for r in reports])} | "
            f"{_cell([_find(r, 'max_avg', 0.1) for r in reports])} | "
            f"{_cell([_find(r, 'max_avg', 0.2) for r in reports])} | "
            f"{_cell(onm)}" + (f" [{100 * np.mean(kept):.0f}%]" if kept else "")
            + f" | {_cell([n.get(6.0) for n in noise])} | {_cell([n.get(0.0) for n in noise])} | "
            + lat_txt + " |")
    return "\n".join(lines) + "\n"


def _macs(row: Path) -> int | None:
    """MACs of a row's model as one graph (the bundle manifest's monolithic entry)."""
    from edgeexit.runtime.manifest import read_manifest

    bundle = row / "bundle"
    if not (bundle / "manifest.json").is_file():
        return None
    mono = read_manifest(bundle).monolithic
    return None if mono is None else mono.macs


def _run_grid(args, plan: Plan, base: Path, vae: Path, spec, train_set) -> list[Path]:
    """Every (seed, ratio, fine-tuning) row through the search engine; returns the rows of the
    first seed (the ones with bundles, timed in the latency round)."""
    from edgeexit.errors import EdgeExitError
    from edgeexit.search import Job, default_storage, run_grid

    train_path = args.out / "data" / "finetune-train.npz"
    if not train_path.is_file():
        train_set.save_npz(train_path)
    common = {"base": str(base.resolve()), "vae": str(vae.resolve()), "spec": spec.to_dict(),
              "train": str(train_path.resolve()), "plan": dataclasses.asdict(plan),
              "out": str(args.out.resolve()), "threads": args.threads, "device": args.device}
    finetunes = [f.strip() for f in args.finetunes.split(",") if f.strip()]
    jobs = [Job(f"r{ratio:g}-{ft}-s{seed}", {**common, "name": f"r{ratio:g}-{ft}-s{seed}",
                                             "ratio": ratio, "finetune": ft, "seed": seed,
                                             "bundle": i == 0})
            for i, seed in enumerate(plan.seeds) for ratio in plan.ratios for ft in finetunes]
    done = run_grid(jobs, row_trial, storage=args.storage or default_storage(args.out),
                    study=f"compress-benchmark-{base.resolve()}", workers=args.workers)
    if done.pending:
        raise EdgeExitError(f"rows not done: {', '.join(done.pending)} (see the log; rerun to "
                            "retry them)")
    return [Path(done.results[j.key]["row"]) for j in jobs if j.params["bundle"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mitdb", type=Path, default=Path("../shared/data/mitdb"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="the standard model to compress (default: train one on DS1 here)")
    ap.add_argument("--ratios", default=None, help="pruning ratios (default 0,0.5,0.75,0.9)")
    ap.add_argument("--seeds", default=None, help="fine-tuning seeds (default 0,1,2; quick: 0)")
    ap.add_argument("--finetunes", default=",".join(FINETUNES))
    ap.add_argument("--quick", action="store_true", help="the reduced settings (see above)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1,
                    help="processes taking rows side by side on this machine")
    ap.add_argument("--storage", default=None,
                    help="the Optuna study's database: default sqlite:///OUT/search.db; a "
                         "postgresql:// or mysql:// URL shared by several machines")
    ap.add_argument("--device", default="auto",
                    help="fine-tuning and the VAE: auto, cpu, cuda or cuda:N")
    ap.add_argument("--table-only", action="store_true", help="only (re)write the table")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ratios = tuple(float(r) for r in args.ratios.split(",")) if args.ratios else None
    seeds = tuple(int(v) for v in args.seeds.split(",")) if args.seeds else None
    plan = Plan.make(args.quick, ratios, seeds)
    note = ("QUICK: " if args.quick else "") + plan.describe()
    args.out.mkdir(parents=True, exist_ok=True)
    latency_path = args.out / "latency.json"
    if not args.table_only:
        import torch

        from edgeexit.checkpoint import load_checkpoint
        from edgeexit.compress import manifold
        from edgeexit.data import load_train_test, stratified_sample
        from edgeexit.errors import EdgeExitError

        torch.set_num_threads(args.threads)
        if args.checkpoint is None and not (args.mitdb / "RECORDS").is_file() and not any(
                args.mitdb.glob("*.hea")):
            print(f"error: no MIT-BIH records in {args.mitdb} (give --mitdb)", file=sys.stderr)
            return 2
        t_all = time.perf_counter()
        base = base_model(args, args.out)
        ck = load_checkpoint(base)
        spec = ck.data_spec(None)
        train_full, test = load_train_test(spec)
        train_set = stratified_sample(train_full, plan.train_limit, 0)
        vae_path = args.out / "vae.pt"
        if not vae_path.is_file():
            vset = stratified_sample(train_full, plan.vae_limit, 1)
            vae = manifold.train_vae(vset.x, vset.y, manifold.VAEConfig(seed=0),
                                     signal_channels=int(ck.input_spec.get("signal_channels", 1)),
                                     num_classes=len(ck.classes))
            manifold.save_vae(vae_path, vae, meta={"trained_on": vset.describe()})
        rows = [run_row("original", None, None, base, vae_path, spec, train_set, plan, args.out,
                        args.threads)]
        try:
            rows += _run_grid(args, plan, base, vae_path, spec, train_set)
        except EdgeExitError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        x = stratified_sample(test, plan.latency_windows, 2).x.astype(np.float32)
        latency = latency_round(rows, x, plan, args.threads)
        latency_path.write_text(json.dumps(latency, indent=1))
        log.info("benchmark done in %.0f s", time.perf_counter() - t_all)
    latency = json.loads(latency_path.read_text()) if latency_path.is_file() else None
    text = table(args.out, note, latency)
    (args.out / "table.md").write_text(text)
    (args.out / "table.json").write_text(json.dumps(
        {"note": note, "latency": latency,
         "rows": {g: [{"name": r["name"], "clean": r["report"]["clean"],
                       "attacks": r["report"]["attacks"], "noise": r["report"]["noise"]}
                      for r in rows] for g, rows in collect(args.out).items()}}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

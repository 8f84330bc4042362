"""The device-path defence (``ctxadv``) on MIT-BIH: fine-tune, then measure against the context.

Two steps, each resumable (a run whose output exists is skipped):

``finetune``: fine-tunes DS1-trained checkpoints (e.g. the shared /work/models/standard-seedN)
with ``ctxadv`` (or ``rdi``, ``--timing-ms 0``; or ``neokd``, ``--method neokd``: NEO-KD's loss
with the same training attack) on DS1 (the records the checkpoint's training held out for
validation stay held out: same seed, same split), into OUT/<name>-seedN/ (``ctxadv<ms>``,
``rdift``, ``neokdft``).

``measure``: the final exit of every model, on DS1's held-out validation records (``--split
val``: what chooses the defence, never DS2) or on DS2 (``--split test``), clean and under

- ``pgd``: final-exit PGD on the waveform (Linf eps mV), RR channels held, morphology channels
  recomputed from the attacked waveform (today's window-level threat model);
- ``context``: the same PGD that also moves the beat's and its neighbours' R-peak detections by
  up to ``--eval-timing-ms`` each, the RR channels recomputed from the moved detections and the
  window re-cut (:func:`edgeexit.robust.timing.context_attack`): the device path's context,
  window by window (no detector; the stream-level attacks of issue 27 part A replace it);
- ``noise``: synthetic muscle noise at 6 dB on the window (morphology recomputed).

It writes a results table (``edgeexit.results``): accuracy, macro-F1 (N/S/V/F), S and V
sensitivity per model and input, and the mean and spread over the seeds of each method.

    PYTHONPATH=. .venv/bin/python tools/defence_bench.py finetune --base /work/models \\
        --seeds 0 --timing-ms 25 --epochs 1 --out runs/defence
    PYTHONPATH=. .venv/bin/python tools/defence_bench.py measure --split val --limit 2000 \\
        --model standard-seed0=/work/models/standard-seed0/model.pt \\
        --model ctxadv25-seed0=runs/defence/ctxadv25-seed0/model.pt --out results/defence_val.json

``--quick``: 300 windows, 5 PGD steps (a smoke run, not a figure).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("defence_bench")


def finetune_one(base: Path, seed: int, timing_ms: float, epochs: int, steps: int, eps: float,
                 out: Path, threads: int, train_limit: int | None, method: str = "auto",
                 keep: tuple[str, ...] = (), keep_max_loss: float = 2.0) -> Path:
    """``method``: ``auto`` (``ctxadv`` with a timing budget, else ``rdi``) or ``neokd``;
    ``keep``: classes whose validation sensitivity the fine-tune keeps at the base model's."""
    import dataclasses

    import torch

    from edgeexit.checkpoint import load_checkpoint
    from edgeexit.compress.finetune import FinetuneConfig, train_config
    from edgeexit.data import load_split, stratified_index
    from edgeexit.train import recorded_train_config, train
    from edgeexit.training.data import split_validation

    torch.set_num_threads(threads)
    if (out / "model.pt").exists():
        log.info("%s exists: skipped", out)
        return out / "model.pt"
    ck = load_checkpoint(base)
    spec = ck.data_spec(None)
    # the records the checkpoint's training held out stay held out (its seed, its split)
    fit_part, val_part = split_validation(load_split(spec, "train"), recorded_train_config(ck.meta))
    if train_limit:
        fit_part = fit_part.subset(stratified_index(fit_part, train_limit, seed))
    kind = "ctxadv" if timing_ms > 0 and method != "neokd" else "adv"
    conf = FinetuneConfig(kind, epochs=epochs, eps=eps, attack_steps=steps,
                          timing_ms=timing_ms if kind == "ctxadv" else 25.0, seed=seed,
                          threads=threads, keep_sensitivity=keep, keep_max_loss=keep_max_loss)
    tc = train_config(conf, ck.meta)
    if method == "neokd":  # NEO-KD's loss, the rdi fine-tune's attack (eps, steps)
        from edgeexit.robust.methods import make_method_config

        tc = dataclasses.replace(tc, method="neokd", method_config=make_method_config(
            "neokd", {"eps": float(eps), "steps": int(steps)}))
    t0 = time.perf_counter()
    train(fit_part, tc, val=val_part, model=ck.model, out_dir=out,
          data_spec=spec, meta={"finetuned_from": str(base), "finetune": conf.to_dict(),
                                "method": tc.method, "train_limit": train_limit})
    log.info("%s: %.0f s", out, time.perf_counter() - t0)
    return out / "model.pt"


_DATA: dict = {}


def _inputs(ckpt, split: str, limit: int, seed: int):
    """The windows (a seeded uniform sample) and their morphology templates (loaded once per
    data spec and validation split)."""
    held_out = ckpt.meta.get("train_config", {}).get("seed") if split == "val" else None
    key = (repr(ckpt.data_spec(None)), split, repr(held_out), limit, seed)
    if key not in _DATA:
        _DATA[key] = _load_inputs(ckpt, split, limit, seed)
    return _DATA[key]


def _load_inputs(ckpt, split: str, limit: int, seed: int):
    from edgeexit.data import load_split
    from edgeexit.robust.context import MorphContext, record_templates
    from edgeexit.train import recorded_train_config
    from edgeexit.training.data import split_validation

    spec = ckpt.data_spec(None)
    if split == "val":  # the records the checkpoint's training held out (DS1)
        full = load_split(spec, "train")
        full = split_validation(full, recorded_train_config(ckpt.meta))[1]
    else:
        full = load_split(spec, "test")
    morph = MorphContext.of(full)
    templates = None if morph is None else record_templates(full, morph.r_offset)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(full), min(limit, len(full)), replace=False))
    return full.subset(idx), None if templates is None else templates[idx]


def _scores(y, pred, classes) -> dict:
    from edgeexit.metrics import classification_report, headline_macro_f1

    r = classification_report(y, pred, classes)
    pc = r["per_class"]
    return {"accuracy": r["accuracy"], "macro_f1": headline_macro_f1(r),
            "S_sens": pc.get("S", {}).get("sensitivity"), "V_sens": pc.get("V", {}).get("sensitivity")}


def measure_one(path: Path, split: str, limit: int, seed: int, eps_list, timing_ms: float,
                steps: int) -> dict:
    import torch

    from edgeexit.checkpoint import load_checkpoint
    from edgeexit.robust.attacks import PGD
    from edgeexit.robust.context import MorphContext
    from edgeexit.robust.noise import add_noise
    from edgeexit.robust.timing import context_attack

    ck = load_checkpoint(path)
    model = ck.model.eval()
    data, templates = _inputs(ck, split, limit, seed)
    morph = MorphContext.of(data)

    def final(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(x[i:i + 512]))[-1].argmax(1).numpy()
                                   for i in range(0, len(x), 512)])

    def score(x):
        return _scores(data.y, final(x), data.classes)

    rows = {"clean": score(data.x)}
    xt = data.x if morph is None else morph.attach(data, templates)
    for eps in eps_list:
        attack = PGD(model if morph is None else morph.wrap(model), eps, steps=steps,
                     objective="final", seed=seed, signal_channels=data.signal_channels)
        xa = torch.cat([attack(torch.from_numpy(xt[i:i + 256]), torch.from_numpy(data.y[i:i + 256]))
                        for i in range(0, len(xt), 256)]).numpy()
        rows[f"pgd {eps:g}"] = score(xa if morph is None else morph.finish(xa))
        xc = context_attack(model, data, eps=eps, budget_ms=timing_ms, steps=steps,
                            objective="final", seed=seed, templates=templates)
        rows[f"context {eps:g}"] = score(xc)
    noisy = add_noise(data.x, "ma", 6.0, fs=data.fs, signal_channels=data.signal_channels,
                      seed=seed)
    rows["noise ma 6dB"] = score(noisy if morph is None else morph.finish(
        np.concatenate([noisy, templates[:, None]], axis=1)))
    return rows


def _table(results: dict[str, dict], args, commands: list[str] | None = None) -> None:
    from edgeexit.results import write_table

    inputs = list(next(iter(results.values())))
    methods: dict[str, list[str]] = {}
    for name in results:
        methods.setdefault(name.rsplit("-seed", 1)[0], []).append(name)
    cols = ["model", "seeds", "input", "accuracy", "macro-F1", "S sens", "V sens"]
    rows = []
    for method, names in methods.items():
        for inp in inputs:
            vals = {k: [results[n][inp][k] for n in names] for k in ("accuracy", "macro_f1",
                                                                        "S_sens", "V_sens")}
            rows.append([method, len(names), inp] + [
                f"{np.mean(v):.3f} +- {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"
                for v in vals.values()])
    write_table(args.out, title=f"ctxadv vs the shared models, final exit, {args.split} "
                f"({args.limit} windows)", columns=cols, rows=rows,
                command=" ".join(sys.argv), extra={"per_model": results, "eps": args.eps,
                                                   "eval_timing_ms": args.eval_timing_ms,
                                                   "steps": args.steps,
                                                   "measured_by": commands or [" ".join(sys.argv)]},
                notes="pgd: waveform only, RR held; context: waveform plus R-peak timing moved "
                      f"within {args.eval_timing_ms:g} ms per detection, RR recomputed, window "
                      "re-cut; morphology recomputed from the attacked waveform in both.")


def _merge(args) -> int:
    """One table from several ``measure`` tables (models measured in separate runs)."""
    from edgeexit.results import read_table

    results, commands, first = {}, [], None
    for path in args.inputs:
        t = read_table(path)
        extra = t.extra or {}
        first = first or extra
        if (extra.get("eps"), extra.get("eval_timing_ms"), extra.get("steps")) != (
                first.get("eps"), first.get("eval_timing_ms"), first.get("steps")):
            raise SystemExit(f"{path} was measured with other settings than {args.inputs[0]}")
        results.update(extra["per_model"])
        commands += extra.get("measured_by") or [t.provenance.get("command", "")]
    split = "val" if "val" in t.title.split("final exit, ")[1] else "test"
    limit = int(t.title.rsplit("(", 1)[1].split()[0])
    ns = argparse.Namespace(out=args.out, split=split, limit=limit, eps=first["eps"],
                            eval_timing_ms=first["eval_timing_ms"], steps=first["steps"])
    _table(results, ns, commands)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    f = sub.add_parser("finetune")
    f.add_argument("--base", default="/work/models", help="directory of standard-seedN/model.pt")
    f.add_argument("--seeds", default="0")
    f.add_argument("--timing-ms", type=float, default=25.0, help="0: rdi (waveform only)")
    f.add_argument("--method", choices=("auto", "neokd"), default="auto",
                   help="auto: ctxadv (--timing-ms > 0) or rdi; neokd: NEO-KD (timing ignored)")
    f.add_argument("--epochs", type=int, default=1)
    f.add_argument("--steps", type=int, default=3)
    f.add_argument("--eps", type=float, default=0.1)
    f.add_argument("--train-limit", type=int, default=0, help="DS1 beats used (0: all)")
    f.add_argument("--keep-sensitivity", default="",
                   help="classes (e.g. S,V) whose validation sensitivity the fine-tune keeps at "
                        "the base model's, by logit offsets")
    f.add_argument("--keep-max-loss", type=float, default=2.0,
                   help="points of validation accuracy those offsets may cost per exit")
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--out", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--model", action="append", required=True, help="NAME-seedN=PATH")
    m.add_argument("--split", choices=["val", "test"], default="val")
    m.add_argument("--limit", type=int, default=2000)
    m.add_argument("--eps", default="0.1")
    m.add_argument("--eval-timing-ms", type=float, default=25.0)
    m.add_argument("--steps", type=int, default=10)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--quick", action="store_true")
    m.add_argument("--out", required=True, help="a results/*.json table")
    j = sub.add_parser("table", help="merge measure tables (same split, eps, budgets) into one")
    j.add_argument("inputs", nargs="+")
    j.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.step == "finetune":
        for s in (int(v) for v in args.seeds.split(",")):
            name = ("neokdft" if args.method == "neokd" else
                    f"ctxadv{args.timing_ms:g}" if args.timing_ms > 0 else "rdift")
            name += "keep" if args.keep_sensitivity else ""
            finetune_one(Path(args.base) / f"standard-seed{s}" / "model.pt", s, args.timing_ms,
                         args.epochs, args.steps, args.eps, Path(args.out) / f"{name}-seed{s}",
                         args.threads, args.train_limit or None, args.method,
                         tuple(c.strip() for c in args.keep_sensitivity.split(",") if c.strip()),
                         args.keep_max_loss)
        return 0
    if args.step == "table":
        return _merge(args)
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.limit, args.steps = min(args.limit, 300), 5
    args.eps = [float(v) for v in args.eps.split(",")]
    results = {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        t0 = time.perf_counter()
        results[name] = measure_one(Path(path), args.split, args.limit, args.seed, args.eps,
                                    args.eval_timing_ms, args.steps)
        log.info("%s: %s (%.0f s)", name, results[name], time.perf_counter() - t0)
    _table(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

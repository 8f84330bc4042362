"""CPU vs GPU check: MIT-BIH ``standard`` and ``neokd`` for a few epochs on both, same seed.

For every method: train on a class-stratified sample of the DS1 records (``--beats``) with
``--device cpu`` (``--cpu-threads`` torch threads: 2 = this project's reference machine) and with
``--device cuda`` (and ``--amp bf16`` too with ``--bf16``), same seed, same data, same schedule,
and time every epoch (training and validation). The table gives per epoch and device the mean
training loss and the validation macro-F1, the largest relative loss difference GPU vs CPU, and
the speed-up per epoch (median CPU epoch time / median GPU epoch time). Written to
``results/gpu_check.json`` (edgeexit.results: the GPU named in the notes and rows, the CPU in the
provenance).

Sized to finish within about 10 minutes on one GPU host (the CPU side dominates):

    python tools/gpu_check.py --mitdb ../shared/data/mitdb
    python tools/gpu_check.py --quick --out /tmp/gpu_check.json     # synthetic beats, test model

Without a GPU it stops with status 2 (nothing to compare), unless ``--cpu-only`` (then it runs
the CPU side twice: a check of the script and of CPU determinism, not a GPU measurement).

What "close" means: on the CPU one seed gives bitwise-identical runs; on a GPU the same seed
draws the same batches, augmentation and attack starts (CPU generators), but cuDNN's kernels
differ in the last bits, so the loss curves agree to a few percent, not exactly. A large gap
(``--tolerance``, default 10% relative on any epoch's loss) makes the script exit 1.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

log = logging.getLogger("gpu_check")

REPO = Path(__file__).resolve().parent.parent


def _data(args):
    """The training beats: a stratified DS1 sample (or synthetic beats with ``--quick``)."""
    from edgeexit.data import DataSpec, load_source
    from edgeexit.data.dataset import stratified_sample
    from edgeexit.data.mitbih import DS1, load_mitbih

    if args.quick or args.mitdb is None:
        return load_source("synthetic", DataSpec(source="synthetic", n_beats=args.beats or 2000)), \
            "synthetic beats"
    ds1 = load_mitbih(args.mitdb, DS1)
    return stratified_sample(ds1, args.beats, 0), f"MIT-BIH DS1, {args.beats} stratified beats"


def run(data, method: str, device: str, amp: str, args) -> dict:
    """One training; per epoch: loss, validation macro-F1 and wall time."""
    import torch

    from edgeexit.robust.methods import make_method_config
    from edgeexit.train import TrainConfig, train

    opts = {} if method == "standard" else {"steps": args.attack_steps}
    cfg = TrainConfig(model=args.model, method=method,
                      method_config=make_method_config(method, opts), epochs=args.epochs,
                      patience=0, select="last", seed=args.seed, device=device, amp=amp,
                      threads=args.cpu_threads if device == "cpu" else None)
    stamps = [time.perf_counter()]

    def on_epoch(epoch, logits):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    r = train(data, cfg, on_epoch=on_epoch)
    secs = [b - a for a, b in zip(stamps, stamps[1:])]
    # the first epoch carries setup (model build, CUDA context, cuDNN autotuning): report it,
    # take the speed-up from the medians
    return {"method": method, "device": r.metrics["device"], "amp": amp,
            "loss": [h["loss"] for h in r.metrics["history"]],
            "val_score": [h["val_score"] for h in r.metrics["history"]], "epoch_s": secs}


def compare(cpu: dict, gpu: dict) -> tuple[float, float]:
    """(largest relative loss difference over the epochs, median-epoch speed-up)."""
    diff = max(abs(g - c) / max(abs(c), 1e-12) for c, g in zip(cpu["loss"], gpu["loss"]))
    speed = statistics.median(cpu["epoch_s"]) / statistics.median(gpu["epoch_s"])
    return diff, speed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mitdb", default=str(REPO.parent / "shared" / "data" / "mitdb"))
    ap.add_argument("--out", type=Path, default=REPO / "results" / "gpu_check.json")
    ap.add_argument("--methods", default="standard,neokd")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--beats", type=int, default=12000, help="DS1 beats (class-stratified)")
    ap.add_argument("--model", default="resnet1d")
    ap.add_argument("--attack-steps", type=int, default=5, help="neokd's PGD steps per batch")
    ap.add_argument("--cpu-threads", type=int, default=2, help="torch threads of the CPU runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="also a GPU run with --amp bf16")
    ap.add_argument("--tolerance", type=float, default=0.10,
                    help="largest relative loss difference GPU vs CPU on any epoch")
    ap.add_argument("--quick", action="store_true",
                    help="synthetic beats, test_resnet1d, 2 epochs, 2 attack steps")
    ap.add_argument("--cpu-only", action="store_true",
                    help="no GPU: run the CPU side twice (checks the script, not a GPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from edgeexit.results import write_table

    if args.quick:
        args.model, args.epochs, args.attack_steps, args.beats = "test_resnet1d", 2, 2, 2000
    if not torch.cuda.is_available() and not args.cpu_only:
        print("error: no CUDA GPU visible to PyTorch here: nothing to compare (give --cpu-only to "
              "check the script on the CPU)", file=sys.stderr)
        return 2
    if not args.quick and not Path(args.mitdb, "100.hea").is_file():
        print(f"error: no MIT-BIH records in {args.mitdb} (give --mitdb, or --quick)",
              file=sys.stderr)
        return 2
    other = "cpu" if args.cpu_only else "cuda"
    data, what = _data(args)
    rows, worst, runs = [], 0.0, []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        cpu = run(data, method, "cpu", "none", args)
        variants = [run(data, method, other, "none", args)]
        if args.bf16 and other == "cuda":
            variants.append(run(data, method, other, "bf16", args))
        runs += [cpu, *variants]
        for v in variants:
            diff, speed = compare(cpu, v)
            if v["amp"] == "none":
                worst = max(worst, diff)
            for e, (lc, lg) in enumerate(zip(cpu["loss"], v["loss"])):
                rows.append([method, v["device"], v["amp"], e + 1, round(lc, 5), round(lg, 5),
                             round(cpu["val_score"][e], 4), round(v["val_score"][e], 4),
                             round(cpu["epoch_s"][e], 2), round(v["epoch_s"][e], 2),
                             round(speed, 2), round(diff, 4)])
            log.info("%s on %s (amp %s): loss within %.2f%% of the CPU's, %.1fx faster per epoch",
                     method, v["device"], v["amp"], 100 * diff, speed)
    gpu_name = torch.cuda.get_device_name(0) if other == "cuda" else "none (--cpu-only)"
    write_table(args.out, title=f"CPU ({args.cpu_threads} threads) vs GPU ({gpu_name}): "
                                f"{what}, {args.epochs} epochs, same seed",
                columns=["method", "device", "amp", "epoch", "cpu_loss", "device_loss",
                         "cpu_val_macro_f1", "device_val_macro_f1", "cpu_epoch_s",
                         "device_epoch_s", "speedup_median_epoch", "max_rel_loss_diff"],
                rows=rows, extra={"gpu": gpu_name, "runs": runs},
                notes=f"GPU: {gpu_name}. Epoch time = training + validation; the speed-up is "
                      "the ratio of median epoch times (the first epoch carries the setup). "
                      f"neokd: {args.attack_steps}-step PGD. Tolerance {args.tolerance:.0%}.")
    print(f"wrote {args.out}; largest relative loss difference {worst:.2%}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())

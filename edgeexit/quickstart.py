"""``edgeexit quickstart``: the main job in one command, on the built-in synthetic ECG.

Stages, each reported to ``on_stage(name, result)`` as it finishes (the CLI prints one short table
per stage), all written under one output directory:

1. ``train``: a small multi-exit model on simulated patients (``OUT/model.pt``, ``metrics.json``);
2. ``compress``: the model pruned (channels removed, :mod:`edgeexit.compress.prune`) and
   fine-tuned (``OUT/compressed/model.pt``), shown next to the original: parameters, MACs, test
   accuracy, and the batch-1 latency of both as one graph in the target's format, timed
   alternately; everything after uses the compressed model. The fine-tuning is adversarial by
   default (``finetune="ctxadv"``, :mod:`edgeexit.robust.methods.ctxadv`: PGD at 0.15 mV that
   also moves the R-peak timing by up to 25 ms and the long rhythm by up to 15%, the RR context
   recomputed as the device does),
   so the deployed model is the robust one; ``finetune="standard"`` restores the plain
   cross-entropy (``--prune 0`` with ``standard`` skips the stage);
3. ``export``: per-exit segments for the target, checked against PyTorch (``OUT/bundle``, and
   ``OUT/bundle.tar.gz``);
4. ``verify``: hashes and the golden replay with every installed backend;
5. ``calibrate``: exit thresholds recalibrated on simulated patients that neither training nor
   the test set contains (:func:`edgeexit.data.load_split` ``calibration``), against each
   segment's latency measured here, with the accuracy loss bounded by a bootstrap over those
   patients (:func:`edgeexit.calibrate.calibrate_bundle`);
6. ``bench``: the test patients through the policy, all exits and the monolithic model, side by
   side (:func:`edgeexit.runtime.profile.bench_engine`, exactly what ``edgeexit bench`` runs);
7. ``evaluate``: a short robustness check of the deployed bundle (``OUT/evaluate``): policy-aware
   PGD at 0.1 mV and synthetic muscle noise at 6 dB on 300 test windows, through the runtime
   (:func:`edgeexit.robust.evaluate.evaluate`, what ``edgeexit evaluate`` runs); after a robust
   fine-tuning, the standard model that training produced (``OUT/model.pt``, in PyTorch, every
   exit averaged) is checked the same way (``OUT/evaluate-standard``), side by side;
8. ``OUT/summary.json`` and ``OUT/summary.md``: every stage's figures, with the machine they were
   measured on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from edgeexit.errors import ConfigError
from edgeexit.fileio import atomic_write, check_output_directory
from edgeexit.summary import machine_info

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
_OURS = {"model.pt", "metrics.json", "compressed", "bundle", "bundle.tar.gz", "evaluate",
         "evaluate-standard", "bundle-standard", "bundle-standard.tar.gz", "report",
         SUMMARY_JSON, SUMMARY_MD}
# the short robustness check that ends the quick start (edgeexit evaluate runs the full one)
EVAL_EPS = 0.1
EVAL_SNR_DB = 6.0
EVAL_WINDOWS = 300
FINETUNES = ("ctxadv", "standard")
ROBUST_EPOCHS = 3  # robust fine-tuning epochs (each costs about ROBUST_STEPS + 1 standard ones)
ROBUST_STEPS = 3  # PGD steps per batch of the robust fine-tuning (cost: ~4x a standard epoch)
ROBUST_TIMING_MS = 25.0  # the timing budget of the robust fine-tuning's attack
# the long-rhythm budget of the robust fine-tuning's attack (ContextAdvConfig.rhythm): the stream
# timing attack's extra detections lower the mean RR interval the model reads (avg_rr), and the
# model fine-tuned with it held turned the paced test patient's beats to F. Measured on the
# quick start (seeds 0, 1, 2, 4, 5; tools/quickstart_variants.py, results/quickstart-rhythm.json)
ROBUST_RHYTHM = 0.15
# classes whose validation sensitivity the robust fine-tune keeps at the unpruned model's, by
# per-class logit offsets (FinetuneConfig.keep_sensitivity; tools/quickstart_variants.py --keep)
ROBUST_KEEP: tuple[str, ...] = ()
# the robust fine-tuning's PGD budget (mV): above the 0.1 mV the check attacks with. Measured on
# the quick start's pruned model (fp32 ONNX, 4 synthetic test patients x 300 beats, stream PGD
# 0.1 mV end to end): 0.1 -> 66.6%, 0.15 -> 75.3%, 0.2 -> 73.8% (clean 86.6 / 83.1 / 82.9%)
ROBUST_EPS = 0.15
# Width the quick start trains each family at, before pruning half its channels. Chosen so that
# the pruned model's own compute (about 2M MACs) outweighs the fixed cost of a segment call:
# at width 1 the pruned graphs run in 11-13 us on a desktop core, a few us per segment, and the
# per-call cost eats what an early exit saves (README "Early exits that pay off").
QUICKSTART_WIDTH = {"resnet1d": 2.0, "mobilenet1d": 4.0}


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """Options of :func:`run_quickstart`.

    Attributes:
        model: model family (``resnet1d``, ``mobilenet1d``).
        width: channel-width multiplier of the trained model, before pruning (None: the
            family's entry in :data:`QUICKSTART_WIDTH`, else 1.0).
        exit_heads: early-exit heads, ``conv`` or ``linear`` (cheapest at run time).
        exits: model exits to deploy (None: all; see ``edgeexit export --exits``), or ``auto``
            (the default): export all, then keep the exits worth their call by the latencies
            measured in the calibrate stage (:func:`edgeexit.calibrate.choose_exits`) and export
            again with them.
        epochs: maximum training epochs.
        prune: fraction of channels pruned after training (0: no pruning).
        finetune: ``ctxadv`` (the default: adversarial fine-tuning whose attack also moves the
            R-peak timing, so the deployed model is robust) or ``standard`` (cross-entropy; with
            ``prune`` 0 the trained model is deployed as is).
        finetune_epochs: fine-tuning epochs of the pruned model (None: 8 for ``standard``,
            :data:`ROBUST_EPOCHS` for ``ctxadv``).
        seed: seeds the data, the weights and every sample drawn.
        threads: torch threads for training (None: torch's default).
        target: device preset of the bundle.
        margin: accuracy loss allowed against the final exit, points.
        confidence: level of the loss interval whose upper end is held within ``margin``.
        bench_backend: backend of the latency measurements (``auto``: the target's format).
        bench_threads: inference threads (None: the target's).
        evaluate: end with a short robustness check of the bundle (one attack, one noise level,
            on windows and on the continuous signal).
        stream_beats: beats of the test patients' continuous records that the check streams
            through the device path.
        meter: the bench's energy meter (``auto``: the best present, else the CPU-time estimate
            from the target's power model; ``none``: no energy phase); see ``edgeexit bench``.
        energy_seconds: metered seconds per path of the bench's energy phase.
    """

    model: str = "resnet1d"
    width: float | None = None
    exit_heads: str = "conv"
    exits: tuple[int, ...] | str | None = "auto"
    epochs: int = 12
    prune: float = 0.5
    finetune: str = "ctxadv"
    finetune_epochs: int | None = None
    seed: int = 0
    threads: int | None = None
    target: str = "rpi4"
    margin: float = 0.5
    confidence: float = 0.9
    bench_backend: str = "auto"
    bench_threads: int | None = None
    evaluate: bool = True
    stream_beats: int = 300
    meter: str = "auto"
    energy_seconds: float = 0.5

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["exits"] = list(self.exits) if isinstance(self.exits, tuple) else self.exits
        return d


def finetune_epochs(config: QuickstartConfig) -> int:
    """The fine-tuning epochs of ``config`` (see :attr:`QuickstartConfig.finetune_epochs`)."""
    if config.finetune_epochs is not None:
        return config.finetune_epochs
    return ROBUST_EPOCHS if config.finetune == "ctxadv" else 8


def quickstart_width(config: QuickstartConfig) -> float:
    """The width the quick start trains ``config.model`` at (see :data:`QUICKSTART_WIDTH`)."""
    if config.width is not None:
        return config.width
    return QUICKSTART_WIDTH.get(config.model, 1.0)


def run_quickstart(
    out: str | os.PathLike,
    config: QuickstartConfig = QuickstartConfig(),
    on_stage: Callable[[str, dict], None] | None = None,
    progress: bool = False,
) -> dict:
    """Run every stage (see the module docstring) into ``out``; returns the summary."""
    from edgeexit.data import DataSpec

    out = Path(out)
    model_config = _check_config(out, config)  # refuse bad options before training, not after
    spec = DataSpec(seed=config.seed)
    stages = _Stages(on_stage or (lambda name, result: None))
    t_all = time.perf_counter()
    deployed = _train_stage(stages, spec, model_config, config, out, progress)
    if config.prune > 0 or config.finetune == "ctxadv":
        t0 = time.perf_counter()
        result = _compress(deployed, spec, out / "compressed", config, progress)
        deployed = Path(result["checkpoint"])
        stages.done("compress", result, t0)
    bundle = out / "bundle"
    _deploy(stages, deployed, bundle, spec, config)
    _bench_stage(stages, bundle, out, config)
    if config.evaluate:
        t0 = time.perf_counter()
        standard = out / "model.pt" if config.finetune == "ctxadv" else None
        stages.done("evaluate", _short_evaluate(bundle, deployed, out, config, standard), t0)
    return _write_summary(out, config, stages, t_all)


@dataclasses.dataclass
class _Stages:
    """Each finished stage's result and seconds, in order; ``report`` is the caller's hook."""

    report: Callable[[str, dict], None]
    results: dict[str, dict] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def done(self, name: str, result: dict, t0: float) -> dict:
        """Record stage ``name`` (started at ``t0``), report it, and return its result."""
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        result = {**result, "elapsed_s": self.seconds[name]}
        self.results[name] = result
        self.report(name, result)
        return result


def _check_config(out: Path, config: QuickstartConfig):
    """Refuse a used output directory, a bad meter, width, exits or prune ratio before training;
    returns the model's configuration."""
    from edgeexit.runtime.energy import check_spec

    check_output_directory(out, _OURS, "quickstart")
    check_spec(config.meter, allow_none=True)
    if config.finetune not in FINETUNES:
        raise ConfigError(f"unknown fine-tuning {config.finetune!r}; choose one of "
                          f"{', '.join(FINETUNES)}")
    from edgeexit.models import ModelConfig, create_model

    model_config = ModelConfig(config.model, in_channels=8, num_classes=5,
                               width=quickstart_width(config), exit_heads=config.exit_heads)
    if isinstance(config.exits, tuple):
        from edgeexit.export.split import check_exits

        check_exits(config.exits, create_model(model_config).num_exits)
    elif config.exits not in (None, "auto"):
        raise ConfigError(f"exits must be 'auto', None or model exit indices, got {config.exits!r}")
    if config.prune:
        from edgeexit.compress.prune import PruneConfig

        PruneConfig(ratio=config.prune)
    return model_config


def _train_stage(stages: _Stages, spec, model_config, config: QuickstartConfig, out: Path,
                 progress: bool) -> Path:
    """Train the model into ``out``; returns its checkpoint."""
    from edgeexit.cv import run_training
    from edgeexit.train import TrainConfig

    tconf = TrainConfig(model=config.model, width=model_config.width,
                        exit_heads=config.exit_heads, epochs=config.epochs, seed=config.seed,
                        threads=config.threads)
    t0 = time.perf_counter()
    trained = run_training(spec, tconf, out, progress=progress)
    m = trained.metrics
    stages.done("train", {
        "model": m["model"]["family"], "width": m["model"]["width"], "params": m["params"],
        "best_epoch": m["best_epoch"],
        "train_beats": m["data"]["train"]["beats"], "val_beats": m["data"]["val"]["beats"],
        "test_beats": m["data"]["test"]["beats"],
        "exits": [{"index": e["index"], "cumulative_macs": e["cumulative_macs"],
                   "accuracy": e["test"]["accuracy"], "macro_f1": e["test"]["macro_f1"]}
                  for e in m["exits"]],
    }, t0)
    return trained.checkpoint


def _deploy(stages: _Stages, deployed: Path, bundle: Path, spec, config: QuickstartConfig) -> None:
    """Export, verify and calibrate the bundle; with ``exits="auto"``, again with the exits the
    first calibration found worth their call (the first is kept as ``first_calibration``)."""
    from edgeexit.data import load_split

    cal_set = load_split(spec, "calibration")
    auto = config.exits == "auto"
    first = _export_verify_calibrate(stages, deployed, bundle, cal_set,
                                     None if auto else config.exits, config)
    if not auto or first["exit_choice"] is None:
        return
    best = first["exit_choice"]["best_exits"]
    if len(best) == 1:
        log.warning("early exits do not pay on this machine (estimated %.1f us with any exit "
                    "set against %.1f us for the monolithic model): deploy the monolithic "
                    "model; the bundle keeps all exits",
                    min(o["expected_us"] for o in first["exit_choice"]["options"]
                        if len(o["exits"]) > 1), first["exit_choice"]["monolithic_us"])
    elif best != first["exits"]:
        stages.results["first_calibration"] = first
        second = _export_verify_calibrate(stages, deployed, bundle, cal_set, tuple(best), config)
        if second["exit_choice"] is not None and len(second["exit_choice"]["best_exits"]) == 1:
            log.warning("measured again with exits %s, early exits do not pay on this "
                        "machine: the monolithic model is the faster deployment", best)


def _export_verify_calibrate(stages: _Stages, deployed: Path, bundle: Path, cal_set, exits,
                             config: QuickstartConfig) -> dict:
    """The export, verify and calibrate stages with ``exits``; returns the calibrate result."""
    export = _export_stage(stages, deployed, bundle, exits, config)
    _verify_stage(stages, bundle)
    return _calibrate_stage(stages, bundle, cal_set, export["exits"], config)


def _export_stage(stages: _Stages, deployed: Path, bundle: Path, exits,
                  config: QuickstartConfig) -> dict:
    from edgeexit.export.bundle import ExportConfig, export_bundle

    t0 = time.perf_counter()
    exported = export_bundle(deployed, bundle,
                             ExportConfig(target=config.target, margin=config.margin, exits=exits))
    r = exported.report
    return stages.done("export", {
        "bundle": str(bundle), "archive": r["archive"], "target": r["target"],
        "precision": r["precision"], "formats": r["formats"],
        "parity": {fmt: {"samples": p["samples"],
                         "max_abs_err": [e["max_abs_err"] for e in p["exits"]],
                         "top1_agreement": [e["top1_agreement"] for e in p["exits"]]}
                   for fmt, p in r["parity"].items()},
        "export_thresholds": r["policy"]["thresholds"],
        "exits": r["exits"],
    }, t0)


def _verify_stage(stages: _Stages, bundle: Path) -> None:
    from edgeexit.runtime.verify import verify_bundle

    t0 = time.perf_counter()
    ver = verify_bundle(bundle)
    stages.done("verify", {"ok": ver.ok, "checks": [c["check"] for c in ver.checks if c["ok"]],
                           "failed": [c for c in ver.checks if not c["ok"]]}, t0)
    if not ver.ok:
        raise ConfigError(f"the exported bundle {bundle} failed verification: "
                          f"{[c['check'] for c in ver.checks if not c['ok']]}")


def _calibrate_stage(stages: _Stages, bundle: Path, cal_set, exits, config: QuickstartConfig) -> dict:
    """Time each segment on the calibration windows, then calibrate the thresholds against it."""
    from edgeexit.calibrate import BundleCalibrationConfig, calibrate_bundle
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.profile import bench_engine

    t0 = time.perf_counter()
    engine = Engine.from_bundle(bundle, backend=config.bench_backend,
                                threads=config.bench_threads, load_monolithic=True)
    n_cost = min(len(cal_set), 512)
    cost_bench = bench_engine(engine, cal_set.x[:n_cost].astype("float32"), warmup=50).to_dict()
    cal = calibrate_bundle(bundle, cal_set.x.astype("float32"), cal_set.y, cal_set.groups,
                           BundleCalibrationConfig(margin=config.margin,
                                                   confidence=config.confidence,
                                                   backend=config.bench_backend),
                           bench=cost_bench, source=cal_set.source)
    c = cal["policy"]["calibration"]
    choice = cal.get("exit_choice")
    return stages.done("calibrate", {
        "data": cal_set.source, "beats": len(cal_set), "records": c["records"],
        "policy": cal["policy"]["name"], "thresholds": cal["policy"]["thresholds"],
        "exits": exits,
        "segment_cost_us": [s["mean"] for s in cost_bench["latency_us"]["segments"]],
        "accuracy": c["accuracy"], "final_accuracy": c["final_accuracy"],
        "loss_points": c["loss_points"], "loss_interval": c["loss_interval"],
        "confidence": c["confidence"], "exit_fractions": c["exit_fractions"],
        "cost_ratio": c["cost_ratio"],
        "exit_choice": None if choice is None else {
            "best_exits": choice["best"]["exits"],
            "best_expected_us": choice["best"]["expected_us"],
            "monolithic_us": choice["monolithic_us"], "per_call_us": choice["per_call_us"],
            "decision_us": choice["decision_us"],
            "options": [{k: o[k] for k in ("exits", "expected_us", "feasible")}
                        for o in choice["options"]]},
    }, t0)


def _bench_stage(stages: _Stages, bundle: Path, out: Path, config: QuickstartConfig) -> None:
    """The test windows through the policy, all exits and the monolithic model (``edgeexit
    bench``), with the energy phase and the report with plots (``OUT/report``)."""
    from edgeexit.data.bench import bench_data
    from edgeexit.report import write_bench_report
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.profile import bench_engine

    t0 = time.perf_counter()
    engine = Engine.from_bundle(bundle, backend=config.bench_backend, threads=config.bench_threads,
                                load_monolithic=True)
    x, y, described = bench_data(engine, None, "test", None)
    meter, why = _meter(config, engine)
    try:
        bench = bench_engine(engine, x, y, meter=meter, energy_seconds=config.energy_seconds).to_dict()
    finally:
        if meter is not None:
            meter.close()
    bench["data"] = described
    bench["bundle"] = str(bundle)
    if meter is not None:
        bench["energy"]["chosen"] = why
    bench["report"] = write_bench_report(bench, out / "report")
    stages.done("bench", bench, t0)


def _write_summary(out: Path, config: QuickstartConfig, stages: _Stages, t_all: float) -> dict:
    """Write ``OUT/summary.json`` and ``OUT/summary.md``; returns the summary."""
    summary = {
        "command": "edgeexit quickstart",
        "config": config.to_dict(),
        "out": str(out),
        "machine": machine_info(),
        "elapsed_s": round(time.perf_counter() - t_all, 1),
        "stage_seconds": stages.seconds,
        "stages": stages.results,
    }
    text = json.dumps(summary, indent=2).encode()
    atomic_write(out / SUMMARY_JSON, lambda f: f.write(text))
    md = summary_markdown(summary).encode()
    atomic_write(out / SUMMARY_MD, lambda f: f.write(md))
    log.info("wrote %s and %s", out / SUMMARY_JSON, out / SUMMARY_MD)
    return summary


def _meter(config: QuickstartConfig, engine):
    """The bench's energy meter and why it was chosen (None for ``meter="none"``)."""
    from edgeexit.runtime.energy import open_meter

    return open_meter(config.meter, power=engine.manifest.target.power.to_dict(),
                      threads=engine.threads)


def _compress(checkpoint: Path, spec, out: Path, config: QuickstartConfig, progress: bool) -> dict:
    """Prune the trained model (when ``config.prune``), fine-tune it (robustly by default), and
    time both as one graph side by side."""
    import copy
    import tempfile

    import torch

    from edgeexit.checkpoint import load_checkpoint
    from edgeexit.compress.finetune import FinetuneConfig, finetune
    from edgeexit.compress.prune import PruneConfig, prune_model
    from edgeexit.compress.run import export_monolithic, time_side_by_side
    from edgeexit.data import load_train_test
    from edgeexit.targets import load_target

    ck = load_checkpoint(checkpoint)
    original = copy.deepcopy(ck.model)  # the model before pruning (pruning works in place)
    train_set, test_set = load_train_test(spec)
    pconf = PruneConfig(ratio=config.prune) if config.prune > 0 else None
    pruned = None if pconf is None else prune_model(ck.model, pconf,
                                                    torch.from_numpy(train_set.x[:2]))
    epochs = finetune_epochs(config)
    fconf = FinetuneConfig(config.finetune, epochs=epochs, seed=config.seed, threads=config.threads,
                           eps=ROBUST_EPS, attack_steps=ROBUST_STEPS, timing_ms=ROBUST_TIMING_MS,
                           rhythm=ROBUST_RHYTHM,
                           keep_sensitivity=ROBUST_KEEP if config.finetune == "ctxadv" else ())
    ft = finetune(ck.model, train_set, fconf, meta=ck.meta, test=test_set, out_dir=out,
                  data_spec=spec, progress=progress, reference=original,
                  extra_meta={"compression": {
                      "source_checkpoint": str(checkpoint), "finetune": fconf.to_dict(),
                      "prune": None if pconf is None else pconf.to_dict(),
                      "pruning": None if pruned is None else pruned.to_dict()}})
    fmt = load_target(config.target).runtime.format
    shape = tuple(ck.input_spec["shape"])
    with tempfile.TemporaryDirectory(prefix=".quickstart-", dir=out) as tmp:
        files = {name: export_monolithic(m.eval(), shape, Path(tmp) / name, formats=(fmt,))
                 for name, m in (("original", original), ("compressed", ck.model))}
        lat = time_side_by_side(files, test_set.x[:64].astype("float32"), runs=300,
                                threads=config.bench_threads or 1)[fmt]
    orig_test = ck.meta.get("final_test") or {}
    new_test = ft.metrics["exits"][-1]["test"]
    params = [sum(p.numel() for p in m.parameters()) for m in (original, ck.model)]
    return {
        "checkpoint": str(ft.checkpoint), "prune": config.prune, "finetune": config.finetune,
        "finetune_epochs": epochs,
        "finetune_attack": None if config.finetune == "standard" else {
            "eps_mV": ROBUST_EPS, "timing_ms": ROBUST_TIMING_MS, "steps": ROBUST_STEPS,
            "rhythm": ROBUST_RHYTHM},
        "params": params if pruned is None else [pruned.params_before, pruned.params_after],
        "macs": [ft.metrics["exits"][-1]["cumulative_macs"]] * 2 if pruned is None
        else [pruned.macs_before[-1], pruned.macs_after[-1]],
        "accuracy": [orig_test.get("accuracy"), new_test["accuracy"]],
        "macro_f1": [orig_test.get("macro_f1"), new_test["macro_f1"]],
        "latency_us": [lat["median_us"]["original"], lat["median_us"]["compressed"]],
        "latency_ratio": lat["ratio"]["compressed"], "latency_backend": lat["backend"],
    }


def _short_evaluate(bundle: Path, checkpoint: Path, out: Path, config: QuickstartConfig,
                    standard: Path | None = None) -> dict:
    """The deployed bundle on a few hundred test windows through the runtime (policy-aware PGD,
    muscle noise; ``OUT/evaluate``) and on the test patients' continuous signal through the
    device path (clean, muscle noise, white-box PGD end to end; ``OUT/evaluate/stream``); with
    ``standard`` (the trained model before the robust fine-tuning), the same for it, exported
    as an fp32 ONNX bundle (``OUT/bundle-standard``, ``OUT/evaluate-standard``), rows first."""
    result = {"rows": []}
    models = [("robust (deployed bundle)" if standard is not None else "deployed bundle",
               bundle, checkpoint, out / "evaluate")]
    if standard is not None:
        from edgeexit.export.bundle import ExportConfig, export_bundle

        export_bundle(standard, out / "bundle-standard",
                      ExportConfig(target=config.target, margin=config.margin, formats=("onnx",),
                                   precision="fp32"))
        models.insert(0, ("standard (trained model, fp32 ONNX)", out / "bundle-standard",
                          standard, out / "evaluate-standard"))
    for name, b, ck, where in models:
        # the standard bundle holds ONNX files only: its runtime is whichever runs them
        c = config if b == bundle else dataclasses.replace(config, bench_backend="auto")
        window = _window_rows(name, b, ck, where, c)
        stream = _stream_rows(name, b, ck, where / "stream", c)
        result["rows"] += window["rows"] + stream["rows"]
        result.setdefault("windows", window["windows"])
        result.setdefault("policy", window["policy"])
        result.setdefault("stream_patients", stream["patients"])
    result["stream_beats"] = config.stream_beats
    result["report"] = str(out / "evaluate" / "report.md")
    result["command"] = f"edgeexit evaluate {bundle} --out DIR"
    return result


def _row(model: str, name: str, m: dict) -> dict:
    return {"model": model, "input": name, "accuracy": m["policy"]["accuracy"],
            "macro_f1": m["policy"]["macro_f1"], "final_exit_accuracy": m["exits"][-1]["accuracy"],
            "exit_histogram": m.get("exit_histogram"), "latency_us": m.get("latency_us")}


def _window_rows(model: str, bundle: Path, checkpoint: Path, out: Path,
                 config: QuickstartConfig) -> dict:
    """Policy-aware PGD (context held) and muscle noise on test windows through the runtime."""
    from edgeexit.robust.evaluate import EvalConfig, evaluate

    ec = EvalConfig(eps=(EVAL_EPS,), sanity_eps=None, attacks=("policy",), steps=10,
                    noise=("ma",), snr_db=(EVAL_SNR_DB,), limit=EVAL_WINDOWS,
                    backend=config.bench_backend, threads=config.bench_threads or 1,
                    seed=config.seed)
    r = evaluate(bundle, checkpoint=checkpoint, config=ec, out_dir=out).report
    rows = ([_row(model, "windows: clean", r["clean"])]
            + [_row(model, f"windows: policy-aware PGD {a['eps']:g} mV (RR held)", a)
               for a in r["attacks"]]
            + [_row(model, f"windows: muscle noise {n['snr_db']:g} dB", n) for n in r["noise"]])
    return {"rows": rows, "windows": r["data"]["test"]["beats"], "policy": r["target"]["policy"]}


_STREAM_LABEL = {"timing": "timing attack", "pgd": "PGD"}


def _stream_rows(model: str, bundle: Path, checkpoint: Path, out: Path,
                 config: QuickstartConfig) -> dict:
    """The test patients' continuous records through the device path (detector, context,
    policy): clean, muscle noise, the timing attack (detector-matched bursts that the detector
    takes for beats, moving the RR context) and white-box PGD on the signal end to end
    (``rows``), and
    how many simulated patients streamed them (``patients``)."""
    from edgeexit.robust.stream.evaluate import StreamEvalConfig, evaluate_stream

    sc = StreamEvalConfig(eps=(EVAL_EPS,), attacks=("timing", "pgd"), noise=("ma",),
                          snr_db=(EVAL_SNR_DB,), synthetic_beats=config.stream_beats, steps=10, rounds=2,
                          backend=config.bench_backend, threads=config.bench_threads or 1,
                          seed=config.seed)
    r = evaluate_stream(bundle, "synthetic", checkpoint=checkpoint, config=sc, out_dir=out).report

    def row(name: str, m: dict) -> dict:
        return {"model": model, "input": name, "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"], "detection_ppv": m["detection"]["ppv"],
                "detection_sensitivity": m["detection"]["sensitivity"]}

    return {"rows": [row("stream: clean", r["clean"])]
            + [row(f"stream: muscle noise {n['snr_db']:g} dB", n) for n in r["noise"]]
            + [row(f"stream: {_STREAM_LABEL[a['attack']]} {a['eps']:g} mV end to end", a)
               for a in r["attacks"]],
            "patients": len(r["records"]["list"])}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def summary_markdown(s: dict) -> str:
    """The summary as Markdown: one table per stage."""
    st = s["stages"]
    mach = s["machine"]
    lines = [
        f"# edgeexit quickstart: {st['train']['model']} on synthetic ECG for {st['export']['target']}",
        "",
        f"Measured on {mach['cpu']} ({mach['cpus']} CPUs, {mach['machine']}, Python {mach['python']}); "
        f"{s['elapsed_s']} s in all. Results differ between machines.",
        "",
    ]
    lines += _md_train(st["train"])
    if st.get("compress"):
        lines += _md_compress(st["compress"])
    lines += _md_export(st["export"]) + _md_verify(st["verify"]) + _md_calibrate(st["calibrate"])
    lines += _md_bench(st["bench"])
    if st.get("evaluate"):
        lines += _md_evaluate(st["evaluate"])
    return "\n".join(lines)


def _md_train(t: dict) -> list[str]:
    lines = [
        f"## Train ({t['elapsed_s']} s): width {t['width']:g}, {t['params']:,} parameters, "
        f"best epoch {t['best_epoch']}, {t['train_beats']} training / {t['val_beats']} validation / {t['test_beats']} test beats",
        "",
        "| exit | MACs to exit | test accuracy | macro-F1 |",
        "|---|---|---|---|",
    ]
    return lines + [f"| {x['index']} | {x['cumulative_macs']:,} | {_pct(x['accuracy'])} | {x['macro_f1']:.3f} |"
                    for x in t["exits"]]


def _md_compress(cs: dict) -> list[str]:
    lines = [
        "",
        f"## Compress ({cs['elapsed_s']} s): pruned {cs['prune']:g} of the channels, "
        f"fine-tuned {cs['finetune_epochs']} epochs, {_finetune_kind(cs)} (`{cs['checkpoint']}`)",
        "",
        "| model | parameters | MACs | test accuracy | macro-F1 | one-graph latency (us, "
        f"{cs['latency_backend']}, batch 1) |",
        "|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(("original", "compressed")):
        acc, f1 = cs["accuracy"][i], cs["macro_f1"][i]
        lines.append(
            f"| {name} | {cs['params'][i]:,} | {cs['macs'][i]:,} | "
            f"{'-' if acc is None else _pct(acc)} | {'-' if f1 is None else f'{f1:.3f}'} | "
            f"{cs['latency_us'][i]:.1f}" + (f" ({cs['latency_ratio']:.2f}x) |" if i else " |"))
    return lines


def _finetune_kind(cs: dict) -> str:
    a = cs.get("finetune_attack")
    if not a:
        return "standard"
    rhythm = f", long rhythm +-{100 * a['rhythm']:g}%" if a.get("rhythm") else ""
    return (f"robust: ctxadv, PGD {a['eps_mV']:g} mV and R-peak timing +-{a['timing_ms']:g} ms"
            f"{rhythm}, {a['steps']} steps")


def _md_export(e: dict) -> list[str]:
    lines = ["", f"## Export ({e['elapsed_s']} s): {e['precision']}, {', '.join(e['formats'])}", "",
             "| format | max abs logit error per exit | top-1 agreement per exit |", "|---|---|---|"]
    return lines + [f"| {fmt} | {' / '.join(f'{v:.2g}' for v in p['max_abs_err'])} | "
                    f"{' / '.join(_pct(v) for v in p['top1_agreement'])} |"
                    for fmt, p in e["parity"].items()]


def _md_verify(v: dict) -> list[str]:
    return ["", f"## Verify ({v['elapsed_s']} s): {'verified' if v['ok'] else 'MISMATCH'} "
            f"({', '.join(v['checks'])})", ""]


def _md_calibrate(c: dict) -> list[str]:
    lo, hi = c["loss_interval"]
    return [
        f"## Calibrate ({c['elapsed_s']} s): {c['policy']} on {c['beats']} beats of {c['records']} "
        "new simulated patients (neither training nor test)",
        "",
        "| thresholds | segment cost (us) | exits taken | accuracy loss (points) | "
        f"{100 * c['confidence']:g}% interval over patients | expected cost / all exits |",
        "|---|---|---|---|---|---|",
        f"| {' / '.join(f'{x:g}' for x in c['thresholds'])} | "
        f"{' / '.join(f'{x:.1f}' for x in c['segment_cost_us'])} | "
        f"{' / '.join(_pct(x) for x in c['exit_fractions'])} | {c['loss_points']:.2f} | "
        f"{lo:.2f} .. {hi:.2f} | {c['cost_ratio']:.2f} |",
        "",
    ]


def _md_bench(b: dict) -> list[str]:
    a, lat, ra = b.get("accuracy", {}), b["latency_us"], b["ratios"]
    lines = [
        f"## Bench ({b['elapsed_s']} s): {b['samples']} test beats (other patients), {b['backend']}, "
        f"{b['threads']} thread(s), batch 1",
        "",
        "| path | mean latency (us) | p95 (us) | accuracy | vs monolithic |",
        "|---|---|---|---|---|",
        f"| early-exit policy | {lat['policy']['mean']:.1f} | {lat['policy']['p95']:.1f} | "
        f"{_pct(a.get('policy', float('nan')))} | {ra['policy_vs_monolithic']:.3f} |",
        f"| all exits | {lat['all_exits']['mean']:.1f} | {lat['all_exits']['p95']:.1f} | "
        f"{_pct(a.get('final_exit', float('nan')))} (final exit) | {ra['all_exits_vs_monolithic']:.3f} |",
        f"| monolithic | {lat['monolithic']['mean']:.1f} | {lat['monolithic']['p95']:.1f} | "
        f"{_pct(a.get('monolithic', float('nan')))} | 1 |",
        "",
        f"Exits taken: {' / '.join(_pct(x) for x in b['exit_fractions'])}; accuracy loss of the policy "
        f"against the final exit: {a.get('policy_loss_points', float('nan'))} points.",
        "",
    ]
    en = b.get("energy")
    if en and "error" not in en:
        pe = en["per_inference_mj"]
        lines += [f"Energy per inference above idle ({en['label']}): policy "
                  f"{pe['policy']['above_idle']:.5f} mJ, monolithic {pe['monolithic']['above_idle']:.5f} mJ "
                  f"({en['ratios']['policy_vs_monolithic']}x).", ""]
    elif en:
        lines += [f"Energy: not measured ({en['error']}).", ""]
    if b.get("report"):
        lines += [f"Bench report with plots: `{b['report']['dir']}/report.md`.", ""]
    return lines


def _md_evaluate(ev: dict) -> list[str]:
    lines = [
        f"## Evaluate ({ev['elapsed_s']} s): {ev['windows']} test windows through the runtime "
        f"({ev['policy']}), and {ev.get('stream_beats', '-')} beats of "
        f"{ev.get('stream_patients', 'the')} test patients' continuous signal through the device "
        f"path (full report: `{ev['command']}`, `--records synthetic` for the stream)",
        "",
        "| model | input | accuracy | macro-F1 | final exit accuracy | detection PPV |",
        "|---|---|---|---|---|---|",
    ]
    for r in ev["rows"]:
        final = r.get("final_exit_accuracy")
        ppv = r.get("detection_ppv")
        lines.append(f"| {r.get('model', 'deployed bundle')} | {r['input']} | {_pct(r['accuracy'])} "
                     f"| {r['macro_f1']:.3f} | {'-' if final is None else _pct(final)} | "
                     f"{'-' if ppv is None else _pct(ppv)} |")
    lines += ["", "windows: beat windows with the RR context held (today's window threat model); "
              "stream: the continuous signal through the detector, the RR and morphology context "
              "and the exit policy, attacked on the raw samples (the device's threat model).", ""]
    return lines

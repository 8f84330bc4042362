"""``edgeexit evaluate BUNDLE --records DIR``: robustness measured on the device path, end to end.

Every record's continuous signal goes through :func:`edgeexit.runtime.stream.stream_classify`
(the code of ``edgeexit run --stream``: R-peak detector, RR and morphology context, exit policy):
clean, with noise mixed into the continuous signal at each SNR (:mod:`.noise`), and under each
attack on the continuous signal at each budget (:mod:`.attacks`). Beats are matched to the
annotations as AAMI EC57 does (150 ms) and scored by :func:`.device.score_report`: detection
sensitivity / PPV, accuracy and macro-F1 (N/S/V/F) with missed beats counted against their
class, per-class sensitivity / PPV, the exits taken, inference time per beat.

For the white-box PGD the report also gives today's window-level attack on the same beats at
the same budget (the first round's windows with the context held, scored through the runtime)
and the end-to-end accuracy of those beats: the sanity check that the end-to-end attack is at
least as strong.

Steps: load the target (a bundle and its source checkpoint) -> load the records -> for each
input set (clean, noise, attack x eps) stream every record and tally -> sanity -> write
``report.json``, ``report.md`` and ``robustness.png``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeexit.config import ConfigDict
from edgeexit.errors import ConfigError
from edgeexit.fileio import check_output_directory
from edgeexit.plots import fraction_axes, pyplot, save_png
from edgeexit.robust.evaluate import EvalResult, check_budgets_and_noise
from edgeexit.robust.names import StreamAttack
from edgeexit.robust.stream.attacks import DevicePath, make_stream_attack
from edgeexit.robust.stream.device import Tally, match
from edgeexit.robust.stream.noise import mix_noise
from edgeexit.robust.stream.records import SYNTHETIC, StreamRecord, load_records
from edgeexit.runtime.stream import MATCH_S
from edgeexit.summary import machine_info

log = logging.getLogger(__name__)

STREAM_ATTACKS = tuple(a.value for a in StreamAttack)
Progress = Callable[[str, int, int], None] | None


@dataclasses.dataclass(frozen=True)
class StreamEvalConfig(ConfigDict):
    """What the stream-level evaluation runs.

    Attributes:
        eps: Linf budgets in mV on the raw samples.
        attacks: which of :data:`STREAM_ATTACKS` (``slowdown`` runs at the largest eps only).
        noise: noise kinds (``bw``, ``ma``, ``em``); snr_db: their SNRs (nst's definition).
        noise_dir: nstdb-format noise records (None: synthetic noise).
        records: record names (None: DS2 for MIT-BIH, else all annotated; synthetic: all).
        minutes: stream only each record's first minutes (None: all of it).
        synthetic_beats: beats of the synthetic records (``--records synthetic``).
        steps: PGD steps per round; rounds: PGD craft / re-detect rounds.
        shift_ms: the timing budget of ``timing_shift`` (ms).
        min_sqi: the device's signal-quality gate, as ``run --stream --min-sqi`` (where the
            runtime has it): flagged beats are counted apart (None: no gate).
        square_queries: queries per beat of the Square attack.
        backend, threads, seed: the runtime backend, torch/runtime threads, seeds.
    """

    KEYS = "stream evaluate config keys"

    eps: tuple[float, ...] = (0.05, 0.1, 0.2)
    attacks: tuple[str, ...] = STREAM_ATTACKS
    noise: tuple[str, ...] = ("ma",)
    snr_db: tuple[float, ...] = (12.0, 6.0, 0.0)
    noise_dir: str | None = None
    records: tuple[str, ...] | None = None
    minutes: float | None = None
    synthetic_beats: int = 1200
    steps: int = 10
    rounds: int = 2
    square_queries: int = 100
    shift_ms: float = 20.0
    min_sqi: float | None = None
    backend: str = "auto"
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_budgets_and_noise(self)
        if self.records is not None:
            object.__setattr__(self, "records", tuple(self.records))
        unknown = sorted(set(self.attacks) - set(STREAM_ATTACKS))
        if unknown:
            raise ConfigError(f"unknown stream attack(s) {', '.join(unknown)}; with --records the "
                              f"attacks are: {', '.join(STREAM_ATTACKS)}")
        if self.steps < 1 or self.rounds < 1 or self.square_queries < 1 or self.threads < 1:
            raise ConfigError("steps, rounds, square_queries and threads must be >= 1")
        if self.min_sqi is not None and not (self.min_sqi > 0 and math.isfinite(self.min_sqi)):
            raise ConfigError(f"min_sqi (the device's quality gate) must be a number > 0, got "
                              f"{self.min_sqi!r}")


StreamEvalResult = EvalResult  # the report (also report.json) and the files written


def device_path(target: str | os.PathLike, checkpoint=None, *, backend: str = "auto",
                threads: int = 1, min_sqi: float | None = None):
    """``(DevicePath, _Target)`` of a bundle: its engine, its source model (torch, eval mode)
    and the deployed policy's objective."""
    import torch

    from edgeexit.robust.evaluate import EvalConfig, _load_target

    torch.set_num_threads(threads)
    t = _load_target(target, checkpoint, EvalConfig(backend=backend, threads=threads))
    if t.engine is None:
        raise ConfigError(f"{target} is a checkpoint: the stream evaluation runs a bundle's device "
                          "path; export it first (edgeexit export)")
    t.ckpt.model.eval()
    spec = t.engine.manifest.input
    r_offset = spec.r_offset
    if r_offset is None:
        from edgeexit.runtime.preprocess import default_r_offset

        r_offset = default_r_offset(int(t.engine.input_shape[-1]))
    fs = spec.fs if spec.fs is not None else t.ckpt.input_spec.get("fs", 360.0)
    return DevicePath(t.engine, t.ckpt.model, t.policy_objective(),
                      t.ckpt.input_spec.get("channels"), r_offset, float(fs), min_sqi), t


def _records_for(source: str, t, config: StreamEvalConfig) -> list[StreamRecord]:
    syn = None
    if source == SYNTHETIC:  # other simulated patients than training's (the test side's seed)
        from edgeexit.data import TEST_SEED_OFFSET

        spec = (t.ckpt.meta or {}).get("data", {}).get("spec", {}) or {}
        syn = {"n_beats": config.synthetic_beats,
               "seed": int(spec.get("seed", 0)) + TEST_SEED_OFFSET,
               "fs": float(t.ckpt.input_spec.get("fs", 360.0)),
               "window": int(t.engine.input_shape[-1])}
    return load_records(source, names=config.records, minutes=config.minutes, synthetic=syn)


def _power(engine) -> float | None:
    """The target preset's active watts per core (for the energy ESTIMATE), or None."""
    try:
        p = engine.manifest.target.power
        return float(p.active_w_per_core) if p.active_w_per_core is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


class _Stream:
    """Runs the device on every record under one kind of input and tallies it."""

    def __init__(self, device: DevicePath, records: list[StreamRecord], config: StreamEvalConfig,
                 tick) -> None:
        self.device, self.records, self.config, self.tick = device, records, config, tick
        self.classes = tuple(device.engine.classes)
        self.active_w = _power(device.engine)
        self.n_exits = int(device.engine.manifest.num_exits)
        self.macs = np.cumsum([seg.macs for seg in device.engine.manifest.segments])
        self.clean_runs = {}

    def report(self, t: Tally) -> dict:
        """The tally's figures, with the mean MACs per beat the exits taken cost."""
        out = t.report(self.classes, self.active_w)
        hist = np.asarray(out["exit_histogram"][: self.macs.size])
        out["mean_macs_per_beat"] = float(np.dot(hist, self.macs[: hist.size]))
        return out

    def clean(self) -> dict:
        t = Tally(len(self.classes), self.n_exits)
        for r in self.records:
            run = self.device.run(r.signal, capture=True)
            self.clean_runs[r.name] = run
            t.add(r.ann_samples, r.ann_labels, run, r.fs)
        self.tick("clean")
        return self.report(t)

    def noise(self, kind: str, snr: float, records) -> dict:
        t = Tally(len(self.classes), self.n_exits)
        for i, r in enumerate(self.records):
            x = mix_noise(r.signal, r.ann_samples, r.ann_labels, kind, snr, fs=r.fs,
                          seed=self.config.seed + 7919 * i, records=records)
            t.add(r.ann_samples, r.ann_labels, self.device.run(x, capture=False), r.fs)
        self.tick(f"noise {kind} {snr:g} dB")
        return {"noise": kind, "snr_db": snr, "source": "records" if records else "synthetic",
                **self.report(t)}

    def attack(self, name: str, eps: float) -> dict:
        c = self.config
        t0 = time.perf_counter()
        t = Tally(len(self.classes), self.n_exits)
        held = _Held()
        stats, max_dev = [], 0.0
        for r in self.records:
            atk = make_stream_attack(name, eps, steps=c.steps, rounds=c.rounds,
                                     queries=c.square_queries, seed=c.seed, shift_ms=c.shift_ms)
            x = atk(r, self.clean_runs[r.name], self.device)
            max_dev = max(max_dev, float(np.abs(x - r.signal).max(initial=0.0)))
            run = self.device.run(x, capture=False)
            answer = t.add(r.ann_samples, r.ann_labels, run, r.fs)
            if getattr(atk, "window_held", None) is not None:
                held.add(r, self.clean_runs[r.name], atk.window_held, answer)
            stats.append(atk.stats)
        entry = {"attack": name, "eps": eps, **self.report(t),
                 "max_abs_change_mV": max_dev, "seconds": round(time.perf_counter() - t0, 1),
                 "stats": _merge(stats)}
        if held.n:
            entry["same_beats"] = held.report()
        self.tick(f"{name} eps {eps:g}")
        return entry


class _Held:
    """Today's window attack (context held) vs the end-to-end attack, on the same beats."""

    def __init__(self) -> None:
        self.n = self.window_ok = self.e2e_ok = 0

    def add(self, record: StreamRecord, clean_run, held: dict, answer: np.ndarray) -> None:
        rows, y = held["rows"], held["y"]
        m = match(record.ann_samples, clean_run.r_samples[rows], int(round(MATCH_S * record.fs)))
        ok = (m >= 0) & (y >= 0)
        self.n += int(ok.sum())
        self.window_ok += int((held["labels"][ok] == y[ok]).sum())
        self.e2e_ok += int((answer[m[ok]] == y[ok]).sum())

    def report(self) -> dict:
        return {"beats": self.n, "window_context_held_accuracy": self.window_ok / max(1, self.n),
                "end_to_end_accuracy": self.e2e_ok / max(1, self.n)}


def _merge(stats: list[dict]) -> dict:
    """Per-record attack statistics summed (counts) or averaged (the rest)."""
    out = {}
    for k in sorted({k for s in stats for k in s}):
        vals = [s[k] for s in stats if k in s]
        if all(isinstance(v, (int, float)) for v in vals):
            out[k] = sum(vals) if k in ("bursts", "moved") else float(np.mean(vals))
        else:
            out[k] = vals  # per record
    return out


def _sanity(report: dict) -> list[dict]:
    flags = []
    for a in report["attacks"]:
        sb = a.get("same_beats")
        if sb and a["attack"] == StreamAttack.PGD:
            w, e = sb["window_context_held_accuracy"], sb["end_to_end_accuracy"]
            flags.append({"check": f"end-to-end PGD at least as strong as the window attack with "
                                   f"the context held, same beats, eps {a['eps']:g}",
                          "ok": e <= w + 0.01,
                          "detail": f"accuracy on {sb['beats']} beats: end to end {e:.3f}, "
                                    f"window level {w:.3f}"})
    by = {(a["attack"], a["eps"]): a for a in report["attacks"]}
    for (name, eps), a in by.items():
        if name == StreamAttack.SQUARE and (StreamAttack.PGD, eps) in by:
            w, b = by[(StreamAttack.PGD, eps)]["accuracy"], a["accuracy"]
            flags.append({"check": f"black-box Square does not beat white-box PGD at eps {eps:g}",
                          "ok": b >= w - 0.01, "detail": f"accuracy: Square {b:.3f}, PGD {w:.3f}"})
    for a in report["attacks"]:
        flags.append({"check": f"{a['attack']} eps {a['eps']:g} stays within its budget",
                      "ok": a["max_abs_change_mV"] <= a["eps"] + 1e-9,
                      "detail": f"largest change {a['max_abs_change_mV']:.4f} mV"})
    return flags


def evaluate_stream(target: str | os.PathLike, records: str = SYNTHETIC, *,
                    checkpoint: str | os.PathLike | None = None,
                    config: StreamEvalConfig = StreamEvalConfig(),
                    out_dir: str | os.PathLike | None = None,
                    progress: Progress = None) -> StreamEvalResult:
    """Stream ``records`` (a WFDB directory or ``synthetic``) through the bundle ``target``,
    clean, noisy and attacked (see the module docstring); write the report to ``out_dir``."""
    from edgeexit.robust.evaluate import EVALUATE_FILES

    if out_dir is not None:
        check_output_directory(out_dir, EVALUATE_FILES, "evaluate", record="report.json")
    t_start = time.perf_counter()
    device, t = device_path(target, checkpoint, backend=config.backend, threads=config.threads,
                            min_sqi=config.min_sqi)
    recs = _records_for(records, t, config)
    if not recs:
        raise ConfigError(f"--records {records}: no record selected")
    from edgeexit.robust.evaluate import _describe_target, _Ticker

    n_atk = sum(1 if a == StreamAttack.SLOWDOWN else len(config.eps) for a in config.attacks)
    tick = _Ticker(1 + len(config.noise) * len(config.snr_db) + n_atk, progress)
    run = _Stream(device, recs, config, tick)
    clean = run.clean()
    noise_records = None
    if config.noise_dir:
        from edgeexit.robust.noise import NoiseRecords

        noise_records = NoiseRecords(config.noise_dir)
    noise = [run.noise(k, s, noise_records) for k in config.noise for s in config.snr_db]
    attacks = []
    for name in STREAM_ATTACKS:  # report order
        if name in config.attacks:
            for eps in ([max(config.eps)] if name == StreamAttack.SLOWDOWN else config.eps):
                attacks.append(run.attack(name, eps))
    report = {"target": _describe_target(t), "records": {"source": str(records),
              "list": [r.describe() for r in recs]},
              "config": config.to_dict(), "host": {**machine_info(), "threads": config.threads},
              "clean": clean, "noise": noise, "attacks": attacks,
              "notes": ["energy per beat is an ESTIMATE: the target preset's active watts per core "
                        "x the measured inference time"] if run.active_w else []}
    report["sanity"] = _sanity(report)
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    files = write_report(report, out_dir) if out_dir is not None else ()
    return StreamEvalResult(report, files)


# -- writing -------------------------------------------------------------------------------------


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, ...]:
    """``report.json``, ``report.md`` and ``robustness.png`` into ``out_dir``."""
    from edgeexit.robust.evaluate import _write

    return _write(report, out_dir, format_markdown,
                  lambda rep, out: [p for p in (_plot(rep, out),) if p is not None])


def _row(name: str, eps, m: dict, classes) -> str:
    d = m["detection"]
    sens = " ".join(f"{100 * m['sensitivity'].get(c, float('nan')):.0f}" for c in classes)
    ppv = " ".join(f"{100 * m['per_class'][c]['ppv']:.0f}" for c in classes)
    hist = " / ".join(f"{100 * h:.0f}" for h in m["exit_histogram"])
    return (f"| {name} | {'' if eps is None else f'{eps:g}'} | {100 * d['sensitivity']:.2f} | "
            f"{100 * d['ppv']:.2f} | {d['fp']} | {d.get('minor', 0)} | {100 * m['accuracy']:.1f} | {m['macro_f1']:.3f} | "
            f"{sens} | {ppv} | {100 * m.get('flagged_unreadable', {}).get('fraction', 0.0):.1f} | "
            f"{hist} | {m.get('mean_macs_per_beat', float('nan')) / 1e6:.2f} | "
            f"{m['inference_us_per_beat']:.0f} |")


def format_markdown(report: dict) -> str:
    """The report as Markdown tables (what ``report.md`` holds)."""
    t, clean = report["target"], report["clean"]
    classes = [c for c in clean["sensitivity"]]
    recs = report["records"]["list"]
    lines = [
        f"# Robustness on the device path: {t['path']} (method {t['method']})",
        "",
        (f"Records: {report['records']['source']}, {len(recs)} record(s), "
         f"{sum(r['seconds'] for r in recs) / 60:.1f} min, {sum(r['beats'] for r in recs)} annotated "
         f"beats, streamed end to end (detector, RR and morphology context, {t['policy']}). "
         f"Beats matched to the annotations within 150 ms; accuracy and sensitivity count missed "
         f"beats against their class, PPV counts false detections against the class answered; "
         f"minor det: detections the device left out of their neighbours' RR and morphology "
         f"context (under half the recent beats' amplitude). "
         f"Budgets: Linf in mV on the raw samples. Host: {report['host']['cpu']}."),
        "",
        f"| input | eps | det Se % | det PPV % | false det | minor det | acc % | macro-F1 | Se % ({' '.join(classes)}) "
        f"| PPV % ({' '.join(classes)}) | flagged % | exits % | MMACs/beat | us/beat |",
        "|" + "---|" * 14,
        _row("clean", None, clean, classes),
    ]
    lines += [_row(f"noise {n['noise']} {n['snr_db']:g} dB", None, n, classes) for n in report["noise"]]
    lines += [_row(a["attack"], a["eps"], a, classes) for a in report["attacks"]]
    held = [a for a in report["attacks"] if "same_beats" in a]
    if held:
        lines += ["", "White-box PGD, end to end vs the window attack with the context held, on the "
                      "same beats and budget (accuracy %):", "",
                  "| attack | eps | beats | window level (context held) | end to end |", "|---|---|---|---|---|"]
        lines += [f"| {a['attack']} | {a['eps']:g} | {a['same_beats']['beats']} | "
                  f"{100 * a['same_beats']['window_context_held_accuracy']:.1f} | "
                  f"{100 * a['same_beats']['end_to_end_accuracy']:.1f} |" for a in held]
    lines += [f"Note: {n}" for n in report.get("notes", [])]
    lines += ["", "Sanity checks:", ""]
    lines += [f"- {'ok' if f['ok'] else 'FAILED'}: {f['check']} ({f['detail']})" for f in report["sanity"]]
    lines += ["", f"Elapsed: {report['elapsed_s']} s.", ""]
    return "\n".join(lines)


def _plot(report: dict, out: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    names = sorted({a["attack"] for a in report["attacks"] if a["attack"] != StreamAttack.SLOWDOWN})
    if not names:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    clean = report["clean"]
    keys = (("accuracy", lambda m: m["accuracy"]), ("macro-F1", lambda m: m["macro_f1"]),
            ("detection PPV", lambda m: m["detection"]["ppv"]))
    for name in names:
        pts = sorted((a["eps"], a) for a in report["attacks"] if a["attack"] == name)
        for ax, (label, get) in zip(axes, keys):
            ax.plot([0.0] + [p[0] for p in pts], [get(clean)] + [get(p[1]) for p in pts],
                    marker="o", label=name)
            fraction_axes(ax, "eps (mV, raw samples)", label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['target']['path']}: end to end on the device path")
    return save_png(fig, out / "robustness.png")

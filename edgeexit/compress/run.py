"""``edgeexit compress``: prune a checkpoint, fine-tune it, and report before against after.

Steps (each a function below), all written under one output directory ``OUT``:

1. load the checkpoint and its data (the training side fine-tunes, the test side is measured);
2. the VAE of the signal (``--vae FILE``, or trained here and saved as ``OUT/vae.pt``): the
   on-manifold attack of the report, and ``onmanifold`` fine-tuning, use it;
3. prune (:mod:`edgeexit.compress.prune`), fine-tuning between steps when pruning is iterative;
4. fine-tune (:mod:`edgeexit.compress.finetune`): ``OUT/model.pt`` (with its channel plan, so it
   loads from the file alone) and ``OUT/metrics.json``;
5. measure both models the same way (:func:`edgeexit.robust.evaluate.evaluate` on the same test
   windows: clean, max-average PGD, the on-manifold attack, realistic noise; ``OUT/evaluate-
   original`` and ``OUT/evaluate-compressed``), their parameters and MACs, the sizes of their
   exported fp32 ONNX and TFLite files, and their batch-1 monolithic latency through the runtime's
   backends, timed alternately in one run so that the ratio is fair;
6. ``OUT/report.json`` and ``OUT/report.md``, written last.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgeexit.compress.finetune import FinetuneConfig, finetune
from edgeexit.compress.prune import PruneConfig, prune_model
from edgeexit.errors import ConfigError
from edgeexit.fileio import atomic_write, check_output_directory
from edgeexit.summary import machine_info
from edgeexit.torchdevice import resolve_device

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
_OURS = {"model.pt", "metrics.json", "vae.pt", "evaluate-original", "evaluate-compressed",
         REPORT_JSON, REPORT_MD}
Progress = Callable[[str], None] | None


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """What ``edgeexit compress`` does.

    Attributes:
        prune: the :class:`~edgeexit.compress.prune.PruneConfig`.
        finetune: the :class:`~edgeexit.compress.finetune.FinetuneConfig`.
        step_epochs: fine-tuning epochs between iterative pruning steps.
        train_limit: training beats used (a class-stratified, seeded sample; VAE and
            fine-tuning); None = all.
        eval_eps: PGD budgets of the report (mV, Linf, max-average PGD).
        eval_steps: PGD steps of the report's attacks.
        eval_limit: test windows measured (a class-stratified, seeded sample); None = all.
        onmanifold: include the on-manifold attack in the report (needs the VAE).
        noise_snr_db: SNRs of the report's muscle-artefact noise.
        formats: file formats exported for the sizes and the latency (``onnx``, ``tflite``).
        latency_runs: batch-1 runs of each monolithic model per format (alternating).
        vae_epochs: epochs of the VAE trained here (when no ``--vae`` is given).
        seed: seeds every sample and attack.
        threads: torch and runtime threads.
    """

    prune: PruneConfig = dataclasses.field(default_factory=PruneConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    step_epochs: int = 1
    train_limit: int | None = None
    eval_eps: tuple[float, ...] = (0.1, 0.2)
    eval_steps: int = 10
    eval_limit: int | None = 1000
    onmanifold: bool = True
    noise_snr_db: tuple[float, ...] = (6.0, 0.0)
    formats: tuple[str, ...] = ("onnx", "tflite")
    latency_runs: int = 300
    vae_epochs: int | None = None
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "eval_eps", tuple(float(e) for e in self.eval_eps))
        object.__setattr__(self, "noise_snr_db", tuple(float(s) for s in self.noise_snr_db))
        object.__setattr__(self, "formats", tuple(self.formats))
        bad = sorted(set(self.formats) - {"onnx", "tflite"})
        if bad or not self.formats:
            raise ConfigError(f"formats must be onnx and/or tflite, got {list(self.formats)}")
        if self.train_limit is not None and self.train_limit < 100:
            raise ConfigError(f"train limit must be >= 100 beats, got {self.train_limit}")
        if self.step_epochs < 1 or self.threads < 1 or self.latency_runs < 10:
            raise ConfigError("step epochs and threads must be >= 1, latency runs >= 10")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["prune"] = self.prune.to_dict()
        d["finetune"] = self.finetune.to_dict()
        return d


@dataclasses.dataclass(frozen=True)
class CompressResult:
    """The report (also ``report.json``), the compressed checkpoint and the files written."""

    report: dict
    checkpoint: Path
    files: tuple[Path, ...]



# -- the VAE -------------------------------------------------------------------------------------


def _vae(path: str | os.PathLike | None, train_set, ckpt, out: Path, config: CompressConfig,
         progress: bool) -> Path:
    """The VAE file to use: ``path`` (checked to load), or one trained here on the training side."""
    from edgeexit.compress import manifold

    if path is not None:
        return Path(path)  # compress() checked that it loads, before reading the data
    vcfg = manifold.VAEConfig(seed=config.seed)
    if config.vae_epochs is not None:
        vcfg = dataclasses.replace(vcfg, epochs=config.vae_epochs)
    s = int(ckpt.input_spec.get("signal_channels", 1))
    vae = manifold.train_vae(train_set.x, train_set.y, vcfg, signal_channels=s,
                             num_classes=len(ckpt.classes), progress=progress,
                             device=config.finetune.device)
    return manifold.save_vae(out / "vae.pt", vae, meta={"trained_on": train_set.describe()})


# -- measurements --------------------------------------------------------------------------------


def _measure(ckpt_path: Path, spec, config: CompressConfig, vae: Path | None, out: Path) -> dict:
    from edgeexit.robust.evaluate import EvalConfig, evaluate

    attacks = ("max_avg", "onmanifold") if vae is not None else ("max_avg",)
    extra = {"vae": str(vae)} if vae is not None else {}
    ecfg = EvalConfig(eps=config.eval_eps, sanity_eps=None, attacks=attacks,
                      steps=config.eval_steps, noise=("ma",), snr_db=config.noise_snr_db,
                      limit=config.eval_limit, threads=config.threads, seed=config.seed,
                      device=config.finetune.device, **extra)
    return evaluate(ckpt_path, data=spec, config=ecfg, out_dir=out).report


def export_monolithic(model, input_shape, root: Path,
                      formats: tuple[str, ...] = ("onnx", "tflite")) -> dict[str, Path]:
    """fp32 files of the whole model as one graph (input -> final logits), one per format."""
    from edgeexit.export.split import Monolithic, fold_batchnorm

    mono = Monolithic(model).eval()
    example = torch.zeros(1, *input_shape)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    if "onnx" in formats:
        from edgeexit.export.onnx import export_onnx

        out["onnx"] = export_onnx(mono, example, root / "mono.onnx", input_name="input",
                                  output_names=["logits"])
    if "tflite" in formats:
        from edgeexit.export.tflite import export_tflite

        out["tflite"] = export_tflite(fold_batchnorm(mono), example, root / "mono.tflite",
                                      input_name="input", output_names=["logits"])
    return out


def export_segments(model, input_shape, root: Path,
                    formats: tuple[str, ...] = ("onnx", "tflite")) -> dict[str, list[Path]]:
    """fp32 files of every segment (one per exit), as a bundle holds them, per format."""
    from edgeexit.export.onnx import export_onnx
    from edgeexit.export.split import fold_batchnorm, segment_specs, split_model
    from edgeexit.export.tflite import export_tflite

    files: dict[str, list[Path]] = {fmt: [] for fmt in formats}
    h = torch.zeros(1, *input_shape)
    for seg, spec in zip(split_model(model), segment_specs(model, input_shape)):
        names = (spec.input_name, list(spec.output_names))
        if "onnx" in formats:
            files["onnx"].append(export_onnx(seg, h, root / f"seg{spec.index}.onnx",
                                             input_name=names[0], output_names=names[1]))
        if "tflite" in formats:
            files["tflite"].append(export_tflite(fold_batchnorm(seg), h,
                                                 root / f"seg{spec.index}.tflite",
                                                 input_name=names[0], output_names=names[1]))
        if not seg.last:
            with torch.no_grad():
                h = seg(h)[0]
    return files


def time_side_by_side(files: dict[str, dict[str, Path]], x: np.ndarray, runs: int,
                      threads: int) -> dict:
    """Batch-1 latency of several models' files, per format, through the runtime's backends.

    ``files``: model name -> format -> file. The models are timed in turn on the same window,
    one run each, alternating, so that the machine's noise hits all of them; medians, and the
    ratio of every model to the first.
    """
    from edgeexit.runtime.backends import backend_for_format

    names = list(files)
    out = {}
    for fmt in sorted({f for per in files.values() for f in per}):
        backend = backend_for_format(fmt)
        if not backend.available():
            out[fmt] = {"skipped": f"{backend.name} is not installed"}
            continue
        sessions = {n: backend.load(files[n][fmt], threads) for n in names}
        times: dict[str, list[float]] = {n: [] for n in names}
        for i in range(runs + 10):
            xi = np.ascontiguousarray(x[i % len(x)][None])
            for n, sess in sessions.items():
                t0 = time.perf_counter_ns()
                sess.run(xi, copy=False)
                if i >= 10:  # warm-up runs are not counted
                    times[n].append((time.perf_counter_ns() - t0) / 1e3)
        med = {n: statistics.median(t) for n, t in times.items()}
        out[fmt] = {"backend": backend.name, "runs": runs, "median_us": med,
                    "ratio": {n: med[n] / med[names[0]] for n in names}}
    return out


# -- the report ----------------------------------------------------------------------------------


def _side(ev: dict, params: int, macs: list[int], sizes: dict) -> dict:
    """One model's figures for the report, from its evaluate report."""
    def final(m: dict) -> dict:
        e = m["exits"][-1]
        return {"accuracy": e["accuracy"], "macro_f1": e["macro_f1"]}

    return {
        "params": params,
        "macs": macs,
        "files": sizes,
        "clean": final(ev["clean"]),
        "clean_exits": [{"accuracy": e["accuracy"], "macro_f1": e["macro_f1"]}
                        for e in ev["clean"]["exits"]],
        "attacks": [{"attack": a["attack"], "eps": a["eps"], **final(a),
                     **({"kept": a["kept"]} if "kept" in a else {})} for a in ev["attacks"]],
        "noise": [{"noise": n["noise"], "snr_db": n["snr_db"], **final(n)} for n in ev["noise"]],
    }


def compress(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: CompressConfig = CompressConfig(),
    *,
    data: str | None = None,
    vae: str | os.PathLike | None = None,
    progress: Progress = None,
    bars: bool = False,
) -> CompressResult:
    """Prune and fine-tune ``checkpoint`` into ``out_dir`` and report before against after.

    Args:
        checkpoint: the model to compress (``model.pt``).
        out_dir: the output directory (see the module docstring).
        config: the :class:`CompressConfig`.
        data: the data source (None = the data the checkpoint records).
        vae: a saved VAE to reuse (None = train one here when one is needed).
        progress: ``progress(stage)`` as every stage starts.
        bars: progress bars over the batches of long stages.

    Returns:
        A :class:`CompressResult`.
    """
    resolve_device(config.finetune.device)  # --device cuda without a GPU: say so first
    t_start = time.perf_counter()
    say = progress or (lambda stage: None)
    out = Path(out_dir)
    job = _load(Path(checkpoint), out, config, data, vae, say)  # step 1
    vae_path = None
    if config.onmanifold or config.finetune.kind == "onmanifold":  # step 2
        say("VAE of the signal" + (" (given)" if vae is not None else " (training)"))
        vae_path = _vae(vae, job.train_set, job.ckpt, out, config, bars)
    original = copy.deepcopy(job.ckpt.model)  # the model before pruning (pruning works in place)
    pruned = _prune(job, config, vae_path, say)  # step 3
    new_ckpt, kept = _finetune(job, config, vae_path, pruned, out, say, bars, original)  # step 4
    measure_vae = vae_path if config.onmanifold else None  # step 5
    say("measuring the original model")
    ev_before = _measure(job.ckpt_path, job.spec, config, measure_vae, out / "evaluate-original")
    say("measuring the compressed model")
    ev_after = _measure(new_ckpt, job.spec, config, measure_vae, out / "evaluate-compressed")
    sizes, latency = _sizes_and_latency(original, new_ckpt, job, config, out, say)
    report = {
        "checkpoint": str(job.ckpt_path),
        "compressed": str(new_ckpt),
        "vae": None if vae_path is None else str(vae_path),
        "config": config.to_dict(),
        "data": {"spec": job.spec.to_dict(), "train": job.train_set.describe(),
                 "test_measured": ev_before["data"]["test"]},
        "pruning": pruned.to_dict(),
        "original": _side(ev_before, pruned.params_before, list(pruned.macs_before),
                          sizes["original"]),
        "compressed_model": _side(ev_after, pruned.params_after, list(pruned.macs_after),
                                  sizes["compressed"]),
        "latency": latency,
        "class_offsets": kept,  # --keep-sensitivity: the offsets and sensitivities per exit
        "host": {**machine_info(), "threads": config.threads},
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }
    return CompressResult(report, Path(new_ckpt), _write_report(out, report))  # step 6


@dataclasses.dataclass(frozen=True)
class _Job:
    """What :func:`compress` works on: the checkpoint, its data and the windows' shape."""

    ckpt_path: Path
    ckpt: object  # edgeexit.checkpoint.Checkpoint
    spec: object  # edgeexit.data.DataSpec
    train_set: object  # the (sampled) training side, BeatDataset
    test: object  # the test side, BeatDataset
    shape: tuple[int, ...]
    provenance: dict


def _load(ckpt_path: Path, out: Path, config: CompressConfig, data, vae, say) -> _Job:
    """Step 1: refuse a foreign output directory or a bad VAE file, load the checkpoint and its
    data, and check that they fit each other."""
    from edgeexit.checkpoint import load_checkpoint
    from edgeexit.data import load_train_test, stratified_sample
    from edgeexit.runtime.manifest import sha256_file

    check_output_directory(out, _OURS, "compress")
    torch.set_num_threads(config.threads)
    ckpt = load_checkpoint(ckpt_path)
    spec = ckpt.data_spec(data, "; give the data with --data")
    unknown = [c for c in config.finetune.keep_sensitivity if c not in ckpt.classes]
    if unknown:  # refused now, not after the data, the VAE and the pruning
        raise ConfigError(f"--keep-sensitivity names {', '.join(unknown)}, not classes of the "
                          f"model ({', '.join(ckpt.classes)})")
    if vae is not None:
        from edgeexit.compress import manifold

        manifold.load_vae(vae)  # a bad file is refused now, not after loading data and pruning
    say("loading data")
    train_full, test = load_train_test(spec)
    train_set = stratified_sample(train_full, config.train_limit, config.seed)
    shape = tuple(ckpt.input_spec["shape"])
    if tuple(train_set.input_shape) != shape:
        raise ConfigError(f"the data's windows are {train_set.input_shape}, the model takes {shape}")
    out.mkdir(parents=True, exist_ok=True)
    provenance = {"source_checkpoint": str(ckpt_path), "source_sha256": sha256_file(ckpt_path),
                  "prune": config.prune.to_dict(), "finetune": config.finetune.to_dict()}
    return _Job(ckpt_path, ckpt, spec, train_set, test, shape, provenance)


def _prune(job: _Job, config: CompressConfig, vae_path: Path | None, say):
    """Step 3: prune the checkpoint's model in place, fine-tuning between iterative steps;
    returns the :class:`~edgeexit.compress.prune.PruneResult`."""
    from edgeexit.data import stratified_sample

    model, ft, train_set = job.ckpt.model, config.finetune, job.train_set
    between = None
    if ft.kind != "none" and config.prune.steps > 1:
        def between(step: int) -> None:
            say(f"fine-tuning after pruning step {step + 1}/{config.prune.steps}")
            # the offsets of keep_sensitivity are fitted once, after the last step's fine-tuning
            finetune(model, train_set, dataclasses.replace(ft, keep_sensitivity=()),
                     meta=job.ckpt.meta, vae=vae_path, epochs=config.step_epochs)

    say(f"pruning {config.prune.ratio:g} ({config.prune.importance}, {config.prune.scope})")
    example = torch.from_numpy(train_set.x[:2])
    grad_set = stratified_sample(train_set, 256, config.seed)  # taylor importance's gradients
    xy = (torch.from_numpy(grad_set.x), torch.from_numpy(grad_set.y).long())
    return prune_model(model, config.prune, example, data=xy, between=between)


def _finetune(job: _Job, config: CompressConfig, vae_path: Path | None, pruned, out: Path, say,
              bars: bool, original) -> tuple[Path, dict | None]:
    """Step 4: fine-tune the pruned model into ``OUT/model.pt`` (saved as is with ``--finetune
    none``), its provenance recorded; returns the checkpoint and, with ``keep_sensitivity``, its
    ``class_offsets`` record. ``original``: the model before pruning, whose validation
    sensitivities ``keep_sensitivity`` keeps."""
    ckpt, ft = job.ckpt, config.finetune
    meta = {"compression": {**job.provenance,
                            "vae": None if vae_path is None else str(vae_path),
                            "pruning": pruned.to_dict()}}
    if ft.kind != "none":
        say(f"fine-tuning ({ft.kind}, {ft.epochs} epochs)")
        result = finetune(ckpt.model, job.train_set, ft, meta=ckpt.meta, vae=vae_path,
                          test=job.test, out_dir=out, data_spec=job.spec, extra_meta=meta,
                          progress=bars, reference=original)
        return result.checkpoint, result.metrics.get("class_offsets")
    from edgeexit.checkpoint import save_checkpoint

    return save_checkpoint(out / "model.pt", ckpt.model, classes=ckpt.classes,
                           input_spec=ckpt.input_spec, meta={**ckpt.meta, **meta}), None


def _sizes_and_latency(original, new_ckpt: Path, job: _Job, config: CompressConfig, out: Path,
                       say) -> tuple[dict, dict]:
    """Step 5, the files: both models exported (fp32, every format of ``config``) for their
    sizes, and their monolithic graphs timed at batch 1, alternately."""
    from edgeexit.checkpoint import load_checkpoint

    say(f"exporting both models (fp32 {', '.join(config.formats)}) for sizes and latency")
    with tempfile.TemporaryDirectory(prefix=".compress-", dir=out) as tmp:
        mono, sizes = {}, {}
        for name, m in (("original", original), ("compressed", load_checkpoint(new_ckpt).model)):
            root = Path(tmp) / name
            mono[name] = export_monolithic(m.eval(), job.shape, root, config.formats)
            segs = export_segments(m, job.shape, root, config.formats)
            sizes[name] = {fmt: {"segments_bytes": sum(p.stat().st_size for p in segs[fmt]),
                                 "monolithic_bytes": mono[name][fmt].stat().st_size}
                           for fmt in mono[name]}
        say("timing both monolithic models at batch 1, alternately")
        latency = time_side_by_side(mono, job.test.x[:64].astype(np.float32), config.latency_runs,
                                    config.threads)
    return sizes, latency


def _write_report(out: Path, report: dict) -> tuple[Path, ...]:
    """Step 6: ``OUT/report.json`` and ``OUT/report.md``."""
    text = json.dumps(report, indent=2).encode()
    files_written = [atomic_write(out / REPORT_JSON, lambda f: f.write(text))]
    md = format_markdown(report).encode()
    files_written.append(atomic_write(out / REPORT_MD, lambda f: f.write(md)))
    log.info("wrote %s", out / REPORT_JSON)
    return tuple(files_written)


def _fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def report_rows(report: dict) -> list[tuple[str, str, str]]:
    """(what, original, compressed) rows of the report's table."""
    a, b = report["original"], report["compressed_model"]
    rows = [
        ("parameters", f"{a['params']:,}", f"{b['params']:,}"),
        ("MACs (final exit)", f"{a['macs'][-1]:,}", f"{b['macs'][-1]:,}"),
    ]
    for fmt in a["files"]:
        rows.append((f"{fmt} segment files (fp32)", f"{a['files'][fmt]['segments_bytes']:,} B",
                     f"{b['files'][fmt]['segments_bytes']:,} B"))
    for fmt, lat in report["latency"].items():
        if "median_us" in lat:
            m = lat["median_us"]
            rows.append((f"monolithic {fmt} batch-1 latency", f"{m['original']:.1f} us",
                         f"{m['compressed']:.1f} us ({lat['ratio']['compressed']:.2f}x)"))
    rows.append(("clean accuracy / macro-F1",
                 f"{_fmt_pct(a['clean']['accuracy'])} / {a['clean']['macro_f1']:.3f}",
                 f"{_fmt_pct(b['clean']['accuracy'])} / {b['clean']['macro_f1']:.3f}"))
    after = {(x["attack"], x["eps"]): x for x in b["attacks"]}
    for ea in a["attacks"]:
        eb = after.get((ea["attack"], ea["eps"]))
        name = {"max_avg": "max-average PGD", "onmanifold": "on-manifold, latent eta"}.get(
            ea["attack"], ea["attack"])
        rows.append((f"{name} {ea['eps']:g}", f"{_fmt_pct(ea['accuracy'])} / {ea['macro_f1']:.3f}",
                     "-" if eb is None else f"{_fmt_pct(eb['accuracy'])} / {eb['macro_f1']:.3f}"))
    for na, nb in zip(a["noise"], b["noise"]):
        rows.append((f"noise {na['noise']} {na['snr_db']:g} dB",
                     f"{_fmt_pct(na['accuracy'])} / {na['macro_f1']:.3f}",
                     f"{_fmt_pct(nb['accuracy'])} / {nb['macro_f1']:.3f}"))
    return rows


def format_markdown(report: dict) -> str:
    """The report as Markdown: one table, original against compressed."""
    c = report["config"]
    host = report["host"]
    lines = [
        "# edgeexit compress",
        "",
        (f"`{report['checkpoint']}` -> `{report['compressed']}`: pruning ratio "
         f"{c['prune']['ratio']:g} ({c['prune']['importance']}, {c['prune']['scope']}, "
         f"{c['prune']['steps']} step(s)), fine-tuning {c['finetune']['kind']} "
         f"({c['finetune']['epochs']} epochs)."),
        (f"Measured on {report['data']['test_measured']['beats']} test windows (final exit; "
         f"accuracy / macro-F1), {host.get('cpu', 'unknown CPU')}, {host['threads']} thread(s)."),
        "",
        "| | original | compressed |",
        "|---|---|---|",
    ]
    lines += [f"| {w} | {a} | {b} |" for w, a, b in report_rows(report)]
    kept = report.get("class_offsets")
    if kept:
        e = kept["exits"][-1]
        names = kept["classes"]
        lines += ["", (f"Kept {', '.join(names)} at the original model's validation sensitivity "
                       f"(final exit: logit offsets "
                       + ", ".join(f"{c} +{v:g}" for c, v in e["kept_offsets"].items())
                       + "; sensitivity " + ", ".join(
                           f"{c} {_pct(e['before'][c])} -> {_pct(e['after'][c])} "
                           f"(original {_pct(e['reference'][c])})" for c in names)
                       + (f"; short: {', '.join(e['short'])}" if e["short"] else "") + ").")]
    return "\n".join(lines) + "\n"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"

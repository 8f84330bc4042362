"""Patient adaptation: fit a general model to one wearer (AAMI EC57's patient-specific protocol).

Two ways, both on the wearer's *first* minutes only (never a later beat):

- **labelled** (:func:`adapt`): the beats of the first ``minutes`` of the wearer's record(s),
  labelled (a clinician's Holter review), fine-tune the model, mixed with a replay buffer of the
  general training data (the parent's training part, its validation records left out) so that
  the common classes are not forgotten. What is trained is :attr:`AdaptConfig.trainable`:
  ``heads`` (the exit heads, with their context-fusion terms; the stages frozen, BatchNorm
  statistics included) or ``all`` (every weight, at a small learning rate). The training is
  :func:`edgeexit.train.train` with the parent's recorded settings, with plain cross-entropy or
  (``loss="parent"``) the parent's own method, so that a robust parent (``rdi``, ``neokd``,
  ``ima``) can be adapted with its adversarial loss. The exits' thresholds are recalibrated on
  the adaptation beats (recorded in the checkpoint).
- **unsupervised** (:func:`adapt_unsupervised`): no labels. BatchNorm statistics re-estimated on
  the wearer's first minutes (AdaBN, Li et al. 2016), and exit thresholds recalibrated from the
  wearer's unlabelled exit confidences (the final exit's answers standing in for labels, so the
  early exits keep agreeing with it within the margin on this wearer).

Either way the result is a checkpoint that records its parent's sha256 and the adaptation data,
and exports like any other (``edgeexit export``). :func:`patient_specific` runs the protocol for
every record of a test set: adapt on the first minutes, score the rest, next to the global model
on exactly the same scored beats.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeexit.calibrate import CalibrationConfig, calibrate_thresholds
from edgeexit.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgeexit.config import ConfigDict
from edgeexit.data import BeatDataset, ValidationSplit, load_split, stratified_sample
from edgeexit.data.dataset import concatenate
from edgeexit.errors import ConfigError, DataError
from edgeexit.fileio import atomic_write, check_output_directory
from edgeexit.metrics import classification_report, gross_statistics, headline_macro_f1
from edgeexit.models import profile_model
from edgeexit.runtime.manifest import sha256_file
from edgeexit.runtime.policy import softmax
from edgeexit.train import TrainConfig, recorded_train_config, train
from edgeexit.training.batchnorm import recalibrate_batchnorm
from edgeexit.training.evaluation import predict_exits

log = logging.getLogger(__name__)

TRAINABLE = ("heads", "all")
LOSSES = ("parent", "clean")
ADAPTED = "model.pt"
ADAPTATION_BEATS = "adaptation.npz"
ADAPTATION_RECORD = "adaptation.json"
OURS = frozenset({ADAPTED, ADAPTATION_BEATS, ADAPTATION_RECORD})


@dataclasses.dataclass(frozen=True)
class AdaptConfig(ConfigDict):
    """How to adapt a model to one wearer.

    Attributes:
        minutes: the labelled (or, unsupervised, unlabelled) first minutes of every record of the
            wearer; later beats are never used.
        trainable: ``heads`` (exit heads and their context-fusion terms; stages frozen with their
            BatchNorm statistics) or ``all`` (every weight).
        loss: ``clean`` (plain cross-entropy, the ``standard`` method) or ``parent`` (the
            parent's own training method: a robust parent's adversarial loss). With the stages
            frozen, ``clean`` kept an RDI model's robustness as well and cost a ninth of the time
            (docs/guides/adaptation.md).
        epochs: passes over the mix of the wearer's beats and the replay buffer.
        lr: peak learning rate (cosine-decayed); None = 1e-3 for ``heads``, 3e-4 for ``all``.
        replay: beats of the general training data mixed in (class-stratified sample of the
            parent's training part); 0 = the wearer's beats only.
        patient_share: the wearer's beats are repeated so that they make about this share of
            the mix (at least once).
        batch_size: beats per optimiser step.
        margin: accuracy-loss margin (points) of the exit thresholds recalibrated on the wearer.
        policy: the exit policy whose thresholds are recalibrated.
        seed: seeds the replay sample, the shuffling and the augmentation.
        threads: torch threads (None = torch's default).
    """

    KEYS = "adapt config keys"

    minutes: float = 5.0
    trainable: str = "heads"
    loss: str = "clean"
    epochs: int = 6
    lr: float | None = None
    replay: int = 1500
    patient_share: float = 0.5
    batch_size: int = 64
    margin: float = 0.5
    policy: str = "max_prob"
    seed: int = 0
    threads: int | None = 1

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ConfigError(f"minutes must be > 0, got {self.minutes}")
        if self.trainable not in TRAINABLE:
            raise ConfigError(f"unknown trainable {self.trainable!r}; choose {' or '.join(TRAINABLE)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose {' or '.join(LOSSES)}")
        if self.epochs < 1 or self.batch_size < 2 or self.replay < 0:
            raise ConfigError("epochs must be >= 1, batch size >= 2 and replay >= 0")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"the learning rate must be > 0, got {self.lr}")
        if not 0.0 < self.patient_share <= 1.0:
            raise ConfigError(f"patient_share is a fraction in (0, 1], got {self.patient_share}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.trainable == "heads" else 3e-4)



@dataclasses.dataclass(frozen=True)
class AdaptResult:
    """What an adaptation produced: the adapted model (eval mode), its record (also in the
    checkpoint's ``meta["adaptation"]``), and the checkpoint written (None without ``out_dir``)."""

    model: nn.Module
    record: dict
    checkpoint: Path | None


# -- the wearer's first minutes ----------------------------------------------------------------


def first_minutes(data: BeatDataset, minutes: float) -> tuple[BeatDataset, BeatDataset]:
    """``(adaptation, scored)``: the beats whose R peak lies in the first ``minutes`` of their
    record, and every later beat.

    Raises:
        DataError: the data does not know when its beats happened (no ``times``), or a record has
            no beat in its first minutes.
    """
    if data.times is None:
        raise DataError(f"{data.source or 'the data'} does not record when its beats happened "
                        "(no beat times): load WFDB records (or an .npz written with 'times')")
    early = data.times < minutes * 60.0
    groups = data.groups if data.groups is not None else np.full(len(data), "")
    empty = sorted(str(g) for g in np.unique(groups) if not early[groups == g].any())
    if empty:
        raise DataError(f"record(s) {', '.join(empty)} have no beat in their first {minutes:g} "
                        "minutes")
    return data.subset(np.flatnonzero(early)), data.subset(np.flatnonzero(~early))


def replay_buffer(ckpt: Checkpoint, n: int, seed: int, data: BeatDataset | None = None) -> BeatDataset | None:
    """``n`` beats of the parent's general training data (a class-stratified sample of its
    training part: the validation records that export calibrates on stay unseen); ``data``: the
    parent's training data already loaded (else loaded from the spec it records)."""
    if n == 0:
        return None
    if data is None:
        data = load_split(ckpt.data_spec(None, "; give the replay data, or replay 0"), "train")
    train_part, _ = ValidationSplit.recorded((ckpt.meta or {}).get("train_config")).apply(data)
    return stratified_sample(train_part, n, seed)


def _mix(patient: BeatDataset, replay: BeatDataset | None, share: float) -> BeatDataset:
    """The wearer's beats, repeated to make about ``share`` of the mix, and the replay beats."""
    if replay is None:
        return patient
    if tuple(replay.input_shape) != tuple(patient.input_shape) or replay.classes != patient.classes:
        raise DataError(f"the replay beats are {replay.input_shape} of {list(replay.classes)}, the "
                        f"wearer's {patient.input_shape} of {list(patient.classes)}")
    copies = max(1, int(round(share / max(1.0 - share, 1e-9) * len(replay) / len(patient))))
    return concatenate([patient] * copies + [replay], source=f"{patient.source} x{copies} + replay")


# -- labelled adaptation -----------------------------------------------------------------------


def _as_checkpoint(checkpoint: str | os.PathLike | Checkpoint) -> tuple[Checkpoint, str | None]:
    if isinstance(checkpoint, Checkpoint):
        return checkpoint, None
    return load_checkpoint(checkpoint), sha256_file(Path(checkpoint))


def _check_data(ckpt: Checkpoint, data: BeatDataset) -> None:
    if list(data.input_shape) != list(ckpt.input_spec["shape"]) or data.classes != ckpt.classes:
        raise DataError(f"{data.source}: windows {list(data.input_shape)} of classes "
                        f"{list(data.classes)}, the model takes {ckpt.input_spec['shape']} of "
                        f"{list(ckpt.classes)}: cut the wearer's records as the model was trained")


class _Frozen:
    """Within the block only ``trainable`` parameters of ``model`` learn: every other parameter
    has no gradient, and every BatchNorm layer outside the trainable modules stays in eval mode
    (its statistics are the parent's: the training loop's ``model.train()`` leaves them so)."""

    def __init__(self, model: nn.Module, trainable: str) -> None:
        self.model = model
        self.trainable = trainable

    def _frozen_modules(self) -> list[nn.Module]:
        if self.trainable == "all":
            return []
        return [m for m in self.model.stages.modules()]  # the exits (heads + context_fc) learn

    def __enter__(self) -> _Frozen:
        self.bns = [m for m in self._frozen_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.params = [p for m in self._frozen_modules() for p in m.parameters(recurse=False)]
        for p in self.params:
            p.requires_grad_(False)
        for bn in self.bns:
            bn.eval()
            bn.train = _stay_eval.__get__(bn)  # instance attribute: model.train() skips it
        return self

    def __exit__(self, *exc) -> None:
        for p in self.params:
            p.requires_grad_(True)
        for bn in self.bns:
            del bn.train


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return self


def _train_config(ckpt: Checkpoint, config: AdaptConfig) -> TrainConfig:
    """The parent's recorded training settings (method, augmentation, class weighting and the
    validation split export rebuilds), with the adaptation's schedule."""
    base = recorded_train_config(ckpt.meta)
    if config.loss == "clean":
        base = dataclasses.replace(base, method="standard", method_config=None)
    return dataclasses.replace(
        base, epochs=config.epochs, lr=config.learning_rate, batch_size=config.batch_size,
        patience=0, select="last", schedule_epochs=None, ema=0.0, bn_recalibrate=0,
        bn_recalibrate_augmented=False, seed=config.seed, threads=config.threads)


def adapt(checkpoint: str | os.PathLike | Checkpoint, wearer: BeatDataset,
          config: AdaptConfig = AdaptConfig(), *, replay: BeatDataset | None = None,
          out_dir: str | os.PathLike | None = None) -> AdaptResult:
    """Fine-tune ``checkpoint`` on the labelled beats of ``wearer``'s first ``config.minutes``.

    Args:
        checkpoint: the general model (a path, or a loaded :class:`Checkpoint`).
        wearer: the wearer's beats (with ``times``); only those of the first minutes are read.
        config: the :class:`AdaptConfig`.
        replay: the replay beats (:func:`replay_buffer`); None = drawn from the parent's training
            data (``config.replay`` beats; none when 0).
        out_dir: where to write ``model.pt`` and ``adaptation.npz`` (the adaptation beats);
            None = nowhere.

    Returns:
        An :class:`AdaptResult`.
    """
    start = time.perf_counter()
    _check_out(out_dir)
    ckpt, parent_sha = _as_checkpoint(checkpoint)
    _check_data(ckpt, wearer)
    beats, _ = first_minutes(wearer, config.minutes)  # nothing after minute N from here on
    if replay is None:
        replay = replay_buffer(ckpt, config.replay, config.seed)
    model = _copy(ckpt.model)
    tc = _train_config(ckpt, config)
    with _Frozen(model, config.trainable):
        train(_mix(beats, replay, config.patient_share), tc, model=model, val=beats)
    model.cpu().eval()  # trained where tc.device said; the record and the file hold CPU tensors
    record = _record(ckpt, parent_sha, checkpoint, beats, config, "labelled", replay)
    record["thresholds"] = _thresholds(model, beats.x, beats.y, beats.groups, config)
    record["elapsed_s"] = round(time.perf_counter() - start, 2)
    meta = {**(ckpt.meta or {}), "train_config": tc.to_dict(), "adaptation": record}
    path = _write(out_dir, model, ckpt, meta, beats)
    log.info("adapted to %s on %d beats in %.1f s", beats.source, len(beats), record["elapsed_s"])
    return AdaptResult(model, record, path)


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def _record(ckpt: Checkpoint, parent_sha: str | None, parent, beats: BeatDataset,
            config: AdaptConfig, kind: str, replay: BeatDataset | None) -> dict:
    """What the adapted checkpoint records of its parent and its data."""
    return {
        "kind": kind,
        "parent": None if parent_sha is None else str(parent),
        "parent_sha256": parent_sha,
        "parent_method": recorded_train_config(ckpt.meta).method,
        "data": beats.source,
        "records": sorted({str(g) for g in (beats.groups if beats.groups is not None else [])}),
        "minutes": config.minutes,
        "beats": len(beats),
        "last_beat_s": float(beats.times.max()),
        "labels_used": kind == "labelled",
        "class_counts": beats.class_counts() if kind == "labelled" else None,
        "replay_beats": 0 if replay is None else len(replay),
        "config": config.to_dict(),
    }


def _thresholds(model: nn.Module, x: np.ndarray, y: np.ndarray, groups, config: AdaptConfig) -> dict:
    """The exit thresholds recalibrated on the wearer's beats (``y``: labels, or the final
    exit's answers when there are none)."""
    probs = [softmax(z) for z in predict_exits(model, x)]
    costs = [float(c.stage_macs + c.head_macs) for c in profile_model(model, x.shape[1:])]
    cal = calibrate_thresholds(probs, y, costs, CalibrationConfig(config.policy, config.margin),
                               groups=groups)
    return {"policy": config.policy, "thresholds": [round(t, 6) for t in cal.thresholds],
            "margin": config.margin, "expected_macs": cal.expected_cost,
            "full_macs": cal.full_cost, "beats": cal.samples}


def _write(out_dir, model: nn.Module, ckpt: Checkpoint, meta: dict,
           beats: BeatDataset | None) -> Path | None:
    """``model.pt`` and, for labelled adaptation, ``adaptation.npz`` (the labelled beats it
    was adapted on, for ``edgeexit calibrate``) into ``out_dir``."""
    if out_dir is None:
        return None
    out = Path(out_dir)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    if beats is not None:
        beats.save_npz(out / ADAPTATION_BEATS)
    else:  # an earlier labelled run's beats would not be this model's
        (out / ADAPTATION_BEATS).unlink(missing_ok=True)
    path = save_checkpoint(out / ADAPTED, model, classes=ckpt.classes, input_spec=ckpt.input_spec,
                           meta=meta)
    text = json.dumps(meta["adaptation"], indent=2).encode()
    atomic_write(out / ADAPTATION_RECORD, lambda f: f.write(text))
    log.info("wrote %s and %s", path, out / ADAPTATION_RECORD)
    return path


def _check_out(out_dir) -> None:
    """Refuse an ``out_dir`` holding anything an earlier ``edgeexit adapt`` did not write
    (its ``adaptation.json`` says it did), before any work."""
    if out_dir is not None:
        check_output_directory(out_dir, OURS, "edgeexit adapt", record=ADAPTATION_RECORD)


# -- unsupervised adaptation -------------------------------------------------------------------


def adapt_unsupervised(checkpoint: str | os.PathLike | Checkpoint, wearer: BeatDataset,
                       config: AdaptConfig = AdaptConfig(), *,
                       out_dir: str | os.PathLike | None = None) -> AdaptResult:
    """Adapt ``checkpoint`` to ``wearer`` without labels (``wearer.y`` is never read): every
    BatchNorm layer's statistics re-estimated on the windows of the first ``config.minutes``
    (AdaBN), and the exit thresholds recalibrated so that the early exits agree with the final
    exit's answers on those windows within ``config.margin``."""
    start = time.perf_counter()
    _check_out(out_dir)
    ckpt, parent_sha = _as_checkpoint(checkpoint)
    _check_data(ckpt, wearer)
    beats, _ = first_minutes(wearer, config.minutes)
    beats = dataclasses.replace(beats, y=np.zeros_like(beats.y))  # no label goes further
    if config.threads:
        torch.set_num_threads(config.threads)
    model = _copy(ckpt.model)
    n = len(beats)
    recalibrate_batchnorm(model, beats.x, batches=-(-n // config.batch_size),
                          batch_size=config.batch_size, seed=config.seed)
    model.eval()
    pseudo = predict_exits(model, beats.x)[-1].argmax(axis=1)
    record = _record(ckpt, parent_sha, checkpoint, beats, config, "unsupervised", None)
    record["thresholds"] = _thresholds(model, beats.x, pseudo, beats.groups, config)
    record["elapsed_s"] = round(time.perf_counter() - start, 2)
    meta = {**(ckpt.meta or {}), "adaptation": record}
    path = _write(out_dir, model, ckpt, meta, None)  # no labels to keep
    return AdaptResult(model, record, path)


# -- the patient-specific protocol -------------------------------------------------------------

MODES = ("global", "labelled", "unsupervised")


def robust_accuracy(model: nn.Module, data: BeatDataset, eps: float, *, steps: int = 10,
                    limit: int = 200, seed: int = 0) -> dict:
    """The final exit under PGD (Linf ``eps`` mV on the waveform, ``steps`` steps, the final
    exit's loss) on a class-stratified sample of ``limit`` beats of ``data``; the morphology
    channels follow the attacked waveform as on the device (RR channels held)."""
    from edgeexit.robust.attacks import PGD
    from edgeexit.robust.context import MorphContext, record_templates

    sample = stratified_sample(data, limit, seed)
    ctx = MorphContext.of(sample)
    x = sample.x if ctx is None else ctx.attach(sample, record_templates(sample, ctx.r_offset))
    attacked_model = model if ctx is None else ctx.wrap(model)
    attack = PGD(attacked_model, eps, steps=steps, seed=seed)
    xa = attack(torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(sample.y))
    xa = xa.detach().numpy() if ctx is None else ctx.finish(xa.detach().numpy())
    pred = predict_exits(model, xa)[-1].argmax(axis=1)
    report = classification_report(sample.y, pred, sample.classes)
    return {"eps": eps, "steps": steps, "beats": len(sample), "accuracy": report["accuracy"],
            "macro_f1": headline_macro_f1(report)}


def patient_specific(checkpoint: str | os.PathLike | Checkpoint, test: BeatDataset,
                     config: AdaptConfig = AdaptConfig(), *, replay: BeatDataset | None = None,
                     modes: tuple[str, ...] = MODES, robust_eps: float | None = None,
                     robust_limit: int = 100,
                     progress: Callable[[str, int, int], None] | None = None) -> dict:
    """AAMI EC57's patient-specific protocol over every record of ``test``: adapt on the first
    ``config.minutes`` (labelled and/or unsupervised), score the rest; the global model on
    exactly the same scored beats.

    Returns:
        ``{"records": {record: {mode: gross statistics, "seconds": {...}, "cpu_seconds":
        {...}}}, "pooled": {mode: gross statistics}, "config": ...}`` (seconds: wall clock per
        adaptation; cpu_seconds: this process's CPU time, all its threads); with ``robust_eps``, every mode's final exit under
        PGD on ``robust_limit`` scored beats of each record, pooled (``"robust"``).
    """
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ConfigError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    ckpt, _ = _as_checkpoint(checkpoint)
    _check_data(ckpt, test)
    if "labelled" in modes and replay is None:
        replay = replay_buffer(ckpt, config.replay, config.seed)
    names = sorted({str(g) for g in test.groups}) if test.groups is not None else [""]
    preds = {m: [] for m in modes}
    robust = {m: [] for m in modes}
    ys, records = [], {}
    for i, name in enumerate(names):
        wearer = test if test.groups is None else test.subset(np.flatnonzero(test.groups == name))
        _, scored = first_minutes(wearer, config.minutes)
        entry, seconds, cpu_seconds = {"scored_beats": len(scored)}, {}, {}
        for m in modes:
            start, cpu = time.perf_counter(), time.process_time()
            model = _adapted(ckpt, wearer, config, replay, m)
            seconds[m] = round(time.perf_counter() - start, 2)
            cpu_seconds[m] = round(time.process_time() - cpu, 2)
            pred = predict_exits(model, scored.x)[-1].argmax(axis=1)
            preds[m].append(pred)
            entry[m] = gross_statistics(classification_report(scored.y, pred, test.classes))
            if robust_eps is not None:
                robust[m].append(robust_accuracy(model, scored, robust_eps, limit=robust_limit))
        entry["seconds"], entry["cpu_seconds"] = seconds, cpu_seconds
        records[name] = entry
        ys.append(scored.y)
        if progress is not None:
            progress(name, i + 1, len(names))
    y = np.concatenate(ys)
    pooled = {m: gross_statistics(classification_report(y, np.concatenate(preds[m]), test.classes))
              for m in modes}
    out = {"records": records, "pooled": pooled, "config": config.to_dict(),
           "checkpoint_method": recorded_train_config(ckpt.meta).method}
    if robust_eps is not None:
        out["robust"] = {m: _pool_robust(robust[m]) for m in modes}
    return out


def _adapted(ckpt: Checkpoint, wearer: BeatDataset, config: AdaptConfig,
             replay: BeatDataset | None, mode: str) -> nn.Module:
    if mode == "global":
        return ckpt.model
    if mode == "labelled":
        return adapt(ckpt, wearer, config, replay=replay).model
    return adapt_unsupervised(ckpt, wearer, config).model


def _pool_robust(entries: list[dict]) -> dict:
    """Beat-weighted means of per-record :func:`robust_accuracy` entries."""
    n = np.array([e["beats"] for e in entries], dtype=np.float64)
    return {"eps": entries[0]["eps"], "steps": entries[0]["steps"], "beats": int(n.sum()),
            "accuracy": float(np.dot(n, [e["accuracy"] for e in entries]) / n.sum()),
            "macro_f1_mean_of_records": float(np.mean([e["macro_f1"] for e in entries]))}


# -- one wearer, as the command line does it ---------------------------------------------------


def load_wearer(ckpt: Checkpoint, data: str | os.PathLike, records: list[str] | None = None) -> BeatDataset:
    """The wearer's beats, cut as ``ckpt``'s model takes them: a WFDB record (``DIR/NAME``), a
    directory of the wearer's records (all of them, or ``records``), or an ``.npz`` with beat
    times.

    Raises:
        DataError: nothing of that name, or an ``.npz`` without beat times.
    """
    from edgeexit.data import load_npz
    from edgeexit.data.mitbih import load_mitbih

    path = Path(data)
    if path.suffix == ".npz":
        beats = load_npz(path)
    elif path.is_dir():
        spec = ckpt.data_spec(str(path))
        beats = load_mitbih(path, records, window=spec.window, rr_context=spec.rr_context,
                            morph_context=spec.morph_context)
    elif path.with_name(path.name + ".hea").is_file():
        if records:
            raise DataError(f"{path} is one record: give its directory with --records, or "
                            "leave --records out")
        spec = ckpt.data_spec(str(path.parent))
        beats = load_mitbih(path.parent, [path.name], window=spec.window,
                            rr_context=spec.rr_context, morph_context=spec.morph_context)
    else:
        raise DataError(f"{path}: not a WFDB record (no {path.name}.hea), a directory of records "
                        "or an .npz file")
    _check_data(ckpt, beats)
    return beats


def adapt_wearer(checkpoint: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike,
                 config: AdaptConfig = AdaptConfig(), *, records: list[str] | None = None,
                 unsupervised: bool = False, replay_data: str | os.PathLike | None = None) -> dict:
    """``edgeexit adapt``: adapt ``checkpoint`` to the wearer of ``data`` (:func:`adapt`, or
    :func:`adapt_unsupervised`), write ``out_dir``, and score the wearer's beats after the first
    minutes (never used to adapt) with the adapted and the global model.

    Returns:
        ``{"checkpoint", "adaptation": the record, "scored": {"beats", "global", "adapted"} or
        None when no beat follows the first minutes}``.
    """
    _check_out(out_dir)
    ckpt = load_checkpoint(checkpoint)
    wearer = load_wearer(ckpt, data, records)
    replay = None
    if not unsupervised and replay_data is not None:
        from edgeexit.data import load_source

        train_data = load_source(str(replay_data))
        _check_data(ckpt, train_data)
        replay = replay_buffer(ckpt, config.replay, config.seed, train_data)
    if unsupervised:
        result = adapt_unsupervised(checkpoint, wearer, config, out_dir=out_dir)
    else:
        result = adapt(checkpoint, wearer, config, replay=replay, out_dir=out_dir)
    _, scored = first_minutes(wearer, config.minutes)
    report = {"checkpoint": str(result.checkpoint), "adaptation": result.record, "scored": None}
    if len(scored):
        report["scored"] = {"beats": len(scored), **{
            name: gross_statistics(classification_report(
                scored.y, predict_exits(model, scored.x)[-1].argmax(axis=1), scored.classes))
            for name, model in (("global", ckpt.model), ("adapted", result.model))}}
    return report


def format_report(report: dict) -> str:
    """``edgeexit adapt``'s report as text."""
    a = report["adaptation"]
    lines = [f"adapted ({a['kind']}, {a['config']['trainable'] if a['kind'] == 'labelled' else 'BatchNorm statistics'}) "
             f"on {a['beats']} beats of the first {a['minutes']:g} min of {', '.join(a['records']) or a['data']} "
             f"in {a['elapsed_s']:.1f} s; parent sha256 {str(a['parent_sha256'])[:12]}...",
             f"exit thresholds ({a['thresholds']['policy']}): "
             + ", ".join(f"{t:.3f}" for t in a["thresholds"]["thresholds"])]
    s = report["scored"]
    if s is None:
        lines.append("no beat after the first minutes to score")
    else:
        lines.append(f"scored on the {s['beats']} later beats (never used to adapt):")
        lines.append(f"  {'model':<8} {'acc':>6} {'macroF1':>8} {'S Se':>6} {'S PPV':>6} {'V Se':>6} {'V PPV':>6}")
        for name in ("global", "adapted"):
            g = s[name]
            lines.append(f"  {name:<8} {g['accuracy']:6.3f} {g['macro_f1']:8.3f} "
                         + " ".join(f"{g.get(k, 0.0):6.3f}" for k in ("S_se", "S_ppv", "V_se", "V_ppv")))
    lines.append(f"wrote {report['checkpoint']}")
    return "\n".join(lines)

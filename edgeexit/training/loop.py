"""The training loop shared by every training method, as named steps (nanoGPT's ``train.py``):

1. :func:`_setup`: seeds, the validation split, the model, the loss weights and the method;
2. :func:`_optimiser`: the batch loader, the augmentation, AdamW on a cosine schedule, the EMA;
3. :func:`_run_epochs`: train an epoch, refresh BatchNorm, validate, keep the best epoch;
4. :func:`_report` and :func:`_write_checkpoint`: every exit evaluated, ``model.pt`` and
   ``metrics.json`` written (rank 0).

:func:`fit` runs them in that order; :func:`edgeexit.train.train` is its public face.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from edgeexit.checkpoint import save_checkpoint
from edgeexit.data import BeatDataset, DataSpec
from edgeexit.errors import ConfigError, DataError
from edgeexit.fileio import atomic_write
from edgeexit.metrics import classification_report, headline_macro_f1
from edgeexit.models import ModelConfig, MultiExitNet, create_model, profile_model
from edgeexit.robust.methods import Batch, TrainContext, TrainingMethod, create_method
from edgeexit.torchdevice import autocast, check_amp, describe_device, determinism, to_device
from edgeexit.training.augment import Augmentation
from edgeexit.training.batchnorm import recalibrate_batchnorm
from edgeexit.training.data import class_weights, make_loader, split_validation
from edgeexit.training.distributed import Distributed
from edgeexit.training.evaluation import evaluate_exits, predict_exits

if TYPE_CHECKING:
    from edgeexit.train import TrainConfig

log = logging.getLogger(__name__)

COLLAPSE_DROP = 0.1
"""With ``select="last"``, a kept epoch whose validation macro-F1 is this far below an earlier
epoch's is logged as a warning (one MIT-BIH seed fell from 0.549 to 0.314 in its last epoch)."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What training produced.

    Attributes:
        model: the best model (eval mode).
        metrics: the JSON-ready report (also written to ``metrics.json``).
        checkpoint: path of the written checkpoint, or None when no ``out_dir`` was given.
    """

    model: MultiExitNet
    metrics: dict
    checkpoint: Path | None


def default_exit_weights(num_exits: int) -> tuple[float, ...]:
    """SDN-style ramp: exit k weighs ``(k+1)/K``, so the final exit weighs most."""
    return tuple((k + 1) / num_exits for k in range(num_exits))


@dataclasses.dataclass
class _Setup:
    """What :func:`_setup` built: the data sides, the model and how its loss is weighted."""

    train_set: BeatDataset
    val_set: BeatDataset
    model: MultiExitNet
    method: TrainingMethod
    exit_weights: tuple[float, ...]
    class_weights: np.ndarray | None
    costs: list
    morph: object  # MorphContext, or None: the training attacks hold the morphology channels
    templates: np.ndarray | None

    @property
    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclasses.dataclass
class _Optimiser:
    """What :func:`_optimiser` built: the batches, their augmentation and the update rule."""

    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    loader: torch.utils.data.DataLoader
    sampler: torch.utils.data.Sampler | None
    augment: Augmentation
    aug_gen: torch.Generator
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: nn.Module | None  # the running average of the weights, or None

    def scored(self, model: MultiExitNet) -> nn.Module:
        """The weights that are validated, selected and kept: the EMA's when there is one."""
        return model if self.ema is None else self.ema.module


def fit(data: BeatDataset, config: TrainConfig, *, test: BeatDataset | None,
        out_dir, progress: bool, data_spec: DataSpec | None, dist: Distributed,
        model: MultiExitNet | None, meta: dict, val: BeatDataset | None,
        on_epoch: Callable[[int, np.ndarray], None] | None,
        reference: MultiExitNet | None = None) -> TrainResult:
    """Train under ``config`` and evaluate every exit (:func:`edgeexit.train.train`'s body)."""
    t_start = time.perf_counter()
    s = _setup(data, config, dist, model, val)
    kept = _reference_logits(s, config, model, reference)
    o = _optimiser(s, data, config, dist)
    history, best_epoch = _run_epochs(s, o, config, dist, progress, on_epoch)
    if kept is not None:
        meta = {**meta, "class_offsets": _keep_sensitivity(s, config, kept)}
    digests = dist.weight_digests(s.model)  # every rank's: equal when DDP kept them in step
    metrics, exits = _report(s, data, config, test, data_spec, dist, history, best_epoch, meta)
    metrics["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    metrics["rank_weight_digests"] = digests
    s.model.cpu()  # the caller gets (and the checkpoint holds) CPU tensors, whatever trained it
    ckpt_path = None
    if out_dir is not None and dist.main:
        ckpt_path = _write_checkpoint(Path(out_dir), s.model, data, metrics, exits, test, meta)
    dist.barrier()
    return TrainResult(model=s.model, metrics=metrics, checkpoint=ckpt_path)


# -- 1. setup ----------------------------------------------------------------------------------


def _setup(data: BeatDataset, config: TrainConfig, dist: Distributed, model: MultiExitNet | None,
           val: BeatDataset | None) -> _Setup:
    """Seeds, the (training, validation) sides, the model, the loss weights, the method."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if val is not None:
        if tuple(val.input_shape) != tuple(data.input_shape) or tuple(val.classes) != tuple(data.classes):
            raise ConfigError(f"the validation beats are {val.input_shape} of {list(val.classes)}, "
                              f"the training beats {data.input_shape} of {list(data.classes)}")
        train_set, val_set = data, val
    else:
        train_set, val_set = split_validation(data, config)
    if model is None:
        model = _build_model(data, config, train_set)
    else:
        _check_given_model(model.cpu(), data)
    check_amp(config.amp, dist.device)
    model.to(dist.device)
    exit_w = config.exit_weights or default_exit_weights(model.num_exits)
    if len(exit_w) != model.num_exits:
        raise ConfigError(f"{len(exit_w)} exit weights given for {model.num_exits} exits")
    cw = class_weights(train_set.y, len(data.classes), config.class_weighting, config.max_class_weight)
    method = create_method(config.method, config.method_config)
    morph, templates = _attack_morph(method, train_set, config)
    method.setup(
        TrainContext(
            model=model,
            exit_weights=torch.tensor(exit_w, dtype=torch.float32, device=dist.device),
            class_weights=None if cw is None else torch.from_numpy(cw).to(dist.device),
            num_samples=len(train_set),
            signal_channels=data.signal_channels,
            world=dist.world,
            morph=morph,
            channels=None if data.channels is None else tuple(data.channels),
            fs=data.fs,
        )
    )
    costs = profile_model(model, data.input_shape)
    return _Setup(train_set, val_set, model, method, exit_w, cw, costs, morph, templates)


def _build_model(data: BeatDataset, config: TrainConfig, train_set: BeatDataset) -> MultiExitNet:
    """``config.model`` built afresh for ``data``, its input normalisation fitted on ``train_set``."""
    c, length = data.input_shape
    model = create_model(
        ModelConfig(
            config.model,
            in_channels=c,
            num_classes=len(data.classes),
            input_length=length,
            signal_channels=data.signal_channels,
            width=config.width,
            exit_heads=config.exit_heads,
            context_fusion=config.context_fusion,
        )
    )
    model.fit_input_norm(torch.from_numpy(train_set.x))
    return model


def _check_given_model(model: MultiExitNet, data: BeatDataset) -> None:
    """A model to fine-tune must take the data's windows and answer its classes."""
    with torch.no_grad():
        try:
            logits = model.eval()(torch.from_numpy(data.x[:2]))
        except RuntimeError as e:
            raise ConfigError(
                f"the model to fine-tune does not take windows of shape {data.input_shape}: {e}"
            ) from e
    if logits[-1].shape[-1] != len(data.classes):
        raise ConfigError(
            f"the model to fine-tune answers {logits[-1].shape[-1]} classes, the data has "
            f"{len(data.classes)} ({', '.join(data.classes)})"
        )


def _attack_morph(method: TrainingMethod, train_set: BeatDataset, config: TrainConfig):
    """``(MorphContext, templates [N, L])`` when ``method``'s training attacks recompute the
    morphology channels (:attr:`TrainConfig.attack_morph`), else ``(None, None)``."""
    from edgeexit.robust.context import MorphContext, record_templates

    morph = MorphContext.of(train_set)  # None: no morphology channels
    if morph is None or not method.crafts_attacks or config.attack_morph != "follows":
        return None, None
    try:
        templates = record_templates(train_set, morph.r_offset)
    except DataError as e:
        raise ConfigError(f"{e}; or train with attack_morph 'held' (--attack-morph held)") from e
    log.info("training attacks recompute the morphology channels (templates of %d windows)",
             len(templates))
    return morph, templates


def _reference_logits(s: _Setup, config: TrainConfig, model: MultiExitNet | None,
                      reference: MultiExitNet | None) -> np.ndarray | None:
    """The reference's logits on the validation beats when ``config.keep_sensitivity`` asks
    for them (before any training step), else None."""
    if not config.keep_sensitivity:
        return None
    classes = s.val_set.classes
    bad = [c for c in config.keep_sensitivity if c not in classes]
    if bad:
        raise ConfigError(f"keep_sensitivity names {', '.join(bad)}, not classes of the data "
                          f"({', '.join(classes)})")
    if reference is None and model is None:
        raise ConfigError("keep_sensitivity keeps a reference model's sensitivity: fine-tune a "
                          "given model (or give the reference)")
    ref = s.model if reference is None else reference
    was = next(ref.parameters()).device
    logits = predict_exits(ref.to(s.model_device), s.val_set.x)
    ref.to(was)
    if logits.shape[0] != s.model.num_exits:
        raise ConfigError(f"the reference model has {logits.shape[0]} exits, the model "
                          f"{s.model.num_exits}: keep_sensitivity compares exit by exit")
    return logits


def _keep_sensitivity(s: _Setup, config: TrainConfig, reference: np.ndarray) -> dict:
    """Offset the trained model's logits (:mod:`edgeexit.training.offsets`); the record."""
    from edgeexit.training.offsets import keep_sensitivity

    names = list(s.val_set.classes)
    classes = [names.index(c) for c in config.keep_sensitivity]
    exits = keep_sensitivity(s.model, s.val_set.x, s.val_set.y, reference, classes, names,
                             config.keep_max_loss)
    for e in exits:
        log.info("exit %d: logit offsets %s; validation sensitivity %s -> %s (reference %s)",
                 e["exit"], e["offsets"], e["before"], e["after"], e["reference"])
    return {"classes": list(config.keep_sensitivity), "max_loss": config.keep_max_loss,
            "split": "validation", "exits": exits}


# -- 2. optimiser ------------------------------------------------------------------------------


def _optimiser(s: _Setup, data: BeatDataset, config: TrainConfig, dist: Distributed) -> _Optimiser:
    """The batch loader, the augmentation, AdamW with a cosine-decayed learning rate, the EMA."""
    net: nn.Module = s.model
    if dist.world > 1:
        cuda = dist.device.type == "cuda"
        net = nn.parallel.DistributedDataParallel(s.model, device_ids=[dist.device] if cuda else None)
    loader, sampler = make_loader(s.train_set, s.templates, config, dist)
    aug_gen = torch.Generator().manual_seed(config.seed + 1 + dist.rank)
    augment = Augmentation(config, data.signal_channels, data.channels, s.morph)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = (config.schedule_epochs or config.epochs) * max(len(loader), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    ema = None
    if config.ema > 0:  # validate, select and keep the running average of the weights
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(s.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
    return _Optimiser(net, loader, sampler, augment, aug_gen, opt, sched, ema)


# -- 3. epochs ---------------------------------------------------------------------------------


def _run_epochs(s: _Setup, o: _Optimiser, config: TrainConfig, dist: Distributed, progress: bool,
                on_epoch) -> tuple[list[dict], int]:
    """Train up to ``config.epochs`` epochs; leaves the kept epoch's weights in ``s.model`` (eval
    mode) and returns ``(history, kept epoch)``."""
    scored = o.scored(s.model)
    best_score, best_epoch, best_state = -1.0, -1, None
    history = []
    for epoch in range(config.epochs):
        loss = _train_epoch(s, o, config, epoch, progress and dist.main)
        s.method.on_epoch_end(epoch)
        if config.bn_recalibrate:
            _recalibrate(scored, s.train_set, o.augment, config)
        dist.broadcast_buffers(s.model, *([] if o.ema is None else [o.ema.module]))
        score = _validate(scored, s.val_set, epoch, on_epoch, loss, history, config)
        if config.select == "last":
            best_score, best_epoch = score, epoch + 1
            best_state = scored.state_dict()  # the live weights: the last epoch's when the loop ends
        elif score > best_score:
            best_score, best_epoch = score, epoch + 1
            best_state = copy.deepcopy(scored.state_dict())
        elif config.patience and epoch + 1 - best_epoch >= config.patience:
            log.info("early stop: no better validation score for %d epochs", config.patience)
            break
    s.model.load_state_dict(best_state)  # copies the values in: no tensor is shared with ``scored``
    if config.select == "last":
        _warn_if_collapsed(history)
    s.model.eval()
    return history, best_epoch


def _train_epoch(s: _Setup, o: _Optimiser, config: TrainConfig, epoch: int, bar: bool) -> float:
    """One pass over the training batches; returns the mean loss (NaN without a batch)."""
    if o.sampler is not None:
        o.sampler.set_epoch(epoch)
    o.net.train()
    losses = []
    batches = o.loader
    if bar:
        from tqdm import tqdm

        batches = tqdm(o.loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
    for x, y, idx, *tmpl in batches:  # tmpl: the templates, when the attacks recompute
        x, t = o.augment(x, o.aug_gen, tmpl[0] if tmpl else None)  # on the CPU: seeded alike
        dev = s.model_device
        batch = Batch(x=to_device(x, dev), y=to_device(y, dev), index=to_device(idx, dev),
                      template=to_device(t, dev))
        with autocast(dev, config.amp):
            loss = s.method.loss(o.net, batch)
        o.opt.zero_grad(set_to_none=True)
        loss.backward()
        o.opt.step()
        if o.ema is not None:
            o.ema.update_parameters(s.model)
        o.sched.step()
        losses.append(float(loss.detach()))
        if bar:
            batches.set_postfix(loss=f"{losses[-1]:.3f}")
    return float(np.mean(losses)) if losses else float("nan")


def _recalibrate(scored: nn.Module, train_set: BeatDataset, augment: Augmentation,
                 config: TrainConfig) -> None:
    """Precise BatchNorm statistics: the same seeded sample, augmented alike, every epoch."""
    bn_gen = torch.Generator().manual_seed(config.seed + 7919)
    recalibrate_batchnorm(scored, train_set.x, config.bn_recalibrate, config.batch_size,
                          seed=config.seed,
                          transform=(lambda b, g=bn_gen: augment(b, g)[0])
                          if config.bn_recalibrate_augmented else None)


def _validate(scored: nn.Module, val_set: BeatDataset, epoch: int, on_epoch, loss: float,
              history: list[dict], config: TrainConfig) -> float:
    """Score the epoch on the validation beats, append it to ``history``, log it; returns the
    final exit's headline macro-F1."""
    val_logits = predict_exits(scored, val_set.x)
    val_reports = [classification_report(val_set.y, z.argmax(axis=1), val_set.classes)
                   for z in val_logits]
    if on_epoch is not None:
        on_epoch(epoch + 1, val_logits)
    score = headline_macro_f1(val_reports[-1])
    history.append({"epoch": epoch + 1, "loss": loss,
                    "val_accuracy": [r["accuracy"] for r in val_reports], "val_score": score})
    log.info("epoch %d/%d  loss %.4f  val acc per exit %s  val macro-F1 (final) %.3f",
             epoch + 1, config.epochs, loss,
             " ".join(f"{a:.3f}" for a in history[-1]["val_accuracy"]), score)
    return score


def _warn_if_collapsed(history: list[dict]) -> None:
    """Warn when the kept (last) epoch scores far below an earlier one (:data:`COLLAPSE_DROP`)."""
    if len(history) < 2:
        return
    top = max(history[:-1], key=lambda h: h["val_score"])
    drop = top["val_score"] - history[-1]["val_score"]
    if drop > COLLAPSE_DROP:  # e.g. an MIT-BIH seed whose BatchNorm statistics went astray
        log.warning(
            "the kept (last) epoch's validation macro-F1 %.3f is %.3f below epoch %d's %.3f: "
            "the model may have collapsed in its last steps; check it before deploying "
            "(tools/bn_recalibrate_check.py tells BatchNorm statistics from weights)",
            history[-1]["val_score"], drop, top["epoch"], top["val_score"])


# -- 4. evaluate and write ---------------------------------------------------------------------


def _report(s: _Setup, data: BeatDataset, config: TrainConfig, test: BeatDataset | None,
            data_spec: DataSpec | None, dist: Distributed, history: list[dict], best_epoch: int,
            meta: dict) -> tuple[dict, list[dict]]:
    """``(metrics, exits)``: the JSON-ready report, with every exit's cost and its validation
    (and test) report; ``elapsed_s`` is left to the caller."""
    model = s.model
    val_reports = evaluate_exits(model, s.val_set)
    test_reports = evaluate_exits(model, test) if test is not None else [None] * model.num_exits
    exits = []
    for cost, v, t in zip(s.costs, val_reports, test_reports):
        entry = {**cost.to_dict(), "val": v}
        if t is not None:
            entry["test"] = t
        exits.append(entry)
    metrics = {
        "model": None if model.config is None else model.config.to_dict(),
        "train_config": config.to_dict(),
        "data": {
            "spec": None if data_spec is None else data_spec.to_dict(),
            "train": s.train_set.describe(),
            "val": s.val_set.describe(),
            "test": None if test is None else test.describe(),
        },
        "class_weights": None if s.class_weights is None else [float(w) for w in s.class_weights],
        "exit_weights": list(s.exit_weights),
        "method": s.method.summary(),
        "params": sum(p.numel() for p in model.parameters()),
        "history": history,
        "best_epoch": best_epoch,
        "processes": dist.world,
        "device": describe_device(dist.device),
        "amp": config.amp,
        "determinism": determinism(dist.device),
        "elapsed_s": None,
        "exits": exits,
        **meta,
    }
    return metrics, exits


def _write_checkpoint(out: Path, model: MultiExitNet, data: BeatDataset, metrics: dict,
                      exits: list[dict], test: BeatDataset | None, meta: dict) -> Path:
    """Write ``out/model.pt`` and ``out/metrics.json`` (atomically); returns the checkpoint."""
    input_spec = {
        "shape": list(data.input_shape),
        "fs": data.fs,
        "units": data.units,
        "channels": list(data.channels),
        "signal_channels": data.signal_channels,
        "window": data.input_shape[-1],
        "rr_context": "pre_rr" in data.channels or (
            len(data.channels) > data.signal_channels and "qrs_corr" not in data.channels),
        "morph_context": "qrs_corr" in data.channels,
    }
    ckpt_path = save_checkpoint(
        out / "model.pt",
        model,
        classes=data.classes,
        input_spec=input_spec,
        meta={
            **{k: metrics[k] for k in ("train_config", "data", "best_epoch", "exit_weights")},
            "final_test": None if test is None else exits[-1]["test"],
            **meta,
        },
    )
    metrics["checkpoint"] = str(ckpt_path)
    text = json.dumps(metrics, indent=2).encode()
    atomic_write(out / "metrics.json", lambda f: f.write(text))
    log.info("wrote %s and %s", ckpt_path, out / "metrics.json")
    return ckpt_path

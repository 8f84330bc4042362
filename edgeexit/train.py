"""Training of multi-exit models: data in, best checkpoint and per-exit metrics out.

The loop is shared by every training method (:mod:`edgeexit.robust.methods`): a validation split
held out from the training data (whole records when the data knows them), cosine-decayed AdamW,
best-checkpoint keeping with early stopping on the validation macro-F1 of the final exit, and
per-exit evaluation on a test set that never influences training.

Distributed: launched under ``torchrun`` (``WORLD_SIZE > 1``) the loop trains with PyTorch's
DistributedDataParallel over the gloo backend (CPU); rank 0 evaluates, logs and writes.

Example:
    >>> result = train(train_set, TrainConfig(model="resnet1d", epochs=10), test=test_set,
    ...                out_dir=Path("runs/ecg"))
    >>> result.metrics["exits"][-1]["test"]["accuracy"]
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeexit.checkpoint import save_checkpoint
from edgeexit.data import BeatDataset, DataSpec, load_train_test, stratified_split
from edgeexit.errors import ConfigError, DataError
from edgeexit.fileio import atomic_write
from edgeexit.metrics import classification_report, headline_macro_f1
from edgeexit.models import ModelConfig, MultiExitNet, check_model_name, create_model, profile_model
from edgeexit.robust.methods import (
    Batch,
    MethodConfig,
    TrainContext,
    check_method_name,
    create_method,
    make_method_config,
    method_config_class,
)

log = logging.getLogger(__name__)

CLASS_WEIGHTINGS = ("none", "sqrt", "balanced")
VAL_SPLITS = ("auto", "record", "beat")
ATTACK_MORPH = ("follows", "held")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        model: registered model family (``edgeexit info --models`` lists them).
        width: channel-width multiplier of the family.
        exit_heads: early-exit classifiers, ``conv`` or ``linear`` (``ModelConfig.exit_heads``).
        context_fusion: every exit also gets a linear term in the input's context scalars (RR and
            morphology channels; ``ModelConfig.context_fusion``).
        method: registered training method (``standard``, ``rdi``, ``neokd``, ``ima``).
        method_config: the method's own frozen settings (its ``config_class``; eps, steps, ...);
            None = the method's defaults.
        attack_morph: how an adversarial method's training attacks treat the morphology
            channels (data with morphology context): ``follows`` recomputes them from the
            perturbed (and augmented) waveform against each window's template, as the device
            and ``edgeexit evaluate`` do, so the model cannot lean on channels an attacker moves;
            the clean half of each batch then has them recomputed from its augmented waveform
            too. ``held`` keeps the stored values (the behaviour before 2026-12-02). Ignored by
            ``standard`` and by data without morphology channels.
        epochs: maximum number of epochs.
        batch_size: samples per optimiser step (over all processes when distributed).
        lr: peak learning rate of AdamW (cosine-decayed to zero over ``epochs``).
        weight_decay: AdamW weight decay.
        val_fraction: fraction of the training data held out for validation.
        val_split: ``record`` holds out whole records (no patient on both sides), ``beat`` a
            stratified beat sample, ``auto`` = ``record`` when the data has at least 5 records.
        class_weighting: cross-entropy class weights: ``none``, ``sqrt`` (inverse square root of
            the class frequency) or ``balanced`` (inverse frequency); capped by
            ``max_class_weight`` relative to the most frequent class.
        max_class_weight: cap on any class weight (rare classes would otherwise dominate).
        exit_weights: loss weight of every exit; None = SDN-style ``(k+1)/K`` ramp.
        patience: stop after this many epochs without a better validation score (0 = never).
        schedule_epochs: the epochs the learning-rate schedule is laid out over (None =
            ``epochs``); ``train --cv`` sets it to the cross-validated length, so that a model
            trained for the chosen ``epochs`` is the very one the folds scored at that epoch.
        select: which epoch's weights to keep: ``best`` (the best validation score) or ``last``
            (every epoch runs, no early stop: for an epoch count chosen by cross-validation,
            ``edgeexit train --cv``, so that the validation records choose nothing).
        augment: random amplitude scaling and baseline offset of the signal channels.
        rr_augment: probability that a training beat's local rhythm is replaced by its own
            ``pre_rr`` (``local_rr := pre_rr``, ``pre_rr_ratio := 1``, ``post_rr_ratio :=
            post_rr / pre_rr``), as in a patient whose premature beats come in runs and set the
            local rhythm (MIT-BIH 232): the model then has to find a premature beat from the long
            rhythm (``pre_rr_avg_ratio``) too. Needs the RR context channels; 0 = off.
        rr_scale: multiply each training beat's absolute RR features (seconds) by a random
            factor within ``[1 / (1 + rr_scale), 1 + rr_scale]``, ratios unchanged (the same
            rhythm at another heart rate); 0 = off.
        time_warp: stretch each training beat's signal in time by a random factor within
            ``1 +- time_warp`` about its R peak (QRS and T widths of other patients); 0 = off.
        signal_dropout: probability that a training beat's signal is flattened (its window
            mean), so that the context channels alone must answer it; 0 = off.
        ema: decay per optimiser step of an exponential moving average of the weights (and
            BatchNorm statistics), which is then what is validated, selected and kept (e.g. 0.998:
            about the last 500 steps); 0 = off: the weights as trained.
        bn_recalibrate: after every epoch, recompute the BatchNorm statistics from this many
            training batches, unaugmented (the same seeded sample every epoch), as the exact
            average over them ("precise BN"); what is then validated, selected and kept uses
            them. 0 = off: the running averages of the last few (augmented) training steps,
            which can be far from the data's: one MIT-BIH model answered N for nearly every DS2
            beat (macro-F1 0.315) until its statistics were recomputed (0.501). Cross-validated on
            MIT-BIH DS1 it lowered the fold mean, so it is off by default.
        bn_recalibrate_augmented: recompute them from augmented batches (the training
            augmentation, seeded) instead of clean ones.
        seed: seeds weights, shuffling, splits and augmentation.
        threads: torch intra-op threads (None = torch's default).
    """

    model: str = "resnet1d"
    width: float = 1.0
    exit_heads: str = "conv"
    context_fusion: bool = False
    method: str = "standard"
    method_config: MethodConfig | None = None
    attack_morph: str = "follows"
    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    val_split: str = "auto"
    class_weighting: str = "sqrt"
    max_class_weight: float = 3.0
    exit_weights: tuple[float, ...] | None = None
    patience: int = 4
    select: str = "best"
    schedule_epochs: int | None = None
    augment: bool = True
    rr_augment: float = 0.0
    rr_scale: float = 0.0
    time_warp: float = 0.0
    signal_dropout: float = 0.0
    ema: float = 0.0
    bn_recalibrate: int = 0
    bn_recalibrate_augmented: bool = False
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        check_model_name(self.model)
        check_method_name(self.method)
        expected = method_config_class(self.method)
        if self.method_config is None:
            object.__setattr__(self, "method_config", expected())
        elif type(self.method_config) is not expected:
            raise ConfigError(
                f"method {self.method!r} takes a {expected.__name__}, "
                f"got a {type(self.method_config).__name__}"
            )
        if self.attack_morph not in ATTACK_MORPH:
            raise ConfigError(f"unknown attack_morph {self.attack_morph!r}; choose "
                              f"{' or '.join(ATTACK_MORPH)}")
        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise ConfigError(
                f"unknown class weighting {self.class_weighting!r}; "
                f"choose one of {', '.join(CLASS_WEIGHTINGS)}"
            )
        if self.select not in ("best", "last"):
            raise ConfigError(f"unknown epoch selection {self.select!r}; choose best or last")
        if self.val_split not in VAL_SPLITS:
            raise ConfigError(f"unknown val split {self.val_split!r}; choose {', '.join(VAL_SPLITS)}")
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ConfigError(f"schedule_epochs ({self.schedule_epochs}) must be at least epochs ({self.epochs})")
        if self.epochs < 1 or self.batch_size < 2 or not self.lr > 0:
            raise ConfigError("epochs must be >= 1, batch size >= 2 and the learning rate > 0")
        if not 0.0 <= self.rr_scale <= 1.0:
            raise ConfigError(f"rr_scale is a relative factor in [0, 1], got {self.rr_scale}")
        if not 0.0 <= self.time_warp < 0.5:
            raise ConfigError(f"time_warp is a relative stretch in [0, 0.5), got {self.time_warp}")
        if not 0.0 <= self.signal_dropout < 1.0:
            raise ConfigError(f"signal_dropout is a probability in [0, 1), got {self.signal_dropout}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema is a decay in [0, 1), got {self.ema}")
        if self.bn_recalibrate < 0:
            raise ConfigError(f"bn_recalibrate is a number of batches (0: off), got {self.bn_recalibrate}")
        if self.bn_recalibrate_augmented and not self.bn_recalibrate:
            raise ConfigError("bn_recalibrate_augmented needs bn_recalibrate (the batches to recompute "
                              "the statistics from, e.g. --bn-recalibrate 100)")
        if not 0.0 <= self.rr_augment <= 1.0:
            raise ConfigError(f"rr_augment is a probability in [0, 1], got {self.rr_augment}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val fraction must lie in (0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["exit_weights"] = None if self.exit_weights is None else list(self.exit_weights)
        d["method_config"] = self.method_config.to_dict()
        return d


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


COLLAPSE_DROP = 0.1
"""With ``select="last"``, a kept epoch whose validation macro-F1 is this far below an earlier
epoch's is logged as a warning (one MIT-BIH seed fell from 0.549 to 0.314 in its last epoch)."""


def recalibrate_batchnorm(model: nn.Module, x: np.ndarray, batches: int, batch_size: int,
                          seed: int = 0, transform=None) -> int:
    """Recompute every BatchNorm layer's running statistics of ``model`` as the exact average
    over ``batches`` batches of ``x`` (a seeded sample without replacement, in index order), each
    passed through ``transform`` first if given (training's augmentation), with the weights
    untouched; returns the number of windows used (0: the model has no BatchNorm).

    The running averages left by training reflect its last few steps, and augmented ones; these
    reflect the data (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm": precise BN).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not len(x):
        return 0
    n = min(len(x), batches * batch_size)
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    momenta = [b.momentum for b in bns]
    was_training = model.training
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative average: each batch counts alike
    model.train()
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                b = torch.from_numpy(np.ascontiguousarray(x[idx[i:i + batch_size]], np.float32))
                model(b if transform is None else transform(b))
    finally:
        for b, m in zip(bns, momenta):
            b.momentum = m
        model.train(was_training)
    return n


def recorded_train_config(meta: dict | None) -> TrainConfig:
    """The :class:`TrainConfig` a checkpoint records in its ``meta`` (defaults where it has none):
    export rebuilds training's validation split with it, cross-fitting retrains with it."""
    from edgeexit.config import dataclass_from_dict

    tc = dict((meta or {}).get("train_config") or {})
    if tc.get("exit_weights") is not None:
        tc["exit_weights"] = tuple(tc["exit_weights"])
    if tc.get("method_config") is not None:
        tc["method_config"] = make_method_config(tc.get("method", "standard"), tc["method_config"])
    return dataclass_from_dict(TrainConfig, tc, "train config keys") if tc else TrainConfig()


def class_weights(y: np.ndarray, num_classes: int, mode: str, cap: float) -> np.ndarray | None:
    """Cross-entropy weights per class (``mode`` in :data:`CLASS_WEIGHTINGS`), or None."""
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    power = 0.5 if mode == "sqrt" else 1.0
    w = np.where(counts > 0, (counts.max() / np.maximum(counts, 1.0)) ** power, 1.0)
    return np.minimum(w, cap).astype(np.float32)


def default_exit_weights(num_exits: int) -> tuple[float, ...]:
    """SDN-style ramp: exit k weighs ``(k+1)/K``, so the final exit weighs most."""
    return tuple((k + 1) / num_exits for k in range(num_exits))


@torch.no_grad()
def predict_exits(model: MultiExitNet, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of every exit for ``x [N, C, L]``: float32 ``[num_exits, N, num_classes]``."""
    was_training = model.training
    model.eval()
    try:
        chunks = [
            torch.stack(model(torch.from_numpy(x[i : i + batch_size]))).numpy()
            for i in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was_training)
    return np.concatenate(chunks, axis=1)


def evaluate_exits(model: MultiExitNet, data: BeatDataset, batch_size: int = 512) -> list[dict]:
    """:func:`edgeexit.metrics.classification_report` of every exit on ``data``."""
    logits = predict_exits(model, data.x, batch_size)
    return [classification_report(data.y, z.argmax(axis=1), data.classes) for z in logits]


def _augment(x: torch.Tensor, signal_channels: int, gen: torch.Generator,
             template: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Patient- and sensor-like variation of the signal channels (context channels untouched).

    Gain 0.6-1.5 (electrode placement, body habitus), a baseline offset and linear drift up to
    +-0.3 mV (wander), Gaussian noise up to 0.05 mV rms (muscle, electronics), and a shift of the
    beat by up to +-6 samples (R-peak detection jitter on the device). Returns ``(x, template)``:
    the windows' morphology ``template`` ``[N, L]`` (None passes through) scaled by the same gain (a recording's gain moves its earlier beats alike; the noise, wander and jitter are
    the beat's own).
    """
    n, s, length = x.shape[0], signal_channels, x.shape[-1]
    sig = x[:, :s]
    gain = 0.6 + 0.9 * torch.rand(n, 1, 1, generator=gen)
    ramp = torch.linspace(-1.0, 1.0, length).view(1, 1, length)
    offset = 0.6 * torch.rand(n, 1, 1, generator=gen) - 0.3
    drift = (0.6 * torch.rand(n, 1, 1, generator=gen) - 0.3) * ramp
    noise = 0.05 * torch.rand(n, 1, 1, generator=gen) * torch.randn(sig.shape, generator=gen)
    shift = int(torch.randint(-6, 7, (1,), generator=gen))
    sig = torch.roll(sig, shifts=shift, dims=-1) * gain + offset + drift + noise
    return (torch.cat([sig, x[:, s:]], dim=1),
            None if template is None else template * gain.view(n, 1))


def _rr_channels(channels: tuple[str, ...] | list[str]) -> dict[str, int] | None:
    """Channel index of every RR feature ``_rr_augment`` and ``_rr_rescale`` rewrite, or None
    without them."""
    names = ("pre_rr", "post_rr", "local_rr", "pre_rr_ratio", "post_rr_ratio", "avg_rr")
    idx = {n: list(channels).index(n) for n in names if n in channels}
    return idx if len(idx) == len(names) else None


def _rr_rescale(x: torch.Tensor, rr: dict[str, int], amount: float, gen: torch.Generator) -> torch.Tensor:
    """Multiply every beat's absolute RR features (seconds) by one factor within ``[1 / (1 +
    amount), 1 + amount]``, its ratios unchanged: the same rhythm at another patient's heart rate
    (:attr:`TrainConfig.rr_scale`)."""
    k = torch.exp(math.log1p(amount) * (2.0 * torch.rand(x.shape[0], 1, generator=gen) - 1.0))
    x = x.clone()
    for name in ("pre_rr", "post_rr", "local_rr", "avg_rr"):
        x[:, rr[name]] = x[:, rr[name]] * k
    return x


def _rr_augment(x: torch.Tensor, rr: dict[str, int], p: float, gen: torch.Generator) -> torch.Tensor:
    """With probability ``p`` per beat, the local rhythm becomes the beat's own ``pre_rr``
    (:attr:`TrainConfig.rr_augment`)."""
    pick = torch.rand(x.shape[0], generator=gen) < p
    if not bool(pick.any()):
        return x
    x = x.clone()
    pre = x[pick, rr["pre_rr"]]
    x[pick, rr["local_rr"]] = pre
    x[pick, rr["pre_rr_ratio"]] = 1.0
    x[pick, rr["post_rr_ratio"]] = x[pick, rr["post_rr"]] / pre
    return x


def _signal_dropout(x: torch.Tensor, signal_channels: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """With probability ``p`` per beat, flatten its signal channels to their window mean (zero
    after the model's per-window centring): the context channels alone must then carry the
    answer, so the model learns what they say instead of memorising the training patients'
    waveforms (:attr:`TrainConfig.signal_dropout`)."""
    pick = torch.rand(x.shape[0], generator=gen) < p
    if not bool(pick.any()):
        return x
    x = x.clone()
    sig = x[pick, :signal_channels]
    x[pick, :signal_channels] = sig.mean(dim=-1, keepdim=True).expand_as(sig)
    return x


def _time_warp(x: torch.Tensor, signal_channels: int, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Stretch or squeeze each beat's signal in time by a factor in ``1 +- amount`` about the R
    peak (3/8 of the window; :func:`edgeexit.runtime.preprocess.default_r_offset`), by linear
    interpolation: wider and narrower QRS complexes and T waves than the training patients have."""
    from edgeexit.runtime.preprocess import default_r_offset

    n, s, length = x.shape[0], signal_channels, x.shape[-1]
    r = float(default_r_offset(length))
    scale = 1.0 + amount * (2.0 * torch.rand(n, 1, generator=gen) - 1.0)  # [n, 1]
    pos = (r + (torch.arange(length, dtype=torch.float32)[None, :] - r) / scale).clamp(0, length - 1)
    i0 = pos.floor().long().clamp(max=length - 2)
    frac = (pos - i0).unsqueeze(1)  # [n, 1, L]
    sig = x[:, :s]
    a = sig.gather(-1, i0.unsqueeze(1).expand(-1, s, -1))
    b = sig.gather(-1, (i0 + 1).unsqueeze(1).expand(-1, s, -1))
    return torch.cat([a + (b - a) * frac, x[:, s:]], dim=1)


def _attack_morph(method, train_set: BeatDataset, config: TrainConfig):
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


def split_validation(data: BeatDataset, config: TrainConfig) -> tuple[BeatDataset, BeatDataset]:
    """The (training, validation) split that :func:`train` makes of ``data`` under ``config``.

    Deterministic under ``config.seed``: export calls it again to calibrate exit thresholds on the
    very beats the model was validated on (never on test data).
    """
    n_records = 0 if data.groups is None else int(np.unique(data.groups).size)
    by_record = config.val_split == "record" or (config.val_split == "auto" and n_records >= 5)
    if by_record and data.groups is None:
        raise DataError("val split 'record' needs record ids (groups) in the data; use 'beat'")
    groups = data.groups if by_record else None
    keep, held = stratified_split(data.y, config.val_fraction, config.seed, groups)
    log.info(
        "validation: %d beats held out by %s, %d left for training",
        held.size,
        "record" if by_record else "beat",
        keep.size,
    )
    return data.subset(keep), data.subset(held)


class _Distributed:
    """Rank/world size under torchrun; initialises the gloo process group when needed."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.owns_group = False
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owns_group:
            torch.distributed.destroy_process_group()


def train(
    data: BeatDataset,
    config: TrainConfig = TrainConfig(),
    *,
    test: BeatDataset | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
    data_spec: DataSpec | None = None,
    model: MultiExitNet | None = None,
    meta: dict | None = None,
    val: BeatDataset | None = None,
    on_epoch: Callable[[int, np.ndarray], None] | None = None,
) -> TrainResult:
    """Train a multi-exit model on ``data`` and evaluate every exit.

    Args:
        data: training beats; a validation part is held out of them (``config.val_*``).
        config: the :class:`TrainConfig`.
        test: test beats, evaluated once with the best model (never used for any decision).
        out_dir: where to write ``model.pt`` and ``metrics.json`` (atomically); None = nowhere.
        progress: draw a progress bar over the batches of every epoch (on stderr, rank 0).
        data_spec: how the data was loaded, recorded in the checkpoint and the metrics.
        model: fine-tune this model (trained in place; its input normalisation is kept) instead
            of building ``config.model`` afresh; e.g. a pruned model.
        meta: extra entries for the checkpoint's and the metrics' records (e.g. compression).
        val: the validation beats (e.g. a cross-validation fold's held-out records); None = hold
            out a part of ``data`` (``config.val_*``).
        on_epoch: called after every epoch's validation as ``on_epoch(epoch, logits)`` (epoch
            from 1; ``logits``: every exit's on the validation beats, ``[exits, N, classes]``).

    Returns:
        A :class:`TrainResult`.
    """
    dist = _Distributed()
    try:
        return _train(data, config, test, out_dir, progress, data_spec, dist, model, meta or {},
                      val, on_epoch)
    finally:
        dist.close()


def _build_model(data: BeatDataset, config: TrainConfig, train_set: BeatDataset) -> MultiExitNet:
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


def _train(data, config, test, out_dir, progress, data_spec, dist, model, extra_meta, val,
           on_epoch) -> TrainResult:
    t_start = time.perf_counter()
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
    length = data.input_shape[-1]
    if model is None:
        model = _build_model(data, config, train_set)
    else:
        _check_given_model(model, data)
    exit_w = config.exit_weights or default_exit_weights(model.num_exits)
    if len(exit_w) != model.num_exits:
        raise ConfigError(f"{len(exit_w)} exit weights given for {model.num_exits} exits")
    cw = class_weights(train_set.y, len(data.classes), config.class_weighting, config.max_class_weight)
    method = create_method(config.method, config.method_config)
    morph, templates = _attack_morph(method, train_set, config)
    method.setup(
        TrainContext(
            model=model,
            exit_weights=torch.tensor(exit_w, dtype=torch.float32),
            class_weights=None if cw is None else torch.from_numpy(cw),
            num_samples=len(train_set),
            signal_channels=data.signal_channels,
            world=dist.world,
            morph=morph,
        )
    )
    costs = profile_model(model, data.input_shape)

    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    dataset = torch.utils.data.TensorDataset(
        torch.from_numpy(train_set.x),
        torch.from_numpy(train_set.y),
        torch.arange(len(train_set)),
        *([] if templates is None else [torch.from_numpy(templates)]),
    )
    per_rank_batch = max(2, config.batch_size // dist.world)
    sampler = None
    gen = torch.Generator().manual_seed(config.seed)
    if dist.world > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=config.seed
        )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=per_rank_batch,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(dataset) > per_rank_batch,  # BatchNorm cannot train on a batch of one
        generator=gen,
    )
    aug_gen = torch.Generator().manual_seed(config.seed + 1 + dist.rank)
    rr_idx = None
    if config.rr_augment > 0 or config.rr_scale > 0:
        rr_idx = _rr_channels(data.channels)
        if rr_idx is None:
            raise ConfigError("rr_augment and rr_scale rewrite the RR context channels, and the data "
                              "has none: train with --rr-context, or leave them at 0")
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = (config.schedule_epochs or config.epochs) * max(len(loader), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )

    best_score, best_epoch, best_state = -1.0, -1, None
    ema = None
    if config.ema > 0:  # validate, select and keep the running average of the weights
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
    scored = model if ema is None else ema.module

    def augmented(x: torch.Tensor, gen: torch.Generator, template: torch.Tensor | None = None):
        """``(x, template)``: a training batch through every augmentation the config turns on;
        with the windows' morphology templates (scaled with the beats), the morphology channels
        recomputed from the augmented waveform."""
        if config.augment:
            x, template = _augment(x, data.signal_channels, gen, template)
        if config.time_warp > 0:
            x = _time_warp(x, data.signal_channels, config.time_warp, gen)
        if config.signal_dropout > 0:
            x = _signal_dropout(x, data.signal_channels, config.signal_dropout, gen)
        if rr_idx is not None and config.rr_augment > 0:
            x = _rr_augment(x, rr_idx, config.rr_augment, gen)
        if rr_idx is not None and config.rr_scale > 0:
            x = _rr_rescale(x, rr_idx, config.rr_scale, gen)
        if template is None:
            return x, None
        return morph.recompute_torch(morph.with_template(x, template)), template

    history = []
    for epoch in range(config.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        losses = []
        batches = loader
        if progress and dist.main:
            from tqdm import tqdm

            batches = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        for x, y, idx, *tmpl in batches:  # tmpl: the templates, when the attacks recompute
            x, t = augmented(x, aug_gen, tmpl[0] if tmpl else None)
            loss = method.loss(net, Batch(x=x, y=y, index=idx, template=t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            sched.step()
            losses.append(float(loss.detach()))
            if progress and dist.main:
                batches.set_postfix(loss=f"{losses[-1]:.3f}")
        method.on_epoch_end(epoch)
        if config.bn_recalibrate:  # the same seeded sample, augmented alike, every epoch
            bn_gen = torch.Generator().manual_seed(config.seed + 7919)
            recalibrate_batchnorm(scored, train_set.x, config.bn_recalibrate, config.batch_size,
                                  seed=config.seed,
                                  transform=(lambda b, g=bn_gen: augmented(b, g)[0])
                                  if config.bn_recalibrate_augmented else None)
        if dist.world > 1:  # BatchNorm statistics drift apart per rank: take rank 0's, so that
            for buf in [*model.buffers(), *([] if ema is None else ema.module.buffers())]:
                torch.distributed.broadcast(buf, src=0)  # every rank scores one model, stops together
        val_logits = predict_exits(scored, val_set.x)
        val_reports = [classification_report(val_set.y, z.argmax(axis=1), val_set.classes)
                       for z in val_logits]
        if on_epoch is not None:
            on_epoch(epoch + 1, val_logits)
        score = headline_macro_f1(val_reports[-1])
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)) if losses else float("nan"),
                "val_accuracy": [r["accuracy"] for r in val_reports],
                "val_score": score,
            }
        )
        log.info(
            "epoch %d/%d  loss %.4f  val acc per exit %s  val macro-F1 (final) %.3f",
            epoch + 1,
            config.epochs,
            history[-1]["loss"],
            " ".join(f"{a:.3f}" for a in history[-1]["val_accuracy"]),
            score,
        )
        if config.select == "last":
            best_score, best_epoch = score, epoch + 1
            best_state = scored.state_dict()  # the live weights: the last epoch's when the loop ends
        elif score > best_score:
            best_score, best_epoch = score, epoch + 1
            best_state = copy.deepcopy(scored.state_dict())
        elif config.patience and epoch + 1 - best_epoch >= config.patience:
            log.info("early stop: no better validation score for %d epochs", config.patience)
            break
    model.load_state_dict(best_state)  # copies the values in: no tensor is shared with ``scored``
    if config.select == "last" and len(history) > 1:
        top = max(history[:-1], key=lambda h: h["val_score"])
        drop = top["val_score"] - history[-1]["val_score"]
        if drop > COLLAPSE_DROP:  # e.g. an MIT-BIH seed whose BatchNorm statistics went astray
            log.warning(
                "the kept (last) epoch's validation macro-F1 %.3f is %.3f below epoch %d's %.3f: "
                "the model may have collapsed in its last steps; check it before deploying "
                "(tools/bn_recalibrate_check.py tells BatchNorm statistics from weights)",
                history[-1]["val_score"], drop, top["epoch"], top["val_score"])
    model.eval()

    val_reports = evaluate_exits(model, val_set)
    test_reports = evaluate_exits(model, test) if test is not None else [None] * model.num_exits
    exits = []
    for cost, v, t in zip(costs, val_reports, test_reports):
        entry = {**cost.to_dict(), "val": v}
        if t is not None:
            entry["test"] = t
        exits.append(entry)
    metrics = {
        "model": None if model.config is None else model.config.to_dict(),
        "train_config": config.to_dict(),
        "data": {
            "spec": None if data_spec is None else data_spec.to_dict(),
            "train": train_set.describe(),
            "val": val_set.describe(),
            "test": None if test is None else test.describe(),
        },
        "class_weights": None if cw is None else [float(w) for w in cw],
        "exit_weights": list(exit_w),
        "method": method.summary(),
        "params": sum(p.numel() for p in model.parameters()),
        "history": history,
        "best_epoch": best_epoch,
        "processes": dist.world,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
        "exits": exits,
        **extra_meta,
    }
    ckpt_path = None
    if out_dir is not None and dist.main:
        out = Path(out_dir)
        input_spec = {
            "shape": list(data.input_shape),
            "fs": data.fs,
            "units": data.units,
            "channels": list(data.channels),
            "signal_channels": data.signal_channels,
            "window": length,
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
                **extra_meta,
            },
        )
        metrics["checkpoint"] = str(ckpt_path)
        text = json.dumps(metrics, indent=2).encode()
        atomic_write(out / "metrics.json", lambda f: f.write(text))
        log.info("wrote %s and %s", ckpt_path, out / "metrics.json")
    dist.barrier()
    return TrainResult(model=model, metrics=metrics, checkpoint=ckpt_path)


def run_training(
    spec: DataSpec,
    config: TrainConfig,
    out_dir: str | os.PathLike | None,
    progress: bool = False,
    cv_folds: int | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TrainResult:
    """Load the data of ``spec`` (train and test) and :func:`train` on it: what `edgeexit train` runs.

    ``cv_folds``: first choose the epoch count by leave-records-out cross-validation on the
    training side (:func:`edgeexit.cv.cross_validate`; written to ``OUT/cv.json`` and
    ``OUT/cv.md``), then train for exactly that many epochs, keeping the last; the test split is
    evaluated once, at the end.
    """
    t0 = time.perf_counter()
    bar = None

    def record_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="reading records", unit="record", leave=False)
        bar.update(done - bar.n)

    try:
        train_set, test_set = load_train_test(spec, progress=record_progress if progress else None)
    finally:
        if bar is not None:
            bar.close()
    log.info(
        "data: %d training beats %s, %d test beats %s (%.1f s)",
        len(train_set),
        train_set.class_counts(),
        len(test_set),
        test_set.class_counts(),
        time.perf_counter() - t0,
    )
    extra = {}
    if cv_folds:
        from edgeexit.cv import cross_validate

        cv = cross_validate(train_set, config, cv_folds, progress=on_stage, train_progress=progress)
        d, table = cv.to_dict(), cv.table()
        if out_dir is not None and int(os.environ.get("RANK", "0")) == 0:  # rank 0 writes, as train()
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            text = json.dumps(d, indent=2).encode()
            atomic_write(out / "cv.json", lambda f: f.write(text))
            atomic_write(out / "cv.md", lambda f: f.write(table.encode()))
        extra["cv"] = {k: d[k] for k in ("source", "folds", "best_epoch", "best_mean_score",
                                         "fold_scores_at_best", "mean_score_per_epoch")}
        extra["cv"]["table"] = table
        config = dataclasses.replace(config, epochs=cv.best_epoch, select="last",
                                     schedule_epochs=config.epochs)
        if on_stage:
            on_stage(f"cross-validation chose {cv.best_epoch} epochs (mean final-exit score "
                     f"{cv.best_score:.3f}); training the model for them (its validation records "
                     "choose nothing now; export calibrates on them)")
    return train(train_set, config, test=test_set, out_dir=out_dir, progress=progress, data_spec=spec,
                 meta=extra)

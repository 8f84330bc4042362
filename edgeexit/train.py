"""Training of multi-exit models: data in, best checkpoint and per-exit metrics out.

The loop is shared by every training method (:mod:`edgeexit.robust.methods`): a validation split
held out from the training data (whole records when the data knows them), cosine-decayed AdamW,
best-checkpoint keeping with early stopping on the validation macro-F1 of the final exit, and
per-exit evaluation on a test set that never influences training.

Devices: ``TrainConfig.device`` (``auto``: a CUDA GPU when one is visible, else the CPU;
:mod:`edgeexit.torchdevice`), optional bfloat16 autocast (``amp``); the checkpoint always holds
CPU tensors. Distributed: launched under ``torchrun`` (``WORLD_SIZE > 1``, one machine or
several) the loop trains with PyTorch's DistributedDataParallel over NCCL (GPUs) or gloo (CPUs);
rank 0 evaluates, logs and writes.

Example:
    >>> result = train(train_set, TrainConfig(model="resnet1d", epochs=10), test=test_set,
    ...                out_dir=Path("runs/ecg"))
    >>> result.metrics["exits"][-1]["test"]["accuracy"]
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable

import numpy as np

from edgeexit.data import BeatDataset, DataSpec
from edgeexit.data.splits import ValidationSplit
from edgeexit.errors import ConfigError
from edgeexit.metrics import warn_one_class
from edgeexit.models import MultiExitNet, check_model_name
from edgeexit.robust.methods import (
    MethodConfig,
    check_method_name,
    make_method_config,
    method_config_class,
)
from edgeexit.torchdevice import AMP_MODES
from edgeexit.training.batchnorm import recalibrate_batchnorm
from edgeexit.training.data import class_weights, split_validation
from edgeexit.training.distributed import Distributed
from edgeexit.training.evaluation import evaluate_exits, predict_exits
from edgeexit.training.loop import TrainResult, default_exit_weights, fit
from edgeexit.training.offsets import check_keep

__all__ = [
    "TrainConfig", "TrainResult", "train", "recorded_train_config",
    "split_validation", "class_weights", "default_exit_weights", "predict_exits",
    "evaluate_exits", "recalibrate_batchnorm",
]

log = logging.getLogger(__name__)

CLASS_WEIGHTINGS = ("none", "sqrt", "balanced")
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
        keep_sensitivity: class names; after fine-tuning a given model, every exit's logits are
            offset per class (the head's last bias, :mod:`edgeexit.training.offsets`) so that
            these classes' validation sensitivity is at least the reference model's at the same
            exit (the model as given, before training, or :func:`train`'s ``reference``).
            Adversarial fine-tuning gives up rare classes (MIT-BIH S beats); this gives them
            back. Empty: off.
        keep_max_loss: points of validation accuracy the offsets of one exit may cost (the
            other classes pay for the named ones); beyond it the targets are scaled back.
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
        device: where to train: ``auto`` (a CUDA GPU when PyTorch sees one, else the CPU),
            ``cpu``, ``cuda`` or ``cuda:N``; under torchrun ``auto``/``cuda`` take the GPU of
            the process's ``LOCAL_RANK``. Random draws come from CPU generators, so one seed
            draws the same batches, augmentation and attack starts on every device.
        amp: ``none`` (float32) or ``bf16``: the training forward passes (and the training
            attacks) under :func:`torch.autocast` in bfloat16; validation stays float32.
        loader_workers: worker processes of the batch loader (0: the training process).
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
    keep_sensitivity: tuple[str, ...] = ()
    keep_max_loss: float = 2.0
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
    device: str = "auto"
    amp: str = "none"
    loader_workers: int = 0

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
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ConfigError(f"unknown device {self.device!r}; choose auto, cpu, cuda or cuda:N")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"unknown amp {self.amp!r}; choose {' or '.join(AMP_MODES)}")
        if self.loader_workers < 0:
            raise ConfigError(f"loader_workers is a number of processes, got {self.loader_workers}")
        keep = check_keep(self.keep_sensitivity, self.keep_max_loss)
        object.__setattr__(self, "keep_sensitivity", keep)
        self.validation_split()  # raises on an unknown val_split or a val_fraction outside (0, 1)

    def validation_split(self) -> ValidationSplit:
        """How :func:`train` holds validation beats out (export rebuilds the same split from the
        checkpoint with :meth:`ValidationSplit.recorded`)."""
        return ValidationSplit(self.val_split, self.val_fraction, self.seed)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["exit_weights"] = None if self.exit_weights is None else list(self.exit_weights)
        d["keep_sensitivity"] = list(self.keep_sensitivity)
        d["method_config"] = self.method_config.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config :meth:`to_dict` wrote (a checkpoint's record, a recipe's ``[train]``
        table); missing keys keep their defaults, unknown ones raise :class:`ConfigError`."""
        from edgeexit.config import dataclass_from_dict

        d = dict(d)
        if d.get("exit_weights") is not None:
            d["exit_weights"] = tuple(d["exit_weights"])
        if d.get("method_config") is not None:
            d["method_config"] = make_method_config(d.get("method", "standard"), d["method_config"])
        return dataclass_from_dict(cls, d, "train config keys")


def recorded_train_config(meta: dict | None) -> TrainConfig:
    """The :class:`TrainConfig` a checkpoint records in its ``meta`` (defaults where it has none):
    export rebuilds training's validation split with it, cross-fitting retrains with it. Where
    it trained is not part of the recipe: ``device`` comes back ``auto`` and ``loader_workers``
    0 (a model trained on ``cuda:1`` retrains on a machine without a GPU)."""
    tc = dict((meta or {}).get("train_config") or {})
    tc.update(device="auto", loader_workers=0)
    return TrainConfig.from_dict(tc)


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
    reference: MultiExitNet | None = None,
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
        reference: the model whose per-class validation sensitivity ``config.keep_sensitivity``
            keeps (None: ``model`` as given, before training; e.g. the unpruned model when
            ``model`` is its pruned copy).
        on_epoch: called after every epoch's validation as ``on_epoch(epoch, logits)`` (epoch
            from 1; ``logits``: every exit's on the validation beats, ``[exits, N, classes]``).

    Returns:
        A :class:`TrainResult`.
    """
    warn_one_class(data.y, "training")
    dist = Distributed(config.device)
    try:
        return fit(data, config, test=test, out_dir=out_dir, progress=progress,
                   data_spec=data_spec, dist=dist, model=model, meta=meta or {}, val=val,
                   on_epoch=on_epoch, reference=reference)
    finally:
        dist.close()

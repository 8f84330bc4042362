"""Fine-tuning of a compressed model: standard, adversarial, or on-manifold adversarial.

A pruned model loses accuracy and, more easily still, robustness; a few epochs of fine-tuning
recover them. Each kind is one of the training methods (:mod:`edgeexit.robust.methods`) run by the
shared training loop (:func:`edgeexit.train.train`, with the pruned model as its start):

- ``standard``: the weighted per-exit cross-entropy;
- ``adv``: RDI-Nets (``rdi``): clean and multi-exit PGD examples within ``eps`` mV;
- ``ctxadv``: context-adversarial (``ctxadv``): RDI-Nets whose PGD also moves the R-peak
  detections within ``timing_ms`` and recomputes the RR context as the device does
  (:mod:`edgeexit.robust.methods.ctxadv`);
- ``onmanifold``: Kwon & Lee (Future Internet 2021): ordinary PGD examples and on-manifold ones
  (PGD in the latent space of a VAE of the signal, decoded, kept only when the label is
  preserved), see :mod:`edgeexit.compress.manifold`.

Everything else (optimiser, learning rate, class and exit weights, the validation split,
augmentation) is what the original model was trained with (the checkpoint records it).

Example:
    >>> cfg = FinetuneConfig("adv", epochs=2, eps=0.1)
    >>> result = finetune(pruned, train_set, cfg, meta=ckpt.meta, test=test_set)
"""

from __future__ import annotations

import dataclasses
import math
import os

from edgeexit.config import dataclass_from_dict
from edgeexit.data import BeatDataset, DataSpec
from edgeexit.errors import ConfigError
from edgeexit.models import MultiExitNet
from edgeexit.training.offsets import check_keep

FINETUNES = ("none", "standard", "adv", "ctxadv", "onmanifold")
METHOD_OF = {"standard": "standard", "adv": "rdi", "ctxadv": "ctxadv", "onmanifold": "onmanifold"}
"""The training method behind every kind of fine-tuning."""


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune the compressed model.

    Attributes:
        kind: ``none``, ``standard``, ``adv``, ``ctxadv`` or ``onmanifold``.
        epochs: fine-tuning epochs (the best by validation macro-F1 is kept). Measured on the
            quick-start model pruned at 0.75 (test accuracy 10% right after pruning, 98.7%
            before): 96.1% after 4 epochs, 98.3% after 8.
        lr: peak AdamW learning rate (cosine-decayed); None = the one training used (a pruned
            model at 0.75 recovers poorly at a third of it: 60% after 2 epochs at 1e-3).
        eps: ``adv``, ``ctxadv`` and ``onmanifold``: the PGD budget in mV (Linf) on the signal
            channels.
        attack_steps: PGD steps per batch.
        timing_ms: ``ctxadv``: the largest move of one R-peak detection, ms.
        rhythm: ``ctxadv``: how far the attack may move the long rhythm (``avg_rr``), as a
            fraction (:class:`~edgeexit.robust.methods.ctxadv.ContextAdvConfig`); 0: held.
        keep_sensitivity: class names whose validation sensitivity the fine-tuned model keeps at
            the reference's (the model before compression) by per-class logit offsets
            (:attr:`edgeexit.train.TrainConfig.keep_sensitivity`); empty: off.
        keep_max_loss: points of validation accuracy those offsets may cost per exit.
        eta: ``onmanifold``: the latent budget (Linf on z); None = the method's default.
        latent_steps: ``onmanifold``: latent PGD steps; None = the method's default.
        seed: seeds the shuffling and the attacks' random starts.
        threads: torch threads (None = torch's default).
        device: where to fine-tune (``auto``, ``cpu``, ``cuda``, ``cuda:N``;
            :func:`edgeexit.torchdevice.resolve_device`), whatever trained the model.
        amp: ``none`` or ``bf16`` (:attr:`edgeexit.train.TrainConfig.amp`).
    """

    kind: str = "standard"
    epochs: int = 8
    lr: float | None = None
    eps: float = 0.1
    attack_steps: int = 5
    timing_ms: float = 25.0
    rhythm: float = 0.0
    keep_sensitivity: tuple[str, ...] = ()
    keep_max_loss: float = 2.0
    eta: float | None = None
    latent_steps: int | None = None
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    amp: str = "none"

    def __post_init__(self) -> None:
        if self.kind not in FINETUNES:
            raise ConfigError(
                f"unknown fine-tuning {self.kind!r}; choose one of {', '.join(FINETUNES)}"
            )
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"fine-tuning epochs must be an integer >= 1, got {self.epochs!r}")
        for name in ("lr", "eps"):
            v = getattr(self, name)
            if name == "lr" and v is None:
                continue
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"fine-tuning {name} must be a number > 0, got {v!r}")
        keep = check_keep(self.keep_sensitivity, self.keep_max_loss)
        object.__setattr__(self, "keep_sensitivity", keep)
        if keep and self.kind == "none":
            raise ConfigError("keep_sensitivity offsets a fine-tuned model: choose a fine-tuning "
                              "(e.g. ctxadv), or leave keep_sensitivity out")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["keep_sensitivity"] = list(self.keep_sensitivity)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        return dataclass_from_dict(cls, d, "fine-tune config keys")


def method_options(config: FinetuneConfig, vae: str | os.PathLike | None) -> dict:
    """The training method's settings for ``config`` (the VAE file for ``onmanifold``)."""
    if config.kind in ("none", "standard"):
        return {}
    options = {"eps": float(config.eps), "steps": int(config.attack_steps)}
    if config.kind == "ctxadv":
        options["timing_ms"] = float(config.timing_ms)
        if config.rhythm:
            options["rhythm"] = float(config.rhythm)
    if config.kind == "onmanifold":
        if vae is None:
            raise ConfigError("on-manifold fine-tuning needs a VAE file (train one, or --vae FILE)")
        options["vae"] = str(vae)
        if config.eta is not None:
            options["eta"] = float(config.eta)
        if config.latent_steps is not None:
            options["latent_steps"] = int(config.latent_steps)
    return options


def train_config(config: FinetuneConfig, meta: dict | None, vae: str | os.PathLike | None = None,
                 epochs: int | None = None):
    """The :class:`~edgeexit.train.TrainConfig` of the fine-tuning: the recorded training
    settings, with this fine-tuning's method, epochs, learning rate (when set) and seed."""
    from edgeexit.robust.methods import make_method_config
    from edgeexit.train import recorded_train_config

    base = recorded_train_config(meta)
    method = METHOD_OF[config.kind]
    return dataclasses.replace(
        base,
        method=method,
        method_config=make_method_config(method, method_options(config, vae)),
        epochs=epochs or config.epochs,
        lr=base.lr if config.lr is None else config.lr,
        patience=0,
        keep_sensitivity=config.keep_sensitivity,
        keep_max_loss=config.keep_max_loss,
        seed=config.seed,
        threads=config.threads,
        device=config.device,
        amp=config.amp,
    )


def finetune(
    model: MultiExitNet,
    data: BeatDataset,
    config: FinetuneConfig,
    *,
    meta: dict | None = None,
    vae: str | os.PathLike | None = None,
    test: BeatDataset | None = None,
    out_dir: str | os.PathLike | None = None,
    data_spec: DataSpec | None = None,
    extra_meta: dict | None = None,
    epochs: int | None = None,
    progress: bool = False,
    reference: MultiExitNet | None = None,
):
    """Fine-tune ``model`` in place on ``data`` (see the module docstring).

    Args:
        model: the compressed model.
        data: training beats (a validation part is held out of them, as in training).
        config: the :class:`FinetuneConfig` (``kind`` must not be ``none``).
        meta: the original checkpoint's ``meta`` (its training settings are reused).
        vae: the saved VAE for ``onmanifold``.
        test: test beats, evaluated once at the end (never used for a decision).
        out_dir: where the fine-tuned ``model.pt`` and ``metrics.json`` go; None = nowhere.
        data_spec: recorded in the checkpoint.
        extra_meta: extra records for the checkpoint (the compression provenance).
        epochs: override ``config.epochs`` (short fine-tuning between pruning steps).
        progress: progress bars over the batches.
        reference: the model whose validation sensitivities ``config.keep_sensitivity`` keeps
            (None: ``model`` as given).

    Returns:
        The :class:`~edgeexit.train.TrainResult`.
    """
    from edgeexit.train import train

    if config.kind == "none":
        raise ConfigError("finetune() with kind 'none': nothing to do")
    return train(data, train_config(config, meta, vae, epochs), test=test, out_dir=out_dir,
                 progress=progress, data_spec=data_spec, model=model, meta=extra_meta,
                 reference=reference)

"""On-manifold adversarial training (fine-tuning) of a multi-exit model.

Kwon & Lee, "Adversarial training on compressed models: an on-manifold approach", Future
Internet 2021 (after Stutz et al., "Disentangling adversarial robustness and generalization",
CVPR 2019): the model is trained on clean inputs, on ordinary (off-manifold) PGD examples and on
on-manifold examples found by PGD in the latent space of a VAE of the data, kept only where the
VAE's latent classifier says the label is preserved::

    loss = [L(x) + L(x_pgd) + lambda * L_kept(x_man)] / (2 + lambda)

where ``L`` is the weighted multi-exit cross-entropy (exit and class weights, as ``rdi``) and
``L_kept`` the same averaged over the kept on-manifold windows only (per exit, class-weighted,
masked per sample; 0 when none is kept). ``x_pgd`` comes from the training attack of
:class:`~edgeexit.robust.methods.adversarial.AdversarialConfig` (``avg`` or ``max-avg`` PGD within
``eps`` mV); ``x_man`` from :class:`~edgeexit.robust.attacks.latent.LatentPGD` (``latent_steps``
accumulated steps within ``|zeta|_inf <= eta``, the residual rule, a random start in the box per
batch). All three go through ``net`` in ONE forward pass (DDP allows one forward per backward).

The VAE is trained beforehand (:func:`edgeexit.models.vae.train_vae`) and given by path
(``vae``); it must model the training windows' signal channels.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from edgeexit.errors import CheckpointError, ConfigError
from edgeexit.robust.methods.adversarial import (
    AdversarialConfig,
    TrainingAttack,
    attack_input,
    attacked,
)
from edgeexit.robust.methods.base import Batch, TrainContext, TrainingMethod, register_method


@dataclasses.dataclass(frozen=True)
class OnManifoldConfig(AdversarialConfig):
    """The settings of on-manifold adversarial training.

    Attributes:
        eps, norm, steps, step_size, attack: the off-manifold PGD (see
            :class:`~edgeexit.robust.methods.adversarial.AdversarialConfig`).
        vae: path of a VAE saved by :func:`edgeexit.models.vae.save_vae` (required; checked
            when training starts).
        eta: the latent Linf budget (latent units; the VAE's prior is N(0, 1) per dimension).
        latent_steps: ascent steps of the latent attack (they accumulate).
        latent_step_size: latent step; None = ``2.5 * eta / latent_steps``.
        manifold_weight: ``lambda``, the weight of the on-manifold term.
    """

    vae: str = ""
    eta: float = 0.5
    latent_steps: int = 5
    latent_step_size: float | None = None
    manifold_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.vae, str):
            raise ConfigError(f"vae must be the path of a saved VAE file, got {self.vae!r}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not (
            math.isfinite(self.eta) and self.eta > 0
        ):
            raise ConfigError(f"eta (the latent Linf budget) must be a number > 0, got {self.eta!r}")
        if (isinstance(self.latent_steps, bool) or not isinstance(self.latent_steps, int)
                or self.latent_steps < 1):
            raise ConfigError(f"latent_steps must be an integer >= 1, got {self.latent_steps!r}")
        if self.latent_step_size is not None:
            if not (isinstance(self.latent_step_size, (int, float))
                    and math.isfinite(self.latent_step_size) and self.latent_step_size > 0):
                raise ConfigError(
                    f"latent_step_size must be a number > 0 (or unset for 2.5*eta/latent_steps), "
                    f"got {self.latent_step_size!r}"
                )
            if self.latent_step_size * self.latent_steps < self.eta * (1 - 1e-9):
                raise ConfigError(
                    f"{self.latent_steps} latent steps of {self.latent_step_size:g} never reach "
                    f"eta {self.eta:g}: raise latent_steps or latent_step_size, or leave it unset"
                )
        if not (isinstance(self.manifold_weight, (int, float))
                and math.isfinite(self.manifold_weight) and self.manifold_weight >= 0):
            raise ConfigError(f"manifold_weight must be a number >= 0, got {self.manifold_weight!r}")


@register_method("onmanifold")
class OnManifold(TrainingMethod):
    """Clean + off-manifold PGD + label-preserved on-manifold examples, in one forward pass."""

    config_class = OnManifoldConfig
    crafts_attacks = True

    def setup(self, context: TrainContext) -> None:
        super().setup(context)
        from edgeexit.models.vae import check_vae_fits, load_vae
        from edgeexit.robust.attacks.latent import LatentPGD
        from edgeexit.robust.methods.adversarial import rank_seed_generator

        cfg = self.config
        if not cfg.vae:
            raise ConfigError(
                "method onmanifold needs a trained VAE: set its vae option to the path of a file "
                "saved by edgeexit.compress.manifold.save_vae (`edgeexit compress --finetune "
                "onmanifold` trains and saves one as OUT/vae.pt)"
            )
        try:
            self.vae = load_vae(cfg.vae)
        except CheckpointError as e:
            raise ConfigError(f"method onmanifold cannot use its vae: {e}") from e
        model = context.model
        mc = getattr(model, "config", None)
        if mc is not None:
            check_vae_fits(self.vae, context.signal_channels, mc.input_length, mc.num_classes,
                           in_channels=mc.in_channels)
        self.attack = TrainingAttack(cfg, context)
        self.latent = LatentPGD(model, self.vae, cfg.eta, steps=cfg.latent_steps,
                                step_size=cfg.latent_step_size, objective="mean",
                                random_start=True, signal_channels=context.signal_channels)
        self.gen = rank_seed_generator(context)
        self._pgd_losses: list[float] = []
        self._latent_losses: list[float] = []
        self._kept = 0
        self._seen = 0
        self._zero_grad = 0.0

    def examples(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_pgd, x_man, kept)`` for ``batch``: detached inputs ``[B, C, L]`` and the bool
        label-preservation mask ``[B]`` of the on-manifold ones."""
        x_pgd = self.attack(batch.x, batch.y, batch.template)
        stats = self.attack.attack.stats
        if "mean_loss" in stats:
            self._pgd_losses.append(stats["mean_loss"])
        self._zero_grad = max(self._zero_grad, stats.get("zero_grad_fraction", 0.0))
        self.latent.seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.gen))
        x_man, kept = self.latent.craft(batch.x, batch.y)
        # The latent attack differentiates with the morphology channels held; what the model
        # trains on has them recomputed from the decoded waveform, as the device would.
        x_man = attacked(self.context, attack_input(self.context, x_man, batch.template))
        self._latent_losses.append(self.latent.stats["mean_loss"])
        self._kept += int(kept.sum())
        self._seen += len(kept)
        return x_pgd, x_man, kept

    def masked_exit_losses(self, logits: list[torch.Tensor], y: torch.Tensor,
                           keep: torch.Tensor) -> torch.Tensor:
        """:meth:`exit_losses` averaged over the samples where ``keep [B]`` is True (class
        weights normalise as in ``cross_entropy``); 0 (with a graph) when none is kept."""
        w_y = (torch.ones(len(y), device=y.device) if self.class_weights is None else self.class_weights[y])
        w_y = w_y * keep.float()
        denom = w_y.sum()
        per_exit = []
        for z in logits:
            ce = F.cross_entropy(z, y, reduction="none")  # [B]
            per_exit.append((ce * w_y).sum() / denom.clamp_min(1e-12))
        return (self.exit_weights * torch.stack(per_exit)).sum()

    def loss(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        n = len(batch.x)
        x_pgd, x_man, kept = self.examples(batch)
        logits = net(torch.cat([batch.x, x_pgd, x_man]))
        clean = [z[:n] for z in logits]
        pgd = [z[n : 2 * n] for z in logits]
        man = [z[2 * n :] for z in logits]
        lam = float(self.config.manifold_weight)
        total = (self.exit_losses(clean, batch.y) + self.exit_losses(pgd, batch.y)
                 + lam * self.masked_exit_losses(man, batch.y, kept))
        return total / (2.0 + lam)

    def summary(self) -> dict:
        def mean(v):
            return None if not v else float(sum(v) / len(v))

        return {
            "name": self.name,
            "attack": self.attack.attack.describe(),
            "latent_attack": self.latent.describe(),
            "vae": self.config.vae,
            "attack_mean_loss": mean(self._pgd_losses),
            "latent_attack_mean_loss": mean(self._latent_losses),
            "kept_fraction": None if self._seen == 0 else self._kept / self._seen,
            "attack_zero_grad_fraction": self._zero_grad,
        }

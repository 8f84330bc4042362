"""The on-manifold attack: PGD on a VAE's latent code of every window.

On-manifold adversarial examples (Kwon & Lee, "Adversarial training on compressed models: an
on-manifold approach", Future Internet 2021; after Stutz et al., CVPR 2019): a VAE
(:class:`edgeexit.models.vae.SignalVAE`) learns the data's own variation; the attacker moves the
latent code of a beat instead of its samples, so the perturbation is a change the data itself
makes (a wider QRS, a lower T wave, a drifting baseline), not the high-frequency pattern an
input-space PGD finds. Only windows whose label the VAE's latent classifier still recognises are
kept (:func:`edgeexit.models.vae.label_preserved`).

- :class:`LatentPGD`: ``z0 = mu(x)`` (the mean, never a sample: a sampled code would make the
  attack random and its start noisy), ``zeta`` starts at 0 (or uniformly inside the box) and
  ACCUMULATES over ``steps`` signed-gradient ascent steps with ``|zeta|_inf <= eta`` (the MC-ATON
  reference restarts from ``z`` at every step, so its k-step attack is one step).
- :func:`onmanifold_accuracy`: every exit's accuracy and macro-F1 under it (reports).

Example:
    >>> attack = LatentPGD(model, load_vae("runs/q/vae.pt"), eta=0.5, steps=10)
    >>> x_adv = attack(x, y)
    >>> x_kept, y_kept = x_adv[attack.preserved], y[attack.preserved]
    >>> onmanifold_accuracy(model, vae, x, y, eta=0.5, steps=10)["exits"][-1]["accuracy"]
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edgeexit.errors import ConfigError
from edgeexit.models.vae import SignalVAE, label_preserved
from edgeexit.robust.attacks.base import Attack, eval_mode

MODES = ("residual", "decoded")


# ------------------------------------------------------------------------------ the attack


class LatentPGD(Attack):
    """The on-manifold attack: PGD on the VAE's latent code of every window.

    ``z0 = mu(x)``; ``zeta`` starts at 0 (``random_start``: uniform in the box) and takes ``steps``
    signed-gradient ascent steps of ``step_size`` on the objective, projected onto
    ``|zeta|_inf <= eta`` after every step; the steps ACCUMULATE (each starts where the last
    ended). The attacked signal channels are then

    - ``mode="residual"`` (default): ``x_sig + decode(z0 + zeta) - decode(z0)``: the on-manifold
      *change* added to the real beat. The VAE's reconstruction is blurry (it loses the noise and
      some QRS detail); decoding ``z0 + zeta`` alone would count that reconstruction error as part
      of the perturbation, and the model would be attacked (and trained) on blurred beats it
      never sees on a device. With the residual, ``zeta = 0`` gives back ``x`` exactly.
    - ``mode="decoded"``: ``decode(z0 + zeta)`` plus the window mean of ``x`` (the reference's
      choice; the reconstruction error is part of the perturbation).

    The context channels are copied unchanged in both modes.

    Args:
        model: a :class:`~edgeexit.models.MultiExitNet`; crafted in eval mode (restored after).
        vae: a trained :class:`SignalVAE` of the same windows.
        eta: the latent Linf budget (in latent units: the prior is N(0, 1) per dimension).
        steps: ascent steps.
        step_size: latent step; None = ``2.5 * eta / steps``; ``steps * step_size >= eta``.
        objective: what to maximise (default ``mean``: mean cross-entropy over exits).
        random_start: start ``zeta`` uniformly inside the box (else at 0).
        mode: ``residual`` or ``decoded`` (above).
        signal_channels: None = the model's; must equal the VAE's.
        seed: seeds the random start.

    Attributes:
        zeta: the last call's latent perturbation ``[B, latent]``.
        preserved: the last call's label-preservation mask ``[B]`` (:func:`label_preserved`).
        stats: ``mean_loss``, ``clean_loss``, ``kept_fraction``, ``zero_grad_fraction`` (gradient
            with respect to ``zeta`` exactly 0), ``delta_linf_mV`` (mean over windows of the
            signal change's max), and per step ``zeta_linf_per_step`` / ``delta_linf_per_step``.
    """

    name = "onmanifold"

    def __init__(self, model: nn.Module, vae: SignalVAE, eta: float, *, steps: int = 10,
                 step_size: float | None = None, objective="mean", random_start: bool = False,
                 mode: str = "residual", signal_channels: int | None = None,
                 seed: int | None = 0) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (
            math.isfinite(eta) and eta >= 0
        ):
            raise ConfigError(f"the latent budget eta must be a finite number >= 0, got {eta!r}")
        super().__init__(model, eta, norm="linf", objective=objective,
                         signal_channels=signal_channels)
        if self.signal_channels != vae.signal_channels:
            raise ConfigError(
                f"the VAE models {vae.signal_channels} signal channel(s), the attack perturbs "
                f"{self.signal_channels}: use a VAE trained on the model's data"
            )
        if steps < 1:
            raise ConfigError(f"the latent attack needs steps >= 1, got {steps}")
        if mode not in MODES:
            raise ConfigError(f"unknown latent attack mode {mode!r}; choose one of {', '.join(MODES)}")
        self.vae = vae
        self.eta = self.eps
        self.steps = int(steps)
        self.step_size = 2.5 * self.eta / self.steps if step_size is None else float(step_size)
        if self.step_size * self.steps < self.eta * (1 - 1e-9):
            raise ConfigError(
                f"{steps} latent steps of {self.step_size:g} never reach eta {self.eta:g}: raise "
                "the steps or the step size (steps * step_size >= eta)"
            )
        self.random_start = random_start
        self.mode = mode
        self.seed = seed
        self.zeta: torch.Tensor | None = None
        self.preserved: torch.Tensor | None = None

    def describe(self) -> dict:
        return {"attack": self.name, "eta": self.eta, "steps": self.steps,
                "step_size": self.step_size, "random_start": self.random_start,
                "mode": self.mode, "objective": self.objective.describe()}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adversarial windows ``[B, C, L]`` for ``x [B, C, L]`` with labels ``y [B]``;
        :attr:`preserved` says which of them keep their label."""
        self.check_input(x)
        x = x.detach().float()
        vae_was = self.vae.training
        self.vae.eval()
        try:
            with eval_mode(self.model):
                x_adv = self.perturb(x, y)
        finally:
            self.vae.train(vae_was)
        return x_adv.detach()

    def craft(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_adv [B, C, L], preserved [B] bool)``."""
        x_adv = self(x, y)
        return x_adv, self.preserved

    def _assemble(self, x: torch.Tensor, z0: torch.Tensor, zeta: torch.Tensor,
                  base: torch.Tensor | None) -> torch.Tensor:
        s = self.signal_channels
        if self.mode == "residual":
            sig = x[:, :s] + (self.vae.decode(z0 + zeta) - base)
        else:
            sig = self.vae.decode(z0 + zeta, SignalVAE.offset(x, s))
        return torch.cat([sig, x[:, s:]], dim=1) if x.shape[1] > s else sig

    def perturb(self, x, y):
        s = self.signal_channels
        with torch.no_grad():
            z0, _ = self.vae.encode(x)  # the mean: no sampling
            base = self.vae.decode(z0) if self.mode == "residual" else None
            clean_loss = self.losses(x, y)
        if self.random_start:
            gen = None if self.seed is None else torch.Generator().manual_seed(self.seed)
            zeta = (torch.rand(z0.shape, generator=gen).to(z0.device) * 2 - 1) * self.eta
        else:
            zeta = torch.zeros_like(z0)
        zeta_hist, delta_hist = [], []
        zero = torch.zeros(len(x), dtype=torch.bool, device=x.device)

        def moved(xa: torch.Tensor) -> float:  # mean over windows of the signal change's max
            return float((xa[:, :s] - x[:, :s]).detach().flatten(1).abs().amax(1).mean())

        for i in range(self.steps):
            with torch.enable_grad():
                z = zeta.detach().requires_grad_(True)
                xa = self._assemble(x, z0, z, base)
                loss = self.losses(xa, y)
                (g,) = torch.autograd.grad(loss.sum(), z)
            if i == 0:
                zero = g.flatten(1).abs().amax(1) == 0
            else:  # this step's input is the last step's result
                delta_hist.append(moved(xa))
            zeta = (zeta + self.step_size * g.sign()).clamp(-self.eta, self.eta)  # accumulates
            zeta_hist.append(float(zeta.abs().amax(1).mean()))
        with torch.no_grad():
            x_adv = self._assemble(x, z0, zeta, base)
            adv_loss = self.losses(x_adv, y)
        delta_hist.append(moved(x_adv))
        self.zeta = zeta.detach()
        self.preserved = label_preserved(self.vae, x_adv, y)
        self.stats = {
            "mean_loss": float(adv_loss.mean()),
            "clean_loss": float(clean_loss.mean()),
            "kept_fraction": float(self.preserved.float().mean()),
            "zero_grad_fraction": float(zero.float().mean()),
            "delta_linf_mV": delta_hist[-1],
            "zeta_linf_per_step": zeta_hist,
            "delta_linf_per_step": delta_hist,
        }
        return x_adv


# --------------------------------------------------------------------- for reports (compress)


def onmanifold_accuracy(model: nn.Module, vae: SignalVAE, x, y, *, eta: float, steps: int = 10,
                        step_size: float | None = None, classes=None, objective="mean",
                        mode: str = "residual", batch_size: int = 256, seed: int = 0) -> dict:
    """Accuracy and macro-F1 of every exit under the on-manifold attack, on the kept windows.

    Args:
        model: a :class:`~edgeexit.models.MultiExitNet` (attacked in eval mode).
        vae: the :class:`SignalVAE` of the model's data.
        x: windows ``[N, C, L]`` in mV (numpy or torch); ``y``: labels ``[N]``.
        eta, steps, step_size, objective, mode: those of :class:`LatentPGD` (no random start).
        classes: class names (None = ``0..K-1``); macro-F1 follows
            :func:`edgeexit.metrics.classification_report` (over N/S/V/F for the AAMI classes).
        batch_size: windows attacked at a time.
        seed: unused without a random start (kept for reproducible reports).

    Returns:
        ``{"attack": describe(), "windows": N, "kept": n, "kept_fraction": n / N,
        "exits": [{"accuracy", "macro_f1"} per exit, on the kept adversarial windows],
        "clean_exits": [the same on the kept windows unattacked], "mean_loss", "clean_loss",
        "delta_linf_mV"}``. Only windows whose latent label is preserved are scored (the others
        are no same-class beat any more); with none kept the figures are NaN.
    """
    from edgeexit.metrics import classification_report, headline_macro_f1

    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).float()
    y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y).long()
    attack = LatentPGD(model, vae, eta, steps=steps, step_size=step_size, objective=objective,
                       mode=mode, seed=seed)
    advs, keep, stats = [], [], []
    for i in range(0, len(x), batch_size):
        xa, kp = attack.craft(x[i : i + batch_size], y[i : i + batch_size])
        advs.append(xa)
        keep.append(kp)
        stats.append((len(xa), attack.stats))
    x_adv, kept = torch.cat(advs), torch.cat(keep)
    n_exits = model.num_exits
    num_classes = None
    with torch.no_grad(), eval_mode(model):
        adv_logits = model(x_adv[kept]) if kept.any() else None
        clean_logits = model(x[kept]) if kept.any() else None
        if adv_logits is not None:
            num_classes = adv_logits[0].shape[1]
    if classes is None:
        k = num_classes or int(y.max()) + 1
        classes = tuple(str(c) for c in range(k))

    def scores(logits):
        if logits is None:
            return [{"accuracy": float("nan"), "macro_f1": float("nan")} for _ in range(n_exits)]
        out = []
        for z in logits:
            r = classification_report(y[kept].numpy(), z.argmax(1).numpy(), tuple(classes))
            out.append({"accuracy": r["accuracy"], "macro_f1": headline_macro_f1(r)})
        return out

    n_total = max(len(x), 1)

    def weighted(key):
        return float(sum(n * st[key] for n, st in stats) / n_total)

    return {
        "attack": attack.describe(),
        "windows": len(x),
        "kept": int(kept.sum()),
        "kept_fraction": float(kept.float().mean()) if len(x) else float("nan"),
        "exits": scores(adv_logits),
        "clean_exits": scores(clean_logits),
        "mean_loss": weighted("mean_loss"),
        "clean_loss": weighted("clean_loss"),
        "delta_linf_mV": weighted("delta_linf_mV"),
    }

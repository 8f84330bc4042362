"""The attack base class: budgets on the signal channels, eval-mode crafting, exit-aware losses.

Threat model (DESIGN.md section 6): the attacker perturbs the waveform only, the leading
``signal_channels`` of an ``[N, C, L]`` input in physical units (mV for ECG), within an Linf or L2
budget ``eps`` in those units. The RR-context channels are derived from R-peak timing and are
never touched. There is no clamp to [0, 1] (these are not images); an optional ``clip`` keeps the
attacked signal inside a physical range.

Every attack (torchattacks' shape: one small class per attack over this base):

- runs the model in eval mode while crafting (BatchNorm statistics must not move, and must not
  depend on the batch) and restores the mode it found;
- attacks the output its :class:`~edgeexit.robust.attacks.objectives.Objective` names: one exit,
  all exits, the answer of an exit policy, or the early exits' confidence (slowdown);
- returns ``x + delta`` with ``delta`` inside the budget on the signal channels and exactly zero
  elsewhere.

L2 budgets: ``eps`` is the L2 norm over the signal channels and the whole window, in mV. To scale
a per-sample amplitude to a window, :func:`l2_eps` gives ``eps_rms * sqrt(signal_channels * L)``.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from edgeexit.errors import ConfigError
from edgeexit.robust.attacks.objectives import Objective, make_objective

NORMS = ("linf", "l2")


def l2_eps(eps_rms: float, length: int, signal_channels: int = 1) -> float:
    """The L2 budget of a perturbation whose RMS amplitude over the window is ``eps_rms``."""
    return float(eps_rms) * math.sqrt(signal_channels * length)


def signal_channels_of(model: nn.Module, signal_channels: int | None) -> int:
    """``signal_channels`` if given, else the model's own (``model.config.signal_channels``)."""
    if signal_channels is not None:
        return int(signal_channels)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "signal_channels"):
        raise ConfigError(
            "the model records no signal channels (a user-built MultiExitNet): pass "
            "signal_channels= (the number of leading input channels that are signal)"
        )
    return int(config.signal_channels)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode inside the block; the mode the model had is restored on the way out."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


class Attack:
    """Base class of the white-box attacks on a multi-exit model.

    Args:
        model: a :class:`~edgeexit.models.MultiExitNet` (anything with ``forward_until(x, k)``
            returning the logits of exits ``0..k``).
        eps: the budget on the signal channels, in the input's units (mV); ``linf``: per sample
            and time step; ``l2``: over the signal channels and the window (see :func:`l2_eps`).
        norm: ``linf`` or ``l2``.
        objective: what to maximise (an :class:`Objective` or a spec for
            :func:`~edgeexit.robust.attacks.objectives.make_objective`); default the final exit.
        signal_channels: leading channels that are signal; None = ``model.config``'s.
        clip: optional ``(low, high)`` physical range of the attacked signal channels.

    Attributes:
        stats: facts about the last call (e.g. ``zero_grad_fraction``: samples whose input
            gradient was exactly zero at the first step, a sign of gradient masking).
    """

    name = "attack"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        *,
        norm: str = "linf",
        objective: str | int | Objective = "final",
        signal_channels: int | None = None,
        clip: tuple[float, float] | None = None,
    ) -> None:
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ConfigError(f"attack budget eps must be a finite number >= 0, got {eps}")
        self.model = model
        self.eps = float(eps)
        self.norm = norm
        self.objective = make_objective(objective)
        self.signal_channels = signal_channels_of(model, signal_channels)
        self.clip = clip
        self.stats: dict = {}

    # --------------------------------------------------------------------------- the public call
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adversarial inputs for ``x [B, C, L]`` with labels ``y [B]`` (detached)."""
        self.check_input(x)
        x = x.detach().float()
        with eval_mode(self.model):
            x_adv = self.perturb(x, y)
        return x_adv.detach()

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ConfigError` unless ``x`` is ``[N, C, L]`` with the signal channels."""
        if x.ndim != 3 or x.shape[1] < self.signal_channels:
            raise ConfigError(
                f"attacks take [N, C, L] inputs with at least {self.signal_channels} signal "
                f"channel(s), got {tuple(x.shape)}"
            )

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Subclasses craft ``x_adv`` here (the model is already in eval mode)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-ready settings (for reports)."""
        return {"attack": self.name, "eps": self.eps, "norm": self.norm,
                "objective": self.objective.describe()}

    # ------------------------------------------------------------------------------ the helpers
    def losses(self, x: torch.Tensor, y: torch.Tensor, objective: Objective | None = None):
        """Per-sample loss ``[B]`` of ``objective`` (default the attack's) at input ``x``."""
        obj = objective or self.objective
        k = obj.needs if obj.needs >= 0 else self.model.num_exits + obj.needs
        return obj(self.model.forward_until(x, k), y)

    def gradient(self, x: torch.Tensor, y: torch.Tensor, objective: Objective | None = None):
        """``(loss [B], d loss / d x)`` at ``x``; parameters get no gradient."""
        with torch.enable_grad():  # callers may be inside torch.no_grad()
            x = x.detach().requires_grad_(True)
            loss = self.losses(x, y, objective)
            (g,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), g

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        """1 on the signal channels, 0 on the context channels, shaped ``[1, C, 1]``."""
        m = torch.zeros(1, like.shape[1], 1, dtype=like.dtype, device=like.device)
        m[:, : self.signal_channels] = 1.0
        return m

    @property
    def budget(self) -> float | torch.Tensor:
        """``eps`` as the projection uses it: one float here; an attack with a budget per
        sample (IMA's margins) returns a ``[B, 1, 1]`` tensor."""
        return self.eps

    def clip_range(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``delta`` with ``x + delta`` inside ``clip`` on the signal channels (as is without one)."""
        if self.clip is None:
            return delta
        s = self.signal_channels
        lo, hi = self.clip
        sig = (x[:, :s] + delta[:, :s]).clamp(lo, hi) - x[:, :s]
        return torch.cat([sig, delta[:, s:]], dim=1)

    def within_budget(self, delta: torch.Tensor) -> torch.Tensor:
        """``delta`` projected onto the Linf box or the L2 ball of :attr:`budget`."""
        b = self.budget
        if self.norm == "linf":
            return torch.clamp(delta, -b, b)
        return delta * (b / _norms(delta)).clamp(max=1.0)

    def project(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``delta`` inside the budget, zero off the signal channels, ``x + delta`` inside ``clip``
        (where ``x`` itself lies inside it: the budget wins otherwise)."""
        return self.within_budget(self.clip_range(delta * self.mask(delta), x))

    def random_init(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """A random point inside the budget (uniform in the Linf box; a random L2 direction
        scaled by a uniform radius)."""
        if self.norm == "linf":
            delta = (torch.rand(x.shape, generator=gen).to(x.device) * 2 - 1) * self.budget
        else:  # drawn on the CPU generator, then moved: one seed, one start on every device
            d = torch.randn(x.shape, generator=gen).to(x.device) * self.mask(x)
            r = torch.rand(len(x), 1, 1, generator=gen).to(x.device)
            delta = d / _norms(d) * self.budget * r
        return self.project(delta, x)

    def ascent(self, g: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of unit size under the norm (signal channels only)."""
        g = g * self.mask(g)
        if self.norm == "linf":
            return g.sign()
        return g / _norms(g)


def _norms(t: torch.Tensor) -> torch.Tensor:
    """The L2 norm of every sample of ``t [B, C, L]``, shaped ``[B, 1, 1]`` (never 0)."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)

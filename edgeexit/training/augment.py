"""Training-time augmentation of beat windows: what a batch goes through before the loss.

Every transform takes a batch ``x [N, C, L]`` (signal channels first, then context channels) and
a seeded ``torch.Generator``; :class:`Augmentation` chains the ones a
:class:`~edgeexit.train.TrainConfig` turns on.
"""

from __future__ import annotations

import math

import torch

from edgeexit.errors import ConfigError

RR_FEATURES = ("pre_rr", "post_rr", "local_rr", "pre_rr_ratio", "post_rr_ratio", "avg_rr")
"""The RR context channels :func:`rr_augment` and :func:`rr_rescale` rewrite."""


def augment_signal(x: torch.Tensor, signal_channels: int, gen: torch.Generator,
                   template: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Patient- and sensor-like variation of the signal channels (context channels untouched).

    Gain 0.6-1.5 (electrode placement, body habitus), a baseline offset and linear drift up to
    +-0.3 mV (wander), Gaussian noise up to 0.05 mV rms (muscle, electronics), and a shift of the
    beat by up to +-6 samples (R-peak detection jitter on the device). Returns ``(x, template)``:
    the windows' morphology ``template`` ``[N, L]`` (None passes through) scaled by the same gain
    (a recording's gain moves its earlier beats alike; the noise, wander and jitter are the
    beat's own).
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


def rr_channels(channels: tuple[str, ...] | list[str]) -> dict[str, int] | None:
    """Channel index of every feature in :data:`RR_FEATURES`, or None without them all."""
    idx = {n: list(channels).index(n) for n in RR_FEATURES if n in channels}
    return idx if len(idx) == len(RR_FEATURES) else None


def rr_rescale(x: torch.Tensor, rr: dict[str, int], amount: float, gen: torch.Generator) -> torch.Tensor:
    """Multiply every beat's absolute RR features (seconds) by one factor within ``[1 / (1 +
    amount), 1 + amount]``, its ratios unchanged: the same rhythm at another patient's heart rate
    (:attr:`TrainConfig.rr_scale`)."""
    k = torch.exp(math.log1p(amount) * (2.0 * torch.rand(x.shape[0], 1, generator=gen) - 1.0))
    x = x.clone()
    for name in ("pre_rr", "post_rr", "local_rr", "avg_rr"):
        x[:, rr[name]] = x[:, rr[name]] * k
    return x


def rr_augment(x: torch.Tensor, rr: dict[str, int], p: float, gen: torch.Generator) -> torch.Tensor:
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


def signal_dropout(x: torch.Tensor, signal_channels: int, p: float, gen: torch.Generator) -> torch.Tensor:
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


def time_warp(x: torch.Tensor, signal_channels: int, amount: float, gen: torch.Generator) -> torch.Tensor:
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


class Augmentation:
    """Every augmentation a config turns on, in a fixed order; called per training batch.

    Args:
        config: the :class:`~edgeexit.train.TrainConfig` (``augment``, ``time_warp``,
            ``signal_dropout``, ``rr_augment``, ``rr_scale``).
        signal_channels: how many of the channels are signal (the rest is context).
        channels: the data's channel names (the RR transforms look theirs up).
        morph: the :class:`~edgeexit.robust.context.MorphContext` that recomputes the
            morphology channels from an augmented waveform, or None.

    Raises:
        ConfigError: ``rr_augment`` or ``rr_scale`` is on and the data has no RR channels.
    """

    def __init__(self, config, signal_channels: int, channels, morph=None) -> None:
        self.config, self.signal_channels, self.morph = config, signal_channels, morph
        self.rr = None
        if config.rr_augment > 0 or config.rr_scale > 0:
            self.rr = rr_channels(channels)
            if self.rr is None:
                raise ConfigError("rr_augment and rr_scale rewrite the RR context channels, and the "
                                  "data has none: train with --rr-context, or leave them at 0")

    def __call__(self, x: torch.Tensor, gen: torch.Generator, template: torch.Tensor | None = None):
        """``(x, template)``: the batch through every augmentation; with the windows' morphology
        templates (scaled with the beats), the morphology channels recomputed from the augmented
        waveform."""
        c, s = self.config, self.signal_channels
        if c.augment:
            x, template = augment_signal(x, s, gen, template)
        if c.time_warp > 0:
            x = time_warp(x, s, c.time_warp, gen)
        if c.signal_dropout > 0:
            x = signal_dropout(x, s, c.signal_dropout, gen)
        if self.rr is not None and c.rr_augment > 0:
            x = rr_augment(x, self.rr, c.rr_augment, gen)
        if self.rr is not None and c.rr_scale > 0:
            x = rr_rescale(x, self.rr, c.rr_scale, gen)
        if template is None:
            return x, None
        return self.morph.recompute_torch(self.morph.with_template(x, template)), template

"""The waveform-derived context under attack: the morphology channels follow the attacked beat.

The RR channels come from R-peak timing, which a waveform attack leaves alone. The morphology
channels (:data:`~edgeexit.runtime.preprocess.MORPH_FEATURES`) do not: the device computes them
from the beat's own waveform against the template of the recording's previous beats, so a
perturbed beat arrives with perturbed ``qrs_corr``, ``qrs_amp_ratio`` and ``beat_dev``. Holding
them at their clean values would let a model that leans on them look robust for free.

:class:`MorphContext` recomputes them wherever an attacked or noisy window is scored or
differentiated:

- :meth:`MorphContext.attach` appends each window's template (the median of the previous
  :data:`~edgeexit.runtime.preprocess.TEMPLATE_BEATS` clean windows of its recording) as one
  extra, trailing channel. The attacks perturb only the leading signal channels, so the template
  rides along untouched.
- :meth:`MorphContext.wrap` is the model as an attack sees it: it recomputes the channels in
  torch (differentiable, so white-box gradients flow through them) and calls the model.
- :meth:`MorphContext.finish` recomputes them with the device's own numpy code
  (:meth:`~edgeexit.runtime.preprocess.BeatTemplate.compare`) and drops the template: what is
  scored is what the device would compute.

The threat model is per beat: the attacker perturbs the beat being classified, the template
comes from the clean beats before it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeexit.data import BeatDataset
from edgeexit.data.dataset import check_templates, rebuild_templates
from edgeexit.runtime.preprocess import (
    MORPH_CLIP,
    MORPH_FEATURES,
    BeatTemplate,
    default_r_offset,
)

def has_morph_context(data: BeatDataset) -> bool:
    return data.channels is not None and set(MORPH_FEATURES) <= set(data.channels)


def record_templates(data: BeatDataset, r_offset: int) -> np.ndarray:
    """Every window's morphology template, float32 ``[N, L]``: the data's own
    (:attr:`BeatDataset.templates`, written by the loaders, so any sample of a split has them),
    else rebuilt from the data (:func:`~edgeexit.data.dataset.rebuild_templates`: every beat of
    each recording, in order). Either way checked against the stored features.

    Raises:
        DataError: no templates and they cannot be rebuilt, or they do not give the stored
            morphology channels.
    """
    if data.templates is None:
        return rebuild_templates(data, r_offset)
    check_templates(data, data.templates, r_offset)
    return np.asarray(data.templates, np.float32)


class MorphContext:
    """Recompute the morphology channels of ``[N, C, L]`` windows from their signal channel 0.

    Args:
        channels: the data's channel names (the morphology channels among them).
        window: samples per window; r_offset: samples before the R peak; fs: Hz.
    """

    def __init__(self, channels, window: int, fs: float, r_offset: int | None = None) -> None:
        self.index = [list(channels).index(c) for c in MORPH_FEATURES]
        self.r_offset = default_r_offset(window) if r_offset is None else int(r_offset)
        self.fs = float(fs)
        self._beat = BeatTemplate(window, self.r_offset, self.fs)
        self.qrs = self._beat.qrs

    @classmethod
    def of(cls, data: BeatDataset, r_offset: int | None = None) -> MorphContext | None:
        """The context of ``data``, or None when it has no morphology channels."""
        if not has_morph_context(data):
            return None
        return cls(data.channels, data.x.shape[-1], data.fs, r_offset)

    def attach(self, data: BeatDataset, templates: np.ndarray) -> np.ndarray:
        """``data.x`` with each window's template as one more, trailing channel."""
        return np.concatenate([data.x.astype(np.float32), templates[:, None, :]], axis=1)

    def finish(self, xa: np.ndarray) -> np.ndarray:
        """Windows with the template channel: the morphology channels recomputed from the
        (attacked) signal by the device's code, the template dropped."""
        xa = np.asarray(xa, np.float32)
        x = np.ascontiguousarray(xa[:, :-1]).copy()
        for i in range(len(x)):
            x[i, self.index, :] = self._beat.compare(x[i, 0], xa[i, -1])[:, None]
        return x

    def features_torch(self, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The features of signal windows ``w`` against templates ``t`` (both ``[N, L]``), as
        :meth:`BeatTemplate.compare` computes them, differentiable in ``w``: ``[N, 3]``."""
        w, t = w.double(), t.double()
        a, b = w[:, self.qrs], t[:, self.qrs]
        a = a - a.mean(1, keepdim=True)
        b = b - b.mean(1, keepdim=True)
        den = torch.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-30)
        corr = torch.where(den > 1e-12, (a * b).sum(1) / den.clamp_min(1e-12), torch.ones_like(den))
        amp_t = b.amax(1) - b.amin(1)
        amp = torch.where(amp_t > 1e-6, (a.amax(1) - a.amin(1)) / amp_t.clamp_min(1e-6),
                          torch.ones_like(amp_t))
        wc = w - w.mean(1, keepdim=True)
        tc = t - t.mean(1, keepdim=True)
        rms_t = torch.sqrt((tc * tc).mean(1))
        dev = torch.where(rms_t > 1e-6,
                          torch.sqrt(((wc - tc) ** 2).mean(1) + 1e-18) / rms_t.clamp_min(1e-6),
                          torch.zeros_like(rms_t))
        return torch.stack([corr, amp.clamp(max=MORPH_CLIP), dev.clamp(max=MORPH_CLIP)], 1).float()

    def recompute_torch(self, xa: torch.Tensor) -> torch.Tensor:
        """``[N, C + 1, L]`` (template last) -> ``[N, C, L]`` with the channels recomputed."""
        x = xa[:, :-1].clone()
        f = self.features_torch(xa[:, 0], xa[:, -1])
        x[:, self.index, :] = f.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        return x

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` as the attacks see it: it takes windows with the template channel (its
        train/eval mode is ``model``'s)."""
        return InputMapped(model, self.recompute_torch)

    def with_template(self, x: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
        """``[N, C, L]`` windows and their ``[N, L]`` templates -> ``[N, C + 1, L]``."""
        return torch.cat([x, template.to(x.dtype).unsqueeze(1)], dim=1)


class InputMapped(nn.Module):
    """``model`` behind a differentiable map of its input (``inputs``: the attack's input ->
    the model's), as the attacks see it; the mode (train/eval) is ``model``'s."""

    def __init__(self, model: nn.Module, inputs) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.config = getattr(model, "config", None)  # signal_channels, for the attacks

    @property
    def training(self) -> bool:  # the wrapped model's mode is the mode (eval_mode restores it)
        model = self.__dict__.get("_modules", {}).get("model")
        return True if model is None else model.training

    @training.setter
    def training(self, mode: bool) -> None:  # nn.Module.train sets the children's modes
        pass

    @property
    def num_exits(self) -> int:
        return self.model.num_exits

    def forward(self, xa: torch.Tensor):
        return self.model(self.inputs(xa))

    def forward_until(self, xa: torch.Tensor, k: int):
        return self.model.forward_until(self.inputs(xa), k)

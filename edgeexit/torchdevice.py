"""Where torch computes: one resolver for ``--device auto|cpu|cuda|cuda:N`` and ``--amp bf16``.

Every host command that runs a model (train, compress's fine-tuning and VAE, evaluate, the
attacks, cross-validation) resolves its device here, once, and moves its model and batches there.
``auto`` takes a CUDA GPU when PyTorch sees one (under ``torchrun``, the one of the process's
``LOCAL_RANK``), else the CPU; everything works on the CPU alone.

Random draws (augmentation, attack starts) come from CPU generators and are moved to the device,
so one seed draws the same numbers on every device.

Determinism per device (:func:`determinism`): on the CPU one seed and one thread count give
bitwise-identical training; on a GPU the same seed gives the same data order, augmentation and
attack starts, but cuDNN's convolution kernels and atomic adds in the backward pass make the
weights differ in the last bits, which grows over epochs into curves that are close, not equal
(``tools/gpu_check.py`` measures how close).
"""

from __future__ import annotations

import contextlib
import os

import torch

from edgeexit.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
"""What ``--device`` takes (``cuda:N``: the N-th visible GPU)."""

AMP_MODES = ("none", "bf16")
"""What ``--amp`` takes: ``bf16`` runs forward passes under :func:`torch.autocast` in bfloat16."""

def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` of ``spec`` (``auto``/None, ``cpu``, ``cuda``, ``cuda:N``).

    ``auto`` and ``cuda`` take the GPU of the process's ``LOCAL_RANK`` (0 outside torchrun).

    Raises:
        ConfigError: an unknown device, ``cuda`` where PyTorch sees no GPU, or a GPU index
            beyond the visible ones.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = ("cuda", "", "") if text == "auto" else text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"unknown device {spec!r}; choose {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        build = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
        raise ConfigError(f"--device {text}: PyTorch sees no CUDA GPU here (torch "
                          f"{torch.__version__} built {build}); use --device cpu or auto")
    n = torch.cuda.device_count()
    k = int(index) if index else _local_rank()
    if k >= n:
        raise ConfigError(f"--device {text}: GPU {k} asked for, {n} visible (cuda:0 to "
                          f"cuda:{n - 1}; CUDA_VISIBLE_DEVICES chooses them; under torchrun "
                          "at most one process per GPU: --nproc-per-node)")
    return torch.device("cuda", k)


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``: for metrics and logs."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def check_amp(amp: str, device: torch.device) -> None:
    """Raise :class:`ConfigError` for an unknown ``amp`` mode, or bf16 on a GPU without it."""
    if amp not in AMP_MODES:
        raise ConfigError(f"unknown --amp {amp!r}; choose {' or '.join(AMP_MODES)}")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--amp bf16: {describe_device(device)} has no bfloat16 support; "
                          "use --amp none")


def autocast(device: torch.device, amp: str):
    """The context the forward passes run in: :func:`torch.autocast` for ``amp == "bf16"``,
    else a no-op."""
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def determinism(device: torch.device) -> str:
    """What a rerun with the same seed reproduces on ``device`` (recorded in the metrics)."""
    if device.type == "cuda":
        return ("same seed: same data order, augmentation and attack starts (CPU generators); "
                "weights close but not bitwise equal (cuDNN kernels, atomic adds)")
    return "same seed and thread count: bitwise-identical weights"


def distributed_backend(device: torch.device) -> str:
    """The process-group backend for ``device``: NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def to_device(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """``t`` on ``device`` (asynchronous from pinned memory); None stays None."""
    if t is None:
        return None
    return t.to(device, non_blocking=device.type == "cuda")

"""The names a bundle, a target preset and the CLI share: file formats, precisions, exit policies.

Each kind is a ``(str, Enum)`` (:class:`enum.StrEnum`) with one registry beside it, the only place
that lists its members or maps them to something else:

- :class:`Format` (``onnx``, ``tflite``) and :data:`FORMAT_BACKEND`, the backend that runs each
  (:attr:`Format.backend`, and the other way :meth:`Format.of_backend`);
- :class:`Precision` (``fp32``, ``int8``) and :data:`PRECISIONS`; export also takes
  :data:`AUTO` (choose per segment), and a manifest says :data:`MIXED` when its files differ;
- :class:`PolicyName` (``max_prob``, ``entropy``, ``ensemble``, ``fixed``, ``budget``) and
  :data:`CALIBRATED_POLICIES`, the ones whose thresholds calibration sets.

A member is a ``str``: it equals, hashes, formats (``f"{Format.ONNX}"`` is ``onnx``) and
serialises to JSON as its value, so a manifest written with members is byte for byte the one
written with plain strings, and ``Format("onnx")`` reads one back (a ``ValueError`` for an unknown
name; :func:`parse` turns that into a :class:`~edgeexit.errors.ConfigError` listing the choices).

Standard library only: the device imports this module.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from edgeexit.errors import ConfigError


class Format(StrEnum):
    """A segment file's format; members in the order a bundle lists its files."""

    ONNX = "onnx"
    TFLITE = "tflite"

    @property
    def backend(self) -> str:
        """The name of the backend that runs files of this format (:data:`FORMAT_BACKEND`)."""
        return FORMAT_BACKEND[self]

    @classmethod
    def of_backend(cls, backend: str) -> Format:
        """The format the backend called ``backend`` runs; ``ValueError`` for an unknown one."""
        for fmt, name in FORMAT_BACKEND.items():
            if name == backend:
                return fmt
        known = ", ".join(FORMAT_BACKEND.values())
        raise ValueError(f"unknown backend {backend!r}; known: {known}")


FORMAT_BACKEND: dict[Format, str] = {
    Format.ONNX: "onnxruntime",
    Format.TFLITE: "litert",
}
"""File format -> the name of the backend (``edgeexit.runtime.backends``) that runs it."""

FILE_FORMATS: tuple[Format, ...] = tuple(Format)


class Precision(StrEnum):
    """The number format of a segment file's weights and activations."""

    FP32 = "fp32"
    INT8 = "int8"


PRECISIONS: tuple[Precision, ...] = tuple(Precision)
AUTO = "auto"  # export: per segment and format, int8 only where it pays (export/precision.py)
MIXED = "mixed"  # a manifest's precision when its segment files differ in precision
EXPORT_PRECISIONS: tuple[str, ...] = (*PRECISIONS, AUTO)
"""What ``edgeexit export --precision`` takes."""


class PolicyName(StrEnum):
    """An exit policy (:mod:`edgeexit.runtime.policy` builds each)."""

    MAX_PROB = "max_prob"
    ENTROPY = "entropy"
    ENSEMBLE = "ensemble"
    FIXED = "fixed"
    BUDGET = "budget"

    @property
    def calibrated(self) -> bool:
        """True when calibration sets this policy's thresholds (:data:`CALIBRATED_POLICIES`)."""
        return self in CALIBRATED_POLICIES


POLICY_NAMES: tuple[PolicyName, ...] = tuple(PolicyName)
CALIBRATED_POLICIES: tuple[PolicyName, ...] = (
    PolicyName.MAX_PROB,
    PolicyName.ENTROPY,
    PolicyName.ENSEMBLE,
)
"""Policies whose thresholds ``edgeexit export`` / ``edgeexit calibrate`` calibrate (``fixed``
has none; ``budget`` stops on a measured cost)."""

_Kind = TypeVar("_Kind", bound=StrEnum)


def parse(kind: type[_Kind], value: str, what: str, choices: tuple | None = None) -> _Kind:
    """``value`` as a member of ``kind`` (one of ``choices``, default: every member).

    Raises:
        ConfigError: ``value`` is none of them; the message names ``what`` and lists the choices.
    """
    choices = tuple(kind) if choices is None else tuple(choices)
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return kind(value)

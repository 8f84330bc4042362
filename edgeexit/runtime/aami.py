"""The AAMI EC57 beat classes and the MIT-BIH annotation symbol table (data, no code).

The runtime labels annotated streams with them (:mod:`edgeexit.runtime.wfdb`); the host's data
loaders (:mod:`edgeexit.data`) label training beats with the same tables.
"""

from __future__ import annotations

AAMI_CLASSES: tuple[str, ...] = ("N", "S", "V", "F", "Q")
"""The five AAMI EC57 beat classes, in the label order used throughout edgeexit."""

AAMI_MAP: dict[str, str] = {
    **dict.fromkeys(("N", "L", "R", "e", "j"), "N"),
    **dict.fromkeys(("A", "a", "J", "S"), "S"),
    **dict.fromkeys(("V", "E"), "V"),
    "F": "F",
    **dict.fromkeys(("/", "f", "Q"), "Q"),
}
"""MIT-BIH beat annotation symbol -> AAMI class; every other symbol (+ ~ | x ! ...) is no beat."""

"""WFDB records read on the device (numpy only): the header, the signal in blocks, and the beat
annotations (``.atr``) as AAMI classes.

Enough of the format to stream MIT-BIH style records (:func:`edgeexit.runtime.stream.open_source`):
one ``.dat`` file per record in format 212 or 16. The host reads records with the ``wfdb``
package (:mod:`edgeexit.data.mitbih`); both map annotation symbols to classes with
:data:`edgeexit.runtime.aami.AAMI_MAP`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeexit.errors import DataError
from edgeexit.runtime.aami import AAMI_CLASSES, AAMI_MAP


def read_header(base: Path) -> dict:
    """The parts of a WFDB header (``base.hea``) this reader needs: sampling rate, signals (file,
    format, gain, units, baseline, name) and the ``.dat`` file."""
    hea = base.with_suffix(".hea")
    try:
        lines = [ln.split("#")[0].strip() for ln in hea.read_text(errors="replace").splitlines()]
    except OSError as e:
        raise DataError(f"cannot read the WFDB header {hea}: {e.strerror}") from None
    lines = [ln for ln in lines if ln]
    try:
        head = lines[0].split()
        nsig = int(head[1])
        fs = float(head[2].split("/")[0].split("(")[0]) if len(head) > 2 else 250.0
        nsamp = int(head[3]) if len(head) > 3 else None
        sigs = []
        for ln in lines[1:1 + nsig]:
            f = ln.split()
            fmt = f[1].split("x")[0].split(":")[0]
            gain_s = f[2] if len(f) > 2 else "200"
            units = gain_s.split("/")[1] if "/" in gain_s else "mV"
            g = gain_s.split("/")[0]
            baseline = int(g.split("(")[1].rstrip(")")) if "(" in g else None
            gain = float(g.split("(")[0]) or 200.0
            zero = int(f[4]) if len(f) > 4 else 0
            sigs.append({"file": f[0], "fmt": fmt, "gain": gain, "units": units,
                         "baseline": zero if baseline is None else baseline,
                         "name": f[8] if len(f) > 8 else f"sig{len(sigs)}"})
    except (IndexError, ValueError, OverflowError) as e:
        raise DataError(f"{hea} is not a WFDB header this reader understands ({e})") from None
    if not (math.isfinite(fs) and fs > 0) or nsig < 1 or (nsamp is not None and nsamp < 0):
        raise DataError(f"{hea}: sampling rate {fs:g} Hz, {nsig} signals, {nsamp} samples: not a "
                        "record this reader can stream")
    if len(sigs) != nsig or len({s["file"] for s in sigs}) != 1 or len({s["fmt"] for s in sigs}) != 1:
        raise DataError(f"{hea}: only records whose signals share one .dat file and format are streamed")
    if sigs[0]["fmt"] not in ("212", "16"):
        raise DataError(f"{hea}: WFDB format {sigs[0]['fmt']} is not supported (212 and 16 are)")
    dat = base.parent / sigs[0]["file"]
    if not dat.is_file():
        raise DataError(f"{hea} names the signal file {dat.name}, which is missing: copy it beside "
                        "the header")
    return {"fs": fs, "nsig": nsig, "nsamp": nsamp, "signals": sigs, "dat": dat}


_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


def read_blocks(base: Path, head: dict, channel: int, frames: int) -> Iterator[np.ndarray]:
    """Lead ``channel`` of the record in mV, in blocks of about ``frames`` samples (212 or 16)."""
    sig = head["signals"][channel]
    scale = _TO_MV.get(sig["units"].lower())
    if scale is None:
        raise DataError(f"{base}.hea: unknown units {sig['units']!r} of lead {sig['name']}")
    nsig, fmt = head["nsig"], sig["fmt"]
    frames += frames % 2  # 212 packs two samples in 3 bytes: keep blocks whole
    nbytes = frames * nsig * 2 if fmt == "16" else (frames * nsig * 3) // 2
    frames_read = 0
    try:
        f = open(head["dat"], "rb")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise DataError(f"cannot read {head['dat']}: {e.strerror}") from None
    with f:
        while True:
            raw = f.read(nbytes)
            if not raw:
                _check_length(head, frames_read)
                return
            if fmt == "16":
                d = np.frombuffer(raw[: len(raw) // 2 * 2], "<i2").astype(np.int32)
            else:
                b = np.frombuffer(raw[: len(raw) // 3 * 3], np.uint8).astype(np.int32).reshape(-1, 3)
                d = np.empty(b.shape[0] * 2, np.int32)
                d[0::2] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
                d[1::2] = b[:, 2] | ((b[:, 1] & 0xF0) << 4)
                d[d > 2047] -= 4096
            d = d[: d.size // nsig * nsig].reshape(-1, nsig)[:, channel]
            frames_read += d.size
            yield (d - sig["baseline"]) / sig["gain"] * scale


def _check_length(head: dict, frames: int) -> None:
    """Raise :class:`DataError` when the ``.dat`` ended before the samples its header promises."""
    want = head.get("nsamp")
    if want and frames < want:
        fs = head["fs"]
        raise DataError(f"{head['dat']} ends after {frames} of the {want} samples its header "
                        f"promises ({frames / fs:.1f} of {want / fs:.1f} s): the record is cut "
                        "short; copy it again (the beats above are from the part that is there)")


def read_annotations(base: str | os.PathLike) -> tuple[np.ndarray, np.ndarray] | None:
    """Beat annotations of a WFDB record (``.atr``, MIT format): ``(samples, AAMI class index)``.

    Only beats of the AAMI classes; None when the record has no ``.atr`` file.
    """
    path = Path(str(base) + ".atr")
    if not path.is_file():
        return None
    codes = {1: "N", 2: "L", 3: "R", 4: "a", 5: "V", 6: "F", 7: "J", 8: "A", 9: "S", 10: "E",
             11: "j", 12: "/", 13: "Q", 34: "e", 38: "f", 31: "!", 41: "x"}
    w = np.frombuffer(path.read_bytes(), "<u2")
    t, samples, labels, k = 0, [], [], 0
    while k < w.size:
        a, i = int(w[k]) >> 10, int(w[k]) & 0x3FF
        k += 1
        if a == 0 and i == 0:
            break
        if a == 59:  # SKIP: a 32-bit interval follows, high word first
            t += (int(w[k]) << 16) | int(w[k + 1])
            if t >= 1 << 31:
                t -= 1 << 32
            k += 2
        elif a == 63:  # AUX: i bytes of text, padded to a word
            k += (i + 1) // 2
        elif a in (60, 61, 62):  # NUM, SUB, CHN
            pass
        else:
            t += i
            sym = codes.get(a)
            if sym in AAMI_MAP:
                samples.append(t)
                labels.append(AAMI_CLASSES.index(AAMI_MAP[sym]))
    return np.asarray(samples, np.int64), np.asarray(labels, np.int64)

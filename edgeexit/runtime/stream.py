"""Streaming beat classification on the device (numpy only): R peaks, windows and the engine, live.

A live signal arrives in blocks of any size. :class:`StreamDetector` finds its R peaks with
:class:`edgeexit.runtime.peaks.IncrementalDetector`, the batch detector of
:mod:`edgeexit.runtime.peaks` made causal and incremental:

- every ``hop_s`` seconds of signal (a fixed grid of the *signal*, not of the blocks, so the peaks
  do not depend on how the signal was cut) the detector takes the new samples and filters each of
  them once (band-pass and derivative in one FIR by FFT overlap-save, squaring, running-sum
  integration), finds the QRS candidates made final by them and decides them in order with the
  batch detector's decision phase (adaptive levels, T-wave test, search-back, decay);
- the levels are learned once, from the first :data:`~edgeexit.runtime.peaks.LEARN_S` seconds,
  and carried; after ``relearn_s`` seconds without a beat they are learned afresh from the last
  seconds (an electrode pop had raised them above every QRS). Re-learning them in every short
  analysis window learned too low a level where many seconds hold no beat (long pauses, 2:1
  block: MIT-BIH 231, PPV 89.5 %) and counted T / P waves;
- an accepted beat is final (the search-back only looks after the last beat); it is committed
  once ``lookahead_s`` seconds of signal follow it (room for its window), at the end of the
  stream at once.

The detector's own delay is about 0.55 s (the filters' half-lengths and the refractory period
after a candidate), so a peak is known ``lookahead_s`` to ``lookahead_s + hop_s`` seconds after
it happened. The state is bounded: ``window_s`` seconds of signal (for the beats' windows), 16 s
of the integrated signal (to learn the levels from) and a few numbers.

:class:`BeatStream` turns committed peaks into the model's inputs with the functions of
:mod:`edgeexit.runtime.preprocess` (the ones that cut the training windows), so a beat's window
and RR context equal, bit for bit, those of the offline path for the same peaks. The RR context
holds ``post_rr``, the interval to the *next* R peak: a beat is answered once the next peak is
known, one beat late (every beat line says so: ``"answered_after": "next R peak"``). A *minor*
beat (:data:`~edgeexit.runtime.peaks.MINOR_AMPLITUDE`: under half the size of the recent beats,
e.g. a small pulse an attacker or an electrode added) is answered too, but its neighbours' RR
intervals skip it and it does not join the morphology template; the full-size beat before it
waits for the next full-size peak (the summary counts them: ``minor_beats``).

:func:`stream_classify` drives both from an iterator of signal blocks (see
:func:`open_source` for WFDB records (:mod:`edgeexit.runtime.wfdb`), CSV and raw binary files and stdin) and yields one dict per
beat and a final summary (real-time factor; with annotations, beat-detection sensitivity / PPV
within 150 ms and classification against them).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

import numpy as np

from edgeexit.errors import ConfigError, DataError
from edgeexit.runtime.engine import InputError
from edgeexit.runtime.peaks import MIN_SECONDS, IncrementalDetector
from edgeexit.runtime.quality import beat_sqi
from edgeexit.runtime.preprocess import (
    LOCAL_RR_BEATS,
    LONG_RR_BEATS,
    MORPH_FEATURES,
    RR_FEATURES,
    BeatTemplate,
    default_r_offset,
    small_median,
)
from edgeexit.runtime.wfdb import read_annotations, read_blocks, read_header

__all__ = ["MATCH_S", "BeatStream", "StreamDetector", "open_source", "resident_kb", "stream_classify"]

log = logging.getLogger(__name__)

MATCH_S = 0.150
"""Tolerance (seconds) for matching a detected R peak to an annotated beat (AAMI EC57)."""


def resident_kb() -> int:
    """This process's resident memory in kB (VmRSS of /proc/self/status; -1 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


# ------------------------------------------------------------------------------------ detector
class StreamDetector:
    """Causal R-peak detection with bounded state (see the module docstring).

    Args:
        fs: sampling rate in Hz.
        window_s: seconds of signal kept (for cutting the beats' windows).
        hop_s: the detector takes the new samples every ``hop_s`` seconds of signal (a fixed grid
            of the signal, so the peaks do not depend on the block sizes).
        lookahead_s: a peak is committed once this much signal follows it (at least the
            detector's own delay, about 0.55 s at any ``fs``; at least a window after its R peak).
        refractory_s: as in :func:`edgeexit.runtime.peaks.detect_r_peaks`.
        relearn_s: no beat for this long: the detector learns its levels afresh.

    ``push(samples)`` returns the absolute sample indices of the peaks committed by that block;
    ``flush()`` those left at the end. ``signal`` / ``signal_start`` expose the buffer (the last
    ``window_s`` seconds the detector has taken) right after each step, for cutting windows.
    """

    def __init__(self, fs: float, *, window_s: float = 12.0, hop_s: float = 2.0,
                 lookahead_s: float = 1.0, refractory_s: float = 0.2,
                 relearn_s: float = 4.0) -> None:
        try:
            fs = float(fs)
        except (TypeError, ValueError):
            raise ConfigError(f"--fs must be a sampling rate in Hz, got {fs!r}") from None
        if not math.isfinite(fs) or fs < 45.0:
            raise ConfigError(f"--fs must be at least 45 Hz for R-peak detection, got {fs:g}")
        self.fs = fs
        self.size = round(window_s * fs)
        self.hop = round(hop_s * fs)
        self.lookahead = round(lookahead_s * fs)
        self.refractory = max(1, round(refractory_s * fs))
        # no beat for this long: the levels may be stale (an electrode pop raised them above
        # every QRS), so the detector learns them afresh from its last seconds
        self.relearn = round(relearn_s * fs)
        if self.hop < 1 or self.lookahead < 1 or self.size < self.hop + self.lookahead + MIN_SECONDS * fs:
            raise ConfigError(
                f"stream detector: window_s ({window_s:g}) must exceed hop_s + lookahead_s "
                f"+ {MIN_SECONDS:g} s ({hop_s:g} + {lookahead_s:g})"
            )
        self._core = IncrementalDetector(fs, self.refractory, self.relearn, history=self.size)
        self.end = 0  # absolute index one past the newest sample
        self._next_t = self.hop  # the next step, on a grid of the signal
        self._accepted: deque[int] = deque()  # found, not yet committed (younger than lookahead)
        self.minor = 0  # minor beats committed so far
        self._hold = 0.0  # last finite sample (replaces NaN / Inf)
        self.filled = 0  # non-finite samples replaced so far
        # [start, end) runs of held samples, absolute, until the beats over them are answered
        self._held: deque[tuple[int, int]] = deque(maxlen=4096)
        self.analyses = 0  # steps taken

    # -- buffer --------------------------------------------------------------------------------
    @property
    def signal(self) -> np.ndarray:
        """The buffered signal (float64 mV), absolute samples ``signal_start .. signal_start +
        signal.size - 1``."""
        return self._core.raw

    @property
    def signal_start(self) -> int:
        return self._core.raw_start

    def _clean(self, x: np.ndarray) -> np.ndarray:
        if math.isfinite(np.add.reduce(x)):  # a NaN or Inf makes the sum NaN or Inf
            self._hold = float(x[-1]) if x.size else self._hold
            return x
        ok = np.isfinite(x)
        if ok.all():  # finite samples whose sum overflowed
            self._hold = float(x[-1])
            return x
        x = x.copy()
        bad = np.flatnonzero(~ok)
        self.filled += bad.size
        log.warning("%d non-finite sample(s) near sample %d held at the last finite value",
                    bad.size, self.end + int(bad[0]))
        for i in bad:  # hold the last finite value (a lead-off gap, not a QRS)
            x[i] = x[i - 1] if i else self._hold
        self._hold = float(x[-1])
        cuts = np.flatnonzero(np.diff(bad) > 1)
        for a, b in zip(bad[np.r_[0, cuts + 1]].tolist(), (bad[np.r_[cuts, bad.size - 1]] + 1).tolist()):
            a, b = self.end + a, self.end + b
            if self._held and self._held[-1][1] == a:
                a = self._held.pop()[0]
            self._held.append((a, b))
        return x

    def held_in(self, start: int, stop: int) -> int:
        """How many samples in ``[start, stop)`` (absolute) were held non-finite input."""
        if not self._held:
            return 0
        return sum(max(0, min(b, stop) - max(a, start)) for a, b in self._held
                   if a < stop and b > start)

    def forget_held_before(self, sample: int) -> None:
        """Drop the runs of held samples that end at or before ``sample`` (bounded state)."""
        while self._held and self._held[0][1] <= sample:
            self._held.popleft()

    # -- detection -----------------------------------------------------------------------------
    def _step(self, final: bool, on_commit) -> list[int]:
        """The detector processes the samples written up to a grid point (or the last ones) and
        commits the peaks that ``lookahead`` samples follow (all of them when ``final``)."""
        self.analyses += 1
        core = self._core
        core.process(final=final)
        self._accepted.extend(core.peaks)
        core.peaks.clear()
        until = core.end if final else core.end - self.lookahead
        out: list[int] = []
        accepted = self._accepted
        while accepted and accepted[0] < until:
            out.append(accepted.popleft())
        flagged = core.minor_peaks
        minor = [p for p in out if p in flagged] if flagged else []
        if minor:
            flagged.difference_update(minor)
            self.minor += len(minor)
        if on_commit is not None and out:
            on_commit(out, minor)
        return out

    def push(self, samples, on_commit=None) -> list[int]:
        """Feed a block of samples (mV); return the R peaks committed meanwhile (absolute indices).

        ``on_commit(peaks, minor)`` is called right after each step that committed peaks (``minor``:
        those of them that are minor beats, :data:`~edgeexit.runtime.peaks.MINOR_AMPLITUDE`), while
        :attr:`signal` still holds the samples around them.
        """
        x = self._clean(np.asarray(samples, dtype=np.float64).reshape(-1))
        out: list[int] = []
        i, n, write = 0, x.size, self._core.write
        while i < n:
            take = min(n - i, self._next_t - self.end)
            write(x[i:i + take])  # into the detector's buffer; processed at the grid point
            self.end += take
            i += take
            if self.end == self._next_t:
                out += self._step(False, on_commit)
                self._next_t += self.hop
        return out

    def flush(self, on_commit=None) -> list[int]:
        """End of the stream: commit every peak after the last commit."""
        if self.end < MIN_SECONDS * self.fs:
            return []
        return self._step(True, on_commit)

    def state_sizes(self) -> dict[str, int]:
        """Sizes of everything the detector keeps (for the bounded-state test)."""
        core = self._core
        return {"buffer": int(core.raw.size), "filtered": int(core._absd.size + core._mwi.size),
                "levels_rr": 0 if core.decide is None else len(core.decide.rr_recent),
                "uncommitted": len(self._accepted), "held_runs": len(self._held)}


# ---------------------------------------------------------------------------------- beats
class BeatStream:
    """Committed R peaks -> the model's input windows, one beat late (see the module docstring).

    Args:
        fs: sampling rate in Hz.
        window: samples per window; r_offset: samples before the R peak (default 3/8 window).
        rr_context: append the :data:`~edgeexit.runtime.preprocess.RR_FEATURES` channels.

    ``add(peaks, signal, signal_start, minor)`` takes the newly committed peaks (and those of them
    that are minor, :data:`~edgeexit.runtime.peaks.MINOR_AMPLITUDE`) with a signal buffer that holds their
    windows and returns the beats now complete as ``(r_peak, window)`` pairs, in order; ``finish()``
    returns the last ones (the last full-size beat's ``post_rr`` is its ``pre_rr``, as offline).
    A full-size beat is complete at the next full-size peak (its RR intervals skip the minor beats
    between), a minor beat with it (:func:`~edgeexit.runtime.preprocess.rr_features`).
    """

    def __init__(self, fs: float, window: int, r_offset: int | None = None,
                 rr_context: bool = True, morph_context: bool = False) -> None:
        self.fs = float(fs)
        self.window = int(window)
        self.r_offset = default_r_offset(self.window) if r_offset is None else int(r_offset)
        self.rr_context = rr_context
        self._channels = 1 + (len(RR_FEATURES) if rr_context else 0) + (len(MORPH_FEATURES) if morph_context else 0)
        # the morphology template: the previous kept beats' windows (bounded), as offline
        self._template = BeatTemplate(self.window, self.r_offset, self.fs) if morph_context else None
        # the last full-size peak and the minor ones after it, with their windows, waiting for
        # the next full-size peak (bounded: MINOR_RESET minor beats in a row become full-size)
        self._pending: list[tuple[int, np.ndarray | None]] = []
        self._prev = -1  # the full-size peak before the pending one (-1: none yet)
        self._pre: deque[float] = deque(maxlen=LOCAL_RR_BEATS)  # pre_rr of the last full-size beats
        self._csum: deque[float] = deque([0.0], maxlen=LONG_RR_BEATS + 1)  # running sum of pre_rr
        self._majors = 0  # full-size beats completed
        self.beats = 0  # beats seen (index of the next one)
        self.minor = 0  # minor beats among them
        self.minor_out: set[int] = set()  # R peaks of the minor beats returned, until answered
        self.dropped = 0  # beats too close to the start of the stream for a window

    def state_sizes(self) -> dict[str, int]:
        d = {"pending": len(self._pending), "pre": len(self._pre), "csum": len(self._csum)}
        if self._template is not None:
            d["template"] = int(self._template._past.shape[0])
        return d

    def _cut_window(self, r: int, signal: np.ndarray, start: int) -> np.ndarray | None:
        a = r - self.r_offset - start
        if r - self.r_offset < 0 or a + self.window > signal.size:
            return None  # too close to the start, or (at the end of the stream) to the end
        if a < 0:  # found later than the buffer reaches back (a search-back over a long pause)
            log.warning("the window of the beat at sample %d has left the buffer: dropped", r)
            return None
        return np.asarray(signal[a:a + self.window], dtype=np.float32)

    def add(self, peaks: Iterable[int], signal: np.ndarray, start: int,
            minor: Collection[int] = ()) -> list[tuple[int, np.ndarray]]:
        """The beats complete once ``peaks`` (``minor``: those of them that are minor) join."""
        done: list[tuple[int, np.ndarray]] = []
        pending = self._pending
        for p in peaks:
            p = int(p)
            cut = self._cut_window(p, signal, start)
            if minor and p in minor and pending:  # minor: waits with the pending one
                pending.append((p, cut))
                continue
            if pending:
                self._complete(p, done)
            self._pending = pending = [(p, cut)]
        return done

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """The last beats (answered at the end of the stream), those with a full window."""
        if self._prev < 0 and len(self._pending) < 2:
            return []  # a single beat has no RR interval (offline refuses it too)
        done: list[tuple[int, np.ndarray]] = []
        self._complete(None, done)
        self._pending = []
        return done

    def _complete(self, nxt: int | None, done: list) -> None:
        """Build the windows of the pending beats, now that the next full-size peak ``nxt`` is
        known (None: the stream ended), into ``done``.

        The RR context is updated beat by beat with the arithmetic of
        :func:`~edgeexit.runtime.preprocess.rr_features` over the whole stream (so the channels
        equal the offline ones bit for bit): ``local_rr`` the median of the last
        :data:`LOCAL_RR_BEATS` ``pre_rr``, ``avg_rr`` a running sum over :data:`LONG_RR_BEATS`."""
        fs, pending = self.fs, self._pending
        beat = pending[0][0]
        if nxt is not None:
            post = (nxt - beat) / fs
            pre = post if self._prev < 0 else (beat - self._prev) / fs
        else:
            pre = post = (beat - self._prev) / fs if self._prev >= 0 else (pending[1][0] - beat) / fs
        csum = self._csum[-1] + pre  # the running sum of pre_rr, as np.cumsum over the stream
        self._csum.append(csum)
        self._pre.append(pre)
        self._majors += 1
        self._prev = beat
        local = small_median(self._pre)
        n = min(self._majors, LONG_RR_BEATS)
        avg = (csum - self._csum[-1 - n]) / n
        self._emit(beat, pending[0][1], pre, post, local, avg, True, done)
        for k in range(1, len(pending)):  # minor beats: their intervals to the peaks either side
            r = pending[k][0]
            pre = (r - pending[k - 1][0]) / fs
            after = pending[k + 1][0] if k + 1 < len(pending) else nxt
            post = pre if after is None else (after - r) / fs
            self.minor += 1
            if self._emit(r, pending[k][1], pre, post, local, avg, False, done):
                self.minor_out.add(r)

    def _emit(self, beat: int, cut: np.ndarray | None, pre: float, post: float, local: float,
              avg: float, join: bool, done: list) -> bool:
        """The beat's window with its context into ``done``; False: it has no window."""
        self.beats += 1
        if cut is None:
            self.dropped += 1
            return False
        x = np.empty((self._channels, self.window), np.float32)
        x[0] = cut
        ctx: tuple[float, ...] = ()
        if self.rr_context:
            ctx = (pre, post, local, pre / local, post / local, avg, pre / avg)
        if self._template is not None:  # the morphology channels come last, as in beat_windows
            ctx += self._template.values(cut, join)
        if ctx:  # each value rounded to float32 on its own, as offline
            x[1:] = np.array(ctx, np.float32)[:, None]
        done.append((beat, x))
        return True


# ---------------------------------------------------------------------------------- sources
class Source:
    """A signal source: ``fs``, ``blocks`` (an iterator of float64 mV blocks), ``annotations``."""

    def __init__(self, name: str, fs: float, blocks: Iterator[np.ndarray],
                 annotations: tuple[np.ndarray, np.ndarray] | None = None, lead: str = "") -> None:
        self.name, self.fs, self.blocks, self.annotations, self.lead = name, fs, blocks, annotations, lead


def _csv_blocks(lines: Iterable[str], name: str, channel: int, rows: int, scale: float,
                offset: float) -> Iterator[np.ndarray]:
    buf: list[float] = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line[0] == "#":
            continue
        cols = line.replace(";", ",").split(",") if ("," in line or ";" in line) else line.split()
        try:
            v = float(cols[channel])
        except IndexError:
            raise DataError(f"{name} line {n}: no column {channel} (--channel counts from 0)") from None
        except ValueError:
            if not buf and n <= 2:
                continue  # a header row
            raise DataError(f"{name} line {n}: {cols[channel]!r} is not a number") from None
        buf.append((v - offset) * scale)
        if len(buf) >= rows:
            yield np.asarray(buf, np.float64)
            buf = []
    if buf:
        yield np.asarray(buf, np.float64)


def _raw_blocks(f, name: str, dtype: np.dtype, channels: int, channel: int, rows: int,
                scale: float, offset: float) -> Iterator[np.ndarray]:
    frame = dtype.itemsize * channels
    rest = b""
    while True:
        want = rows * frame - len(rest)
        chunk = f.read1(want) if hasattr(f, "read1") else f.read(want)  # what has arrived
        if not chunk:
            if rest:
                log.warning("%s: %d trailing byte(s) of a partial frame ignored", name, len(rest))
            return
        data = rest + chunk
        whole = len(data) // frame * frame
        rest = data[whole:]
        if whole:
            d = np.frombuffer(data[:whole], dtype).reshape(-1, channels)[:, channel]
            yield (d.astype(np.float64) - offset) * scale


def open_source(
    source: str,
    *,
    fs: float | None = None,
    units: str | None = None,
    dtype: str | None = None,
    channel: int | None = None,
    channels: int = 1,
    adc_gain: float = 200.0,
    adc_zero: float = 0.0,
    block_seconds: float = 1.0,
) -> Source:
    """Open ``source`` for streaming.

    ``source``: a WFDB record (``.../mitdb/100``, its ``.hea`` or ``.dat``: the MLII lead unless
    ``channel``), a CSV file (``.csv``/``.txt``: one sample per line, or columns and ``channel``),
    a raw binary file (``dtype``: interleaved frames of ``channels`` values), or ``-`` for stdin
    (CSV text, or raw binary when ``dtype`` is given), read as it arrives. ``units``: ``mV``
    (default), ``uV`` or ``adc`` (``(value - adc_zero) / adc_gain``).
    """
    if block_seconds is None or not block_seconds > 0:
        raise ConfigError(f"--block-seconds must be positive, got {block_seconds}")
    if channel is not None and channel < 0:
        raise ConfigError(f"--channel must be >= 0, got {channel}")
    scale, offset = _to_mv(units, adc_gain, adc_zero)
    p = Path(source)
    base = p.with_suffix("") if p.suffix in (".hea", ".dat", ".atr") else p
    if source != "-" and base.with_suffix(".hea").is_file() and p.suffix not in (".csv", ".txt"):
        return _wfdb_source(base, fs, channel, block_seconds)
    if source != "-" and not p.is_file():
        raise DataError(f"signal file not found: {p} (give a WFDB record, a CSV or raw file, or -)")
    if fs is None:
        raise ConfigError(f"--fs is required for {source} (the sampling rate in Hz)")
    rows = max(1, round(block_seconds * float(fs)))
    ch = channel or 0
    if dtype is not None:
        f, dt = _raw_file(source, p, dtype, channels, ch)
        return Source(source, float(fs), _raw_blocks(f, source, dt, channels, ch, rows, scale, offset))
    if source == "-":
        return Source("stdin", float(fs), _csv_blocks(sys.stdin, "stdin", ch, rows, scale, offset))
    if p.suffix not in (".csv", ".txt"):
        raise ConfigError(f"{p}: give --dtype for a raw binary file (or use .csv / a WFDB record)")

    def lines():
        try:
            with open(p, encoding="utf-8") as f:
                yield from f
        except UnicodeDecodeError:
            raise DataError(f"{p} is not UTF-8 text; for binary samples give --dtype") from None

    return Source(str(p), float(fs), _csv_blocks(lines(), str(p), ch, rows, scale, offset))


def _to_mv(units: str | None, adc_gain: float, adc_zero: float) -> tuple[float, float]:
    """``(scale, offset)`` that take ``units`` to mV: ``(value - offset) * scale``."""
    u = (units or "mV").lower()
    if u == "mv":
        return 1.0, 0.0
    if u in ("uv", "µv"):
        return 1e-3, 0.0
    if u == "adc":
        if not adc_gain:
            raise ConfigError("--adc-gain must not be 0")
        return 1.0 / adc_gain, adc_zero
    raise ConfigError(f"--units must be mV, uV or adc, got {units!r}")


def _wfdb_source(base: Path, fs: float | None, channel: int | None, block_seconds: float) -> Source:
    """A WFDB record's lead (``channel``, else MLII, else the first), with its annotations."""
    head = read_header(base)
    names = [s["name"] for s in head["signals"]]
    ch = channel if channel is not None else (names.index("MLII") if "MLII" in names else 0)
    if ch >= head["nsig"]:
        raise ConfigError(f"--channel {ch}: record {base} has {head['nsig']} signals ({', '.join(names)})")
    if fs is not None and float(fs) != head["fs"]:
        raise ConfigError(f"--fs {fs:g} contradicts the header of {base} ({head['fs']:g} Hz): drop --fs")
    frames = max(2, round(block_seconds * head["fs"]))
    return Source(str(base), head["fs"], read_blocks(base, head, ch, frames),
                  read_annotations(base), names[ch])


def _raw_file(source: str, p: Path, dtype: str, channels: int, ch: int):
    """The open binary stream of ``source`` (stdin for ``-``) and its numpy dtype, checked."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ConfigError(f"--dtype {dtype!r} is not a numpy dtype (float32, int16, ...)") from None
    if channels < 1 or ch >= channels:
        raise ConfigError(f"--channel {ch} must be below the number of interleaved channels ({channels})")
    if source == "-":
        return sys.stdin.buffer, dt
    return open(p, "rb"), dt  # noqa: SIM115 - closed by the generator's end


# -------------------------------------------------------------------------------- classify
class _Scorer:
    """Online beat matching against annotations (each annotation matched at most once)."""

    def __init__(self, ann: np.ndarray, labels: np.ndarray, tol: int, k: int) -> None:
        self.ann, self.labels, self.tol = ann, labels, tol
        self._next = 0  # annotations before this index are matched or missed
        self._used: deque[int] = deque(maxlen=64)
        self.tp = self.fp = self.fn = 0
        self.confusion = np.zeros((k, k), np.int64)
        self.unreadable = np.zeros(k, np.int64)  # matched beats flagged unreadable, by class

    def match(self, r: int) -> int | None:
        """Annotated class of the beat at ``r`` (None: a false detection)."""
        a = self.ann
        while self._next < a.size and a[self._next] < r - self.tol:
            if self._next not in self._used:
                self.fn += 1
            self._next += 1
        best, bd = None, self.tol + 1
        j = self._next
        while j < a.size and a[j] <= r + self.tol:
            d = abs(int(a[j]) - r)
            if j not in self._used and d < bd:
                best, bd = j, d
            j += 1
        if best is None:
            self.fp += 1
            return None
        self.tp += 1
        self._used.append(best)
        return int(self.labels[best])

    def finish(self, end: int) -> None:
        while self._next < self.ann.size and self.ann[self._next] < end:
            if self._next not in self._used:
                self.fn += 1
            self._next += 1


def _input_spec(engine, fs: float) -> tuple[int, int | None, bool, bool]:
    spec = engine.manifest.input
    shape = tuple(engine.input_shape)
    window = shape[-1] if spec.window is None else spec.window
    morph = bool(spec.morph_context)
    rr = (shape[0] == 1 + len(RR_FEATURES) + (len(MORPH_FEATURES) if morph else 0)
          if spec.rr_context is None else spec.rr_context)
    channels = 1 + (len(RR_FEATURES) if rr else 0) + (len(MORPH_FEATURES) if morph else 0)
    if shape != (channels, window):
        raise ConfigError(
            f"the bundle takes windows {list(shape)}; streaming cuts [{channels}, {window}] "
            "(one lead" + (" + RR context" if rr else "") + (" + morphology context" if morph else "")
            + "): use a bundle trained on single-lead beats"
        )
    bfs = spec.fs
    if bfs is not None and abs(bfs - fs) > 1e-6:
        raise ConfigError(f"the source is sampled at {fs:g} Hz but the bundle was trained at {float(bfs):g} Hz: "
                          "resample the signal first")
    return window, spec.r_offset, rr, morph


def stream_classify(
    engine,
    source: Source,
    *,
    realtime: bool = False,
    detector: dict | None = None,
    keep_beats: bool = False,
    min_sqi: float | None = None,
    clock=time.perf_counter,
    sleep=time.sleep,
) -> Iterator[dict]:
    """Classify the beats of ``source`` as they arrive; yield one dict per beat, then the summary.

    Beat dicts: ``beat`` (index), ``r_sample``, ``r_time_s``, ``label``, ``label_index``, ``exit``,
    ``probs``, ``segment_us``, ``minor: true`` for a minor beat (under
    :data:`~edgeexit.runtime.peaks.MINOR_AMPLITUDE` of the recent beats: answered, but out of its
    neighbours' context), ``answered_after`` ("next R peak"), ``delay_s`` (signal seconds
    between the R peak and the answer: the detector's look-ahead plus the wait for the next
    peak), ``delay_wall_s`` (wall seconds since the block holding the R peak arrived) and, with
    annotations, ``annotation`` (the matched annotated class, or null for a false detection).
    The summary (``{"summary": true, ...}``) has the real-time factor, the beat count, and with
    annotations the detection sensitivity / PPV within :data:`MATCH_S` and the classification
    counts. ``keep_beats``: also return in the summary every answered beat's R peak and label
    (``r_samples``, ``labels``) and every committed peak (``all_peaks``): lists that grow, for
    benchmarks and tests. ``min_sqi``: flag the beats whose signal-quality index
    (:func:`edgeexit.runtime.quality.beat_sqi`) is below it as unreadable: their dict gets
    ``sqi`` and ``unreadable: true`` (the model's answer is kept, marked), the summary counts them
    (``unreadable``), and the classification scores count them apart, per annotated class
    (``unreadable_by_class``), not in the confusion matrix; None: no index is computed.
    """
    run = _StreamRun(engine, source, detector, keep_beats, clock, min_sqi)
    fs, det = run.fs, run.det
    t0 = clock()
    for block in source.blocks:
        if realtime:  # pace the reading to the sampling rate
            ahead = (det.end + block.size) / fs - (clock() - t0)
            if ahead > 0:
                sleep(ahead)
        now = clock()
        run.arrivals.append((det.end + block.size, now))
        run.detect(now, det.push, block)
        if run.collected:
            yield from run.answer(run.collected, det.end, last=False)
        run.compute_s += clock() - now
    now = clock()
    run.detect(now, det.flush)
    yield from run.answer(run.collected, det.end, last=False)
    yield from run.answer(run.beats.finish(), det.end, last=True)
    run.compute_s += clock() - now
    yield run.summary(clock() - t0)


class _StreamRun:
    """The state of one :func:`stream_classify`: the detector, the beat cutter, the annotation
    matching, the arrival times of the blocks and the counts the summary reports."""

    def __init__(self, engine, source: Source, detector: dict | None, keep_beats: bool,
                 clock, min_sqi: float | None = None) -> None:
        self.engine, self.source, self.keep_beats, self.clock = engine, source, keep_beats, clock
        self.min_sqi = None if min_sqi is None else float(min_sqi)
        self.unreadable = 0
        self.fs = fs = float(source.fs)
        window, r_offset, rr, morph = _input_spec(engine, fs)
        self.window = window
        self.det = StreamDetector(fs, **(detector or {}))
        self.beats = BeatStream(fs, window, r_offset, rr, morph_context=morph)
        self.classes = list(engine.classes)
        self.scorer = None
        if source.annotations is not None:
            self.scorer = _Scorer(*source.annotations, round(MATCH_S * fs), len(self.classes))
        self.arrivals: deque[tuple[int, float]] = deque(maxlen=4096)  # (end sample, wall time)
        self.pending_ann: deque[tuple[int, int | None]] = deque(maxlen=4)
        self.exits = [0] * engine.manifest.num_exits
        self.seg_ns = [0] * engine.manifest.num_exits
        self.kept_r: list[int] = []
        self.all_peaks: list[int] = []
        self.kept_y: list[int] = []
        self.n = self.refused = self.held_beats = 0
        self.collected: list[tuple[int, np.ndarray]] = []
        self.compute_s = 0.0
        # compute seconds by step: detection (R peaks), context (windows, RR and morphology
        # channels), inference (Engine.predict); the rest (answers, scoring) is compute_s less these
        self.split = {"detection": 0.0, "context": 0.0, "inference": 0.0}
        self.aside_s = 0.0  # inside the detector's commits but not detection: annotation matching
        if self.det.lookahead < window - self.beats.r_offset:
            raise ConfigError(f"stream detector: lookahead_s must cover the "
                              f"{window - self.beats.r_offset} samples of a window after its R peak")

    def arrived(self, r: int) -> float:
        """Wall time at which the block holding sample ``r`` arrived. Beats are answered in
        order, so the blocks that end at or before ``r`` are dropped (one look per beat)."""
        arrivals = self.arrivals
        while len(arrivals) > 1 and arrivals[0][0] <= r:
            arrivals.popleft()
        return arrivals[0][1] if arrivals else self.clock()

    def detect(self, now: float, step, *args) -> None:
        """The detector's ``step`` (``push`` of a block, or ``flush``), started at clock ``now``:
        the beats it commits go to :attr:`collected`; its time, less the context and the
        annotation matching done inside its commits, counts as detection."""
        self.collected.clear()
        context, aside = self.split["context"], self.aside_s
        step(*args, on_commit=self.on_commit)
        self.split["detection"] += (self.clock() - now - (self.split["context"] - context)
                                    - (self.aside_s - aside))

    def on_commit(self, peaks: list[int], minor: list[int]) -> None:
        """The detector committed ``peaks`` (``minor``: those of them that are minor beats): match
        them to annotations, cut their windows."""
        t = self.clock()
        if self.scorer is not None or self.keep_beats:
            if self.scorer is not None:
                for p in peaks:
                    self.pending_ann.append((p, self.scorer.match(p)))
            if self.keep_beats:
                self.all_peaks.extend(peaks)
            t0, t = t, self.clock()
            self.aside_s += t - t0
        self.collected.extend(self.beats.add(peaks, self.det.signal, self.det.signal_start, minor))
        self.split["context"] += self.clock() - t

    def answer(self, done: list[tuple[int, np.ndarray]], now_end: int, last: bool) -> Iterator[dict]:
        """Classify the cut beats ``done`` (those of one detector step) in order; one dict per
        beat. The network runs for all of them first, then their dicts are built, in one loop
        each: a loop that alternates the two runs its Python code with cold caches (the native
        inference evicts it), which cost more than twice the time here."""
        det, predict, clock = self.det, self.engine.predict, self.clock
        window, off = self.window, self.beats.r_offset
        answers, failed = [], None
        for r, x in done:
            a = r - off  # the beat's window: samples a .. a + window - 1
            held = det.held_in(a, a + window)
            det.forget_held_before(a)  # beats are answered in order
            t0 = clock()
            try:
                res = predict(x)
            except InputError as e:  # e.g. an electrode pop far beyond the trained range
                res = e
            except Exception as e:  # the backend failed: the beats before it are still answered
                failed = e
                break
            t = clock()
            self.split["inference"] += t - t0
            answers.append((r, x, res, held, t))
        for r, x, res, held, t in answers:
            if isinstance(res, InputError):
                yield self._refused(r, res)
            else:
                yield self._beat(r, x, res, held, t, now_end, last)
        if failed is not None:
            raise failed

    def _beat(self, r: int, x: np.ndarray, res, held: int, t: float, now_end: int,
              last: bool) -> dict:
        """The dict of an answered beat (built in place: the beat's keys, then
        :meth:`ExitResult.to_dict`'s, then the stream's); counts it."""
        fs = self.fs
        self.exits[res.exit_index] += 1
        seg_ns = self.seg_ns
        for k, ns in enumerate(res.segment_ns):
            seg_ns[k] += ns
        d = res.to_dict({"beat": self.n, "r_sample": r, "r_time_s": round(r / fs, 4)})
        d["answered_after"] = "end of stream" if last else "next R peak"
        d["delay_s"] = round((now_end - r) / fs, 3)
        d["delay_wall_s"] = round(t - self.arrived(r), 6)
        if held:
            d["held_samples"] = held  # its window holds samples that arrived as NaN / Inf
            self.held_beats += 1
        minor = self.beats.minor_out
        if minor and r in minor:
            d["minor"] = True  # small: left out of its neighbours' RR and morphology context
            minor.discard(r)
        if self.min_sqi is not None:
            self._quality(d, x)
        if self.scorer is not None:  # (without annotations there is nothing pending to match)
            self._annotate(d, r, res.label, d.get("unreadable", False))
        if self.keep_beats:
            self.kept_r.append(r)
            self.kept_y.append(res.label)
        self.n += 1
        return d

    def _refused(self, r: int, e: InputError) -> dict:
        self.refused += 1
        self.beats.minor_out.discard(r)
        while self.pending_ann and self.pending_ann[0][0] <= r:
            self.pending_ann.popleft()
        d = {"beat": self.n, "r_sample": r, "r_time_s": round(r / self.fs, 4), "error": str(e)}
        self.n += 1
        return d

    def _quality(self, d: dict, x: np.ndarray) -> None:
        """The beat's quality index into ``d``; below :attr:`min_sqi`, flagged unreadable."""
        q = beat_sqi(x[0], self.beats.r_offset, self.fs)
        d["sqi"] = round(q, 2)
        if q < self.min_sqi:
            d["unreadable"] = True
            self.unreadable += 1

    def _annotate(self, d: dict, r: int, label: int, unreadable: bool = False) -> None:
        """The annotated class of the beat at ``r`` into ``d``, counted against ``label`` (an
        unreadable beat: counted apart, per annotated class)."""
        pending = self.pending_ann
        while pending and pending[0][0] < r:
            pending.popleft()
        if pending and pending[0][0] == r:
            a = pending.popleft()[1]
            d["annotation"] = None if a is None else self.classes[a]
            if a is not None and unreadable:
                self.scorer.unreadable[a] += 1
            elif a is not None:
                self.scorer.confusion[a, label] += 1

    def summary(self, wall: float) -> dict:
        """The closing summary (``wall``: seconds since the stream started)."""
        det, beats, exits, fs = self.det, self.beats, self.exits, self.fs
        seconds = det.end / fs
        compute = self.compute_s
        summary = {
            "summary": True, "source": self.source.name, "lead": self.source.lead, "fs": fs,
            "signal_s": round(seconds, 3), "wall_s": round(wall, 4), "compute_s": round(compute, 4),
            "realtime_factor": round(seconds / wall, 1) if wall > 0 else None,
            "compute_realtime_factor": round(seconds / compute, 1) if compute > 0 else None,
            # compute seconds by step (the rest of compute_s: answers and scoring)
            "compute_split_s": {k: round(v, 4) for k, v in self.split.items()},
            "beats": self.n, "refused": self.refused, "peaks": beats.beats,
            "minor_beats": beats.minor,  # small beats left out of their neighbours' context
            "dropped_at_start": beats.dropped,
            "filled_samples": det.filled, "beats_over_held_samples": self.held_beats,
            "answered": "one beat late: each beat after the next R peak (its RR context needs post_rr)",
            "detector": {"window_s": det.size / fs, "hop_s": det.hop / fs,
                         "lookahead_s": det.lookahead / fs},
            "exit_counts": list(exits),
            "mean_segment_us": [round(s / max(1, sum(exits[k:])) / 1e3, 1)
                                for k, s in enumerate(self.seg_ns)],
        }
        if self.min_sqi is not None:
            summary["min_sqi"] = self.min_sqi
            summary["unreadable"] = self.unreadable
        if self.scorer is not None:
            summary.update(self._scores())
            if self.min_sqi is not None:
                summary["classification"]["unreadable_by_class"] = dict(
                    zip(self.classes, self.scorer.unreadable.tolist()))
        if self.keep_beats:
            summary["r_samples"] = self.kept_r
            summary["labels"] = self.kept_y
            summary["all_peaks"] = self.all_peaks
        return summary

    def _scores(self) -> dict:
        """Detection (sensitivity, PPV within :data:`MATCH_S`) and classification against the
        annotations."""
        scorer = self.scorer
        scorer.finish(self.det.end)
        tp, fp, fn = scorer.tp, scorer.fp, scorer.fn
        c = scorer.confusion
        return {
            "detection": {"tolerance_s": MATCH_S, "annotated": tp + fn, "detected": tp + fp,
                          "tp": tp, "fp": fp, "fn": fn,
                          "sensitivity": round(tp / max(1, tp + fn), 6),
                          "ppv": round(tp / max(1, tp + fp), 6)},
            "classification": {
                "classes": self.classes, "beats": int(c.sum()),
                "accuracy": round(float(np.trace(c)) / max(1, int(c.sum())), 6),
                "confusion": c.tolist(),  # rows: annotated class, columns: predicted
            },
        }

"""The device engine: run the exits of a bundle one after another and stop when one is confident.

Example:
    >>> engine = Engine.from_bundle("bundle/")            # backend and threads from the target
    >>> r = engine.predict(window)                         # window [C, L] float32, in mV
    >>> r.label, r.exit_index, r.segment_ns
    >>> batch = engine.predict_batch(windows)              # [N, C, L]: each segment runs only on
    ...                                                    # the samples still undecided

Uses numpy and one inference backend (onnxruntime or LiteRT); never torch or onnx.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from array import array
from pathlib import Path

import numpy as np

from edgeexit.errors import EdgeExitError
from edgeexit.runtime.backends import Session, backend_for_format, get_backend
from edgeexit.runtime.backends.base import BACKENDS, BackendError
from edgeexit.runtime.manifest import BudgetSpec, BundleError, Manifest, load_manifest
from edgeexit.runtime.policy import Policy, make_policy, softmax_list

log = logging.getLogger(__name__)
# x . x of a window with huge values overflows float32 on the fast path; _explain looks at it
warnings.filterwarnings("ignore", "overflow encountered in dot", RuntimeWarning, __name__)

_F32 = np.dtype(np.float32)
_clock = time.perf_counter_ns


class InputError(EdgeExitError):
    """An input window has the wrong shape or dtype, holds NaN/Inf, or lies far outside the range
    of the data the model was trained on."""


_F32_MAX = float(np.finfo(np.float32).max)
RANGE_FACTOR = 4.0
"""A window value beyond this multiple of the largest magnitude the training data reached on its
channel (the manifest's ``input.abs_max``) is refused: a model answers such input with confident
nonsense (a window of 1e30 mV came back ``V`` with probability 1.0), and it is nearly always a
units or lead mistake (uV for mV: 1000x)."""


class ExitResult:
    """The answer for one input window.

    Attributes:
        label: index of the predicted class; ``class_name`` its name.
        probs: answer distribution over the classes (softmax of the exit, or the ensemble mean),
            float32; made on first access (the batch-1 path hands over a list, or only the exit's
            logits where the answer is their softmax: a caller who wants only the label never
            pays for the distribution).
        exit_index: the exit that answered.
        segment_ns: wall time of every segment that ran, in nanoseconds.
    """

    __slots__ = ("label", "class_name", "exit_index", "segment_ns", "_probs", "_logits")

    def __init__(self, label: int, class_name: str, probs, exit_index: int,
                 segment_ns: tuple[int, ...], logits: list[float] | None = None) -> None:
        """``probs``: the distribution (array or list of floats), or None with ``logits``: the
        exit's logits, whose softmax (:func:`~edgeexit.runtime.policy.softmax_list`) it is."""
        self.label = label
        self.class_name = class_name
        self._probs = probs
        self._logits = logits
        self.exit_index = exit_index
        self.segment_ns = segment_ns

    @property
    def probs(self) -> np.ndarray:
        p = self._probs
        if type(p) is not np.ndarray:
            if p is None:
                p = softmax_list(self._logits)
            p = self._probs = np.asarray(p, np.float32)
        return p

    def __repr__(self) -> str:
        return (f"ExitResult(label={self.label}, class_name={self.class_name!r}, "
                f"exit_index={self.exit_index}, probs={self.probs!r}, segment_ns={self.segment_ns})")

    def to_dict(self, into: dict | None = None) -> dict:
        """``label``, ``label_index``, ``exit``, ``probs`` (the float32 values rounded to 6
        decimals) and ``segment_us``, in this order; ``into``: add them to that dict (after its
        keys) and return it."""
        d = {} if into is None else into
        d["label"] = self.class_name
        d["label_index"] = self.label
        d["exit"] = self.exit_index
        d["probs"] = self._rounded_probs()
        d["segment_us"] = [round(ns / 1e3, 1) for ns in self.segment_ns]
        return d

    def _rounded_probs(self) -> list[float]:
        """``[round(p, 6) for p in self.probs.tolist()]``, without the array where the answer
        is still a list: ``array("f")`` rounds to float32 as numpy's cast does, and for a float32
        value ``v``, ``round(v * 1e6) / 1e6`` is ``round(v, 6)``: ``v * 1e6`` is exact in float64
        (24 + 14 significant bits), ``round`` takes it to the nearest integer (ties to even, as
        ``round(v, 6)`` rounds the exact value), and the division is correctly rounded."""
        p = self._probs
        if type(p) is np.ndarray:
            vals = self.probs.tolist()
        else:
            vals = array("f", softmax_list(self._logits) if p is None else p).tolist()
        try:
            return [round(v * 1e6) / 1e6 for v in vals]
        except (ValueError, OverflowError):  # NaN / Inf: round() of them is not an integer
            return [round(v, 6) for v in vals]


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """Answers for a batch: ``labels``/``exit_index`` [N], ``probs`` [N, K]; per segment the total
    wall time ``segment_ns`` and the number of samples it ran on ``segment_samples``."""

    labels: np.ndarray
    probs: np.ndarray
    exit_index: np.ndarray
    segment_ns: tuple[int, ...]
    segment_samples: tuple[int, ...]


def _pick_backend(manifest: Manifest, backend: str) -> str:
    formats = manifest.formats
    if not formats:
        raise BundleError("no file format is present for every segment; re-export the bundle")
    if backend != "auto":
        if backend not in BACKENDS:
            raise BackendError(f"unknown backend {backend!r}; choose auto or one of: {', '.join(BACKENDS)}")
        fmt = get_backend(backend).file_format
        if fmt not in formats:
            raise BundleError(
                f"backend {backend} runs {fmt} files but this bundle holds {', '.join(formats)}; "
                f"re-export with --formats {fmt} or pick another backend"
            )
        return backend
    preferred = manifest.target.runtime.format
    order = sorted(formats, key=lambda f: f != preferred)
    for fmt in order:
        b = backend_for_format(fmt)
        if b.available():
            return b.name
    raise BackendError(
        f"no installed backend runs this bundle's files ({', '.join(formats)}): install onnxruntime "
        "or ai-edge-litert (pip install 'edgeexit[runtime]')"
    )


def default_threads(manifest: Manifest) -> int:
    """The target's thread count, capped at the CPUs this process may use."""
    want = int(manifest.target.runtime.threads or 1)
    try:
        have = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        have = os.cpu_count() or 1
    return max(1, min(want, have))


def _unpack(path: str | os.PathLike):
    """``(bundle directory, None)``, or for a ``.tar.gz`` the directory it was unpacked into and
    the temporary directory holding it (removed when that object is)."""
    if Path(path).is_dir():  # the device's case: tarfile is not even imported
        return Path(path), None
    from edgeexit.runtime.archive import extract_archive, is_archive

    if not is_archive(path):
        return Path(path), None
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="edgeexit-bundle-")
    return extract_archive(path, tmp.name), tmp


def _installed_backend(name: str):
    be = get_backend(name)
    if not be.available():
        raise BackendError(
            f"backend {name} is not installed here: pip install "
            f"{'onnxruntime' if name == 'onnxruntime' else 'ai-edge-litert'}"
        )
    return be


def _load_monolithic(root: Path, manifest: Manifest, be, threads: int) -> Session:
    entry = manifest.monolithic
    art = None if entry is None else entry.artifact(be.file_format)
    if art is None:
        raise BundleError(f"the bundle holds no {be.file_format} monolithic reference graph")
    return be.load(root / art.file, threads)


def _bundle_policy(manifest: Manifest, name: str | None, thresholds, exit_index: int | None,
                   budget: BudgetSpec | dict | None) -> Policy:
    """Policy ``name`` (None: the bundle's) with the bundle's settings where it is the bundle's
    policy, and the given overrides (None: not overridden)."""
    spec = manifest.policy
    name = name or spec.name
    same = name == spec.name
    if budget is None and same:
        budget = spec.budget
    if isinstance(budget, BudgetSpec):
        budget = budget.to_dict()
    return make_policy(
        name,
        manifest.num_exits,
        thresholds if thresholds is not None else (spec.thresholds if same else None),
        exit_index if exit_index is not None else (spec.exit_index if same else None),
        spec.weights if same else None,
        budget,
    )


class Engine:
    """Runs a bundle's segments in order with an exit policy (see the module docstring)."""

    def __init__(
        self,
        manifest: Manifest,
        sessions: list[Session],
        policy: Policy,
        backend: str,
        threads: int,
        monolithic: Session | None = None,
    ) -> None:
        self.manifest = manifest
        self.sessions = sessions
        self._decide = None  # (stop or step, begin, answers_softmax) of the policy: predict's reads
        self.policy = policy
        self.backend = backend
        self.threads = threads
        self.monolithic = monolithic
        self.classes = manifest.classes
        self.input_shape = manifest.input_shape
        self.timing = True  # predict measures every segment's wall time (segment_ns)
        self._links = None  # the segments' batch-1 buffers, bound on first predict
        self._first = None  # views of the first segment's input buffer: [C, L] and flat
        self._hot = None  # (links, *_first, input shape, energy limit): predict's reads
        self._rank = len(self.input_shape)
        self._one = (1, *self.input_shape)
        abs_max = manifest.input.abs_max
        self._limits = None  # per-channel largest magnitude accepted, or None (an older bundle)
        # a window whose energy x . x stays under this bound needs no further look: every value
        # within its channel's limit bounds it; NaN fails the comparison and takes the slow path
        # compared with float32 sums: below float32's largest value, so that Inf (or a sum that
        # overflowed) never passes; a Python float would be cast to float32 (inf) first
        self._energy_limit = _F32_MAX
        if abs_max is not None and len(abs_max) == self.input_shape[0]:
            self._limits = np.asarray(abs_max, np.float64) * RANGE_FACTOR
            length = int(np.prod(self.input_shape[1:]))
            self._energy_limit = min(float(length * np.square(self._limits).sum()), _F32_MAX)

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        threads: int | None = None,
        policy: str | Policy | None = None,
        thresholds=None,
        exit_index: int | None = None,
        check_hashes: bool = True,
        load_monolithic: bool = False,
        trusted_keys=None,
        budget: BudgetSpec | dict | None = None,
    ) -> Engine:
        """Load a bundle directory.

        Args:
            path: the bundle directory (written by ``edgeexit export``).
            backend: ``auto`` (the target's preferred format if installed), ``onnxruntime`` or ``litert``.
            threads: intra-op threads; None = the target preset's, capped at the available CPUs.
            policy: a policy name or object; None = the bundle's calibrated policy.
            thresholds / exit_index: override the bundle's thresholds / the fixed exit.
            budget: the ``budget`` policy's limit and segment costs (a :class:`BudgetSpec` or its
                ``{"limit", "unit", "segment_costs"}``; overrides the bundle's).
            check_hashes: refuse files whose sha256 differs from the manifest (default on).
            load_monolithic: also load the whole-model reference graph (for benchmarks).
            trusted_keys: load only a bundle signed by one of these public keys (``.pub`` files
                or directories of them); None: as the device config says
                (:mod:`edgeexit.runtime.signing`: unsigned bundles pass unless it requires
                signatures).

        ``path`` may also be a ``.tar.gz``: it is unpacked safely into a temporary directory
        that lives as long as the engine.
        """
        from edgeexit.runtime.signing import check_signature, resolve_trust

        root, tmp = _unpack(path)
        manifest = load_manifest(root, check_hashes=check_hashes)
        check_signature(root, resolve_trust(trusted_keys))
        be = _installed_backend(_pick_backend(manifest, backend))
        threads = default_threads(manifest) if threads is None else int(threads)
        if threads < 1:
            raise EdgeExitError(f"threads must be >= 1, got {threads}")
        files = [seg.artifact(be.file_format).file for seg in manifest.segments]
        sessions = [be.load(root / f, threads) for f in files]
        problems = shape_problems(manifest, sessions, files)
        if problems:  # refused before any window is answered
            raise ShapeError(problems, f"bundle {path}: ")
        mono = _load_monolithic(root, manifest, be, threads) if load_monolithic else None
        if not isinstance(policy, Policy):
            policy = _bundle_policy(manifest, policy, thresholds, exit_index, budget)
        log.info("loaded %s: %d segments, backend %s, %d thread(s), policy %s",
                 root, manifest.num_exits, be.name, threads, policy.describe())
        engine = cls(manifest, sessions, policy, be.name, threads, mono)
        engine._unpacked = tmp  # removed with the engine
        return engine

    @property
    def policy(self) -> Policy:
        """The exit policy (may be replaced between calls)."""
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._policy = policy
        # a policy whose answer is the exit's softmax decides with stop (the answer is made when
        # read); another with step, which returns its answer where it stops (one call)
        lazy = policy.answers_softmax
        self._decide = (policy.stop if lazy else policy.step, policy.begin, lazy)

    # -- input checks ---------------------------------------------------------------------------

    def check_input(self, x: np.ndarray, batch: bool) -> np.ndarray:
        """Return ``x`` as a C-contiguous float32 batch, or raise :class:`InputError`.

        A well-formed window costs a few attribute reads and one dot product (NaN or Inf make
        ``x . x`` non-finite; no array is allocated); only a window that fails that is scanned
        element by element, to tell NaN/Inf from values whose squares merely overflow.
        """
        if not isinstance(x, np.ndarray):
            raise InputError(f"input must be a numpy array, got {type(x).__name__}")
        if x.dtype is not _F32 and x.dtype != np.float32:
            raise InputError(
                f"input dtype is {x.dtype}, the bundle takes float32 (convert with x.astype(np.float32))"
            )
        shape = x.shape
        if batch:
            if len(shape) != self._rank + 1 or shape[1:] != self.input_shape:
                want = ", ".join(map(str, self.input_shape))
                raise InputError(f"batch input must be [N, {want}], got {list(shape)}")
            if shape[0] == 0:
                raise InputError("batch input is empty")
        elif shape != self.input_shape:
            raise InputError(
                f"input must be one window of shape {list(self.input_shape)} "
                f"({self.manifest.input.units}), got {list(shape)}"
            )
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        flat = x.reshape(-1)
        energy = float(flat.dot(flat))
        if not energy <= self._energy_limit * (shape[0] if batch else 1):
            self._explain(x if batch else x[None])
        return x if batch else x[None]

    def _explain(self, x: np.ndarray) -> None:
        """Raise :class:`InputError` for the first window of ``x [N, C, ...]`` that holds NaN/Inf or
        values beyond the trained range; return if every window is fine (squares that merely
        overflowed the energy sum)."""
        flat = x.reshape(len(x), -1)
        finite = np.isfinite(flat)
        if not finite.all():
            i = int(np.flatnonzero(~finite.all(axis=1))[0])
            bad = int((~finite[i]).sum())
            where = f"window {i}: " if len(x) > 1 else ""
            raise InputError(f"{where}input holds {bad} NaN/Inf value(s); clean or drop that window")
        if self._limits is None:
            return
        peaks = np.abs(x.reshape(len(x), x.shape[1], -1)).max(axis=-1)  # [N, C]
        over = peaks > self._limits
        if over.any():
            i, c = (int(v) for v in np.argwhere(over)[0])
            names = self.manifest.input.channels
            name = names[c] if c < len(names) else f"channel {c}"
            units = self.manifest.input.units
            where = f"window {i}: " if len(x) > 1 else ""
            raise InputError(
                f"{where}{name} reaches {peaks[i, c]:.4g} {units}, beyond {RANGE_FACTOR:g}x the "
                f"largest magnitude of the training data ({self._limits[c] / RANGE_FACTOR:.4g}): "
                "check the units and the lead, or scale the signal"
            )

    def input_problem(self, x: np.ndarray) -> str | None:
        """Why one window would be refused (the :class:`InputError` message), or None."""
        try:
            self.check_input(x, batch=False)
        except InputError as e:
            return str(e)
        return None

    # -- inference ------------------------------------------------------------------------------

    def predict(self, x: np.ndarray) -> ExitResult:
        """Classify one window ``x`` (shape = the bundle's input shape), stopping at the first
        confident exit.

        The window is written once into the first segment's input buffer; each segment's
        features go to the next one without passing through Python (onnxruntime: shared by IO
        binding; LiteRT: one copy between the interpreters' buffers); the decision after each
        segment is :meth:`Policy.stop` on the exit's logits as Python floats, and the answer
        distribution is made only when :attr:`ExitResult.probs` is read. ``segment_ns``
        holds each segment's wall time when :attr:`timing` is on (the default), else is empty.
        ``tools/decision_overhead.py`` measures every step of this against the native inference.
        """
        hot = self._hot  # what this path reads, bound once (one attribute read per call)
        if hot is None:
            if not self._link():
                return self._predict_sessions(x)
            hot = self._hot
        links, first, flat, shape, limit = hot
        # the input check inlined for a well-formed window, on the copy in the first segment's
        # input buffer (check_input explains any other window, or one that fails the range)
        if type(x) is np.ndarray and x.dtype is _F32 and x.shape == shape:
            first[...] = x  # the one copy of the window
            if not flat.dot(flat) <= limit:
                self.check_input(x, False)
        else:
            first[...] = self.check_input(x, batch=False)[0]
        stop, begin, lazy = self._decide  # stop: True / an answer where the sample stops
        if begin is not None:  # the budget policy's clock starts with the input
            begin(_clock())
        k = 0
        try:
            if self.timing:
                clock = _clock
                times: list[int] = []
                for k, (inp, logits, run, src) in enumerate(links):
                    t0 = clock()
                    if src is not None:
                        inp[...] = src
                    run()
                    times.append(clock() - t0)
                    z = logits.tolist()
                    probs = stop(k, z)
                    if probs:
                        break
            else:
                times = ()
                for k, (inp, logits, run, src) in enumerate(links):
                    if src is not None:
                        inp[...] = src
                    run()
                    z = logits.tolist()
                    probs = stop(k, z)
                    if probs:
                        break
        except Exception as exc:  # the backend's own errors (RuntimeError, onnxruntime's Fail)
            raise BackendError(f"{self.backend} failed to run segment {k}: {exc}") from exc
        if lazy:  # the answer is the softmax of z: its largest value is the largest logit's
            label = z.index(max(z))
            return ExitResult(label, self.classes[label], None, k, tuple(times), z)
        label = probs.index(max(probs))
        return ExitResult(label, self.classes[label], probs, k, tuple(times))

    def _link(self) -> list | None:
        """Bind the segments' batch-1 buffers into a chain (``Session.link``): per segment
        ``(input, logits, run, source)``, ``logits`` a view of the exit's logits, ``source`` the previous segment's features where they
        must be copied into ``input`` (None: shared, or the first segment). None where a backend
        session offers no such buffers."""
        links, prev = [], None
        for sess in self.sessions:
            link = getattr(sess, "link", None)
            got = None if link is None else link(prev)
            if got is None:
                return None
            inp, outs, run = got
            # the exit's logits as a [K] view: .tolist() gives the policy its floats
            links.append((inp, outs[-1][0], run, None if prev is None or inp is prev else prev))
            prev = outs[0]
        first = links[0][0]
        self._first = (first[0], first.reshape(-1))
        self._links = links
        self._hot = (links, *self._first, self.input_shape, self._energy_limit)
        return links

    def _unlink(self) -> None:
        """Drop the batch-1 chain before a batch run (LiteRT resizes its buffers for it)."""
        self._links = self._first = self._hot = None

    def _predict_sessions(self, x: np.ndarray) -> ExitResult:
        """:meth:`predict` through ``Session.run`` (sessions without a batch-1 chain)."""
        h = self.check_input(x, batch=False)
        stop, begin, lazy = self._decide
        times: list[int] = []
        if begin is not None:
            begin(_clock())
        for k, sess in enumerate(self.sessions):
            t0 = _clock()
            out = sess.run(h, copy=False)  # views: used before this session runs again
            times.append(_clock() - t0)
            z = out[-1].tolist()[0]
            probs = stop(k, z)
            if probs:
                break
            h = out[0]
        times = tuple(times) if self.timing else ()
        if lazy:
            label = z.index(max(z))
            return ExitResult(label, self.classes[label], None, k, times, z)
        label = probs.index(max(probs))
        return ExitResult(label, self.classes[label], probs, k, times)

    def predict_batch(self, x: np.ndarray) -> BatchResult:
        """Classify ``x [N, ...]``; segment k runs only on the samples no earlier exit decided."""
        h = self.check_input(x, batch=True)
        self._unlink()
        n = h.shape[0]
        labels = np.zeros(n, np.int64)
        exits = np.zeros(n, np.int64)
        probs_out = np.zeros((n, len(self.classes)), np.float32)
        alive = np.arange(n)
        carry = None  # the policy's per-sample state (ensemble: running softmax sum)
        times, counts = [], []
        for k, sess in enumerate(self.sessions):
            t0 = time.perf_counter_ns()
            out = sess.run(h)
            times.append(time.perf_counter_ns() - t0)
            counts.append(len(alive))
            done, probs, carry = self.policy.decide(k, out[-1], carry)
            idx = alive[done]
            probs_out[idx] = probs[done]
            labels[idx] = probs[done].argmax(axis=-1)
            exits[idx] = k
            if done.all():
                break
            keep = ~done
            alive = alive[keep]
            h = np.ascontiguousarray(out[0][keep])
            if carry is not None:
                carry = carry[keep]
        return BatchResult(labels, probs_out, exits, tuple(times), tuple(counts))

    def run_all(self, x: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
        """Logits of every exit for the batch ``x [N, ...]`` (no early exit) and per-segment ns."""
        h = self.check_input(x, batch=True)
        self._unlink()
        views, times = [], []
        clock = time.perf_counter_ns
        t0 = clock()
        for sess in self.sessions:
            out = sess.run(h, copy=False)  # features go straight into the next segment
            t1 = clock()  # one clock per segment: its time includes its turn of this loop
            times.append(t1 - t0)
            t0 = t1
            views.append(out[-1])
            h = out[0]
        # every session ran once, so every view is still valid: copy them out for the caller
        return [z.copy() for z in views], times

    def run_monolithic(self, x: np.ndarray) -> np.ndarray:
        """Final logits from the whole-model reference graph (load with ``load_monolithic=True``)."""
        if self.monolithic is None:
            raise EdgeExitError("the monolithic reference graph is not loaded (load_monolithic=True)")
        return self.monolithic.run(self.check_input(x, batch=True))[0]


class ShapeError(BundleError):
    """A bundle's segment files do not take and return the shapes its manifest lists, or do not
    chain (segment k's features are not what segment k+1 takes). ``problems``: every one found,
    one line each; the message is the first (and how many more)."""

    def __init__(self, problems, prefix: str = "") -> None:
        self.problems = tuple(problems)
        more = len(self.problems) - 1
        super().__init__(prefix + self.problems[0] + (f" (and {more} more shape problem(s); "
                                                      "`edgeexit verify` lists them)" if more else ""))


def _dims(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _same(got, want) -> bool:
    """True unless the known dimensions of ``got`` (None: unknown) contradict ``want``."""
    if got is None or want is None:
        return True
    return len(got) == len(want) and all(g is None or w is None or g == w for g, w in zip(got, want))


def shape_problems(manifest: Manifest, sessions, files) -> list[str]:
    """Every way the loaded segment files ``sessions`` (named ``files``, in chain order) disagree
    with each other or with the manifest's shapes, one line each; [] when they chain.

    Checked against the files themselves (the shapes the backend reports for each file's input
    and outputs, per sample): segment 0 takes the bundle's input, segment k+1 takes the features
    segment k returns, and every file takes and returns what the manifest lists. A dimension a
    session does not report (symbolic) is not checked."""
    fix = "re-export the bundle (edgeexit export)"
    out: list[str] = []
    src, feeds = "the bundle's input is", manifest.input_shape  # what the next file is given
    for k, (seg, sess, f) in enumerate(zip(manifest.segments, sessions, files)):
        last = k == len(manifest.segments) - 1
        takes = getattr(sess, "input_shape", None)
        names = tuple(getattr(sess, "output_names", seg.output_names))
        returns = tuple(getattr(sess, "output_shapes", None) or (None,) * len(names))
        listed = f" (the manifest lists {_dims(seg.input_shape)})"
        if not _same(takes, feeds):
            out.append(f"segments do not chain: {f} takes {_dims(takes)} but {src} "
                       f"{_dims(feeds)}{listed if tuple(seg.input_shape) != tuple(feeds) else ''}; "
                       f"{fix}")
        elif not _same(takes, seg.input_shape):
            out.append(f"{f} takes {_dims(takes)} but the manifest lists {_dims(seg.input_shape)} "
                       f"for segment {k}; {fix}")
        if len(names) != (1 if last else 2) or len(names) != len(seg.output_names):
            out.append(f"{f} has {len(names)} output(s) {list(names)} but the manifest lists "
                       f"{list(seg.output_names)}; {fix}")
            src, feeds = f"{f} returns", None  # unknown: the next file's input is not chained
            continue
        for name, got, want in zip(names, returns, seg.output_shapes):
            if not _same(got, want):
                out.append(f"{f} returns {name} {_dims(got)} but the manifest lists "
                           f"{_dims(want)}; {fix}")
        src, feeds = f"{f} returns features", returns[0]
    return out

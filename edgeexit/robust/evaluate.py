"""``edgeexit evaluate``: robustness measured on what is deployed.

For a checkpoint, the white-box attacks on the PyTorch model. For a bundle, the same adversarial
inputs crafted on its source model (the manifest records the checkpoint's sha256; a different
checkpoint is refused), then run through the torch-free runtime, plus the score-based black-box
attack and realistic noise, also through the runtime: the figures are those of the deployed files
and the deployed exit policy.

Per exit and per exit policy: clean and attacked accuracy, macro-F1 (over N/S/V/F when the classes
are AAMI's) and per-class sensitivity, at every eps; for a bundle also the exit distribution, the
mean MACs and the measured batch-1 latency, clean vs attacked, so that a slowdown shows.

The RR channels come from R-peak timing and are never attacked. The morphology channels (when
the model takes them) are computed on the device from the beat's own waveform, so here they are
recomputed from every attacked or noisy waveform against the template of the record's previous
clean beats, and the white-box attacks differentiate through that recomputation
(:mod:`edgeexit.robust.context`; ``morph_follows=False`` holds them at their clean values).

Sanity flags, as AutoAttack reports them (signs of gradient masking): a black-box attack that
beats the white-box one on the same output, accuracy that does not fall toward 0 at a large eps
(or, with RR-context channels the attacker may not touch, does not fall below what the model
answers with the signal flattened: the ``context_only`` entry), zero input gradients. Measured on
MIT-BIH, adversarially trained models keep 84-89% accuracy with their waveform flattened or
replaced by another class's beat: they lean on the unattacked RR context.

Steps (each a function below): load the target -> load the data -> craft and measure every attack
-> sanity flags -> write ``report.json``, ``report.md`` and the plots.

Example:
    >>> result = evaluate("runs/q/bundle", config=EvalConfig(limit=300), out_dir="runs/q/eval")
    >>> result.report["attacks"][0]["policy"]["macro_f1"]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgeexit.checkpoint import Checkpoint, load_checkpoint
from edgeexit.config import ConfigDict
from edgeexit.data import BeatDataset, load_split, stratified_index
from edgeexit.errors import ConfigError, DataError
from edgeexit.fileio import atomic_write, check_output_directory
from edgeexit.metrics import classification_report, headline_macro_f1
from edgeexit.plots import fraction_axes, pyplot, save_png
from edgeexit.robust.attacks import PGD, MaxAvgPGD, PolicyCE
from edgeexit.robust.context import MorphContext, record_templates
from edgeexit.robust.names import EVAL_ATTACKS, EvalAttack
from edgeexit.runtime.manifest import PolicySpec, Provenance
from edgeexit.summary import machine_info
from edgeexit.torchdevice import resolve_device

log = logging.getLogger(__name__)

ATTACKS = tuple(a.value for a in EvalAttack)  # where each runs, what it needs: names.EVAL_ATTACKS
NOISE_KINDS = ("bw", "ma", "em")
Progress = Callable[[str, int, int], None] | None


@dataclasses.dataclass(frozen=True)
class EvalConfig(ConfigDict):
    """What ``edgeexit evaluate`` runs.

    Attributes:
        eps: attack budgets in the input's units (mV), Linf per time step or L2 over the window.
        sanity_eps: one large budget for the gradient-masking check (PGD on the final exit):
            its accuracy should fall toward 0 there; None = skip the check. 2 mV by default: an
            adversarially trained MIT-BIH model keeps about 15% at 1 mV (20- and 50-step PGD
            alike) and 0.2% at 2 mV, a QRS complex's own amplitude.
        norm: ``linf`` or ``l2``.
        attacks: which of :data:`ATTACKS` to run (``square`` and the cost figures need a bundle;
            ``onmanifold`` needs ``vae``: asked for explicitly without one it is an error, in the
            default list it is skipped with a note).
        steps: PGD steps (step size ``2.5 * eps / steps``), also the latent attack's.
        vae: a VAE file (:func:`edgeexit.models.vae.save_vae`) of the model's data, for
            the on-manifold attack.
        eta: the on-manifold attack's latent Linf budget (latent units, not mV: the VAE's prior
            is N(0, 1) per dimension). Its windows are scored only where the VAE's latent
            classifier still gives the true label (the kept fraction is reported).
        noise: noise kinds (``bw`` baseline wander, ``ma`` muscle, ``em`` electrode motion).
        snr_db: noise levels (SNR as PhysioNet's ``nst`` defines it).
        noise_dir: a directory of WFDB noise records ``bw``, ``ma``, ``em`` (MIT-BIH Noise Stress
            Test format); None = synthetic noise.
        limit: test windows attacked (a class-stratified, seeded sample); None = all.
        universal_limit: training windows the universal perturbations are fitted on.
        universal_epochs: passes over them.
        square_queries: queries per window of the black-box attack.
        latency_samples: windows timed one at a time through the runtime, per input set.
        backend: runtime backend for a bundle (``auto``, ``onnxruntime``, ``litert``).
        threads: torch and runtime threads.
        device: where the white-box attacks craft (``auto``, ``cpu``, ``cuda``, ``cuda:N``;
            :func:`edgeexit.torchdevice.resolve_device`); the bundle's runtime scores on the
            CPU either way.
        seed: seeds the sample, the attacks' random starts and the noise.
        morph_follows: with morphology context channels in the data, recompute them from every
            attacked or noisy waveform, as the device would (``edgeexit.robust.context``), and
            let the white-box gradients flow through them; False = hold them at their clean
            values, like the RR channels (a threat model that gives them away: only to compare).
    """

    KEYS = "evaluate config keys"

    eps: tuple[float, ...] = (0.05, 0.1, 0.2)
    sanity_eps: float | None = 2.0
    norm: str = "linf"
    attacks: tuple[str, ...] = ATTACKS
    steps: int = 20
    vae: str | None = None
    eta: float = 0.5
    noise: tuple[str, ...] = ("ma",)
    snr_db: tuple[float, ...] = (6.0, 0.0)
    noise_dir: str | None = None
    limit: int | None = 1000
    universal_limit: int = 2000
    universal_epochs: int = 5
    square_queries: int = 300
    latency_samples: int = 200
    backend: str = "auto"
    threads: int = 1
    seed: int = 0
    morph_follows: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        check_budgets_and_noise(self)
        unknown = sorted(set(self.attacks) - set(ATTACKS))
        if unknown:
            raise ConfigError(f"unknown attack(s) {', '.join(unknown)}; known: {', '.join(ATTACKS)}")
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"norm must be linf or l2, got {self.norm!r}")
        if EvalAttack.ONMANIFOLD in self.attacks and not self.vae and self.attacks != ATTACKS:
            raise ConfigError(
                "the onmanifold attack needs the VAE of the model's data: give --vae FILE (the "
                "OUT/vae.pt of `edgeexit compress`, or a file saved by "
                "edgeexit.compress.manifold.save_vae), or leave onmanifold out of --attacks"
            )
        if not (isinstance(self.eta, (int, float)) and math.isfinite(self.eta) and self.eta > 0):
            raise ConfigError(f"eta (the latent budget) must be a number > 0, got {self.eta!r}")
        if self.steps < 1 or self.threads < 1 or (self.limit is not None and self.limit < 10):
            raise ConfigError("steps and threads must be >= 1 and limit >= 10 windows")


def check_budgets_and_noise(config) -> None:
    """An evaluate config's ``eps``, ``attacks``, ``noise`` and ``snr_db`` made tuples (of
    floats for the numbers) and checked: positive finite budgets, known noise kinds."""
    object.__setattr__(config, "eps", tuple(float(e) for e in config.eps))
    object.__setattr__(config, "attacks", tuple(config.attacks))
    object.__setattr__(config, "noise", tuple(config.noise))
    object.__setattr__(config, "snr_db", tuple(float(s) for s in config.snr_db))
    if not config.eps or any(not (e > 0 and math.isfinite(e)) for e in config.eps):
        raise ConfigError(f"eps must be positive budgets in mV, got {list(config.eps)}")
    bad = sorted(set(config.noise) - set(NOISE_KINDS))
    if bad:
        raise ConfigError(f"unknown noise kind(s) {', '.join(bad)}; known: bw, ma, em")


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """The report (also ``report.json``) and the files written."""

    report: dict
    files: tuple[Path, ...]


# -- the target ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Target:
    kind: str  # "checkpoint" or "bundle"
    path: Path
    ckpt: Checkpoint
    ckpt_path: Path
    engine: object | None = None  # edgeexit.runtime.Engine for a bundle
    exits: tuple[int, ...] = ()  # model exit answered by each deployed segment
    policy: PolicySpec | None = None  # the deployed policy (manifest.policy)
    macs: tuple[int, ...] = ()  # cumulative MACs up to each deployed segment

    def policy_objective(self) -> PolicyCE:
        """The answer the deployed policy gives (checkpoint: the ensemble of every exit)."""
        if self.policy is None:
            return PolicyCE("ensemble")
        p = self.policy
        return PolicyCE(p.name, p.thresholds, p.weights, p.exit_index, exits=self.exits)

    @property
    def signal_channels(self) -> int:
        """The leading input channels that are signal (attacked, noised); the rest are context."""
        return int(self.ckpt.input_spec.get("signal_channels", 1))

    def policy_name(self) -> str:
        return "ensemble (all exits)" if self.policy is None else f"deployed {self.policy.name}"


def _load_target(target: str | os.PathLike, checkpoint: str | os.PathLike | None,
                 config: EvalConfig) -> _Target:
    from edgeexit.runtime import manifest as mf

    path = Path(target)
    if path.is_dir() and (path / mf.MANIFEST).is_file():
        from edgeexit.runtime.engine import Engine

        engine = Engine.from_bundle(path, backend=config.backend, threads=config.threads)
        manifest = engine.manifest
        prov = manifest.provenance
        ckpt_path = Path(checkpoint) if checkpoint is not None else _recorded_checkpoint(path, prov)
        want = prov.checkpoint_sha256
        if want is None:
            raise ConfigError(f"{path}'s manifest records no checkpoint sha256: re-export the bundle")
        got = mf.sha256_file(ckpt_path)
        if got != want:
            raise ConfigError(
                f"{ckpt_path} is not the checkpoint {path} was exported from (sha256 {got[:12]}..., "
                f"the manifest records {want[:12]}...): give the source model with --checkpoint"
            )
        ckpt = load_checkpoint(ckpt_path)
        macs = tuple(int(v) for v in np.cumsum([seg.macs for seg in manifest.segments]))
        return _Target("bundle", path, ckpt, ckpt_path, engine, tuple(manifest.exits),
                       manifest.policy, macs)
    if path.is_file() and path.name.endswith(".tar.gz"):
        raise ConfigError(f"{path} is an archive: unpack it and give the bundle directory")
    if path.is_dir():
        raise ConfigError(f"{path} holds no {mf.MANIFEST}: give a bundle directory or a checkpoint")
    ckpt = load_checkpoint(path)
    return _Target("checkpoint", path, ckpt, path, None, tuple(range(ckpt.model.num_exits)))


def _recorded_checkpoint(bundle: Path, prov: Provenance) -> Path:
    rec = prov.checkpoint
    if not rec:
        raise ConfigError(f"{bundle}'s manifest names no source checkpoint: give it with --checkpoint")
    p = Path(rec)
    for cand in (p, bundle / p, bundle.parent / p.name, bundle / p.name):
        if cand.is_file():
            return cand
    raise ConfigError(
        f"the source checkpoint {rec} of {bundle} is not here: give it with --checkpoint "
        "(white-box attacks are crafted on the model the bundle was exported from)"
    )


# -- the data ------------------------------------------------------------------------------------




def _check_shape(data: BeatDataset, ckpt: Checkpoint, what: str) -> None:
    if tuple(data.input_shape) != tuple(ckpt.input_spec["shape"]):
        raise DataError(
            f"{what} windows are {list(data.input_shape)} but the model takes "
            f"{ckpt.input_spec['shape']}; give the data the model was trained on"
        )


# -- measuring one set of inputs -----------------------------------------------------------------


def _slim(report: dict) -> dict:
    return {
        "accuracy": report["accuracy"],
        "macro_f1": headline_macro_f1(report),
        "sensitivity": {c: v["sensitivity"] for c, v in report["per_class"].items()
                        if v["support"] > 0},
    }


class _Measure:
    """Per-exit and policy figures of a set of inputs, on the model or through the runtime."""

    def __init__(self, target: _Target, y: np.ndarray, config: EvalConfig) -> None:
        self.t = target
        self.y = y
        self.classes = target.ckpt.classes
        self.config = config
        self.objective = target.policy_objective()
        self.clean_rows: list[np.ndarray] | None = None  # set by the first (clean) call

    def __call__(self, x: np.ndarray) -> dict:
        x = np.ascontiguousarray(x, dtype=np.float32)
        t = self.t
        extra = {}
        if t.engine is None:
            with torch.no_grad():
                zs = [z.cpu() for z in t.ckpt.model(torch.from_numpy(x).to(_device(t.ckpt.model)))]
                labels = self.objective.answers(zs)[0].argmax(1).numpy()
            logits = [z.numpy() for z in zs]
        else:
            logits, _ = t.engine.run_all(x)  # the deployed files, every segment
            res = t.engine.predict_batch(x)  # the deployed policy, with early exit
            labels = res.labels
            hist = np.bincount(res.exit_index, minlength=len(t.exits)) / len(x)
            extra = {"exit_histogram": [float(h) for h in hist],
                     "mean_macs": float(np.dot(hist, t.macs)), **self._latency(x)}
        return {"exits": [self._report(z.argmax(1)) for z in logits],
                "policy": self._report(labels), **extra}

    def _report(self, predicted: np.ndarray) -> dict:
        return _slim(classification_report(self.y, predicted, self.classes))

    def _latency(self, x: np.ndarray) -> dict:
        """Mean batch-1 ``Engine.predict`` time (us) of the first windows of ``x`` and of the same
        clean windows, timed alternately in one loop (median of 5 passes), so that a ratio of the
        two is not a ratio of two moments of a noisy machine."""
        n = min(self.config.latency_samples, len(x))
        if n == 0:
            return {"latency_us": float("nan"), "latency_clean_us": float("nan"),
                    "latency_ratio": float("nan")}
        predict = self.t.engine.predict
        clock = time.perf_counter_ns
        if self.clean_rows is None:
            self.clean_rows = [np.ascontiguousarray(x[i]) for i in range(n)]
        rows = [np.ascontiguousarray(x[i]) for i in range(n)]
        pairs = list(zip(self.clean_rows, rows))
        passes = []
        for _ in range(5):
            t_clean = t_adv = 0
            for c, a in pairs:
                t0 = clock()
                predict(c)
                t1 = clock()
                predict(a)
                t2 = clock()
                t_clean += t1 - t0
                t_adv += t2 - t1
            passes.append((t_adv / n / 1e3, t_clean / n / 1e3))
        adv, clean = (float(np.median([p[i] for p in passes])) for i in (0, 1))
        ratio = float(np.median([a / c for a, c in passes]))  # per pass: a slow moment hits both
        return {"latency_us": adv, "latency_clean_us": clean, "latency_ratio": ratio}


# -- the attacks ---------------------------------------------------------------------------------


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _in_batches(fn, x: torch.Tensor, y: torch.Tensor, batch: int = 256,
                device: torch.device | None = None) -> np.ndarray:
    """``fn`` (an attack) over ``(x, y)`` in batches, computed on ``device``; numpy back."""
    dev = device or torch.device("cpu")
    return torch.cat([fn(x[i : i + batch].to(dev), y[i : i + batch].to(dev)).cpu()
                      for i in range(0, len(x), batch)]).numpy()


class _Inputs:
    """The windows the attacks work on, and what is scored. Without a :class:`MorphContext`,
    the windows as they are; with one, each window carries its morphology template as a
    trailing channel, the model the attacks differentiate recomputes the morphology channels
    from the attacked signal, and :meth:`scored` does so with the device's code."""

    def __init__(self, full: BeatDataset, limit: int | None, seed: int,
                 morph_follows: bool = True, r_offset: int | None = None) -> None:
        """A class-stratified sample of ``full`` (``limit`` windows, ``seed``); the templates
        are rebuilt from the whole split, each window's from its record's previous beats."""
        index = stratified_index(full, limit, seed)
        self.data = full if index is None else full.subset(index)
        self.ctx = MorphContext.of(self.data, r_offset) if morph_follows else None
        if self.ctx is None:
            self.x = self.data.x
        else:
            templates = record_templates(full, self.ctx.r_offset)
            self.x = self.ctx.attach(self.data, templates if index is None else templates[index])
        self.y = self.data.y

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model if self.ctx is None else self.ctx.wrap(model)

    def scored(self, x: np.ndarray) -> np.ndarray:
        return x if self.ctx is None else self.ctx.finish(x)

    def craft(self, make, base: torch.nn.Module) -> tuple[np.ndarray, dict]:
        """Adversarial inputs from the gradient attack ``make(model)``, and its stats; with a
        morphology context, its gradients flow through the recomputed channels. (Measured on a
        MIT-BIH model at 0.2 mV, that attack left 12.5% final-exit accuracy, the one with the
        channels held 24.1%, straight-through gradients 13.5%, and keeping per window the
        candidate of larger loss 58%: the surrogate loss does not rank candidates.)"""
        attack = make(self.model(base))
        return (_in_batches(attack, torch.from_numpy(self.x), torch.from_numpy(self.y),
                            device=_device(base)), attack.stats)

    def with_templates(self, x: np.ndarray) -> np.ndarray:
        """Windows of the data's own channels (e.g. with noise added), the templates attached
        again, for :meth:`scored`."""
        return x if self.ctx is None else np.concatenate([x, self.x[:, -1:]], axis=1)


def _run_attacks(target: _Target, test: _Inputs, train: _Inputs | None,
                 config: EvalConfig, measure: _Measure, tick, vae=None) -> list[dict]:
    """Every attack of ``config`` in the report's order: the sanity PGD, the window attacks at
    each budget, the slowdown attacks at the largest, then the on-manifold attack."""
    run = _AttackRun(target, test, train, config, measure, tick)
    if config.sanity_eps is not None:  # the final exit's own PGD at a budget nothing survives
        run.craft("pgd_final_sanity", config.sanity_eps, lambda m: PGD(
            m, config.sanity_eps, steps=config.steps, seed=config.seed, **run.common))
    for eps in config.eps:
        run.window_attacks(eps)
    run.slowdown_attacks(max(config.eps))
    if EvalAttack.ONMANIFOLD in config.attacks and vae is not None:
        entry = _onmanifold(target, test.data, config, vae)
        if entry is not None:
            run.entries.append(entry)
        tick(f"onmanifold eta {config.eta:g}")
    return run.entries


class _AttackRun:
    """The attacks of one :func:`evaluate`, each measured like the clean windows and recorded
    (with its seconds and statistics) in order."""

    def __init__(self, target: _Target, test: _Inputs, train: _Inputs | None,
                 config: EvalConfig, measure: _Measure, tick) -> None:
        self.target, self.test, self.train, self.config = target, test, train, config
        self.measure, self.tick = measure, tick
        self.base = target.ckpt.model
        self.common = {"norm": config.norm, "signal_channels": target.signal_channels}
        self.entries: list[dict] = []

    def record(self, name: str, eps: float, x_adv, seconds: float, stats: dict | None = None) -> None:
        entry = {"attack": name, "eps": eps, **self.measure(self.test.scored(x_adv)),
                 "seconds": round(seconds, 2)}
        if stats:
            entry["stats"] = stats
        self.entries.append(entry)
        self.tick(f"{name} eps {eps:g}")

    def craft(self, name: str, eps: float, make, record_stats: bool = True) -> None:
        """A white-box attack ``make(model)`` crafted on the test windows, recorded."""
        t0 = time.perf_counter()
        adv, stats = self.test.craft(make, self.base)
        self.record(name, eps, adv, time.perf_counter() - t0, stats if record_stats else None)

    def window_attacks(self, eps: float) -> None:
        """Max-average PGD, policy-aware PGD, the universal perturbation and Square at ``eps``."""
        config, target, common, test = self.config, self.target, self.common, self.test
        if EvalAttack.MAX_AVG in config.attacks:
            self.craft(EvalAttack.MAX_AVG, eps, lambda m: MaxAvgPGD(
                m, eps, steps=config.steps, seed=config.seed, **common))
        if EvalAttack.POLICY in config.attacks:
            self.craft(EvalAttack.POLICY, eps, lambda m: PGD(
                m, eps, steps=config.steps, seed=config.seed,
                objective=target.policy_objective(), **common))
        if EvalAttack.UNIVERSAL in config.attacks and self.train is not None:
            from edgeexit.robust.attacks.universal import UniversalPerturbation

            t0 = time.perf_counter()
            uap = UniversalPerturbation(self.train.model(self.base), eps,
                                        objective=target.policy_objective(),
                                        epochs=config.universal_epochs, seed=config.seed, **common)
            self._fit_and_record(EvalAttack.UNIVERSAL, eps, uap, t0)
        if EvalAttack.SQUARE in config.attacks and target.engine is not None:
            from edgeexit.robust.attacks.square import SquareAttack, engine_predict

            t0 = time.perf_counter()
            predict = engine_predict(target.engine)
            sq = SquareAttack(lambda xa: predict(test.scored(xa)), eps,
                              signal_channels=target.signal_channels,
                              n_queries=config.square_queries, seed=config.seed)
            self.record(EvalAttack.SQUARE, eps, sq(test.x, test.y), time.perf_counter() - t0,
                        sq.stats)

    def slowdown_attacks(self, eps: float) -> None:
        """DeepSloth per window and universal, at ``eps`` (the largest budget)."""
        config, common = self.config, self.common
        if EvalAttack.SLOWDOWN in config.attacks:
            from edgeexit.robust.attacks.universal import DeepSloth

            self.craft(EvalAttack.SLOWDOWN, eps, lambda m: DeepSloth(
                m, eps, steps=config.steps, seed=config.seed, **common), record_stats=False)
        if EvalAttack.UNIVERSAL_SLOWDOWN in config.attacks and self.train is not None:
            from edgeexit.robust.attacks.universal import UniversalDeepSloth

            t0 = time.perf_counter()
            uap = UniversalDeepSloth(self.train.model(self.base), eps,
                                     epochs=config.universal_epochs, seed=config.seed, **common)
            self._fit_and_record(EvalAttack.UNIVERSAL_SLOWDOWN, eps, uap, t0)

    def _fit_and_record(self, name: str, eps: float, uap, t0: float) -> None:
        dev = _device(self.base)
        uap.fit(torch.from_numpy(self.train.x).to(dev), torch.from_numpy(self.train.y).to(dev))
        x_adv = _in_batches(uap, torch.from_numpy(self.test.x), torch.from_numpy(self.test.y),
                            device=dev)
        self.record(name, eps, x_adv, time.perf_counter() - t0)


def _onmanifold(target: _Target, test: BeatDataset, config: EvalConfig, vae) -> dict | None:
    """The on-manifold latent attack (average-exit objective) crafted on the source model, scored
    on the windows whose latent label it preserved (the others are no same-class beat any more):
    per exit and policy as the other attacks, plus the clean figures of those same windows and
    the kept fraction. None (with a warning) when no window is kept."""
    from edgeexit.robust.attacks.latent import LatentPGD

    t0 = time.perf_counter()
    attack = LatentPGD(target.ckpt.model, vae, config.eta, steps=config.steps, seed=config.seed,
                       objective="mean", signal_channels=target.signal_channels)
    x = torch.from_numpy(test.x)
    y = torch.from_numpy(test.y)
    dev = _device(target.ckpt.model)
    advs, keep, stats = [], [], []
    for i in range(0, len(x), 256):
        x_adv, kept = attack.craft(x[i : i + 256].to(dev), y[i : i + 256].to(dev))
        advs.append(x_adv.cpu())
        keep.append(kept.cpu())
        stats.append((len(x_adv), attack.stats))
    kept = torch.cat(keep).numpy()
    x_adv = torch.cat(advs).numpy()
    n = len(test.x)
    merged = {k: float(sum(m * st[k] for m, st in stats) / max(n, 1))
              for k in ("mean_loss", "clean_loss", "delta_linf_mV")}
    merged["zero_grad_fraction"] = max(st["zero_grad_fraction"] for _, st in stats)
    merged["kept"] = int(kept.sum())
    merged["kept_fraction"] = float(kept.mean()) if n else 0.0
    if not kept.any():
        log.warning("onmanifold: the VAE's latent classifier keeps none of the %d attacked windows "
                    "(eta %g): no figures; lower --eta or retrain the VAE", n, config.eta)
        return None
    # the kept windows, measured like every input set; latency against the same clean windows
    sub = _Measure(target, test.y[kept], config)
    clean_kept = np.ascontiguousarray(test.x[kept])
    sub.clean_rows = [np.ascontiguousarray(r) for r in clean_kept[: config.latency_samples]]
    entry = {"attack": EvalAttack.ONMANIFOLD, "eps": config.eta, "eta": config.eta,
             "scored": "kept windows only", "kept": merged["kept"],
             "kept_fraction": merged["kept_fraction"], **sub(x_adv[kept])}
    quiet = _Measure(target, test.y[kept], dataclasses.replace(config, latency_samples=0))
    clean = quiet(clean_kept)
    entry["clean_on_kept"] = {"exits": clean["exits"], "policy": clean["policy"]}
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    entry["stats"] = {**merged, "attack": attack.describe()}
    log.info("onmanifold eta %g: kept %d/%d windows (%.1f%%), mean max signal change %.3f mV",
             config.eta, merged["kept"], n, 100 * merged["kept_fraction"], merged["delta_linf_mV"])
    return entry


def _run_noise(target: _Target, inputs: _Inputs, config: EvalConfig, measure: _Measure,
               tick) -> list[dict]:
    from edgeexit.robust.noise import NoiseRecords, add_noise

    records = NoiseRecords(config.noise_dir) if config.noise_dir else None
    s = target.signal_channels
    out = []
    for kind in config.noise:
        for snr in config.snr_db:
            noisy = add_noise(inputs.data.x, kind, snr, fs=inputs.data.fs, signal_channels=s,
                              seed=config.seed, records=records)
            noisy = inputs.scored(inputs.with_templates(noisy))  # morphology follows the noise
            out.append({"noise": kind, "snr_db": snr,
                        "source": "records" if records else "synthetic", **measure(noisy)})
            tick(f"noise {kind} {snr:g} dB")
    return out


# -- sanity flags --------------------------------------------------------------------------------


def _sanity(clean: dict, attacks: list[dict], context_only: dict | None = None) -> list[dict]:
    flags = []
    by = {(a["attack"], a["eps"]): a for a in attacks}
    for (name, eps), a in by.items():
        if name != EvalAttack.SQUARE or (EvalAttack.POLICY, eps) not in by:
            continue
        white = by[(EvalAttack.POLICY, eps)]["policy"]["accuracy"]
        black = a["policy"]["accuracy"]
        flags.append({
            "check": f"black-box does not beat white-box at eps {eps:g}",
            "ok": black >= white - 0.01,
            "detail": f"policy accuracy: Square {black:.3f}, policy-aware PGD {white:.3f}",
        })
    big = [a for a in attacks if a["attack"] == "pgd_final_sanity"]
    for a in big:
        acc = a["exits"][-1]["accuracy"]
        # the RR context is never attacked: a model may keep what the context alone gives it,
        # but an attack that controls the whole waveform must do at least as well as erasing it
        floor = None if context_only is None else context_only["exits"][-1]["accuracy"]
        detail = (f"final exit accuracy {acc:.3f} under PGD on the final exit (clean "
                  f"{clean['exits'][-1]['accuracy']:.3f}")
        detail += ")" if floor is None else f"; {floor:.3f} with the signal flattened)"
        flags.append({
            "check": f"accuracy falls toward 0 at a large eps ({a['eps']:g}), or below what "
                     "the unattacked context channels alone give",
            "ok": acc <= 0.1 or (floor is not None and acc < floor),
            "detail": detail,
        })
    zero = [a["stats"]["zero_grad_fraction"] for a in attacks
            if "zero_grad_fraction" in a.get("stats", {})]
    if zero:
        flags.append({
            "check": "input gradients are non-zero",
            "ok": max(zero) <= 0.01,
            "detail": f"largest share of windows with an all-zero input gradient: {max(zero):.3f}",
        })
    return flags


# what evaluate (windows or --records) writes into --out; anything else there is a user's
EVALUATE_FILES = frozenset({"report.json", "report.md", "robustness.png", "exits.png"})


# -- the entry point -----------------------------------------------------------------------------


def evaluate(
    target: str | os.PathLike,
    *,
    data: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    config: EvalConfig = EvalConfig(),
    out_dir: str | os.PathLike | None = None,
    progress: Progress = None,
) -> EvalResult:
    """Attack ``target`` (a checkpoint or a bundle directory) and write the report (``out_dir``
    is checked first: see :func:`edgeexit.fileio.check_output_directory`).

    Args:
        target: a checkpoint (``model.pt``) or a bundle directory.
        data: the test data (``synthetic``, a WFDB directory, a file); None = the test side of the
            data the checkpoint records. The universal perturbations are fitted on its training
            side, never on the test windows.
        checkpoint: a bundle's source checkpoint; None = the one its manifest names (its sha256
            must match the manifest's).
        config: the :class:`EvalConfig`.
        out_dir: where to write ``report.json``, ``report.md`` and the PNG plots; None = nowhere.
        progress: ``progress(what, done, total)`` after every attack and noise level.

    Returns:
        An :class:`EvalResult`.
    """
    if out_dir is not None:
        check_output_directory(out_dir, EVALUATE_FILES, "evaluate", record="report.json")
    t_start = time.perf_counter()
    torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    t = _load_target(target, checkpoint, config)
    t.ckpt.model.to(device).eval()  # the white-box attacks craft there; the runtime scores
    spec = t.ckpt.data_spec(data, "; give the test data with --data")
    r_offset = t.ckpt.input_spec.get("r_offset")
    test_inputs = _Inputs(load_split(spec, "test"), config.limit, config.seed,
                          config.morph_follows, r_offset)
    test, ctx = test_inputs.data, test_inputs.ctx
    _check_shape(test, t.ckpt, "test")
    notes: list[str] = []
    vae = _vae_for(t, test, config, notes)
    if vae is not None:
        vae.to(device)
    train_inputs = _universal_inputs(spec, t, config, r_offset)
    if ctx is not None:
        log.info("evaluate: the morphology channels are recomputed from every attacked and noisy "
                 "waveform (templates rebuilt from each record's previous clean beats)")
    tick = _Ticker(_steps(config, t, vae), progress)
    measure = _Measure(t, test.y, config)
    clean = measure(test.x)
    tick("clean")
    s = t.signal_channels
    context_only = None
    if test.x.shape[1] > s:  # what the model answers from the context channels alone
        flat = test.x.copy()
        flat[:, :s] = 0.0
        context_only = measure(flat)
    if ctx is not None and vae is not None:
        notes.append("onmanifold: the morphology channels are held at their clean values (the "
                     "VAE decodes the signal only)")
    attacks = _run_attacks(t, test_inputs, train_inputs, config, measure, tick, vae)
    noise = (_run_noise(t, test_inputs, config, measure, tick)
             if config.noise and config.snr_db else [])
    if ctx is not None:
        notes.append("morphology channels recomputed from each attacked or noisy waveform against "
                     "the template of its record's previous clean beats (per-beat threat model)")
    report = {
        "target": _describe_target(t),
        "data": {"spec": spec.to_dict(), "test": test.describe(),
                 "train_for_universal": None if train_inputs is None else len(train_inputs.data),
                 "sampled": config.limit is not None},
        "config": config.to_dict(),
        "host": {**machine_info(), "threads": config.threads},
        "clean": clean,
        "context_only": context_only,
        "attacks": attacks,
        "noise": noise,
        "sanity": _sanity(clean, attacks, context_only),
        "notes": notes,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }
    files = _write(report, out_dir) if out_dir is not None else ()
    return EvalResult(report, files)


def _vae_for(t: _Target, test: BeatDataset, config: EvalConfig, notes: list[str]):
    """The VAE of the on-manifold attack, checked to fit the model and data; None (and a note)
    when the attack is asked for without one, or not asked for."""
    if EvalAttack.ONMANIFOLD not in config.attacks:
        return None
    if not config.vae:
        notes.append("onmanifold skipped: no VAE given (--vae FILE)")
        log.info("evaluate: the onmanifold attack is skipped: no VAE given (--vae FILE)")
        return None
    from edgeexit.models.vae import check_vae_fits, load_vae

    vae = load_vae(config.vae)
    check_vae_fits(vae, t.signal_channels, test.input_shape[-1], len(t.ckpt.classes),
                   f"the model of {t.ckpt_path}", in_channels=test.input_shape[0])
    return vae


def _universal_inputs(spec, t: _Target, config: EvalConfig, r_offset) -> _Inputs | None:
    """The training windows the universal perturbations are fitted on (None: none asked for)."""
    if not any(EVAL_ATTACKS[EvalAttack(a)].needs == "train" for a in config.attacks):
        return None
    train_inputs = _Inputs(load_split(spec, "train"), config.universal_limit,
                           config.seed + 1, config.morph_follows, r_offset)
    _check_shape(train_inputs.data, t.ckpt, "training")
    return train_inputs


def _steps(config: EvalConfig, t: _Target, vae) -> int:
    """How many measurements :func:`evaluate` reports progress for (clean, attacks, noise)."""
    n_eps = len(config.eps)

    def runs(a: EvalAttack) -> int:  # measurements of one attack (EVAL_ATTACKS says where it runs)
        spec = EVAL_ATTACKS[a]
        if spec.needs == "bundle" and t.engine is None:
            return 0
        if spec.needs == "vae":
            return int(vae is not None)
        return n_eps if spec.budget == "eps" else 1

    return (sum(runs(EvalAttack(a)) for a in set(config.attacks)) + (config.sanity_eps is not None)
            + len(config.noise) * len(config.snr_db) + 1)


class _Ticker:
    """``tick(what)``: one more measurement done, logged and passed to ``progress``."""

    def __init__(self, total: int, progress: Progress) -> None:
        self.total, self.progress, self.done = total, progress, 0

    def __call__(self, what: str) -> None:
        self.done += 1
        log.info("evaluate: %s (%d/%d)", what, self.done, self.total)
        if self.progress is not None:
            self.progress(what, self.done, self.total)


def _describe_target(t: _Target) -> dict:
    """The report's ``target``: what was attacked, with which policy and backend."""
    return {
        "kind": t.kind,
        "path": str(t.path),
        "checkpoint": str(t.ckpt_path),
        "model": t.ckpt.model.config.to_dict() if t.ckpt.model.config else None,
        "method": ((t.ckpt.meta or {}).get("train_config") or {}).get("method", "standard"),
        "policy": t.policy_name(),
        "deployed_policy": None if t.policy is None else t.policy.to_dict(),
        "exits": list(t.exits),
        "backend": None if t.engine is None else t.engine.backend,
    }


# -- writing -------------------------------------------------------------------------------------


def _write(report: dict, out_dir: str | os.PathLike, markdown=None, plots=None) -> tuple[Path, ...]:
    """``report.json``, ``report.md`` (``markdown(report)``, default :func:`format_markdown`) and
    the plots (``plots(report, out)``, default this module's) into ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a directory")
    out.mkdir(parents=True, exist_ok=True)
    md = (markdown or format_markdown)(report)
    files = [atomic_write(out / "report.json", lambda f: f.write(json.dumps(report, indent=2).encode())),
             atomic_write(out / "report.md", lambda f: f.write(md.encode()))]
    files += (plots or _plots)(report, out)
    log.info("wrote %s", ", ".join(str(f) for f in files))
    return tuple(files)


def _label(a: dict) -> str:
    if a["attack"] == EvalAttack.ONMANIFOLD:
        return f"onmanifold (eta, kept {100 * a['stats']['kept_fraction']:.0f}%)"
    return a["attack"]


def _row(name: str, eps, m: dict, classes: list[str], cost: bool) -> str:
    sens = " ".join(f"{100 * m['policy']['sensitivity'].get(c, float('nan')):.0f}" for c in classes)
    cells = [name, "" if eps is None else f"{eps:g}",
             f"{100 * m['exits'][-1]['accuracy']:.1f}", f"{m['exits'][-1]['macro_f1']:.3f}",
             f"{100 * m['policy']['accuracy']:.1f}", f"{m['policy']['macro_f1']:.3f}", sens]
    if cost:
        hist = " / ".join(f"{100 * h:.0f}" for h in m["exit_histogram"])
        cells += [hist, f"{m['mean_macs'] / 1e6:.2f}",
                  f"{m['latency_us']:.0f} ({m['latency_ratio']:.2f}x)"]
    return "| " + " | ".join(cells) + " |"


def format_markdown(report: dict) -> str:
    """The report as Markdown tables (what ``report.md`` holds)."""
    t = report["target"]
    clean = report["clean"]
    classes = list(clean["policy"]["sensitivity"])
    cost = "exit_histogram" in clean
    cfg = report["config"]
    lines = [
        f"# Robustness of {t['path']} ({t['kind']}, method {t['method']})",
        "",
        (f"Data: {report['data']['test']['source']}, {report['data']['test']['beats']} test "
         f"windows{' (a class-stratified sample)' if report['data']['sampled'] else ''}; "
         f"{cfg['norm']} budgets in mV on the signal channels, RR context untouched; "
         f"PGD {cfg['steps']} steps. Host: {report['host']['cpu']}, {report['host']['threads']} "
         f"thread(s). Policy: {t['policy']}."),
        "",
        "| input | eps | final acc % | final mF1 | policy acc % | policy mF1 | policy sens % "
        f"({' '.join(classes)}) |" + (" exits % | MMACs | latency us (vs clean, timed alternately) |" if cost else ""),
        "|" + "---|" * (7 + 3 * cost),
        _row("clean", None, clean, classes, cost),
    ]
    lines += [_row(_label(a), a["eps"], a, classes, cost) for a in report["attacks"]]
    lines += [_row(f"noise {n['noise']} {n['snr_db']:g} dB", None, n, classes, cost)
              for n in report["noise"]]
    if report.get("context_only"):
        lines.append(_row("signal flattened (context only)", None, report["context_only"],
                          classes, cost))
    lines += ["", "Per exit (accuracy % / macro-F1):", ""]
    n_exits = len(clean["exits"])
    lines.append("| input | eps | " + " | ".join(f"exit {k}" for k in range(n_exits)) + " |")
    lines.append("|" + "---|" * (2 + n_exits))
    for name, eps, m in ([("clean", None, clean)]
                         + [(_label(a), a["eps"], a) for a in report["attacks"]]):
        cells = [f"{100 * e['accuracy']:.1f} / {e['macro_f1']:.3f}" for e in m["exits"]]
        lines.append(f"| {name} | {'' if eps is None else f'{eps:g}'} | " + " | ".join(cells) + " |")
    for a in report["attacks"]:
        if a["attack"] == EvalAttack.ONMANIFOLD:
            st, ck = a["stats"], a["clean_on_kept"]
            lines += ["", (f"onmanifold: PGD in the latent space of the VAE {cfg.get('vae')} "
                           f"({st['attack']['steps']} accumulated steps, |zeta|_inf <= eta "
                           f"{a['eta']:g} in latent units, not mV; the on-manifold change added to "
                           f"the real beat changes it by {st['delta_linf_mV']:.3f} mV at most, on "
                           f"average). Scored on the {st['kept']} windows "
                           f"({100 * st['kept_fraction']:.1f}%) whose latent label it preserved; "
                           f"clean on those windows: final acc "
                           f"{100 * ck['exits'][-1]['accuracy']:.1f}%, mF1 "
                           f"{ck['exits'][-1]['macro_f1']:.3f}; policy acc "
                           f"{100 * ck['policy']['accuracy']:.1f}%.")]
    lines += [f"Note: {n}" for n in report.get("notes", [])]
    lines += ["", "Sanity checks (signs of gradient masking when one fails):", ""]
    lines += [f"- {'ok' if f['ok'] else 'FAILED'}: {f['check']} ({f['detail']})"
              for f in report["sanity"]]
    lines += ["", f"Elapsed: {report['elapsed_s']} s.", ""]
    return "\n".join(lines)


def _budget(attack: str) -> str | None:
    """Where a report's attack ran (:data:`EVAL_ATTACKS`); None: not one of them (the sanity PGD)."""
    spec = EVAL_ATTACKS.get(attack)
    return None if spec is None else spec.budget


def _plots(report: dict, out: Path) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    files = []
    # the attacks run at every eps (not the sanity PGD, the cost attacks, onmanifold's eta)
    names = sorted({a["attack"] for a in report["attacks"] if _budget(a["attack"]) == "eps"})
    if names:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        clean = report["clean"]
        for name in names:
            pts = sorted((a["eps"], a) for a in report["attacks"] if a["attack"] == name)
            eps = [0.0] + [p[0] for p in pts]
            for ax, key in zip(axes, ("accuracy", "macro_f1")):
                ax.plot(eps, [clean["policy"][key]] + [p[1]["policy"][key] for p in pts],
                        marker="o", label=f"{name} (policy)")
                if name == EvalAttack.MAX_AVG:
                    ax.plot(eps, [clean["exits"][-1][key]] + [p[1]["exits"][-1][key] for p in pts],
                            marker="s", linestyle="--", label="max_avg (final exit)")
        for ax, key in zip(axes, ("accuracy", "macro-F1")):
            fraction_axes(ax, "eps (mV)", key)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{report['target']['path']}: {report['target']['policy']}")
        files.append(save_png(fig, out / "robustness.png"))
    hist = [("clean", report["clean"])] + [
        (f"{a['attack']} {a['eps']:g}", a) for a in report["attacks"]
        if _budget(a["attack"]) == "max_eps"]  # the cost attacks
    if "exit_histogram" in report["clean"] and len(hist) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        n = len(report["clean"]["exit_histogram"])
        width = 0.8 / len(hist)
        for i, (label, m) in enumerate(hist):
            ax.bar(np.arange(n) + i * width, m["exit_histogram"], width,
                   label=f"{label} ({m['latency_us']:.0f} us)")
        ax.set_xticks(np.arange(n) + 0.4 - width / 2, [f"exit {e}" for e in report["target"]["exits"]])
        ax.set_ylabel("share of windows")
        ax.legend(fontsize=8)
        ax.set_title("exits taken, clean vs slowdown attack")
        files.append(save_png(fig, out / "exits.png"))
    return files


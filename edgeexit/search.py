"""Searches and benchmark grids whose trials run on Optuna, on one machine or many.

A grid is a list of :class:`Job` (a unique key and the JSON-ready arguments of one run: a
recipe to cross-validate, a (method, seed) to train and attack, a pruning ratio to fine-tune);
:func:`run_grid` puts every job not yet done into an Optuna study as an enqueued trial and lets
``workers`` processes take them, each running ``fn(params) -> dict`` (a module-level function:
it is pickled by name into the workers). The study lives in a relational database:

- one machine (the default): a SQLite file (``sqlite:///OUT/search.db``), no server;
- several machines: a PostgreSQL or MySQL URL (``postgresql://user:pw@host/db``) that every
  machine's run of the same command gives as ``storage``; each machine enqueues what is missing
  and takes jobs until the grid is done (``docs/guides/scale-out.md``).

Resumable: a finished job is never run again (its result is stored in the study: the trial's
``result`` attribute); a job whose worker died (no heartbeat for :data:`GRACE_S` seconds) is
marked failed and run again by the next run or by a worker still waiting. Results come back as
``{key: result}``, whoever computed them.

Why Optuna rather than Ray: an RDB storage gives resumability and coordination over several
machines with nothing to run but a database (none at all on one machine: a SQLite file), and a
pure-Python install (MIT, like SQLAlchemy and alembic beneath it); Ray needs a cluster (a head
node every worker joins) and keeps no queue across restarts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeexit.errors import ConfigError

__all__ = ["Job", "GridResult", "run_grid", "default_storage", "grid_status", "cv_trial",
           "final_trial", "recipe_config"]

log = logging.getLogger(__name__)

HEARTBEAT_S = 30
"""A running trial records a heartbeat this often (seconds)."""
GRACE_S = 120
"""A running trial without a heartbeat for this long belongs to a dead worker: it is failed and
its job enqueued again."""
POLL_S = 10.0
"""How often a worker with nothing to take looks whether jobs running elsewhere are done."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of a grid: ``key`` names it (unique within the study), ``params`` are the
    JSON-ready arguments the grid's function receives."""

    key: str
    params: dict


@dataclasses.dataclass(frozen=True)
class GridResult:
    """What :func:`run_grid` found done: ``results[key]`` is the job's returned dict,
    ``workers[key]`` the ``host:pid`` that ran it; ``pending`` the keys not done (still running
    elsewhere, or failed)."""

    results: dict[str, dict]
    workers: dict[str, str]
    pending: tuple[str, ...]


def default_storage(out_dir: str | os.PathLike) -> str:
    """The one-machine storage: a SQLite file ``OUT/search.db``."""
    return f"sqlite:///{Path(out_dir).resolve() / 'search.db'}"


def _storage(url: str):
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                                 heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=GRACE_S)
    except Exception as e:  # sqlalchemy's errors: a bad URL, no driver, no server
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"cannot open the search storage {url!r}: {type(e).__name__}: {first} "
                          "(give sqlite:///FILE, or a postgresql:// or mysql:// URL whose "
                          "driver is installed)") from e
    if url.startswith("sqlite"):
        _serialise_sqlite(storage.engine)
    return storage


def _serialise_sqlite(engine) -> None:
    """Every transaction on the SQLite file takes its write lock when it begins (``BEGIN
    IMMEDIATE``, SQLAlchemy's pysqlite recipe): SQLite ignores the ``SELECT ... FOR UPDATE``
    with which Optuna hands a waiting trial to one worker, and two workers took the same one."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite: we begin them ourselves

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections opened so far lack the listeners


def _study(url: str, name: str):
    import optuna

    optuna.logging.disable_default_handler()  # optuna's messages go through logging, as ours
    optuna.logging.enable_propagation()
    return optuna.create_study(storage=_storage(url), study_name=name, load_if_exists=True,
                               direction="maximize")


def _trials(study, states=None):
    return [t for t in study.get_trials(deepcopy=False, states=states) if "job" in t.user_attrs]


def grid_status(study) -> dict[str, list]:
    """The study's trials by job key: ``{key: [FrozenTrial, ...]}``."""
    by_key: dict[str, list] = {}
    for t in _trials(study):
        by_key.setdefault(t.user_attrs["job"], []).append(t)
    return by_key


def _enqueue_missing(study, jobs: Sequence[Job]) -> int:
    """Fail the trials of dead workers, then enqueue every job that is neither done, waiting
    nor running; returns how many were enqueued."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        fail_stale_trials(study)
    live = {TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING}
    have = {k for k, ts in grid_status(study).items() if any(t.state in live for t in ts)}
    n = 0
    for job in jobs:
        if job.key not in have:
            study.enqueue_trial({}, user_attrs={"job": job.key, "params": json.dumps(job.params)})
            n += 1
    return n


def _objective(fn: Callable[[dict], dict], score: str | None):
    import optuna

    def objective(trial) -> float:
        key = trial.user_attrs.get("job")
        if key is None:  # the queue ran dry between a look and a take: nothing to do
            raise optuna.TrialPruned("no job left in the queue")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        result = fn(json.loads(trial.user_attrs["params"]))
        trial.set_user_attr("result", json.dumps(result))
        return float(result.get(score, 0.0)) if score else 0.0

    return objective


def _work(url: str, name: str, fn: Callable[[dict], dict], score: str | None,
          jobs: Sequence[Job], wait: bool) -> None:
    """One worker: take enqueued jobs of the grid until none is waiting (and, with ``wait``,
    until none of them is running elsewhere; a dead worker's job is enqueued again)."""
    from optuna.trial import TrialState

    study = _study(url, name)
    wanted = {j.key for j in jobs}
    objective = _objective(fn, score)

    def mine(state) -> list:
        return [t for t in _trials(study, (state,)) if t.user_attrs["job"] in wanted]

    def stop_when_drained(study, _trial) -> None:
        if not mine(TrialState.WAITING):
            study.stop()

    while True:
        if mine(TrialState.WAITING):
            study.optimize(objective, callbacks=[stop_when_drained], gc_after_trial=True)
        elif wait and mine(TrialState.RUNNING):
            time.sleep(POLL_S)
            _enqueue_missing(study, jobs)  # the jobs of workers that died meanwhile
        else:
            return


def run_grid(jobs: Sequence[Job], fn: Callable[[dict], dict], *, storage: str, study: str,
             workers: int = 1, score: str | None = None, wait: bool = True) -> GridResult:
    """Run every job of ``jobs`` not yet done in study ``study`` of ``storage``; returns what
    is done.

    Args:
        jobs: the grid (keys unique).
        fn: ``fn(job.params) -> dict`` (JSON-ready), a module-level function.
        storage: an RDB URL (:func:`default_storage` on one machine; a shared PostgreSQL or
            MySQL URL to spread the grid over machines running the same command).
        study: the study's name: one per grid (a rerun with the same name resumes it).
        workers: processes on this machine taking jobs (1: this process).
        score: the result's entry that is the trial's value (Optuna's dashboard ranks by it).
        wait: stay until jobs running on other machines are done (and take over those of
            workers that died); False: return once nothing is left to take here.
    """
    jobs = list(jobs)
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"the jobs of a grid need unique keys, got {keys}")
    if workers < 1:
        raise ConfigError(f"workers is a number of processes >= 1, got {workers}")
    handle = _study(storage, study)
    added = _enqueue_missing(handle, jobs)
    log.info("study %s: %d job(s) enqueued, %d in the grid", study, added, len(jobs))
    if workers > 1:  # they drain the queue; this process then waits for other machines' jobs
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
        procs = [ctx.Process(target=_work, args=(storage, study, fn, score, jobs, False))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [p.exitcode for p in procs if p.exitcode]
        if failed:
            log.error("%d of %d workers failed (exit codes %s)", len(failed), workers, failed)
    _work(storage, study, fn, score, jobs, wait)
    return _collect(handle, keys)


def _collect(study, keys: Sequence[str]) -> GridResult:
    from optuna.trial import TrialState

    results, workers = {}, {}
    for key, ts in grid_status(study).items():
        done = [t for t in ts if t.state == TrialState.COMPLETE and "result" in t.user_attrs]
        if key in keys and done:
            first = min(done, key=lambda t: t.number)
            results[key] = json.loads(first.user_attrs["result"])
            workers[key] = first.user_attrs.get("worker", "")
    pending = tuple(k for k in keys if k not in results)
    return GridResult(results, workers, pending)


# -- the recipe search (tools/cv_search.py): its two kinds of trial --------------------------------

DATA_KEYS = ("rr_context", "morph_context")
"""Recipe overrides that choose the input (the MIT-BIH loader's options), not TrainConfig fields."""


def recipe_config(overrides: dict, epochs: int, seed: int, device: str = "auto"):
    """The :class:`~edgeexit.train.TrainConfig` of a recipe: ``resnet1d`` with ``overrides``
    (TrainConfig fields; :data:`DATA_KEYS` left out), one torch thread."""
    from edgeexit.train import TrainConfig

    train_keys = {k: v for k, v in overrides.items() if k not in DATA_KEYS}
    return TrainConfig(**{"model": "resnet1d", "epochs": epochs, "seed": seed, "threads": 1,
                          "device": device, **train_keys})


def _mitbih(mitdb: str, test: bool, overrides: dict):
    from edgeexit.data.mitbih import DS1, load_mitbih, load_mitbih_split

    data_keys = {k: v for k, v in overrides.items() if k in DATA_KEYS}
    if not test:
        return load_mitbih(mitdb, DS1, **data_keys), None
    return load_mitbih_split(mitdb, **data_keys)


def cv_trial(p: dict) -> dict:
    """Cross-validate one recipe on the MIT-BIH DS1 records (never DS2): ``p`` holds ``name``,
    ``overrides``, ``mitdb``, ``epochs``, ``folds``, ``cv_seed`` and optionally ``device``;
    returns :meth:`~edgeexit.cv.CVResult.to_dict` with the name, overrides and run time."""
    import torch

    from edgeexit.cv import cross_validate

    torch.set_num_threads(1)
    train_set, _ = _mitbih(p["mitdb"], False, p["overrides"])
    t0 = time.perf_counter()
    config = recipe_config(p["overrides"], p["epochs"], p["cv_seed"], p.get("device", "auto"))
    d = cross_validate(train_set, config, p["folds"]).to_dict()
    d.update(name=p["name"], overrides=p["overrides"], elapsed_s=round(time.perf_counter() - t0, 1))
    return d


def final_trial(p: dict) -> dict:
    """Train one recipe on DS1 for the epochs its cross-validation chose (the folds' schedule,
    keeping the last epoch; ``p``: ``name``, ``overrides``, ``epochs``, ``schedule``, ``seed``,
    ``mitdb``, ``out``, optionally ``device``), writing ``OUT/final-NAME-seedS/model.pt``, and
    test it on DS2 once: every exit's compact report."""
    import torch

    from edgeexit.cv import compact_report
    from edgeexit.data import DataSpec
    from edgeexit.train import train

    torch.set_num_threads(1)
    name, ov, seed = p["name"], p["overrides"], p["seed"]
    train_set, test_set = _mitbih(p["mitdb"], True, ov)
    t0 = time.perf_counter()
    cfg = dataclasses.replace(recipe_config(ov, p["epochs"], seed, p.get("device", "auto")),
                              select="last", schedule_epochs=p["schedule"])
    spec = DataSpec(source=p["mitdb"], seed=seed, **{k: v for k, v in ov.items() if k in DATA_KEYS})
    r = train(train_set, cfg, test=test_set, out_dir=Path(p["out"]) / f"final-{name}-seed{seed}",
              data_spec=spec)
    return {"name": name, "seed": seed, "epochs": p["epochs"], "overrides": ov,
            "elapsed_s": round(time.perf_counter() - t0, 1),
            "exits": [compact_report(e["test"]) for e in r.metrics["exits"]]}

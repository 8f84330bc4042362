"""Searches on Optuna (edgeexit.search): a grid run by two worker processes through the engine
ranks like the same trials run one after another, and a rerun resumes instead of repeating."""

import os

import numpy as np
import pytest

from edgeexit.errors import ConfigError
from edgeexit.search import Job, default_storage, run_grid


def tiny_trial(params: dict) -> dict:
    """One tiny training (module level: the engine pickles it by name into its workers)."""
    import torch

    from edgeexit.data import load_source
    from edgeexit.train import TrainConfig, train

    torch.set_num_threads(1)
    data = load_source(params["data"]).subset(np.arange(120))
    cfg = TrainConfig(model="test_resnet1d", epochs=1, batch_size=32, lr=params["lr"],
                      seed=params["seed"], patience=0, threads=1, device="cpu")
    h = train(data, cfg).metrics["history"][-1]
    return {"score": h["val_score"], "loss": h["loss"]}


def must_not_run(params: dict) -> dict:
    raise AssertionError(f"a finished job ran again: {params}")


def _ranking(results: dict) -> list[str]:
    return sorted(results, key=lambda k: (-results[k]["score"], results[k]["loss"], k))


@pytest.mark.slow
def test_two_workers_rank_the_grid_as_one_after_another_and_a_rerun_resumes(separable_npz, tmp_path):
    jobs = [Job(f"lr{lr}-s{seed}", {"data": separable_npz, "lr": lr, "seed": seed})
            for lr, seed in [(0.001, 0), (0.03, 1), (0.1, 2)]]
    one_by_one = {j.key: tiny_trial(j.params) for j in jobs}
    storage = default_storage(tmp_path)
    grid = run_grid(jobs, tiny_trial, storage=storage, study="tiny", workers=2, score="score")
    assert grid.pending == ()
    assert grid.results == one_by_one  # CPU, one thread, one seed: the same numbers
    assert _ranking(grid.results) == _ranking(one_by_one)
    assert all(not w.endswith(f":{os.getpid()}") for w in grid.workers.values())  # in the workers
    assert (tmp_path / "search.db").is_file()
    again = run_grid(jobs, must_not_run, storage=storage, study="tiny", workers=1)
    assert again.results == grid.results and again.workers == grid.workers


def test_bad_grids_and_storages_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="unique keys"):
        run_grid([Job("a", {}), Job("a", {})], must_not_run, storage=default_storage(tmp_path),
                 study="s")
    with pytest.raises(ConfigError, match="cannot open the search storage 'nosuchdb://x'"):
        run_grid([Job("a", {})], must_not_run, storage="nosuchdb://x", study="s")

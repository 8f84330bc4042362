"""The benchmark tools in tools/ run on a tiny bundle and report consistent figures."""

import importlib.util
import sys

import numpy as np
import pytest

from tests.conftest import REPO


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("backend", ["litert", "onnxruntime"])
def test_decision_overhead_separates_native_time_from_the_engine(bundle_dir, backend):
    # structure only: which variant is faster is a timing, for the tool's own side-by-side run
    # (native < predict, asserted here once, flipped under noise in 1 CI run of 5)
    r = _tool("decision_overhead").measure(str(bundle_dir), backend, 1, "golden", 16, 3, 0.5)
    assert set(r["policies"]) == {"max_prob", "entropy", "ensemble", "fixed", "budget"}
    for name, p in r["policies"].items():
        u = p["us_per_window"]
        assert min(u["native"], u["predict"], u["decision"], u["check"]) > 0
        assert abs(sum(p["exit_fractions"]) - 1) < 1e-3
        assert 1 <= p["segments_run_per_window"] <= 4
        assert p["decision_us_per_exit"] == pytest.approx(u["decision"] / p["segments_run_per_window"], rel=1e-2)
    assert r["policies"]["fixed"]["segments_run_per_window"] == 4  # fixed: the last exit
    assert r["policies"]["budget"]["segments_run_per_window"] == 4  # a budget never reached


def test_engine_benchmark_puts_the_policy_between_its_floor_and_the_monolithic_graph(bundle_dir):
    # structure only (timings are the tool's side-by-side run): the fractions, the floor's parts
    eb = _tool("engine_benchmark")
    x = np.load(bundle_dir / "golden.npz")["inputs"][:12].astype(np.float32)
    r = eb.policy_floor(str(bundle_dir), "litert", x, 2)
    assert abs(sum(r["exit_fractions"]) - 1) < 1e-3 and 1 <= r["segments_run_per_window"] <= 4
    u = r["us_per_window"]
    assert min(u.values()) > 0 and r["floor"] == pytest.approx(u["native_chain"] / u["native_monolithic"], rel=1e-2)
    assert r["ratio_over_floor"] == pytest.approx(r["ratio"] / r["floor"], rel=1e-2)


def test_robust_benchmark_table_gives_mean_and_spread_over_seeds(bundle_dir, tmp_path):
    import dataclasses
    import json

    import numpy as np

    from edgeexit.robust.evaluate import EvalConfig, evaluate

    rb = _tool("robust_benchmark")
    cfg = EvalConfig(eps=(0.3, 1.0), sanity_eps=None, steps=2, limit=30, universal_limit=60,
                     universal_epochs=1, square_queries=10, latency_samples=5, noise=("ma",),
                     snr_db=(6.0, 0.0))
    for seed in (0, 1):
        evaluate(bundle_dir, config=dataclasses.replace(cfg, seed=seed),
                 out_dir=tmp_path / f"standard-seed{seed}" / "eval-max_prob")
    text = rb.table(tmp_path, "test run")
    rows = [line for line in text.splitlines() if line.startswith("| standard / max_prob | 2 |")]
    assert len(rows) == 9  # clean, 5 attacks, per-class sensitivity, noise, cost
    acc = [json.loads((tmp_path / f"standard-seed{s}" / "eval-max_prob" / "report.json")
                      .read_text())["clean"]["exits"][-1]["accuracy"] for s in (0, 1)]
    mean, std = 100 * np.mean(acc), 100 * np.std(acc)
    assert rows[0].split(" | ")[2].endswith(f"({mean:.1f} ± {std:.1f}%)")
    assert "1 mV" in text and "6 dB" in text


@pytest.mark.parametrize("recipe", ["default", "ranked-first"])
def test_robust_benchmark_plans_train_what_they_describe(recipe):
    """A plan gives a valid TrainConfig; its quick form trains the same recipe for fewer epochs
    (with no schedule left longer than them); its description names every setting it changes."""
    from edgeexit.train import TrainConfig

    rb = _tool("robust_benchmark")
    full, quick = rb.Plan.make(False, 0.1, recipe), rb.Plan.make(True, 0.1, recipe)
    cfg, short = (TrainConfig(model="resnet1d", **p.train_overrides()) for p in (full, quick))
    assert short.epochs < cfg.epochs and short.schedule_epochs is None
    epochless = {"epochs", "schedule_epochs"}
    assert ({k: v for k, v in short.to_dict().items() if k not in epochless}
            == {k: v for k, v in cfg.to_dict().items() if k not in epochless})
    assert quick.morph_context == full.morph_context
    text = full.describe()
    assert f"{cfg.epochs} epochs" in text
    if cfg.schedule_epochs is not None:  # stopped early in a longer schedule, as CV chose it
        assert cfg.select == "last" and f"{cfg.schedule_epochs}-epoch schedule" in text
    defaults = TrainConfig(model="resnet1d").to_dict()
    changed = {k: v for k, v in cfg.to_dict().items()
               if v != defaults[k] and k not in {*epochless, "select"}}
    assert all(f"{v:g}" in text for v in changed.values()), (changed, text)
    assert ("morphology context" in text) == full.morph_context
    with pytest.raises(ValueError, match="unknown recipe"):
        rb.Plan.make(False, 0.1, "nope")


def test_robust_benchmark_run_names_differ_exactly_where_the_training_does():
    """Runs share a directory name only when they train the same model: the method, its attack
    budget and (when the data has morphology channels and the method attacks) whether its attacks
    hold those channels. Checked over every method, recipe, budget and morphology choice."""
    import itertools
    import json

    from edgeexit.train import TrainConfig

    rb = _tool("robust_benchmark")
    per_recipe: dict[tuple, set] = {}  # (recipe, run name) -> the trainings it names
    for method, recipe, eps, morph in itertools.product(
            rb.METHODS, rb.RECIPES, (0.1, 0.2), ("follows", "held")):
        plan = rb.Plan.make(False, eps, recipe, morph)
        cfg = TrainConfig(model="resnet1d", method=method,
                          method_config=rb._method_config(method, plan), **plan.train_overrides())
        what = cfg.to_dict()
        if method == "standard" or not plan.morph_context:  # nothing for attack_morph to act on
            what.pop("attack_morph")
        per_recipe.setdefault((recipe, rb.run_name(method, plan)), set()).add(
            json.dumps(what, sort_keys=True))
    # the runs of a recipe go to one --out directory (the README's commands): one training per name
    assert all(len(v) == 1 for v in per_recipe.values()), per_recipe
    names_of = {}
    for (recipe, name), v in per_recipe.items():
        names_of.setdefault((recipe, next(iter(v))), set()).add(name)
    assert all(len(v) == 1 for v in names_of.values())  # and one name per training
    # standard, and 3 attacking methods x 2 budgets (x 2 morphology choices with morphology)
    assert len(per_recipe) == (1 + 3 * 2) + (1 + 3 * 2 * 2)


def test_robust_benchmark_grid_has_one_trial_per_method_and_seed_with_unique_keys():
    """The search engine's trials: one per (method, seed), named like its run directory; the
    standard model's trial also runs the ensemble policy (it reuses that model)."""
    import dataclasses

    rb = _tool("robust_benchmark")
    plan = rb.Plan.make(True, 0.2)
    jobs = rb.grid(list(rb.METHODS), [0, 1], True, {"plan": dataclasses.asdict(plan)})
    assert len(jobs) == len({j.key for j in jobs}) == 2 * len(rb.METHODS)
    assert {j.key for j in jobs} >= {"standard-seed0", "rdi-eps0.2-seed1", "ima-eps0.2-seed0"}
    for j in jobs:
        assert j.params["policies"] == (["max_prob", "ensemble"] if j.params["method"] == "standard"
                                        else ["max_prob"])
        assert rb.Plan(**j.params["plan"]) == plan  # the plan travels to the worker as JSON
    assert all(j.params["policies"] == ["max_prob"]
               for j in rb.grid(["standard"], [0], False, {"plan": dataclasses.asdict(plan)}))


def test_context_reliance_sees_a_model_that_reads_the_waveform(tiny_checkpoint, tmp_path):
    from tests.conftest import make_separable

    npz = tmp_path / "beats.npz"
    make_separable(n=300, seed=3).save_npz(npz)
    r = _tool("context_reliance").measure(str(tiny_checkpoint), str(npz), n=100, eps=4.0,
                                          donors=3)
    # the separable beats carry their class in the signal channel only. Over tiny_checkpoint
    # fixtures of seeds 0-4: clean 0.58-0.94 (chance 0.2), flattened 0.36-0.72 lower, donor
    # swap 0.57-0.93 lower
    assert r["windows"] == 100 and r["accuracy_clean"] > 0.4
    assert r["accuracy_flattened"] < r["accuracy_clean"] - 0.2
    assert r["accuracy_donor_swap"] < r["accuracy_clean"] - 0.3


def test_compress_benchmark_runs_every_row_and_times_them_in_one_round(tiny_checkpoint, bundle_dir,
                                                                      tmp_path):
    import json
    import shutil

    cb = _tool("compress_benchmark")
    out = tmp_path / "cb"
    # the original row's bundle is there already (the tool keeps a finished bundle): it is the
    # tiny model's session bundle, so the test exports one bundle instead of three (~90 s less)
    shutil.copytree(bundle_dir, out / "original" / "bundle")
    assert cb.main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--quick",
                    "--ratios", "0.5", "--finetunes", "standard", "--seeds", "0,1"]) == 0
    groups = cb.collect(out)
    assert list(groups) == ["original", "r0.5-standard"]
    assert [r["name"] for r in groups["r0.5-standard"]] == ["r0.5-standard-s0", "r0.5-standard-s1"]
    latency = json.loads((out / "latency.json").read_text())  # the first seed's bundles
    assert set(latency) == {"original", "r0.5-standard-s0"}
    assert all(v["monolithic_us"] > 0 and v["policy_us"] > 0 for v in latency.values())
    assert (out / "r0.5-standard-s0" / "bundle" / "manifest.json").is_file()
    assert not (out / "r0.5-standard-s1" / "bundle").exists()
    assert cb._macs(out / "r0.5-standard-s0") < cb._macs(out / "original")
    table = (out / "table.md").read_text()
    assert table.count("\n| r0.5-") == 1 and "QUICK" in table and " ± " in table
    for rows in json.loads((out / "table.json").read_text())["rows"].values():
        for row in rows:
            assert {a["attack"] for a in row["attacks"]} == {"max_avg", "onmanifold"}
    # a second run reuses every row (nothing is retrained) and rewrites the table
    stamp = (out / "r0.5-standard-s1" / "model.pt").stat().st_mtime_ns
    assert cb.main(["--out", str(out), "--table-only"]) == 0
    assert (out / "r0.5-standard-s1" / "model.pt").stat().st_mtime_ns == stamp


def test_cv_search_tables_rank_recipes_by_the_cv_mean_and_summarise_seeds():
    from conftest import make_separable

    from edgeexit.cv import compact_report, cross_validate
    from edgeexit.metrics import classification_report
    from edgeexit.train import TrainConfig

    cs = _tool("cv_search")
    data = make_separable(n=300, seed=1, channels=6)
    runs = []
    for name, width in (("wide", 1.0), ("thin", 0.5)):
        d = cross_validate(data, TrainConfig(model="test_resnet1d", width=width, epochs=2, batch_size=32,
                                             threads=1), folds=2).to_dict()
        runs.append({**d, "name": name, "overrides": {"width": width}, "elapsed_s": 1.0})
    table = cs.cv_table(runs).splitlines()
    best = max(runs, key=lambda d: d["best_mean_score"])
    assert table[2].startswith(f"| {best['name']} |") and f"**{best['best_mean_score']:.3f}**" in table[2]
    y = data.y
    finals = [{"name": "wide", "seed": s, "epochs": 2, "overrides": {}, "elapsed_s": 1.0,
               "exits": [compact_report(classification_report(y, np.roll(y, s), data.classes))] * 2}
              for s in (0, 3)]
    text = cs.final_table(finals)
    f1 = [f["exits"][-1]["score"] for f in finals]
    assert f"**{np.mean(f1):.3f}** (max - min {max(f1) - min(f1):.3f})" in text
    assert "Every exit, seed 0" in text
    # seed averaging: the best epoch of the mean curve, not of either seed's own curve
    a = {"mean_score_per_epoch": [0.40, 0.60, 0.41, 0.50]}
    b = {"mean_score_per_epoch": [0.42, 0.30, 0.55, 0.52]}
    epoch, score, curve = cs.seed_averaged_best([a, b])
    assert (epoch, curve) == (4, pytest.approx([0.41, 0.45, 0.48, 0.51])) and score == pytest.approx(0.51)
    with pytest.raises(ValueError, match="one length"):
        cs.seed_averaged_best([a, {"mean_score_per_epoch": [0.5]}])


@pytest.mark.parametrize("policy, kwargs", [
    ("max_prob", {}),  # the bundle's own thresholds
    ("max_prob", {"thresholds": "median"}),  # each exit's median max prob: both ways taken
    ("ensemble", {"thresholds": "median"}),
    ("ensemble", {}),  # no thresholds: runs every exit
    ("fixed", {"exit_index": 0}),
    ("fixed", {"exit_index": 2}),
])
def test_cascade_study_graph_answers_like_the_engine(bundle_dir, policy, kwargs):
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.policy import softmax

    tool = _tool("cascade_study")
    x = np.load(bundle_dir / "golden.npz")["inputs"].astype(np.float32)
    x = np.concatenate([x, x[::-1] * 0.5])  # more windows, more exits taken
    if kwargs.get("thresholds") == "median":
        logits, _ = Engine.from_bundle(bundle_dir, backend="litert", threads=1).run_all(x)
        kwargs = {"thresholds": [float(np.median(softmax(z).max(-1))) for z in logits[:-1]]}
    engine = Engine.from_bundle(bundle_dir, backend="litert", threads=1, policy=policy, **kwargs)
    if policy == "ensemble":
        engine.policy = type(engine.policy)(4, engine.policy.thresholds, (1.0, 2.0, 3.0, 4.0))
    segs = [(bundle_dir / s.artifact("tflite").file).read_bytes() for s in engine.manifest.segments]
    session = tool.CascadeSession(tool.build_cascade(segs, engine.policy), 1, engine.policy)
    differ, worst = tool.compare(engine, session, x)
    assert differ == 0 and worst < 1e-4
    exits = {session.run(xi[None])[1] for xi in x}
    if policy == "fixed":
        assert exits == {kwargs["exit_index"]}
    if policy == "ensemble" and not kwargs:
        assert exits == {3}
    if "thresholds" in kwargs:  # the IF levels are really taken both ways
        assert len(exits) >= 2, exits


def test_cascade_study_refuses_a_policy_it_has_no_graph_for(bundle_dir):
    from edgeexit.runtime.backends.base import BackendError
    from edgeexit.runtime.policy import make_policy

    tool = _tool("cascade_study")
    with pytest.raises(BackendError, match="no entropy policy"):
        tool.build_cascade([b""] * 4, make_policy("entropy", 4, [0.1, 0.2, 0.3]))


def test_logit_offsets_undo_a_known_bias_against_a_class():
    import numpy as np

    tool = _tool("logit_offset_study")
    rng = np.random.default_rng(0)
    classes = ("N", "S", "V", "F")
    y = rng.choice(4, 4000, p=[0.7, 0.1, 0.1, 0.1])
    logits = rng.normal(0, 1, (4000, 4)) + 3 * np.eye(4)[y]
    logits[:, 1] -= 2.5  # S under-predicted by a known shift
    off, best = tool.fit_offsets(y, logits, classes, np.round(np.arange(-4, 4.01, 0.25), 2))
    before = tool.score(y, logits, np.zeros(4), classes)
    after = tool.score(y, logits, off, classes)
    assert after["score"] == best > before["score"] + 0.05
    assert 1.5 <= off[1] <= 3.5 and off[0] == 0.0  # N is the reference
    assert after["S"]["se"] > before["S"]["se"] + 0.2


def test_context_probe_reads_the_scalars_and_balances_rare_classes():
    from edgeexit.runtime.preprocess import MORPH_FEATURES, RR_FEATURES

    cp = _tool("context_probe")
    names = ("MLII", *RR_FEATURES, *MORPH_FEATURES)
    x = np.ones((3, len(names), 8), np.float32)
    x[:, names.index("pre_rr_ratio")] = 0.5
    x[:, names.index("qrs_corr")] = 0.9
    x[:, names.index("beat_dev")] = 0.25
    f = cp.scalars(x, names)
    assert f.shape == (3, 10)
    assert f[0, RR_FEATURES.index("pre_rr_ratio")] == pytest.approx(np.log(0.5))
    assert f[0, 7] == pytest.approx(0.9) and f[0, 9] == pytest.approx(np.log1p(0.25))
    # a rare class (2% of the beats) that overlaps the common one: balanced weights find more of it
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.02).astype(np.int64)
    feats = rng.normal(0, 1, (4000, 2)) + y[:, None] * 1.5
    recall = [(cp.fit(feats, y, 2, w, seed=0)(feats)[y == 1] == 1).mean() for w in (0.0, 10.0)]
    assert recall[0] < 0.3 and recall[1] > 0.6  # seeds 0-4: 0.00-0.09 and 0.78-0.82


def test_stream_robustness_table_rows_and_seed_means():
    tool = _tool("stream_robustness")

    def metrics(acc, s_se):
        return {"detection": {"sensitivity": 1.0, "ppv": 0.9, "fp": 3}, "accuracy": acc,
                "macro_f1": acc / 2, "sensitivity": {"N": 1.0, "S": s_se, "V": 0.9}}

    def stream(acc):
        return {"clean": metrics(acc, 0.2), "noise": [{"snr_db": 6.0, **metrics(acc - 0.1, 0.1)}],
                "attacks": [{"attack": "pgd", "eps": 0.1, **metrics(acc - 0.2, 0.0),
                             "same_beats": {"window_context_held_accuracy": 0.7,
                                            "end_to_end_accuracy": 0.6}},
                            {"attack": "timing", "eps": 0.1, **metrics(acc - 0.3, 0.1)}]}

    window = {"clean": {"policy": {"accuracy": 0.9, "macro_f1": 0.5, "sensitivity": {"S": 0.3, "V": 0.8}}},
              "attacks": [{"attack": "policy", "eps": 0.1, "policy": {"accuracy": 0.5, "macro_f1": 0.3,
                                                                    "sensitivity": {"S": 0.1}}}]}
    rows = tool.rows_of("std-seed0", "standard", "0", stream(0.9), window)
    rows += tool.rows_of("std-seed1", "standard", "1", stream(0.8), {})
    assert len(rows) == 8 and all(len(r) == len(tool.COLUMNS) for r in rows)
    col = {c: i for i, c in enumerate(tool.COLUMNS)}
    pgd = rows[2]
    assert pgd[col["input"]] == "pgd" and pgd[col["window_accuracy"]] == 0.5
    assert pgd[col["same_beats_e2e_acc"]] == 0.6 and rows[3][col["window_accuracy"]] is None
    means = {(r[col["input"]], r[col["eps"]]): r for r in tool.means(rows)}
    assert len(means) == 4
    assert means[("clean", None)][col["accuracy"]] == pytest.approx(0.85)
    assert means[("clean", None)][col["window_accuracy"]] == pytest.approx(0.9)  # seeds present only


def test_quickstart_variants_tabulates_finished_variants_and_refuses_missing_runs(tmp_path):
    import json

    qv = _tool("quickstart_variants")
    runs = tmp_path / "runs"
    (runs / "qs-s0").mkdir(parents=True)
    (runs / "qs-s0" / "model.pt").write_bytes(b"")  # only its presence is checked
    for rhythm, timing in ((0.0, 0.5), (0.15, 0.75)):
        work = runs / "variants" / f"s0-rhythm{rhythm:g}"
        work.mkdir(parents=True)
        rows = [{"input": f"stream: {name}", "accuracy": acc} for name, acc in (
            ("clean", 0.9), ("muscle noise 6 dB", 0.6), ("timing attack 0.1 mV end to end", timing),
            ("PGD 0.1 mV end to end", 0.7))] + [{"input": "windows: clean", "accuracy": 0.95}]
        (work / "variant.json").write_text(json.dumps({
            "accuracy": 0.95, "rows": rows, "seconds": 1.0,
            "test_sensitivity": {"N": 1.0, "S": 0.9, "V": 0.9, "F": 0.8, "Q": 0.7},
            "timing_sensitivity": {"N": 0.9, "S": 0.5, "V": 0.8, "F": 0.3}}))
    out = tmp_path / "t.json"
    assert qv.main([str(runs), "--seeds", "0", "--rhythm", "0,0.15", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    got = {(r[0], r[1]): r for r in table["rows"]}
    assert {r[2] for r in table["rows"]} == {"-"}  # kept classes: none
    col = table["columns"].index("stream timing 0.1 mV")
    assert got[(0, 0.15)][col] == 75.0 and got[("mean", 0.0)][col] == 50.0
    assert got[(0, 0.0)][table["columns"].index("timing: stream Se % (N S V F Q)")] == "90 50 80 30 -"
    with pytest.raises(SystemExit, match="seeds \\[4\\]"):
        qv.main([str(runs), "--seeds", "0,4", "--out", str(out)])


def test_exit_stat_study_graph_statistic_decides_like_the_engine(bundle_dir, tiny_checkpoint):
    # structure and answers only: which variant is faster is the tool's side-by-side run
    tool = _tool("exit_stat_study")
    r = tool.measure(str(bundle_dir), str(tiny_checkpoint), "golden", 16, 1, ("full",))
    (run,) = r["runs"]
    v = run["variants"]
    assert set(v) == {"predict", "lean", "full"}
    # the in-graph max softmax (float32) stops where stop() (float64) does; a window whose score
    # lies within float32 rounding of a threshold may go the other way on another CPU's kernels
    assert v["full"]["answers_differ"] <= 1
    assert v["full"]["native_us"] > 0 and v["full"]["engine_own_us_per_segment"] is not None
    assert v["predict"]["over_floor"] == pytest.approx(
        v["predict"]["window_us"] / v["predict"]["native_us"], rel=1e-3)
    assert len(tool.rows_of(r)) == 3

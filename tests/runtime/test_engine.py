"""The device engine: backends agree with PyTorch, policies stop where they should, batches skip
decided samples, and bad bundles or inputs are refused with a clear message."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeexit.checkpoint import load_checkpoint
from edgeexit.errors import ConfigError
from edgeexit.runtime.engine import Engine, ExitResult, InputError
from edgeexit.runtime.manifest import BundleError, load_manifest
from edgeexit.runtime.policy import make_policy, softmax, softmax_list

BACKENDS = ["onnxruntime", "litert"]


@pytest.fixture(scope="module")
def golden(bundle_dir):
    with np.load(bundle_dir / "golden.npz") as z:
        return z["inputs"], [z[f"logits_{k}"] for k in range(4)]


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(bundle_dir, out)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_exit_matches_pytorch(bundle_dir, golden, backend):
    x, ref = golden
    engine = Engine.from_bundle(bundle_dir, backend=backend, threads=1, load_monolithic=True)
    logits, times = engine.run_all(x)
    assert len(times) == 4 and all(t > 0 for t in times)
    for a, b in zip(logits, ref):
        np.testing.assert_allclose(a, b, atol=1e-4 * (1 + np.abs(b).max()))
    np.testing.assert_allclose(engine.run_monolithic(x), ref[-1], atol=1e-4 * (1 + np.abs(ref[-1]).max()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_and_batch_predictions_agree(bundle_dir, golden, backend):
    x, ref = golden
    engine = Engine.from_bundle(bundle_dir, backend=backend, threads=1)
    t = engine.policy.thresholds
    singles = [engine.predict(xi) for xi in x]
    batch = engine.predict_batch(x)
    assert [r.exit_index for r in singles] == batch.exit_index.tolist()
    assert [r.label for r in singles] == batch.labels.tolist()
    np.testing.assert_allclose(np.stack([r.probs for r in singles]), batch.probs, atol=1e-5)
    for r, k in zip(singles, batch.exit_index):
        assert len(r.segment_ns) == k + 1 and r.class_name == engine.classes[r.label]
    # the exit taken is the first whose max probability reaches its threshold (from golden logits)
    p = [softmax(z) for z in ref]
    for i, r in enumerate(singles):
        first = next((k for k in range(3) if p[k][i].max() >= t[k]), 3)
        assert r.exit_index == first
    # segment k ran only on the samples that no earlier exit decided
    ran = [int((batch.exit_index >= k).sum()) for k in range(4)]
    assert list(batch.segment_samples) == ran[: len(batch.segment_samples)]


@pytest.mark.parametrize("backend", ["litert", "onnxruntime"])
def test_the_bound_chain_answers_as_the_sessions_do(bundle_dir, golden, backend):
    # predict runs the segments' batch-1 buffers (Session.link); Session.run gives the reference
    x, _ = golden
    engine = Engine.from_bundle(bundle_dir, backend=backend, threads=1)
    for policy in ("max_prob", "fixed", "ensemble"):
        engine.policy = make_policy(policy, 4, None if policy != "max_prob" else [0.6] * 3,
                                    exit_index=2 if policy == "fixed" else None)
        chain = [engine.predict(xi) for xi in x]
        assert engine._links is not None and len(engine._links) == 4
        ref = [engine._predict_sessions(xi) for xi in x]
        assert [(r.label, r.exit_index) for r in chain] == [(r.label, r.exit_index) for r in ref]
        np.testing.assert_allclose(np.stack([r.probs for r in chain]), np.stack([r.probs for r in ref]),
                                   atol=1e-6)
    engine.predict_batch(x)  # resizes LiteRT's buffers: the chain is bound again afterwards
    engine.timing = False
    again = engine.predict(x[0])
    assert again.segment_ns == () and again.label == chain[0].label
    with pytest.raises(InputError, match="NaN"):
        engine.predict(np.full_like(x[0], np.nan))


def test_policies(bundle_dir, golden):
    x, ref = golden
    for k in range(4):
        e = Engine.from_bundle(bundle_dir, backend="onnxruntime", policy="fixed", exit_index=k)
        b = e.predict_batch(x)
        assert (b.exit_index == k).all()
        assert (b.labels == ref[k].argmax(-1)).all()
        assert b.segment_samples == (len(x),) * (k + 1)
    ens = Engine.from_bundle(bundle_dir, backend="onnxruntime", policy="ensemble").predict_batch(x)
    assert (ens.exit_index == 3).all()  # no thresholds: every exit runs and is averaged
    np.testing.assert_allclose(ens.probs, np.mean([softmax(z) for z in ref], axis=0), atol=1e-4)
    zero = Engine.from_bundle(bundle_dir, backend="onnxruntime", thresholds=[0, 0, 0]).predict_batch(x)
    assert (zero.exit_index == 0).all() and zero.segment_samples == (len(x),)
    never = Engine.from_bundle(bundle_dir, backend="onnxruntime", policy="entropy",
                               thresholds=[-1, -1, -1]).predict_batch(x)
    assert (never.exit_index == 3).all()
    with pytest.raises(ConfigError, match="3 thresholds"):
        Engine.from_bundle(bundle_dir, backend="onnxruntime", thresholds=[0.5])
    with pytest.raises(ConfigError, match="unknown exit policy"):
        Engine.from_bundle(bundle_dir, backend="onnxruntime", policy="coinflip")


def test_threads_default_from_target_capped_at_cpus(bundle_dir):
    import os

    e = Engine.from_bundle(bundle_dir, backend="onnxruntime")
    want = load_manifest(bundle_dir).target.runtime.threads
    assert e.threads == min(want, len(os.sched_getaffinity(0)))


def test_rejects_bad_inputs(bundle_dir, golden):
    x, _ = golden
    e = Engine.from_bundle(bundle_dir, backend="onnxruntime")
    with pytest.raises(InputError, match=r"shape \[6, 256\]"):
        e.predict(x[0, :, :100])
    with pytest.raises(InputError, match="float32"):
        e.predict(x[0].astype(np.float64))
    bad = x[0].copy()
    bad[0, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        e.predict(bad)
    with pytest.raises(InputError, match="batch input"):
        e.predict_batch(x[0])
    with pytest.raises(InputError, match="empty"):
        e.predict_batch(x[:0])
    for v in (np.inf, -np.inf):
        worse = x[:3].copy()
        worse[1, 0, 0], worse[2, 1, 7] = v, np.nan
        with pytest.raises(InputError, match="window 1: input holds 1 NaN/Inf"):
            e.predict_batch(worse)  # the first bad window is named
    # finite values far beyond the training range are refused too (the bundle records the
    # range; one without it lets them through: tests/runtime/test_bad_inputs.py)
    loud = x[0] * np.float32(1e20)
    assert np.isinf(loud.reshape(-1).dot(loud.reshape(-1)))
    with pytest.raises(InputError, match="beyond"):
        e.check_input(loud, batch=False)
    # a non-contiguous window is checked and copied, not refused
    strided = np.asfortranarray(x[0])
    assert e.predict(strided).label == e.predict(x[0]).label


def test_refuses_a_tampered_file(bundle_copy):
    path = bundle_copy / "segment_1.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="segment_1.onnx does not match its sha256"):
        Engine.from_bundle(bundle_copy, backend="onnxruntime")


def test_refuses_a_missing_file(bundle_copy):
    (bundle_copy / "segment_2.tflite").unlink()
    with pytest.raises(BundleError, match="segment_2.tflite is listed .* but missing"):
        Engine.from_bundle(bundle_copy)


def _edit_manifest(root, edit):
    path = root / "manifest.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def test_refuses_an_unknown_schema_version(bundle_copy):
    _edit_manifest(bundle_copy, lambda d: d.update(schema_version=99))
    with pytest.raises(BundleError, match="schema version 99"):
        Engine.from_bundle(bundle_copy)


def test_refuses_segments_that_do_not_chain(bundle_copy):
    def edit(d):
        d["segments"][2]["input_shape"] = [7, 7]

    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match="do not chain: segment 1 returns feat_1"):
        Engine.from_bundle(bundle_copy)


def test_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json not found"):
        Engine.from_bundle(tmp_path)


def test_refuses_a_backend_whose_format_is_missing(bundle_copy):
    def edit(d):
        for s in d["segments"]:
            s["artifacts"] = [a for a in s["artifacts"] if a["format"] == "onnx"]

    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match="re-export with --formats tflite"):
        Engine.from_bundle(bundle_copy, backend="litert")


def test_engine_predictions_match_the_pytorch_model(bundle_dir, tiny_checkpoint, golden):
    """What the device answers is what PyTorch answers at the exit the device stopped at."""
    x, _ = golden
    model = load_checkpoint(tiny_checkpoint).model
    with torch.no_grad():
        ref = [z.numpy() for z in model(torch.from_numpy(x))]
    b = Engine.from_bundle(bundle_dir, backend="litert").predict_batch(x)
    for i, k in enumerate(b.exit_index):
        assert b.labels[i] == ref[k][i].argmax()


@pytest.mark.parametrize("backend", BACKENDS)
def test_runtime_runs_without_torch_or_onnx(bundle_dir, backend):
    code = (
        "import sys, numpy as np\n"
        "sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
        "from edgeexit.runtime.engine import Engine\n"
        "from edgeexit.runtime.verify import verify_bundle\n"
        "from edgeexit.runtime.profile import bench_engine\n"
        f"e = Engine.from_bundle(sys.argv[1], backend='{backend}', load_monolithic=True)\n"
        "x = np.load(sys.argv[1] + '/golden.npz')['inputs']\n"
        "r = e.predict(x[0]); b = e.predict_batch(x)\n"
        "assert verify_bundle(sys.argv[1], backend=e.backend).ok\n"
        "bench_engine(e, x[:4], warmup=1)\n"
        "heavy = [m for m in ('torch', 'onnx', 'tensorflow') if sys.modules.get(m) is not None]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(bundle_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""


def _old_step(name, t, k, z, last, acc, w=(1.0, 2.0, 3.0, 4.0)):
    """The batch-1 decision and answer as Policy.step computed them before stop/answer were split
    (commit bc88a2b): (stops, answer list)."""
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    inv = 1.0 / s
    probs = [v * inv for v in e]
    if name == "ensemble":
        ws = sum(w[: k + 1])
        inv = w[k] / s
        acc[:] = [v * inv for v in e] if k == 0 else [a + v * inv for a, v in zip(acc, e)]
        stop = k >= last or max(acc) >= t[k] * ws
        return stop, [a * (1.0 / ws) for a in acc]
    if k >= last:
        return True, probs
    if name == "entropy":
        d = [v - m for v in z]
        return math.log(s) - sum([a * b for a, b in zip(e, d)]) * inv <= t[k], probs
    if name == "fixed":
        return k >= 1, probs
    return s <= 1.0 / t[k], probs  # max_prob, and budget (mJ, never over) with thresholds


@pytest.mark.parametrize("backend", BACKENDS)
def test_answers_are_those_of_the_policy_arithmetic_before_the_split(bundle_dir, golden, backend):
    # predict decides with Policy.stop and makes the answer lazily: labels, exits and the answer
    # distribution are bit for bit those of the previous Policy.step, for every policy
    x0, _ = golden
    rng = np.random.default_rng(0)
    x = np.concatenate([x0, x0[rng.integers(0, len(x0), 48)] * rng.uniform(0.3, 1.5, (48, 1, 1))])
    x = x.astype(np.float32)
    engine = Engine.from_bundle(bundle_dir, backend=backend, threads=1)
    logits = [[z[0].tolist() for z in engine.run_all(xi[None])[0]] for xi in x]
    probs = [[softmax(np.array(z, np.float64)) for z in row] for row in logits]
    conf = [[p.max() for p in row] for row in probs]
    t = [float(np.median([c[k] for c in conf])) for k in range(3)]
    ent = [float(np.median([-(p[k] * np.log(p[k])).sum() for p in probs])) for k in range(3)]
    policies = {
        "max_prob": make_policy("max_prob", 4, t),
        "entropy": make_policy("entropy", 4, ent),
        "ensemble": make_policy("ensemble", 4, t, weights=(1.0, 2.0, 3.0, 4.0)),
        "fixed": make_policy("fixed", 4, exit_index=1),
        "budget": make_policy("budget", 4, t, budget={"limit": 100.0, "unit": "mJ",
                                                      "segment_costs": [1.0] * 4}),
    }
    for name, policy in policies.items():
        engine.policy = policy
        seen = set()
        for xi, row in zip(x, logits):
            r = engine.predict(xi)
            acc = []
            for k, z in enumerate(row):
                stop, want = _old_step(name, ent if name == "entropy" else t, k, z, 3, acc)
                if stop:
                    break
            seen.add(k)
            assert (r.exit_index, r.label) == (k, want.index(max(want))), name
            assert r.probs.tolist() == np.asarray(want, np.float32).tolist(), name
        assert name == "fixed" or len(seen) >= 2, (name, seen)  # windows leave at several exits


def test_result_dict_probs_are_the_float32_answer_rounded_bit_for_bit():
    """``to_dict``'s probs skip the array and ``round(p, 6)`` (see ``_rounded_probs``): they equal
    ``[round(p, 6) for p in probs.tolist()]`` of the float32 answer, for the lazy softmax, a list
    and an array answer, on values next to every kind of tie of the sixth decimal, NaN and Inf."""
    rng = np.random.default_rng(0)
    ties = ((rng.integers(0, 10**6, 4000) + 0.5) / 1e6).astype(np.float32)
    near = np.concatenate([np.nextafter(ties, np.float32(0)), ties, np.nextafter(ties, np.float32(1))])
    rows = np.concatenate([near, rng.random(3000).astype(np.float32),
                           np.float32([0, 1, 5e-7, 1.5e-6, 2.5e-6, 1e-7, 0.5, 3.5e-6, np.nan, np.inf])]).reshape(-1, 5)
    for row in rows:
        want = [round(p, 6) for p in np.asarray(row, np.float32).tolist()]
        got = [ExitResult(0, "N", answer, 0, ()).to_dict()["probs"]
               for answer in (row.astype(np.float64).tolist(), row, row.astype(np.float64))]
        assert all(g == want or (np.isnan(want).any() and np.array_equal(g, want, equal_nan=True))
                   for g in got)
    for z in rng.normal(0, 8, (2000, 5)).tolist():  # the engine's lazy answer: exit logits
        lazy = ExitResult(0, "N", None, 0, (1234,), z)
        assert lazy.to_dict()["probs"] == [round(p, 6) for p in
                                           np.asarray(softmax_list(z), np.float32).tolist()]
    d = ExitResult(2, "V", None, 1, (1000, 2051), [0.0, 1.0, 3.0]).to_dict({"beat": 7})
    assert list(d) == ["beat", "label", "label_index", "exit", "probs", "segment_us"]
    assert d["segment_us"] == [1.0, 2.1] and d["label"] == "V" and d["exit"] == 1

"""Would fusing the segments and the exit policy into one LiteRT graph pay? Measured, side by side.

At batch 1 every segment call has a fixed cost (the Python call into the interpreter, copies, the
decision in Python). This study builds a *cascade* from a bundle's own ``segment_{k}.tflite``
files: one TFLite graph in which LiteRT's ``IF`` operator (control flow in the TFLite schema)
runs segment k+1 only when exit k's statistic is below its threshold, so a window costs one
``invoke`` whichever exit answers. It checks that the cascade gives the engine's answers on the
bundle's golden inputs, then times, in rotating blocks on the same windows: the engine's
``predict`` (segment by segment), the cascade, and the monolithic graph.

    .venv/bin/python tools/cascade_study.py runs/quickstart/bundle
    .venv/bin/python tools/cascade_study.py runs/mitdb-seed4/bundle-max_prob --limit 4000

Findings on the 2026-12-01 AMD EPYC host (one thread; policy / monolithic, segments -> cascade):
the pruned quick-start bundle with exits 1,3: 0.808 -> 0.716; mobilenet1d quick start (exits
1,2): 1.004 -> 0.910; MIT-BIH seed 4 (4 segments, 91% leave at exit 0): max_prob 0.360 -> 0.340,
ensemble 0.382 -> 0.350, int8 seed 1: 0.704 -> 0.661; but the pruned quick start with all four
exits (66% leave at exit 1, behind two IF levels): 1.022 -> 1.069, slower. Each IF a window passes
costs about what a Python segment call does, so the cascade pays only where nearly every window
leaves at the first decision; it is a measured option, not part of the runtime.

The graph, for segments 0..n-1 (subgraph k runs segment k; the last has no decision)::

    subgraph k (k < n-1):  h_{k-1} [, acc_{k-1}] -> segment k -> feat_k, z_k
        p_k = SOFTMAX(z_k)                       max_prob:  a_k = p_k
                                                 ensemble:  a_k = acc_{k-1} + w_k p_k
        stop = REDUCE_MAX(a_k) >= limit_k        (max_prob: t_k; ensemble: t_k * sum w_0..k)
        IF stop: stop_at_k(feat_k, a_k)  ->  (a_k * scale_k, k)
        else:    subgraph k+1(feat_k, a_k)
    outputs: probs [1, K] (the answer distribution, as Policy.step returns it), exit [1] float32

Policies: ``max_prob``, ``ensemble`` and ``fixed``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeexit.runtime.backends.base import BackendError

POLICIES = ("max_prob", "ensemble", "fixed")
"""Policies the cascade implements."""

PROBS, EXIT = "probs", "exit"
"""Signature names of the cascade's two outputs."""


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError as exc:  # tflite_runtime has no schema tools: segment by segment
        raise BackendError(f"the cascade needs ai_edge_litert's flatbuffer tools ({exc})") from exc
    return schema, flatbuffer_utils


def cascade_constants(policy) -> tuple[int, list[float], list[float], list[float]]:
    """``(last, weights, limits, scales)`` of the cascade for ``policy`` (an
    :class:`edgeexit.runtime.policy.Policy`): ``last`` is the segment that always answers, and
    per segment the weight of its softmax in the running sum, the limit its max is compared
    with (``inf``: never stops there) and the factor that turns the sum into the answer."""
    n = policy.num_exits
    name = policy.name
    if name == "max_prob":
        return n - 1, [1.0] * n, [float(t) for t in policy.thresholds] + [math.inf], [1.0] * n
    if name == "ensemble":
        w = list(policy.weights or (1.0,) * n)
        total = [sum(w[: k + 1]) for k in range(n)]
        t = policy.thresholds
        limits = [math.inf] * n if t is None else [float(v) * total[k] for k, v in enumerate(t)] + [math.inf]
        return n - 1, w, limits, [1.0 / s for s in total]
    if name == "fixed":
        return policy.exit_index, [1.0] * n, [math.inf] * n, [1.0] * n
    raise BackendError(f"the cascade has no {name} policy (it runs {', '.join(POLICIES)})")


def build_cascade(segments: Sequence[bytes], policy) -> bytes:
    """One TFLite flatbuffer that runs ``segments`` (the bundle's segment files, in order) under
    ``policy`` and returns ``probs`` [1, K] and ``exit`` [1] (see the module docstring).

    Raises:
        BackendError: the schema tools are missing, the policy is not one of :data:`POLICIES`,
            or a segment file is not a one-subgraph segment (one input; ``feat``, ``logits``).
    """
    fb, utils = _schema()
    last, weights, limits, scales = cascade_constants(policy)
    ensemble = policy.name == "ensemble"
    srcs = [utils.read_model_from_bytearray(bytearray(b)) for b in segments[: last + 1]]
    for k, m in enumerate(srcs):
        sg = m.subgraphs[0] if len(m.subgraphs) == 1 else None
        want = 1 if k == len(segments) - 1 else 2
        if sg is None or len(sg.inputs) != 1 or len(sg.outputs) < (1 if k == last else want):
            raise BackendError(f"segment {k} is not a one-subgraph TFLite segment; the cascade "
                               "needs the files edgeexit export writes")
    F32, BOOL, I32 = fb.TensorType.FLOAT32, fb.TensorType.BOOL, fb.TensorType.INT32
    Op = fb.BuiltinOperator
    model = fb.ModelT()
    model.version = srcs[0].version
    model.description = "edgeexit cascade"
    model.operatorCodes, model.buffers, model.subgraphs = [], [fb.BufferT()], []

    def opcode(builtin: int, version: int = 1, like=None) -> int:
        for i, oc in enumerate(model.operatorCodes):
            if utils.get_builtin_code_from_operator_code(oc) == builtin and oc.version == version:
                return i
        oc = copy.deepcopy(like) if like is not None else fb.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = builtin, min(builtin, 127), version
        model.operatorCodes.append(oc)
        return len(model.operatorCodes) - 1

    def buffer(data: bytes | None = None) -> int:
        b = fb.BufferT()
        if data is not None:
            b.data = np.frombuffer(data, np.uint8).copy()
        model.buffers.append(b)
        return len(model.buffers) - 1

    def tensor(sg, shape, ttype, name, value: np.ndarray | None = None) -> int:
        t = fb.TensorT()
        t.shape, t.type, t.name = [int(d) for d in shape], ttype, name
        t.buffer = buffer(None if value is None else value.tobytes())
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    def const(sg, name, value: float) -> int:
        return tensor(sg, [1], F32, name, np.array([value], np.float32))

    def op(sg, builtin, ins, outs, options_type=0, options=None) -> None:
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = opcode(builtin), list(ins), list(outs)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        sg.operators.append(o)

    def new_subgraph(name: str):
        sg = fb.SubGraphT()
        sg.name, sg.tensors, sg.operators = name, [], []
        model.subgraphs.append(sg)
        return sg

    def import_segment(src, sg) -> tuple[int, list[int]]:
        s, base = src.subgraphs[0], len(sg.tensors)
        for t in s.tensors:
            t = copy.deepcopy(t)
            data = src.buffers[t.buffer].data if t.buffer else None
            t.buffer = buffer(None if data is None else bytes(data)) if t.buffer else 0
            sg.tensors.append(t)
        for o in s.operators:
            o = copy.deepcopy(o)
            oc = src.operatorCodes[o.opcodeIndex]
            o.opcodeIndex = opcode(utils.get_builtin_code_from_operator_code(oc), oc.version, oc)
            o.inputs = [i + base if i >= 0 else i for i in o.inputs]
            o.outputs = [i + base for i in o.outputs]
            if o.intermediates is not None:
                o.intermediates = [i + base for i in o.intermediates]
            sg.operators.append(o)
        return int(s.inputs[0]) + base, [int(i) + base for i in s.outputs]

    def softmax(sg, z, shape, k) -> int:
        p = tensor(sg, shape, F32, f"probs_{k}")
        opt = fb.SoftmaxOptionsT()
        opt.beta = 1.0
        op(sg, Op.SOFTMAX, [z], [p], fb.BuiltinOptions.SoftmaxOptions, opt)
        return p

    def binary(sg, builtin, a, b, shape, name, options_type, options) -> int:
        out = tensor(sg, shape, F32, name)
        op(sg, builtin, [a, b], [out], options_type, options)
        return out

    def mul(sg, a, b, shape, name) -> int:
        return binary(sg, Op.MUL, a, b, shape, name, fb.BuiltinOptions.MulOptions, fb.MulOptionsT())

    # subgraph k runs segment k (k <= last); stop_at_k (k < last) answers at exit k
    levels = [new_subgraph(f"segment_{k}") for k in range(last + 1)]
    stops = [new_subgraph(f"stop_at_{k}") for k in range(last)]
    for k, sg in enumerate(levels):
        inp, outs = import_segment(srcs[k], sg)
        z = outs[-1]
        shape = list(sg.tensors[z].shape)
        sg.inputs = [inp]
        carried = None
        if k > 0:  # the running answer of the exits before (the ensemble's; unused by max_prob)
            carried = tensor(sg, shape, F32, f"acc_{k - 1}")
            sg.inputs.append(carried)
        a = softmax(sg, z, shape, k)
        if ensemble:
            if weights[k] != 1.0:
                a = mul(sg, a, const(sg, f"w_{k}", weights[k]), shape, f"weighted_{k}")
            if carried is not None:
                a = binary(sg, Op.ADD, a, carried, shape, f"acc_{k}", fb.BuiltinOptions.AddOptions,
                           fb.AddOptionsT())
        if k == last:
            if scales[k] != 1.0:
                a = mul(sg, a, const(sg, f"scale_{k}", scales[k]), shape, f"answer_{k}")
            sg.outputs = [a, const(sg, f"exit_{k}", float(k))]
            continue
        feat = outs[0]
        if math.isinf(limits[k]):  # never stops here (fixed, or an ensemble without thresholds)
            nxt = None
        else:
            axis = tensor(sg, [1], I32, f"axis_{k}", np.array([len(shape) - 1], np.int32))
            m = tensor(sg, shape[:-1], F32, f"max_{k}")
            ro = fb.ReducerOptionsT()
            ro.keepDims = False
            op(sg, Op.REDUCE_MAX, [a, axis], [m], fb.BuiltinOptions.ReducerOptions, ro)
            stop = tensor(sg, shape[:-1], BOOL, f"stop_{k}")
            op(sg, Op.GREATER_EQUAL, [m, const(sg, f"limit_{k}", limits[k])], [stop],
               fb.BuiltinOptions.GreaterEqualOptions, fb.GreaterEqualOptionsT())
            nxt = stop
        probs_out = tensor(sg, shape, F32, f"answer_{k}")
        exit_out = tensor(sg, [1], F32, f"exit_{k}")
        io = fb.IfOptionsT()
        io.thenSubgraphIndex = len(levels) + k
        io.elseSubgraphIndex = k + 1
        if nxt is None:  # always on: IF on a constant false keeps one shape of graph
            nxt = tensor(sg, [1], BOOL, f"go_on_{k}", np.array([False], np.bool_))
        op(sg, Op.IF, [nxt, feat, a], [probs_out, exit_out], fb.BuiltinOptions.IfOptions, io)
        sg.outputs = [probs_out, exit_out]
        # stop_at_k: (feat_k, a_k) -> (a_k * scale_k, k)
        st = stops[k]
        f_in = tensor(st, sg.tensors[feat].shape, F32, f"feat_{k}")
        a_in = tensor(st, shape, F32, f"acc_{k}")
        st.inputs = [f_in, a_in]
        answer = a_in if scales[k] == 1.0 else mul(st, a_in, const(st, f"scale_{k}", scales[k]),
                                                   shape, f"answer_{k}")
        st.outputs = [answer, const(st, f"exit_{k}", float(k))]

    sd = fb.SignatureDefT()
    sd.signatureKey, sd.subgraphIndex = "serving_default", 0
    maps = []
    for name, idx in (("input", levels[0].inputs[0]), (PROBS, levels[0].outputs[0]),
                      (EXIT, levels[0].outputs[1])):
        tm = fb.TensorMapT()
        tm.name, tm.tensorIndex = name, int(idx)
        maps.append(tm)
    sd.inputs, sd.outputs = maps[:1], maps[1:]
    model.signatureDefs = [sd]
    return bytes(utils.convert_object_to_bytearray(model))


class CascadeSession:
    """The cascade loaded into a LiteRT interpreter: ``run(x [1, ...]) -> (probs list, exit)``.

    Holds zero-copy views of the input and the two outputs (as
    :class:`edgeexit.runtime.backends.litert.LiteRTSession` does) and calls the native ``Invoke``.
    """

    def __init__(self, model: bytes, threads: int, policy) -> None:
        from edgeexit.runtime.backends.litert import _import_interpreter

        interpreter_cls, _ = _import_interpreter()
        try:
            it = interpreter_cls(model_content=model, num_threads=threads)
            it.allocate_tensors()
            self._it = it
            inputs, outputs = it.get_input_details(), it.get_output_details()
            self._in_view = it.tensor(int(inputs[0]["index"]))()
            views = [it.tensor(int(d["index"]))() for d in outputs]
        except Exception as exc:
            raise BackendError(f"LiteRT cannot load the cascade ({exc})") from exc
        # the subgraph's outputs are [probs, exit], in that order
        self._probs, self._exit = views[0], views[1]
        self._invoke = it._interpreter.Invoke
        self.policy = policy  # the policy whose constants the graph holds
        self.input_shape = tuple(int(d) for d in inputs[0]["shape"])

    def run(self, x: np.ndarray) -> tuple[list[float], int]:
        """The answer distribution (Python floats) and the exit that gave it, for ``x [1, ...]``
        (float32, C-contiguous, checked by the caller)."""
        self._in_view[...] = x
        self._invoke()
        return self._probs.tolist()[0], int(self._exit[0])


def compare(engine, session: CascadeSession, x: np.ndarray) -> tuple[int, float]:
    """How many windows of ``x`` the cascade sends to another exit than ``engine.predict``, and
    the largest difference of their answers."""
    worst, differ = 0.0, 0
    for xi in x:
        r = engine.predict(xi)
        probs, k = session.run(xi[None])
        worst = max(worst, float(np.abs(np.asarray(probs) - r.probs).max()))
        differ += int(k != r.exit_index)
    return differ, worst


def main() -> None:
    from edgeexit.runtime.engine import Engine
    from edgeexit.data.bench import bench_data

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", help="bundle directory with .tflite segments and a monolithic graph")
    p.add_argument("--limit", type=int, default=2000, help="windows (seeded sample of the test side)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--block", type=int, default=32, help="windows per path per block")
    p.add_argument("--json", action="store_true", help="print JSON only")
    a = p.parse_args()
    from edgeexit.errors import EdgeExitError

    try:
        engine = Engine.from_bundle(a.bundle, backend="litert", threads=a.threads,
                                    load_monolithic=True)
    except EdgeExitError as e:
        raise SystemExit(f"error: {e}") from None
    files = [s.artifact("tflite").file for s in engine.manifest.segments]
    root = Path(a.bundle)
    casc = CascadeSession(build_cascade([(root / f).read_bytes() for f in files], engine.policy),
                          a.threads, engine.policy)
    x, _, desc = bench_data(engine, None, "test", a.limit)
    differ, worst = compare(engine, casc, x)  # its time means nothing unless it answers alike
    n = len(x)
    t = {name: np.zeros(n, np.int64) for name in ("segments", "cascade", "monolithic")}
    clock = time.perf_counter_ns

    def seg(i):
        t0 = clock()
        engine.predict(x[i])
        t["segments"][i] = clock() - t0

    def cas(i):
        t0 = clock()
        engine.check_input(x[i], batch=False)  # the engine's input check, as predict pays it
        casc.run(x[i][None])
        t["cascade"][i] = clock() - t0

    def mono(i):
        t0 = clock()
        engine.run_monolithic(x[i][None])
        t["monolithic"][i] = clock() - t0

    paths = (seg, cas, mono)
    for i in range(min(n, 100)):
        for f in paths:
            f(i)
    for b, start in enumerate(range(0, n, a.block)):
        for j in range(3):
            f = paths[(b + j) % 3]
            for i in range(start, min(start + a.block, n)):
                f(i)
    means = {k: float(v.mean()) / 1e3 for k, v in t.items()}
    exits = np.bincount([engine.predict(xi).exit_index for xi in x], minlength=len(files))
    out = {
        "bundle": a.bundle, "windows": n, "data": desc, "policy": engine.policy.describe(),
        "exits_taken": [round(float(v) / n, 4) for v in exits],
        "cascade_check": {"exit_differs": differ, "max_abs_prob_diff": worst},
        "mean_us": {k: round(v, 2) for k, v in means.items()},
        "p50_us": {k: round(float(np.median(v)) / 1e3, 2) for k, v in t.items()},
        "ratios": {"segments_vs_monolithic": round(means["segments"] / means["monolithic"], 4),
                   "cascade_vs_monolithic": round(means["cascade"] / means["monolithic"], 4),
                   "cascade_vs_segments": round(means["cascade"] / means["segments"], 4)},
    }
    if a.json:
        print(json.dumps(out))
        return
    print(f"{a.bundle}: {n} windows, policy {out['policy']}, exits taken {out['exits_taken']}")
    print(f"cascade check: {differ} exits differ, answers within {worst:.2g}")
    print(f"{'path':12} {'mean us':>8} {'p50 us':>8}")
    for k in t:
        print(f"{k:12} {out['mean_us'][k]:8.2f} {out['p50_us'][k]:8.2f}")
    r = out["ratios"]
    print(f"policy / monolithic: segments {r['segments_vs_monolithic']:.3f}, cascade "
          f"{r['cascade_vs_monolithic']:.3f} (cascade / segments {r['cascade_vs_segments']:.3f})")


if __name__ == "__main__":
    main()

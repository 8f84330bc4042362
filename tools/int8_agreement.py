"""Top-1 agreement of a bundle's files with the PyTorch model, per exit, on the test split.

Runs the checkpoint in PyTorch and the bundle's chained segments (every format it holds, every
exit: no early exit) on the test side of the data recorded in the bundle, and prints, per exit,
the fraction of windows whose top-1 class agrees, the accuracy of both, and the max logit error.

    python tools/int8_agreement.py runs/mitdb-seed2/model.pt runs/mitdb-seed2/bundle-int8
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from edgeexit.checkpoint import load_checkpoint
from edgeexit.data import DataSpec, load_split
from edgeexit.runtime.backends import backend_for_format
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.manifest import load_manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("bundle")
    ap.add_argument("--split", default="test", choices=["test", "train"])
    ap.add_argument("--limit", type=int, default=None, help="seeded random sample of this many windows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    manifest = load_manifest(args.bundle)
    spec = DataSpec.from_dict(manifest.provenance.data)
    data = load_split(spec, args.split)
    x, y = data.x.astype(np.float32), data.y
    if args.limit and args.limit < len(x):
        idx = np.sort(np.random.default_rng(0).choice(len(x), args.limit, replace=False))
        x, y = x[idx], y[idx]
    model = load_checkpoint(args.checkpoint).model.eval()
    torch.set_num_threads(2)
    with torch.no_grad():
        ref = [np.concatenate(z) for z in zip(*[
            [t.numpy() for t in model(torch.from_numpy(x[i : i + 2048]))] for i in range(0, len(x), 2048)
        ])]
    report = {"bundle": args.bundle, "precision": manifest.precision, "samples": int(len(x)),
              "data": f"{spec.source} ({args.split})", "formats": {}}
    for fmt in manifest.formats:
        engine = Engine.from_bundle(args.bundle, backend=backend_for_format(fmt).name, threads=2)
        parts = [engine.run_all(np.ascontiguousarray(x[i : i + 1024]))[0] for i in range(0, len(x), 1024)]
        got = [np.concatenate([p[k] for p in parts]) for k in range(manifest.num_exits)]
        report["formats"][fmt] = [
            {
                "exit": k,
                "top1_agreement": round(float((a.argmax(-1) == b.argmax(-1)).mean()), 5),
                "accuracy_bundle": round(float((a.argmax(-1) == y).mean()), 5),
                "accuracy_pytorch": round(float((b.argmax(-1) == y).mean()), 5),
                "max_abs_logit_err": round(float(np.abs(a - b).max()), 4),
            }
            for k, (a, b) in enumerate(zip(got, ref))
        ]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['bundle']}: {report['precision']}, {report['samples']} windows of {report['data']}")
        for fmt, rows in report["formats"].items():
            for r in rows:
                print(f"  {fmt:7} exit {r['exit']}: top-1 agreement {100 * r['top1_agreement']:.2f}%, "
                      f"accuracy {100 * r['accuracy_bundle']:.2f}% (PyTorch {100 * r['accuracy_pytorch']:.2f}%), "
                      f"max |logit err| {r['max_abs_logit_err']}")
    worst = min(r["top1_agreement"] for rows in report["formats"].values() for r in rows)
    return 0 if worst >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())

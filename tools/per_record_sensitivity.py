"""Per-record sensitivity of checkpoints' final exit on MIT-BIH records (default: DS2's records).

On DS2, 1,382 of the 1,837 S beats are in record 232, so a model's S sensitivity (and much of
its macro-F1) is mostly whether it finds that one patient's S beats. This prints, for every
checkpoint and record holding at least ``--min-beats`` beats of ``--cls``, the share of them
that the final exit labels as that class (and the same over the other records), and a JSON
summary on stdout.

    .venv/bin/python tools/per_record_sensitivity.py runs/cv-fusion/final-fused-16ep-seed{0,1,2,3,4}/model.pt \\
        --mitdb ../shared/data/mitdb
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from edgeexit.checkpoint import load_checkpoint
from edgeexit.data.mitbih import DS2, load_mitbih
from edgeexit.train import predict_exits


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--mitdb", default="../shared/data/mitdb")
    p.add_argument("--records", default=",".join(DS2), help="comma-separated record names (default DS2)")
    p.add_argument("--min-beats", type=int, default=20, help="show records with at least this many")
    p.add_argument("--cls", default="S", help="the class whose sensitivity is shown")
    a = p.parse_args()
    torch.set_num_threads(1)
    records = a.records.split(",")
    out = {"class": a.cls, "checkpoints": {}}
    data, shown, c = None, [], 0
    for path in a.checkpoints:
        ckpt = load_checkpoint(path)
        spec = ckpt.input_spec
        if data is None:  # the windows of the first checkpoint's input (all must take the same)
            data = load_mitbih(a.mitdb, records=records, window=int(spec["shape"][-1]),
                               morph_context=bool(spec.get("morph_context", False)),
                               rr_context=bool(spec.get("rr_context", True)))
            c = data.classes.index(a.cls)
            counts = {r: int(((data.groups == r) & (data.y == c)).sum()) for r in records}
            shown = [r for r in records if counts[r] >= a.min_beats]
            out["beats"] = {r: counts[r] for r in shown}
            out["beats"]["others"] = sum(n for r, n in counts.items() if r not in shown)
        pred = predict_exits(ckpt.model, data.x)[-1].argmax(-1)  # the final exit's labels
        row = {}
        for r in [*shown, "others"]:
            k = (~np.isin(data.groups, shown) if r == "others" else data.groups == r) & (data.y == c)
            row[r] = round(float((pred[k] == c).mean()), 4) if k.any() else None
        out["checkpoints"][path] = row
        print(path + ": " + " ".join(f"{r} {'-' if v is None else f'{100 * v:.0f}%'}" for r, v in row.items()),
              file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    from edgeexit.errors import EdgeExitError

    try:
        sys.exit(main())
    except EdgeExitError as e:  # a missing directory or checkpoint: one line, not a traceback
        raise SystemExit(f"error: {e}") from None

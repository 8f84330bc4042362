"""A trained MIT-BIH model's DS2 macro-F1 as saved and with its BatchNorm statistics recomputed.

Tells a model whose answers went wrong through its BatchNorm running statistics (which follow
training's last, augmented steps) from one whose weights are wrong: the statistics are recomputed
as the exact average over ``--batches`` clean DS1 batches (:func:`edgeexit.train.recalibrate_batchnorm`),
the weights stay as they are. A diagnostic of a model already tested on DS2, not a way to choose
one (that is ``train --cv``'s job, on DS1 alone).

    .venv/bin/python tools/bn_recalibrate_check.py runs/cv-search/final-morph-rrscale-rraug-warp-16ep-seed4/model.pt
"""

from __future__ import annotations

import argparse
import json

import torch

from edgeexit.checkpoint import load_checkpoint
from edgeexit.data.mitbih import load_mitbih_split
from edgeexit.errors import EdgeExitError
from edgeexit.metrics import headline_macro_f1
from edgeexit.train import evaluate_exits, recalibrate_batchnorm


def _score(model, ds) -> dict:
    model.eval()
    r = evaluate_exits(model, ds)[-1]  # the final exit
    return {"macro_f1": round(headline_macro_f1(r), 4), "accuracy": round(float(r["accuracy"]), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="model.pt trained on MIT-BIH DS1")
    p.add_argument("--mitdb", default="../shared/data/mitdb", help="WFDB directory")
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    a = p.parse_args()
    torch.set_num_threads(1)
    try:
        ck = load_checkpoint(a.checkpoint)
    except EdgeExitError as e:
        raise SystemExit(f"error: {e}") from None
    spec = ck.input_spec
    train, test = load_mitbih_split(a.mitdb, window=int(spec.get("window", 256)),
                                    rr_context=bool(spec.get("rr_context", True)),
                                    morph_context=bool(spec.get("morph_context")))
    out = {"checkpoint": a.checkpoint, "as_saved": _score(ck.model, test)}
    n = recalibrate_batchnorm(ck.model, train.x, a.batches, a.batch_size)
    out["recalibrated"] = {**_score(ck.model, test), "windows": n}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

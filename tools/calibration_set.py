"""Print the ``[set]`` table that stores a recipe's calibration windows for one checkpoint's data.

The indices the recipe's rule picks from the checkpoint's training part (validation held out),
and the sha256 of the float32 array they give; paste the output at the end of the recipe so that
export reuses exactly that set and checks it:

    python tools/calibration_set.py calibration/synthetic.toml runs/quickstart/model.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from edgeexit.checkpoint import load_checkpoint
from edgeexit.export.bundle import _calibration_set, _training_data
from edgeexit.export.recipes import load_recipe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("checkpoint")
    args = ap.parse_args(argv)
    recipe = dataclasses.replace(load_recipe(args.recipe), stored=None)
    ckpt = load_checkpoint(args.checkpoint)
    spec, train_part, _ = _training_data(ckpt, None)
    cset = _calibration_set(recipe, ckpt, spec, train_part, None)
    made_for = (f"{spec.source} n_beats={spec.n_beats} seed={spec.seed} window={spec.window} "
                f"rr_context={str(spec.rr_context).lower()}, the training part of {args.checkpoint}")
    print("[set]")
    print(f'made_for = "{made_for}"')
    print(f'sha256 = "{cset.sha256}"')
    rows = [", ".join(map(str, cset.indices[i : i + 16])) for i in range(0, len(cset.indices), 16)]
    print("indices = [\n  " + ",\n  ".join(rows) + ",\n]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

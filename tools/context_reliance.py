"""How much of a model's answer comes from the unattacked RR context, not the waveform.

Under the waveform-only threat model the attacker controls the signal channels and never the RR
context. A model that leans on the context keeps accuracy however the waveform is attacked. Two
checks on the final exit, on a seeded random sample of windows:

- flattened: the signal channels replaced by a flat line (what the context alone gives);
- donor swap: each window's waveform moved toward the waveform of a beat of ANOTHER class (N, S
  or V), the difference clipped to +-EPS mV, keeping the window's own RR context; a window
  counts as correct only if all DONORS swaps leave it correct.

    .venv/bin/python tools/context_reliance.py runs/robust-full/neokd-eps0.2-seed0/model.pt \\
        --data runs/robust-full/data/ds2.npz
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def measure(checkpoint: str, data: str, n: int = 400, eps: float = 2.0, donors: int = 20,
            seed: int = 0) -> dict:
    import torch

    from edgeexit.checkpoint import load_checkpoint
    from edgeexit.data import load_source

    torch.set_num_threads(1)
    ck = load_checkpoint(checkpoint)
    model = ck.model.eval()
    d = load_source(data)
    s = int(ck.input_spec.get("signal_channels", 1))
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(d), size=min(n, len(d)), replace=False)
    x = torch.from_numpy(d.x[idx])
    y = torch.from_numpy(d.y[idx])
    pool = np.flatnonzero(np.isin(d.y, [d.classes.index(c) for c in ("N", "S", "V")
                                        if c in d.classes]))
    with torch.no_grad():
        clean = model(x)[-1].argmax(1) == y
        flat = x.clone()
        flat[:, :s] = 0.0
        flattened = model(flat)[-1].argmax(1) == y
        survive = clean.clone()
        for _ in range(donors):
            pick = np.array([rng.choice(pool[d.y[pool] != int(t)]) for t in y])
            delta = (torch.from_numpy(d.x[pick]) - x)[:, :s].clamp(-eps, eps)
            swapped = x.clone()
            swapped[:, :s] += delta
            survive &= model(swapped)[-1].argmax(1) == y
    return {"checkpoint": checkpoint, "windows": len(idx), "eps_mV": eps, "donors": donors,
            "accuracy_clean": float(clean.float().mean()),
            "accuracy_flattened": float(flattened.float().mean()),
            "accuracy_donor_swap": float(survive.float().mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="windows with labels (.npz, WFDB dir, ...)")
    ap.add_argument("--windows", type=int, default=400)
    ap.add_argument("--eps", type=float, default=2.0, help="clip of the swap (mV)")
    ap.add_argument("--donors", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    r = measure(args.checkpoint, args.data, args.windows, args.eps, args.donors, args.seed)
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""int8 calibration sets: recipes (``calibration/*.toml``) and the samples they pick.

A recipe says which training beats calibrate the int8 scales and how the files are quantized::

    description = "..."
    data = "checkpoint"          # the data the checkpoint was trained on; or "synthetic", or a
                                 # data source (WFDB directory, .npz/.csv), relative to the cwd
    split = "train"              # the only side allowed: never validation (thresholds), never test
    samples = 512                # how many windows
    selection = "class-balanced" # or "stratified-by-record", "random"
    seed = 0
    short_classes = "error"      # class-balanced: "error" when a class has too few beats, or
                                 # "take-all" (take them all, spread the rest over the others)

    [quantization]
    method = "minmax"            # onnx: "minmax", "percentile" or "entropy" (onnxruntime's
                                 # calibrators); tflite always uses its PT2E observers
    per_channel = true           # one weight scale per output channel
    float_heads = true           # onnx: keep every exit head in float (the stage is int8)

    [set]                        # optional: the stored representative set of the built-in data
    indices = [...]              # indices into the pool (the training part of that data)
    sha256 = "..."               # of the float32 array those indices pick (checked at export)
    made_for = "..."             # which data the indices refer to, in words

The pool is the training part of the data (``data = "checkpoint"`` or the same source as the
checkpoint: the part training kept after holding out its validation beats), else the training
side of the other source. The stored set keeps the repository small: the synthetic generator is
deterministic, so indices plus the sha256 of the picked array reproduce and check the set exactly
(a 512-window float32 set would be 4 MiB of noise that does not compress).

Recipes are looked up in ``$EDGEEXIT_CALIBRATION``, the checkout's ``calibration/``, or the copy
a wheel ships as ``edgeexit/_calibration/`` (setup.py puts it there), as device presets are.
This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from edgeexit.errors import RecipeError

log = logging.getLogger(__name__)

ENV_VAR = "EDGEEXIT_CALIBRATION"
PACKAGED_DIR = "_calibration"  # inside the installed package: see setup.py
DEFAULT_RECIPE = "default"
SELECTIONS = ("class-balanced", "stratified-by-record", "random")
METHODS = ("minmax", "percentile", "entropy")
SHORT_CLASSES = ("error", "take-all")
DATA_CHECKPOINT = "checkpoint"
_TOP_KEYS = ("description", "data", "split", "samples", "selection", "seed", "short_classes",
             "quantization", "set")


@dataclasses.dataclass(frozen=True)
class QuantOptions:
    """How the int8 files are quantized (the ``[quantization]`` table of a recipe)."""

    method: str = "minmax"
    per_channel: bool = True
    float_heads: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class StoredSet:
    """A recipe's stored representative set: indices into its pool and the sha256 they give."""

    indices: tuple[int, ...]
    sha256: str
    made_for: str = ""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A parsed calibration recipe (see the module docstring for the keys)."""

    name: str
    path: str
    sha256: str
    data: str = DATA_CHECKPOINT
    samples: int = 512
    selection: str = "class-balanced"
    seed: int = 0
    short_classes: str = "error"
    split: str = "train"
    description: str = ""
    quantization: QuantOptions = QuantOptions()
    stored: StoredSet | None = None

    def to_dict(self) -> dict:
        """What the manifest records: name, file, its sha256 and every setting."""
        return {
            "name": self.name, "path": self.path, "sha256": self.sha256, "data": self.data,
            "split": self.split, "samples": self.samples, "selection": self.selection,
            "seed": self.seed, "short_classes": self.short_classes,
            "quantization": self.quantization.to_dict(),
            "stored_set": None if self.stored is None else
            {"count": len(self.stored.indices), "sha256": self.stored.sha256,
             "made_for": self.stored.made_for},
        }


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    """The windows a recipe picked, and what the manifest records about them."""

    x: np.ndarray
    indices: tuple[int, ...]
    sha256: str
    pool: str
    from_stored_set: bool
    class_counts: dict[str, int]
    record_counts: dict[str, int] | None

    def provenance(self) -> dict:
        return {"samples": len(self.indices), "pool": self.pool, "indices": list(self.indices),
                "sha256": self.sha256, "from_stored_set": self.from_stored_set,
                "class_counts": self.class_counts, "record_counts": self.record_counts}


# -- finding and reading recipes -----------------------------------------------------------------


def _source_tree_dir() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "calibration").is_dir():
        return root / "calibration"
    return None


def recipes_dir() -> Path:
    """``$EDGEEXIT_CALIBRATION``, the checkout's ``calibration/``, or the wheel's copy."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return _source_tree_dir() or Path(__file__).resolve().parents[1] / PACKAGED_DIR


def list_recipes() -> list[str]:
    """Names of the recipes found in :func:`recipes_dir`."""
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def _typed(path: Path, key: str, value: Any, kind: type, fix: str) -> Any:
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise RecipeError(f"{path}: {key} must be {kind.__name__}, got {value!r}; {fix}")
    return value


def _choice(path: Path, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise RecipeError(f"{path}: unknown {key} {value!r}; set {key} to one of "
                          f"{', '.join(map(repr, choices))}")
    return value


def parse_recipe(d: dict, path: Path, sha256: str) -> Recipe:
    """A :class:`Recipe` from the TOML table ``d`` of ``path`` (every error names file and key)."""
    unknown = sorted(set(d) - set(_TOP_KEYS))
    if unknown:
        raise RecipeError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: "
                          f"{', '.join(_TOP_KEYS)} (remove or rename them)")
    samples = _typed(path, "samples", d.get("samples", 512), int, "give a whole number, e.g. 512")
    if samples < 1:
        raise RecipeError(f"{path}: samples must be a positive number of windows, got {samples}; "
                          "set e.g. samples = 512")
    split = d.get("split", "train")
    if split != "train":
        raise RecipeError(f"{path}: split {split!r} is not allowed; int8 calibration uses the "
                          "training side only (validation beats set the exit thresholds, the test "
                          "split measures): set split = \"train\"")
    q = d.get("quantization", {})
    if not isinstance(q, dict):
        raise RecipeError(f"{path}: quantization must be a table [quantization]")
    bad = sorted(set(q) - {f.name for f in dataclasses.fields(QuantOptions)})
    if bad:
        raise RecipeError(f"{path}: unknown key(s) {', '.join(map(repr, bad))} in [quantization]; "
                          "known: method, per_channel, float_heads")
    quant = QuantOptions(
        method=_choice(path, "quantization.method", q.get("method", "minmax"), METHODS),
        per_channel=_typed(path, "quantization.per_channel", q.get("per_channel", True), bool,
                           "write true or false"),
        float_heads=_typed(path, "quantization.float_heads", q.get("float_heads", False), bool,
                           "write true or false"),
    )
    stored = None
    if "set" in d:
        s = d["set"]
        if not isinstance(s, dict) or set(s) - {"indices", "sha256", "made_for"} or \
                not isinstance(s.get("indices"), list) or not isinstance(s.get("sha256"), str):
            raise RecipeError(f"{path}: [set] must hold indices = [ints], sha256 = \"hex\" and "
                              "optionally made_for = \"text\"; remove [set] to select afresh")
        if not s["indices"] or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                       for i in s["indices"]):
            raise RecipeError(f"{path}: set.indices must be a non-empty list of indices >= 0")
        stored = StoredSet(tuple(s["indices"]), s["sha256"], str(s.get("made_for", "")))
    return Recipe(
        name=path.stem, path=str(path), sha256=sha256,
        data=_typed(path, "data", d.get("data", DATA_CHECKPOINT), str,
                    "give \"checkpoint\", \"synthetic\" or a data source path"),
        samples=samples,
        selection=_choice(path, "selection", d.get("selection", "class-balanced"), SELECTIONS),
        seed=_typed(path, "seed", d.get("seed", 0), int, "give a whole number"),
        short_classes=_choice(path, "short_classes", d.get("short_classes", "error"),
                              SHORT_CLASSES),
        split=split,
        description=str(d.get("description", "")),
        quantization=quant,
        stored=stored,
    )


def load_recipe(name_or_path: str | os.PathLike | None = None) -> Recipe:
    """The recipe called ``name_or_path`` (in :func:`recipes_dir`), or the one in that file.

    None = the default recipe (``calibration/default.toml``).

    Raises:
        RecipeError: missing file (the message lists the known recipes), bad TOML (with its line),
            an unknown key, selection or method, a non-positive count, a split other than train.
    """
    text = os.fspath(name_or_path) if name_or_path is not None else DEFAULT_RECIPE
    if text.endswith(".toml") or os.sep in text:
        path = Path(text).expanduser()
    else:
        path = recipes_dir() / f"{text}.toml"
        if not path.is_file():
            known = ", ".join(list_recipes()) or f"none ({recipes_dir()} holds no .toml files)"
            raise RecipeError(f"unknown calibration recipe {text!r}; known recipes: {known}; or "
                              "give the path of a .toml file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(f"calibration recipe {path} not found; give a recipe name "
                          f"({', '.join(list_recipes())}) or an existing .toml file") from None
    except OSError as e:
        raise RecipeError(f"cannot read calibration recipe {path}: {e}") from e
    try:
        d = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RecipeError(f"{path} is not valid TOML: {e}; fix the line it names") from e
    return parse_recipe(d, path, hashlib.sha256(raw).hexdigest())


# -- picking the samples -------------------------------------------------------------------------


def array_sha256(x: np.ndarray) -> str:
    """sha256 of ``x`` as contiguous little-endian float32 (shape prefixed)."""
    a = np.ascontiguousarray(x, dtype="<f4")
    h = hashlib.sha256(repr(tuple(a.shape)).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _spread(sizes: dict, k: int) -> dict:
    """Take ``k`` items from groups of ``sizes`` as evenly as they allow (water filling)."""
    take = dict.fromkeys(sizes, 0)
    left = k
    open_ = [g for g in sizes if sizes[g] > 0]
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for g in list(open_):
            add = min(share, sizes[g] - take[g], left)
            take[g] += add
            left -= add
            if take[g] >= sizes[g]:
                open_.remove(g)
            if left == 0:
                break
    return take


def select_indices(recipe: Recipe, y: np.ndarray, groups: np.ndarray | None,
                   classes: tuple[str, ...]) -> np.ndarray:
    """Indices (sorted) of the pool beats the recipe's selection rule picks.

    ``class-balanced``: ``samples // classes present`` of every class (the remainder to the first
    classes); ``stratified-by-record``: as evenly over the records as they allow; ``random``:
    uniform. Deterministic under ``recipe.seed``.

    Raises:
        RecipeError: the pool is smaller than ``samples``, a class cannot fill its share (with
            ``short_classes = "error"``), or the data hold no record ids for a by-record pick.
    """
    rng = np.random.default_rng(recipe.seed)
    n, k = len(y), recipe.samples
    where = f"{recipe.path}: samples = {k}"
    if k > n:
        raise RecipeError(f"{where} but the pool holds only {n} training beats; set samples <= {n}")
    if recipe.selection == "random":
        return np.sort(rng.choice(n, size=k, replace=False))
    if recipe.selection == "stratified-by-record":
        if groups is None:
            raise RecipeError(f"{recipe.path}: selection \"stratified-by-record\" needs record ids "
                              "and these data hold none; use \"class-balanced\" or \"random\"")
        keys = [str(g) for g in np.unique(groups)]
        members = {g: np.flatnonzero(groups.astype(str) == g) for g in keys}
    else:
        present = [c for c in range(len(classes)) if np.any(y == c)]
        members = {classes[c]: np.flatnonzero(y == c) for c in present}
        share = k // len(present)
        short = {c: len(m) for c, m in members.items() if len(m) < share}
        if short and recipe.short_classes == "error":
            got = ", ".join(f"{c}: {v}" for c, v in short.items())
            raise RecipeError(
                f"{recipe.path}: class-balanced with samples = {k} wants {share} beats of each of "
                f"{len(present)} classes, but the pool has only {got}; set short_classes = "
                f"\"take-all\" (take those, spread the rest over the other classes), lower samples "
                f"to <= {len(present) * min(short.values())}, or choose another selection"
            )
    take = _spread({g: len(m) for g, m in members.items()}, k)
    picks = [rng.choice(members[g], size=t, replace=False) for g, t in take.items() if t]
    return np.sort(np.concatenate(picks))


def calibration_set(recipe: Recipe, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
                    classes: tuple[str, ...], pool: str, samples: int | None = None) -> CalibrationSet:
    """The recipe's windows from the pool ``x, y, groups`` (described by ``pool``).

    A stored set is used as it is (its sha256 checked) unless ``samples`` overrides its count;
    otherwise :func:`select_indices` picks afresh.

    Raises:
        RecipeError: a stored index beyond the pool, or the stored set's sha256 does not match
            (the recipe was made for other data), or any :func:`select_indices` error.
    """
    if samples is not None and samples != recipe.samples:
        recipe = dataclasses.replace(recipe, samples=int(samples),
                                     stored=None if recipe.stored is None
                                     or len(recipe.stored.indices) != samples else recipe.stored)
    if recipe.stored is not None:
        idx = np.asarray(recipe.stored.indices, dtype=np.int64)
        if idx.max() >= len(x):
            raise RecipeError(
                f"{recipe.path}: set.indices go up to {int(idx.max())} but the pool ({pool}) "
                f"holds {len(x)} beats: the set was made for {recipe.stored.made_for or 'other data'}; "
                "remove the [set] table to select afresh, or use another recipe"
            )
        picked = x[idx]
        digest = array_sha256(picked)
        if digest != recipe.stored.sha256:
            raise RecipeError(
                f"{recipe.path}: set.sha256 is {recipe.stored.sha256[:12]}... but the stored "
                f"indices pick {digest[:12]}... from {pool}: the set was made for "
                f"{recipe.stored.made_for or 'other data'}; remove the [set] table to select afresh "
                "with the recipe's rule, or regenerate it with tools/calibration_set.py"
            )
        stored = True
    else:
        idx = select_indices(recipe, y, groups, classes)
        picked = x[idx]
        digest = array_sha256(picked)
        stored = False
    counts = np.bincount(y[idx], minlength=len(classes))
    records = None
    if groups is not None:
        names, n = np.unique(groups[idx].astype(str), return_counts=True)
        records = {str(a): int(b) for a, b in zip(names, n)}
    log.info("calibration set of recipe %s: %d windows from %s (%s)", recipe.name, len(idx), pool,
             "stored set" if stored else recipe.selection)
    return CalibrationSet(
        x=np.ascontiguousarray(picked, dtype=np.float32),
        indices=tuple(int(i) for i in idx), sha256=digest, pool=pool, from_stored_set=stored,
        class_counts={c: int(v) for c, v in zip(classes, counts)}, record_counts=records,
    )

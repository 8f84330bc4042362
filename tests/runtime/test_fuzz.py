"""Fuzz tests (hypothesis): whatever a manifest, a golden file or an archive holds, the reader
raises :class:`BundleError` (one line) or succeeds, never anything else.

The suite runs a small derandomized profile; for the few-thousand-case run set
``EDGEEXIT_FUZZ_EXAMPLES`` (examples per test) and ask hypothesis for its statistics:

    EDGEEXIT_FUZZ_EXAMPLES=1000 python -m pytest -n 0 -q -p no:randomly tests/runtime/test_fuzz.py \
        --hypothesis-show-statistics
"""

import copy
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeexit.runtime.archive import ArchiveLimits, extract_archive
from edgeexit.runtime.manifest import MANIFEST, BundleError, Manifest, load_manifest, parse_manifest
from edgeexit.runtime.verify import read_golden
from tests.conftest import REPO

BUNDLE = REPO / "tests" / "data" / "bundle_v1"
BASE = json.loads((BUNDLE / MANIFEST).read_text())
FUZZ = settings(max_examples=int(os.environ.get("EDGEEXIT_FUZZ_EXAMPLES", "40")), deadline=None,
                derandomize="EDGEEXIT_FUZZ_EXAMPLES" not in os.environ, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(d, prefix=()):
    """Every key path of a JSON document (dict keys and list indices)."""
    out = [prefix]
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        out += _paths(v, (*prefix, k))
    return out


PATHS = [p for p in _paths(BASE) if p]
# values a careless or hostile edit puts where a number, a name or a list belongs
EDGE = st.sampled_from([None, -5, 0, 7.0, 1e30, 10**30, -1, float("nan"), float("inf"), "", [], {},
                        [1.0], "../../etc/passwd", "\x00", "a" * 300, True, [[]]])


@st.composite
def mutated_manifests(draw):
    d = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = d
        try:
            for k in path[:-1]:
                parent = parent[k]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(EDGE | JSON)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier edit removed or replaced the way there
    return d


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory):
    return Path(shutil.copytree(BUNDLE, tmp_path_factory.mktemp("fuzz") / "b"))


def _read(root: Path, data: bytes) -> None:
    """Write ``data`` as the manifest of ``root`` and read it as a device does: parse, chain,
    hashes, golden."""
    (root / MANIFEST).write_bytes(data)
    try:
        manifest = load_manifest(root)
        read_golden(root, manifest)
    except BundleError as e:
        assert "\n" not in str(e) and len(str(e)) < 1000


@FUZZ
@given(mutated_manifests())
def test_fuzz_mutated_manifests_raise_only_bundle_error(bundle_copy, d):
    _read(bundle_copy, json.dumps(d).encode())


@FUZZ
@given(st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200),
                 st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
                 st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)))
def test_fuzz_manifest_bytes_raise_only_bundle_error(data):
    try:
        Manifest.from_dict  # the JSON reader and the section parsers, through parse_manifest
        parse_manifest(data)
    except BundleError as e:
        assert "\n" not in str(e)


def test_deep_nesting_and_a_json_list_are_bundle_errors():
    for data in (b"[" * 100_000 + b"]" * 100_000, b"[]", b'{"format": "edgeexit.bundle"}'):
        with pytest.raises(BundleError):
            parse_manifest(data)
    d = copy.deepcopy(BASE)
    d["provenance"] = {"x": None}
    inner = d["provenance"]
    for _ in range(100_000):  # nested in a section kept verbatim (deep-copied)
        inner["x"] = {"x": None}
        inner = inner["x"]
    try:
        Manifest.from_dict(d)
    except BundleError:
        pass


def _array(shape, dtype, fill):
    with np.errstate(invalid="ignore"):
        return np.full(shape, fill).astype(dtype)


ARRAYS = st.builds(
    lambda shape, dtype, fill: _array(shape, dtype, fill),
    st.lists(st.integers(0, 9), max_size=4).map(tuple),
    st.sampled_from(["float32", "float64", "int8", "bool", "complex64", "U2"]),
    st.sampled_from([0, 1, -1, float("nan"), float("inf")]),
)
GOLDEN_KEYS = ["inputs", "logits_0", "logits_1", "logits_2", "logits_3", "x"]


@FUZZ
@given(st.one_of(st.binary(max_size=300),
                 st.dictionaries(st.sampled_from(GOLDEN_KEYS), ARRAYS, max_size=6)))
def test_fuzz_golden_files_raise_only_bundle_error(bundle_copy, content):
    manifest = load_manifest(BUNDLE)
    path = bundle_copy / "golden.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        with open(path, "wb") as f:
            np.savez(f, **content)
    try:
        read_golden(bundle_copy, manifest)
    except BundleError as e:
        assert "\n" not in str(e)
    shutil.copyfile(BUNDLE / "golden.npz", path)


MEMBER_NAMES = st.sampled_from(["b/manifest.json", "b/manifest.sig", "b/segment_0.onnx", "b/golden.npz",
                                "b/run_me.sh", "b", "b/sub", "b/sub/x", "../evil", "/etc/evil",
                                "b/../../evil", "c/manifest.json", "./b/segment_1.onnx", ""])
KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                         tarfile.FIFOTYPE, tarfile.CHRTYPE])


def _bundle_members():
    return [(f"b/{p.name}", tarfile.REGTYPE, p.read_bytes()) for p in sorted(BUNDLE.iterdir())]


@st.composite
def archives(draw):
    """The bytes of a .tar.gz: the real bundle with crafted members added, or only crafted ones,
    then maybe cut or with a byte flipped."""
    members = _bundle_members() if draw(st.booleans()) else []
    members += draw(st.lists(st.tuples(MEMBER_NAMES | st.text(max_size=12), KINDS,
                                       st.binary(max_size=64)), max_size=4))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = draw(st.sampled_from(["/etc/passwd", "b/manifest.json", "../x"]))
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    raw = bytearray(buf.getvalue())
    damage = draw(st.sampled_from(["none", "none", "cut", "flip"]))
    if damage == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif damage == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] ^= draw(st.integers(1, 255))
    return bytes(raw)


@FUZZ
@given(archives())
def test_fuzz_archives_raise_only_bundle_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        archive, dest = Path(tmp) / "a.tar.gz", Path(tmp) / "out"
        archive.write_bytes(data)
        dest.mkdir()
        try:
            root = extract_archive(archive, dest, ArchiveLimits(max_total_bytes=1 << 20))
        except BundleError as e:
            assert "\n" not in str(e)
            assert not (Path(tmp) / "evil").exists()
            return
        # what was unpacked is exactly what the manifest lists (and the signature)
        listed = {a.file for a in load_manifest(root, check_hashes=False).artifacts()}
        assert {p.name for p in root.iterdir()} <= listed | {MANIFEST, "manifest.sig"}

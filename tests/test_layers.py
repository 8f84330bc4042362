"""The layers of edgeexit hold: `lint-imports` checks pyproject.toml's [tool.importlinter]
contracts (layer order, runtime alone, no host packages on the device, no cycles), and each
contract fails when a copy of the package breaks it (the real tree is never touched)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACTS = (
    "Layers, highest first (no module imports a higher one)",
    "runtime imports nothing of edgeexit but errors",
    "runtime imports none of the host's packages (torch, onnx, ...)",
    "No import cycles between the modules of any package",
)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under ``root`` with ``root/pyproject.toml``'s contracts."""
    assert LINT_IMPORTS.is_file(), (
        f"{LINT_IMPORTS} not found: install the dev extra (pip install -e '.[host,dev]')")
    env = {**os.environ, "PYTHONPATH": str(root)}  # the package under root, not an installed one
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_hold():
    r = lint_imports(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in CONTRACTS:
        assert f"{name} KEPT" in r.stdout, r.stdout
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in r.stdout


@pytest.fixture(scope="module")
def copy_of_the_package(tmp_path_factory):
    """A pristine copy of edgeexit/ and pyproject.toml; each test copies it again to break it."""
    root = tmp_path_factory.mktemp("pristine")
    shutil.copytree(REPO / "edgeexit", root / "edgeexit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize(("module", "line", "broken", "shown"), [
    # the runtime reaching up to the CLI breaks the layers and the runtime's isolation
    ("runtime/policy.py", "import edgeexit.cli", CONTRACTS[0],
     "edgeexit.runtime.policy -> edgeexit.cli"),
    ("runtime/policy.py", "import edgeexit.cli", CONTRACTS[1],
     "edgeexit.runtime.policy -> edgeexit.cli"),
    # data importing training (a layer above it)
    ("data/splits.py", "from edgeexit.train import TrainConfig", CONTRACTS[0],
     "edgeexit.data.splits -> edgeexit.train"),
    # the runtime importing config: below it in the layers, but not errors
    ("runtime/engine.py", "from edgeexit.config import EXIT_HEADS", CONTRACTS[1],
     "edgeexit.runtime.engine -> edgeexit.config"),
    # torch on the device
    ("runtime/preprocess.py", "import torch", CONTRACTS[2], "edgeexit.runtime.preprocess -> torch"),
    # archive <-> install: a cycle inside the runtime
    ("runtime/archive.py", "from edgeexit.runtime import install", CONTRACTS[3],
     "No cycles are allowed in edgeexit.runtime."),
])
def test_a_broken_layer_fails(copy_of_the_package, tmp_path, module, line, broken, shown):
    root = tmp_path / "tree"
    shutil.copytree(copy_of_the_package, root)
    path = root / "edgeexit" / module
    path.write_text(path.read_text() + f"\n{line}  # breaks a contract\n")
    r = lint_imports(root)
    assert r.returncode != 0, r.stdout
    assert f"{broken} BROKEN" in r.stdout, r.stdout
    assert shown in r.stdout, r.stdout

"""Build hook: ship the device presets (``targets/*.toml``) and the int8 calibration recipes
(``calibration/*.toml``, as ``edgeexit/_calibration/``) inside the package.

All the metadata lives in pyproject.toml; this file only adds one step to ``build_py``. The
top-level ``targets/`` directory stays the single source of the presets: a wheel (``pip install
.``, ``python -m build``) gets a copy of them as ``edgeexit/_targets/*.toml``, made in the build
directory only (nothing is copied inside the source tree). An editable install (``pip install
-e .``) gets no copy: there :func:`edgeexit.targets.targets_dir` reads ``targets/`` itself.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TARGETS = Path(__file__).resolve().parent / "targets"
PACKAGED = ("edgeexit", "_targets")  # must match edgeexit.targets.PACKAGED_DIR
RECIPES = Path(__file__).resolve().parent / "calibration"
PACKAGED_RECIPES = ("edgeexit", "_calibration")  # must match edgeexit.export.recipes.PACKAGED_DIR


class build_py_with_targets(build_py):
    def _preset_files(self) -> list[Path]:
        files = sorted(TARGETS.glob("*.toml"))
        if not files:  # e.g. an sdist built without MANIFEST.in: never ship a wheel without them
            raise FileNotFoundError(f"no device presets found in {TARGETS}")
        return files

    def _recipe_files(self) -> list[Path]:
        files = sorted(RECIPES.glob("*.toml"))
        if not files:
            raise FileNotFoundError(f"no calibration recipes found in {RECIPES}")
        return files

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib, *PACKAGED)
        self.mkpath(str(dest))
        for path in self._preset_files():
            self.copy_file(str(path), str(dest / path.name))
        dest = Path(self.build_lib, *PACKAGED_RECIPES)
        self.mkpath(str(dest))
        for path in self._recipe_files():
            self.copy_file(str(path), str(dest / path.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        dest = Path(self.build_lib, *PACKAGED)
        recipes = Path(self.build_lib, *PACKAGED_RECIPES)
        return (outputs + [str(dest / p.name) for p in self._preset_files()]
                + [str(recipes / p.name) for p in self._recipe_files()])


setup(cmdclass={"build_py": build_py_with_targets})

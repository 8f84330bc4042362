"""Target presets: the shipped TOML files, the schema's validation, and the error messages."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeexit.errors import ConfigError
from edgeexit.targets import Target, list_targets, load_target, targets_dir

# needs no torch or onnx: tools/aarch64_check.py runs it on the device install
pytestmark = pytest.mark.device_install

REQUIRED = {"rpi3", "rpi4", "rpi5", "jetson-nano", "x86_64"}
RPI4 = Path(__file__).resolve().parents[1] / "targets" / "rpi4.toml"


@pytest.fixture
def rpi4_text():
    return RPI4.read_text()


def test_required_presets_ship_and_ids_match_file_names():
    targets = list_targets()
    ids = {t.id for t in targets}
    assert REQUIRED <= ids
    assert ids == {p.stem for p in targets_dir().glob("*.toml")}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_preset_round_trips(name):
    t = load_target(name)
    assert Target.from_dict(t.to_dict()) == t
    # the manifest stores the preset as JSON: lists instead of tuples must read back the same
    assert Target.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert t.runtime.threads <= t.cpu.cores
    assert t.power.idle_w >= 0 and t.power.active_w_per_core >= 0 and t.power.source


def test_preset_facts():
    rpi4, rpi5, nano = load_target("rpi4"), load_target("rpi5"), load_target("jetson-nano")
    assert not rpi4.cpu.dotprod and rpi4.runtime.precision == "fp32"
    assert rpi5.cpu.dotprod and "asimddp" in rpi5.cpu.isa_features
    assert rpi4.cpu.arch == "aarch64" and load_target("x86_64").cpu.arch == "x86_64"
    assert not nano.python.meets_minimum and "3.11" in nano.python.notes
    assert rpi4.python.meets_minimum
    assert rpi4.power.watts(2) == pytest.approx(
        rpi4.power.idle_w + 2 * rpi4.power.active_w_per_core
    )


def test_unknown_name_lists_known_ids():
    with pytest.raises(ConfigError) as e:
        load_target("rpi9")
    msg = str(e.value)
    assert "rpi9" in msg and all(i in msg for i in REQUIRED) and "copy a preset" in msg


def test_custom_path_loads(tmp_path, rpi4_text):
    path = tmp_path / "my-board.toml"
    path.write_text(
        rpi4_text.replace('id = "rpi4"', 'id = "my-board"').replace("\nthreads = 1\n", "\nthreads = 2\n")
    )
    t = load_target(str(path))
    assert t.id == "my-board" and t.runtime.threads == 2
    assert load_target(path) == t  # a Path works too


def test_env_var_overrides_presets_dir(tmp_path, monkeypatch, rpi4_text):
    (tmp_path / "rpi4.toml").write_text(rpi4_text)
    monkeypatch.setenv("EDGEEXIT_TARGETS", str(tmp_path))
    assert targets_dir() == tmp_path
    assert [t.id for t in list_targets()] == ["rpi4"]


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ("\nthreads = 1\n", "\nthreads = 1\nturbo = true\n", "unknown key(s) 'turbo' in [runtime]"),
        ('precision = "fp32"', 'precision = "fp16"', "precision 'fp16'"),
        ('backend = "litert"', 'backend = "onnxruntime"', "cannot run 'tflite'"),
        ("cores = 4", "cores = 0", "cpu.cores must be >= 1"),
        ("idle_w = 2.7", "idle_w = -1.0", "power.idle_w must be"),
        ("cores = 4", 'cores = "four"', "cpu.cores must be int"),
        ("dotprod = false", "dotprod = 0", "cpu.dotprod must be bool"),
        ('id = "rpi4"', 'id = "other"', "does not match the file name"),
        ("idle_w = 2.7\n", "", "lacks required key(s) 'idle_w'"),
    ],
)
def test_bad_file_names_the_file(tmp_path, rpi4_text, old, new, expect):
    assert old in rpi4_text
    path = tmp_path / "rpi4.toml"
    path.write_text(rpi4_text.replace(old, new, 1))
    with pytest.raises(ConfigError) as e:
        load_target(str(path))
    assert str(path) in str(e.value) and expect in str(e.value)


def test_bad_toml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('id = "broken"\n[cpu\nmodel = "x"\n')
    with pytest.raises(ConfigError) as e:
        load_target(str(path))
    assert str(path) in str(e.value) and "line 2" in str(e.value)


def test_broken_preset_in_dir_is_named(tmp_path, monkeypatch):
    (tmp_path / "bad.toml").write_text("id = ")
    monkeypatch.setenv("EDGEEXIT_TARGETS", str(tmp_path))
    with pytest.raises(ConfigError, match="bad.toml"):
        list_targets()


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_target("/nonexistent/x.toml")


def test_targets_module_imports_without_torch():
    code = (
        "import sys, edgeexit.targets\n"
        "edgeexit.targets.list_targets()\n"
        "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorflow')\n"
        "               if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

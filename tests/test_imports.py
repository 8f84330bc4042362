"""The CLI and the runtime must import without torch or onnx (the device installs neither)."""

import subprocess
import sys

import pytest

# needs no torch or onnx: tools/aarch64_check.py runs it on the device install
pytestmark = pytest.mark.device_install


@pytest.mark.parametrize("module", ["edgeexit", "edgeexit.cli", "edgeexit.runtime",
                                    "edgeexit.runtime.preprocess", "edgeexit.runtime.stream",
                                    "edgeexit.data",
                                    "edgeexit.metrics", "edgeexit.runtime.install",
                                    "edgeexit.runtime.signing", "edgeexit.runtime.verify",
                                    "edgeexit.data.bench"])
def test_module_imports_without_torch(module):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorflow', 'cryptography')\n"
        "               if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_cli_help_runs_without_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from edgeexit.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_host_commands_say_what_to_install_when_torch_is_missing(tmp_path):
    # simulate a device install: torch cannot be imported
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from click.testing import CliRunner\n"
        "from edgeexit.cli import main\n"
        "r = CliRunner().invoke(main, ['info', 'resnet1d'])\n"
        "print(r.exit_code)\n"
        "print(r.output)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    code_line, message = out.stdout.split("\n", 1)
    assert code_line == "1"
    assert "edgeexit[host]" in message and "Traceback" not in message

"""`ctseg` trains and predicts on oneDNN's CPU kernels, which TensorFlow 2.15 leaves off on AVX2 CPUs; a user's
TF_ENABLE_ONEDNN_OPTS is kept. Each check is a fresh process: TensorFlow reads the variable once, when it loads."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # fresh processes importing TensorFlow

PROBE = "from ctseg.cpu_kernels import onednn_in_use; print('oneDNN', onednn_in_use())"


def _run(code: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cli_loads_tensorflow_with_onednn_on():
    code = ("from ctseg import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "import tensorflow\n" + PROBE)
    assert "oneDNN True" in _run(code)


def test_a_users_choice_is_kept():
    code = "from ctseg.cpu_kernels import prefer_onednn\nprefer_onednn()\nimport tensorflow\n" + PROBE
    assert "oneDNN True" in _run(code)
    assert "oneDNN False" in _run(code, TF_ENABLE_ONEDNN_OPTS="0")

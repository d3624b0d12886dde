"""The step entrypoint answers malformed executor input with one sentence naming the flag, not a traceback:
the pod log is what an operator reads."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ctseg.pipeline.kubeflow_entrypoint import ENTRYPOINT_MODULE, INPUTS_SPEC_FLAG, INVOCATION_FLAG, _parse_flags

VALID = '{"outputs": {"outputFile": "/tmp/out/executor_output.json"}}'


@pytest.mark.parametrize("flag, text, says", [
    (INVOCATION_FLAG, "not json", "is not JSON"),
    (INVOCATION_FLAG, "[]", "is a JSON list, not an object"),
    (INVOCATION_FLAG, "{}", "has no outputs.outputFile"),
    (INVOCATION_FLAG, '{"outputs": []}', "has no outputs.outputFile"),
    (INPUTS_SPEC_FLAG, "{", "is not JSON"),
])
def test_malformed_executor_input_is_one_sentence_naming_the_flag(flag, text, says):
    args = {INVOCATION_FLAG: VALID, flag: text}
    with pytest.raises(SystemExit) as stop:
        _parse_flags(["entrypoint", "--executor_class_path", "x.Executor", *[a for kv in args.items() for a in kv]])
    message = str(stop.value.code)
    assert message.startswith(f"ctseg step: {flag} ") and says in message and "\n" not in message


@pytest.mark.slow  # a fresh process importing TFX
def test_the_pod_log_holds_the_sentence_and_no_traceback():
    run = subprocess.run([sys.executable, "-m", ENTRYPOINT_MODULE, "--executor_class_path", "x.Executor",
                          INVOCATION_FLAG, "[]"], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert f"ctseg step: {INVOCATION_FLAG} is a JSON list, not an object" in run.stderr
    assert "Traceback" not in run.stderr, run.stderr

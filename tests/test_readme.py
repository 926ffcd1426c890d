"""The README's examples run, and its two set-up commands are exactly what CI runs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PYTHON_BLOCKS = [body for lang, body in BLOCK.findall(README) if lang == "python"]
SHELL_BLOCKS = [body.strip() for lang, body in BLOCK.findall(README) if lang == "sh"]


def test_readme_has_examples() -> None:
    assert len(PYTHON_BLOCKS) >= 5


@pytest.mark.parametrize("source", PYTHON_BLOCKS, ids=lambda s: s.splitlines()[-1][:40])
def test_readme_example_runs(source: str) -> None:
    code = compile(source, "README.md", "exec")
    exec(code, {"__name__": "__readme__"})


def test_ci_runs_the_readme_commands_verbatim() -> None:
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert len(SHELL_BLOCKS) >= 2
    for command in SHELL_BLOCKS[:2]:
        assert command in ci_script, f"README command not run verbatim by .ci/run: {command}"


def test_readme_shell_script_example_runs(tmp_path: Path) -> None:
    """The README's shell example, as a user would run it: its own port, and stand-ins for the
    user's ./export.sh and ./build-report.sh."""
    (block,) = [body for body in SHELL_BLOCKS if "./export.sh" in body]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = block.replace("5555", str(port))
    script = script.replace("./export.sh", "true").replace("./build-report.sh", "echo REPORT BUILT")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VELO_PEERS", None)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout_file, err.open("w") as stderr_file:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=stdout_file,
            stderr=stderr_file,
            start_new_session=True,  # the example leaves its worker running: stopped below
        )
        try:
            process.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    stdout, stderr = out.read_text(), err.read_text()
    assert process.returncode == 0, (stdout, stderr)
    assert "REPORT BUILT" in stdout
    assert f"READY 0x1 tcp://127.0.0.1:{port}" in stdout

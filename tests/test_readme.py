"""The README's examples run, and its two set-up commands are exactly what CI runs."""

from __future__ import annotations

import re
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

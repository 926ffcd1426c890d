"""The loop velo runs itself on (velo_am/_loops.py): uvloop when installed, $VELO_LOOP decides."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys

import pytest

from velo_am import _loops
from velo_am._loops import choose_loop

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.mark.parametrize(
    ("setting", "installed", "chosen"),
    [
        (None, True, "uvloop"),
        (None, False, "asyncio"),
        ("", True, "uvloop"),
        ("auto", False, "asyncio"),
        (" AUTO ", True, "uvloop"),
        ("asyncio", True, "asyncio"),
        ("asyncio", False, "asyncio"),
        ("uvloop", True, "uvloop"),
    ],
)
def test_choice(setting: str | None, installed: bool, chosen: str) -> None:
    assert choose_loop(setting, installed) == chosen


def test_uvloop_asked_for_but_missing_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"VELO_LOOP=uvloop, but uvloop is not installed"):
        choose_loop("uvloop", False)


def test_unknown_setting_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"must be one of auto, asyncio, uvloop, got 'tokio'"):
        choose_loop("tokio", True)


def test_run_on_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VELO_LOOP", "asyncio")

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    assert issubclass(_loops.run(loop_type()), asyncio.BaseEventLoop)


def test_run_refuses_a_bad_setting_and_closes_the_coroutine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VELO_LOOP", "nope")

    async def never() -> None:
        raise AssertionError("must not run")

    coroutine = never()
    with pytest.raises(ValueError, match="VELO_LOOP"):
        _loops.run(coroutine)
    assert coroutine.cr_frame is None  # closed: no "never awaited" warning


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop (the optional extra) is not installed")
def test_run_on_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VELO_LOOP", raising=False)

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert _loops.run(loop_module()).startswith("uvloop")


@pytest.mark.timeout(60)
def test_cli_names_a_bad_setting() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "velo_am", "status", "ev:1:1:1", "--seed", "tcp://127.0.0.1:9"],
        env={"VELO_LOOP": "tokio", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert "VELO_LOOP must be one of auto, asyncio, uvloop" in done.stderr

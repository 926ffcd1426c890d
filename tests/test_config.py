"""Worker options: explicit > environment variable > default, and clear errors."""

from __future__ import annotations

import pytest
from support import ROOT

from velo_am import Worker
from velo_am._config import OPTIONS, resolve
from velo_am.transport import FakeNetwork


def test_environment_fills_what_code_leaves_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VELO_WORKER_ID", "0x2a")
    monkeypatch.setenv("VELO_CALL_TIMEOUT", "7.5")
    monkeypatch.setenv("VELO_HEARTBEAT_TIMEOUT", "9")
    monkeypatch.setenv("VELO_PEERS", " tcp://127.0.0.1:1 , tcp://127.0.0.1:2,")
    worker = Worker(call_timeout=3.0, transport=FakeNetwork().transport())
    assert worker.worker_id == 0x2A
    assert worker.call_timeout == 3.0, "a value given in code wins"
    assert worker.heartbeat_timeout == 9.0
    assert worker._seeds == ("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
    assert worker.close_grace == 5.0, "neither given: the default"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("VELO_CALL_TIMEOUT", "soon", "VELO_CALL_TIMEOUT='soon'"),
        ("VELO_CLOSE_GRACE", "-1", "seconds >= 0"),
        ("VELO_HEARTBEAT_INTERVAL", "0", "positive"),
        ("VELO_METRICS_PORT", "70000", "TCP port"),
        ("VELO_WORKER_ID", "worker-7", "VELO_WORKER_ID"),
    ],
)
def test_a_malformed_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=message):
        Worker(transport=FakeNetwork().transport())


def test_blank_variable_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VELO_CALL_TIMEOUT", "  ")
    assert resolve("call_timeout", None) == 30.0


def test_readme_configuration_table_lists_every_option() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for option in OPTIONS:
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{option.name}` |")]
        assert len(rows) == 1, f"README has no configuration row for {option.name}"
        assert f"`{option.env}`" in rows[0]
        assert option.default_text in rows[0]
        assert option.doc in rows[0]

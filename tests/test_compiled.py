"""The two builds of velo_event's hot path: which one is in use, how to force the pure one, and
that both behave the same (one sequence of operations, the same answers, errors included)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import velo_event
from velo_event import EventError, EventHandle
from velo_event import _manager as pure_manager

COMPILED_CORE = "velo_event._compiled._core"


def compiled_installed() -> bool:
    """Whether this install holds a compiled build (one was built: a C compiler was found)."""
    try:
        return importlib.util.find_spec(COMPILED_CORE) is not None
    except ImportError:
        return False


def build_in(
    environment: dict[str, str], *, cwd: Path | None = None, stderr: list[str] | None = None
) -> tuple[str, str]:
    """``velo_event.COMPILED`` and the module ``LocalEventSystem`` comes from, in a fresh
    interpreter with ``environment`` in ``cwd`` (its error output appended to ``stderr``)."""
    code = "import velo_event; print(velo_event.COMPILED, velo_event.LocalEventSystem.__module__)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    if stderr is not None:
        stderr.append(result.stderr)
    flag, module = result.stdout.split()
    return flag, module


def environment(pure: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "VELO_PURE"}
    if pure is not None:
        env["VELO_PURE"] = pure
    return env


def test_the_flag_names_the_build_in_use() -> None:
    assert isinstance(velo_event.COMPILED, bool)
    module = velo_event.LocalEventSystem.__module__
    assert module == (
        "velo_event._compiled._manager" if velo_event.COMPILED else "velo_event._manager"
    )
    if compiled_installed() and not os.environ.get("VELO_PURE"):
        assert velo_event.COMPILED, "a compiled build is installed but was not loaded"


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_pure_variable_forces_the_pure_build(value: str) -> None:
    assert build_in(environment(value)) == ("False", "velo_event._manager")


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_the_pure_variable_the_compiled_build_is_used_where_installed(
    value: str | None,
) -> None:
    expected = ("True", "velo_event._compiled._manager")
    assert build_in(environment(value)) == (
        expected if compiled_installed() else ("False", "velo_event._manager")
    )


@pytest.mark.skipif(
    not compiled_installed(), reason="no compiled build in this install (no C compiler found)"
)
def test_a_compiled_build_older_than_its_sources_is_not_used(tmp_path: Path) -> None:
    """An editable install whose hot modules were edited since the build: the pure build is
    used, and a warning says why (rebuild)."""
    copy = tmp_path / "velo_event"
    shutil.copytree(Path(velo_event.__file__).parent, copy)
    env = environment(None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    # In tmp_path: `python -c` puts its working directory first on the path.
    assert build_in(env, cwd=tmp_path) == ("True", "velo_event._compiled._manager")
    with (copy / "_merge.py").open("a") as source:
        source.write("# edited since the build\n")
    errors: list[str] = []
    assert build_in(env, cwd=tmp_path, stderr=errors) == ("False", "velo_event._manager")
    assert "older than its sources; rebuild it: pip install -e ." in errors[0]


# -- both builds, one behaviour ----------------------------------------------------------------

WORKER = 0x5EED


def run(manager_module: ModuleType, operations: list[tuple[object, ...]]) -> list[object]:
    """Apply the operations to a fresh system of ``manager_module``; what each one answered."""
    manager = manager_module.DistributedEventFactory(WORKER).event_manager()
    handles: list[EventHandle] = []
    trace: list[object] = []

    def pick(index: int) -> EventHandle:
        return handles[index % len(handles)]

    for operation in operations:
        kind = operation[0]
        try:
            if kind == "new" or not handles:
                handles.append(manager.new_event().handle)
                answer: object = int(handles[-1])
            elif kind == "trigger":
                answer = manager.trigger(pick(operation[1]))  # type: ignore[arg-type]
            elif kind == "poison":
                answer = manager.poison(pick(operation[1]), operation[2])  # type: ignore[arg-type]
            elif kind == "merge":
                inputs = [pick(index) for index in operation[1]]  # type: ignore[attr-defined]
                handles.append(manager.merge_events(inputs, fail_fast=operation[2]))
                answer = int(handles[-1])
            elif kind == "older":
                handle = pick(operation[1])  # type: ignore[arg-type]
                answer = manager.poll(handle.with_generation(max(handle.generation - 1, 0)))
            else:  # "wait": a thread's wait that times out at once if the event is pending
                manager.wait(pick(operation[1]), timeout=0)  # type: ignore[arg-type]
                answer = "ready"
        except (EventError, TimeoutError) as error:  # EventTimeout is a TimeoutError
            answer = (type(error).__name__, str(error))
        trace.append(answer)
        trace.append([(int(h), manager.poll(h), manager.poison_reason(h)) for h in handles])
    manager.force_shutdown("the end")
    trace.append([(manager.poll(h), manager.poison_reason(h)) for h in handles])
    return trace


index = st.integers(0, 15)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("new")),
        st.tuples(st.just("trigger"), index),
        st.tuples(st.just("poison"), index, st.sampled_from(["a", "b", "x" * 20_000])),
        st.tuples(st.just("merge"), st.lists(index, min_size=1, max_size=4), st.booleans()),
        st.tuples(st.just("older"), index),
        st.tuples(st.just("wait"), index),
    ),
    max_size=30,
)


@pytest.mark.skipif(
    not compiled_installed(), reason="no compiled build in this install (no C compiler found)"
)
@settings(max_examples=150, deadline=None)
@given(operations)
def test_both_builds_answer_every_sequence_of_operations_alike(
    sequence: list[tuple[object, ...]],
) -> None:
    compiled_manager = importlib.import_module("velo_event._compiled._manager")
    assert compiled_manager is not pure_manager
    assert run(compiled_manager, sequence) == run(pure_manager, sequence)

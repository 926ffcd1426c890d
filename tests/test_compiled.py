"""The two builds of velo_event's and velo_am's hot paths: which one is in use, how to force the
pure one, and that both behave the same (one sequence of operations, or one input to the wire
codec, the same answers, errors included)."""

from __future__ import annotations

import ast
import concurrent.futures
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import velo_am
import velo_event
from velo_am import _layers
from velo_am import _protocol as pure_protocol
from velo_am import _select as am_select
from velo_event import EventError, EventHandle
from velo_event import _manager as pure_manager

COMPILED_CORE = "velo_event._compiled._core"


def installed(module: str = COMPILED_CORE) -> bool:
    """Whether this install holds ``module`` of a compiled build (one was built: a C
    compiler was found)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def compiled_installed() -> bool:
    return installed(COMPILED_CORE)


def printed_by(
    code: str,
    environment: dict[str, str],
    *,
    cwd: Path | None = None,
    stderr: list[str] | None = None,
) -> list[str]:
    """The words ``code`` prints in a fresh interpreter with ``environment`` in ``cwd`` (its
    error output appended to ``stderr``)."""
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
    return result.stdout.split()


def build_in(
    environment: dict[str, str], *, cwd: Path | None = None, stderr: list[str] | None = None
) -> tuple[str, str]:
    """``velo_event.COMPILED`` and the module ``LocalEventSystem`` comes from."""
    code = "import velo_event; print(velo_event.COMPILED, velo_event.LocalEventSystem.__module__)"
    flag, module = printed_by(code, environment, cwd=cwd, stderr=stderr)
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


# -- velo_am's hot set: the same choice, the same behaviour ------------------------------------

AM_COMPILED_PROTOCOL = "velo_am._compiled._protocol"


def am_compiled_installed() -> bool:
    return installed(AM_COMPILED_PROTOCOL)


def am_build_in(
    environment: dict[str, str], *, cwd: Path | None = None, stderr: list[str] | None = None
) -> tuple[str, str, str]:
    """``velo_am.COMPILED``, ``velo_event.COMPILED`` and the module the worker's handler
    execution comes from."""
    code = (
        "import velo_am, velo_event; from velo_am import _layers; "
        "print(velo_am.COMPILED, velo_event.COMPILED, _layers.HandlerExecution.__module__)"
    )
    am_flag, event_flag, module = printed_by(code, environment, cwd=cwd, stderr=stderr)
    return am_flag, event_flag, module


def test_velo_am_flag_names_the_build_in_use() -> None:
    assert isinstance(velo_am.COMPILED, bool)
    package = "velo_am._compiled" if velo_am.COMPILED else "velo_am"
    assert _layers.HandlerExecution.__module__ == f"{package}._execution"
    assert _layers.Serving.__module__ == f"{package}._execution"
    assert am_select.protocol.__name__ == f"{package}._protocol"
    if am_compiled_installed() and os.environ.get("VELO_PURE", "") in ("", "0"):
        assert velo_am.COMPILED, "a compiled build of velo_am is installed but was not loaded"


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_pure_variable_forces_the_pure_build_of_both_packages(value: str) -> None:
    assert am_build_in(environment(value)) == ("False", "False", "velo_am._execution")


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_the_pure_variable_velo_am_is_compiled_where_installed(value: str | None) -> None:
    am = am_compiled_installed()
    assert am_build_in(environment(value)) == (
        str(am),
        str(compiled_installed()),
        "velo_am._compiled._execution" if am else "velo_am._execution",
    )


@pytest.mark.skipif(
    not am_compiled_installed(), reason="no compiled build in this install (no C compiler found)"
)
def test_a_compiled_velo_am_older_than_its_sources_is_not_used(tmp_path: Path) -> None:
    copy = tmp_path / "velo_am"
    shutil.copytree(Path(velo_am.__file__).parent, copy)
    env = environment(None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    flags = str(compiled_installed())
    assert am_build_in(env, cwd=tmp_path) == ("True", flags, "velo_am._compiled._execution")
    with (copy / "_budget.py").open("a") as source:
        source.write("# edited since the build\n")
    errors: list[str] = []
    assert am_build_in(env, cwd=tmp_path, stderr=errors) == ("False", flags, "velo_am._execution")
    assert "velo_am: pure-Python build" in errors[0]
    assert "older than its sources; rebuild it: pip install -e ." in errors[0]


U64 = 2**64 - 1
#: What a header may hold, valid or not: the fields' types, their bounds and past them.
header_items = st.one_of(
    st.integers(-(2**63), U64),
    st.sampled_from([0, 1, 2, U64, 2**63]),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
    st.binary(max_size=20),
    st.lists(st.binary(min_size=15, max_size=17), max_size=2),
)
headers = st.builds(
    lambda version, kind, rest: msgpack.packb([version, kind, *rest], use_bin_type=True),
    st.sampled_from([pure_protocol.PROTOCOL_VERSION, pure_protocol.PROTOCOL_VERSION - 1, "1"]),
    st.sampled_from([*range(12), -1, "3"]),
    st.lists(header_items, max_size=9),
)
#: Frames as a transport may hand them over: bytes, or bytes-like, or (a bug) anything else.
frames_of_any_type = st.one_of(
    st.binary(max_size=30),
    headers.map(bytearray),
    headers.map(memoryview),
    st.text(max_size=5),
    st.integers(0, 9),
)
frame_lists = st.one_of(
    st.tuples(headers).map(list),
    st.tuples(headers, st.binary(max_size=40)).map(list),
    st.tuples(headers.map(memoryview), st.binary(max_size=40).map(bytearray)).map(list),
    st.lists(frames_of_any_type, max_size=3),
)


def outcome(decode: Any, frames: list[Any]) -> object:
    """What ``decode`` made of ``frames``: the message, or the error's type and words."""
    try:
        return decode(frames)
    except Exception as error:
        return type(error), str(error)


@pytest.mark.skipif(
    not am_compiled_installed(), reason="no compiled build in this install (no C compiler found)"
)
@settings(max_examples=400, deadline=None)
@given(frame_lists)
def test_both_builds_of_the_codec_decode_every_input_alike(frames: list[Any]) -> None:
    compiled_protocol = importlib.import_module(AM_COMPILED_PROTOCOL)
    assert compiled_protocol is not pure_protocol
    answer = outcome(compiled_protocol.decode, frames)
    assert answer == outcome(pure_protocol.decode, frames)
    if isinstance(answer, pure_protocol.Message):  # both builds encode it to the same bytes
        encoded = [bytes(frame) for frame in frames]
        assert compiled_protocol.encode(answer) == pure_protocol.encode(answer) == encoded


@pytest.mark.parametrize("build", ["pure", "compiled"])
def test_each_thread_encodes_with_a_packer_of_its_own(build: str) -> None:
    """A msgpack Packer is not thread-safe, and SyncWorkers encode on threads of their own.
    Seen in review: a ``threading.local`` subclass, compiled, became a native class whose
    attributes every thread shared. The codec's per-thread state is a plain instance."""
    if build == "compiled" and not am_compiled_installed():
        pytest.skip("no compiled build in this install (no C compiler found)")
    protocol = importlib.import_module(
        AM_COMPILED_PROTOCOL if build == "compiled" else pure_protocol.__name__
    )
    assert type(protocol._local) is threading.local
    messages = [
        protocol.Request(1, 2, 3, n, "h" * (n % 50 + 1), True, b"x" * n) for n in range(300)
    ]
    expected = [pure_protocol.encode(msg) for msg in messages]

    def encode_all() -> bool:
        return all(
            protocol.encode(msg) == frames for msg, frames in zip(messages, expected, strict=True)
        )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(lambda _: encode_all(), range(16)))


@pytest.mark.parametrize("package", [velo_event, velo_am])
def test_a_builds_digest_covers_every_module_its_hot_set_imports(package: ModuleType) -> None:
    """mypyc copies the constants of imported modules into the compiled code: a build is as
    old as every module its hot set imports at run time (type-checking imports aside)."""
    hot = importlib.import_module(f"{package.__name__}._hot")
    root = Path(package.__file__).parent
    imported: set[str] = set()
    for module in hot.HOT_MODULES:
        tree = ast.parse((root / f"{module}.py").read_text())
        for node in tree.body:  # module level: what runs at import (not TYPE_CHECKING blocks)
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                imported.update(name for name in names if (root / f"{name}.py").exists())
    assert imported <= {*hot.HOT_MODULES, *hot.DEPENDENCIES}


request_fields = st.tuples(
    st.sampled_from([0, 1, U64, U64 + 1, -1]),
    st.sampled_from([1, U64, 0]),
    st.sampled_from([0, U64, -1]),
    st.sampled_from([0, 7, U64, U64 + 1]),
    st.one_of(st.text(max_size=70), st.none()),
    st.one_of(st.booleans(), st.just(1)),
    st.one_of(st.binary(max_size=10), st.just("text")),
)


@pytest.mark.skipif(
    not am_compiled_installed(), reason="no compiled build in this install (no C compiler found)"
)
@settings(max_examples=200, deadline=None)
@given(request_fields)
def test_both_builds_of_the_codec_encode_requests_alike(fields: tuple[Any, ...]) -> None:
    compiled_protocol = importlib.import_module(AM_COMPILED_PROTOCOL)
    assert outcome(lambda f: compiled_protocol.encode_request(*f), list(fields)) == outcome(
        lambda f: pure_protocol.encode_request(*f), list(fields)
    )

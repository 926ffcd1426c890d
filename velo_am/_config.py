"""Worker options: one table of every option, its default and its environment variable.

A :class:`~velo_am.Worker` option given in code wins; an option left out is read from its
environment variable, then falls back to the default. Environment variables suit the usual
deployment, one worker per process (two workers of one process sharing ``VELO_BIND`` with a
fixed port would collide). The README's configuration table and the CLI's flags come from
:data:`OPTIONS`.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from ._protocol import DEFAULT_MAX_MESSAGE_SIZE
from .discovery import Discovery
from .transport import Curve, CurveConfig, ZmqSecurity

__all__ = [
    "OPTIONS",
    "OPTIONS_BY_NAME",
    "OPTION_NAMES",
    "Option",
    "WorkerOptions",
    "resolve",
    "security_of",
]

#: How ``Worker(curve=...)`` may be given.
CurveSpec = Curve | CurveConfig | tuple[Any, Any]


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be a number of seconds >= 0")
    return value


def _forever_or_seconds(text: str) -> float:
    if text.lower() in ("forever", "none", "inf"):
        return math.inf
    return _positive_float(text)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _int(text: str) -> int:
    return int(text, 0)  # 0x… hex, as worker ids are printed, or decimal


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port, 0..65535 (0: any free port)")
    return value


def _addresses(text: str) -> tuple[str, ...]:
    return tuple(address.strip() for address in text.split(",") if address.strip())


@dataclass(frozen=True, slots=True)
class Option:
    """One worker option: its keyword, environment variable, default, parser and meaning."""

    name: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    doc: str
    #: How the default reads in docs and ``--help``.
    default_text: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: Final = (
    Option("worker_id", "VELO_WORKER_ID", None, _int,
           "this worker's id, a non-zero 64-bit integer (decimal or 0x hex)", "random"),
    Option("bind", "VELO_BIND", "tcp://127.0.0.1:0", str,
           "the ZeroMQ endpoint to listen on (port 0: any free port; 0.0.0.0: all interfaces)",
           "tcp://127.0.0.1:0"),
    Option("advertise", "VELO_ADVERTISE", None, str,
           "the address others dial to reach this worker: tcp://HOST:PORT, HOST:PORT or HOST "
           "(the bound port), several comma-separated", "the bound address"),
    Option("interface", "VELO_INTERFACE", None, str,
           "listen on (with a wildcard bind: advertise) this interface's address; "
           "NCCL_SOCKET_IFNAME's syntax: eth0,ib prefixes, =eth0 exact, ^docker excluded",
           "any"),
    Option("peers", "VELO_PEERS", (), _addresses,
           "seed addresses to join the mesh through (comma-separated in the variable)", "none"),
    Option("discovery", "VELO_DISCOVERY", None, str,
           "where workers find each other: a discovery URL, dir:PATH or dns:NAME:PORT", "none"),
    Option("heartbeat_interval", "VELO_HEARTBEAT_INTERVAL", 1.0, _positive_float,
           "seconds between heartbeats on each watched link (answered below the application)",
           "1.0"),
    Option("heartbeat_timeout", "VELO_HEARTBEAT_TIMEOUT", 5.0, _positive_float,
           "a watched peer silent this many seconds is lost: calls and waits on it fail",
           "5.0"),
    Option("call_timeout", "VELO_CALL_TIMEOUT", 30.0, _positive_float,
           "default timeout of call() in seconds", "30.0"),
    Option("handshake_timeout", "VELO_HANDSHAKE_TIMEOUT", 5.0, _positive_float,
           "seconds to wait for a peer to answer a connection handshake", "5.0"),
    Option("join_timeout", "VELO_JOIN_TIMEOUT", 300.0, _forever_or_seconds,
           "seconds start() keeps retrying the seeds until one answers (forever: no limit)",
           "300"),
    Option("forget_after", "VELO_FORGET_AFTER", 60.0, _positive_float,
           "seconds a lost or closed member stays listed in peers", "60.0"),
    Option("link_idle", "VELO_LINK_IDLE", 60.0, _positive_float,
           "seconds an idle link with no business is kept open", "60.0"),
    Option("max_links", "VELO_MAX_LINKS", 256, _positive_int,
           "links this worker keeps open at most (the idle ones go first)", "256"),
    Option("gossip_fanout", "VELO_GOSSIP_FANOUT", 3, _positive_int,
           "gossip neighbors each member keeps (news of members spreads through them)", "3"),
    Option("close_grace", "VELO_CLOSE_GRACE", 5.0, _non_negative_float,
           "seconds close() lets in-flight handlers finish", "5.0"),
    Option("send_window", "VELO_SEND_WINDOW", 4096, _positive_int,
           "sends to one peer that it has not finished handling, at most: send() waits for "
           "room (use one value across a mesh)", "4096"),
    Option("max_message_size", "VELO_MAX_MESSAGE_SIZE", DEFAULT_MAX_MESSAGE_SIZE, _int,
           "largest message in bytes, either way; larger payloads raise ValueError",
           "67108864 (64 MiB)"),
    Option("metrics_port", "VELO_METRICS_PORT", None, _port,
           "serve Prometheus metrics on this port (needs velo[metrics]; 0: any free port)",
           "off"),
    Option("metrics_host", "VELO_METRICS_HOST", "127.0.0.1", str,
           "the interface the metrics endpoint listens on", "127.0.0.1"),
    Option("curve_key", "VELO_CURVE_KEY", None, str,
           "this worker's secret CURVE certificate (velo-am keygen): with curve_allow, only "
           "workers with an allowed key reach it, and links are encrypted", "off"),
    Option("curve_allow", "VELO_CURVE_ALLOW", None, str,
           "with curve_key: the directory of the public certificates (*.key) let in", "none"),
)  # fmt: skip

OPTIONS_BY_NAME: Final = {opt.name: opt for opt in OPTIONS}
#: The keywords of :class:`~velo_am.Worker` that are options of the table.
OPTION_NAMES: Final = frozenset(OPTIONS_BY_NAME)


def resolve(name: str, given: Any) -> Any:
    """``given`` unless it is ``None``; else the environment variable's value, parsed; else
    the default. A malformed variable raises ``ValueError`` naming it."""
    if given is not None:
        return given
    opt = OPTIONS_BY_NAME[name]
    text = os.environ.get(opt.env, "").strip()
    if not text:
        return opt.default
    try:
        return opt.parse(text)
    except ValueError as error:
        raise ValueError(f"environment variable {opt.env}={text!r}: {error}") from None


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Every option of one :class:`~velo_am.Worker`, resolved and checked."""

    worker_id: int
    bind: str
    advertise: str | None
    interface: str | None
    peers: tuple[str, ...]
    discovery: str | Discovery | None
    heartbeat_interval: float
    heartbeat_timeout: float
    call_timeout: float
    handshake_timeout: float
    join_timeout: float
    forget_after: float
    link_idle: float
    max_links: int
    gossip_fanout: int
    close_grace: float
    send_window: int
    max_message_size: int
    metrics_port: int | None
    metrics_host: str
    curve_key: str | None
    curve_allow: str | None

    @classmethod
    def resolve(cls, *, peers: Iterable[str] | None, **given: Any) -> WorkerOptions:
        """Each option as given, else from its environment variable, else its default; a
        random worker id if none. ``TypeError`` / ``ValueError`` for a bad value."""
        values = {opt.name: resolve(opt.name, given.get(opt.name)) for opt in OPTIONS}
        values["peers"] = tuple(peers) if peers else values["peers"]
        worker_id = values["worker_id"]
        if worker_id is None:
            worker_id = values["worker_id"] = secrets.randbits(64) or 1
        if isinstance(worker_id, bool) or not isinstance(worker_id, int):
            raise TypeError(f"worker_id must be an int, got {type(worker_id).__name__}")
        if not 0 < worker_id < 1 << 64:
            raise ValueError(f"worker_id must be a non-zero 64-bit integer, got {worker_id}")
        window = values["send_window"]
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"send_window must be a positive integer, got {window!r}")
        if not 0 < values["heartbeat_interval"] < values["heartbeat_timeout"]:
            raise ValueError("need 0 < heartbeat_interval < heartbeat_timeout")
        return cls(**values)


def security_of(
    security: ZmqSecurity | None, curve: CurveSpec | None, options: WorkerOptions
) -> ZmqSecurity | None:
    """The ZeroMQ transport's security: ``security``, or CURVE from ``curve``, else from the
    ``curve_key`` and ``curve_allow`` options (their variables). ``ValueError`` for a missing
    half, a bad certificate (naming it), or both ``security`` and ``curve``."""
    if curve is None:
        key, allow = options.curve_key, options.curve_allow
        if (key is None and allow is None) or security is not None:
            return security  # security given in code wins over the variables
        if key is None or allow is None:
            missing = "VELO_CURVE_KEY (curve_key)" if key is None else "VELO_CURVE_ALLOW"
            raise ValueError(f"CURVE needs both a secret certificate and the allowed keys: "
                             f"{missing} is not set")  # fmt: skip
        curve = (key, allow)
    if security is not None:
        raise ValueError("give either security or curve, not both")
    return Curve.of(curve)

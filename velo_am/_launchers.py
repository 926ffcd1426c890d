"""Launchers: who this process is, from the variables its launcher set (pure).

torchrun, Slurm, MPI, a Kubernetes Indexed Job and LeaderWorkerSet each tell a process its rank,
the size of its world and (all but MPI) where rank 0 runs. :func:`placement` turns those
variables into a :class:`Placement`: worker id ``rank + 1``, rank 0 listening on the leader's
port as everyone's seed. ``Worker.from_env`` (:class:`FromEnv`) builds a worker from it and
:func:`wait_for_world` is its wait for every rank; the README's launcher table is the contract
this module keeps. All is pure but those two and :func:`options_from_env`, which reads
``os.environ`` and the host's name.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, Self

from ._errors import PeerUnreachable

__all__ = [
    "DEFAULT_PORT",
    "LAUNCHERS",
    "FromEnv",
    "Placement",
    "first_slurm_host",
    "options_from_env",
    "placement",
    "wait_for_world",
]

logger = logging.getLogger(__name__)

#: The leader's port where the launcher names none (and torchrun's ``MASTER_PORT + 1``
#: otherwise), unless ``VELO_PORT`` is set.
DEFAULT_PORT: Final = 29600


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a launcher put this process, and how its worker joins the others."""

    #: One of :data:`LAUNCHERS`.
    launcher: str
    rank: int
    world_size: int
    #: ``rank + 1``, unless ``VELO_WORKER_ID`` says otherwise.
    worker_id: int
    #: Rank 0's address, ``tcp://LEADER_HOST:PORT``: every other rank joins through it.
    seed: str
    #: The endpoint this worker listens on.
    bind: str
    #: The leader's port.
    port: int

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def worker_options(self) -> dict[str, Any]:
        """``Worker`` keywords: the leader has no seed of its own (``VELO_PEERS`` still
        applies), the others join through the leader."""
        peers = None if self.is_leader else [self.seed]
        return {"worker_id": self.worker_id, "bind": self.bind, "peers": peers}


class _Variables:
    """The environment, read on behalf of one launcher: errors name the variable."""

    def __init__(self, environ: Mapping[str, str], launcher: str) -> None:
        self.environ = environ
        self.launcher = launcher

    def get(self, name: str) -> str | None:
        text = self.environ.get(name, "").strip()
        return text or None

    def text(self, name: str, why: str = "") -> str:
        value = self.get(name)
        if value is None:
            raise ValueError(f"{self.launcher}: environment variable {name} is not set{why}")
        return value

    def integer(self, name: str, low: int, high: int, what: str) -> int:
        text = self.text(name)
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise ValueError(f"environment variable {name}={text!r}: not {what}")
        return value

    def rank(self, name: str) -> int:
        return self.integer(name, 0, 1 << 62, "a rank (an integer >= 0)")

    def size(self, name: str) -> int:
        return self.integer(name, 1, 1 << 62, "a world size (an integer >= 1)")

    def port(self, name: str, high: int = 65535) -> int:
        return self.integer(name, 1, high, f"a TCP port (1..{high})")


@dataclass(frozen=True, slots=True)
class _World:
    rank: int
    size: int
    leader_host: str
    port: int


def _torchrun(env: _Variables, hostname: str | None) -> _World:
    rank, size, master = env.rank("RANK"), env.size("WORLD_SIZE"), env.text("MASTER_ADDR")
    # torch's TCPStore listens on MASTER_PORT: velo's leader takes the next one.
    default_port = None if env.get("VELO_PORT") else env.port("MASTER_PORT", 65534) + 1
    return _World(rank, size, _host(master, "MASTER_ADDR"), _port(env, default_port))


def _slurm(env: _Variables, hostname: str | None) -> _World:
    rank = env.rank("SLURM_PROCID")
    size = env.size("SLURM_NTASKS" if env.get("SLURM_NTASKS") else "SLURM_NPROCS")
    # srun's own step first: a step on part of the allocation starts on its own first node.
    names = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    name = next((name for name in names if env.get(name)), "SLURM_JOB_NODELIST")
    nodes = env.text(name)
    try:
        host = first_slurm_host(nodes)
    except ValueError as error:
        raise ValueError(f"environment variable {name}={nodes!r}: {error}") from None
    return _World(rank, size, host, _port(env))


def _mpi(rank_name: str, size_name: str) -> Callable[[_Variables, str | None], _World]:
    def read(env: _Variables, hostname: str | None) -> _World:
        rank, size = env.rank(rank_name), env.size(size_name)
        leader = env.get("VELO_LEADER")
        if leader is not None:
            return _World(rank, size, _host(leader, "VELO_LEADER"), _port(env))
        peers = env.text(
            "VELO_PEERS", " (MPI names no leader host: set VELO_LEADER=HOST, rank 0's host)"
        )
        # The first seed's first endpoint (a wildcard-bound seed advertises several).
        first = (peers.replace(",", " ").split() or [""])[0]
        host, port = _tcp_address(first, "VELO_PEERS")
        velo_port = _port(env, port)
        if velo_port != port:
            raise ValueError(f"VELO_PORT={velo_port} but VELO_PEERS names port {port}")
        return _World(rank, size, host, port)

    return read


def _kubernetes_indexed_job(env: _Variables, hostname: str | None) -> _World:
    index = env.rank("JOB_COMPLETION_INDEX")
    service = _host(
        env.text("VELO_SERVICE", " (the headless Service the pods' subdomain names)"),
        "VELO_SERVICE",
    )
    size = env.size("VELO_WORLD_SIZE")
    pod = env.get("HOSTNAME") or hostname or env.text("HOSTNAME")
    suffix = f"-{index}"
    if not pod.endswith(suffix) or len(pod) == len(suffix):
        raise ValueError(
            f"hostname {pod!r} (HOSTNAME) is not '<job name>{suffix}': an Indexed Job's pod "
            f"is named after its job and JOB_COMPLETION_INDEX={index}"
        )
    job = pod[: -len(suffix)]
    return _World(index, size, f"{job}-0.{service}", _port(env))


def _leader_worker_set(env: _Variables, hostname: str | None) -> _World:
    return _World(
        env.rank("LWS_WORKER_INDEX"),
        env.size("LWS_GROUP_SIZE"),
        _host(env.text("LWS_LEADER_ADDRESS"), "LWS_LEADER_ADDRESS"),
        _port(env),
    )


_READERS: Final[dict[str, Callable[[_Variables, str | None], _World]]] = {
    "torchrun": _torchrun,
    "slurm": _slurm,
    "openmpi": _mpi("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    "pmi": _mpi("PMI_RANK", "PMI_SIZE"),
    "k8s-indexed-job": _kubernetes_indexed_job,
    "lws": _leader_worker_set,
}
#: The launchers :func:`placement` knows (the values of ``VELO_LAUNCHER``).
LAUNCHERS: Final = tuple(_READERS)

#: What gives each launcher away, innermost launcher first: torchrun's processes may run
#: under any of the others, an MPI launcher under Slurm.
_SIGNS: Final = (
    ("torchrun", "RANK"),
    ("lws", "LWS_LEADER_ADDRESS"),
    ("k8s-indexed-job", "JOB_COMPLETION_INDEX"),
    ("openmpi", "OMPI_COMM_WORLD_RANK"),
    ("slurm", "SLURM_PROCID"),
    ("pmi", "PMI_RANK"),
)


def _detect(environ: Mapping[str, str]) -> str:
    chosen = environ.get("VELO_LAUNCHER", "").strip()
    if chosen:
        if chosen not in _READERS:
            raise ValueError(
                f"environment variable VELO_LAUNCHER={chosen!r}: not one of {', '.join(LAUNCHERS)}"
            )
        return chosen
    for launcher, sign in _SIGNS:
        if environ.get(sign, "").strip():
            if launcher == "slurm" and _mpi_inside_slurm(environ):
                return "pmi"
            return launcher
    signs = ", ".join(f"{sign} ({launcher})" for launcher, sign in _SIGNS)
    raise ValueError(f"no launcher detected: none of {signs} is set; or set VELO_LAUNCHER")


def _mpi_inside_slurm(environ: Mapping[str, str]) -> bool:
    """srun's PMI plugin sets PMI_RANK/PMI_SIZE equal to SLURM_PROCID/SLURM_NTASKS; an MPI
    launcher (mpiexec) run inside a Slurm allocation sets ranks of its own."""
    if not environ.get("PMI_RANK", "").strip():
        return False
    slurm = (environ.get("SLURM_PROCID", ""), environ.get("SLURM_NTASKS", ""))
    pmi = (environ.get("PMI_RANK", ""), environ.get("PMI_SIZE", ""))
    return tuple(s.strip() for s in slurm) != tuple(s.strip() for s in pmi)


def placement(environ: Mapping[str, str], hostname: str | None = None) -> Placement:
    """Where the launcher that set ``environ`` put this process (the README's launcher
    table). ``hostname`` is this host's name (a Kubernetes pod's, when ``HOSTNAME`` is
    not set). ``ValueError`` if no launcher is detected, or naming the variable that is
    missing or malformed."""
    launcher = _detect(environ)
    env = _Variables(environ, launcher)
    world = _READERS[launcher](env, hostname)
    if world.rank >= world.size:
        raise ValueError(f"{launcher}: rank {world.rank} is outside a world of {world.size}")
    worker_id = world.rank + 1
    explicit = env.get("VELO_WORKER_ID")
    if explicit is not None:
        worker_id = _worker_id(explicit)
    host = world.leader_host
    seed = f"tcp://{_url_host(host)}:{world.port}"
    bind = env.get("VELO_BIND")
    if bind is None:
        local = _is_loopback(host)
        if world.rank == 0:
            bind = f"tcp://{_url_host(_bind_host(host)) if local else '0.0.0.0'}:{world.port}"
        else:
            bind = "tcp://127.0.0.1:0" if local else "tcp://0.0.0.0:0"
    elif world.rank == 0 and not (bind.startswith("tcp://") and bind.endswith(f":{world.port}")):
        raise ValueError(
            f"environment variable VELO_BIND={bind!r}: rank 0 is the seed and must listen on "
            f"the leader's port {world.port} (tcp://INTERFACE:{world.port})"
        )
    return Placement(launcher, world.rank, world.size, worker_id, seed, bind, world.port)


def options_from_env(overrides: Mapping[str, Any]) -> tuple[Placement, dict[str, Any]]:
    """This process's placement (from ``os.environ``) and the ``Worker`` keywords it gives,
    ``overrides`` applied on top."""
    found = placement(os.environ, socket.gethostname())
    logger.info(
        "%s: rank %d of %d, worker %#x, seed %s, listening on %s",
        found.launcher,
        found.rank,
        found.world_size,
        found.worker_id,
        found.seed,
        found.bind,
    )
    return found, {**found.worker_options(), **overrides}


class FromEnv:
    """``Worker.from_env``: a base of :class:`~velo_am.Worker`, kept here with the rest of
    what launchers mean to a worker."""

    #: Where its launcher put this worker, if :meth:`from_env` made it (else ``None``).
    placement: Placement | None = None
    #: Made by ``from_env(wait_for_world=True)``: ``start()`` also waits for every rank.
    waits_for_world: bool = False

    @classmethod
    def from_env(cls, *, wait_for_world: bool = False, **overrides: Any) -> Self:
        """A worker placed by its launcher (torchrun, Slurm, MPI, a Kubernetes Indexed Job,
        LeaderWorkerSet: the README's launcher table): worker id ``rank + 1``, rank 0
        listening on the leader's port as every other rank's seed. Keywords given (any of
        ``Worker``'s) win over the environment. With ``wait_for_world``, ``start()`` returns
        only once every rank is a member, and raises :class:`PeerUnreachable` (naming the
        ranks missing) if they are not all there within ``join_timeout``. ``ValueError`` if no
        launcher is detected, or naming the variable that is missing or malformed."""
        found, options = options_from_env(overrides)
        made = cls(**options)
        made.placement, made.waits_for_world = found, wait_for_world
        return made


class _Joining(Protocol):
    placement: Placement | None
    waits_for_world: bool
    join_timeout: float
    started_at: float

    @property
    def worker_id(self) -> int: ...

    def is_connected(self, peer_id: int) -> bool: ...

    async def wait_for_peers(self, count: int, timeout: float | None = None) -> None: ...

    async def wait_for_peer(self, worker_id: int, timeout: float | None = None) -> Any: ...


async def wait_for_world(worker: _Joining) -> None:
    """For a worker made by ``from_env(wait_for_world=True)``: until the other ranks are
    members. Raises :class:`PeerUnreachable` (naming the ranks missing) if they are not within
    ``join_timeout`` of the start, :class:`WorkerClosed` if the worker closes meanwhile."""
    where = worker.placement
    if not worker.waits_for_world or where is None:
        return
    deadline = worker.started_at + worker.join_timeout
    incomplete = f"the world of {where.world_size} workers is incomplete"
    if worker.worker_id != where.rank + 1:
        # Ids of the user's own (VELO_WORKER_ID): count the members, whoever they are.
        timeout = None if math.isinf(deadline) else max(deadline - time.monotonic(), 0.0)
        try:
            await worker.wait_for_peers(where.world_size - 1, timeout)
        except TimeoutError as error:
            raise PeerUnreachable(f"{incomplete}: {error}") from None
        return
    # Rank r is worker r + 1: wait for each rank, so that no other member counts instead.
    others = [rank + 1 for rank in range(where.world_size) if rank != where.rank]
    for waited, peer_id in enumerate(others):
        try:
            await worker.wait_for_peer(peer_id, max(deadline - time.monotonic(), 0.0))
        except PeerUnreachable:
            # The ranks waited for before this one joined; one may have left since (its own
            # start failed a moment earlier): it is named as having left, not as never joined.
            missing = [peer for peer in others[waited:] if not worker.is_connected(peer)] or [
                peer_id
            ]
            left = [peer for peer in others[:waited] if not worker.is_connected(peer)]
            gone = f"; rank(s) {_ranks(left)} joined and left since" if left else ""
            raise PeerUnreachable(
                f"{incomplete} after {worker.join_timeout} s: rank(s) {_ranks(missing)} "
                f"(worker id rank + 1) not joined{gone}"
            ) from None


def _ranks(peers: list[int]) -> str:
    """The ranks of worker ids ``rank + 1``, at most 20 of them and how many more."""
    shown = ", ".join(str(peer - 1) for peer in peers[:20])
    return shown + (f" and {len(peers) - 20} more" if len(peers) > 20 else "")


# -- hosts, ports, node lists -----------------------------------------------------------------


def _port(env: _Variables, default: int | None = DEFAULT_PORT) -> int:
    if env.get("VELO_PORT") is not None or default is None:
        return env.port("VELO_PORT")
    return default


def _host(text: str, name: str) -> str:
    if "://" in text or "/" in text or any(c.isspace() for c in text):
        raise ValueError(f"environment variable {name}={text!r}: not a host name or address")
    return text


def _tcp_address(text: str, name: str) -> tuple[str, int]:
    host, sep, port = text.removeprefix("tcp://").rpartition(":")
    if not text.startswith("tcp://") or not sep or not host or not port.isdigit():
        raise ValueError(f"environment variable {name}={text!r}: not tcp://HOST:PORT")
    if not 0 < int(port) < 65536:
        raise ValueError(f"environment variable {name}={text!r}: port out of range")
    return host.strip("[]"), int(port)


def _worker_id(text: str) -> int:
    try:
        value = int(text, 0)  # 0x… hex, as worker ids are printed, or decimal
    except ValueError:
        value = 0
    if not 0 < value < 1 << 64:
        raise ValueError(
            f"environment variable VELO_WORKER_ID={text!r}: not a non-zero 64-bit worker id"
        )
    return value


def _is_loopback(host: str) -> bool:
    """Only what is loopback by its very name: no lookup (a host name that maps to
    127.0.1.1 locally is another address for the other hosts)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind_host(host: str) -> str:
    return "127.0.0.1" if host.lower() == "localhost" else host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm host list: ``node[01-04,07],gpu3`` → ``node01``,
    ``rack[1-2]-n[08-09]`` → ``rack1-n08``. ``ValueError`` if it is malformed."""
    text = nodelist.strip()
    if not text:
        raise ValueError("no host in it")
    depth = 0
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError("unbalanced brackets")
    if depth:
        raise ValueError("unbalanced brackets")
    first = _top_level_items(text)[0]
    host, rest = "", first
    while rest:
        prefix, bracket, rest = rest.partition("[")
        host += prefix
        if bracket:
            ranges, _, rest = rest.partition("]")
            host += _first_of_ranges(ranges)
    if not host:
        raise ValueError("no host in it")  # e.g. '[1-2]' has no name
    return host


def _top_level_items(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for at, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:at])
            start = at + 1
    items.append(text[start:])
    if any(not item for item in items):
        raise ValueError("an empty host in the list")
    return items


def _first_of_ranges(ranges: str) -> str:
    """``01-04,07`` → ``01`` (the digits as written: leading zeros are part of the name)."""
    for part in ranges.split(","):
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and (not high.isdigit() or int(high) < int(low))):
            raise ValueError(f"not a range of numbers: [{ranges}]")
    return ranges.partition(",")[0].partition("-")[0]

"""Launchers: the variables torchrun, Slurm, MPI, a Kubernetes Indexed Job and LeaderWorkerSet
set become a worker's id, seed and bind address (pure, launcher by launcher);
``Worker.from_env`` and ``velo-am worker --from-env --wait-world`` then form the whole world,
ranks started in random order with random delays, running the README's examples as written."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import FAST, ROOT, Lan, Script, stop, velo

from velo_am import PeerUnreachable, SyncWorker, Worker
from velo_am._launchers import (
    DEFAULT_PORT,
    Placement,
    first_slurm_host,
    placement,
    wait_for_world,
)

#: Every variable a launcher or velo's launcher support reads: cleared in tests, so that a
#: test run under Slurm (say) sees only the environment each test sets.
LAUNCHER_VARIABLES = (
    "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK",
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_JOB_NODELIST", "SLURM_NODELIST",
    "SLURM_STEP_NODELIST", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK",
    "PMI_SIZE", "JOB_COMPLETION_INDEX", "LWS_LEADER_ADDRESS", "LWS_WORKER_INDEX",
    "LWS_GROUP_SIZE", "VELO_LAUNCHER", "VELO_PORT", "VELO_LEADER", "VELO_SERVICE",
    "VELO_WORLD_SIZE", "VELO_WORKER_ID", "VELO_BIND", "VELO_PEERS", "VELO_ADVERTISE",
    "VELO_INTERFACE", "VELO_DISCOVERY", "VELO_JOIN_TIMEOUT",
)  # fmt: skip


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# -- what each launcher sets --------------------------------------------------------------------


def torchrun_env(rank: int, world: int, master: str, port: int) -> dict[str, str]:
    """torchrun's variables for one process (all on one node)."""
    return {
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world), "GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1",
        "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(world), "ROLE_NAME": "default",
        "MASTER_ADDR": master, "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": "none",
        "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
        "OMP_NUM_THREADS": "1",
    }  # fmt: skip


def slurm_env(rank: int, tasks: int, nodes: str, step_nodes: str | None = None) -> dict[str, str]:
    """srun's variables for one task of a step (all on the first node)."""
    return {
        "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(tasks), "SLURM_NPROCS": str(tasks),
        "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242",
        "SLURM_JOBID": "4242", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0",
        "SLURM_JOB_NODELIST": nodes, "SLURM_NODELIST": nodes,
        "SLURM_STEP_NODELIST": step_nodes or nodes, "SLURM_NNODES": "1",
        "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_NUM_NODES": "1",
        "SLURMD_NODENAME": first_slurm_host(step_nodes or nodes),
    }  # fmt: skip


def openmpi_env(rank: int, size: int) -> dict[str, str]:
    """Open MPI's mpirun's variables for one process (``-x`` variables come on top)."""
    return {
        "OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(size),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(rank), "OMPI_COMM_WORLD_LOCAL_SIZE": str(size),
        "OMPI_COMM_WORLD_NODE_RANK": str(rank), "OMPI_UNIVERSE_SIZE": str(size),
        "PMIX_RANK": str(rank),
    }  # fmt: skip


def mpich_env(rank: int, size: int) -> dict[str, str]:
    """MPICH's (hydra's) mpiexec's variables for one process (``-genv`` ones come on top)."""
    return {
        "PMI_RANK": str(rank), "PMI_SIZE": str(size), "PMI_FD": "9",
        "MPI_LOCALRANKID": str(rank), "MPI_LOCALNRANKS": str(size),
    }  # fmt: skip


def indexed_job_env(index: int, job: str) -> dict[str, str]:
    """What Kubernetes sets in an Indexed Job's pod (the pod spec's ``env`` comes on top)."""
    return {
        "JOB_COMPLETION_INDEX": str(index),
        "HOSTNAME": f"{job}-{index}",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
    }


def lws_env(index: int, size: int, leader: str) -> dict[str, str]:
    """What LeaderWorkerSet sets in each pod of a group, the leader's (index 0) too."""
    return {
        "LWS_LEADER_ADDRESS": leader,
        "LWS_WORKER_INDEX": str(index),
        "LWS_GROUP_SIZE": str(size),
        "HOSTNAME": leader.partition(".")[0] + (f"-{index}" if index else ""),
    }


# -- the mapping, launcher by launcher (pure) ---------------------------------------------------


def test_torchrun_rank_0_is_the_seed_one_port_above_torchs_store() -> None:
    leader = placement(torchrun_env(0, 4, "127.0.0.1", 29500))
    assert leader == Placement(
        "torchrun", 0, 4, 1, "tcp://127.0.0.1:29501", "tcp://127.0.0.1:29501", 29501
    )
    assert leader.worker_options() == {
        "worker_id": 1,
        "bind": "tcp://127.0.0.1:29501",
        "peers": None,
    }
    other = placement(torchrun_env(3, 4, "127.0.0.1", 29500))
    assert (other.worker_id, other.seed, other.bind) == (
        4,
        "tcp://127.0.0.1:29501",
        "tcp://127.0.0.1:0",
    )
    assert other.worker_options()["peers"] == ["tcp://127.0.0.1:29501"]


def test_a_leader_on_another_host_makes_every_rank_listen_on_every_interface() -> None:
    leader = placement(torchrun_env(0, 8, "node01", 29500))
    assert (leader.seed, leader.bind) == ("tcp://node01:29501", "tcp://0.0.0.0:29501")
    other = placement(torchrun_env(5, 8, "node01", 29500))
    assert (other.seed, other.bind) == ("tcp://node01:29501", "tcp://0.0.0.0:0")
    assert placement(torchrun_env(0, 2, "localhost", 29500)).bind == "tcp://127.0.0.1:29501"
    assert placement(torchrun_env(0, 2, "::1", 29500)).seed == "tcp://[::1]:29501"


def test_explicit_variables_win() -> None:
    env = {**torchrun_env(2, 4, "node01", 29500), "VELO_PORT": "7000"}
    env |= {"VELO_WORKER_ID": "0x2a", "VELO_BIND": "tcp://10.0.0.7:0"}
    found = placement(env)
    assert (found.worker_id, found.port, found.seed, found.bind) == (
        0x2A,
        7000,
        "tcp://node01:7000",
        "tcp://10.0.0.7:0",
    )
    leader = placement({**torchrun_env(0, 4, "node01", 29500), "VELO_BIND": "tcp://eth0:29501"})
    assert leader.bind == "tcp://eth0:29501"


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("node01", "node01"),
        ("node[01-04,07],gpu3", "node01"),
        ("gpu3,node[01-04]", "gpu3"),
        ("n[001-128]", "n001"),
        ("node[7,1-3]", "node7"),
        ("rack[1-2]-node[08-09]", "rack1-node08"),
        ("node[3-4]-ib", "node3-ib"),
        (" cn-[12-13] ", "cn-12"),
    ],
)
def test_the_first_host_of_a_slurm_node_list(nodelist: str, first: str) -> None:
    assert first_slurm_host(nodelist) == first


@pytest.mark.parametrize(
    ("nodelist", "problem"),
    [
        ("", "no host"),
        ("node[01-04", "unbalanced"),
        ("node01-04]", "unbalanced"),
        ("node[[1]]", "unbalanced"),
        ("node[]", "not a range"),
        ("node[a-b]", "not a range"),
        ("node[4-1]", "not a range"),
        (",node1", "empty host"),
    ],
)
def test_a_malformed_slurm_node_list_is_an_error(nodelist: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        first_slurm_host(nodelist)
    named = rf"SLURM_STEP_NODELIST='{re.escape(nodelist)}'" if nodelist else "is not set"
    lists = dict.fromkeys(["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"])
    with pytest.raises(ValueError, match=named):
        placement({**slurm_env(0, 2, "node1"), **dict.fromkeys(lists, nodelist)})


def test_slurm_seeds_through_the_steps_first_node_on_a_fixed_port() -> None:
    found = placement(slurm_env(5, 8, "node[01-04]", step_nodes="node[03-04]"))
    assert (found.launcher, found.rank, found.world_size, found.worker_id) == ("slurm", 5, 8, 6)
    assert found.seed == f"tcp://node03:{DEFAULT_PORT}"
    without_step = slurm_env(1, 2, "gpu[7-8]")
    del without_step["SLURM_STEP_NODELIST"], without_step["SLURM_NTASKS"]
    found = placement({**without_step, "VELO_PORT": "6000"})
    assert (found.world_size, found.seed) == (2, "tcp://gpu7:6000"), "SLURM_NPROCS, VELO_PORT"


def test_mpi_takes_the_leader_from_velo_leader_or_velo_peers() -> None:
    found = placement({**openmpi_env(3, 4), "VELO_LEADER": "node01"})
    assert (found.launcher, found.worker_id, found.seed) == (
        "openmpi",
        4,
        f"tcp://node01:{DEFAULT_PORT}",
    )
    found = placement({**mpich_env(1, 4), "VELO_PEERS": "tcp://node02:5555,tcp://node03:5555"})
    assert (found.launcher, found.seed, found.port) == ("pmi", "tcp://node02:5555", 5555)
    several = "tcp://10.0.0.2:5555 tcp://10.1.0.2:5555"  # a wildcard-bound seed's endpoints
    found = placement({**mpich_env(1, 4), "VELO_PEERS": several})
    assert (found.seed, found.port) == ("tcp://10.0.0.2:5555", 5555)
    with pytest.raises(ValueError, match=r"VELO_PEERS is not set .*VELO_LEADER=HOST"):
        placement(openmpi_env(0, 4))
    with pytest.raises(ValueError, match="VELO_PORT=6000 but VELO_PEERS names port 5555"):
        placement({**mpich_env(1, 4), "VELO_PEERS": "tcp://node02:5555", "VELO_PORT": "6000"})
    with pytest.raises(ValueError, match="VELO_PEERS='node02:5555': not tcp://HOST:PORT"):
        placement({**mpich_env(1, 4), "VELO_PEERS": "node02:5555"})


def test_a_kubernetes_indexed_jobs_leader_is_pod_0_of_its_headless_service() -> None:
    pod = {**indexed_job_env(2, "velo-job"), "VELO_SERVICE": "velo", "VELO_WORLD_SIZE": "4"}
    found = placement(pod)
    assert (found.launcher, found.rank, found.world_size, found.worker_id) == (
        "k8s-indexed-job",
        2,
        4,
        3,
    )
    assert (found.seed, found.bind) == (f"tcp://velo-job-0.velo:{DEFAULT_PORT}", "tcp://0.0.0.0:0")
    del pod["HOSTNAME"]
    assert placement(pod, hostname="velo-job-2").seed == found.seed, "the host's name"
    with pytest.raises(ValueError, match=r"'other-3' .* is not '<job name>-2'"):
        placement(pod, hostname="other-3")
    for missing in ("VELO_SERVICE", "VELO_WORLD_SIZE"):
        partial = {**indexed_job_env(2, "velo-job"), "VELO_SERVICE": "velo"}
        partial |= {"VELO_WORLD_SIZE": "4"}
        del partial[missing]
        with pytest.raises(ValueError, match=f"{missing} is not set"):
            placement(partial)


def test_a_leaderworkerset_groups_leader_is_its_seed() -> None:
    found = placement(lws_env(3, 4, "velo-1.velo.default"))
    assert (found.launcher, found.rank, found.world_size, found.worker_id, found.seed) == (
        "lws",
        3,
        4,
        4,
        f"tcp://velo-1.velo.default:{DEFAULT_PORT}",
    )
    leader = placement(lws_env(0, 4, "velo-1.velo.default"))
    assert leader.bind == f"tcp://0.0.0.0:{DEFAULT_PORT}"


def test_the_innermost_launcher_is_the_one() -> None:
    under_slurm = {**slurm_env(0, 2, "node[1-2]"), **torchrun_env(5, 8, "node1", 29500)}
    assert placement(under_slurm).launcher == "torchrun"
    in_a_pod = {**indexed_job_env(1, "job"), **torchrun_env(5, 8, "job-0.svc", 29500)}
    assert placement(in_a_pod).launcher == "torchrun"
    mpirun_in_allocation = {**slurm_env(0, 1, "node1"), **openmpi_env(3, 4), "VELO_LEADER": "n"}
    assert placement(mpirun_in_allocation).launcher == "openmpi"
    # mpiexec started by a batch script: its ranks differ from the batch step's.
    mpiexec_in_allocation = {**slurm_env(0, 1, "node1"), **mpich_env(3, 4), "VELO_LEADER": "n"}
    assert placement(mpiexec_in_allocation).launcher == "pmi"
    # srun's PMI plugin: the same ranks under both names, and Slurm needs no VELO_LEADER.
    srun_with_pmi = {**slurm_env(3, 4, "node[1-2]"), **mpich_env(3, 4)}
    assert placement(srun_with_pmi).launcher == "slurm"
    chosen = {**srun_with_pmi, "VELO_LAUNCHER": "pmi", "VELO_LEADER": "node9"}
    assert placement(chosen).seed == f"tcp://node9:{DEFAULT_PORT}"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no launcher detected: none of RANK .* is set; or set VELO_LAUNCHER"),
        ({"VELO_LAUNCHER": "pbs"}, "VELO_LAUNCHER='pbs': not one of torchrun, slurm"),
        ({"VELO_LAUNCHER": "slurm"}, "slurm: environment variable SLURM_PROCID is not set"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "torchrun: environment variable MASTER_ADDR"),
        ({**torchrun_env(0, 2, "h", 1), "RANK": "first"}, "RANK='first': not a rank"),
        ({**torchrun_env(0, 2, "h", 1), "WORLD_SIZE": "0"}, "WORLD_SIZE='0': not a world size"),
        ({**torchrun_env(2, 2, "h", 1)}, "rank 2 is outside a world of 2"),
        ({**torchrun_env(0, 2, "h", 65535)}, "MASTER_PORT='65535': not a TCP port .1..65534"),
        ({**torchrun_env(0, 2, "h", 1), "VELO_PORT": "0"}, "VELO_PORT='0': not a TCP port"),
        ({**torchrun_env(0, 2, "tcp://h", 1)}, "MASTER_ADDR='tcp://h': not a host"),
        ({**torchrun_env(1, 2, "h", 1), "VELO_WORKER_ID": "0"}, "VELO_WORKER_ID='0'"),
        (
            {**torchrun_env(0, 2, "h", 1), "VELO_BIND": "tcp://0.0.0.0:0"},
            "VELO_BIND='tcp://0.0.0.0:0': rank 0 is the seed and must listen on .* port 2",
        ),
        ({**lws_env(0, 2, "a b")}, "LWS_LEADER_ADDRESS='a b': not a host"),
    ],
)
def test_a_missing_or_malformed_variable_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        placement(env)


# -- Worker.from_env in one process -------------------------------------------------------------


def free_port(*, next_free: bool = False) -> int:
    """A port nothing listens on (and, with ``next_free``, the one above it neither), below
    the kernel's ephemeral range: no outgoing connection on this busy machine takes it
    between this check and the bind."""
    while True:
        port = random.randrange(30000, 32700)
        try:
            for taken in (port, port + 1) if next_free else (port,):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", taken))
        except OSError:
            continue
        return port


def set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def made_from_env(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], make: Callable[[], Worker]
) -> Worker:
    with monkeypatch.context() as scoped:
        set_env(scoped, env)
        return make()


@pytest.mark.timeout(30)
async def test_from_env_forms_the_whole_world_whatever_the_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, world = free_port(next_free=True), 3
    workers = [
        made_from_env(
            monkeypatch,
            torchrun_env(rank, world, "127.0.0.1", port),
            lambda: Worker.from_env(wait_for_world=True, join_timeout=10, **FAST),
        )
        for rank in range(world)
    ]
    assert [w.worker_id for w in workers] == [1, 2, 3]
    assert all(w.placement is not None and w.placement.world_size == 3 for w in workers)
    order = random.sample(workers, world)

    async def start_later(worker: Worker, delay: float) -> None:
        await asyncio.sleep(delay)  # the scenario: ranks come up at random times
        await worker.start()

    try:
        await asyncio.gather(*(start_later(w, random.uniform(0, 0.3)) for w in order))
        # start() returned for each: each has every other rank as a live peer already.
        for worker in workers:
            alive = {peer for peer in worker.peers if worker.is_connected(peer)}
            assert alive == {1, 2, 3} - {worker.worker_id}, [w.worker_id for w in order]
        assert workers[0].address == f"tcp://127.0.0.1:{port + 1}"
    finally:
        await asyncio.gather(*(w.close(grace=0) for w in workers))


@pytest.mark.timeout(30)
async def test_an_incomplete_world_fails_start_saying_who_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port(next_free=True)
    workers = [
        made_from_env(
            monkeypatch,
            torchrun_env(rank, 3, "127.0.0.1", port),
            lambda: Worker.from_env(wait_for_world=True, join_timeout=1.0, **FAST),
        )
        for rank in range(2)  # rank 2 never comes
    ]
    results = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
    for worker, result in zip(workers, results, strict=True):
        assert isinstance(result, PeerUnreachable), result
        message = "the world of 3 workers is incomplete after 1.0 s: rank(s) 2 (worker id"
        assert message in str(result)
        assert worker.state == "closed"


@pytest.mark.timeout(30)
async def test_a_member_from_outside_the_job_does_not_complete_its_world(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Worker(0x99, **FAST) as outsider:  # type: ignore[arg-type]
        env = {**torchrun_env(0, 2, "127.0.0.1", free_port(next_free=True))}
        env["VELO_PEERS"] = outsider.address  # rank 0 joins a mesh beyond the job
        leader = made_from_env(
            monkeypatch, env, lambda: Worker.from_env(wait_for_world=True, join_timeout=1.0)
        )
        with pytest.raises(PeerUnreachable, match=r"rank\(s\) 1 \(worker id rank \+ 1\)"):
            await leader.start()
        # Rank 0 was a member of the outsider's mesh (closed since): a count of members
        # would have called its world of 2 complete.
        assert 1 in outsider.peers


@pytest.mark.timeout(30)
async def test_ranks_with_ids_of_their_own_count_their_members(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port(next_free=True)
    workers = [
        made_from_env(
            monkeypatch,
            {**torchrun_env(rank, 2, "127.0.0.1", port), "VELO_WORKER_ID": hex(0x10 + rank)},
            lambda: Worker.from_env(wait_for_world=True, join_timeout=10, **FAST),
        )
        for rank in range(2)
    ]
    try:
        await asyncio.gather(*(w.start() for w in reversed(workers)))
        assert workers[0].is_connected(0x11) and workers[1].is_connected(0x10)
    finally:
        await asyncio.gather(*(w.close(grace=0) for w in workers))
    alone = made_from_env(
        monkeypatch,
        {**torchrun_env(0, 2, "127.0.0.1", port), "VELO_WORKER_ID": "0x10"},
        lambda: Worker.from_env(wait_for_world=True, join_timeout=0.5),
    )
    with pytest.raises(PeerUnreachable, match="incomplete: 0 of 1 peers reachable"):
        await alone.start()


@pytest.mark.timeout(30)
async def test_keywords_given_to_from_env_win(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, torchrun_env(1, 2, "127.0.0.1", free_port()))
    worker = Worker.from_env(worker_id=0x77, call_timeout=3.0)
    assert (worker.worker_id, worker.call_timeout) == (0x77, 3.0)
    assert worker.placement is not None and worker.placement.worker_id == 2
    assert not worker.waits_for_world
    await worker.close()


@pytest.mark.timeout(30)
def test_sync_worker_from_env_waits_for_the_world(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    env = {**slurm_env(0, 2, "localhost"), "VELO_PORT": str(port)}
    with monkeypatch.context() as scoped:
        set_env(scoped, env)
        leader = SyncWorker.from_env(wait_for_world=True, start=False, join_timeout=10)
    other = None
    with ThreadPoolExecutor(1) as pool:
        try:
            started = pool.submit(leader.start)  # returns once rank 1 is a member
            with monkeypatch.context() as scoped:
                set_env(scoped, {**env, "SLURM_PROCID": "1", "SLURM_LOCALID": "1"})
                other = SyncWorker.from_env(join_timeout=10)
            started.result(timeout=15)
            assert other.worker_id == 2
            assert other.placement is not None and other.placement.launcher == "slurm"
            assert leader.is_connected(2)
            assert leader.address == f"tcp://127.0.0.1:{port}"
        finally:
            if other is not None:
                other.close(grace=0)
            leader.close(grace=0)


# -- the README's examples, as OS processes -----------------------------------------------------


def readme_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Launchers: `Worker.from_env()`", 1)[1]
    return section.split("\n### ", 1)[0]


def readme_line(launcher: str) -> str:
    """The README's one command line that starts with ``launcher``."""
    lines = [
        line
        for block in re.findall(r"```sh\n(.*?)```", readme_section(), re.DOTALL)
        for line in block.splitlines()
        if line.startswith(f"{launcher} ")
    ]
    assert len(lines) == 1, f"the README shows one {launcher} line: {lines}"
    return lines[0]


def velo_command(line: str) -> list[str]:
    """The ``velo-am …`` part of a launcher's command line, as ``python -m velo_am`` args."""
    words = shlex.split(line)
    start = words.index("velo-am")
    assert words[start : start + 3] == ["velo-am", "worker", "--from-env"], line
    return ["-m", "velo_am", *words[start + 1 :]]


def run_world(
    command: list[str],
    envs: list[dict[str, str]],
    launchers: list[list[str]] | None = None,
) -> tuple[list[Script], list[tuple[int, str]]]:
    """Start one process per rank, in random order with random delays; their READY lines,
    by rank. The processes are left running (the caller stops them)."""
    order = random.sample(range(len(envs)), len(envs))
    scripts: dict[int, Script] = {}
    try:
        for rank in order:
            scripts[rank] = Script(
                *command,
                env={"VELO_JOIN_TIMEOUT": "20", **envs[rank]},
                launcher=launchers[rank] if launchers else (),
            )
            time.sleep(random.uniform(0, 0.2))  # the scenario: ranks come up at random times
        ready = [scripts[rank].ready() for rank in range(len(envs))]
    except BaseException:
        for script in scripts.values():
            script.reap()
        raise
    return [scripts[rank] for rank in range(len(envs))], ready


@contextlib.contextmanager
def held(port: int) -> Iterator[None]:
    """A listener on ``port``, as torch's TCPStore holds MASTER_PORT."""
    with socket.socket() as store:
        store.bind(("127.0.0.1", port))
        store.listen()
        yield


def loopback_world(launcher: str, world: int) -> tuple[str, list[dict[str, str]], str]:
    """The README's command line for ``launcher``; each rank's environment, the README's
    host names replaced by loopback; the seed expected."""
    line = readme_line(launcher)
    port = free_port(next_free=True)
    if launcher == "torchrun":
        assert "--master-port 29500" in line
        envs = [torchrun_env(rank, world, "127.0.0.1", port) for rank in range(world)]
        return line, envs, f"tcp://127.0.0.1:{port + 1}"
    given = {"VELO_PORT": str(port)}  # the README's 29600 may be taken on a shared machine
    if launcher == "srun":
        envs = [{**slurm_env(rank, world, "localhost"), **given} for rank in range(world)]
        return line, envs, f"tcp://localhost:{port}"
    # The launcher passes VELO_LEADER (-x NAME=VALUE, -genv NAME VALUE): here, loopback.
    assert re.search(r"(-x VELO_LEADER=|-genv VELO_LEADER )node01 ", line), line
    given["VELO_LEADER"] = "127.0.0.1"
    mpi_env = openmpi_env if launcher == "mpirun" else mpich_env
    envs = [{**mpi_env(rank, world), **given} for rank in range(world)]
    return line, envs, f"tcp://127.0.0.1:{port}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("launcher", ["torchrun", "srun", "mpirun", "mpiexec"])
def test_the_readme_command_forms_the_world_under_each_launcher(launcher: str) -> None:
    world = 4
    line, envs, seed = loopback_world(launcher, world)
    port = int(seed.rsplit(":", 1)[1])
    with held(port - 1) if launcher == "torchrun" else contextlib.nullcontext():
        scripts, ready = run_world(velo_command(line), envs)
    try:
        # READY comes after --wait-world: each process has every other one as a member.
        assert [worker_id for worker_id, _ in ready] == [1, 2, 3, 4]
        assert ready[0][1] == seed.replace("localhost", "127.0.0.1")
        assert all(address.startswith("tcp://127.0.0.1:") for _, address in ready[1:])
    finally:
        stop(*scripts)


def yaml_block(kind: str) -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", readme_section(), re.DOTALL)
    found = [block for block in blocks if f"\nkind: {kind}\n" in f"\n{block}"]
    assert len(found) == 1, f"the README shows one {kind}"
    return str(found[0])


def yaml_field(text: str, key: str) -> str:
    match = re.search(rf"^\s*{key}: (\S+)", text, re.MULTILINE)
    assert match is not None, f"no {key} in {text}"
    return match.group(1)


def yaml_command(text: str) -> list[str]:
    match = re.search(r"command: \[(.*?)\]", text)
    assert match is not None
    words = [word.strip() for word in match.group(1).split(",")]
    assert words[:3] == ["velo-am", "worker", "--from-env"], words
    return ["-m", "velo_am", *words[1:]]


def pods(lan: Lan, count: int, names: dict[str, str]) -> list[list[str]]:
    """``count`` hosts on one subnet, pod ``i`` at 10.0.0.<i+1>, each resolving ``names``."""
    launchers = []
    for index in range(count):
        lan.host(f"pod{index}", f"10.0.0.{index + 1}/24")
        lan.names(f"pod{index}", names)
        launchers.append(lan.launcher(f"pod{index}"))
    return launchers


@pytest.mark.timeout(90)
def test_the_readme_kubernetes_indexed_job_forms_the_world(lan: Lan) -> None:
    service = yaml_field(yaml_block("Service"), "name")
    job_spec = yaml_block("Job")
    job, size = yaml_field(job_spec, "name"), int(yaml_field(job_spec, "completions"))
    assert yaml_field(job_spec, "subdomain") == service
    pod_env = dict(re.findall(r'- \{name: (\w+), value: "?([^"}]+)"?\}', job_spec))
    assert pod_env == {"VELO_SERVICE": service, "VELO_WORLD_SIZE": str(size)}
    # The cluster's DNS: pod 0 of the job by its name under the headless service.
    launchers = pods(lan, size, {f"{job}-0.{service}": "10.0.0.1"})
    envs = [{**indexed_job_env(index, job), **pod_env} for index in range(size)]
    scripts, ready = run_world(yaml_command(job_spec), envs, launchers)
    try:
        assert ready[0] == (1, f"tcp://10.0.0.1:{DEFAULT_PORT}")
        for index, (worker_id, address) in enumerate(ready[1:], start=1):
            assert worker_id == index + 1
            assert address.startswith(f"tcp://10.0.0.{index + 1}:"), address
    finally:
        stop(*scripts)


@pytest.mark.timeout(90)
def test_the_readme_leaderworkerset_forms_a_groups_world(lan: Lan) -> None:
    spec = yaml_block("LeaderWorkerSet")
    name, size = yaml_field(spec, "name"), int(yaml_field(spec, "size"))
    leader = f"{name}-1.{name}.default"  # group 1's leader pod, in namespace default
    launchers = pods(lan, size, {leader: "10.0.0.1"})
    envs = [lws_env(index, size, leader) for index in range(size)]
    scripts, ready = run_world(yaml_command(spec), envs, launchers)
    try:
        assert [worker_id for worker_id, _ in ready] == list(range(1, size + 1))
        assert ready[0][1] == f"tcp://10.0.0.1:{DEFAULT_PORT}"
    finally:
        stop(*scripts)


@pytest.mark.timeout(60)
def test_the_command_line_says_what_is_wrong() -> None:
    no_launcher = velo("worker", "--from-env")
    assert no_launcher.returncode == 3
    assert "no launcher detected" in no_launcher.stderr
    alone = velo("worker", "--wait-world")
    assert (alone.returncode, "--wait-world needs --from-env" in alone.stderr) == (3, True)


class _RanksJoining:
    """A worker of rank 1 of 3 whose wait for rank 0 succeeds, after which rank 0 leaves (its
    own start failed first), and whose wait for rank 2 runs out."""

    placement = Placement("torchrun", 1, 3, 2, "tcp://127.0.0.1:29500", "tcp://127.0.0.1:0", 29500)
    waits_for_world = True
    join_timeout = 1.0
    started_at = time.monotonic()
    worker_id = 2

    def __init__(self) -> None:
        self.connected = {1}

    def is_connected(self, peer_id: int) -> bool:
        return peer_id in self.connected

    async def wait_for_peers(self, count: int, timeout: float | None = None) -> None:
        raise AssertionError("ranks have ids rank + 1: each is waited for by id")

    async def wait_for_peer(self, worker_id: int, timeout: float | None = None) -> None:
        if worker_id not in self.connected:
            self.connected.discard(1)  # rank 0 gave up on rank 2 a moment earlier and closed
            raise PeerUnreachable(f"worker {worker_id:#x} not joined")


@pytest.mark.timeout(10)
async def test_a_rank_that_joined_and_left_is_not_named_as_never_joined() -> None:
    with pytest.raises(PeerUnreachable) as raised:
        await wait_for_world(_RanksJoining())
    assert str(raised.value) == (
        "the world of 3 workers is incomplete after 1.0 s: rank(s) 2 (worker id rank + 1) "
        "not joined; rank(s) 0 joined and left since"
    )
